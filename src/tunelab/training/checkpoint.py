"""Exact-resume checkpoints: trainable weights, optimizer, scheduler, RNG states and the data position.

A checkpoint is a folder ``checkpoints/step-000050/`` written as ``.tmp-step-000050`` and renamed into place,
so a crash (SIGKILL included) never leaves a half-written checkpoint under a real name. Tensors go to
safetensors (never pickle, but for a DeepSpeed engine's own files: see below); everything else to JSON. ``state.json`` is written last and records the SHA-256
of every other file: a checkpoint whose files do not match (partial copy, disk corruption) is skipped with a
warning and the previous good one is used.

Layout::

    weights.safetensors     trainable parameters by name (all parameters for full fine-tuning)
    optimizer.safetensors   optimizer state tensors, keys "<param index>.<name>"
    best.safetensors        best-so-far trainable weights (only with early stopping)
    deepspeed/              train.sharding=deepspeed instead of weights/optimizer: the engine's own files (each
                            rank's optimizer partition; torch pickles, loaded only when their hashes match)
    rng.safetensors         torch CPU (and CUDA) generator states
    state.json              step, epoch, position in the epoch, counters, optimizer param groups and scalar
                            state, scheduler state, python/numpy RNG, config fingerprint, file hashes
"""

from __future__ import annotations

import hashlib
import json
import os
import random
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors.torch import load_file, save_file

from tunelab.errors import TunelabError
from tunelab.util.console import console
from tunelab.util.io import sha256_file

__all__ = ["Checkpoint", "commit_checkpoint", "config_fingerprint", "find_resumable", "load_checkpoint", "load_rng",
           "prune_checkpoints", "save_checkpoint"]

STATE = "state.json"


@dataclass
class Checkpoint:
    path: Path
    state: dict[str, Any]

    @property
    def step(self) -> int:
        return int(self.state["step"])


# ------------------------------------------------------------------------------------------ fingerprints

# Keys that may change between an interrupted run and its resumption without changing the maths.
_RESUME_NEUTRAL = {"output", "eval", "train.resume", "train.save_every", "train.save_total_limit", "train.log_every",
                   "model.threads", "data.on_error"}


