"""DeepSpeed ZeRO data-parallel training (``train.sharding: deepspeed`` with ``--nproc N > 1``).

The SFT/pretrain loop (tunelab.recipes.sft) runs through a DeepSpeed engine: ZeRO stage 1 partitions the optimizer
state (AdamW moments and, with bf16, the fp32 master weights) over the N processes, stage 2 also the gradients,
stage 3 also the weights, which are gathered module by module while they run. tunelab keeps its own data order,
loss, learning-rate schedule, evaluation and run folder; DeepSpeed owns the partitioning, the gradient reduction,
clipping and the optimizer step.

Update semantics are those of the replicated path (tunelab.training.distributed): each micro-batch's summed token
loss is divided by the global count of loss tokens of the step and the gradients must be **summed** over ranks.
DeepSpeed averages them over the data-parallel ranks, so `ZeroEngine.backward` multiplies the loss by the number
of processes (and passes ``scale_wrt_gas=False``: the loss is already normalised over the whole step, so
DeepSpeed's division by the accumulation steps is not wanted). N processes with accumulation A then give the
update of one process with accumulation N·A (tested against one process, rtol 1e-4). The accumulation boundary
is set explicitly on the last pass of each step, so a short last step of an epoch needs no special case; every
backward of ZeRO-2/3 is a collective, so a rank with fewer micro-batches runs zero-weighted copies
(tunelab.training.fsdp.balanced_passes). The schedule is ours: its ``step()`` follows DeepSpeed's optimizer step.

Checkpoints are DeepSpeed's own (``engine.save_checkpoint``: each rank writes its optimizer partition) inside
tunelab's checkpoint folder, next to tunelab's RNG, data position, counters and schedule; the folder is written
under a temporary name, hashed and renamed (tunelab.training.checkpoint.commit_checkpoint). The run's artefact is
gathered into the same ``model/`` or ``adapter/`` files a single process writes.
"""

from __future__ import annotations

import importlib.util
import json
import os
import shutil
from collections.abc import Callable
from contextlib import nullcontext
from pathlib import Path
from typing import Any

import torch
from torch import nn

from tunelab.config.specs import Recipe, TrainSpec
from tunelab.errors import TunelabError
from tunelab.training import checkpoint as ckpt
from tunelab.util.console import console

__all__ = ["DEEPSPEED_METHODS", "DEEPSPEED_OPTIMIZERS", "INSTALL", "EngineRoot", "ZeroEngine", "build_config", "check_launch",
           "initialize", "preflight"]

INSTALL = "pip install 'tunelab[deepspeed]'  (or: pip install 'deepspeed>=0.19,<0.20')"
TAG = "deepspeed"  # the engine's sub-folder inside a tunelab checkpoint folder
# Methods tested under each ZeRO stage (tests/unit/test_deepspeed.py and by hand, docs/training.md). Stages 1-2
# keep whole weights on every rank, so any method whose weights are ordinary parameters works. Stage 3 leaves
# empty placeholders in the modules: PEFT's prompt-learning methods save their virtual-token tables by reading
# those weights directly; bottleneck has not been tried. qlora: bitsandbytes 4-bit tensors are not partitionable.
DEEPSPEED_METHODS = {1: ("full", "freeze", "lora", "ia3", "bottleneck", "prefix", "prompt", "ptuning"),
                     2: ("full", "freeze", "lora", "ia3", "bottleneck", "prefix", "prompt", "ptuning"),
                     3: ("full", "freeze", "lora", "ia3")}
# ZeRO steps the client optimizer on flat partitions of the parameters: an element-wise optimizer gives the
# same update there as on the whole tensors. Adafactor factors its second moment over whole rows and columns;
# 8-bit AdamW keeps bitsandbytes state that DeepSpeed does not partition.
DEEPSPEED_OPTIMIZERS = ("adamw", "sgd")
# Config keys that must not come from the user's file at all: tunelab passes its own optimizer and schedule
# (built from train.*), and loss scaling would change the update.
_FORBIDDEN = {"optimizer": "train.optimizer", "scheduler": "train.scheduler", "fp16": "model.precision",
              "amp": "model.precision"}


# ------------------------------------------------------------------------------------------------ preflight


