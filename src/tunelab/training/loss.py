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


def _is_prompt_learning(model: torch.nn.Module) -> bool:
    config = getattr(model, "active_peft_config", None)
    return bool(getattr(config, "is_prompt_learning", False))


def _hidden_through_peft(model: torch.nn.Module, inner: torch.nn.Module, inputs: dict[str, torch.Tensor]
                         ) -> torch.Tensor:
    """Final hidden states of the real tokens for prefix/prompt/P-tuning, whose virtual tokens only the PEFT
    forward adds (as a KV prefix or as prepended embeddings). A hook on the decoder takes its output, so
    the head still runs only at labelled positions (logits_to_keep=1 makes the PEFT call's own head cheap)."""
    from tunelab.errors import TunelabError

    if "position_ids" in inputs:
        raise TunelabError("prompt-learning methods cannot train on packed rows", where="train.batching",
                           fix="use train.batching=length_grouped")
    captured: list[torch.Tensor] = []

    def keep(_module, _args, output) -> None:
        captured.append(output[0] if isinstance(output, tuple) else output.last_hidden_state)

    handle = inner.get_decoder().register_forward_hook(keep)
    try:
        model(**inputs, logits_to_keep=1)
    finally:
        handle.remove()
    # (B, V + T, H) with V prompt/P-tuning virtual tokens in front; a prefix lives in the KV cache (V = 0).
    return captured[-1][:, -inputs["input_ids"].shape[1]:]


def supervised_nll(model: torch.nn.Module, batch: dict[str, torch.Tensor], label_smoothing: float = 0.0
                   ) -> tuple[torch.Tensor, int]:
    """Summed next-token negative log-likelihood over labelled positions, and their count.

    Args:
        model: a causal LM (optionally PEFT-wrapped) with get_decoder()/get_output_embeddings().
        batch: input_ids (B, T), labels (B, T) with -100 where there is no loss, and attention_mask or
            position_ids (packed rows).
    """
    inner = _unwrap(model)
    inputs = {k: v for k, v in batch.items() if k in ("input_ids", "attention_mask", "position_ids")}
    if _is_prompt_learning(model):
        hidden = _hidden_through_peft(model, inner, inputs)  # (B, T, H)
    else:
        hidden = inner.get_decoder()(**inputs, use_cache=False).last_hidden_state  # (B, T, H)
    targets = batch["labels"][:, 1:]  # (B, T-1): token t predicts t+1
    keep = targets != -100
    n = int(keep.sum())
    if n == 0:
        return hidden.sum() * 0.0, 0
    logits = inner.get_output_embeddings()(hidden[:, :-1][keep])  # (N, V), only supervised positions
    loss = F.cross_entropy(logits.float(), targets[keep], reduction="sum", label_smoothing=label_smoothing)
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
