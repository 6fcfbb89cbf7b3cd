"""Content-addressed cache of prepared (tokenized) data, stored as JSON (never pickle).

The key covers everything the result depends on: the input files' bytes, the DataSpec, the tokenizer's
identity and chat template, and this module's format version (bump it when preparation changes).
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from tunelab.config.specs import DataSpec
from tunelab.util.io import atomic_write_text

__all__ = ["CACHE_VERSION", "cache_dir", "cache_key", "load_cached", "save_cached"]

CACHE_VERSION = 3  # 2: rejects carry the curation step; data.curate. 3: stratified, duplicate-grouped split
log = logging.getLogger(__name__)


def cache_dir() -> Path:
    """``$TUNELAB_DATA_CACHE`` or ``~/.cache/tunelab/data``."""
    return Path(os.environ.get("TUNELAB_DATA_CACHE") or Path.home() / ".cache" / "tunelab" / "data")


def _tokenizer_identity(tokenizer: Any) -> dict[str, Any]:
    return {
        "class": type(tokenizer).__name__,
        "name": getattr(tokenizer, "name_or_path", None),
        "vocab_size": getattr(tokenizer, "vocab_size", None),
        "len": len(tokenizer),
        "eos_token_id": getattr(tokenizer, "eos_token_id", None),
        "chat_template": getattr(tokenizer, "chat_template", None),
    }


def cache_key(file_hashes: Mapping[str, str], spec: DataSpec, tokenizer: Any) -> str:
    """sha256 over the inputs' content hashes (by role), the spec and the tokenizer's identity."""
    blob = json.dumps(
        {"version": CACHE_VERSION, "files": dict(sorted(file_hashes.items())), "spec": spec.model_dump(mode="json"),
         "tokenizer": _tokenizer_identity(tokenizer)},
        sort_keys=True, default=str,
    )
    return hashlib.sha256(blob.encode()).hexdigest()


def _path(key: str) -> Path:
    return cache_dir() / f"{key}.json"


def load_cached(key: str) -> dict[str, Any] | None:
    """The stored payload for ``key``, or None when absent or unreadable (a broken entry is recomputed)."""
    path = _path(key)
    try:
        payload = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        return None
    except (OSError, ValueError) as e:
        log.warning("ignoring unreadable data cache entry %s (%s)", path, e)
        return None
    if not isinstance(payload, dict) or payload.get("cache_version") != CACHE_VERSION:
        return None
    return payload


def save_cached(key: str, payload: dict[str, Any]) -> None:
    """Store ``payload`` atomically; a cache that cannot be written only costs time, so it is a warning."""
    try:
        # Compact JSON: atomic_write_json's indentation would put every token id on its own line.
        text = json.dumps({"cache_version": CACHE_VERSION, **payload}, ensure_ascii=False, separators=(",", ":"))
        atomic_write_text(_path(key), text)
    except OSError as e:
        log.warning("cannot write the data cache at %s (%s); set TUNELAB_DATA_CACHE to a writable folder",
                    cache_dir(), e)
