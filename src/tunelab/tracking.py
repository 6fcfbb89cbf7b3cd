"""Experiment tracking: MLflow (embedded SQLite store by default, or a server) and TensorBoard event files.

Trackers are fed by `listen_metrics` while a run trains (every metrics row, live) and get the run folder's
params, data fingerprints, summary and artefacts at the end. A tracker that fails (server down, locked
database) warns once and switches itself off: tracking never stops a training run.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from pathlib import Path
from typing import Any

from tunelab.config.specs import Recipe
from tunelab.util.console import console

__all__ = ["default_mlflow_uri", "log_evaluation", "track_run"]

_NOT_METRICS = {"step", "epoch", "time_s"}


def _flatten(d: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    out: dict[str, Any] = {}
    for k, v in d.items():
        if isinstance(v, dict):
            out.update(_flatten(v, f"{prefix}{k}."))
        else:
            out[f"{prefix}{k}"] = v
    return out


def default_mlflow_uri(output_dir: str) -> str:
    return f"sqlite:///{(Path(output_dir) / 'mlflow.db').resolve()}"


@contextmanager
def _store_lock(uri: str, output_dir: str) -> Iterator[None]:
    """An exclusive lock beside a SQLite store (``<db>.lock``), else ``<output_dir>/.mlflow.lock`` (flock;
    released when the block ends or the process dies)."""
    try:
        import fcntl
    except ImportError:  # Windows: no flock; concurrent first use of a new store stays unprotected there
        yield
        return
    db = uri.removeprefix("sqlite:///") if uri.startswith("sqlite:///") else None
    lock = Path(f"{db}.lock") if db else Path(output_dir) / ".mlflow.lock"
    lock.parent.mkdir(parents=True, exist_ok=True)
    with open(lock, "a") as f:
        fcntl.flock(f, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)


def _enabled(recipe: Recipe) -> list[str]:
    if os.environ.get("TUNELAB_TRACKING", "").lower() in {"none", "off", "0", "false"}:
        return []
    return list(recipe.output.tracking)


class _MLflow:
    def __init__(self, recipe: Recipe, run_dir: Path, recipe_name: str, tags: dict[str, str]):
        import logging

        import mlflow

        logging.getLogger("mlflow").setLevel(logging.WARNING)
        logging.getLogger("alembic").setLevel(logging.WARNING)
        self.mlflow = mlflow
        Path(recipe.output.dir).mkdir(parents=True, exist_ok=True)
        # Several processes (sweep workers, runs started side by side) may open a new store at once: creating
        # its tables or the same experiment concurrently fails in one of them, so the first steps are serialised.
        uri = recipe.output.mlflow_uri or default_mlflow_uri(recipe.output.dir)
        with _store_lock(uri, recipe.output.dir):
            mlflow.set_tracking_uri(uri)
            mlflow.set_experiment(recipe.output.experiment or recipe_name)
        self.recipe = recipe
        self.run = mlflow.start_run(run_name=run_dir.name, tags={"tunelab.run_dir": str(run_dir.resolve()), **tags})
        params = {k: json.dumps(v) if isinstance(v, list | dict) else v
                  for k, v in _flatten(recipe.model_dump(mode="json", exclude={"sweep"})).items()}
        for start in range(0, len(params), 100):  # MLflow caps a batch at 100 params
            mlflow.log_params(dict(list(params.items())[start:start + 100]))

    def row(self, row: dict[str, Any]) -> None:
        metrics = {k: float(v) for k, v in row.items()
                   if k not in _NOT_METRICS and isinstance(v, int | float) and not isinstance(v, bool)}
        if metrics:
            self.mlflow.log_metrics(metrics, step=int(row.get("step", 0)))

    def finish(self, run_dir: Path, status: str) -> None:
        mlflow = self.mlflow
        summary = _read(run_dir / "train_summary.json")
        system = {f"system.{k}": v for k, v in summary.items() if isinstance(v, int | float) and not isinstance(v, bool)}
        if system:
            mlflow.log_metrics(system)
        manifest = _read(run_dir / "manifest.json")
        data = manifest.get("data", {})
        tags = {"data.fingerprint": str(data.get("fingerprint"))} if data else _input_file_tags(self.recipe)
        for path, info in (data.get("files") or {}).items():
            tags[f"data.file.{Path(path).name}"] = str(info.get("sha256") if isinstance(info, dict) else info)
        if data.get("dataset"):
            tags["data.dataset_fingerprint"] = str(data["dataset"].get("fingerprint"))
        mlflow.set_tags(tags)
        for name in ("config.yaml", "manifest.json", "train_summary.json", "data_summary.json", "metrics.jsonl",
                     "report.html"):
            if (run_dir / name).is_file():
                mlflow.log_artifact(str(run_dir / name))
        for folder in ("adapter", "eval", "plots"):
            if (run_dir / folder).is_dir():
                mlflow.log_artifacts(str(run_dir / folder), artifact_path=folder)
        mlflow.end_run(status=status)
        if run_dir.is_dir():  # so evaluation can add its metrics to the same MLflow run later
            (run_dir / "mlflow_run.json").write_text(json.dumps(
                {"tracking_uri": mlflow.get_tracking_uri(), "run_id": self.run.info.run_id,
                 "experiment_id": self.run.info.experiment_id}), encoding="utf-8")


def _input_file_tags(recipe: Recipe) -> dict[str, str]:
    """``data.file.<name>: sha256`` of the recipe's data files, for a run stopped before its manifest (a pruned
    or interrupted trial): what it trained on stays identifiable in the tracker."""
    from tunelab.util.io import sha256_file

    d = recipe.data
    tags = {}
    for path in (d.path, d.validation_path, d.test_path):
        if path and Path(path).is_file():
            tags[f"data.file.{Path(path).name}"] = sha256_file(path)
    return tags


class _TensorBoard:
    def __init__(self, run_dir: Path):
        from torch.utils.tensorboard import SummaryWriter

        self.writer = SummaryWriter(log_dir=str(run_dir / "tensorboard"))

    def row(self, row: dict[str, Any]) -> None:
        for k, v in row.items():
            if k not in _NOT_METRICS and isinstance(v, int | float) and not isinstance(v, bool):
                self.writer.add_scalar(k, v, int(row.get("step", 0)))

    def finish(self, run_dir: Path, status: str) -> None:
        self.writer.close()


def _read(path: Path) -> dict[str, Any]:
    try:
        return json.loads(path.read_text(encoding="utf-8")) if path.is_file() else {}
    except (OSError, json.JSONDecodeError):
        return {}


class _Safe:
    """Runs a tracker's calls; the first failure warns and disables it."""

    def __init__(self, name: str, factory):
        self.name, self.tracker = name, None
        self._call(lambda: setattr(self, "tracker", factory()))

    def _call(self, fn) -> None:
        try:
            fn()
        except Exception as e:  # a tracker must never stop training
            console.print(f"[yellow]warning:[/] {self.name} tracking is off for this run: {str(e).splitlines()[0][:200]}")
            self.tracker = None

    def row(self, row: dict[str, Any]) -> None:
        if self.tracker is not None:
            self._call(lambda: self.tracker.row(row))

    def finish(self, run_dir: Path, status: str) -> None:
        if self.tracker is not None:
            self._call(lambda: self.tracker.finish(run_dir, status))


