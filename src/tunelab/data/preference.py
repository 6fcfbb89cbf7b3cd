"""Preference data: pairs (chosen vs rejected answer to one prompt) and unpaired good/bad labels (KTO).

Formats (auto-detected from the fields of the first rows; ``data.format`` overrides; ``data.columns`` maps
your column names onto the canonical ones in `PREFERENCE_FIELDS`):

==================  =====================================================================================
format              fields
==================  =====================================================================================
``pairs``           ``prompt`` (text or a message list ending with the user turn), ``chosen``,
                    ``rejected`` (text, one assistant message, or a list holding one)
``sharegpt_pairs``  ``conversations`` (``from``/``value`` turns ending with the human turn), ``chosen``,
                    ``rejected`` (text or a ``{from: gpt, value}`` object), as in LLaMA-Factory's dpo data
``hh``              ``chosen`` and ``rejected`` only: two full transcripts, either Anthropic-HH text
                    (``"\\n\\nHuman: ...\\n\\nAssistant: ..."``) or message lists; the prompt is their common
                    prefix of turns, the answers are the final assistant turns
``unpaired``        ``prompt``, ``completion``, ``label`` (good/bad, true/false, 1/0, +1/-1, up/down)
==================  =====================================================================================

Rows that cannot be used become `Reject`s with a countable reason (see `tunelab.data.records`):
``identical sides``, ``empty prompt``, ``empty chosen``/``empty rejected``, ``missing field``,
``wrong type``, ``unknown role``, ``unknown label``, ``transcripts differ before the final answer``.

Typical use::

    pairs, rejects = read_pairs("dpo.json", recipe.data)
    enc = encode_pair(pairs[0], tokenizer, max_length=512)   # prompt_ids, chosen_ids, rejected_ids
    text = render_pair(pairs[0], tokenizer)                  # the same as chat-template text
"""

from __future__ import annotations

import hashlib
import json
import re
from collections import Counter
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from tunelab.config.specs import DataSpec, SplitSpec
from tunelab.data.formats import check_columns, map_columns
from tunelab.data.records import Reject
from tunelab.errors import TunelabError

__all__ = [
    "PAIR_FORMATS", "PREFERENCE_FIELDS", "PREFERENCE_FORMATS", "PairExample", "PreferenceData", "UnpairedExample",
    "detect_preference_format", "encode_pair", "encode_unpaired", "looks_like_preference", "parse_label", "read_pairs", "read_preference", "read_unpaired", "render_pair", "split_preference",
]

PAIR_FORMATS = ("sharegpt_pairs", "pairs", "hh")
PREFERENCE_FORMATS = (*PAIR_FORMATS, "unpaired")  # detection priority, first wins
PREFERENCE_FIELDS = ("prompt", "chosen", "rejected", "conversations", "completion", "label", "system")
_REQUIRED = {"sharegpt_pairs": ("conversations", "chosen", "rejected"), "pairs": ("prompt", "chosen", "rejected"),
             "hh": ("chosen", "rejected"), "unpaired": ("prompt", "completion", "label")}
_ROLE_NAMES = {"human": "user", "user": "user", "gpt": "assistant", "assistant": "assistant", "system": "system",
               "bot": "assistant", "model": "assistant"}
_GOOD = {"good", "true", "yes", "1", "+1", "up", "thumbs_up", "positive", "chosen"}
_BAD = {"bad", "false", "no", "0", "-1", "down", "thumbs_down", "negative", "rejected"}
_HH_TURN = re.compile(r"\n\n(Human|Assistant):")
_DETECT_ROWS = 20


class _Bad(Exception):
    """A row-level problem; its message becomes the Reject reason."""


# ------------------------------------------------------------------------------------------------ rows


