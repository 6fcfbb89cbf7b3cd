"""Record formats → `Example`: alpaca, messages (OpenAI), sharegpt, prompt_completion and plain text.

Order of work per record: map user columns to canonical fields (`DataSpec.columns`), convert the format
to chat messages, apply `DataSpec.prompt_template` to the final user turn, prepend `DataSpec.system_prompt`.
A record that cannot be converted becomes a `Reject` with the reason; nothing is dropped silently.
"""

from __future__ import annotations

import difflib
import string
from collections import Counter
from collections.abc import Callable, Iterable, Sequence
from typing import Any

from tunelab.config.specs import DataSpec
from tunelab.data.records import Example, Reject
from tunelab.errors import TunelabError

__all__ = ["CANONICAL_FIELDS", "FORMATS", "check_columns", "detect_format", "map_columns", "resolve_format",
           "to_examples"]

FORMATS = ("messages", "sharegpt", "alpaca", "prompt_completion", "text")  # detection priority, first wins
CANONICAL_FIELDS = (
    "messages", "conversations", "instruction", "input", "output", "system", "history", "prompt",
    "completion", "text",
)
_REQUIRED = {
    "messages": ("messages",), "sharegpt": ("conversations",), "alpaca": ("instruction", "output"),
    "prompt_completion": ("prompt", "completion"), "text": ("text",),
}
_SHAREGPT_ROLES = {"human": "user", "user": "user", "gpt": "assistant", "assistant": "assistant",
                   "system": "system"}
_ROLES = ("system", "user", "assistant")
_DETECT_ROWS = 20  # enough to see past a few odd rows at the top, cheap on any file


class _Bad(Exception):
    """A record-level problem; its message becomes the Reject reason."""


# ---------------------------------------------------------------------------------------------- columns


def map_columns(record: dict[str, Any], columns: dict[str, str]) -> dict[str, Any]:
    """The record with user columns renamed to canonical fields (``columns`` is canonical → user column).

    Source columns are removed so that, e.g., a user column named ``text`` mapped to ``prompt`` does not
    also look like the plain-text format.
    """
    if not columns:
        return record
    sources = set(columns.values())
    mapped = {k: v for k, v in record.items() if k not in sources}
    mapped.update({canon: record[col] for canon, col in columns.items() if col in record})
    return mapped


def check_columns(columns: dict[str, str], fields: Sequence[str] = CANONICAL_FIELDS, kind: str = "") -> None:
    """Refuse a ``data.columns`` key that is not one of ``fields`` (with a did-you-mean).

    Args:
        columns: ``DataSpec.columns`` (canonical field → user column).
        fields: the canonical fields of this kind of data (`tunelab.data.preference` passes its own).
        kind: named in the message (e.g. ``"preference data"``) when it is not instruction data.

    Raises:
        TunelabError: at ``data.columns``, listing the fields.
    """
    for canon in columns:
        if canon not in fields:
            close = difflib.get_close_matches(canon, fields, n=1)
            hint = f"did you mean '{close[0]}'? " if close else ""
            raise TunelabError(f"unknown field '{canon}' in column mapping{f' for {kind}' if kind else ''}",
                               where="data.columns", fix=f"{hint}keys are canonical fields: {', '.join(fields)}")


# -------------------------------------------------------------------------------------------- detection


def _row_format(record: dict[str, Any]) -> str | None:
    return next((f for f in FORMATS if all(k in record for k in _REQUIRED[f])), None)


def detect_format(records: Sequence[dict[str, Any] | tuple[str, dict[str, Any]]], override: str = "auto") -> str:
    """The record format, from the keys of the first rows (an explicit ``override`` other than 'auto' wins).

    Args:
        records: records (after column mapping), or ``(where, record)`` pairs.
        override: ``DataSpec.format``.

    Raises:
        TunelabError: no known format matches; the message lists the keys that were seen.
    """
    if override != "auto":
        return override
    sample = [r[1] if isinstance(r, tuple) else r for r in records[:_DETECT_ROWS]]
    votes = Counter(f for f in map(_row_format, sample) if f is not None)
    if votes:
        # Most common format in the sample; ties go to the more specific format (FORMATS order).
        return max(votes, key=lambda f: (votes[f], -FORMATS.index(f)))
    seen = sorted({k for r in sample for k in r})
    raise TunelabError(
        f"cannot tell the data format from the fields {seen}",
        where="data.format",
        fix="name your columns with data.columns, e.g. data.columns='{prompt: question, completion: answer}', "
        "or set data.format; formats: " + "; ".join(f"{f} ({', '.join(_REQUIRED[f])})" for f in FORMATS),
    )


