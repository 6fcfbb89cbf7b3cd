"""Evaluation of a classification run: accuracy and macro-F1 with bootstrap CIs on the held-out split.

A new head has no "base model" to compare with, so the baseline is the majority class of the training
split (what a classifier that learned nothing but the label frequencies would score). The result has the
same shape as the SFT evaluation (``eval/metrics.json`` with ``base``/``tuned``/``delta``, and
``eval/samples.jsonl``), so ``tunelab eval RUN`` and the report work unchanged.
"""

from __future__ import annotations

import json
import math
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

from tunelab.config.loading import load_recipe
from tunelab.config.specs import Recipe
from tunelab.errors import TunelabError
from tunelab.evaluation.metrics import compute_task_metrics
from tunelab.models import resolve_device, resolve_precision
from tunelab.recipes.classify import IGNORE_LABEL, load_classifier, predict_logits
from tunelab.util.console import console
from tunelab.util.io import atomic_write_json, atomic_write_text

__all__ = ["classification_metrics", "evaluate_classifier", "load_classifier_run", "macro_f1_ci"]

_CHUNK = 100  # bootstrap resamples per vectorised chunk: (100 x n) index matrix


def macro_f1_ci(gold: list[int], pred: list[int], n_classes: int, n_resamples: int = 1000, alpha: float = 0.05,
                seed: int = 0) -> tuple[float, float]:
    """Percentile-bootstrap interval of macro-F1 over ``n_classes`` (resampling rows, like `bootstrap_ci`).

    Gold ids outside ``[0, n_classes)`` (labels the head does not know) count as an extra class that is never
    predicted and is not averaged, so such rows are always errors. A class with no gold and no predicted row
    in a resample scores 0, as scikit-learn's ``zero_division=0`` does for the point estimate.
    """
    if not gold:
        return 0.0, 0.0
    k = n_classes + 1
    g = np.where((np.asarray(gold) >= 0) & (np.asarray(gold) < n_classes), gold, n_classes)
    cell = g * k + np.asarray(pred)  # (n,) index into the flattened confusion matrix
    rng = np.random.default_rng(seed)
    scores = []
    for start in range(0, n_resamples, _CHUNK):
        r = min(_CHUNK, n_resamples - start)
        idx = rng.integers(0, len(cell), size=(r, len(cell)))  # (r, n)
        flat = (np.arange(r)[:, None] * k * k + cell[idx]).ravel()
        conf = np.bincount(flat, minlength=r * k * k).reshape(r, k, k)  # (r, gold, pred)
        tp = np.diagonal(conf, axis1=1, axis2=2)[:, :n_classes]
        fp = conf.sum(axis=1)[:, :n_classes] - tp
        fn = conf.sum(axis=2)[:, :n_classes] - tp
        denom = 2 * tp + fp + fn
        f1 = np.divide(2 * tp, denom, out=np.zeros(tp.shape), where=denom > 0)
        scores.append(f1.mean(axis=1))
    lo, hi = np.quantile(np.concatenate(scores), [alpha / 2, 1 - alpha / 2])
    return float(lo), float(hi)


def _per_class(gold: list[str], preds: list[str], labels: list[str]) -> dict[str, dict[str, float]]:
    from sklearn.metrics import precision_recall_fscore_support

    p, r, f, support = precision_recall_fscore_support(gold, preds, labels=labels, zero_division=0)
    return {lab: {"precision": round(float(p[i]), 4), "recall": round(float(r[i]), 4), "f1": round(float(f[i]), 4),
                  "support": int(support[i])} for i, lab in enumerate(labels)}


def classification_metrics(logits: torch.Tensor, gold: list[str], labels: list[str],
                           with_ci: bool = True) -> dict[str, Any]:
    """Accuracy, macro/micro-F1 (compute_task_metrics' label task) and cross-entropy of (N, C) logits.

    Rows whose gold label is not in ``labels`` are always wrong and are left out of the loss.
    """
    index = {lab: i for i, lab in enumerate(labels)}
    gold_ids = torch.tensor([index.get(g, IGNORE_LABEL) for g in gold], dtype=torch.long)
    pred_ids = logits.argmax(-1).tolist() if len(gold) else []
    preds = [labels[i] for i in pred_ids]
    out = compute_task_metrics("label", preds, gold, labels)
    if not with_ci:
        out.pop("accuracy_ci", None)
    known = gold_ids != IGNORE_LABEL
    loss = torch.nn.functional.cross_entropy(logits[known], gold_ids[known]).item() if bool(known.any()) else math.nan
    out["loss"] = round(loss, 5)
    if with_ci:
        out["macro_f1_ci"] = list(macro_f1_ci(gold_ids.tolist(), pred_ids, len(labels)))
    return out


# ----------------------------------------------------------------------------------------------- run folder


