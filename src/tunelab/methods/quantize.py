"""QLoRA: the frozen base loaded in 4 bits through bitsandbytes (CUDA only), LoRA adapters on top."""

from __future__ import annotations

import importlib.util

import torch

from tunelab.config.specs import MethodSpec
from tunelab.errors import TunelabError

__all__ = ["check_qlora_possible", "is_4bit", "load_4bit_base", "prepare_4bit"]

_WHERE = "method.name, model.device"


def check_qlora_possible(device: str) -> None:
    """Raise a TunelabError unless 4-bit training can run: a CUDA device and bitsandbytes installed.

    Args:
        device: the recipe's model.device ('auto', 'cpu' or 'cuda').
    """
    if device == "cpu" or not torch.cuda.is_available():
        raise TunelabError(
            f"method.name=qlora needs a CUDA GPU (bitsandbytes 4-bit kernels), but model.device is '{device}'"
            + ("" if device == "cpu" else " and no CUDA GPU is visible"),
            where=_WHERE, fix="use method.name=lora on a CPU (same adapters, a bf16 base), or run on a GPU",
        )
    if importlib.util.find_spec("bitsandbytes") is None:
        raise TunelabError("method.name=qlora needs the bitsandbytes package", where="method.name",
                           fix="pip install 'tunelab[gpu]' (or pip install bitsandbytes)")


def is_4bit(model: torch.nn.Module) -> bool:
    return bool(getattr(model, "is_loaded_in_4bit", False))


def load_4bit_base(path: str, spec: MethodSpec, compute_dtype: torch.dtype, trust_remote_code: bool = False):
    """The base model with its linear layers in 4 bits (NF4 or FP4), on the current CUDA device."""
    from transformers import AutoModelForCausalLM, BitsAndBytesConfig

    check_qlora_possible("cuda")
    q = spec.qlora
    config = BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_quant_type=q.quant_type,
                                bnb_4bit_use_double_quant=q.double_quant, bnb_4bit_compute_dtype=compute_dtype)
    return AutoModelForCausalLM.from_pretrained(
        path, quantization_config=config, dtype=compute_dtype, use_safetensors=True,
        trust_remote_code=trust_remote_code, device_map={"": torch.cuda.current_device()},
    )


def prepare_4bit(model: torch.nn.Module) -> torch.nn.Module:
    """PEFT's k-bit preparation: norms and head in fp32, input grads on (needed with a frozen 4-bit base)."""
    from peft import prepare_model_for_kbit_training

    return prepare_model_for_kbit_training(model, use_gradient_checkpointing=False)