@dataclass
class PairExample:
    """One preference pair.

    Attributes:
        prompt: the conversation up to the answer: optional system turn, then user (and earlier assistant)
            turns, ending with a user turn.
        chosen: the preferred assistant answer (text).
        rejected: the dispreferred assistant answer (text).
        where: ``"path:line"`` or ``"path:#index"`` of the row.
        raw: the original record.
    """

    prompt: list[dict[str, str]]
    chosen: str
    rejected: str
    where: str
    raw: dict[str, Any] = field(default_factory=dict)

    @property
    def chosen_messages(self) -> list[dict[str, str]]:
        return [*self.prompt, {"role": "assistant", "content": self.chosen}]

    @property
    def rejected_messages(self) -> list[dict[str, str]]:
        return [*self.prompt, {"role": "assistant", "content": self.rejected}]

    def content(self) -> dict[str, Any]:
        """What the pair says (no provenance): the basis of deduplication."""
        return {"prompt": self.prompt, "chosen": self.chosen, "rejected": self.rejected}

    def to_row(self) -> dict[str, Any]:
        """The canonical dataset row (TRL's conversational preference format; reads back as ``pairs``)."""
        return {"prompt": self.prompt, "chosen": [{"role": "assistant", "content": self.chosen}],
                "rejected": [{"role": "assistant", "content": self.rejected}]}

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass
class UnpairedExample:
    """One answer labelled good or bad (KTO).

    Attributes:
        prompt: as in `PairExample`.
        completion: the assistant answer.
        label: True for a desirable answer, False for an undesirable one.
        where: row location.
        raw: the original record.
    """

    prompt: list[dict[str, str]]
    completion: str
    label: bool
    where: str
    raw: dict[str, Any] = field(default_factory=dict)

    def content(self) -> dict[str, Any]:
        return {"prompt": self.prompt, "completion": self.completion, "label": self.label}

    def to_row(self) -> dict[str, Any]:
        """The canonical dataset row (TRL's conversational unpaired format; reads back as ``unpaired``)."""
        return {"prompt": self.prompt, "completion": [{"role": "assistant", "content": self.completion}],
                "label": self.label}

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass
class PreferenceData:
    """A preference file after reading: pairs or unpaired rows (one of them is empty), and the rejects."""

    format: str
    rows_read: int
    pairs: list[PairExample]
    unpaired: list[UnpairedExample]
    rejects: list[Reject]

    @property
    def paired(self) -> bool:
        return self.format in PAIR_FORMATS


# ------------------------------------------------------------------------------------------- detection


def _row_format(record: dict[str, Any]) -> str | None:
    return next((f for f in PREFERENCE_FORMATS if all(k in record for k in _REQUIRED[f])), None)


def detect_preference_format(records: Sequence[tuple[str, dict[str, Any]]], spec: DataSpec) -> str:
    """The preference format of ``(where, record)`` rows (``spec.format`` wins when it names one).

    Raises:
        TunelabError: ``spec.format`` is not a preference format, or no preference format matches.
    """
    check_columns(spec.columns, PREFERENCE_FIELDS, "preference data")
    if spec.format != "auto":
        if spec.format not in PREFERENCE_FORMATS:
            raise TunelabError(f"data.format={spec.format} is not a preference format", where="data.format",
                               fix=f"use auto or one of: {', '.join(PREFERENCE_FORMATS)}")
        return spec.format
    votes = Counter(f for _, r in records[:_DETECT_ROWS] if (f := _row_format(map_columns(r, spec.columns))))
    if votes:
        return max(votes, key=lambda f: (votes[f], -PREFERENCE_FORMATS.index(f)))
    seen = sorted({k for _, r in records[:_DETECT_ROWS] for k in r})
    raise TunelabError(
        f"cannot tell the preference format from the fields {seen}", where="data.format",
        fix="map your columns with data.columns (e.g. {chosen: better, rejected: worse}); formats: "
        + "; ".join(f"{f} ({', '.join(_REQUIRED[f])})" for f in PREFERENCE_FORMATS))


def looks_like_preference(records: Sequence[tuple[str, dict[str, Any]]], spec: DataSpec) -> bool:
    """True when the first rows carry preference fields (chosen/rejected, or a label with a completion)."""
    if spec.format != "auto":
        return spec.format in PREFERENCE_FORMATS
    return any(_row_format(map_columns(r, spec.columns)) for _, r in records[:_DETECT_ROWS])