def preflight(recipe: Recipe, world: int | None = None) -> None:
    """Refuse DeepSpeed settings that cannot work, before a run folder exists or weights load.

    (Options set without ``train.sharding: deepspeed`` and objectives other than sft/pretrain are refused when the
    recipe loads: TrainSpec.)

    Args:
        recipe: the run's recipe.
        world: processes of the run when known (the launcher's ``--nproc``; under torchrun ``WORLD_SIZE``), to
            check a ``train_batch_size`` in ``train.deepspeed_config``.

    Raises:
        TunelabError: naming the conflicting keys.
    """
    t, m = recipe.train, recipe.method
    if t.sharding != "deepspeed":
        return
    if importlib.util.find_spec("deepspeed") is None:
        raise TunelabError("train.sharding=deepspeed needs the deepspeed package, which is not installed",
                           where="train.sharding", fix=INSTALL)
    methods = DEEPSPEED_METHODS[t.deepspeed_zero_stage]
    if m.name not in methods:
        raise TunelabError(f"train.sharding=deepspeed with train.deepspeed_zero_stage={t.deepspeed_zero_stage} "
                           f"does not support method.name={m.name}",
                           where="train.deepspeed_zero_stage, method.name",
                           fix=f"use a method of: {', '.join(methods)}, another ZeRO stage, or train.sharding=none")
    if t.optimizer not in DEEPSPEED_OPTIMIZERS:
        raise TunelabError(f"train.sharding=deepspeed does not support train.optimizer={t.optimizer} (ZeRO steps "
                           "the optimizer on flat partitions, where only an element-wise update is the same)",
                           where="train.sharding, train.optimizer", fix="use train.optimizer=adamw or sgd")
    _check_offload(recipe)
    if world is None and int(os.environ.get("WORLD_SIZE", "1")) > 1:
        world = int(os.environ["WORLD_SIZE"])
    build_config(recipe, _device(recipe), world)  # the user's file: readable, and no conflicting key


def _device(recipe: Recipe) -> str:
    from tunelab.models import resolve_device

    return resolve_device(recipe.model.device)


def _check_offload(recipe: Recipe) -> None:
    t = recipe.train
    if t.deepspeed_offload_params and t.deepspeed_zero_stage != 3:
        raise TunelabError("train.deepspeed_offload_params offloads weight partitions, which only ZeRO stage 3 has",
                           where="train.deepspeed_offload_params, train.deepspeed_zero_stage",
                           fix="set train.deepspeed_zero_stage=3, or remove train.deepspeed_offload_params")
    for key in ("deepspeed_offload_optimizer", "deepspeed_offload_params"):
        if getattr(t, key) and _device(recipe) != "cuda":
            raise TunelabError(f"train.{key} moves partitions from the GPU to CPU memory; this run is on the CPU, "
                               "where they already are", where=f"train.{key}, model.device",
                               fix=f"remove train.{key} (or run on a CUDA GPU)")


def check_launch(recipe: Recipe, nproc: int) -> None:
    """The launcher's check before it starts ``nproc`` processes (one line and exit 2, not N failing workers).

    Raises:
        TunelabError: DeepSpeed with one process (ZeRO partitions over processes: with one there is nothing to
            partition, and offloading alone is not built), or what `preflight` refuses.
    """
    if recipe.train.sharding != "deepspeed":
        return
    if nproc < 2:
        raise TunelabError("train.sharding=deepspeed partitions training state over processes; with one process "
                           "there is nothing to partition", where="--nproc, train.sharding",
                           fix="add --nproc 2 (or more), or use train.sharding=none")
    preflight(recipe, world=nproc)


# ------------------------------------------------------------------------------------------------ config


def _generated(t: TrainSpec, device: str, precision: str, world: int | None) -> dict[str, Any]:
    zero: dict[str, Any] = {"stage": t.deepspeed_zero_stage}
    if t.deepspeed_offload_optimizer:
        zero["offload_optimizer"] = {"device": "cpu", "pin_memory": True}
    if t.deepspeed_offload_params:
        zero["offload_param"] = {"device": "cpu", "pin_memory": True}
    config: dict[str, Any] = {
        "train_micro_batch_size_per_gpu": t.batch_size,
        "gradient_accumulation_steps": t.grad_accum,
        "gradient_clipping": t.max_grad_norm or 0.0,
        "zero_optimization": zero,
        # bf16 weights with fp32 master copies in the optimizer, on CUDA. On CPU the weights stay fp32 and the
        # recipe's bf16 autocast applies, as in the replicated path.
        "bf16": {"enabled": device.startswith("cuda") and precision == "bf16"},
        "zero_allow_untested_optimizer": True,  # SGD: element-wise, so exact on partitions (see above)
        "steps_per_print": 2**31 - 1,  # tunelab's progress bar and metrics.jsonl report the steps
        "wall_clock_breakdown": False,
    }
    if world is not None:
        config["train_batch_size"] = t.batch_size * t.grad_accum * world
    return config


