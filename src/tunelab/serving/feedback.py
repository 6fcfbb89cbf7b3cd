"""Feedback for the preference-training loop: ratings and chosen/rejected answers, stored as JSONL.

Records are written in the preference formats `tunelab train` reads (see tunelab.data.preference), so the
files can be used as `data.path` directly:

* ``feedback_pairs.jsonl`` (format ``pairs``): ``prompt`` (message list), ``chosen``, ``rejected`` — from
  feedback with a chosen answer (the rejected one defaults to the model's response);
* ``feedback_ratings.jsonl`` (format ``unpaired``, KTO): ``prompt``, ``completion``, ``label``
  (``good``/``bad``) — from feedback with a rating.

Every row also has ``id``, ``created`` (UTC ISO-8601), ``response_id``, ``choice_index``, ``model``,
``comment`` and, for ratings, ``rating`` (+1/-1). `FeedbackStore` is a Protocol so the server can keep them
in a database instead.
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Protocol

from tunelab.util.io import append_jsonl

__all__ = ["FeedbackStore", "JsonlFeedbackStore", "RecentResponse", "ResponseLog", "feedback_rows"]

PAIRS_FILE = "feedback_pairs.jsonl"
RATINGS_FILE = "feedback_ratings.jsonl"


@dataclass
class RecentResponse:
    """What the server answered, kept briefly so feedback can name it by id."""

    model: str
    prompts: list[list[dict[str, str]] | str]  # per choice: chat messages, or a text completion's prompt
    choices: list[str]


class ResponseLog:
    """A bounded map response id -> `RecentResponse` (oldest forgotten first; 0 keeps nothing)."""

    def __init__(self, capacity: int):
        self.capacity = capacity
        self._items: OrderedDict[str, RecentResponse] = OrderedDict()
        self._lock = threading.Lock()

    def add(self, response_id: str, item: RecentResponse) -> None:
        if self.capacity <= 0:
            return
        with self._lock:
            self._items[response_id] = item
            while len(self._items) > self.capacity:
                self._items.popitem(last=False)

    def get(self, response_id: str) -> RecentResponse | None:
        with self._lock:
            return self._items.get(response_id)


class FeedbackStore(Protocol):
    def add(self, rows: dict[str, dict[str, Any]]) -> list[str]:
        """Store rows keyed by kind ('pairs', 'ratings'); returns where they went."""
        ...


class JsonlFeedbackStore:
    """Appends feedback rows to JSONL files in `folder` (one line per record; safe across threads)."""

    def __init__(self, folder: str | Path):
        self.folder = Path(folder)
        self._lock = threading.Lock()

    def add(self, rows: dict[str, dict[str, Any]]) -> list[str]:
        files = {"pairs": PAIRS_FILE, "ratings": RATINGS_FILE}
        out = []
        with self._lock:
            self.folder.mkdir(parents=True, exist_ok=True)
            for kind, row in rows.items():
                path = self.folder / files[kind]
                append_jsonl(path, row)
                out.append(str(path))
        return out


def feedback_rows(fid: str, *, prompt: list[dict[str, str]] | str, response: str | None, model: str | None,
                  response_id: str | None, choice_index: int, rating: int | None, chosen: str | None,
                  rejected: str | None, comment: str | None) -> dict[str, dict[str, Any]]:
    """The rows one feedback request produces: a pair when `chosen` is given, a rating when `rating` is."""
    common = {"id": fid, "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
              "response_id": response_id, "choice_index": choice_index, "model": model, "comment": comment}
    rows: dict[str, dict[str, Any]] = {}
    if chosen is not None:
        rows["pairs"] = {"prompt": prompt, "chosen": chosen, "rejected": rejected or response, **common}
    if rating is not None:
        rows["ratings"] = {"prompt": prompt, "completion": response,
                           "label": "good" if rating > 0 else "bad", "rating": rating, **common}
    return rows
