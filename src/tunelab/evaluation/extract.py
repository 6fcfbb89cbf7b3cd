"""Answer extraction: the final answer out of a longer (e.g. chain-of-thought) generation.

Without a pattern the rules are, in order:

1. the text after the last "the answer is" / "final answer:" / "answer:" (to the end of that line) is the
   answer segment; without such a phrase the whole text is;
2. ``label``/``choice``: the label mentioned last in the segment (whole words, case and punctuation
   ignored), else the one mentioned last in the whole text;
   ``number``: the last number in the segment, else in the text (thousands separators dropped);
   ``json``: the first JSON object in the text, re-serialised;
   ``text``: the segment, trimmed of surrounding quotes, markdown emphasis and a final period.

With a pattern (``eval.extract``), its last match is the answer (group 1 when the pattern has a group);
for label tasks the label mentioned last in the match is returned when there is one. Nothing found gives
``""``, which every metric scores as wrong: a failed extraction is never silently replaced by a guess.
"""

from __future__ import annotations

import json
import re
from collections.abc import Sequence

from tunelab.evaluation.metrics import _normalize_label, parse_json_object

__all__ = ["EXTRACT_TASKS", "extract_answer", "last_label", "last_number"]

EXTRACT_TASKS = ("label", "choice", "number", "json", "text")
_ANSWER_PHRASE = re.compile(r"(?:the\s+(?:final\s+)?answer\s+is|final\s+answer\s*:|answer\s*:)[ \t:]*([^\n]*)",
                            re.IGNORECASE)
_NUMBER = re.compile(r"[-+]?(?:\d{1,3}(?:,\d{3})+|\d+)(?:\.\d+)?")
_TRIM = " \t\"'`*_.:"


def _answer_segment(text: str) -> str | None:
    matches = [m.group(1).strip() for m in _ANSWER_PHRASE.finditer(text)]
    matches = [m for m in matches if m.strip(_TRIM)]
    return matches[-1] if matches else None


def last_label(text: str, labels: Sequence[str]) -> str | None:
    """The label whose last whole-word mention ends latest in ``text`` (longer label on a tie), or None.

    Args:
        text: Any text.
        labels: Candidate labels.

    Returns:
        One of ``labels`` or None.
    """
    norm = _normalize_label(text)
    best: tuple[int, int] | None = None
    found = None
    for label in labels:
        lab = _normalize_label(label)
        if not lab:
            continue
        for m in re.finditer(rf"(?<!\S){re.escape(lab)}(?!\S)", norm):
            key = (m.end(), len(lab))
            if best is None or key > best:
                best, found = key, label
    return found


def last_number(text: str) -> str | None:
    """The last number in ``text`` without thousands separators (``"1,234.5"`` -> ``"1234.5"``), or None."""
    nums = _NUMBER.findall(text)
    return nums[-1].replace(",", "").lstrip("+") if nums else None


def _by_pattern(text: str, task: str, labels: Sequence[str] | None, pattern: str) -> str:
    matches = list(re.finditer(pattern, text))
    if not matches:
        return ""
    m = matches[-1]
    found = (m.group(1) if m.re.groups else m.group(0)) or ""
    if task in ("label", "choice") and labels:
        return last_label(found, labels) or found.strip()
    return found.strip()


def _first_json(text: str) -> str:
    obj = parse_json_object(text)
    return json.dumps(obj, ensure_ascii=False) if obj is not None else ""


def extract_answer(text: str, task: str, labels: Sequence[str] | None = None, pattern: str | None = None) -> str:
    """The final answer in a generation (see the module docstring for the rules).

    Args:
        text: The model's output.
        task: ``"label"``, ``"choice"``, ``"number"``, ``"json"`` or ``"text"``.
        labels: The label set (label/choice tasks); without it label extraction falls back to ``"text"``.
        pattern: A regular expression whose last match is the answer (group 1 if it has groups).

    Returns:
        The extracted answer, or ``""`` when none is found.

    Raises:
        ValueError: Unknown ``task``.
        re.error: ``pattern`` is not a valid regular expression.
    """
    if task not in EXTRACT_TASKS:
        raise ValueError(f"unknown extraction task {task!r}; valid: {', '.join(EXTRACT_TASKS)}")
    if pattern is not None:
        return _by_pattern(text, task, labels, pattern)
    if task == "json":
        return _first_json(text)
    segment = _answer_segment(text)
    if task in ("label", "choice") and labels:
        found = last_label(segment, labels) if segment is not None else None
        return found or last_label(text, labels) or ""
    if task == "number":
        found = last_number(segment) if segment is not None else None
        return found or last_number(text) or ""
    return (segment if segment is not None else text).strip(_TRIM)