# ------------------------------------------------------------------------------------------ conversion


def _text(value: Any, name: str) -> str:
    if isinstance(value, bool) or not isinstance(value, (str, int, float)):
        raise _Bad(f"wrong type for '{name}' (expected text, got {type(value).__name__})")
    return str(value)


def _message(m: Any, where: str) -> dict[str, str]:
    if not isinstance(m, dict):
        raise _Bad(f"wrong type for message ({where}: {type(m).__name__})")
    role = m.get("role", m.get("from"))
    content = m.get("content", m.get("value"))
    if role not in _ROLE_NAMES:
        raise _Bad(f"unknown role '{role}' ({where})")
    if not isinstance(content, str):
        raise _Bad(f"wrong type for message content ({where}: {type(content).__name__})")
    return {"role": _ROLE_NAMES[role], "content": content}


def _messages(value: Any, name: str) -> list[dict[str, str]]:
    if isinstance(value, str):
        return [{"role": "user", "content": value}]
    if not isinstance(value, list):
        raise _Bad(f"wrong type for '{name}' (expected text or a message list, got {type(value).__name__})")
    return [_message(m, f"{name}[{i}]") for i, m in enumerate(value)]


def _check_prompt(prompt: list[dict[str, str]]) -> list[dict[str, str]]:
    if not prompt or not any(m["content"].strip() for m in prompt if m["role"] == "user"):
        raise _Bad("empty prompt")
    if any(not m["content"].strip() for m in prompt if m["role"] != "system"):
        raise _Bad("empty message in prompt")
    if prompt[-1]["role"] != "user":
        raise _Bad(f"prompt must end with a user message (ends with {prompt[-1]['role']})")
    return prompt


def _answer(value: Any, name: str) -> str:
    """An answer given as text, one assistant message, or a list holding one assistant message."""
    if isinstance(value, list):
        if len(value) != 1:
            raise _Bad(f"wrong shape for '{name}' (expected one assistant message, got {len(value)})")
        value = value[0]
    if isinstance(value, dict):
        m = _message(value, name)
        if m["role"] != "assistant":
            raise _Bad(f"'{name}' must be an assistant message (got role {m['role']})")
        value = m["content"]
    if value is None:
        raise _Bad(f"missing field '{name}'")
    text = _text(value, name)
    if not text.strip():
        raise _Bad(f"empty {name}")
    return text


def _hh_turns(text: str) -> list[dict[str, str]]:
    """Anthropic-HH transcript text -> messages; text before the first marker is not allowed."""
    text = text if text.startswith("\n\n") else "\n\n" + text
    parts = _HH_TURN.split(text)  # ['', 'Human', ' hi', 'Assistant', ' hello', ...]
    if parts[0].strip() or len(parts) < 3:
        raise _Bad("not an HH transcript (expected '\\n\\nHuman: ...\\n\\nAssistant: ...')")
    return [{"role": "user" if role == "Human" else "assistant", "content": body.strip()}
            for role, body in zip(parts[1::2], parts[2::2], strict=True)]


def _transcript(value: Any, name: str) -> list[dict[str, str]]:
    if value is None:
        raise _Bad(f"missing field '{name}'")
    if isinstance(value, str):
        return _hh_turns(value)
    if isinstance(value, list):
        return [_message(m, f"{name}[{i}]") for i, m in enumerate(value)]
    raise _Bad(f"wrong type for '{name}' (expected a transcript, got {type(value).__name__})")


def _split_transcripts(rec: dict[str, Any]) -> tuple[list[dict[str, str]], str, str]:
    """Common prefix of turns = prompt; each remainder must be exactly one assistant turn."""
    chosen, rejected = _transcript(rec.get("chosen"), "chosen"), _transcript(rec.get("rejected"), "rejected")
    n = 0
    while n < min(len(chosen), len(rejected)) and chosen[n] == rejected[n]:
        n += 1
    if n == len(chosen) == len(rejected):
        raise _Bad("identical sides")
    while n and chosen[n - 1]["role"] == "assistant":  # the answers start after the last shared user turn
        n -= 1
    rest_c, rest_r = chosen[n:], rejected[n:]
    if len(rest_c) != 1 or len(rest_r) != 1 or {rest_c[0]["role"], rest_r[0]["role"]} != {"assistant"}:
        raise _Bad(f"transcripts differ before the final answer (at turn {n + 1})")
    return chosen[:n], _answer(rest_c[0], "chosen"), _answer(rest_r[0], "rejected")


