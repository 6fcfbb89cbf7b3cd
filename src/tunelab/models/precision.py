"""Device and precision policy: bf16 autocast where the hardware does it fast, fp32 otherwise."""

from __future__ import annotations

from contextlib import AbstractContextManager, nullcontext
from functools import lru_cache
from pathlib import Path

import torch

__all__ = ["autocast", "cpu_has_fast_bf16", "resolve_device", "resolve_precision"]


@lru_cache(maxsize=1)
def cpu_has_fast_bf16() -> bool:
    """True when the CPU has native bf16 matmul (AVX512-BF16 or AMX); otherwise bf16 is emulated and slow."""
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        return False
    flags = next((line for line in text.splitlines() if line.startswith("flags")), "")
    return any(f in flags.split() for f in ("avx512_bf16", "amx_bf16"))


def resolve_device(device: str) -> str:
    if device == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if device == "cuda" and not torch.cuda.is_available():
        from tunelab.errors import TunelabError

        raise TunelabError("model.device is 'cuda' but no CUDA GPU is visible", where="model.device",
                           fix="use model.device=cpu, or install a CUDA build of torch (see README)")
    return device


def resolve_precision(precision: str, device: str) -> str:
    """'auto' → 'bf16' on CUDA with bf16 support or on a CPU with native bf16, else 'fp32'."""
    if precision != "auto":
        return precision
    if device == "cuda":
        return "bf16" if torch.cuda.is_bf16_supported() else "fp32"
    return "bf16" if cpu_has_fast_bf16() else "fp32"


def autocast(device: str, precision: str) -> AbstractContextManager:
    """Mixed precision for forward passes: weights stay fp32 (exact optimizer state), matmuls run in bf16."""
    if precision == "bf16":
        return torch.autocast(device_type=device, dtype=torch.bfloat16)
    return nullcontext()
