"""Shared by the method tests: a few plain AdamW steps of the supervised loss on one batch."""

from __future__ import annotations

import torch

from tunelab.training.loss import supervised_nll


def train_steps(model, batch, lr: float = 1e-2, steps: int = 6) -> list[float]:
    """Train the trainable parameters of `model` on `batch`; returns the per-token loss of each step."""
    model.train()
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=lr)
    losses = []
    for _ in range(steps):
        loss, n = supervised_nll(model, batch)
        (loss / n).backward()
        opt.step()
        opt.zero_grad()
        losses.append(float(loss.detach()) / n)
    model.eval()
    return losses