def resolve_format(records: Sequence[tuple[str, dict[str, Any]]], spec: DataSpec) -> str:
    """`detect_format` on the column-mapped first rows of ``records`` (validates ``spec.columns`` too)."""
    check_columns(spec.columns)
    return detect_format([map_columns(r, spec.columns) for _, r in records[:_DETECT_ROWS]], spec.format)


# ------------------------------------------------------------------------------------------ field access


def _scalar(rec: dict[str, Any], name: str, columns: dict[str, str], *, required: bool = True) -> str:
    """A text field; numbers are accepted as text (numeric labels), anything else is a wrong type."""
    value = rec.get(name)
    if value is None:
        if not required:
            return ""
        source = f" (column '{columns[name]}')" if name in columns else ""
        raise _Bad(f"missing field '{name}'{source}")
    if isinstance(value, bool) or not isinstance(value, (str, int, float)):
        raise _Bad(f"wrong type for '{name}' (expected text, got {type(value).__name__})")
    text = str(value)
    if required and not text.strip():
        raise _Bad(f"empty field '{name}'")
    return text


def _turns(rec: dict[str, Any], name: str, columns: dict[str, str]) -> list[Any]:
    value = rec.get(name)
    if value is None:
        source = f" (column '{columns[name]}')" if name in columns else ""
        raise _Bad(f"missing field '{name}'{source}")
    if not isinstance(value, list):
        raise _Bad(f"wrong type for '{name}' (expected a list, got {type(value).__name__})")
    return value


def _message(role: Any, content: Any, where: str) -> dict[str, str]:
    if role not in _ROLES:
        raise _Bad(f"unknown role '{role}' ({where})")
    if not isinstance(content, str):
        raise _Bad(f"wrong type for message content ({where}: {type(content).__name__})")
    if not content.strip():
        raise _Bad(f"empty message ({where})")
    return {"role": role, "content": content}


# ------------------------------------------------------------------------------------------- converters


def _from_alpaca(rec: dict[str, Any], columns: dict[str, str]) -> list[dict[str, str]]:
    # 'system' and 'history' are accepted but not used (set data.system_prompt for a system message).
    prompt = _scalar(rec, "instruction", columns)
    extra = _scalar(rec, "input", columns, required=False)
    if extra.strip():
        prompt = f"{prompt}\n\n{extra}"
    return [{"role": "user", "content": prompt}, {"role": "assistant", "content": _scalar(rec, "output", columns)}]


def _from_prompt_completion(rec: dict[str, Any], columns: dict[str, str]) -> list[dict[str, str]]:
    return [{"role": "user", "content": _scalar(rec, "prompt", columns)},
            {"role": "assistant", "content": _scalar(rec, "completion", columns)}]


def _from_messages(rec: dict[str, Any], columns: dict[str, str]) -> list[dict[str, str]]:
    out = []
    for i, m in enumerate(_turns(rec, "messages", columns)):
        if not isinstance(m, dict):
            raise _Bad(f"wrong type for message (messages[{i}]: {type(m).__name__})")
        out.append(_message(m.get("role"), m.get("content"), f"messages[{i}]"))
    return out


def _from_sharegpt(rec: dict[str, Any], columns: dict[str, str]) -> list[dict[str, str]]:
    out = []
    for i, m in enumerate(_turns(rec, "conversations", columns)):
        if not isinstance(m, dict):
            raise _Bad(f"wrong type for message (conversations[{i}]: {type(m).__name__})")
        role = _SHAREGPT_ROLES.get(m.get("from"), m.get("from"))
        out.append(_message(role, m.get("value"), f"conversations[{i}]"))
    return out


_CONVERTERS: dict[str, Callable[[dict[str, Any], dict[str, str]], list[dict[str, str]]]] = {
    "alpaca": _from_alpaca, "prompt_completion": _from_prompt_completion,
    "messages": _from_messages, "sharegpt": _from_sharegpt,
}


