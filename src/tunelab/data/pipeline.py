"""The data stage end to end: read → convert → split → tokenize → summarise, cached by content hash.

Accounting invariant, per split: ``rows_read == kept + sum(rejected.values()) + not_used_limit``.
Rows of the main file that fail format conversion are attributed to a split by the hash of their raw
record, so every row read is counted in exactly one split.
"""

from __future__ import annotations

import importlib
import json
import math
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tunelab.config.specs import DataSpec, SplitSpec
from tunelab.data.cache import cache_key, load_cached, save_cached
from tunelab.data.formats import resolve_format, to_examples
from tunelab.data.readers import file_sha256, read_records
from tunelab.data.records import Example, Reject, reason_key
from tunelab.data.split import SPLITS, record_split, split_examples
from tunelab.data.tokenize import encode_classification, encode_example, pack_blocks
from tunelab.errors import TunelabError
from tunelab.util.io import atomic_write_text

__all__ = ["OBJECTIVES", "PreparedData", "eval_file_texts", "make_encoder", "prepare_data", "read_examples",
           "resolve_data_path", "write_rejects"]

_ROLE_KEYS = {"train": "path", "validation": "validation_path", "test": "test_path"}
OBJECTIVES = ("sft", "pretrain", "classify")  # how rows are encoded (train.objective)
_NO_LIMIT = 1 << 62  # documents packed into blocks are cut by the blocks, never dropped for their length

Encoder = Callable[[Example], "dict[str, Any] | Reject"]


@dataclass
class PreparedData:
    """The result of `prepare_data`.

    Attributes:
        splits: ``train``/``validation``/``test`` examples that were kept, after limits.
        encoded: the `encode_example` dicts, parallel to ``splits`` (same keys, same order, same length); with
            ``data.packing: blocks`` the blocks of joined documents instead (``splits`` holds the documents).
        rejects: every rejected row, from all files and stages, with its reason.
        summary: counts and token statistics (see `prepare_data`).
        fingerprint: content hash of inputs, spec and tokenizer (also the cache key).
        from_cache: whether this came from the cache (not part of equality).
    """

    splits: dict[str, list[Example]]
    encoded: dict[str, list[dict[str, Any]]]
    rejects: list[Reject]
    summary: dict[str, Any]
    fingerprint: str
    from_cache: bool = field(default=False, compare=False)

    def to_dict(self) -> dict[str, Any]:
        return {
            "splits": {k: [ex.to_dict() for ex in v] for k, v in self.splits.items()},
            "encoded": self.encoded,
            "rejects": [r.to_dict() for r in self.rejects],
            "summary": self.summary,
            "fingerprint": self.fingerprint,
        }

    @classmethod
    def from_dict(cls, d: dict[str, Any], from_cache: bool = False) -> PreparedData:
        return cls(
            splits={k: [Example.from_dict(x) for x in v] for k, v in d["splits"].items()},
            encoded=d["encoded"],
            rejects=[Reject.from_dict(r) for r in d["rejects"]],
            summary=d["summary"],
            fingerprint=d["fingerprint"],
            from_cache=from_cache,
        )


@dataclass
class _Source:
    """One input file after reading and format conversion."""

    path: Path
    sha256: str
    format: str
    rows_read: int
    examples: list[Example]
    rejects: list[Reject]


# ------------------------------------------------------------------------------------------------ paths


def resolve_data_path(path: str) -> Path:
    """A data path as a file: ``demo:NAME`` asks `tunelab.data.demo` to write its dataset (JSONL, messages)."""
    if not path.startswith("demo:"):
        p = Path(path).expanduser()
        # A dataset folder written by `tunelab data ...` (data.jsonl + manifest.json) stands for its data.
        if p.is_dir() and (p / "data.jsonl").is_file() and (p / "manifest.json").is_file():
            return p / "data.jsonl"
        return p
    # Imported here: the demo module is optional for everything else in this package.
    demo = importlib.import_module("tunelab.data.demo")
    return Path(demo.materialize(path.removeprefix("demo:")))


def _input_files(spec: DataSpec) -> dict[str, Path]:
    files = {"train": resolve_data_path(spec.path)}
    for role in ("validation", "test"):
        value = getattr(spec, _ROLE_KEYS[role])
        if value is not None:
            files[role] = resolve_data_path(value)
    return files


