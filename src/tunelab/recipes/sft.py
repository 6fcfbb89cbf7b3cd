"""Instruction SFT: assistant-only loss, any method (LoRA, full), gradient accumulation, warmup + schedule,
periodic validation with early stopping, metrics.jsonl, and a self-describing run folder."""

from __future__ import annotations

import math
import resource
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from tunelab.config.loading import dump_recipe
from tunelab.config.specs import Recipe
from tunelab.errors import TunelabError
from tunelab.methods import apply_method, count_parameters, estimate_training_memory_mb
from tunelab.models import (
    autocast,
    load_causal_lm,
    load_tokenizer,
    resolve_device,
    resolve_model,
    resolve_precision,
)
from tunelab.training.batching import collate, plan_batches
from tunelab.training.loss import mean_nll, supervised_nll
from tunelab.training.optim import build_optimizer, build_scheduler
from tunelab.training.progress import TrainProgress
from tunelab.training.rundir import MetricsLog, write_manifest
from tunelab.util.console import console
from tunelab.util.io import atomic_write_json, atomic_write_text

__all__ = ["SFTRecipe", "set_seed"]


def set_seed(seed: int) -> None:
    import random

    import numpy as np

    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux reports KiB


@dataclass
class _State:
    step: int = 0
    epoch: int = 0
    tokens: int = 0  # real (non-padding) tokens processed
    loss_tokens: int = 0
    train_time: float = 0.0
    best_val: float = math.inf
    best_step: int = 0
    bad_evals: int = 0
    best_weights: dict[str, torch.Tensor] | None = field(default=None, repr=False)
    stopped_early: bool = False


