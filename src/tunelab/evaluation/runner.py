"""The eval stage: base and tuned model on the same held-out split; eval/metrics.json and samples.jsonl."""

from __future__ import annotations

import math
import time
from pathlib import Path
from typing import Any

import torch

from tunelab.config.loading import load_recipe
from tunelab.config.specs import Recipe
from tunelab.evaluation.task_scoring import check_task_inputs, resolve_task, score_task
from tunelab.models import load_causal_lm, load_run_model, resolve_device, resolve_precision
from tunelab.training.loss import mean_nll
from tunelab.util.io import atomic_write_json, atomic_write_text

__all__ = ["evaluate_run"]


def _eval_split(prepared) -> tuple[str, list, list]:
    """The test split, or the validation split when the recipe has no test rows."""
    for name in ("test", "validation"):
        if prepared.splits.get(name):
            return name, prepared.splits[name], prepared.encoded[name]
    return "none", [], []


def _score(model, tokenizer, examples, encoded, recipe: Recipe, task: str, device: str, precision: str,
           label: str) -> tuple[dict[str, Any], list[str]]:
    e = recipe.eval
    t0 = time.perf_counter()
    nll = mean_nll(model, encoded, e.batch_size, tokenizer.pad_token_id, device, precision)
    metrics, preds = score_task(model, tokenizer, examples, e, task, device, label)  # task types: task_scoring.py
    if nll is not None:
        metrics["loss"] = round(nll, 5)
        # Task 'perplexity' reports the sliding-window number; exp(loss) is the perplexity of the encoded rows.
        metrics["loss_perplexity" if task == "perplexity" else "perplexity"] = round(math.exp(min(nll, 50)), 4)
    metrics["eval_time_s"] = round(time.perf_counter() - t0, 2)
    return metrics, preds


def _samples(examples, base_preds, tuned_preds) -> list[dict[str, Any]]:
    rows = []
    for i, ex in enumerate(examples):
        text = ex.prompt_messages[-1]["content"] if ex.prompt_messages else (ex.text or "")[:2000]
        rows.append({"where": ex.where, "input": text, "reference": ex.reference,
                     "base": base_preds[i] if base_preds else None, "tuned": tuned_preds[i]})
    return rows


def _delta(base: dict | None, tuned: dict) -> dict[str, float]:
    if not base:
        return {}
    return {k: round(tuned[k] - base[k], 5) for k, v in tuned.items()
            if isinstance(v, float) and isinstance(base.get(k), float) and not k.endswith("_s")}


def evaluate_run(run_dir: str | Path, recipe: Recipe | None = None, prepared=None) -> dict[str, Any]:
    """Evaluate a finished run (and its base model) on the held-out split; writes run_dir/eval/."""
    from tunelab.data import prepare_data

    run = Path(run_dir)
    recipe = recipe or load_recipe(run / "config.yaml")
    if recipe.train.objective == "classify":  # a head, not generation: accuracy and macro-F1 of its predictions
        from tunelab.recipes.classify_eval import evaluate_classifier

        return evaluate_classifier(run, recipe, prepared)
    device = resolve_device(recipe.model.device)
    precision = resolve_precision(recipe.model.precision, device)
    # Decode is memory-bound: bf16 weights halve the bytes read per token (autocast would recast each step).
    dtype = torch.bfloat16 if precision == "bf16" else torch.float32
    judge = None
    if recipe.eval.judge.enabled:  # a judge endpoint that is down fails here: before any model runs or file is written
        from tunelab.evaluation.judge import prepare_judge

        judge = prepare_judge(recipe.eval)
    tuned, tokenizer = load_run_model(run, dtype=dtype)
    tuned.to(device)
    prepared = prepared or prepare_data(recipe.data, tokenizer)
    split, examples, encoded = _eval_split(prepared)
    n = recipe.eval.max_samples or len(examples)
    examples, encoded = examples[:n], encoded[:n]
    task = resolve_task(recipe, examples)
    check_task_inputs(examples, recipe.eval, task, split)  # bad input stops here, before the base model loads
    if judge is not None and task == "perplexity":
        from tunelab.errors import TunelabError

        raise TunelabError("a judge reads generated answers, but this evaluation scores perplexity (nothing is "
                           "generated)", where="eval.judge.enabled", fix="set eval.judge.enabled=false")
    base_metrics, base_preds = None, None
    if recipe.eval.compare_base and examples:
        base = load_causal_lm(recipe.model.name, recipe.model.trust_remote_code, dtype).to(device)
        base_metrics, base_preds = _score(base, tokenizer, examples, encoded, recipe, task, device, precision, "base")
        del base
    tuned_metrics, tuned_preds = (_score(tuned, tokenizer, examples, encoded, recipe, task, device, precision,
                                         "tuned") if examples else ({}, []))
    result = {"split": split, "n": len(examples), "task": task, "precision": precision,
              "base": base_metrics, "tuned": tuned_metrics, "delta": _delta(base_metrics, tuned_metrics)}
    if examples and recipe.eval.baselines.enabled:  # prompting the base model instead of tuning it (icl.py)
        from tunelab.evaluation.icl import run_baselines

        result["baselines"] = run_baselines(run, recipe, examples=examples, tokenizer=tokenizer, task=task,
                                            pool=prepared.splits.get(recipe.eval.baselines.pool, []), split=split,
                                            device=device, dtype=dtype, base_preds=base_preds,
                                            base_metrics=base_metrics)
    if recipe.eval.general:  # learning vs forgetting: base and tuned on general-capability sets
        from tunelab.evaluation.forgetting import evaluate_general

        result["general"] = evaluate_general(run, recipe, tuned, tokenizer, device=device, precision=precision)
    if examples and recipe.eval.bias.enabled:  # counterfactual pairs and templates, base vs tuned (bias.py)
        from tunelab.evaluation.bias import run_bias

        result["bias"] = run_bias(run, recipe, tuned, tokenizer, examples, task, device, dtype)
    if examples and judge is not None:  # LLM-as-judge over the answers above (judge.py)
        from tunelab.evaluation.judge import judge_run, system_outputs

        outputs = system_outputs(run, examples, base_preds, tuned_preds, recipe.eval.baselines.enabled)
        result["judge"] = judge_run(run, recipe, examples, outputs, judge)
    out = run / "eval"
    out.mkdir(exist_ok=True)
    atomic_write_json(out / "metrics.json", result)
    import json

    rows = _samples(examples, base_preds, tuned_preds)
    atomic_write_text(out / "samples.jsonl", "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows))
    return result
