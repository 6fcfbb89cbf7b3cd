"""Feedback collected from a served model → a preference (pairs) or KTO (labelled rows) dataset folder.

One JSON object per line (docs/preferences.md, "Feedback"):

- a rating: ``{"id", "timestamp", "model", "prompt", "response", "rating"}`` where ``prompt`` is the
  conversation up to the answer (a message list, or text for a single user turn) and ``rating`` is a thumb
  (``1``/``-1``, ``true``/``false``, ``"up"``/``"down"``) or stars (1-5: 4-5 good, 1-2 bad, 3 neutral);
- a comparison: ``{"id", "timestamp", "model", "prompt", "chosen", "rejected"}`` (the user picked one of two).

`feedback_to_dataset` reads such a file, redacts personal data in every text (`tunelab.data.pii.redact`),
drops exact duplicates (`tunelab.data.dedup.dedup_plan`), rejects contradicting ratings of the same answer,
and writes ``data.jsonl`` (rows `read_preference` reads back: ``pairs`` or ``unpaired``), ``rejects.jsonl``
and ``manifest.json``, the layout of the other ``tunelab data`` verbs. Pairs join a good and a bad answer to
the same prompt (at most ``max_pairs_per_prompt`` per prompt); every row that ends in no output is a reject
with its reason.
"""

from __future__ import annotations

import json
from collections import defaultdict
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Literal

from tunelab.data.pipeline import write_rejects
from tunelab.data.preference import parse_label
from tunelab.data.records import Reject
from tunelab.errors import TunelabError
from tunelab.util.io import atomic_write_json, atomic_write_text, sha256_file

__all__ = ["FeedbackRow", "feedback_to_dataset", "read_feedback"]

_META = ("id", "timestamp", "created", "model", "response_id")  # provenance carried into `source`


@dataclass
class FeedbackRow:
    """One feedback record: a rated answer (``good`` set) or a comparison (``rejected`` set)."""

    prompt: list[dict[str, str]]
    response: str
    good: bool | None
    where: str
    rejected: str | None = None
    meta: dict[str, Any] = field(default_factory=dict)
    raw: dict[str, Any] = field(default_factory=dict)

    def key(self) -> str:
        return json.dumps(self.prompt, sort_keys=True, ensure_ascii=False)


class _Bad(Exception):
    pass


def _text(value: Any, name: str) -> str:
    if not isinstance(value, str):
        raise _Bad(f"missing field '{name}'" if value is None else f"wrong type for '{name}' (expected text)")
    if not value.strip():
        raise _Bad(f"empty {name}")
    return value


def _prompt(value: Any) -> list[dict[str, str]]:
    if isinstance(value, str):
        value = [{"role": "user", "content": value}]
    if not isinstance(value, list) or not value:
        raise _Bad("missing field 'prompt'" if value is None else "wrong type for 'prompt' (text or message list)")
    out = []
    for i, m in enumerate(value):
        if not isinstance(m, dict) or m.get("role") not in ("system", "user", "assistant"):
            raise _Bad(f"bad message in prompt (prompt[{i}] needs role system/user/assistant)")
        out.append({"role": m["role"], "content": _text(m.get("content"), f"prompt[{i}].content")})
    if out[-1]["role"] != "user":
        raise _Bad("prompt must end with a user message")
    return out


def _verdict(rating: Any, scale: str) -> bool | None:
    """True good, False bad, None neutral (3 stars)."""
    if scale == "stars":
        if isinstance(rating, bool) or not isinstance(rating, (int, float)) or not 1 <= rating <= 5:
            raise _Bad(f"rating out of range ({rating!r}; stars are 1-5)")
        return None if rating == 3 else rating > 3
    try:
        return parse_label(rating)
    except ValueError:
        raise _Bad(f"unknown rating ({repr(rating)[:40]}; thumbs are 1/-1, up/down, true/false)") from None


def _scale(records: list[tuple[str, dict[str, Any]]]) -> str:
    """'stars' when some rating is 2-5 and none is negative, 'thumbs' otherwise."""
    ratings = [r.get("rating") for _, r in records if isinstance(r.get("rating"), (int, float))
               and not isinstance(r.get("rating"), bool)]
    stars = any(2 <= x <= 5 for x in ratings) and not any(x < 0 for x in ratings)
    return "stars" if stars else "thumbs"


