"""Instruction SFT: assistant-only loss, any method, gradient accumulation, warmup + schedule, periodic
validation with early stopping on any metric, exact-resume checkpoints (SIGINT/SIGTERM save one), data-parallel
training over torch.distributed (replicated, sharded with FSDP: tunelab.training.fsdp, or partitioned with DeepSpeed
ZeRO: tunelab.training.deepspeed), metrics.jsonl, and a self-describing run folder."""

from __future__ import annotations

import contextlib
import math
import signal
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from tunelab.config.specs import Recipe
from tunelab.errors import TunelabError
from tunelab.methods import apply_method, count_parameters, estimate_training_memory_mb
from tunelab.models import autocast
from tunelab.recipes.common import (
    data_lineage,
    model_identity,
    optimizer_steps,
    peak_rss_mb,
    prepare_training,
    restore_best,
    save_run_files,
    set_seed,
    start_run,
    steps_per_epoch,
    track_best,
    write_run_manifest,
)
from tunelab.training import checkpoint as ckpt
from tunelab.training import deepspeed as zero
from tunelab.training import fsdp
from tunelab.training.batching import collate, plan_batches
from tunelab.training.distributed import DistContext
from tunelab.training.loss import mean_nll, supervised_nll
from tunelab.training.progress import TrainProgress
from tunelab.training.rundir import MetricsLog
from tunelab.util.console import console

# set_seed and peak_rss_mb live in tunelab.recipes.common; they stay importable from here.
__all__ = ["SFTRecipe", "TrainingInterrupted", "peak_rss_mb", "set_seed"]


class TrainingInterrupted(TunelabError):
    """SIGINT/SIGTERM arrived: a checkpoint was saved; the CLI exits with 128 + signal number."""

    def __init__(self, signum: int, checkpoint: Path | None):
        self.signum = signum
        where = f"checkpoint {checkpoint}" if checkpoint else "no checkpoint (not the main process)"
        super().__init__(f"training interrupted by {signal.Signals(signum).name}; saved {where}",
                         fix="continue with: tunelab train RECIPE --resume")


@dataclass
class _State:
    step: int = 0
    epoch: int = 0
    step_in_epoch: int = 0  # optimizer steps already taken in `epoch` (the data position for resume)
    tokens: int = 0  # real (non-padding) tokens processed (all ranks)
    loss_tokens: int = 0
    train_time: float = 0.0
    best_val: float = math.inf  # best value of the early-stopping metric, oriented so that lower is better
    best_step: int = 0
    bad_evals: int = 0
    best_weights: dict[str, torch.Tensor] | None = field(default=None, repr=False)
    stopped_early: bool = False
    resumed_from: int | None = None

    def counters(self) -> dict[str, Any]:
        return {"epoch": self.epoch, "step_in_epoch": self.step_in_epoch, "tokens": self.tokens,
                "loss_tokens": self.loss_tokens, "train_time": self.train_time,
                "best_val": None if math.isinf(self.best_val) else self.best_val, "best_step": self.best_step,
                "bad_evals": self.bad_evals}

    def restore(self, saved: dict[str, Any]) -> None:
        for k in ("epoch", "step_in_epoch", "tokens", "loss_tokens", "train_time", "best_step", "bad_evals"):
            setattr(self, k, saved[k])
        self.best_val = math.inf if saved["best_val"] is None else saved["best_val"]
        self.step = saved["step"]
        self.resumed_from = saved["step"]


_LOSS_METRICS = {"val_loss", "val_ppl"}


