"""Batch layouts. Padding is wasted compute on a CPU, so the default groups similar lengths together."""

from __future__ import annotations

import random
from collections.abc import Sequence
from typing import Any

import torch

from tunelab.errors import TunelabError

__all__ = ["collate", "curriculum_order", "plan_batches"]


def curriculum_order(difficulty: Sequence[float | None], seed: int, key: str = "data.score_column") -> list[int]:
    """Row indices from easy to hard (ascending difficulty); ties in a seeded random order."""
    missing = sum(d is None for d in difficulty)
    if missing:
        raise TunelabError(f"{missing} training rows have no curriculum score", where=key,
                           fix="set data.score_column to a numeric column present in every row")
    order = list(range(len(difficulty)))
    random.Random(f"{seed}:curriculum").shuffle(order)
    return sorted(order, key=lambda i: difficulty[i])  # stable: equal difficulty keeps the shuffled order


def plan_batches(lengths: list[int], batch_size: int, mode: str, seed: int, epoch: int,
                 curriculum: str = "none", scores: Sequence[float | None] | None = None) -> list[list[int]]:
    """Index lists, one per micro-batch, for one epoch (deterministic in seed and epoch).

    'length_grouped' shuffles, sorts within windows of 64 batches by length and shuffles the batches, so
    each batch holds similar lengths but the order stays random (the HF `group_by_length` idea).

    A curriculum ('length': fewest tokens first; 'score': lowest ``scores`` first) orders the first epoch
    easy to hard in consecutive batches. Later epochs are shuffled as without one: by then every row has been
    seen, and a fixed order each epoch would bring back the order effects that shuffling removes.
    """
    if curriculum != "none" and epoch == 0:
        difficulty = lengths if curriculum == "length" else (scores if scores is not None else [None] * len(lengths))
        order = curriculum_order(difficulty, seed)
        return [order[i:i + batch_size] for i in range(0, len(order), batch_size)]
    rng = random.Random(f"{seed}:{epoch}")
    order = list(range(len(lengths)))
    rng.shuffle(order)
    if mode == "length_grouped":
        window = batch_size * 64
        grouped: list[int] = []
        for start in range(0, len(order), window):
            grouped.extend(sorted(order[start:start + window], key=lambda i: -lengths[i]))
        order = grouped
    batches = [order[i:i + batch_size] for i in range(0, len(order), batch_size)]
    if mode == "length_grouped":
        rng.shuffle(batches)
    return batches


def _pad(rows: list[dict[str, Any]], pad_id: int, width: int) -> dict[str, torch.Tensor]:
    n = len(rows)
    input_ids = torch.full((n, width), pad_id, dtype=torch.long)
    labels = torch.full((n, width), -100, dtype=torch.long)
    attention = torch.zeros((n, width), dtype=torch.long)
    for r, row in enumerate(rows):
        k = len(row["input_ids"])
        input_ids[r, :k] = torch.tensor(row["input_ids"])
        labels[r, :k] = torch.tensor(row["labels"])
        attention[r, :k] = 1
    return {"input_ids": input_ids, "labels": labels, "attention_mask": attention}


def _pack(rows: list[dict[str, Any]]) -> dict[str, torch.Tensor]:
    # One row of concatenated documents; position_ids restart at 0 for each document, which Transformers
    # turns into a block-diagonal (per-document) causal mask when no attention_mask is given.
    ids = [t for row in rows for t in row["input_ids"]]
    labels: list[int] = []
    for row in rows:
        doc = list(row["labels"])
        doc[0] = -100  # never predict a document's first token from the previous document
        labels.extend(doc)
    pos = [p for row in rows for p in range(len(row["input_ids"]))]
    return {
        "input_ids": torch.tensor([ids]),  # (1, total_tokens)
        "labels": torch.tensor([labels]),
        "position_ids": torch.tensor([pos]),
    }


# oneDNN builds kernels per tensor shape and the first call of each shape is several times slower; rounding
# batch widths up to a multiple of this keeps the number of distinct shapes small (measured: ~2x faster
# steady state on variable-length batches, for ~5% padding).
PAD_MULTIPLE = 32


def collate(rows: list[dict[str, Any]], mode: str, pad_id: int, max_length: int) -> dict[str, torch.Tensor]:
    """Tensors for one micro-batch: padded to the longest row, to max_length ('padded'), or packed."""
    if mode == "packed":
        return _pack(rows)
    if mode == "padded":
        width = max_length
    else:
        longest = max(len(r["input_ids"]) for r in rows)
        width = -(-longest // PAD_MULTIPLE) * PAD_MULTIPLE
    return _pad(rows, pad_id, width)