def _hash_inputs(files: dict[str, Path]) -> dict[str, str]:
    return {role: file_sha256(path) for role, path in files.items()}


# ---------------------------------------------------------------------------------------------- reading


def read_examples(path: Path, spec: DataSpec) -> tuple[int, str, list[Example], list[Reject]]:
    """Read and convert one file: (rows read, format, examples, rejects), honouring data.on_error."""
    skipped: list[Reject] | None = [] if spec.on_error == "skip" else None
    records = read_records(path, delimiter=spec.delimiter, encoding=spec.encoding, skipped=skipped)
    if not records:
        raise TunelabError(f"no readable records ({len(skipped or [])} malformed rows skipped)", where=str(path),
                           fix="check that this is the right file and format")
    fmt = resolve_format(records, spec)
    examples, rejects = to_examples(records, spec, fmt=fmt)
    return len(records) + len(skipped or []), fmt, examples, (skipped or []) + rejects


def _load_source(path: Path, sha256: str, spec: DataSpec) -> _Source:
    rows, fmt, examples, rejects = read_examples(path, spec)
    return _Source(path, sha256, fmt, rows, examples, rejects)


def _main_split(spec: DataSpec) -> SplitSpec:
    # A separate validation/test file replaces that share of the main file.
    return spec.split.model_copy(update={
        "validation": 0.0 if spec.validation_path else spec.split.validation,
        "test": 0.0 if spec.test_path else spec.split.test,
    })


def _assign(sources: dict[str, _Source], spec: DataSpec) -> tuple[dict[str, list[Example]], dict[str, list[Reject]]]:
    """Examples and format-stage rejects per split."""
    main, split = sources["train"], _main_split(spec)
    examples = split_examples(main.examples, split)
    rejects: dict[str, list[Reject]] = {name: [] for name in SPLITS}
    for r in main.rejects:
        rejects[record_split(r.record, split)].append(r)
    for role in ("validation", "test"):
        if role in sources:
            examples[role], rejects[role] = sources[role].examples, sources[role].rejects
    return examples, rejects


# --------------------------------------------------------------------------------------------- encoding


def _with_score(encode: Encoder, column: str) -> Encoder:
    """Add the row's numeric ``score`` (train.curriculum=score); a row without one is a counted reject."""

    def encode_scored(ex: Example) -> dict[str, Any] | Reject:
        out = encode(ex)
        if isinstance(out, Reject):
            return out
        value = ex.raw.get(column)
        if value is None or (isinstance(value, str) and not value.strip()):
            return Reject(ex.where, f"missing score (column '{column}')", ex.raw)
        try:
            score = float(value) if not isinstance(value, bool) else math.nan
        except (TypeError, ValueError):
            score = math.nan
        if not math.isfinite(score):
            return Reject(ex.where, f"score is not a number (column '{column}': {str(value)[:40]!r})", ex.raw)
        out["score"] = score
        return out

    return encode_scored


def make_encoder(spec: DataSpec, tokenizer: Any, objective: str = "sft") -> Encoder:
    """Example -> encoded dict or Reject, as the objective needs (chat/text tokens, or classifier input)."""
    if objective not in OBJECTIVES:
        raise TunelabError(f"unknown objective '{objective}'", where="train.objective",
                           fix=f"use one of: {', '.join(OBJECTIVES)}")
    if objective == "classify":
        def encode(ex: Example) -> dict[str, Any] | Reject:
            return encode_classification(ex, tokenizer, spec.max_length, spec.overlength, spec.label_column)
    else:
        max_length = _NO_LIMIT if spec.packing == "blocks" else spec.max_length

        def encode(ex: Example) -> dict[str, Any] | Reject:
            return encode_example(ex, tokenizer, max_length, spec.overlength)
    return _with_score(encode, spec.score_column) if spec.score_column else encode


def _check_blocks(sources: dict[str, _Source], spec: DataSpec) -> None:
    for role, source in sources.items():
        if source.format != "text":
            key = "data.path" if role == "train" else f"data.{_ROLE_KEYS[role]}"
            raise TunelabError(f"data.packing=blocks joins plain-text documents, but {source.path} is "
                               f"'{source.format}' data", where=f"data.packing, {key}",
                               fix="use plain-text data (data.format=text / data.columns={text: COLUMN}), or "
                               "data.packing=none for chat data")


