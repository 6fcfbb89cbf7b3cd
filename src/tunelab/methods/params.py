"""Parameter counts and the training-memory estimate printed and recorded by every run."""

from __future__ import annotations

from dataclasses import dataclass

import torch

__all__ = ["ParamCounts", "count_parameters", "estimate_training_memory_mb"]


@dataclass(frozen=True)
class ParamCounts:
    """Trainable and total parameter counts of a (possibly PEFT- or bottleneck-wrapped) model."""

    trainable: int
    total: int

    @property
    def percent(self) -> float:
        return 100.0 * self.trainable / max(self.total, 1)


def _numel(p: torch.Tensor) -> int:
    # bitsandbytes packs two 4-bit weights per byte-sized element; count the weights, not the storage.
    return p.numel() * 2 if type(p).__name__ == "Params4bit" else p.numel()


def count_parameters(model: torch.nn.Module) -> ParamCounts:
    """Trainable and total parameters; tied weights appear once in parameters(), which is what we want."""
    trainable = sum(_numel(p) for p in model.parameters() if p.requires_grad)
    total = sum(_numel(p) for p in model.parameters())
    return ParamCounts(trainable, total)


def estimate_training_memory_mb(total: int, trainable: int, base_bytes: float = 4) -> float:
    """Weights + gradients + AdamW moments (fp32), excluding activations (those depend on batch shape).

    Args:
        total: all parameters (frozen and trainable).
        trainable: parameters with gradients and optimizer state.
        base_bytes: bytes per frozen weight (4 fp32, 2 bf16, 0.5 for a 4-bit base).
    """
    frozen = total - trainable
    return (frozen * base_bytes + trainable * (4 + 4 + 8)) / 2**20
