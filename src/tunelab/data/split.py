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

__all__ = ["SPLITS", "content_hash", "split_examples", "split_point"]

SPLITS = ("train", "validation", "test")


def content_hash(example: Example, seed: int = 0) -> str:
    """sha256 of the seed and the canonical JSON of the example's content (messages and text, no provenance)."""
    canonical = json.dumps(example.content(), sort_keys=True, ensure_ascii=False, separators=(",", ":"))
    return hashlib.sha256(f"{seed}\x00{canonical}".encode()).hexdigest()


def split_point(example: Example, seed: int = 0) -> float:
    """A uniform number in [0, 1) fixed by the example's content and the seed."""
    return int(content_hash(example, seed)[:16], 16) / 16**16


def split_examples(examples: Iterable[Example], split: SplitSpec) -> dict[str, list[Example]]:
    """Assign examples to train/validation/test by content hash.

    Args:
        examples: the examples, in any order.
        split: fractions and seed; the test split takes points in ``[0, test)``, validation
            ``[test, test + validation)``, train the rest.

    Returns:
        ``{"train": [...], "validation": [...], "test": [...]}``, each in input order.
    """
    out: dict[str, list[Example]] = {name: [] for name in SPLITS}
    for ex in examples:
        u = split_point(ex, split.seed)
        name = "test" if u < split.test else "validation" if u < split.test + split.validation else "train"
        out[name].append(ex)
    return out