def _finish_split(encoded: list[dict[str, Any]], summary: dict[str, Any], spec: DataSpec) -> list[dict[str, Any]]:
    """Blocks of joined documents when data.packing=blocks (their counts go into the split summary)."""
    if spec.packing != "blocks":
        return encoded
    blocks, summary["packing"] = pack_blocks(encoded, spec.max_length)
    return blocks


def _encode_split(
    examples: list[Example], encode: Encoder, limit: int | None
) -> tuple[list[Example], list[dict[str, Any]], list[Reject], int]:
    """Encode in order until ``limit`` examples are kept; returns kept, encoded, rejects, rows not used."""
    kept, encoded, rejects = [], [], []
    for i, ex in enumerate(examples):
        if limit is not None and len(kept) >= limit:
            return kept, encoded, rejects, len(examples) - i
        result = encode(ex)
        if isinstance(result, Reject):
            rejects.append(result)
        else:
            kept.append(ex)
            encoded.append(result)
    return kept, encoded, rejects, 0


def _split_summary(source: _Source, encoded: list[dict[str, Any]], rejects: list[Reject], unused: int) -> dict:
    tokens = [e["n_tokens"] for e in encoded]
    return {
        "source": str(source.path),
        "sha256": source.sha256,
        "format": source.format,
        "rows_read": len(encoded) + len(rejects) + unused,
        "kept": len(encoded),
        "rejected": dict(Counter(reason_key(r.reason) for r in rejects).most_common()),
        "not_used_limit": unused,
        "truncated": sum(e["truncated"] for e in encoded),
        "tokens": sum(tokens),
        "loss_tokens": sum(e["n_loss"] for e in encoded),
        "mean_len": round(sum(tokens) / len(tokens), 1) if tokens else 0.0,
        "max_len": max(tokens, default=0),
    }


def _summary(sources: dict[str, _Source], splits: dict[str, dict], rejects: list[Reject], spec: DataSpec) -> dict:
    return {
        "format": sources["train"].format,
        "files": {role: {"path": str(s.path), "sha256": s.sha256, "format": s.format, "rows_read": s.rows_read}
                  for role, s in sources.items()},
        "splits": splits,
        "rows_read": sum(s.rows_read for s in sources.values()),
        "kept": sum(s["kept"] for s in splits.values()),
        "rejected": dict(Counter(reason_key(r.reason) for r in rejects).most_common()),
        "max_length": spec.max_length,
        "overlength": spec.overlength,
    }


def _check_train(summary: dict[str, Any], spec: DataSpec) -> None:
    if summary["splits"]["train"]["kept"]:
        return
    top = ", ".join(f"'{k}' x{n}" for k, n in list(summary["rejected"].items())[:3]) or "none"
    raise TunelabError(
        f"no training examples left: {summary['rows_read']} rows read, "
        f"{sum(summary['rejected'].values())} rejected (top reasons: {top})",
        where=spec.path,
        fix="check data.format and data.columns against your fields, or raise data.max_length / use "
        "data.overlength=truncate for long rows",
    )


# ---------------------------------------------------------------------------------------------- public


def _strings(value: Any) -> list[str]:
    if isinstance(value, str):
        return [value]
    if isinstance(value, dict):
        return [s for v in value.values() for s in _strings(v)]
    if isinstance(value, list):
        return [s for v in value for s in _strings(v)]
    return []


def eval_file_texts(paths: list[str], spec: DataSpec) -> list[str]:
    """Texts of evaluation files for decontamination: every string in every record, whatever its format."""
    texts = []
    for p in paths:
        for _, record in read_records(resolve_data_path(p), delimiter=spec.delimiter, encoding=spec.encoding):
            texts.append("\n".join(_strings(record)))
    return texts


