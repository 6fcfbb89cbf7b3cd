"""The metric registry: every metric by name with its reference implementation, and the per-task sets.

A metric is built from a :class:`Batch` (predictions, references, label set, label probabilities) into a
function of example weights ``(R, n) -> (R,)`` (see :mod:`tunelab.evaluation.stats`): weights of ones give
the reported value, bootstrap multiplicities give its resamples, so the interval is always of the very
number reported. ``tunelab.evaluation.metrics`` re-exports :data:`METRICS` and
:func:`compute_task_metrics`; this module holds them so that ``metrics.py`` keeps the per-example pieces.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from functools import cached_property
from typing import Any

import numpy as np

from tunelab.errors import TunelabError
from tunelab.evaluation import metrics as m
from tunelab.evaluation import stats

__all__ = [
    "METRICS",
    "TASK_METRICS",
    "Batch",
    "Metric",
    "bootstrap_settings",
    "compute_task_metrics",
    "mean_metrics",
    "perplexity_metrics",
]

Scorer = Callable[[np.ndarray], np.ndarray]  # (R, n) example weights -> (R,) metric values


class Batch:
    """What the metrics of one evaluation read, each derived once and shared by every metric.

    Args:
        preds: Model answers (generated text, or the chosen label).
        refs: References (a string, or a list of acceptable strings for text metrics).
        labels: Label set of label tasks (default: the sorted distinct references).
        probs: (n, k) label probabilities in ``labels`` order (label scoring by likelihood), or None.
    """

    def __init__(self, preds: Sequence[Any], refs: Sequence[Any], labels: Sequence[str] | None = None,
                 probs: np.ndarray | None = None):
        m._check_lengths(preds, refs)
        self.preds, self.refs, self.probs = list(preds), list(refs), probs
        self._labels = labels

    @property
    def n(self) -> int:
        return len(self.preds)

    @cached_property
    def label_view(self) -> tuple[list[str], list[str], list[str]]:
        """(predictions mapped to labels, canonical gold labels, label set)."""
        return m._label_predictions(self.preds, self.refs, self._labels)

    @cached_property
    def confusion(self) -> np.ndarray:
        mapped, gold, labels = self.label_view
        return stats.confusion_stats(gold, mapped, labels)

    @cached_property
    def rouge_rows(self) -> list[dict[str, float]]:
        return m._rouge_rows([str(p) for p in self.preds], [_first(r) for r in self.refs])

    @cached_property
    def json_rows(self) -> list[tuple[dict[str, bool], bool, bool]]:
        return m._json_rows(self.preds, self.refs)


def _first(ref: Any) -> str:
    # ROUGE here scores one reference; with several acceptable answers the first is the reference.
    return ref if isinstance(ref, str) else str(next(iter(ref), ""))


@dataclass(frozen=True)
class Metric:
    """One metric: its family (what it needs), its reference implementation and how to compute it."""

    name: str
    family: str  # "label", "probs" (label probabilities), "text" or "json"
    reference: str
    build: Callable[[Batch], Scorer]
    higher_is_better: bool = True


def _mean_of(per_example: Callable[[Batch], Sequence[float]]) -> Callable[[Batch], Scorer]:
    def build(b: Batch) -> Scorer:
        s = np.asarray(per_example(b), dtype=np.float64)
        return lambda w: (w @ s) / w.sum(axis=1)
    return build


def _summed(stats_of: Callable[[Batch], np.ndarray], value: Callable[[np.ndarray], np.ndarray]):
    def build(b: Batch) -> Scorer:
        s = stats_of(b)
        return lambda w: value(w @ s)
    return build


def _field_accuracy(b: Batch) -> Scorer:
    hits = np.array([sum(f.values()) for f, _, _ in b.json_rows], dtype=np.float64)
    fields = np.array([len(f) for f, _, _ in b.json_rows], dtype=np.float64)
    return lambda w: m_ratio(w @ hits, w @ fields)


def m_ratio(num: np.ndarray, den: np.ndarray) -> np.ndarray:
    """num / den with 0 where den is 0 (an evaluation with nothing to score scores 0)."""
    return np.divide(num, den, out=np.zeros(np.shape(num)), where=np.asarray(den) > 0)


def _gold_index(b: Batch) -> list[int]:
    _, gold, labels = b.label_view
    index = {label: i for i, label in enumerate(labels)}
    missing = sorted({g for g in gold if g not in index})
    if missing:
        raise ValueError(f"references {missing} are not in the label set {labels}")
    return [index[g] for g in gold]


def _roc_auc(b: Batch) -> Scorer:
    if b.probs is None:
        raise TunelabError("roc_auc needs label probabilities", where="eval.metrics",
                           fix="set eval.label_scoring: loglik (labels scored by likelihood)")
    gold, probs = _gold_index(b), np.asarray(b.probs, dtype=np.float64)
    return lambda w: stats.weighted_roc_auc(w, gold, probs)


def _classification(name: str, fn, average: str) -> Metric:
    return Metric(name, "label", f"sklearn.metrics.{fn.__name__.split('_')[0]}_score(average='{average}', "
                  "labels=label set, zero_division=0)", _summed(lambda b: b.confusion, lambda s: fn(s, average)))


def _sacrebleu(name: str, stats_fn) -> Metric:
    ref = "sacrebleu.corpus_bleu(...).score / 100" if name == "bleu" else "sacrebleu.corpus_chrf(...).score / 100"
    return Metric(name, "text", ref, _summed(lambda b: stats_fn([str(p) for p in b.preds], b.refs),
                                             lambda s: stats.sacrebleu_values(name, s)))


def _correct(b: Batch) -> list[float]:
    mapped, gold, _ = b.label_view
    return [float(p == g) for p, g in zip(mapped, gold, strict=True)]


METRICS: dict[str, Metric] = {x.name: x for x in [
    Metric("accuracy", "label", "sklearn.metrics.accuracy_score", _mean_of(_correct)),
    _classification("macro_f1", stats.f1_values, "macro"),
    _classification("micro_f1", stats.f1_values, "micro"),
    _classification("macro_precision", stats.precision_values, "macro"),
    _classification("micro_precision", stats.precision_values, "micro"),
    _classification("macro_recall", stats.recall_values, "macro"),
    _classification("micro_recall", stats.recall_values, "micro"),
    Metric("roc_auc", "probs", "sklearn.metrics.roc_auc_score (binary; multi-class: multi_class='ovr', "
           "average='macro')", _roc_auc),
    Metric("exact_match", "text", "SQuAD v1.1 evaluate-v1.1.py exact_match_score",
           _mean_of(lambda b: m._exact_match_scores([str(p) for p in b.preds], b.refs))),
    Metric("token_f1", "text", "SQuAD v1.1 evaluate-v1.1.py f1_score",
           _mean_of(lambda b: m._token_f1_scores([str(p) for p in b.preds], b.refs))),
    *[Metric(k, "text", f"rouge_score.rouge_scorer.RougeScorer(['{k}'], use_stemmer=True) F-measure",
             _mean_of(lambda b, k=k: [row[k] for row in b.rouge_rows])) for k in ("rouge1", "rouge2", "rougeL")],
    _sacrebleu("bleu", stats.bleu_stats),
    _sacrebleu("chrf", stats.chrf_stats),
    Metric("json_valid", "json", "json.loads of the first JSON object in the answer",
           _mean_of(lambda b: [float(v) for _, v, _ in b.json_rows])),
    Metric("field_accuracy", "json", "per-field equality (micro-average over reference fields)", _field_accuracy),
    Metric("json_exact_match", "json", "every reference field equal",
           _mean_of(lambda b: [float(e) for _, _, e in b.json_rows])),
]}

# Metrics each task reports (the first is the headline `main`); json's all-fields metric keeps its old key.
TASK_METRICS: dict[str, tuple[str, ...]] = {
    "json": ("field_accuracy", "json_valid", "json_exact_match"),
    "label": ("accuracy", "macro_f1", "micro_f1", "macro_precision", "macro_recall"),
    "text": ("rougeL", "rouge1", "rouge2", "exact_match", "token_f1"),
}
_OUTPUT_KEY = {("json", "json_exact_match"): "exact_match"}


def bootstrap_settings(bootstrap: Any) -> tuple[int, float, int]:
    """(n_resamples, confidence, seed) from a BootstrapSpec, a dict or None (1000, 0.95, 0)."""
    if bootstrap is None:
        return 1000, 0.95, 0
    get = bootstrap.get if isinstance(bootstrap, dict) else lambda k, d: getattr(bootstrap, k, d)
    return int(get("n_resamples", 1000)), float(get("confidence", 0.95)), int(get("seed", 0))


def _evaluate(scorers: dict[str, Scorer], n: int, bootstrap: Any) -> dict[str, Any]:
    """Point value and bootstrap interval of every scorer, all from the same resamples."""
    out: dict[str, Any] = {}
    if n == 0:  # an empty evaluation scores 0 rather than raising, so a report can still be written
        return {**{k: 0.0 for k in scorers}, **{f"{k}_ci": [0.0, 0.0] for k in scorers}}
    ones = np.ones((1, n))
    for key, f in scorers.items():
        out[key] = float(f(ones)[0])
    n_resamples, confidence, seed = bootstrap_settings(bootstrap)
    if n_resamples <= 0:
        return out
    draws: dict[str, list[np.ndarray]] = {k: [] for k in scorers}
    for w in stats.resample_weights(n, n_resamples, seed):
        for key, f in scorers.items():
            draws[key].append(f(w))
    for key in scorers:
        out[f"{key}_ci"] = list(stats.percentile_interval(np.concatenate(draws[key]), confidence))
    # An undefined value (e.g. ROC-AUC with one class) is left out rather than written as NaN.
    return {k: v for k, v in out.items() if not _is_nan(v)}


def _is_nan(v: Any) -> bool:
    if isinstance(v, float):
        return math.isnan(v)
    return isinstance(v, list) and any(isinstance(x, float) and math.isnan(x) for x in v)


def unknown_metric(name: str) -> TunelabError:
    """The error for a metric name that is not in :data:`METRICS`."""
    return TunelabError(f"unknown metric {name!r}; valid: {', '.join(sorted(METRICS))}", where="eval.metrics",
                        fix="use one of the valid names (docs/evaluation.md, Metrics)")


def _names(task: str, extra: Sequence[str], probs: np.ndarray | None) -> list[str]:
    names = list(TASK_METRICS[task]) + (["roc_auc"] if probs is not None and task == "label" else [])
    for name in extra:
        if name not in METRICS:
            raise unknown_metric(name)
        if name not in names:
            names.append(name)
    return names


def compute_task_metrics(task: str, preds: Sequence[Any], refs: Sequence[Any], labels: Sequence[str] | None = None,
                         *, probs: np.ndarray | None = None, metrics: Sequence[str] = (),
                         bootstrap: Any = None) -> dict[str, Any]:
    """See :func:`tunelab.evaluation.metrics.compute_task_metrics`."""
    if task == "auto":
        task = m.infer_task(refs)
    if task not in TASK_METRICS:
        raise ValueError(f"unknown task {task!r}; expected one of {', '.join(TASK_METRICS)} or 'auto'")
    b = Batch(preds, refs, labels, probs)
    names = _names(task, metrics, probs)
    scorers = {_OUTPUT_KEY.get((task, name), name): METRICS[name].build(b) for name in names}
    out = _evaluate(scorers, b.n, bootstrap)
    if task == "label":
        mapped, _, _ = b.label_view if b.n else ([], [], [])
        out["invalid_rate"] = m._mean([float(p == m.INVALID_LABEL) for p in mapped])
    if task == "json":
        out["per_field"] = m._per_field(b.json_rows)
    out.update(main=TASK_METRICS[task][0], task=task, n_examples=b.n)
    return out


def mean_metrics(per_example: dict[str, Sequence[float]], bootstrap: Any = None) -> dict[str, Any]:
    """Means of per-example scores (e.g. multiple-choice correctness) with bootstrap intervals.

    Args:
        per_example: ``{metric: one score per example}``, all of the same length.
        bootstrap: Bootstrap settings (see :func:`bootstrap_settings`).

    Returns:
        ``{metric: mean, "<metric>_ci": [lo, hi]}``.
    """
    lengths = {len(v) for v in per_example.values()}
    if len(lengths) > 1:
        raise ValueError(f"per-example scores of different lengths: {sorted(lengths)}")
    n = lengths.pop() if lengths else 0
    scorers = {k: _mean_of(lambda b, v=v: v)(None) for k, v in per_example.items()}  # type: ignore[arg-type]
    return _evaluate(scorers, n, bootstrap)


def perplexity_metrics(text_nll: Sequence[float], text_tokens: Sequence[int], bootstrap: Any = None) -> dict:
    """Corpus perplexity ``exp(sum nll / sum tokens)`` with an interval from resampling the texts.

    Args:
        text_nll: Summed negative log-likelihood of each text (nats).
        text_tokens: Predicted tokens of each text.
        bootstrap: Bootstrap settings.

    Returns:
        ``{"perplexity", "perplexity_ci", "nll", "nll_ci", "tokens"}``.
    """
    nll = np.asarray(text_nll, dtype=np.float64)
    tokens = np.asarray(text_tokens, dtype=np.float64)

    def mean_nll(w: np.ndarray) -> np.ndarray:
        return m_ratio(w @ nll, w @ tokens)

    out = _evaluate({"nll": mean_nll, "perplexity": lambda w: np.exp(np.minimum(mean_nll(w), 709.0))},
                    len(nll), bootstrap)
    out["tokens"] = int(tokens.sum())
    return out
