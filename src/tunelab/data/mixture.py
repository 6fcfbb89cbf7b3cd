"""Multi-task mixtures (``data.mixture``): several sources, each with its own format, sampled by weight.

Each source is read, converted, split, curated and encoded on its own, with its own format, columns,
template and label column, so validation and test rows exist per source and no source's rows leak
across splits. The training split then draws from the sources in proportion to their weights:

- the number of training rows is ``data.limit`` (at most the rows available) or all rows available;
- source *i* gets ``round(total * w_i / sum(w))`` rows (largest remainder, so the counts add up);
- a source with more rows than its quota contributes a seeded sample without replacement (the rest are
  counted as ``not_used_limit``); a source with fewer is repeated whole, plus a seeded sample for the
  remainder (counted as ``repeated``).

Validation and test rows (``data.eval_limit`` per source) are interleaved round-robin, so the first rows of
an evaluation cover every source. Everything is a function of the data and ``data.split.seed``.
Accounting per split: ``rows_read == kept - repeated + sum(rejected) + not_used_limit``.
"""

from __future__ import annotations

import random
import re
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tunelab.config.specs import DataSpec, MixtureSource
from tunelab.data.cache import cache_key, load_cached, save_cached
from tunelab.data.pipeline import (
    PreparedData,
    _assign,
    _check_train,
    _curate_splits,
    _encode_split,
    _finish_split,
    _load_source,
    _Source,
    _split_summary,
    make_encoder,
    resolve_data_path,
)
from tunelab.data.readers import file_sha256
from tunelab.data.records import Example, Reject, reason_key
from tunelab.data.split import SPLITS
from tunelab.errors import TunelabError

__all__ = ["prepare_mixture", "quotas"]

_PER_SOURCE_KEYS = ("format", "columns", "delimiter", "prompt_template", "system_prompt", "label_column")
_KEY_RE = re.compile(r"\bdata\.(path|format|columns|delimiter|prompt_template|system_prompt|label_column)\b")


@dataclass
class _Part:
    """One source after splitting and encoding (before the training split is sampled)."""

    name: str
    weight: float
    source: _Source
    splits: dict[str, list[Example]]
    encoded: dict[str, list[dict[str, Any]]]
    rejects: dict[str, list[Reject]]
    unused: dict[str, int]
    curation: list[dict]


def _source_spec(spec: DataSpec, src: MixtureSource) -> DataSpec:
    """The data section as this source sees it: its own path and format keys, the shared rest."""
    update: dict[str, Any] = {"path": src.path, "mixture": [], "validation_path": None, "test_path": None,
                              "limit": None}
    update.update({k: getattr(src, k) for k in _PER_SOURCE_KEYS if getattr(src, k) is not None})
    return spec.model_copy(update=update)


def _at_entry(e: TunelabError, i: int) -> TunelabError:
    """The same error, placed at the mixture entry (``data.mixture[1].path``) instead of a top-level key."""
    where = e.where or ""
    if _KEY_RE.search(where):
        where = _KEY_RE.sub(lambda m: f"data.mixture[{i}].{m.group(1)}", where)
    else:
        where = f"data.mixture[{i}].path" + (f" ({where})" if where else "")
    return TunelabError(e.what, where=where, fix=e.fix)


def _names(sources: list[MixtureSource]) -> list[str]:
    names = [s.name or Path(s.path).name for s in sources]
    dup = {n for n, c in Counter(names).items() if c > 1}
    return [f"{n}[{i}]" if n in dup else n for i, n in enumerate(names)]


