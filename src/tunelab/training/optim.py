"""Optimizer and learning-rate schedule."""

from __future__ import annotations

import torch

from tunelab.config.specs import TrainSpec
from tunelab.errors import TunelabError

__all__ = ["build_optimizer", "build_scheduler"]


def _param_groups(model: torch.nn.Module, spec: TrainSpec) -> list[dict]:
    """Trainable parameters; no weight decay on 1-D tensors; per-method learning rates (LoRA+)."""
    from tunelab.methods import optimizer_param_groups

    # apply_method records its spec on the model, so the groups follow the method without another argument.
    return optimizer_param_groups(model, getattr(model, "tunelab_method", None), spec.lr, spec.weight_decay)


def build_optimizer(model: torch.nn.Module, spec: TrainSpec, groups: list[dict] | None = None
                    ) -> torch.optim.Optimizer:
    """The recipe's optimizer over `groups` (default: trainable parameters, decay on matrices only)."""
    groups = groups if groups is not None else _param_groups(model, spec)
    if spec.optimizer == "adamw":
        return torch.optim.AdamW(groups, lr=spec.lr, betas=(0.9, 0.999), eps=1e-8)
    if spec.optimizer == "sgd":
        return torch.optim.SGD(groups, lr=spec.lr, momentum=spec.momentum)
    if spec.optimizer == "adafactor":
        from transformers.optimization import Adafactor

        # External learning rate (the schedule drives it), as the T5 fine-tuning recipes do.
        return Adafactor(groups, lr=spec.lr, scale_parameter=False, relative_step=False, warmup_init=False)
    return _adamw_8bit(groups, spec)


def _adamw_8bit(groups: list[dict], spec: TrainSpec) -> torch.optim.Optimizer:
    if not torch.cuda.is_available():
        raise TunelabError("train.optimizer=adamw_8bit needs a CUDA GPU (bitsandbytes' 8-bit states live on the GPU)",
                           where="train.optimizer", fix="use adamw or adafactor (low memory) on CPU")
    try:
        import bitsandbytes as bnb
    except ImportError as e:
        raise TunelabError("train.optimizer=adamw_8bit needs bitsandbytes", where="train.optimizer",
                           fix="pip install 'tunelab[gpu]'") from e
    return bnb.optim.AdamW8bit(groups, lr=spec.lr, betas=(0.9, 0.999), eps=1e-8)


def build_scheduler(optimizer: torch.optim.Optimizer, spec: TrainSpec, total_steps: int):
    from transformers import get_scheduler

    name = {"linear": "linear", "cosine": "cosine", "constant": "constant_with_warmup"}[spec.scheduler]
    warmup = int(round(spec.warmup_ratio * total_steps))
    return get_scheduler(name, optimizer, num_warmup_steps=warmup, num_training_steps=total_steps)
