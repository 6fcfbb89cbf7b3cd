"""Leaf helpers every training recipe calls: refusing settings it does not do, starting a run, counting
steps, building the optimizer, restoring the best weights and writing the run folder.

The recipes compose these (composition, not a base class with hooks: DESIGN.md principle 5); each one
used to carry its own copy.
"""

from __future__ import annotations

import math
import random
import resource
from pathlib import Path
from typing import Any, NamedTuple

import torch

from tunelab.config.specs import Recipe, TrainSpec
from tunelab.errors import TunelabError
from tunelab.models import load_tokenizer, resolve_device, resolve_model, resolve_precision
from tunelab.util.console import console
from tunelab.util.io import atomic_write_json, atomic_write_text

__all__ = ["RunStart", "data_identity", "data_lineage", "model_identity", "optimizer_steps", "peak_rss_mb",
           "prepare_training", "refuse_unsupported", "restore_best", "save_policy", "save_run_files", "set_seed",
           "single_process_only", "start_run", "steps_per_epoch", "track_best", "write_run_manifest"]


# ------------------------------------------------------------------------------------------------ preflight


def single_process_only(train: TrainSpec, dist: Any, resume: bool) -> dict[str, bool]:
    """The two refusals of every recipe but SFT: no data-parallel training and no resumable checkpoints.

    Returns:
        ``{what: refused}`` entries to splice into a recipe's own `refuse_unsupported` table (in its order).
    """
    return {
        "data-parallel training (--nproc)": bool(getattr(dist, "enabled", False)),
        "resumable checkpoints (--resume, train.resume, train.save_every)": bool(
            resume or train.resume != "never" or train.save_every),
    }


def refuse_unsupported(objective: str, unsupported: dict[str, bool], fix: str) -> None:
    """Raise for the first setting of ``unsupported`` (``{what: refused}``, in order) that is refused.

    Raises:
        TunelabError: ``train.objective=<objective> does not support <what>``, with ``fix``.
    """
    for what, bad in unsupported.items():
        if bad:
            raise TunelabError(f"train.objective={objective} does not support {what}", where="train.objective",
                               fix=fix)


# ------------------------------------------------------------------------------------------------ setup