@contextmanager
def track_run(recipe: Recipe, run_dir: Path, recipe_name: str, tags: dict[str, str] | None = None) -> Iterator[None]:
    """Feed the enabled trackers while the block trains `run_dir`; finalise them with the run's outcome."""
    from tunelab.training.rundir import listen_metrics

    kinds = _enabled(recipe)
    if not kinds:
        yield
        return
    trackers = []
    if "mlflow" in kinds:
        trackers.append(_Safe("MLflow", lambda: _MLflow(recipe, run_dir, recipe_name, tags or {})))
    if "tensorboard" in kinds:
        trackers.append(_Safe("TensorBoard", lambda: _TensorBoard(run_dir)))
    status = "FAILED"
    with ExitStack() as stack:
        for t in trackers:
            stack.enter_context(listen_metrics(t.row))
        try:
            yield
            status = "FINISHED"
        except BaseException as e:
            status = "KILLED" if type(e).__name__ in {"TrialPruned", "TrainingInterrupted", "KeyboardInterrupt"} \
                else "FAILED"
            raise
        finally:
            for t in trackers:
                t.finish(run_dir, status)


def log_evaluation(run_dir: Path) -> None:
    """Add eval/metrics.json (base and tuned) and report.html to the run's MLflow run, when it has one."""
    info = _read(Path(run_dir) / "mlflow_run.json")
    if not info or os.environ.get("TUNELAB_TRACKING", "").lower() in {"none", "off", "0", "false"}:
        return

    def log() -> None:
        import mlflow

        mlflow.set_tracking_uri(info["tracking_uri"])
        ev = _read(Path(run_dir) / "eval" / "metrics.json")
        with mlflow.start_run(run_id=info["run_id"]):
            for side in ("base", "tuned", "delta"):
                values = {f"eval.{side}.{k}": float(v) for k, v in (ev.get(side) or {}).items()
                          if isinstance(v, int | float) and not isinstance(v, bool)}
                if values:
                    mlflow.log_metrics(values)
            for name in ("report.html", "report.md"):
                if (Path(run_dir) / name).is_file():
                    mlflow.log_artifact(str(Path(run_dir) / name))
            if (Path(run_dir) / "eval").is_dir():
                mlflow.log_artifacts(str(Path(run_dir) / "eval"), artifact_path="eval")

    _Safe("MLflow", lambda: (log(), None)[1])
