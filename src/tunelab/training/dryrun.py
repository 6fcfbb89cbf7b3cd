"""`--dry-run`: what a run will cost before it is launched, measured on this machine.

The recipe is set up for real (data read and tokenized, model built with its method) in a throw-away folder,
then a few optimizer steps are timed: the first on the longest micro-batches (peak activation memory), the
rest on typical ones (throughput, after one warm-up). Nothing is written to `output.dir`. The estimate is
tokens to process / measured real tokens per second, plus the measured cost of one validation pass times the
number of validations.
"""

from __future__ import annotations

import math
import tempfile
import time
from pathlib import Path
from typing import Any

from tunelab.config.specs import Recipe
from tunelab.errors import TunelabError

__all__ = ["estimate_run"]


def _timed_steps(sft, batches: list[list[int]]) -> tuple[float, int]:
    """Seconds and real tokens of optimizer steps over the given micro-batch index lists."""
    tokens = 0
    t0 = time.perf_counter()
    group = sft.recipe.train.grad_accum
    for i in range(0, len(batches), group):
        micro = [sft._collate([sft.train_rows[j] for j in idx]) for idx in batches[i:i + group]]
        before = sft.state.tokens
        sft._train_step(micro)
        tokens += sft.state.tokens - before
    return time.perf_counter() - t0, tokens


def estimate_run(recipe: Recipe, measure_steps: int = 3) -> dict[str, Any]:
    """Tokens to process, measured throughput, estimated wall time and peak memory of `recipe`."""
    from tunelab.recipes.objectives import recipe_class
    from tunelab.recipes.sft import SFTRecipe, peak_rss_mb
    from tunelab.training.batching import plan_batches

    cls = recipe_class(recipe)
    if not issubclass(cls, SFTRecipe):
        raise TunelabError(f"--dry-run estimates the sft and pretrain objectives, not {recipe.train.objective}",
                           where="train.objective", fix="run a short job with train.max_steps instead")
    with tempfile.TemporaryDirectory(prefix="tunelab-dryrun-") as tmp:
        sft = cls(recipe, Path(tmp))
        sft.setup()
        t = recipe.train
        lengths = [len(r["input_ids"]) for r in sft.train_rows]
        plan = plan_batches(lengths, t.batch_size, t.batching, t.seed, 0)
        longest = sorted(plan, key=lambda b: -max(lengths[i] for i in b))[: t.grad_accum]
        _timed_steps(sft, longest)  # peak memory and warm-up (first-step allocations, autotuning)
        typical = plan[: measure_steps * t.grad_accum]
        seconds, tokens = _timed_steps(sft, typical)
        t_val = time.perf_counter()
        sft.validation_loss()
        val_s = time.perf_counter() - t_val
        peak = peak_rss_mb()
    epoch_tokens = sum(lengths)
    steps = sft.total_steps
    total_tokens = int(epoch_tokens * steps / sft._steps_per_epoch())
    tps = tokens / max(seconds, 1e-9)
    n_evals = 2 + (steps // t.eval_every if t.eval_every else 0)
    train_s = total_tokens / max(tps, 1e-9)
    return {
        "objective": recipe.train.objective, "method": recipe.method.name, "train_rows": len(lengths),
        "steps": steps, "tokens_to_process": total_tokens, "measured_tokens_per_s": round(tps, 1),
        "measured_steps": math.ceil(len(typical) / t.grad_accum), "validation_pass_s": round(val_s, 2),
        "validations": n_evals if sft.val_rows else 0,
        "est_train_s": round(train_s, 1), "est_total_s": round(train_s + (n_evals * val_s if sft.val_rows else 0), 1),
        "peak_rss_mb": round(peak, 1), "est_memory_mb": round(sft.est_memory_mb, 1),
        "trainable_params": sft.params.trainable, "total_params": sft.params.total, "device": sft.device,
        "precision": sft.precision,
    }


def format_duration(seconds: float) -> str:
    seconds = int(round(seconds))
    h, rem = divmod(seconds, 3600)
    m, s = divmod(rem, 60)
    return f"{h}h{m:02d}m" if h else f"{m}m{s:02d}s"
