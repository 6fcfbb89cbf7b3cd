"""Deterministic train/validation/test split: content hash, optional label stratification, duplicate groups.

Every decision is a function of the rows' content and the seed, never of their position, so the assignment
is the same across runs and independent of row order.

* Units. Rows with the same content always form one unit. With ``group_near_duplicates`` the exact
  (normalised text) and near-duplicate clusters of `tunelab.data.dedup` are merged into units too, so a
  near-duplicate pair never straddles train and validation/test. A unit is represented by its member with
  the lowest content hash and moves as a whole.
* Hash assignment (``stratify: none``). A unit goes to the split its representative's hash point falls in
  (test takes ``[0, test)``, validation the next ``validation``, train the rest). Stable when rows are added
  or removed; fractions are met on average only. With single-row units this is the historical assignment.
* Stratified assignment (``stratify: label``, or ``auto`` when the final assistant answers look like
  labels). Each class (the representative's answer, whitespace-normalised and case-folded) gets row quotas
  per split: floor of its share, plus at most one extra row per split handed out so that the global split
  sizes are the largest-remainder rounding of the fractions. So every split holds each class's share within
  one row, and the totals are exact. Inside a class, units are ordered by representative hash and dealt:
  test first, then validation, then train; a unit goes where the middle of its rows falls.

Whatever the mode, if train would end up empty while other splits are not, the unit with the highest hash
moves to train (tiny datasets).
"""

from __future__ import annotations

import hashlib
import json
import math
from collections import defaultdict
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

from tunelab.config.specs import SplitSpec
from tunelab.data.records import Example

__all__ = [
    "SPLITS",
    "content_hash",
    "example_label",
    "looks_like_labels",
    "record_split",
    "split_examples",
    "split_name",
    "split_point",
]

SPLITS = ("train", "validation", "test")
_PRIORITY = ("train", "test", "validation")  # tie-breaks of rounding: a tiny dataset keeps train first
_DEAL_ORDER = ("test", "validation", "train")  # order in which a class's sorted units are dealt
AUTO_MIN_ROWS, AUTO_MAX_CLASSES, AUTO_MAX_WORDS = 20, 30, 4
_EPS = 1e-9


@dataclass
class _Unit:
    """Rows that always share a split: input indices (ascending), the representative and its hash."""

    members: list[int]
    rep: int
    rep_hash: str

    @property
    def size(self) -> int:
        return len(self.members)


def content_hash(example: Example, seed: int = 0) -> str:
    """sha256 of the seed and the canonical JSON of the example's content (messages and text, no provenance)."""
    canonical = json.dumps(example.content(), sort_keys=True, ensure_ascii=False, separators=(",", ":"))
    return hashlib.sha256(f"{seed}\x00{canonical}".encode()).hexdigest()


def _hash_point(digest: str) -> float:
    return int(digest[:16], 16) / 16**16


def split_point(example: Example, seed: int = 0) -> float:
    """A uniform number in [0, 1) fixed by the example's content and the seed."""
    return _hash_point(content_hash(example, seed))


def split_name(point: float, split: SplitSpec) -> str:
    """The split of a point in [0, 1): test takes ``[0, test)``, validation the next ``validation``, train the rest."""
    if point < split.test:
        return "test"
    return "validation" if point < split.test + split.validation else "train"


def record_split(record: dict | None, split: SplitSpec) -> str:
    """The split a raw record belongs to (used to attribute rejected rows, which have no Example content)."""
    canonical = json.dumps(record, sort_keys=True, ensure_ascii=False, separators=(",", ":"), default=str)
    digest = hashlib.sha256(f"{split.seed}\x00{canonical}".encode()).hexdigest()
    return split_name(_hash_point(digest), split)


# ------------------------------------------------------------------------------------------------ labels


def example_label(example: Example) -> str | None:
    """The class of an example: its final assistant answer, whitespace-normalised and case-folded (or None)."""
    answer = example.reference
    return None if answer is None else " ".join(answer.split()).casefold()


def looks_like_labels(labels: Sequence[str | None]) -> bool:
    """Whether answers look like class labels: enough rows, few distinct values, each a few words."""
    if len(labels) < AUTO_MIN_ROWS or any(label is None for label in labels):
        return False
    distinct = set(labels)
    return len(distinct) <= AUTO_MAX_CLASSES and all(len(d.split()) <= AUTO_MAX_WORDS for d in distinct)


def _stratify(labels: Sequence[str | None], split: SplitSpec) -> bool:
    if split.stratify == "auto":
        return looks_like_labels(labels)
    return split.stratify == "label"


# ------------------------------------------------------------------------------------------------- units


def _find(parent: list[int], i: int) -> int:
    while parent[i] != i:
        parent[i] = parent[parent[i]]
        i = parent[i]
    return i


def _union_clusters(n: int, clusters: Iterable[Sequence[int]]) -> list[int]:
    """The root of each index after merging every cluster (union-find; the root is the lowest index)."""
    parent = list(range(n))
    for cluster in clusters:
        for j in cluster[1:]:
            a, b = _find(parent, cluster[0]), _find(parent, j)
            parent[max(a, b)] = min(a, b)
    return [_find(parent, i) for i in range(n)]


def _duplicate_clusters(examples: Sequence[Example]) -> list[list[int]]:
    """Exact (normalised text) and near-duplicate clusters of the examples' text, default MinHash settings."""
    from tunelab.data.curate import example_text
    from tunelab.data.dedup import MinHashParams, exact_duplicate_clusters, near_duplicate_clusters

    texts = [example_text(ex) for ex in examples]
    return exact_duplicate_clusters(texts) + near_duplicate_clusters(texts, MinHashParams())