def _row(where: str, rec: dict[str, Any], scale: str) -> FeedbackRow:
    prompt = _prompt(rec.get("prompt"))
    meta = {k: rec[k] for k in _META if k in rec}
    if "chosen" in rec or "rejected" in rec:
        chosen, rejected = _text(rec.get("chosen"), "chosen"), _text(rec.get("rejected"), "rejected")
        if chosen.strip() == rejected.strip():
            raise _Bad("identical sides")
        return FeedbackRow(prompt, chosen, None, where, rejected=rejected, meta=meta, raw=rec)
    if rec.get("rating") is None:
        raise _Bad("missing field 'rating' (or 'chosen'/'rejected')")
    good = _verdict(rec["rating"], scale)
    if good is None:
        raise _Bad("neutral rating (3 of 5 stars)")
    # The server's ratings file (serving/feedback.py) names the answer `completion` (the KTO field): accept both.
    field = "response" if "response" in rec or "completion" not in rec else "completion"
    return FeedbackRow(prompt, _text(rec.get(field), field), good, where, meta=meta, raw=rec)


def read_feedback(path: str | Path, scale: Literal["auto", "thumbs", "stars"] = "auto",
                  on_error: str = "stop") -> tuple[list[FeedbackRow], list[Reject], int]:
    """Feedback rows, rejects (with reasons) and the number of records read.

    Raises:
        TunelabError: unreadable file or malformed line (with ``on_error='skip'`` it becomes a reject).
    """
    from tunelab.data.readers import read_records

    skipped: list[Reject] | None = [] if on_error == "skip" else None
    records = read_records(path, skipped=skipped)
    scale = _scale(records) if scale == "auto" else scale
    rows, rejects = [], list(skipped or [])
    for where, rec in records:
        try:
            rows.append(_row(where, rec, scale))
        except _Bad as e:
            rejects.append(Reject(where, str(e), rec, step="read"))
    return rows, rejects, len(records) + len(skipped or [])


# ------------------------------------------------------------------------------------------- curation


def _redact(rows: list[FeedbackRow]) -> dict[str, int]:
    from tunelab.data.pii import redact

    counts: dict[str, int] = defaultdict(int)

    def clean(text: str) -> str:
        out, found = redact(text)
        for k, n in found.items():
            counts[k] += n
        return out

    for r in rows:
        r.prompt = [{**m, "content": clean(m["content"])} for m in r.prompt]
        r.response = clean(r.response)
        r.rejected = clean(r.rejected) if r.rejected is not None else None
    return dict(sorted(counts.items()))


def _dedup(rows: list[FeedbackRow]) -> tuple[list[FeedbackRow], list[Reject]]:
    """Exact duplicates (same prompt, answer(s) and verdict, after redaction) keep their first row."""
    from tunelab.data.dedup import dedup_plan

    texts = [json.dumps([r.prompt, r.response, r.good, r.rejected], ensure_ascii=False) for r in rows]
    plan = dedup_plan(texts, exact=True, near=False)
    rejects = [Reject(rows[i].where, f"duplicate feedback (of {rows[keep].where})", rows[i].raw, step="dedup")
               for i, (keep, _) in sorted(plan.dropped.items())]
    return [rows[i] for i in plan.keep], rejects


def _conflicts(rows: list[FeedbackRow]) -> tuple[list[FeedbackRow], list[Reject]]:
    """The same answer rated both good and bad: no preference can be taken from it."""
    verdicts: dict[tuple[str, str], set[bool]] = defaultdict(set)
    for r in rows:
        if r.good is not None:
            verdicts[(r.key(), r.response)].add(r.good)
    kept, rejects = [], []
    for r in rows:
        if r.good is not None and len(verdicts[(r.key(), r.response)]) > 1:
            rejects.append(Reject(r.where, "conflicting ratings (the same answer is rated good and bad)", r.raw,
                                  step="conflicts"))
        else:
            kept.append(r)
    return kept, rejects


def _source(row: FeedbackRow) -> dict[str, Any]:
    return {"where": row.where, **row.meta}


