"""The two row types every data stage passes around: a usable `Example` and a `Reject` with its reason.

Reject reasons follow one convention so that summaries can count them: a short, stable category first,
then row-specific details in parentheses, e.g. ``"longer than max_length (812 tokens > 512)"``.
`reason_key` returns the category.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

__all__ = ["Example", "Reject", "reason_key"]


@dataclass
class Example:
    """One training/evaluation row in canonical form.

    Attributes:
        messages: chat turns ``[{"role": "system"|"user"|"assistant", "content": str}, ...]``;
            empty for plain text.
        text: the document, set only for the plain-text format (continued pretraining).
        where: ``"path:line"`` (JSONL/CSV/TXT, 1-based) or ``"path:#index"`` (JSON array / parquet, 0-based).
        raw: the original record, as read.
    """

    messages: list[dict[str, str]]
    text: str | None
    where: str
    raw: dict[str, Any] = field(default_factory=dict)

    @property
    def prompt_messages(self) -> list[dict[str, str]]:
        """The conversation without its final assistant turn (what a model is asked at evaluation)."""
        if self.messages and self.messages[-1]["role"] == "assistant":
            return self.messages[:-1]
        return list(self.messages)

    @property
    def reference(self) -> str | None:
        """The final assistant answer, or None (plain text, or no final assistant turn)."""
        if self.messages and self.messages[-1]["role"] == "assistant":
            return self.messages[-1]["content"]
        return None

    def content(self) -> dict[str, Any]:
        """What the example says (no provenance): the basis of split hashing and duplicate detection."""
        return {"messages": self.messages, "text": self.text}

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> Example:
        return cls(messages=d["messages"], text=d["text"], where=d["where"], raw=d["raw"])


@dataclass
class Reject:
    """A row that was not used, with the reason (rejected rows are always counted and can be written out).

    Attributes:
        where: ``"path:line"`` or ``"path:#index"`` of the row.
        reason: ``"category (details)"``; see the module docstring.
        record: the original record, when there is one.
        step: the curation step that removed the row, if a curation step did.
    """

    where: str
    reason: str
    record: dict[str, Any] | None = None
    step: str | None = None  # the curation step that removed it (None: reading, format or tokenization)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> Reject:
        return cls(where=d["where"], reason=d["reason"], record=d.get("record"), step=d.get("step"))


def reason_key(reason: str) -> str:
    """The countable category of a reason: the text before the first ``" ("``."""
    return reason.split(" (", 1)[0].strip()