def _units(examples: Sequence[Example], hashes: Sequence[str], group: bool) -> list[_Unit]:
    """Units sorted by representative hash: same content always together, duplicate clusters if ``group``."""
    clusters: dict[str, list[int]] = defaultdict(list)
    for i, digest in enumerate(hashes):
        clusters[digest].append(i)
    merged: list[Sequence[int]] = list(clusters.values())
    if group and len(examples) > 1:
        merged += _duplicate_clusters(examples)
    members: dict[int, list[int]] = defaultdict(list)
    for i, root in enumerate(_union_clusters(len(examples), merged)):
        members[root].append(i)
    reps = [min(idx, key=lambda i: (hashes[i], i)) for idx in members.values()]
    units = [_Unit(idx, rep, hashes[rep]) for idx, rep in zip(members.values(), reps, strict=True)]
    return sorted(units, key=lambda u: (u.rep_hash, u.rep))


# -------------------------------------------------------------------------------------------- assignment


def _fractions(split: SplitSpec) -> dict[str, float]:
    return {"train": max(0.0, 1.0 - split.validation - split.test), "validation": split.validation,
            "test": split.test}


def _floor(x: float) -> int:
    return math.floor(x + _EPS)


def _largest_remainder(n: int, fractions: dict[str, float]) -> dict[str, int]:
    """Integer split sizes summing to ``n``: floors, then the largest remainders get one more row each."""
    counts = {s: _floor(n * f) for s, f in fractions.items()}
    order = sorted(_PRIORITY, key=lambda s: (-(n * fractions[s] - counts[s]), _PRIORITY.index(s)))
    for s in order[: n - sum(counts.values())]:
        counts[s] += 1
    return counts


def _class_quotas(sizes: dict[str, int], split: SplitSpec) -> dict[str, dict[str, int]]:
    """Rows per class and split: each within one row of its share, totals equal the global rounding."""
    fractions = _fractions(split)
    quotas = {c: {s: _floor(n * fractions[s]) for s in SPLITS} for c, n in sizes.items()}
    left = {c: n - sum(quotas[c].values()) for c, n in sizes.items()}
    target = _largest_remainder(sum(sizes.values()), fractions)
    extra = {s: target[s] - sum(q[s] for q in quotas.values()) for s in SPLITS}

    def give(c: str, s: str) -> None:
        quotas[c][s] += 1
        left[c] -= 1
        extra[s] -= 1

    remainders = [(sizes[c] * fractions[s] - quotas[c][s], c, s) for c in sorted(sizes) for s in _PRIORITY]
    given: set[tuple[str, str]] = set()
    for frac, c, s in sorted(remainders, key=lambda r: (-r[0], r[1], _PRIORITY.index(r[2]))):
        if frac > _EPS and left[c] > 0 and extra[s] > 0:
            give(c, s)
            given.add((c, s))
    for c in sorted(sizes):  # what rounding could not place: exact-share splits, then anywhere with room
        for s in [s for s in _PRIORITY if (c, s) not in given] + list(_PRIORITY):
            while left[c] > 0 and extra[s] > 0:
                give(c, s)
                if (c, s) not in given:
                    given.add((c, s))
                    break
    return quotas


def _deal(units: Sequence[_Unit], quota: dict[str, int]) -> list[str]:
    """Splits for a class's units (in hash order): each goes where the middle of its rows falls."""
    bounds, total = [], 0
    for s in _DEAL_ORDER:
        total += quota[s]
        bounds.append((total, s))
    out, done = [], 0
    for unit in units:
        middle = done + unit.size / 2
        out.append(next((s for bound, s in bounds if middle < bound), "train"))
        done += unit.size
    return out


def _stratified(units: Sequence[_Unit], labels: Sequence[str | None]) -> tuple[list[list[int]], dict[str, int]]:
    """Unit positions per class (hash order kept) and the class sizes in rows (a unit counts its size)."""
    by_class: dict[str, list[int]] = defaultdict(list)
    sizes: dict[str, int] = defaultdict(int)
    for k, unit in enumerate(units):
        label = labels[unit.rep] if labels[unit.rep] is not None else ""
        by_class[label].append(k)
        sizes[label] += unit.size
    return by_class, dict(sizes)


def _assign_stratified(units: Sequence[_Unit], labels: Sequence[str | None], split: SplitSpec) -> list[str]:
    by_class, sizes = _stratified(units, labels)
    quotas = _class_quotas(sizes, split)
    out = ["train"] * len(units)
    for c, positions in by_class.items():
        for k, name in zip(positions, _deal([units[k] for k in positions], quotas[c]), strict=True):
            out[k] = name
    return out


def _keep_train(assigned: list[str]) -> None:
    """If train is empty but another split is not, move the highest-hash unit (the last) to train."""
    if assigned and "train" not in assigned:
        assigned[-1] = "train"


def split_examples(examples: Iterable[Example], split: SplitSpec) -> dict[str, list[Example]]:
    """Assign examples to train/validation/test (see the module docstring for the rule).

    Args:
        examples: the examples, in any order.
        split: fractions, seed, stratification and duplicate grouping.

    Returns:
        ``{"train": [...], "validation": [...], "test": [...]}``, each in input order.
    """
    examples = list(examples)
    hashes = [content_hash(ex, split.seed) for ex in examples]
    units = _units(examples, hashes, split.group_near_duplicates)
    labels = [example_label(ex) for ex in examples]
    if _stratify(labels, split):
        assigned = _assign_stratified(units, labels, split)
    else:
        assigned = [split_name(_hash_point(u.rep_hash), split) for u in units]
    _keep_train(assigned)
    name_of = {i: name for unit, name in zip(units, assigned, strict=True) for i in unit.members}
    out: dict[str, list[Example]] = {name: [] for name in SPLITS}
    for i, ex in enumerate(examples):
        out[name_of[i]].append(ex)
    return out
