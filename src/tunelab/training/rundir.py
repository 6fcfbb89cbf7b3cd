"""Run folders: creation, the manifest, and the metric log."""

from __future__ import annotations

import platform
import shutil
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from datetime import datetime, timezone
from importlib import metadata
from pathlib import Path
from typing import Any

from tunelab.config.specs import OutputSpec
from tunelab.errors import TunelabError
from tunelab.util.io import append_jsonl, atomic_write_json, atomic_write_text

__all__ = ["MetricsLog", "create_run_dir", "library_versions", "listen_metrics", "write_manifest"]

# Callables that see every metrics row any run logs in this process (sweep pruners, experiment trackers).
# A listener may raise (e.g. optuna.TrialPruned) to stop the run; the exception propagates out of train().
_LISTENERS: list[Callable[[dict[str, Any]], None]] = []


@contextmanager
def listen_metrics(fn: Callable[[dict[str, Any]], None]) -> Iterator[None]:
    """Call `fn(row)` for every metrics row logged while the block runs (by any recipe's MetricsLog)."""
    _LISTENERS.append(fn)
    try:
        yield
    finally:
        _LISTENERS.remove(fn)

_LIBS = ("tunelab", "torch", "transformers", "peft", "accelerate", "datasets", "safetensors", "tokenizers",
         "pydantic", "numpy")


def create_run_dir(spec: OutputSpec, recipe_name: str) -> Path:
    """A fresh run folder `<dir>/<name>`; refuses to clobber an existing one unless output.overwrite."""
    name = spec.name or f"{recipe_name}-{datetime.now().strftime('%Y%m%d-%H%M%S')}"
    run_dir = Path(spec.dir) / name
    if run_dir.exists():
        if not spec.overwrite:
            raise TunelabError(f"run folder already exists: {run_dir}", where="output.name",
                               fix="choose another output.name or set output.overwrite=true")
        shutil.rmtree(run_dir)
    run_dir.mkdir(parents=True)
    return run_dir


def library_versions() -> dict[str, str]:
    out = {"python": platform.python_version()}
    for lib in _LIBS:
        try:
            out[lib] = metadata.version(lib)
        except metadata.PackageNotFoundError:
            continue
    return out


def write_manifest(run_dir: Path, **fields: Any) -> None:
    """manifest.json: what went in (hashes), with what (versions, seed, hardware), and how long it took."""
    manifest = {
        "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "command": " ".join(sys.argv),
        "platform": platform.platform(),
        "libraries": library_versions(),
        **fields,
    }
    atomic_write_json(run_dir / "manifest.json", manifest)


class MetricsLog:
    """metrics.jsonl: one JSON row per logged training step or evaluation, appended as it happens.

    With enabled=False (non-main processes of a distributed run) rows are kept in memory but not written.
    """

    def __init__(self, path: Path, enabled: bool = True):
        self.path = path
        self.enabled = enabled
        self.rows: list[dict[str, Any]] = []
        self.t0 = time.perf_counter()

    def log(self, **row: Any) -> None:
        row = {"time_s": round(time.perf_counter() - self.t0, 3), **row}
        self.rows.append(row)
        if self.enabled:
            append_jsonl(self.path, row)
            # Every listener sees the row (the tracker too) before one that stops the run (a pruner) raises.
            stop: BaseException | None = None
            for fn in list(_LISTENERS):
                try:
                    fn(row)
                except Exception as e:
                    stop = stop or e
            if stop is not None:
                raise stop

    def truncate_after(self, step: int) -> None:
        """On resume: keep the rows up to `step` (later ones are re-done) and continue the clock from them."""
        import json

        rows = []
        if self.path.is_file():
            for line in self.path.read_text(encoding="utf-8").splitlines():
                if line.strip():
                    row = json.loads(line)
                    if row.get("step", 0) <= step:
                        rows.append(row)
        self.rows = rows
        if rows:
            self.t0 -= max(r.get("time_s", 0.0) for r in rows)
        if self.enabled:
            atomic_write_text(self.path, "".join(json.dumps(r) + "\n" for r in rows))

    def train_rows(self) -> list[dict[str, Any]]:
        return [r for r in self.rows if "loss" in r]

    def eval_rows(self) -> list[dict[str, Any]]:
        return [r for r in self.rows if "val_loss" in r]