def _with_system(prompt: list[dict[str, str]], rec: dict[str, Any], spec: DataSpec) -> list[dict[str, str]]:
    system = rec.get("system") or spec.system_prompt
    if system and prompt[0]["role"] != "system":
        # A row's own system message is more specific than the recipe-wide one, so it is kept.
        prompt = [{"role": "system", "content": _text(system, "system")}, *prompt]
    if spec.prompt_template is not None:
        turn = next(m for m in reversed(prompt) if m["role"] == "user")
        try:
            turn["content"] = spec.prompt_template.format_map({**rec, "prompt": turn["content"]})
        except (AttributeError, IndexError, KeyError, TypeError, ValueError) as e:
            raise _Bad(f"prompt_template failed ({type(e).__name__}: {e})") from None
    return prompt


def _pair(where: str, raw: dict[str, Any], fmt: str, spec: DataSpec) -> PairExample:
    rec = map_columns(raw, spec.columns)
    if fmt == "hh":
        prompt, chosen, rejected = _split_transcripts(rec)
    else:
        key = "conversations" if fmt == "sharegpt_pairs" else "prompt"
        if rec.get(key) is None:
            raise _Bad(f"missing field '{key}'")
        prompt = _messages(rec[key], key)
        chosen, rejected = _answer(rec.get("chosen"), "chosen"), _answer(rec.get("rejected"), "rejected")
    prompt = _with_system(_check_prompt(prompt), rec, spec)
    if chosen.strip() == rejected.strip():
        raise _Bad("identical sides")
    return PairExample(prompt=prompt, chosen=chosen, rejected=rejected, where=where, raw=raw)


def parse_label(value: Any) -> bool:
    """good/bad as a bool: booleans, 1/0/-1, or words (good, bad, true, false, yes, no, up, down, ...).

    Raises:
        ValueError: anything else (the message names the value).
    """
    if isinstance(value, bool):
        return value
    key = str(value).strip().lower() if isinstance(value, (str, int, float)) else None
    if isinstance(value, float) and value.is_integer():
        key = str(int(value))
    if key in _GOOD:
        return True
    if key in _BAD:
        return False
    raise ValueError(f"unknown label {str(value)[:40]!r} (use good/bad, true/false, 1/0 or +1/-1)")


def _unpaired(where: str, raw: dict[str, Any], spec: DataSpec) -> UnpairedExample:
    rec = map_columns(raw, spec.columns)
    if rec.get("prompt") is None:
        raise _Bad("missing field 'prompt'")
    prompt = _with_system(_check_prompt(_messages(rec["prompt"], "prompt")), rec, spec)
    if rec.get("label") is None:
        raise _Bad("missing field 'label'")
    try:
        label = parse_label(rec["label"])
    except ValueError as e:
        raise _Bad(str(e)) from None
    return UnpairedExample(prompt=prompt, completion=_answer(rec.get("completion"), "completion"), label=label,
                           where=where, raw=raw)


# --------------------------------------------------------------------------------------------- reading


def read_preference(path: str | Path, spec: DataSpec) -> PreferenceData:
    """Read a preference file (pairs or unpaired labels), honouring data.on_error, columns and format.

    Raises:
        TunelabError: unreadable file, unknown format or columns (row problems become rejects).
    """
    from tunelab.data.pipeline import resolve_data_path
    from tunelab.data.readers import read_records

    path = resolve_data_path(str(path))
    skipped: list[Reject] | None = [] if spec.on_error == "skip" else None
    records = read_records(path, delimiter=spec.delimiter, encoding=spec.encoding, skipped=skipped)
    rejects: list[Reject] = list(skipped or [])
    if not records:
        raise TunelabError(f"no readable records ({len(rejects)} malformed rows skipped)", where=str(path),
                           fix="check that this is the right file and format")
    fmt = detect_preference_format(records, spec)
    pairs, unpaired = [], []
    for where, raw in records:
        try:
            if fmt == "unpaired":
                unpaired.append(_unpaired(where, raw, spec))
            else:
                pairs.append(_pair(where, raw, fmt, spec))
        except _Bad as e:
            rejects.append(Reject(where=where, reason=str(e), record=raw))
    return PreferenceData(fmt, len(records) + len(skipped or []), pairs, unpaired, rejects)