class SFTRecipe:
    """setup → train → save → cleanup, composed from leaf helpers (no hooks to override)."""

    def __init__(self, recipe: Recipe, run_dir: Path):
        self.recipe, self.run_dir = recipe, run_dir
        self.state = _State()
        self.metrics = MetricsLog(run_dir / "metrics.jsonl")

    # ---- setup -------------------------------------------------------------------------------------
    def setup(self) -> None:
        from tunelab.data import prepare_data

        r = self.recipe
        set_seed(r.train.seed)
        if r.model.threads:
            torch.set_num_threads(r.model.threads)
        self.device = resolve_device(r.model.device)
        self.precision = resolve_precision(r.model.precision, self.device)
        self.resolved = resolve_model(r.model.name)
        self.tokenizer = load_tokenizer(r.model.name, r.model.trust_remote_code)
        self.data = prepare_data(r.data, self.tokenizer)
        self.train_rows = self.data.encoded["train"]
        self.val_rows = self.data.encoded.get("validation") or []
        self.model = self._build_model()
        self.optimizer = build_optimizer(self.model, r.train)
        self.total_steps = self._total_steps()
        self.scheduler = build_scheduler(self.optimizer, r.train, self.total_steps)
        atomic_write_text(self.run_dir / "config.yaml", dump_recipe(r))

    def _build_model(self) -> torch.nn.Module:
        r = self.recipe
        # A frozen base can live in bf16 (no recasting every step, half the memory); weights that are
        # trained stay fp32 so that small updates are not rounded away.
        frozen_bf16 = self.precision == "bf16" and r.method.name != "full"
        dtype = torch.bfloat16 if frozen_bf16 else torch.float32
        model = load_causal_lm(r.model.name, r.model.trust_remote_code, dtype=dtype)
        model = apply_method(model, r.method).to(self.device)
        model.train()
        self.params = count_parameters(model)
        mem = estimate_training_memory_mb(self.params.total, self.params.trainable, 2 if frozen_bf16 else 4)
        console.print(
            f"model [bold]{r.model.name}[/] · method [bold]{r.method.name}[/] · trainable "
            f"{self.params.trainable:,} / {self.params.total:,} ({self.params.percent:.2f}%) · "
            f"{self.device}/{self.precision} · est. memory {mem:,.0f} MB + activations"
        )
        self.est_memory_mb = mem
        return model

    def _steps_per_epoch(self) -> int:
        micro = math.ceil(len(self.train_rows) / self.recipe.train.batch_size)
        return max(1, math.ceil(micro / self.recipe.train.grad_accum))

    def _total_steps(self) -> int:
        t = self.recipe.train
        return t.max_steps or max(1, math.ceil(t.epochs * self._steps_per_epoch()))

    # ---- data --------------------------------------------------------------------------------------
    def _steps(self):
        """Yield (epoch, [micro-batch tensors]) per optimizer step, across epochs, forever."""
        t = self.recipe.train
        lengths = [len(row["input_ids"]) for row in self.train_rows]
        epoch = 0
        while True:
            plan = plan_batches(lengths, t.batch_size, t.batching, t.seed, epoch)
            for i in range(0, len(plan), t.grad_accum):
                group = plan[i:i + t.grad_accum]
                yield epoch, [self._collate([self.train_rows[j] for j in idx]) for idx in group]
            epoch += 1

    def _collate(self, rows: list[dict[str, Any]]) -> dict[str, torch.Tensor]:
        batch = collate(rows, self.recipe.train.batching, self.tokenizer.pad_token_id, self.recipe.data.max_length)
        return {k: v.to(self.device) for k, v in batch.items()}

    # ---- train -------------------------------------------------------------------------------------
    def _train_step(self, micro_batches: list[dict[str, torch.Tensor]]) -> tuple[float, float | None]:
        n_total = sum(int((mb["labels"][:, 1:] != -100).sum()) for mb in micro_batches)
        loss_sum = 0.0
        for mb in micro_batches:
            with autocast(self.device, self.precision):
                loss, _ = supervised_nll(self.model, mb)
            # Normalise by all loss tokens of the step so accumulation equals one big batch.
            (loss / max(n_total, 1)).backward()
            loss_sum += float(loss.detach())
            self.state.tokens += int(mb["attention_mask"].sum()) if "attention_mask" in mb else mb["input_ids"].numel()
        step_loss = loss_sum / max(n_total, 1)
        if not math.isfinite(step_loss):
            raise TunelabError(
                f"training diverged: loss is {step_loss} at step {self.state.step + 1}; nothing was saved",
                where="train.lr", fix="lower train.lr, or use model.precision=fp32",
            )
        grad_norm = None
        if self.recipe.train.max_grad_norm:
            trainable = [p for p in self.model.parameters() if p.requires_grad]
            grad_norm = float(torch.nn.utils.clip_grad_norm_(trainable, self.recipe.train.max_grad_norm))
        self.optimizer.step()
        self.scheduler.step()
        self.optimizer.zero_grad(set_to_none=True)
        self.state.loss_tokens += n_total
        return step_loss, grad_norm

    def validation_loss(self) -> float | None:
        return mean_nll(self.model, self.val_rows, self.recipe.eval.batch_size, self.tokenizer.pad_token_id,
                        self.device, self.precision)

    def _evaluate(self) -> bool:
        """Validation + early-stopping bookkeeping; returns True when training should stop."""
        s, t = self.state, self.recipe.train
        val = self.validation_loss()
        if val is None:
            return False
        self.metrics.log(step=s.step, epoch=s.epoch, val_loss=round(val, 5), val_ppl=round(math.exp(min(val, 50)), 4))
        if val < s.best_val - 1e-4:
            s.best_val, s.best_step, s.bad_evals = val, s.step, 0
            if t.early_stopping_patience:
                s.best_weights = {n: p.detach().clone() for n, p in self.model.named_parameters() if p.requires_grad}
            return False
        s.bad_evals += 1
        return bool(t.early_stopping_patience and s.bad_evals >= t.early_stopping_patience)

    def train(self) -> dict[str, Any]:
        s, t = self.state, self.recipe.train
        self._evaluate()  # step 0: the base model's validation loss, for the curve
        progress = TrainProgress(self.total_steps)
        t0 = time.perf_counter()
        with progress:
            for epoch, micro_batches in self._steps():
                s.epoch = epoch
                loss, grad_norm = self._train_step(micro_batches)
                s.step += 1
                elapsed = time.perf_counter() - t0
                progress.update(s.step, loss, s.tokens / elapsed)
                if s.step % t.log_every == 0 or s.step == self.total_steps:
                    self.metrics.log(step=s.step, epoch=epoch, loss=round(loss, 5),
                                     lr=self.scheduler.get_last_lr()[0], grad_norm=grad_norm,
                                     tokens=s.tokens, tokens_per_s=round(s.tokens / elapsed, 1))
                at_end = s.step >= self.total_steps
                if (t.eval_every and s.step % t.eval_every == 0) or at_end:
                    t_eval = time.perf_counter()
                    stop = self._evaluate()
                    t0 += time.perf_counter() - t_eval  # throughput and train time exclude validation
                    if stop and not at_end:
                        s.stopped_early = True
                        console.print(f"early stopping at step {s.step} (best validation loss at step {s.best_step})")
                        break
                if at_end:
                    break
        s.train_time = time.perf_counter() - t0
        self._restore_best()
        return self.summary()

    def _restore_best(self) -> None:
        s = self.state
        if s.best_weights is None or s.best_step == s.step:
            return
        params = dict(self.model.named_parameters())
        with torch.no_grad():
            for name, value in s.best_weights.items():
                params[name].copy_(value)
        console.print(f"restored the best weights (step {s.best_step}, validation loss {s.best_val:.4f})")

    def summary(self) -> dict[str, Any]:
        s = self.state
        return {
            "steps": s.step, "epochs_started": s.epoch + 1, "train_time_s": round(s.train_time, 2),
            "real_tokens": s.tokens, "loss_tokens": s.loss_tokens,
            "real_tokens_per_s": round(s.tokens / max(s.train_time, 1e-9), 1),
            "best_val_loss": None if math.isinf(s.best_val) else round(s.best_val, 5), "best_step": s.best_step,
            "stopped_early": s.stopped_early, "precision": self.precision, "device": self.device,
            "trainable_params": self.params.trainable, "total_params": self.params.total,
            "est_memory_mb": round(self.est_memory_mb, 1), "peak_rss_mb": round(peak_rss_mb(), 1),
        }

    # ---- save --------------------------------------------------------------------------------------
    def save(self, summary: dict[str, Any], timings: dict[str, float]) -> None:
        from tunelab.data import write_rejects

        r, d = self.recipe, self.run_dir
        if r.method.name == "full":
            self.model.save_pretrained(d / "model", safe_serialization=True)
        else:
            self.model.save_pretrained(d / "adapter")
        self.tokenizer.save_pretrained(d / "tokenizer")
        atomic_write_json(d / "data_summary.json", self.data.summary)
        write_rejects(self.data.rejects, d / "rejects.jsonl")
        atomic_write_json(d / "train_summary.json", summary)
        write_manifest(
            d, seed=r.train.seed, model={"name": r.model.name, "path": str(self.resolved.path),
                                         "source": self.resolved.source},
            data=self._data_lineage(),
            timings=timings, method=r.method.name,
        )

    def _data_lineage(self) -> dict[str, Any]:
        """Which data this run used: input hashes, curation steps run here, and a curated dataset's identity."""
        from tunelab.data.pipeline import resolve_data_path
        from tunelab.data.stage import dataset_manifest

        summary = self.data.summary
        lineage: dict[str, Any] = {"fingerprint": self.data.fingerprint, "files": summary.get("files", {})}
        if summary.get("curation"):
            lineage["curation"] = [{k: c[k] for k in ("split", "step", "rows_in", "kept", "rejected")}
                                   for c in summary["curation"]]
        ds = dataset_manifest(resolve_data_path(self.recipe.data.path))
        if ds:
            lineage["dataset"] = {"path": self.recipe.data.path, "fingerprint": ds.get("fingerprint"),
                                  "steps": [st["step"] for st in ds.get("steps", [])]}
        return lineage

    def cleanup(self) -> None:
        self.optimizer.zero_grad(set_to_none=True)
        self.state.best_weights = None
