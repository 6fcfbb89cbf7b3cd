"""Deterministic train/validation/test split by content hash.

Each example goes to a split by a hash of (seed, its content), not by its position, so the assignment is
the same across runs, independent of row order, and stable when rows are added or removed (a row never
wanders from test into train because the file grew). Exact duplicates share a split, which keeps them
from leaking between train and test. The price: fractions are met on average, not exactly, and a tiny
dataset may get an empty validation or test split.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterable

from tunelab.config.specs import SplitSpec
from tunelab.data.records import Example

__all__ = ["SPLITS", "content_hash", "record_split", "split_examples", "split_name", "split_point"]

SPLITS = ("train", "validation", "test")


def content_hash(example: Example, seed: int = 0) -> str:
    """sha256 of the seed and the canonical JSON of the example's content (messages and text, no provenance)."""
    canonical = json.dumps(example.content(), sort_keys=True, ensure_ascii=False, separators=(",", ":"))
    return hashlib.sha256(f"{seed}\x00{canonical}".encode()).hexdigest()


def split_point(example: Example, seed: int = 0) -> float:
    """A uniform number in [0, 1) fixed by the example's content and the seed."""
    return int(content_hash(example, seed)[:16], 16) / 16**16


def split_name(point: float, split: SplitSpec) -> str:
    """The split of a point in [0, 1): test takes ``[0, test)``, validation the next ``validation``, train the rest."""
    if point < split.test:
        return "test"
    return "validation" if point < split.test + split.validation else "train"


def record_split(record: dict | None, split: SplitSpec) -> str:
    """The split a raw record belongs to (used to attribute rejected rows, which have no Example content)."""
    canonical = json.dumps(record, sort_keys=True, ensure_ascii=False, separators=(",", ":"), default=str)
    digest = hashlib.sha256(f"{split.seed}\x00{canonical}".encode()).hexdigest()
    return split_name(int(digest[:16], 16) / 16**16, split)


def split_examples(examples: Iterable[Example], split: SplitSpec) -> dict[str, list[Example]]:
    """Assign examples to train/validation/test by content hash.

    Args:
        examples: the examples, in any order.
        split: fractions and seed (see `split_name`).

    Returns:
        ``{"train": [...], "validation": [...], "test": [...]}``, each in input order.
    """
    out: dict[str, list[Example]] = {name: [] for name in SPLITS}
    for ex in examples:
        out[split_name(split_point(ex, split.seed), split)].append(ex)
    return out