def _prepare_part(i: int, name: str, spec: DataSpec, tokenizer: Any, objective: str, sha: str) -> _Part:
    src = spec.mixture[i]
    sub = _source_spec(spec, src)
    try:
        source = _load_source(resolve_data_path(src.path), sha, sub)
        assigned, rejects = _assign({"train": source}, sub)
        curation = _curate_splits(assigned, rejects, sub) if sub.curate.steps else []
        encode = make_encoder(sub, tokenizer, objective)
    except TunelabError as e:
        raise _at_entry(e, i) from None
    splits, encoded, unused = {}, {}, {}
    for split in SPLITS:
        limit = None if split == "train" else spec.eval_limit
        splits[split], encoded[split], enc_rejects, unused[split] = _encode_split(assigned[split], encode, limit)
        rejects[split] = rejects[split] + enc_rejects
    if not encoded["train"]:
        top = ", ".join(f"'{k}' x{n}" for k, n in Counter(reason_key(r.reason) for r in rejects["train"]).most_common(3))
        raise TunelabError(f"source '{name}' has no training rows left (rejected: {top or 'none'})",
                           where=f"data.mixture[{i}].path",
                           fix="check this entry's format and columns, or remove it from data.mixture")
    curation = [{"source": name, **c} for c in curation]
    return _Part(name, src.weight, source, splits, encoded, rejects, unused, curation)


# ------------------------------------------------------------------------------------------------ sampling


def quotas(weights: list[float], total: int) -> list[int]:
    """Rows per source: ``total`` split in proportion to ``weights`` (largest remainder; sums to ``total``)."""
    exact = [total * w / sum(weights) for w in weights]
    counts = [int(x) for x in exact]
    by_remainder = sorted(range(len(weights)), key=lambda i: (-(exact[i] - counts[i]), i))
    for i in by_remainder[: total - sum(counts)]:
        counts[i] += 1
    return counts


def _draw(n: int, count: int, rng: random.Random) -> list[int]:
    """``count`` indices into ``n`` rows: whole copies while the quota exceeds n, then a sample without replacement."""
    copies, rest = divmod(count, n)
    return list(range(n)) * copies + sorted(rng.sample(range(n), rest))


def _interleave(lists: list[list[Any]]) -> list[Any]:
    out = []
    for i in range(max((len(x) for x in lists), default=0)):
        out.extend(x[i] for x in lists if i < len(x))
    return out


def _sample_train(parts: list[_Part], spec: DataSpec) -> tuple[list[Example], list[dict[str, Any]], list[int]]:
    available = [len(p.encoded["train"]) for p in parts]
    total = min(spec.limit, sum(available)) if spec.limit else sum(available)
    counts = quotas([p.weight for p in parts], total)
    rows: list[tuple[Example, dict[str, Any]]] = []
    for i, (part, count) in enumerate(zip(parts, counts, strict=True)):
        rng = random.Random(f"{spec.split.seed}:mixture:{i}")
        rows.extend((part.splits["train"][j], part.encoded["train"][j]) for j in _draw(available[i], count, rng))
    # Seeded shuffle: blocks (data.packing=blocks) then mix sources; batching reshuffles every epoch anyway.
    random.Random(f"{spec.split.seed}:mixture").shuffle(rows)
    return [ex for ex, _ in rows], [enc for _, enc in rows], counts


# ------------------------------------------------------------------------------------------------ summary


def _part_summary(part: _Part, count: int, share: float) -> dict[str, Any]:
    splits = {s: _split_summary(part.source, part.encoded[s], part.rejects[s], part.unused[s]) for s in SPLITS}
    available = len(part.encoded["train"])
    splits["train"].update(sampled=count, not_used_limit=max(0, available - count),
                           repeated=max(0, count - available))
    return {"name": part.name, "path": str(part.source.path), "sha256": part.source.sha256,
            "format": part.source.format, "weight": part.weight, "share": round(share, 4),
            "rows_read": part.source.rows_read, "train_available": available, "train_sampled": count,
            "splits": splits}