# (dotted key in the DeepSpeed config, recipe key that sets it)
_OWNED = (("train_batch_size", "train.batch_size x train.grad_accum x --nproc"),
          ("train_micro_batch_size_per_gpu", "train.batch_size"),
          ("gradient_accumulation_steps", "train.grad_accum"),
          ("gradient_clipping", "train.max_grad_norm"),
          ("zero_optimization.stage", "train.deepspeed_zero_stage"),
          ("zero_optimization.offload_optimizer.device", "train.deepspeed_offload_optimizer"),
          ("zero_optimization.offload_param.device", "train.deepspeed_offload_params"),
          ("bf16.enabled", "model.precision"),
          ("bfloat16.enabled", "model.precision"))


def _lookup(d: dict[str, Any], dotted: str) -> tuple[bool, Any]:
    for part in dotted.split("."):
        if not isinstance(d, dict) or part not in d:
            return False, None
        d = d[part]
    return True, d


def _read_user_config(path: str) -> dict[str, Any]:
    p = Path(path)
    if not p.is_file():
        raise TunelabError(f"DeepSpeed config file not found: {path}", where="train.deepspeed_config",
                           fix="pass the path of a JSON file, or remove train.deepspeed_config")
    try:
        data = json.loads(p.read_text(encoding="utf-8"))
    except json.JSONDecodeError as e:
        raise TunelabError(f"the DeepSpeed config is not valid JSON ({e.msg})", where=f"{path}:{e.lineno}",
                           fix="fix the JSON syntax") from None
    if not isinstance(data, dict):
        raise TunelabError("the DeepSpeed config must be a JSON object", where=path,
                           fix='write it as {"zero_optimization": {...}, ...}')
    return data


def _check_user_keys(user: dict[str, Any], ours: dict[str, Any], path: str) -> None:
    for key, recipe_key in _FORBIDDEN.items():
        if key in user and (key not in ("fp16", "amp") or _lookup(user, f"{key}.enabled")[1]):
            raise TunelabError(f"the DeepSpeed config sets '{key}', which tunelab sets from {recipe_key}",
                               where=f"{path}: {key}", fix=f"remove '{key}' from {path} and use {recipe_key}")
    for key, recipe_key in _OWNED:
        present, theirs = _lookup(user, key)
        if not present:
            continue
        known, mine = _lookup(ours, key.replace("bfloat16.", "bf16."))
        if not known and key == "train_batch_size":
            continue  # the process count is not known yet; DeepSpeed checks it when the workers start
        if theirs != mine:
            raise TunelabError(f"the DeepSpeed config sets {key}={json.dumps(theirs)}, but the recipe gives "
                               f"{json.dumps(mine)} (from {recipe_key})", where=f"{path}: {key}",
                               fix=f"remove {key} from {path} and set {recipe_key} in the recipe")


def _merge(ours: dict[str, Any], user: dict[str, Any]) -> dict[str, Any]:
    out = dict(ours)
    for key, value in user.items():
        out[key] = _merge(out[key], value) if isinstance(value, dict) and isinstance(out.get(key), dict) else value
    return out


def build_config(recipe: Recipe, device: str, world: int | None, precision: str | None = None) -> dict[str, Any]:
    """The DeepSpeed config of the run: generated from ``train.*``, with ``train.deepspeed_config`` merged over it.

    Args:
        recipe: the run's recipe.
        device: 'cpu' or 'cuda[:i]'.
        world: number of processes (None when not known yet: ``train_batch_size`` is then left out).
        precision: the resolved precision ('bf16'/'fp32'; None resolves ``model.precision`` for ``device``).

    Raises:
        TunelabError: the user's file is missing or not a JSON object, or sets a key tunelab owns to another
            value (naming the key and the recipe key to set instead).
    """
    from tunelab.models import resolve_precision

    precision = precision or resolve_precision(recipe.model.precision, device.split(":")[0])
    ours = _generated(recipe.train, device, precision, world)
    path = recipe.train.deepspeed_config
    if path is None:
        return ours
    user = _read_user_config(path)
    _check_user_keys(user, ours, path)
    return _merge(ours, user)


