"""Optimizer parameter groups per method: weight decay only on matrices, and LoRA+ learning rates."""

from __future__ import annotations

from typing import Any

import torch

from tunelab.config.specs import MethodSpec

__all__ = ["optimizer_param_groups"]


def _is_lora_b(name: str) -> bool:
    # LoRA+ (Hayou et al. 2024): B gets a larger learning rate than A; embeddings' B is `lora_embedding_B`.
    return ".lora_B." in name or ".lora_embedding_B." in name


def optimizer_param_groups(model: torch.nn.Module, method: MethodSpec | None, lr: float,
                           weight_decay: float) -> list[dict[str, Any]]:
    """AdamW groups over trainable parameters, each with its own lr and weight_decay; empty groups dropped.

    No weight decay on 1-D tensors (biases, norms, DoRA magnitudes). With `method.lora.plus_ratio` set and a
    LoRA method, the B matrices train at lr x ratio (LoRA+).

    Args:
        model: the model after `apply_method`.
        method: the method spec (None: plain groups).
        lr: the peak learning rate.
        weight_decay: decay for 2-D+ tensors.
    """
    ratio = method.lora.plus_ratio if method is not None and method.name in ("lora", "qlora") else None
    groups: dict[tuple[bool, bool], list[torch.nn.Parameter]] = {}
    for name, p in model.named_parameters():
        if p.requires_grad:
            key = (p.ndim >= 2, bool(ratio) and _is_lora_b(name))
            groups.setdefault(key, []).append(p)
    out = []
    for (decay, is_b), params in sorted(groups.items(), key=lambda kv: (not kv[0][0], kv[0][1])):
        out.append({"params": params, "weight_decay": weight_decay if decay else 0.0,
                    "lr": lr * ratio if is_b and ratio else lr})
    return out