def _curate_splits(assigned: dict[str, list[Example]], rejects: dict[str, list[Reject]], spec: DataSpec) -> list[dict]:
    """Run data.curate: rewriting steps (clean, pii) on every split, removing steps on train only.

    Evaluation splits are curated first so that decontamination compares training rows with the
    evaluation text as it will be evaluated (plus any extra files named in data.curate.decontam.files).
    """
    from tunelab.data.curate import curate, example_text

    reports: list[dict] = []
    for name in ("validation", "test", "train"):
        steps = [s for s in spec.curate.steps if name == "train" or s in ("clean", "pii")]
        eval_texts = None
        if name == "train" and "decontam" in steps:
            eval_texts = [example_text(e) for e in assigned["validation"] + assigned["test"]]
            eval_texts += eval_file_texts(spec.curate.decontam.files, spec)
        result = curate(assigned[name], spec.curate, eval_texts, steps)
        assigned[name] = result.examples
        rejects[name].extend(result.rejects)
        reports.extend({"split": name, **r.to_dict()} for r in result.steps)
    return reports


def _build(spec: DataSpec, encode: Encoder, files: dict[str, Path], hashes: dict[str, str], key: str) -> PreparedData:
    sources = {role: _load_source(path, hashes[role], spec) for role, path in files.items()}
    if spec.packing == "blocks":
        _check_blocks(sources, spec)
    assigned, rejects_by_split = _assign(sources, spec)
    curation = _curate_splits(assigned, rejects_by_split, spec) if spec.curate.steps else []
    splits, encoded, rejects, summaries = {}, {}, [], {}
    for name in SPLITS:
        limit = spec.limit if name == "train" else spec.eval_limit
        kept, enc, enc_rejects, unused = _encode_split(assigned[name], encode, limit)
        split_rejects = rejects_by_split[name] + enc_rejects
        rejects.extend(split_rejects)
        summaries[name] = _split_summary(sources.get(name, sources["train"]), enc, split_rejects, unused)
        splits[name], encoded[name] = kept, _finish_split(enc, summaries[name], spec)
    summary = _summary(sources, summaries, rejects, spec)
    if curation:
        summary["curation"] = curation
    _check_train(summary, spec)
    return PreparedData(splits, encoded, rejects, summary, key)


def prepare_data(spec: DataSpec, tokenizer: Any, objective: str = "sft") -> PreparedData:
    """Read, convert, split and tokenize the data of a recipe (cached by content hash).

    Args:
        spec: the recipe's data section; ``path`` may be ``demo:NAME`` (a builtin demo dataset);
            ``mixture`` lists several sources instead (see `tunelab.data.mixture`).
        tokenizer: the model's fast tokenizer with its chat template.
        objective: ``train.objective``; 'classify' encodes classifier inputs and labels instead of chat tokens.

    Returns:
        `PreparedData`. ``summary`` holds ``format`` (of the main file), ``files`` (per input: path, sha256, format, rows_read),
        ``splits`` (per split: source, sha256, format, rows_read, kept, rejected by reason, not_used_limit,
        truncated, tokens, loss_tokens, mean_len, max_len (tokens); with blocks also ``packing``: blocks,
        block_size, block_tokens, tail_tokens_dropped) and totals (rows_read, kept, rejected).

    Raises:
        TunelabError: unreadable input, undetectable format, bad settings, or no training example left.
    """
    if spec.mixture:
        from tunelab.data.mixture import prepare_mixture

        return prepare_mixture(spec, tokenizer, objective)
    encode = make_encoder(spec, tokenizer, objective)
    files = _input_files(spec)
    hashes = _hash_inputs(files)
    extra = {f"decontam:{p}": file_sha256(resolve_data_path(p)) for p in spec.curate.decontam.files}
    if objective == "classify":  # same files and spec, different encoding
        extra["objective"] = objective
    key = cache_key({**hashes, **extra}, spec, tokenizer)
    cached = load_cached(key)
    if cached is not None:
        return PreparedData.from_dict(cached, from_cache=True)
    data = _build(spec, encode, files, hashes, key)
    save_cached(key, data.to_dict())
    return data


def write_rejects(rejects: list[Reject], path: str | Path) -> Path:
    """Write rejects as JSONL rows ``{"where", "reason", "record"}`` (atomically) and return the path."""
    lines = (json.dumps(r.to_dict(), ensure_ascii=False, default=str) + "\n" for r in rejects)
    atomic_write_text(path, "".join(lines))
    return Path(path)