def load_classifier_run(run_dir: str | Path, dtype: torch.dtype = torch.float32):
    """(model, tokenizer, labels) of a classification run folder: ``model/`` or base + ``adapter/``."""
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    run = Path(run_dir)
    meta_path = run / "labels.json"
    if not meta_path.is_file():
        raise TunelabError(f"'{run}' is not a finished classification run (no labels.json)",
                           fix="pass a folder written by `tunelab train` with train.objective=classify")
    recipe = load_recipe(run / "config.yaml")
    labels = json.loads(meta_path.read_text(encoding="utf-8"))["labels"]
    tok = AutoTokenizer.from_pretrained(run / "tokenizer")
    if (run / "model").is_dir():
        model = AutoModelForSequenceClassification.from_pretrained(
            run / "model", dtype=dtype, use_safetensors=True, trust_remote_code=recipe.model.trust_remote_code)
    else:
        from peft import PeftModel

        from tunelab.methods.bottleneck import is_bottleneck_dir, load_bottleneck

        base = load_classifier(recipe.model.name, labels, tok.pad_token_id, dtype, recipe.model.trust_remote_code)
        if is_bottleneck_dir(run / "adapter"):  # tunelab's own format: adapters and the trained head
            model = load_bottleneck(base, run / "adapter")
        else:
            model = PeftModel.from_pretrained(base, run / "adapter")
    model.eval()
    return model, tok, labels


def _held_out(prepared) -> tuple[str, list, list]:
    for name in ("test", "validation"):
        if prepared.splits.get(name):
            return name, prepared.splits[name], prepared.encoded[name]
    return "none", [], []


def _input_text(example) -> str:
    if example.text is not None:
        return example.text[:2000]
    return example.prompt_messages[-1]["content"] if example.prompt_messages else ""


def _majority(run: Path, labels: list[str]) -> str:
    counts = json.loads((run / "labels.json").read_text(encoding="utf-8")).get("train_counts") or {}
    return max(labels, key=lambda lab: (counts.get(lab, 0), -labels.index(lab)))


def _delta(base: dict | None, tuned: dict) -> dict[str, float]:
    if not base:
        return {}
    return {k: round(tuned[k] - base[k], 5) for k, v in tuned.items()
            if isinstance(v, float) and isinstance(base.get(k), float) and not k.endswith("_s")}


def _write(run: Path, result: dict[str, Any], rows: list[dict[str, Any]]) -> None:
    out = run / "eval"
    out.mkdir(exist_ok=True)
    atomic_write_json(out / "metrics.json", result)
    atomic_write_text(out / "samples.jsonl", "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows))


def evaluate_classifier(run_dir: str | Path, recipe: Recipe | None = None, prepared=None) -> dict[str, Any]:
    """Evaluate a classification run on its test split (validation when there is none); writes run/eval/."""
    from tunelab.data import prepare_data

    run = Path(run_dir)
    recipe = recipe or load_recipe(run / "config.yaml")
    device = resolve_device(recipe.model.device)
    precision = resolve_precision(recipe.model.precision, device)
    model, tokenizer, labels = load_classifier_run(run)
    model.to(device)
    prepared = prepared or prepare_data(recipe.data, tokenizer, objective="classify")
    split, examples, encoded = _held_out(prepared)
    n = recipe.eval.max_samples or len(examples)
    examples, encoded = examples[:n], encoded[:n]
    gold = [row["label"] for row in encoded]
    t0 = time.perf_counter()
    logits = predict_logits(model, encoded, tokenizer.pad_token_id, recipe.eval.batch_size, device, precision)
    tuned = classification_metrics(logits, gold, labels) if encoded else {}
    tuned["eval_time_s"] = round(time.perf_counter() - t0, 2)
    majority = _majority(run, labels)
    base = None
    if recipe.eval.compare_base and encoded:
        base = compute_task_metrics("label", [majority] * len(gold), gold, labels)
        base["macro_f1_ci"] = list(macro_f1_ci([labels.index(g) if g in labels else -1 for g in gold],
                                               [labels.index(majority)] * len(gold), len(labels)))
        console.print(f"base = the majority class of the training split ('{majority}'): a new head has no base model")
    preds = [labels[i] for i in logits.argmax(-1).tolist()] if encoded else []
    confidence = torch.softmax(logits, -1).max(-1).values.tolist() if encoded else []
    result = {
        "split": split, "n": len(encoded), "task": "classify", "precision": precision, "labels": labels,
        "base_kind": f"majority class ({majority})", "base": base, "tuned": tuned, "delta": _delta(base, tuned),
        "per_class": _per_class(gold, preds, labels) if encoded else {},
    }
    rows = [{"where": ex.where, "input": _input_text(ex), "reference": g, "base": majority if base else None,
             "tuned": p, "confidence": round(c, 4)}
            for ex, g, p, c in zip(examples, gold, preds, confidence, strict=True)]
    _write(run, result, rows)
    return result