def _check_turns(messages: list[dict[str, str]]) -> None:
    """A trainable conversation: optional system turns, then a user turn, ..., ending with the assistant."""
    if not messages:
        raise _Bad("empty conversation")
    first = next((m["role"] for m in messages if m["role"] != "system"), None)
    if first != "user":
        raise _Bad("conversation must start with a user message (after any system messages)")
    if messages[-1]["role"] != "assistant":
        raise _Bad("conversation must end with an assistant message")


# ------------------------------------------------------------------------------------ template & system


def _template_fields(template: str) -> set[str]:
    """Root names of the template's placeholders; a malformed template is a config error."""
    try:
        parsed = list(string.Formatter().parse(template))
    except ValueError as e:
        raise TunelabError(f"malformed prompt_template ({e})", where="data.prompt_template",
                           fix="use {prompt} and {column} placeholders; write {{ and }} for literal braces") from None
    roots = {name.split(".")[0].split("[")[0] for _, name, _, _ in parsed if name is not None}
    if "" in roots or any(r.isdigit() for r in roots):
        raise TunelabError("prompt_template has a positional placeholder ({} or {0})",
                           where="data.prompt_template", fix="name every placeholder, e.g. {prompt}")
    return roots


def _apply_template(messages: list[dict[str, str]], template: str, fields: set[str],
                    raw: dict[str, Any], mapped: dict[str, Any]) -> None:
    """Format the final user turn in place; {prompt} is its text, other names are record columns."""
    turn = next(m for m in reversed(messages) if m["role"] == "user")
    values = {**raw, **mapped, "prompt": turn["content"]}
    missing = sorted(fields - values.keys())
    if missing:
        raise _Bad(f"missing column for prompt_template ({', '.join('{' + m + '}' for m in missing)})")
    try:
        text = template.format_map(values)
    except (AttributeError, IndexError, KeyError, TypeError, ValueError) as e:
        raise _Bad(f"prompt_template failed ({type(e).__name__}: {e})") from None
    turn["content"] = text


def _check_text_options(spec: DataSpec) -> None:
    for key in ("prompt_template", "system_prompt"):
        if getattr(spec, key):
            raise TunelabError(f"{key} has no effect on plain-text data", where=f"data.{key}",
                               fix="remove it, or use a chat format (prompt/completion, messages, ...)")


# ------------------------------------------------------------------------------------------- conversion


def _convert(where: str, raw: dict[str, Any], fmt: str, spec: DataSpec, fields: set[str] | None) -> Example:
    mapped = map_columns(raw, spec.columns)
    if fmt == "text":
        return Example(messages=[], text=_scalar(mapped, "text", spec.columns), where=where, raw=raw)
    messages = _CONVERTERS[fmt](mapped, spec.columns)
    _check_turns(messages)
    if spec.prompt_template is not None:
        _apply_template(messages, spec.prompt_template, fields or set(), raw, mapped)
    if spec.system_prompt and messages[0]["role"] != "system":
        # A record's own system message is more specific than the recipe-wide one, so it is kept.
        messages.insert(0, {"role": "system", "content": spec.system_prompt})
    return Example(messages=messages, text=None, where=where, raw=raw)


def to_examples(
    records: Iterable[tuple[str, dict[str, Any]]], spec: DataSpec, *, fmt: str | None = None
) -> tuple[list[Example], list[Reject]]:
    """Convert ``(where, record)`` pairs into examples and rejects.

    Args:
        records: as returned by `read_records`.
        spec: column mapping, format, prompt template and system prompt are used.
        fmt: the format when already resolved (else `resolve_format` decides).

    Returns:
        ``(examples, rejects)``, both in input order; every record is in exactly one of them.

    Raises:
        TunelabError: configuration problems (unknown column key, malformed template, undetectable format).
    """
    records = list(records)
    if not records:
        return [], []
    fmt = fmt or resolve_format(records, spec)
    if fmt == "text":
        _check_text_options(spec)
    fields = _template_fields(spec.prompt_template) if spec.prompt_template is not None else None
    examples, rejects = [], []
    for where, raw in records:
        try:
            examples.append(_convert(where, raw, fmt, spec, fields))
        except _Bad as e:
            rejects.append(Reject(where=where, reason=str(e), record=raw))
    return examples, rejects
