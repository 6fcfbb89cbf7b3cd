"""Causal-LM loss computed only where there are labels.

The 49k-row output projection dominates compute and activation memory of a small model; in instruction
tuning most positions are prompt tokens with no label, so projecting only the supervised positions skips
most of that work (the same loss value as the full-logits computation, tested).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

__all__ = ["mean_nll", "supervised_nll"]


def _unwrap(model: torch.nn.Module) -> torch.nn.Module:
    # PEFT wraps the transformers model; the decoder/head accessors live on the inner one.
    get_base = getattr(model, "get_base_model", None)
    return get_base() if callable(get_base) else model


def supervised_nll(model: torch.nn.Module, batch: dict[str, torch.Tensor]) -> tuple[torch.Tensor, int]:
    """Summed next-token negative log-likelihood over labelled positions, and their count.

    Args:
        model: a causal LM (optionally PEFT-wrapped) with get_decoder()/get_output_embeddings().
        batch: input_ids (B, T), labels (B, T) with -100 where there is no loss, and attention_mask or
            position_ids (packed rows).
    """
    inner = _unwrap(model)
    inputs = {k: v for k, v in batch.items() if k in ("input_ids", "attention_mask", "position_ids")}
    hidden = inner.get_decoder()(**inputs, use_cache=False).last_hidden_state  # (B, T, H)
    targets = batch["labels"][:, 1:]  # (B, T-1): token t predicts t+1
    keep = targets != -100
    n = int(keep.sum())
    if n == 0:
        return hidden.sum() * 0.0, 0
    logits = inner.get_output_embeddings()(hidden[:, :-1][keep])  # (N, V), only supervised positions
    loss = F.cross_entropy(logits.float(), targets[keep], reduction="sum")
    return loss, n


@torch.no_grad()
def mean_nll(model: torch.nn.Module, rows: list[dict], batch_size: int, pad_id: int, device: str,
             precision: str) -> float | None:
    """Mean per-token NLL over encoded rows (teacher forcing, labelled tokens only); None when no rows."""
    from tunelab.models.precision import autocast
    from tunelab.training.batching import collate, plan_batches

    if not rows:
        return None
    was_training = model.training
    model.eval()
    total, n = 0.0, 0
    lengths = [len(r["input_ids"]) for r in rows]
    for idx in plan_batches(lengths, batch_size, "length_grouped", 0, 0):
        batch = {k: v.to(device) for k, v in collate([rows[i] for i in idx], "length_grouped", pad_id, 0).items()}
        with autocast(device, precision):
            loss, k = supervised_nll(model, batch)
        total, n = total + float(loss), n + k
    model.train(was_training)
    return total / max(n, 1)
