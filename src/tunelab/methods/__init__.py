"""Fine-tuning methods as one model transform: `apply_method(model, MethodSpec)`."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from tunelab.config.specs import MethodSpec
from tunelab.errors import TunelabError

__all__ = ["ParamCounts", "apply_method", "count_parameters", "estimate_training_memory_mb"]


@dataclass(frozen=True)
class ParamCounts:
    trainable: int
    total: int

    @property
    def percent(self) -> float:
        return 100.0 * self.trainable / max(self.total, 1)


def count_parameters(model: torch.nn.Module) -> ParamCounts:
    # Tied weights appear once in parameters(); that is what we want to count.
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    total = sum(p.numel() for p in model.parameters())
    return ParamCounts(trainable, total)


def estimate_training_memory_mb(total: int, trainable: int, base_bytes: int = 4) -> float:
    """Weights + gradients + AdamW moments (fp32), excluding activations (those depend on batch shape)."""
    return (total * base_bytes + trainable * (4 + 4 + 8)) / 2**20


def _lora(model: torch.nn.Module, spec: MethodSpec) -> torch.nn.Module:
    from peft import LoraConfig, get_peft_model

    lora = spec.lora
    config = LoraConfig(
        r=lora.r, lora_alpha=lora.alpha, lora_dropout=lora.dropout, target_modules=lora.target_modules,
        bias="none", task_type="CAUSAL_LM",
    )
    try:
        # PEFT keeps adapter weights in fp32 even when the frozen base is bf16 (autocast_adapter_dtype).
        return get_peft_model(model, config)
    except ValueError as e:
        raise TunelabError(f"LoRA cannot be applied: {e}", where="method.lora.target_modules",
                           fix="use 'all-linear' or names of linear modules in this model") from e


def apply_method(model: torch.nn.Module, spec: MethodSpec) -> torch.nn.Module:
    """Return the model prepared for training with the chosen method (trainable flags set)."""
    if spec.name == "lora":
        return _lora(model, spec)
    if spec.name == "full":
        for p in model.parameters():
            p.requires_grad_(True)
        return model
    raise TunelabError(f"unknown method '{spec.name}'", where="method.name", fix="use 'lora' or 'full'")