def _merged_split(per_source: list[dict[str, Any]], encoded: list[dict[str, Any]]) -> dict[str, Any]:
    """One split over all sources, with the columns of a single-file split summary."""
    rejected: Counter[str] = Counter()
    for s in per_source:
        rejected.update(s["rejected"])
    tokens = [e["n_tokens"] for e in encoded]
    return {
        "source": "mixture", "format": "mixture",
        "rows_read": sum(s["rows_read"] for s in per_source), "kept": len(encoded),
        "rejected": dict(rejected.most_common()),
        "not_used_limit": sum(s["not_used_limit"] for s in per_source),
        "repeated": sum(s.get("repeated", 0) for s in per_source),
        "truncated": sum(e["truncated"] for e in encoded), "tokens": sum(tokens),
        "loss_tokens": sum(e["n_loss"] for e in encoded),
        "mean_len": round(sum(tokens) / len(tokens), 1) if tokens else 0.0, "max_len": max(tokens, default=0),
    }


def _build(spec: DataSpec, tokenizer: Any, objective: str, hashes: list[str], key: str) -> PreparedData:
    names = _names(spec.mixture)
    parts = [_prepare_part(i, names[i], spec, tokenizer, objective, hashes[i]) for i in range(len(names))]
    splits: dict[str, list[Example]] = {}
    encoded: dict[str, list[dict[str, Any]]] = {}
    splits["train"], encoded["train"], counts = _sample_train(parts, spec)
    for s in ("validation", "test"):
        splits[s] = _interleave([p.splits[s] for p in parts])
        encoded[s] = _interleave([p.encoded[s] for p in parts])
    weights = sum(p.weight for p in parts)
    sources = [_part_summary(p, c, p.weight / weights) for p, c in zip(parts, counts, strict=True)]
    merged = {s: _merged_split([src["splits"][s] for src in sources], encoded[s]) for s in SPLITS}
    for s in SPLITS:
        encoded[s] = _finish_split(encoded[s], merged[s], spec)
    rejects = [r for p in parts for s in SPLITS for r in p.rejects[s]]
    summary = {
        "format": "mixture",
        "files": {f"mixture[{i}]": {"path": str(p.source.path), "sha256": p.source.sha256,
                                    "format": p.source.format, "rows_read": p.source.rows_read}
                  for i, p in enumerate(parts)},
        "splits": merged, "mixture": sources,
        "rows_read": sum(p.source.rows_read for p in parts), "kept": sum(m["kept"] for m in merged.values()),
        "rejected": dict(Counter(reason_key(r.reason) for r in rejects).most_common()),
        "max_length": spec.max_length, "overlength": spec.overlength,
    }
    curation = [c for p in parts for c in p.curation]
    if curation:
        summary["curation"] = curation
    _check_train(summary, spec)
    return PreparedData(splits, encoded, rejects, summary, key)


def _hash(i: int, src: MixtureSource) -> str:
    try:
        return file_sha256(resolve_data_path(src.path))
    except TunelabError as e:
        raise _at_entry(e, i) from None


def prepare_mixture(spec: DataSpec, tokenizer: Any, objective: str = "sft") -> PreparedData:
    """`prepare_data` for ``data.mixture`` (cached by content hash like a single file).

    ``summary["mixture"]`` lists per source: name, path, sha256, format, weight, share, rows_read,
    train_available, train_sampled and its own per-split summaries; ``summary["splits"]`` merges them.

    Raises:
        TunelabError: naming the entry (``data.mixture[1].path``) for a source that cannot be read or
            converted or that has no training rows; as `prepare_data` otherwise.
    """
    hashes = [_hash(i, src) for i, src in enumerate(spec.mixture)]
    files = {f"mixture[{i}]": h for i, h in enumerate(hashes)}
    extra = {f"decontam:{p}": file_sha256(resolve_data_path(p)) for p in spec.curate.decontam.files}
    key = cache_key({**files, **extra, "objective": objective}, spec, tokenizer)
    cached = load_cached(key)
    if cached is not None:
        return PreparedData.from_dict(cached, from_cache=True)
    data = _build(spec, tokenizer, objective, hashes, key)
    save_cached(key, data.to_dict())
    return data