def read_pairs(path: str | Path, spec: DataSpec) -> tuple[list[PairExample], list[Reject]]:
    """The pairs of a preference file and its rejects (in file order).

    Raises:
        TunelabError: as `read_preference`, or the file holds unpaired labels (they have no pairs).
    """
    data = read_preference(path, spec)
    if not data.paired:
        raise TunelabError("this file holds unpaired good/bad labels, but pairs (chosen vs rejected) are needed",
                           where=str(path), fix="use preference.loss=kto for unpaired data, or a file of pairs")
    return data.pairs, data.rejects


def read_unpaired(path: str | Path, spec: DataSpec) -> tuple[list[UnpairedExample], list[Reject]]:
    """Unpaired rows of a file; a file of pairs gives two rows per pair (chosen good, rejected bad), as KTO does."""
    data = read_preference(path, spec)
    if not data.paired:
        return data.unpaired, data.rejects
    rows = [UnpairedExample(p.prompt, answer, label, p.where, p.raw)
            for p in data.pairs for answer, label in ((p.chosen, True), (p.rejected, False))]
    return rows, data.rejects


# ------------------------------------------------------------------------------------------------ split


def split_preference(items: Sequence[PairExample | UnpairedExample], split: SplitSpec) -> dict[str, list]:
    """Deterministic train/validation/test split by a hash of the seed and the *prompt*.

    All rows that share a prompt land in one split, so a held-out pair never has its prompt in training.
    """
    from tunelab.data.split import SPLITS, split_name

    out: dict[str, list] = {name: [] for name in SPLITS}
    for item in items:
        canonical = json.dumps(item.prompt, sort_keys=True, ensure_ascii=False, separators=(",", ":"))
        digest = hashlib.sha256(f"{split.seed}\x00{canonical}".encode()).hexdigest()
        out[split_name(int(digest[:16], 16) / 16**16, split)].append(item)
    if not out["train"]:  # tiny sets: training needs at least one row more than evaluation does
        for name in ("validation", "test"):
            if out[name]:
                out["train"].append(out[name].pop())
                break
    return out


# ------------------------------------------------------------------------------------------ tokenizing


def _render(tokenizer: Any, messages: list[dict[str, str]], generation_prompt: bool = False) -> str:
    from jinja2 import TemplateError

    try:
        return tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=generation_prompt)
    except TemplateError as e:
        raise _Bad(f"chat template rejected the conversation ({e})") from None


def render_pair(pair: PairExample, tokenizer: Any) -> dict[str, str]:
    """Chat-template text: ``prompt`` (with the generation prompt), ``chosen`` and ``rejected`` completions.

    ``prompt + chosen`` is the full rendering of the chosen conversation (end-of-turn token included).

    Raises:
        TunelabError: the template renders the prompt differently inside the full conversation.
    """
    prompt = _safe_render(tokenizer, pair.prompt, True, pair.where)
    out = {"prompt": prompt}
    for side, messages in (("chosen", pair.chosen_messages), ("rejected", pair.rejected_messages)):
        full = _safe_render(tokenizer, messages, False, pair.where)
        if not full.startswith(prompt):
            raise TunelabError("the chat template renders the prompt differently inside the full conversation",
                               where="model.name", fix="use a model whose template renders turns independently")
        out[side] = full[len(prompt):]
    return out


def _safe_render(tokenizer: Any, messages: list[dict[str, str]], gen: bool, where: str) -> str:
    try:
        return _render(tokenizer, messages, gen)
    except _Bad as e:
        raise TunelabError(str(e), where=where, fix="check the roles of this row") from None