# ------------------------------------------------------------------------------------------------ engine


def _import_deepspeed(device: str) -> Any:
    # Name the accelerator instead of letting DeepSpeed probe for one (and warn when it finds none).
    os.environ.setdefault("DS_ACCELERATOR", "cuda" if device.startswith("cuda") else "cpu")
    try:
        import deepspeed
    except ImportError as e:
        raise TunelabError("train.sharding=deepspeed needs the deepspeed package", where="train.sharding",
                           fix=INSTALL) from e
    import logging

    deepspeed.utils.logger.setLevel(logging.WARNING)  # its per-step INFO lines would bury the progress bar
    return deepspeed


class EngineRoot(nn.Module):
    """The module DeepSpeed wraps: ``root(fn, *args)`` runs ``fn(model, *args)`` and returns its result in a 1-tuple.

    Every use of the model goes through the engine's forward (and so through ZeRO-3's hooks around the root). The
    tuple is for those hooks: they read a module's output as a tensor, a sequence, a dict or an object's
    attributes, and a float (the validation loss) or a list of strings (generated answers) is none of these.
    """

    def __init__(self, model: nn.Module):
        super().__init__()
        self.model = model

    def forward(self, fn: Callable[..., Any], *args: Any, **kwargs: Any) -> tuple[Any]:
        return (fn(self.model, *args, **kwargs),)


def initialize(model: nn.Module, optimizer: torch.optim.Optimizer, recipe: Recipe, device: str, precision: str,
               world: int, rank: int) -> ZeroEngine:
    """Wrap ``model`` (its trainable parameters in ``optimizer``) in a DeepSpeed engine; collective.

    Build the optimizer and our schedule first: ZeRO takes over the optimizer's parameter groups (flat partitions)
    and the schedule keeps setting their learning rate.
    """
    deepspeed = _import_deepspeed(device)
    config = build_config(recipe, device, world, precision)
    engine, *_ = deepspeed.initialize(model=EngineRoot(model), optimizer=optimizer, config=config,
                                      dist_init_required=False)
    stage = recipe.train.deepspeed_zero_stage
    held = {1: "optimizer state", 2: "optimizer state and gradients", 3: "optimizer state, gradients and weights"}
    console.print(f"DeepSpeed ZeRO-{stage}: {held[stage]} partitioned over {world} processes")
    return ZeroEngine(engine, model, recipe.train, world, rank)