def _flatten(d: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    out: dict[str, Any] = {}
    for k, v in d.items():
        key = f"{prefix}{k}"
        if key in _RESUME_NEUTRAL:
            continue
        if isinstance(v, dict):
            out.update(_flatten(v, key + "."))
        else:
            out[key] = v
    return out


def config_fingerprint(recipe_dict: dict[str, Any]) -> dict[str, Any]:
    """The recipe keys that decide the training trajectory (flattened), for resume compatibility checks."""
    return _flatten(recipe_dict)


def _diff(saved: dict[str, Any], now: dict[str, Any]) -> list[str]:
    keys = sorted(set(saved) | set(now))
    return [f"{k}: {saved.get(k)!r} -> {now.get(k)!r}" for k in keys if saved.get(k) != now.get(k)]


# ----------------------------------------------------------------------------------------------- save


def _optimizer_tensors(optimizer: torch.optim.Optimizer | dict[str, Any]
                       ) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """Split the optimizer state into tensors (safetensors) and JSON-able scalars.

    ``optimizer`` may be a state dict already (a sharded run gathers whole tensors first: tunelab.training.fsdp).
    """
    sd = optimizer if isinstance(optimizer, dict) else optimizer.state_dict()
    tensors: dict[str, torch.Tensor] = {}
    scalars: dict[str, dict[str, Any]] = {}
    for idx, st in sd["state"].items():
        for name, value in st.items():
            if torch.is_tensor(value):
                tensors[f"{idx}.{name}"] = value.detach().contiguous().cpu()
            else:
                scalars.setdefault(str(idx), {})[name] = value
    return tensors, {"param_groups": sd["param_groups"], "scalars": scalars}


def _rng_tensors() -> dict[str, torch.Tensor]:
    out = {"torch_cpu": torch.get_rng_state()}
    if torch.cuda.is_available():
        for i, s in enumerate(torch.cuda.get_rng_state_all()):
            out[f"torch_cuda_{i}"] = s
    return out


def _py_rng() -> dict[str, Any]:
    version, internal, gauss = random.getstate()
    np_state = np.random.get_state()
    return {"python": [version, list(internal), gauss],
            "numpy": [np_state[0], np_state[1].tolist(), int(np_state[2]), int(np_state[3]), float(np_state[4])]}


def save_checkpoint(root: Path, *, step: int, trainable: dict[str, torch.Tensor], optimizer, scheduler,
                    state: dict[str, Any], best: dict[str, torch.Tensor] | None = None) -> Path:
    """Write checkpoint `step` under `root` atomically (temp folder + rename); returns its path."""
    root.mkdir(parents=True, exist_ok=True)
    final = root / f"step-{step:06d}"
    tmp = root / f".tmp-step-{step:06d}-{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir()
    save_file({k: v.detach().contiguous().cpu() for k, v in trainable.items()}, str(tmp / "weights.safetensors"))
    opt_tensors, opt_rest = _optimizer_tensors(optimizer)
    save_file(opt_tensors, str(tmp / "optimizer.safetensors"))
    if best is not None:
        save_file({k: v.detach().contiguous().cpu() for k, v in best.items()}, str(tmp / "best.safetensors"))
    return commit_checkpoint(tmp, final, {**state, "step": step, "optimizer": opt_rest}, scheduler)


def commit_checkpoint(tmp: Path, final: Path, state: dict[str, Any], scheduler) -> Path:
    """Finish a checkpoint written under ``tmp`` and rename it to ``final``; returns ``final``.

    Adds the RNG states, then ``state.json`` last (``state`` + scheduler state + python/numpy RNG + the SHA-256
    of every file under ``tmp``, sub-folders included: a DeepSpeed run keeps the engine's files in one), fsyncs
    and renames. Used by `save_checkpoint` and by tunelab.training.deepspeed.
    """
    save_file(_rng_tensors(), str(tmp / "rng.safetensors"))
    files = {p.relative_to(tmp).as_posix(): sha256_file(p) for p in sorted(tmp.rglob("*")) if p.is_file()}
    full = {**state, "scheduler": scheduler.state_dict(), "rng": _py_rng(), "files": files}
    (tmp / STATE).write_text(json.dumps(full), encoding="utf-8")
    for folder in [tmp, *sorted(p for p in tmp.rglob("*") if p.is_dir())]:
        _fsync_dir(folder)
    if final.exists():  # a checkpoint of the same step from an earlier attempt: replace it
        shutil.rmtree(final)
    os.replace(tmp, final)
    _fsync_dir(final.parent)
    return final


def _fsync_dir(path: Path) -> None:
    for p in path.iterdir() if path.is_dir() else []:
        if p.is_file():
            with open(p, "rb") as f:
                os.fsync(f.fileno())
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


# ------------------------------------------------------------------------------------------- discover


def _verify(path: Path) -> dict[str, Any] | str:
    """The checkpoint's state, or why it cannot be used."""
    state_file = path / STATE
    if not state_file.is_file():
        return "state.json is missing (interrupted write)"
    try:
        state = json.loads(state_file.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        return f"state.json is unreadable ({e})"
    for name, digest in state.get("files", {}).items():
        f = path / name
        if not f.is_file():
            return f"{name} is missing"
        if sha256_file(f) != digest:
            return f"{name} does not match its recorded hash"
    return state


def list_checkpoints(root: Path) -> list[Path]:
    if not root.is_dir():
        return []
    return sorted(p for p in root.iterdir() if p.is_dir() and p.name.startswith("step-"))


def find_resumable(root: Path) -> Checkpoint | None:
    """The newest intact checkpoint under `root`; damaged newer ones are reported and skipped."""
    for path in reversed(list_checkpoints(root)):
        state = _verify(path)
        if isinstance(state, str):
            console.print(f"[yellow]warning:[/] skipping damaged checkpoint {path}: {state}")
            continue
        return Checkpoint(path, state)
    return None


def check_compatible(ckpt: Checkpoint, fingerprint: dict[str, Any]) -> None:
    """Refuse to resume a checkpoint written under a different recipe (names the differing keys)."""
    diffs = _diff(ckpt.state.get("config", {}), fingerprint)
    if diffs:
        shown = "; ".join(diffs[:6]) + (f"; and {len(diffs) - 6} more" if len(diffs) > 6 else "")
        raise TunelabError(f"checkpoint {ckpt.path} was written with a different recipe ({shown})",
                           where="train.resume",
                           fix="resume with the recipe the run started with (its config.yaml), or start a new run")


# ---------------------------------------------------------------------------------------------- load


def load_checkpoint(ckpt: Checkpoint, model: torch.nn.Module, optimizer, scheduler, place=None
                    ) -> dict[str, torch.Tensor] | None:
    """Restore weights, optimizer, scheduler and RNG states in place; returns the best weights if saved.

    ``place(param, whole)`` lays a saved whole tensor out like its parameter (a sharded run takes its own
    shard: tunelab.training.fsdp.place_like); None copies as is.
    """
    params = {n: p for n, p in model.named_parameters() if p.requires_grad}
    weights = load_file(str(ckpt.path / "weights.safetensors"))
    missing = set(params) - set(weights)
    if missing:
        raise TunelabError(f"checkpoint {ckpt.path} lacks {len(missing)} trainable tensors "
                           f"(e.g. {sorted(missing)[0]})", where="train.resume",
                           fix="resume with the method and model the run started with")
    with torch.no_grad():
        for name, p in params.items():
            p.copy_(place(p, weights[name]) if place else weights[name])
    _load_optimizer(ckpt, optimizer, place)
    scheduler.load_state_dict(ckpt.state["scheduler"])
    load_rng(ckpt)
    best = ckpt.path / "best.safetensors"
    return load_file(str(best)) if best.is_file() else None


def _load_optimizer(ckpt: Checkpoint, optimizer, place=None) -> None:
    tensors = load_file(str(ckpt.path / "optimizer.safetensors"))
    rest = ckpt.state["optimizer"]
    state: dict[int, dict[str, Any]] = {}
    for key, value in tensors.items():
        idx, name = key.split(".", 1)
        state.setdefault(int(idx), {})[name] = value
    if place is not None:  # state of parameter i (in param-group order) laid out like that parameter
        params = [p for group in optimizer.param_groups for p in group["params"]]
        state = {i: {k: place(params[i], v) for k, v in st.items()} for i, st in state.items()}
    for idx, scalars in rest["scalars"].items():
        state.setdefault(int(idx), {}).update(scalars)
    optimizer.load_state_dict({"state": state, "param_groups": rest["param_groups"]})


def load_rng(ckpt: Checkpoint) -> None:
    """Restore the torch (CPU, CUDA), python and numpy RNG states saved in ``ckpt``."""
    rng = load_file(str(ckpt.path / "rng.safetensors"))
    torch.set_rng_state(rng["torch_cpu"])
    if torch.cuda.is_available():
        cuda = [rng[k] for k in sorted(rng) if k.startswith("torch_cuda_")]
        if cuda:
            torch.cuda.set_rng_state_all(cuda)
    py = ckpt.state["rng"]["python"]
    random.setstate((py[0], tuple(py[1]), py[2]))
    npy = ckpt.state["rng"]["numpy"]
    np.random.set_state((npy[0], np.array(npy[1], dtype=np.uint32), npy[2], npy[3], npy[4]))


# ------------------------------------------------------------------------------------------ retention


def prune_checkpoints(root: Path, keep_last: int | None, keep_step: int | None = None) -> list[Path]:
    """Delete all but the newest `keep_last` checkpoints (and the one at `keep_step`, the best); returns removed."""
    if keep_last is None:
        return []
    ckpts = list_checkpoints(root)
    keep = set(ckpts[-keep_last:]) if keep_last > 0 else set()
    if keep_step is not None:
        keep |= {p for p in ckpts if p.name == f"step-{keep_step:06d}"}
    removed = [p for p in ckpts if p not in keep]
    for p in removed:
        shutil.rmtree(p, ignore_errors=True)
    for stale in root.glob(".tmp-step-*"):  # leftovers of a write killed mid-way
        shutil.rmtree(stale, ignore_errors=True)
    return removed


def digest_config(fingerprint: dict[str, Any]) -> str:
    return hashlib.sha256(json.dumps(fingerprint, sort_keys=True, default=str).encode()).hexdigest()[:16]