def _completion_ids(tokenizer: Any, prompt: list[dict[str, str]], answer: str,
                    prompt_ids: list[int]) -> tuple[int, list[int]]:
    full = _render(tokenizer, [*prompt, {"role": "assistant", "content": answer}])
    ids = list(tokenizer(full, add_special_tokens=False)["input_ids"])
    n = 0  # TRL's rule: the completion starts where prompt and prompt+answer tokens diverge
    while n < min(len(ids), len(prompt_ids)) and ids[n] == prompt_ids[n]:
        n += 1
    eos = tokenizer.eos_token_id
    if eos is not None and eos in ids[n:]:
        # The answer ends with the end-of-turn token (the model learns to stop); what the template puts after it
        # (a newline) is a separator, as in SFT. Ending on EOS also keeps TRL from appending a second one.
        ids = ids[: len(ids) - ids[::-1].index(eos)]
    return n, ids


def _fit(prompt: list[int], sides: list[list[int]], max_length: int, overlength: str,
         where: str, raw: dict) -> tuple[list[int], list[list[int]], bool] | Reject:
    total = len(prompt) + max(len(s) for s in sides)
    if total <= max_length:
        return prompt, sides, False
    if overlength == "drop":
        return Reject(where, f"longer than max_length ({total} tokens > {max_length})", raw)
    keep_prompt = min(len(prompt), max_length // 2)  # keep the prompt's end (the question) and the answers' start
    prompt = prompt[len(prompt) - keep_prompt:]
    return prompt, [s[: max_length - len(prompt)] for s in sides], True


def encode_pair(pair: PairExample, tokenizer: Any, max_length: int = 512,
                overlength: str = "drop") -> dict[str, Any] | Reject:
    """Token ids of a pair with the model's chat template (the same rule TRL's DPOTrainer uses).

    Returns:
        ``{"prompt_ids", "chosen_ids", "rejected_ids", "n_tokens", "truncated"}`` (completions include the
        end-of-turn token), or a `Reject` when the pair is longer than ``max_length`` and ``overlength`` is
        'drop' (with 'truncate', the prompt keeps its end and the answers their start).
    """
    try:
        prompt_ids = list(tokenizer(_render(tokenizer, pair.prompt, True), add_special_tokens=False)["input_ids"])
        n_c, chosen = _completion_ids(tokenizer, pair.prompt, pair.chosen, prompt_ids)
        n_r, rejected = _completion_ids(tokenizer, pair.prompt, pair.rejected, prompt_ids)
    except _Bad as e:
        return Reject(pair.where, str(e), pair.raw)
    n = min(n_c, n_r)
    fitted = _fit(prompt_ids[:n], [chosen[n:], rejected[n:]], max_length, overlength, pair.where, pair.raw)
    if isinstance(fitted, Reject):
        return fitted
    prompt, (c, r), truncated = fitted
    return {"prompt_ids": prompt, "chosen_ids": c, "rejected_ids": r,
            "n_tokens": 2 * len(prompt) + len(c) + len(r), "truncated": truncated}


def encode_unpaired(row: UnpairedExample, tokenizer: Any, max_length: int = 512,
                    overlength: str = "drop") -> dict[str, Any] | Reject:
    """``{"prompt_ids", "completion_ids", "label", "n_tokens", "truncated"}`` or a `Reject` (see `encode_pair`)."""
    try:
        prompt_ids = list(tokenizer(_render(tokenizer, row.prompt, True), add_special_tokens=False)["input_ids"])
        n, ids = _completion_ids(tokenizer, row.prompt, row.completion, prompt_ids)
    except _Bad as e:
        return Reject(row.where, str(e), row.raw)
    fitted = _fit(prompt_ids[:n], [ids[n:]], max_length, overlength, row.where, row.raw)
    if isinstance(fitted, Reject):
        return fitted
    prompt, (completion,), truncated = fitted
    return {"prompt_ids": prompt, "completion_ids": completion, "label": row.label,
            "n_tokens": len(prompt) + len(completion), "truncated": truncated}