def set_seed(seed: int) -> None:
    """Seed Python, NumPy and torch (NumPy takes 32 bits)."""
    import numpy as np

    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def peak_rss_mb() -> float:
    """Peak resident memory of this process so far, in MB."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux reports KiB


class RunStart(NamedTuple):
    """What every recipe resolves first (unpack it: ``device, precision, resolved, tokenizer = start_run(r)``)."""

    device: str
    precision: str
    resolved: Any  # tunelab.models.ResolvedModel
    tokenizer: Any


def start_run(recipe: Recipe, dist: Any = None) -> RunStart:
    """Seed, thread count, device, precision, the model's location and its tokenizer.

    Args:
        recipe: the run's recipe.
        dist: a `DistContext`; with several processes on CUDA each takes the GPU of its local rank.
    """
    m = recipe.model
    set_seed(recipe.train.seed)
    if m.threads:
        torch.set_num_threads(m.threads)
    device = resolve_device(m.device)
    if device == "cuda" and getattr(dist, "enabled", False):
        device = f"cuda:{dist.local_rank}"
    precision = resolve_precision(m.precision, device.split(":")[0])
    return RunStart(device, precision, resolve_model(m.name), load_tokenizer(m.name, m.trust_remote_code))


def steps_per_epoch(train: TrainSpec, rows: int, group: int) -> int:
    """Optimizer steps in one pass over ``rows`` training rows (at least 1; a last short step counts).

    Args:
        train: its batch size (rows per micro-batch).
        rows: training rows.
        group: micro-batches per optimizer step (``grad_accum``, times the processes of a distributed run).
    """
    return max(1, math.ceil(math.ceil(rows / train.batch_size) / group))


def optimizer_steps(train: TrainSpec, rows: int, group: int) -> int:
    """Optimizer steps of the run: ``train.max_steps``, else epochs x `steps_per_epoch` (at least 1)."""
    return train.max_steps or max(1, math.ceil(train.epochs * steps_per_epoch(train, rows, group)))


def prepare_training(model: torch.nn.Module, recipe: Recipe, total_steps: int,
                     config_dir: Path | None) -> tuple[Any, Any]:
    """The optimizer and learning-rate schedule of ``total_steps`` steps; the resolved recipe as config.yaml.

    Args:
        model: the model with its trainable parameters set.
        recipe: ``train`` settings (optimizer, lr, warmup, schedule); the whole recipe is written.
        total_steps: optimizer steps of the run (the schedule's length).
        config_dir: where ``config.yaml`` goes; None in a process that does not write the run folder.
    """
    from tunelab.config.loading import dump_recipe
    from tunelab.training.optim import build_optimizer, build_scheduler

    optimizer = build_optimizer(model, recipe.train)
    scheduler = build_scheduler(optimizer, recipe.train, total_steps)
    if config_dir is not None:
        atomic_write_text(config_dir / "config.yaml", dump_recipe(recipe))
    return optimizer, scheduler


# Early stopping works on a recipe's own state object with these attributes: step (optimizer steps taken),
# best_val (the best score, oriented so that lower is better), best_step, bad_evals (evaluations since it)
# and best_weights (trainable parameters at best_step, kept only with a patience).


def track_best(state: Any, score: float, model: torch.nn.Module, patience: int | None, min_delta: float) -> bool:
    """Early-stopping bookkeeping of one evaluation; True when ``patience`` evaluations in a row did not improve.

    Args:
        state: the recipe's state (see above); updated in place.
        score: this evaluation's metric, oriented so that lower is better.
        model: its trainable parameters are copied when the score improves and a patience is set.
        patience: ``train.early_stopping_patience`` (None or 0: never stop, keep no copy).
        min_delta: how much lower than the best a score must be to count as better.
    """
    if score < state.best_val - min_delta:
        state.best_val, state.best_step, state.bad_evals = score, state.step, 0
        if patience:
            state.best_weights = {n: p.detach().clone() for n, p in model.named_parameters() if p.requires_grad}
        return False
    state.bad_evals += 1
    return bool(patience and state.bad_evals >= patience)


def restore_best(model: torch.nn.Module, state: Any, note: str = "") -> None:
    """Copy the best evaluation's saved weights back into ``model``, unless they are the last step's.

    Args:
        model: the model being trained.
        state: the recipe's state (see above).
        note: added to the console line after the step (e.g. the metric's name).
    """
    if state.best_weights is None or state.best_step == state.step:
        return
    params = dict(model.named_parameters())
    with torch.no_grad():
        for name, value in state.best_weights.items():
            params[name].copy_(value)
    console.print(f"restored the best weights (step {state.best_step}{note})")


# ------------------------------------------------------------------------------------------------ save


def save_policy(model: torch.nn.Module, out: Path) -> None:
    """Save a TRL-trained policy's weights (safetensors) to ``out``.

    TRL may add a frozen adapter named 'ref' (the KL/DPO reference) next to ours: only 'default' is the result.
    """
    if hasattr(model, "peft_config"):
        model.save_pretrained(out, selected_adapters=["default"], safe_serialization=True)
    else:
        model.save_pretrained(out, safe_serialization=True)


def save_run_files(run_dir: Path, tokenizer: Any, data: Any, summary: dict[str, Any],
                   data_summary: dict[str, Any] | None = None) -> None:
    """``tokenizer/``, ``data_summary.json``, ``rejects.jsonl`` and ``train_summary.json`` of a run folder.

    Args:
        run_dir: the run folder.
        tokenizer: the tokenizer the model was trained with.
        data: prepared data (``summary``, ``rejects``).
        summary: the training summary.
        data_summary: written instead of ``data.summary`` when a recipe adds to it.
    """
    from tunelab.data import write_rejects

    tokenizer.save_pretrained(run_dir / "tokenizer")
    atomic_write_json(run_dir / "data_summary.json", data.summary if data_summary is None else data_summary)
    write_rejects(data.rejects, run_dir / "rejects.jsonl")
    atomic_write_json(run_dir / "train_summary.json", summary)


def model_identity(recipe: Recipe, resolved: Any, with_kind: bool = False) -> dict[str, Any]:
    """The manifest's ``model`` entry: the name asked for, where it was loaded from (and its kind)."""
    out = {"name": recipe.model.name, "path": str(resolved.path), "source": resolved.source}
    if with_kind:
        out["kind"] = resolved.kind
    return out


def data_identity(data: Any) -> dict[str, Any]:
    """The manifest's ``data`` entry: the prepared data's fingerprint and its input files with hashes."""
    return {"fingerprint": data.fingerprint, "files": data.summary.get("files", {})}


def data_lineage(data: Any, path: str) -> dict[str, Any]:
    """`data_identity` plus the curation steps run in this run and a curated dataset folder's identity.

    Args:
        data: prepared data (``fingerprint``, ``summary``).
        path: ``data.path`` of the recipe (a curated dataset folder has a manifest of its own).
    """
    from tunelab.data.pipeline import resolve_data_path
    from tunelab.data.stage import dataset_manifest

    lineage = data_identity(data)
    summary = data.summary
    if summary.get("curation"):
        lineage["curation"] = [{k: c[k] for k in ("split", "step", "rows_in", "kept", "rejected")}
                               for c in summary["curation"]]
    ds = dataset_manifest(resolve_data_path(path))
    if ds:
        lineage["dataset"] = {"path": path, "fingerprint": ds.get("fingerprint"),
                              "steps": [st["step"] for st in ds.get("steps", [])]}
    return lineage


def write_run_manifest(run_dir: Path, recipe: Recipe, model: dict[str, Any], data: dict[str, Any],
                       timings: dict[str, float], **fields: Any) -> None:
    """``manifest.json`` with the seed, the method, the timings and the model and data entries, plus ``fields``."""
    from tunelab.training.rundir import write_manifest

    write_manifest(run_dir, seed=recipe.train.seed, method=recipe.method.name, timings=timings, model=model,
                   data=data, **fields)