class ZeroEngine:
    """A DeepSpeed engine with tunelab's loss scaling, artefact gathering and checkpoint folders.

    Calling it, ``zero_engine(fn, *args)``, runs ``fn(model, *args)`` through the engine's forward (`EngineRoot`),
    so that ZeRO-3 gathers each module's weights around its use (training loss, validation, generation).
    """

    def __init__(self, engine: Any, model: nn.Module, train: TrainSpec, world: int, rank: int):
        self.engine, self.model, self.train = engine, model, train
        self.world, self.rank, self.stage = world, rank, train.deepspeed_zero_stage

    def __call__(self, fn: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
        return self.engine(fn, *args, **kwargs)[0]

    # ---- one optimizer step ------------------------------------------------------------------------
    def set_boundary(self, last: bool) -> None:
        """Mark the pass about to run as the last of its step (DeepSpeed then reduces and steps after it)."""
        self.engine.set_gradient_accumulation_boundary(last)

    def backward(self, loss: torch.Tensor) -> None:
        """Backward of a loss already normalised over the whole step; gradients end up summed over ranks.

        DeepSpeed averages gradients over the data-parallel ranks: multiplying by the number of processes undoes
        that exactly (a power of two is exact in floating point, others within one rounding).
        """
        self.engine.backward(loss * self.world, scale_wrt_gas=False)

    def step(self) -> float | None:
        """Clip (global norm) and take the optimizer step; returns the pre-clipping global norm when clipping."""
        self.engine.step()
        if not self.train.max_grad_norm:
            return None
        norm = self.engine.get_global_grad_norm()
        return None if norm is None else float(norm)

    # ---- whole weights -----------------------------------------------------------------------------
    def whole(self, params: list[nn.Parameter], modifier_rank: int | None = None):
        """A context in which ``params`` hold whole tensors (ZeRO-3 gathers them; a no-op for stages 1-2).

        Args:
            params: the parameters to gather.
            modifier_rank: the rank whose changes to them are kept on exit (None: read only).
        """
        if self.stage != 3:
            return nullcontext()
        import deepspeed

        return deepspeed.zero.GatheredParameters(params, modifier_rank=modifier_rank)

    def artifact_state_dict(self, trainable_only: bool) -> dict[str, torch.Tensor]:
        """The model's state dict with whole tensors, on CPU, on rank 0 (empty elsewhere); collective.

        Keys are the model's own, tied weights stored once (as a single process saves them). Under ZeRO-3 one
        parameter is gathered at a time, so no rank ever holds more than the result.
        """
        params = dict(self.model.named_parameters())
        tied = {n for n, _ in self.model.named_parameters(remove_duplicate=False)} - set(params)
        keys = [k for k in self.model.state_dict() if k not in tied]
        if trainable_only:
            keys = [k for k in keys if k in params and params[k].requires_grad]
        buffers = dict(self.model.named_buffers())
        out: dict[str, torch.Tensor] = {}
        for key in keys:
            if key in params:
                with self.whole([params[key]]):
                    if self.rank == 0:
                        out[key] = params[key].detach().cpu().clone()
            elif self.rank == 0 and key in buffers:
                out[key] = buffers[key].detach().cpu().clone()
        return out

    # ---- checkpoints -------------------------------------------------------------------------------
    def save_checkpoint(self, root: Path, step: int, scheduler: Any, state: dict[str, Any],
                        best: dict[str, torch.Tensor] | None, barrier: Callable[[], None]) -> Path | None:
        """Write checkpoint ``step`` under ``root``: DeepSpeed's files (every rank its partition) + ours; collective.

        Every rank writes into one temporary folder; rank 0 then adds the RNG states, the best weights and
        ``state.json`` (with the hash of every file) and renames the folder into place. Returns its path on
        rank 0, None elsewhere.
        """
        final = root / f"step-{step:06d}"
        tmp = root / f".tmp-step-{step:06d}-{TAG}"
        if self.rank == 0:
            shutil.rmtree(tmp, ignore_errors=True)
            tmp.mkdir(parents=True)
        barrier()
        # Frozen weights are not saved: a resumed run loads the base model again (LoRA checkpoints stay small).
        self.engine.save_checkpoint(str(tmp), tag=TAG, save_latest=False, exclude_frozen_parameters=True)
        barrier()  # every partition is on disk before rank 0 hashes the folder
        path = None
        if self.rank == 0:
            if best is not None:
                from safetensors.torch import save_file

                save_file({k: v.detach().contiguous().cpu() for k, v in best.items()}, str(tmp / "best.safetensors"))
            meta = {**state, "step": step, "processes": self.world, "engine": TAG}
            path = ckpt.commit_checkpoint(tmp, final, meta, scheduler)
        barrier()
        return path

    def load_checkpoint(self, found: ckpt.Checkpoint, scheduler: Any) -> dict[str, torch.Tensor] | None:
        """Restore weights and optimizer partitions (DeepSpeed), our schedule and RNG; returns the best weights.

        Raises:
            TunelabError: the checkpoint is not a DeepSpeed one, or was written by another number of processes
                (each rank reads the optimizer partition of its own rank).
        """
        saved = found.state.get("processes")
        if found.state.get("engine") != TAG:
            raise TunelabError(f"checkpoint {found.path} was not written by a train.sharding=deepspeed run",
                               where="train.resume", fix="resume with the recipe the run started with")
        if saved != self.world:
            raise TunelabError(f"checkpoint {found.path} holds ZeRO partitions of {saved} processes; this run has "
                               f"{self.world}", where="--nproc", fix=f"resume with --nproc {saved}")
        # DeepSpeed's files are torch pickles: load only what this run folder's state.json hashes vouch for
        # (find_resumable checked every file against them).
        loaded, _ = self.engine.load_checkpoint(str(found.path), tag=TAG, load_module_strict=False,
                                                load_optimizer_states=True, load_lr_scheduler_states=False)
        if loaded is None:
            raise TunelabError(f"DeepSpeed could not load checkpoint {found.path}", where="train.resume",
                               fix="resume from an earlier checkpoint (delete this one) or start a new run")
        scheduler.load_state_dict(found.state["scheduler"])
        ckpt.load_rng(found)
        best = found.path / "best.safetensors"
        if not best.is_file():
            return None
        from safetensors.torch import load_file

        return load_file(str(best))

    def close(self) -> None:
        """Remove the engine's hooks and buffers (the model object outlives it in the recipe)."""
        self.engine.destroy()