def _pairs(rows: list[FeedbackRow], max_per_prompt: int) -> tuple[list[dict], list[Reject]]:
    out, rejects, by_prompt = [], [], defaultdict(list)
    for r in rows:
        if r.rejected is not None:
            out.append({"prompt": r.prompt, "chosen": [{"role": "assistant", "content": r.response}],
                        "rejected": [{"role": "assistant", "content": r.rejected}], "source": [_source(r)]})
        else:
            by_prompt[r.key()].append(r)
    for group in by_prompt.values():
        good, bad = [r for r in group if r.good], [r for r in group if not r.good]
        combos = [(g, b) for g in good for b in bad][:max_per_prompt]
        used = {id(x) for pair in combos for x in pair}
        for g, b in combos:
            out.append({"prompt": g.prompt, "chosen": [{"role": "assistant", "content": g.response}],
                        "rejected": [{"role": "assistant", "content": b.response}],
                        "source": [_source(g), _source(b)]})
        reason = ("no answer with the opposite rating for this prompt" if not (good and bad)
                  else f"over max_pairs_per_prompt ({max_per_prompt})")
        rejects += [Reject(r.where, reason, r.raw, step="pair") for r in group if id(r) not in used]
    return out, rejects


def _labelled(rows: list[FeedbackRow]) -> list[dict]:
    out = []
    for r in rows:
        sides = [(r.response, True), (r.rejected, False)] if r.rejected is not None else [(r.response, r.good)]
        out += [{"prompt": r.prompt, "completion": [{"role": "assistant", "content": text}], "label": label,
                 "source": [_source(r)]} for text, label in sides]
    return out


def feedback_to_dataset(path: str | Path, out_dir: str | Path, to: Literal["pairs", "kto"] = "pairs",
                        scale: Literal["auto", "thumbs", "stars"] = "auto", max_pairs_per_prompt: int = 4,
                        on_error: str = "stop", overwrite: bool = False) -> dict[str, Any]:
    """Write a dataset folder (data.jsonl, rejects.jsonl, manifest.json) from a feedback file; returns the manifest.

    Raises:
        TunelabError: unreadable input, a non-empty output folder without ``overwrite``, or no usable row.
    """
    out = Path(out_dir)
    if out.exists() and any(out.iterdir()) and not overwrite:
        raise TunelabError(f"output folder is not empty: {out}", fix="choose another --out or pass --overwrite")
    rows, rejects, n_read = read_feedback(path, scale, on_error)
    steps = [{"step": "read", "rows_in": n_read, "kept": len(rows), "rejected": len(rejects)}]
    pii = _redact(rows)
    steps.append({"step": "pii", "rows_in": len(rows), "kept": len(rows), "rejected": 0, "details": pii})
    for name, fn in (("dedup", _dedup), ("conflicts", _conflicts)):
        n_in = len(rows)
        rows, dropped = fn(rows)
        rejects += dropped
        steps.append({"step": name, "rows_in": n_in, "kept": len(rows), "rejected": len(dropped)})
    n_in = len(rows)
    data, dropped = _pairs(rows, max_pairs_per_prompt) if to == "pairs" else (_labelled(rows), [])
    rejects += dropped
    steps.append({"step": to, "rows_in": n_in, "kept": n_in - len(dropped), "rejected": len(dropped),
                  "details": {"rows_out": len(data)}})
    out.mkdir(parents=True, exist_ok=True)
    write_rejects(rejects, out / "rejects.jsonl")
    if not data:
        raise TunelabError(f"no {to} could be built: {n_read} feedback rows read, {len(rejects)} rejected (reasons "
                           f"in {out / 'rejects.jsonl'})", where=str(path),
                           fix="pairs need a good and a bad answer to the same prompt, or a chosen/rejected "
                           "comparison; --to kto uses every rated answer")
    atomic_write_text(out / "data.jsonl", "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in data))
    manifest = {"created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
                "inputs": [{"path": str(path), "sha256": sha256_file(path), "rows": n_read, "format": "feedback"}],
                "to": to, "format": "pairs" if to == "pairs" else "unpaired", "steps": steps,
                "rows_in": n_read, "rows_out": len(data), "rejected": len(rejects),
                "fingerprint": sha256_file(out / "data.jsonl")}
    atomic_write_json(out / "manifest.json", manifest)
    return manifest