class SFTRecipe:
    """setup → train → save → cleanup, composed from leaf helpers (no hooks to override)."""

    def __init__(self, recipe: Recipe, run_dir: Path, dist: DistContext | None = None, resume: bool = False):
        self.recipe, self.run_dir = recipe, run_dir
        self.dist = dist or DistContext()
        self.resume = resume or recipe.train.resume == "auto"
        self.state = _State()
        self.metrics = MetricsLog(run_dir / "metrics.jsonl", enabled=self.dist.is_main)
        self.ckpt_root = run_dir / "checkpoints"
        self._signal: int | None = None
        self.engine: zero.ZeroEngine | None = None  # train.sharding=deepspeed with several processes

    # ---- setup -------------------------------------------------------------------------------------
    def setup(self) -> None:
        from tunelab.data import prepare_data

        r = self.recipe
        self.device, self.precision, self.resolved, self.tokenizer = start_run(r, self.dist)
        if not self.dist.is_main:  # rank 0 tokenizes and fills the cache first; the others read it
            self.dist.barrier()
        self.data = prepare_data(r.data, self.tokenizer)
        if self.dist.is_main:
            self.dist.barrier()
        self.train_rows = self.data.encoded["train"]
        self.val_rows = self.data.encoded.get("validation") or []
        self._check_metric()
        self.model = self._build_model()
        self.total_steps = self._total_steps()
        self.optimizer, self.scheduler = prepare_training(self.model, r, self.total_steps,
                                                          self.run_dir if self.dist.is_main else None)
        self.engine = self._deepspeed()
        self.fingerprint = ckpt.config_fingerprint(r.model_dump(mode="json"))
        if self.resume:
            self._resume()

    def _check_metric(self) -> None:
        t = self.recipe.train
        if t.early_stopping_metric not in _LOSS_METRICS and not self.data.splits.get("validation"):
            raise TunelabError(f"train.early_stopping_metric={t.early_stopping_metric} needs validation rows",
                               where="train.early_stopping_metric",
                               fix="set data.split.validation > 0 or data.validation_path, or use val_loss")

    @staticmethod
    def preflight(recipe: Recipe) -> None:
        """Conflicts between method, model and training settings, before any run folder or heavy work."""
        from tunelab.methods import preflight

        preflight(recipe)
        zero.preflight(recipe)  # train.sharding=deepspeed vs method, optimizer, offload and its config file

    def _build_model(self) -> torch.nn.Module:
        from tunelab.methods import base_dtype, load_base_model

        r = self.recipe
        # A frozen base can live in bf16 (no recasting every step, half the memory); weights that are
        # trained stay fp32 so that small updates are not rounded away (tunelab.methods.base_dtype).
        frozen_bf16 = base_dtype(r.method, self.precision) == torch.bfloat16
        base_bytes = 0.5 if r.method.name == "qlora" else (2 if frozen_bf16 else 4)
        model = load_base_model(r.model, r.method, self.precision, dropout=r.train.dropout)
        if r.train.gradient_checkpointing:
            # Non-reentrant checkpointing works with frozen inputs (LoRA) without enable_input_require_grads.
            if hasattr(model, "activation_checkpointing_enable"):  # transformers >= 5.x name
                model.activation_checkpointing_enable(activation_checkpointing_kwargs={"use_reentrant": False})
            else:
                model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
        model = apply_method(model, r.method).to(self.device)
        model.train()
        self.params = count_parameters(model)
        mem = estimate_training_memory_mb(self.params.total, self.params.trainable, base_bytes)
        world = f" · {self.dist.world} processes" if self.dist.enabled else ""
        console.print(
            f"model [bold]{r.model.name}[/] · method [bold]{r.method.name}[/] · trainable "
            f"{self.params.trainable:,} / {self.params.total:,} ({self.params.percent:.2f}%) · "
            f"{self.device}/{self.precision} · est. memory {mem:,.0f} MB + activations{world}"
        )
        self.est_memory_mb = mem
        self.sharded = self._shard(model)
        self.trainable = [p for p in model.parameters() if p.requires_grad]  # DTensor shards under FSDP
        return model

    def _shard(self, model: torch.nn.Module) -> fsdp.ShardedRoot | None:
        """FSDP root around the model with train.sharding=fsdp and several processes, else None (replicated)."""
        if self.recipe.train.sharding != "fsdp":
            return None
        if not self.dist.enabled:
            console.print("train.sharding=fsdp: one process, nothing to shard (the model stays whole)")
            return None
        console.print(f"FSDP: {len(fsdp.decoder_layers(model))} decoder layers + root sharded over "
                      f"{self.dist.world} processes")
        return fsdp.shard_model(model, self.recipe.train, self.device, self.dist.world)

    def _deepspeed(self) -> zero.ZeroEngine | None:
        """The DeepSpeed engine with train.sharding=deepspeed and several processes, else None (after the optimizer
        and schedule exist: ZeRO takes over the optimizer's parameter groups)."""
        if self.recipe.train.sharding != "deepspeed":
            return None
        if not self.dist.enabled:  # the CLI refuses this; a dry run or a Python caller trains unpartitioned
            console.print("train.sharding=deepspeed: one process, nothing to partition (the model stays whole)")
            return None
        return zero.initialize(self.model, self.optimizer, self.recipe, self.device, self.precision,
                               self.dist.world, self.dist.rank)

    def _call(self, fn, *args, **kwargs):
        """``fn(model, ...)``; through the FSDP root or the DeepSpeed engine when there is one, so that they gather
        the weights around it."""
        runner = self.sharded if self.sharded is not None else self.engine
        if runner is not None:
            return runner(fn, *args, **kwargs)
        return fn(self.model, *args, **kwargs)

    def _steps_per_epoch(self) -> int:
        return steps_per_epoch(self.recipe.train, len(self.train_rows), self._group_size())

    def _group_size(self) -> int:
        """Micro-batches per optimizer step, over all processes."""
        return self.recipe.train.grad_accum * self.dist.world

    def _total_steps(self) -> int:
        return optimizer_steps(self.recipe.train, len(self.train_rows), self._group_size())

    # ---- resume ------------------------------------------------------------------------------------
    def _resume(self) -> None:
        found = ckpt.find_resumable(self.ckpt_root)
        if found is None:
            console.print(f"no checkpoint in {self.ckpt_root}: starting from step 0")
            return
        ckpt.check_compatible(found, self.fingerprint)
        if self.engine is not None:  # DeepSpeed's own files: every rank reads its optimizer partition
            self.state.best_weights = self.engine.load_checkpoint(found, self.scheduler)
        else:
            place = fsdp.place_like if self.sharded is not None else None
            best = ckpt.load_checkpoint(found, self.model, self.optimizer, self.scheduler, place=place)
            self.state.best_weights = fsdp.place_all(best, self.model) if place else best
        self.state.restore(found.state)
        self.metrics.truncate_after(found.step)
        console.print(f"resumed from {found.path} (step {found.step}/{self.total_steps}, epoch {self.state.epoch})")

    def save_checkpoint(self) -> Path | None:
        """Write a resumable checkpoint of the current step (main process writes); prune old ones."""
        s = self.state
        meta = {**s.counters(), "config": self.fingerprint, "total_steps": self.total_steps}
        if self.engine is not None:  # collective: DeepSpeed writes every rank's optimizer partition, then rank 0 ours
            path = self.engine.save_checkpoint(self.ckpt_root, s.step, self.scheduler, meta, s.best_weights,
                                               self.dist.barrier)
        else:
            path = self._save_whole_checkpoint(meta)
        if self.dist.is_main:
            ckpt.prune_checkpoints(self.ckpt_root, self.recipe.train.save_total_limit, s.best_step)
        return path

    def _save_whole_checkpoint(self, meta: dict[str, Any]) -> Path | None:
        """The checkpoint of a replicated or FSDP run: whole tensors, written by the main process."""
        s = self.state
        names = [n for n, p in self.model.named_parameters() if p.requires_grad]
        trainable, optimizer, best = dict(zip(names, self.trainable, strict=True)), self.optimizer, s.best_weights
        if self.sharded is not None:  # collectives on every rank: whole tensors, the same files as one process
            keep = self.dist.is_main
            trainable, optimizer = fsdp.gather_full(trainable, keep), fsdp.gather_optimizer_state(optimizer, keep)
            best = fsdp.gather_full(best, keep) if best is not None else None
        if not self.dist.is_main:
            return None
        return ckpt.save_checkpoint(self.ckpt_root, step=s.step, trainable=trainable, optimizer=optimizer,
                                    scheduler=self.scheduler, state=meta, best=best)

    # ---- data --------------------------------------------------------------------------------------
    def _steps(self):
        """Yield (epoch, step_in_epoch, [this rank's micro-batches]) per optimizer step, from the saved position."""
        t = self.recipe.train
        lengths = [len(row["input_ids"]) for row in self.train_rows]
        epoch, skip, group = self.state.epoch, self.state.step_in_epoch, self._group_size()
        while True:
            plan = plan_batches(lengths, t.batch_size, t.batching, t.seed, epoch, t.curriculum, [r.get("score") for r in self.train_rows])
            for k, i in enumerate(range(0, len(plan), group)):
                if k < skip:
                    continue
                mine = plan[i:i + group][self.dist.rank::self.dist.world]
                yield epoch, k, [self._collate([self.train_rows[j] for j in idx]) for idx in mine]
            epoch, skip = epoch + 1, 0

    def _collate(self, rows: list[dict[str, Any]]) -> dict[str, torch.Tensor]:
        batch = collate(rows, self.recipe.train.batching, self.tokenizer.pad_token_id, self.recipe.data.max_length)
        return {k: v.to(self.device) for k, v in batch.items()}

    # ---- train -------------------------------------------------------------------------------------
    def _train_step(self, micro_batches: list[dict[str, torch.Tensor]]) -> tuple[float, float | None]:
        local = sum(int((mb["labels"][:, 1:] != -100).sum()) for mb in micro_batches)
        n_total = self.dist.sum_int(local)
        loss_sum, tokens = 0.0, 0
        passes = self._passes(micro_batches)
        for i, (mb, weight) in enumerate(passes):
            self._mark_pass(last=i == len(passes) - 1)
            with autocast(self.device.split(":")[0], self.precision):
                loss, _ = self._call(supervised_nll, mb, label_smoothing=self.recipe.train.label_smoothing)
            # Normalise by all loss tokens of the step (all ranks) so accumulation equals one big batch.
            # weight: 0 for a padding pass; multiplying by 1.0 leaves the other numbers bit-identical.
            scaled = loss / max(n_total, 1) * weight
            if self.engine is not None:
                self.engine.backward(scaled)
            else:
                scaled.backward()
            if weight:
                loss_sum += float(loss.detach())
                tokens += int(mb["attention_mask"].sum()) if "attention_mask" in mb else mb["input_ids"].numel()
        if self.sharded is None and self.engine is None:  # FSDP and DeepSpeed reduce the gradients in backward
            self.dist.all_reduce_grads(self.trainable)
        step_loss = self._global_loss(loss_sum) / max(n_total, 1)
        if not math.isfinite(step_loss):
            raise TunelabError(
                f"training diverged: loss is {step_loss} at step {self.state.step + 1}; nothing was saved",
                where="train.lr", fix="lower train.lr, or use model.precision=fp32",
            )
        grad_norm = self._optimizer_step()
        self.state.loss_tokens += n_total
        self.state.tokens += self.dist.sum_int(tokens)
        return step_loss, grad_norm

    def _mark_pass(self, last: bool) -> None:
        """Tell FSDP or DeepSpeed whether the coming forward/backward ends the step (gradients are reduced after
        it: once per step)."""
        if self.sharded is not None:
            self.sharded.set_requires_gradient_sync(last)
        elif self.engine is not None:
            self.engine.set_boundary(last)

    def _optimizer_step(self) -> float | None:
        """Clip to the global norm, step the optimizer and the schedule; returns the norm before clipping."""
        if self.engine is not None:  # DeepSpeed clips and steps the optimizer on its partitions
            grad_norm = self.engine.step()
        else:
            grad_norm = None
            if self.recipe.train.max_grad_norm:
                # The global norm: with FSDP the gradients are DTensor shards and the norm is reduced over ranks.
                grad_norm = fsdp.scalar(torch.nn.utils.clip_grad_norm_(self.trainable,
                                                                       self.recipe.train.max_grad_norm))
            self.optimizer.step()
            self.optimizer.zero_grad(set_to_none=True)
        self.scheduler.step()
        return grad_norm

    def _passes(self, micro_batches: list[dict[str, torch.Tensor]]) -> list[tuple[dict[str, torch.Tensor], float]]:
        """(micro-batch, loss weight) pairs; sharded or partitioned (every pass a collective), every rank runs as
        many passes as the busiest one."""
        if self.sharded is None and self.engine is None:
            return [(mb, 1.0) for mb in micro_batches]
        return fsdp.balanced_passes(micro_batches, self.dist.max_int(len(micro_batches)),
                                    lambda: self._collate(self.train_rows[:1]))

    def _global_loss(self, loss_sum: float) -> float:
        if not self.dist.enabled:
            return loss_sum
        import torch.distributed as tdist

        t = torch.tensor([loss_sum], dtype=torch.float64)
        tdist.all_reduce(t)
        return float(t.item())

    def validation_loss(self) -> float | None:
        return self._call(mean_nll, self.val_rows, self.recipe.eval.batch_size, self.tokenizer.pad_token_id,
                          self.device, self.precision)

    def _task_metric(self, name: str) -> float:
        """A task metric of the validation split, by greedy generation with the model being trained."""
        from tunelab.evaluation.generate import generate_answers
        from tunelab.evaluation.metrics import compute_task_metrics, infer_task

        r = self.recipe
        examples = self.data.splits["validation"][: r.train.eval_samples]
        refs = [ex.reference for ex in examples]
        task = r.eval.task if r.eval.task != "auto" else infer_task(refs)
        was_training = self.model.training
        self.model.eval()
        with autocast(self.device.split(":")[0], self.precision):
            preds = self._call(generate_answers, self.tokenizer, [ex.prompt_messages for ex in examples],
                               r.eval.max_new_tokens, r.eval.batch_size, self.device, label="validate")
        self.model.train(was_training)
        metrics = compute_task_metrics(task, preds, refs, r.eval.labels)
        if name not in metrics or not isinstance(metrics[name], int | float):
            numeric = sorted(k for k, v in metrics.items() if isinstance(v, int | float) and not isinstance(v, bool))
            raise TunelabError(f"train.early_stopping_metric '{name}' is not a metric of this {task} task",
                               where="train.early_stopping_metric", fix=f"use val_loss or one of: {', '.join(numeric)}")
        return float(metrics[name])

    def _metric_value(self) -> tuple[dict[str, float], float | None]:
        """(values to log, the early-stopping metric oriented so that lower is better)."""
        t = self.recipe.train
        val = self.validation_loss()
        if val is None:
            return {}, None
        logged = {"val_loss": round(val, 5), "val_ppl": round(math.exp(min(val, 50)), 4)}
        name = t.early_stopping_metric
        if name not in _LOSS_METRICS:
            logged[f"val_{name}"] = round(self._task_metric(name), 5)
        value = logged[name if name in _LOSS_METRICS else f"val_{name}"]
        higher = t.early_stopping_mode == "max" or (t.early_stopping_mode == "auto" and name not in _LOSS_METRICS)
        return logged, -value if higher else value

    def _evaluate(self) -> bool:
        """Validation + early-stopping bookkeeping; returns True when training should stop."""
        s, t = self.state, self.recipe.train
        logged, score = self._metric_value()
        if score is None:
            return False
        self.metrics.log(step=s.step, epoch=s.epoch, **logged)
        with self._whole_trainable(bool(t.early_stopping_patience)):  # the best weights are kept whole
            return track_best(s, score, self.model, t.early_stopping_patience, min_delta=1e-4)

    def _whole_trainable(self, enabled: bool, modifier_rank: int | None = None):
        """A context in which the trainable parameters hold whole tensors: ZeRO-3 leaves placeholders in the
        modules, so reading or restoring best weights gathers them (rank ``modifier_rank``'s writes are kept)."""
        if self.engine is None or not enabled:
            return contextlib.nullcontext()
        return self.engine.whole([p for p in self.model.parameters() if p.requires_grad], modifier_rank)

    def _on_signal(self, signum, _frame) -> None:
        self._signal = signum  # acted on at the end of the current step (a consistent state to save)

    def train(self) -> dict[str, Any]:
        handlers = {sig: signal.signal(sig, self._on_signal) for sig in (signal.SIGINT, signal.SIGTERM)}
        try:
            return self._train()
        finally:
            for sig, h in handlers.items():
                signal.signal(sig, h)

    def _train(self) -> dict[str, Any]:
        s, t = self.state, self.recipe.train
        if s.step == 0:
            self._evaluate()  # step 0: the base model's validation metric, for the curve
        progress = TrainProgress(self.total_steps)
        t0 = time.perf_counter() - s.train_time
        with progress:
            for epoch, k, micro_batches in self._steps():
                if s.step >= self.total_steps:
                    break
                s.epoch = epoch
                loss, grad_norm = self._train_step(micro_batches)
                s.step, s.step_in_epoch = s.step + 1, k + 1
                elapsed = time.perf_counter() - t0
                progress.update(s.step, loss, s.tokens / elapsed)
                if s.step % t.log_every == 0 or s.step == self.total_steps:
                    self.metrics.log(step=s.step, epoch=epoch, loss=round(loss, 5),
                                     lr=self.scheduler.get_last_lr()[0], grad_norm=grad_norm,
                                     tokens=s.tokens, tokens_per_s=round(s.tokens / elapsed, 1))
                stop, t0 = self._after_step(t0)
                if stop:
                    break
        s.train_time = time.perf_counter() - t0
        with self._whole_trainable(s.best_weights is not None, modifier_rank=0):
            restore_best(self.model, s, f", {t.early_stopping_metric}")
        return self.summary()

    def _after_step(self, t0: float) -> tuple[bool, float]:
        """Validation, checkpoint and signals after an optimizer step; returns (stop, adjusted t0)."""
        s, t = self.state, self.recipe.train
        at_end = s.step >= self.total_steps
        stop = False
        if (t.eval_every and s.step % t.eval_every == 0) or at_end:
            t_eval = time.perf_counter()
            stop = self._evaluate() and not at_end
            t0 += time.perf_counter() - t_eval  # throughput and train time exclude validation
            if stop:
                s.stopped_early = True
                console.print(f"early stopping at step {s.step} (best {t.early_stopping_metric} at step {s.best_step})")
        s.train_time = time.perf_counter() - t0
        interrupted = self.dist.any_flag(self._signal is not None)
        if interrupted or (t.save_every and s.step % t.save_every == 0 and not at_end):
            path = self.save_checkpoint()
            if interrupted:
                raise TrainingInterrupted(self._signal or signal.SIGTERM, path)
        return stop or at_end, t0

    def summary(self) -> dict[str, Any]:
        s, t = self.state, self.recipe.train
        best = None
        if not math.isinf(s.best_val):
            flip = t.early_stopping_mode == "max" or (t.early_stopping_mode == "auto"
                                                      and t.early_stopping_metric not in _LOSS_METRICS)
            best = round(-s.best_val if flip else s.best_val, 5)
        return {
            "steps": s.step, "epochs_started": s.epoch + 1, "train_time_s": round(s.train_time, 2),
            "real_tokens": s.tokens, "loss_tokens": s.loss_tokens,
            "real_tokens_per_s": round(s.tokens / max(s.train_time, 1e-9), 1),
            "best_metric": t.early_stopping_metric, "best_value": best,
            "best_val_loss": best if t.early_stopping_metric == "val_loss" else self._best_logged_loss(),
            "best_step": s.best_step, "stopped_early": s.stopped_early, "resumed_from_step": s.resumed_from,
            "processes": self.dist.world, "precision": self.precision, "device": self.device,
            "trainable_params": self.params.trainable, "total_params": self.params.total,
            "est_memory_mb": round(self.est_memory_mb, 1), "peak_rss_mb": round(peak_rss_mb(), 1),
            "peak_rss_mb_per_rank": [round(v, 1) for v in self.dist.gather_float(peak_rss_mb())],
            "sharding": self._sharding(),
        }

    def _sharding(self) -> str:
        if getattr(self, "sharded", None) is not None:
            return "fsdp"
        if self.engine is not None:
            return f"deepspeed-zero{self.engine.stage}"
        return "none"

    def _best_logged_loss(self) -> float | None:
        losses = [r["val_loss"] for r in self.metrics.eval_rows()]
        return min(losses) if losses else None

    # ---- save --------------------------------------------------------------------------------------
    def save(self, summary: dict[str, Any], timings: dict[str, float]) -> None:
        from tunelab.methods import artifact_dir, saves_full_weights

        r, d = self.recipe, self.run_dir
        extra = {}
        if self.sharded is not None:  # gather whole tensors (collective) so the files are a normal model/adapter
            extra["state_dict"] = fsdp.artifact_state_dict(self.model, trainable_only=not saves_full_weights(r.method))
        elif self.engine is not None:  # the same with DeepSpeed (ZeRO-3 gathers each parameter in turn)
            extra["state_dict"] = self.engine.artifact_state_dict(trainable_only=not saves_full_weights(r.method))
        if not self.dist.is_main:
            return
        self.model.save_pretrained(d / artifact_dir(r.method), safe_serialization=True, **extra)
        save_run_files(d, self.tokenizer, self.data, summary)
        write_run_manifest(d, r, model_identity(r, self.resolved), data_lineage(self.data, r.data.path), timings)

    def cleanup(self) -> None:
        self.optimizer.zero_grad(set_to_none=True)
        self.state.best_weights = None
        if self.engine is not None:
            self.engine.close()
