"""Metrics for generated answers: pure functions over lists of predictions and references.

Every score is a fraction in [0, 1] (never x100), so that tables, gates and plots can treat them alike.
Three task kinds share one entry point, :func:`compute_task_metrics`:

- ``"json"``: structured extraction; headline ``field_accuracy``.
- ``"label"``: classification by generation; headline ``accuracy``.
- ``"text"``: free text; headline ``rougeL`` (plus SQuAD exact match and token F1).

Each result dict names its headline metric under ``main`` and carries a percentile-bootstrap interval
for every metric under ``<name>_ci``. The registry of all metrics by name, ``METRICS``, and the task metric
sets live in :mod:`tunelab.evaluation.registry` (``METRICS`` is also importable from here).
"""

from __future__ import annotations

import json
import math
import re
import string
from collections import Counter
from collections.abc import Sequence
from functools import lru_cache
from typing import Any

import numpy as np

__all__ = [
    "INVALID_LABEL",
    "METRICS",  # noqa: F822 (resolved lazily by __getattr__)
    "accuracy",
    "bleu",
    "bootstrap_ci",
    "chrf",
    "compute_task_metrics",
    "exact_match",
    "f1",
    "infer_task",
    "json_metrics",
    "label_metrics",
    "map_to_label",
    "normalize_answer",
    "parse_json_object",
    "perplexity",
    "precision",
    "recall",
    "roc_auc",
    "rouge_l",
    "rouge_scores",
    "token_f1",
]

INVALID_LABEL = "<invalid>"
TASKS = ("json", "label", "text")
_MAIN_METRIC = {"json": "field_accuracy", "label": "accuracy", "text": "rougeL"}
_PUNCT = frozenset(string.punctuation)
_ARTICLES = re.compile(r"\b(a|an|the)\b")
_FENCE = re.compile(r"```[ \t]*[A-Za-z0-9_-]*[ \t]*\n?(.*?)```", re.DOTALL)
# exp() overflows a float64 just above 709.78.
_MAX_EXP_ARG = 709.0
# Bound the (resamples x n) index matrix of the bootstrap to about 8 MB per chunk.
_BOOTSTRAP_CHUNK_CELLS = 1_000_000
# Each candidate start costs a scan of the text; degenerate outputs ("{{{{...") must stay cheap.
_MAX_SPAN_STARTS = 32


def _check_lengths(preds: Sequence[Any], refs: Sequence[Any]) -> None:
    if len(preds) != len(refs):
        raise ValueError(f"{len(preds)} predictions but {len(refs)} references; they must pair up")


def _mean(values: Sequence[float]) -> float:
    # An empty evaluation scores 0 rather than raising, so a report can still be written.
    return float(sum(values) / len(values)) if values else 0.0


# --------------------------------------------------------------------------- SQuAD-style text match


def normalize_answer(s: str) -> str:
    """Lower-case, drop punctuation, the articles a/an/the and extra whitespace (SQuAD v1.1).

    Args:
        s: Any text.

    Returns:
        The normalised text, tokens separated by single spaces.
    """
    s = "".join(ch for ch in s.lower() if ch not in _PUNCT)
    return " ".join(_ARTICLES.sub(" ", s).split())


def _as_refs(ref: str | Sequence[str]) -> list[str]:
    # SQuAD scores against several gold answers and keeps the best; a plain string is one answer.
    return [ref] if isinstance(ref, str) else list(ref)


def _em_one(pred: str, ref: str) -> float:
    return float(normalize_answer(pred) == normalize_answer(ref))


def _f1_one(pred: str, ref: str) -> float:
    pred_tokens = normalize_answer(pred).split()
    ref_tokens = normalize_answer(ref).split()
    num_same = sum((Counter(pred_tokens) & Counter(ref_tokens)).values())
    if num_same == 0:  # v1.1: also 0 when both sides are empty
        return 0.0
    precision, recall = num_same / len(pred_tokens), num_same / len(ref_tokens)
    return 2 * precision * recall / (precision + recall)


def _exact_match_scores(preds: Sequence[str], refs: Sequence[str | Sequence[str]]) -> list[float]:
    _check_lengths(preds, refs)
    return [max(_em_one(p, r) for r in _as_refs(rs)) for p, rs in zip(preds, refs, strict=True)]


def _token_f1_scores(preds: Sequence[str], refs: Sequence[str | Sequence[str]]) -> list[float]:
    _check_lengths(preds, refs)
    return [max(_f1_one(p, r) for r in _as_refs(rs)) for p, rs in zip(preds, refs, strict=True)]


def exact_match(preds: Sequence[str], refs: Sequence[str | Sequence[str]]) -> float:
    """Fraction of predictions equal to a reference after :func:`normalize_answer` (SQuAD v1.1).

    Args:
        preds: Generated answers.
        refs: One gold answer per prediction, or a list of acceptable answers (the best one counts).

    Returns:
        Exact match in [0, 1]; 0.0 for empty input.
    """
    return _mean(_exact_match_scores(preds, refs))


def token_f1(preds: Sequence[str], refs: Sequence[str | Sequence[str]]) -> float:
    """Mean bag-of-tokens F1 between normalised prediction and reference (SQuAD v1.1).

    Args:
        preds: Generated answers.
        refs: One gold answer per prediction, or a list of acceptable answers (the best one counts).

    Returns:
        Mean token F1 in [0, 1]; 0.0 for empty input.
    """
    return _mean(_token_f1_scores(preds, refs))


# --------------------------------------------------------------------------- labels


def _normalize_label(s: str) -> str:
    # Unlike SQuAD normalisation, articles stay (so "A"/"B" multiple-choice labels survive) and
    # punctuation splits words (so "label:positive" still contains "positive").
    return " ".join("".join(" " if ch in _PUNCT else ch for ch in s.lower()).split())


def _word_position(label_norm: str, pred_norm: str) -> int:
    # Whole-word match on the normalised (single-space separated) text: bounded by spaces or ends.
    m = re.search(rf"(?<!\S){re.escape(label_norm)}(?!\S)", pred_norm)
    return m.start() if m else -1


def map_to_label(pred: str, labels: Sequence[str]) -> str:
    """Map a generated answer onto one of ``labels``.

    Text is normalised by lower-casing, turning punctuation into spaces and collapsing whitespace
    (articles are kept, so single-letter choices work). An exact normalised match wins; otherwise the
    label whose normalised form occurs earliest as whole words in the normalised prediction (ties: the
    longer label, then ``labels`` order); otherwise :data:`INVALID_LABEL`.

    Args:
        pred: The generated text, e.g. ``"Sentiment: Positive."``.
        labels: The label set.

    Returns:
        One of ``labels`` or ``"<invalid>"``.
    """
    pred_norm = _normalize_label(pred)
    normed = [(_normalize_label(label), label) for label in labels]
    for label_norm, label in normed:
        if label_norm == pred_norm:
            return label
    hits = []
    for order, (label_norm, label) in enumerate(normed):
        pos = _word_position(label_norm, pred_norm) if label_norm else -1
        if pos >= 0:
            hits.append((pos, -len(label_norm), order, label))
    return min(hits)[3] if hits else INVALID_LABEL


def _canonical_refs(refs: Sequence[str], labels: Sequence[str]) -> list[str]:
    # References that differ from a label only in case/punctuation are that label.
    by_norm = {_normalize_label(label): label for label in labels}
    return [by_norm.get(_normalize_label(r), r) for r in refs]


def _label_predictions(
    preds: Sequence[str], refs: Sequence[str], labels: Sequence[str] | None
) -> tuple[list[str], list[str], list[str]]:
    _check_lengths(preds, refs)
    labels = sorted(set(refs)) if labels is None else list(labels)
    mapped = [map_to_label(p, labels) for p in preds]
    return mapped, _canonical_refs(refs, labels), labels


def _label_result(
    preds: Sequence[str], refs: Sequence[str], labels: Sequence[str] | None
) -> tuple[dict[str, float], list[float]]:
    """(label metrics, per-example correctness)."""
    from sklearn.metrics import f1_score

    if not preds:
        return {"accuracy": 0.0, "macro_f1": 0.0, "micro_f1": 0.0, "invalid_rate": 0.0}, []
    mapped, gold, labels = _label_predictions(preds, refs, labels)
    correct = [float(p == g) for p, g in zip(mapped, gold, strict=True)]
    f1 = {
        avg: f1_score(gold, mapped, labels=labels, average=avg, zero_division=0) for avg in ("macro", "micro")
    }
    metrics = {
        "accuracy": _mean(correct),
        "macro_f1": float(f1["macro"]),
        "micro_f1": float(f1["micro"]),
        "invalid_rate": _mean([float(p == INVALID_LABEL) for p in mapped]),
    }
    return metrics, correct


def label_metrics(
    preds: Sequence[str], refs: Sequence[str], labels: Sequence[str] | None = None
) -> dict[str, float]:
    """Accuracy, macro/micro F1 and the rate of answers that map to no label.

    Predictions are mapped with :func:`map_to_label`; ``"<invalid>"`` always counts as wrong. F1 is
    computed by scikit-learn over ``labels`` only, so an invalid answer is a false negative for its
    true class but a false positive for none (hence micro F1 can exceed accuracy).

    Args:
        preds: Generated answers.
        refs: Gold labels.
        labels: The label set; defaults to the sorted distinct references.

    Returns:
        ``{"accuracy", "macro_f1", "micro_f1", "invalid_rate"}``, each in [0, 1].
    """
    return _label_result(preds, refs, labels)[0]


# --------------------------------------------------------------------------- JSON


def _span_end(text: str, start: int) -> int | None:
    """Index just past the ``}`` closing the ``{`` at ``start``; braces inside JSON strings don't count."""
    depth, in_str, escaped = 0, False, False
    for i in range(start, len(text)):
        ch = text[i]
        if in_str:
            if escaped:
                escaped = False
            elif ch == "\\":
                escaped = True
            elif ch == '"':
                in_str = False
        elif ch == '"':
            in_str = True
        elif ch in "{}":
            depth += 1 if ch == "{" else -1
            if depth == 0:
                return i + 1
    return None


def _balanced_spans(text: str):
    """Yield the balanced ``{...}`` substrings of ``text``, by start position (at most a bounded few)."""
    starts = [i for i, ch in enumerate(text) if ch == "{"][:_MAX_SPAN_STARTS]
    for start in starts:
        if (end := _span_end(text, start)) is not None:
            yield text[start:end]


def _loads_object(text: str) -> dict[str, Any] | None:
    try:
        obj = json.loads(text)
    except (ValueError, RecursionError):
        return None
    return obj if isinstance(obj, dict) else None


def parse_json_object(text: Any) -> dict[str, Any] | None:
    """Parse a JSON object out of generated text, tolerating code fences and surrounding prose.

    Tries, in order: the whole text; the body of the first markdown code fence; the first balanced
    ``{...}`` that parses.

    Args:
        text: Model output (a dict is returned as is).

    Returns:
        The object, or None when no JSON object can be found.
    """
    if isinstance(text, dict):
        return text
    if not isinstance(text, str):
        return None
    text = text.strip()
    if (obj := _loads_object(text)) is not None:
        return obj
    fence = _FENCE.search(text)
    if fence and (obj := _loads_object(fence.group(1).strip())) is not None:
        return obj
    # Prefer an object inside the fence; the prose around it is the fallback.
    bodies = (fence.group(1), text) if fence else (text,)
    spans = (span for body in bodies for span in _balanced_spans(body))
    return next((o for span in spans if (o := _loads_object(span)) is not None), None)


def _norm_value(v: Any) -> Any:
    """Comparable form of a JSON value: strings case/whitespace-folded, containers recursively."""
    if isinstance(v, str):
        return ("s", " ".join(v.lower().split()))
    if isinstance(v, bool):  # keep true != 1
        return ("b", v)
    if isinstance(v, (int, float)):
        return ("n", v)
    if isinstance(v, list):
        return ("l", tuple(_norm_value(x) for x in v))
    if isinstance(v, dict):
        return ("d", tuple(sorted((k, _norm_value(x)) for k, x in v.items())))
    return ("z", v)  # None


def _json_example(pred: Any, ref: Any) -> tuple[dict[str, bool], bool, bool]:
    """Score one pair: (field -> correct, prediction is a JSON object, whole example exact)."""
    pred_obj, ref_obj = parse_json_object(pred), parse_json_object(ref)
    if ref_obj is None:  # a non-JSON reference has no fields: fall back to a text comparison
        exact = isinstance(pred, str) and isinstance(ref, str) and _em_one(pred, ref) == 1.0
        return {}, pred_obj is not None, exact
    missing = object()
    fields = {
        k: pred_obj is not None and _norm_value(pred_obj.get(k, missing)) == _norm_value(v)
        for k, v in ref_obj.items()
    }
    return fields, pred_obj is not None, pred_obj is not None and all(fields.values())


def _json_rows(preds: Sequence[Any], refs: Sequence[Any]) -> list[tuple[dict[str, bool], bool, bool]]:
    _check_lengths(preds, refs)
    return [_json_example(p, r) for p, r in zip(preds, refs, strict=True)]


def _per_field(rows: Sequence[tuple[dict[str, bool], bool, bool]]) -> dict[str, float]:
    hits: Counter[str] = Counter()
    seen: Counter[str] = Counter()
    for fields, _, _ in rows:
        seen.update(fields.keys())
        hits.update(k for k, ok in fields.items() if ok)
    return {k: hits[k] / seen[k] for k in seen}


def json_metrics(preds: Sequence[Any], refs: Sequence[Any]) -> dict[str, Any]:
    """Validity and field-level accuracy of generated JSON objects.

    Values are equal when, after normalisation, strings match ignoring case and whitespace, numbers
    match exactly (``"3"`` is not ``3``, ``true`` is not ``1``) and null matches null. Only the
    reference's top-level fields are scored; extra predicted fields are ignored. A prediction that
    is not a JSON object scores 0 on every field.

    Args:
        preds: Generated texts (or already-parsed dicts).
        refs: Reference JSON texts or dicts.

    Returns:
        ``json_valid``, ``field_accuracy`` (micro-average over all reference fields), ``exact_match``
        (all reference fields right) and ``per_field`` ({field: accuracy}).
    """
    return _json_summary(_json_rows(preds, refs))


def _json_summary(rows: Sequence[tuple[dict[str, bool], bool, bool]]) -> dict[str, Any]:
    n_fields = sum(len(f) for f, _, _ in rows)
    return {
        "json_valid": _mean([float(valid) for _, valid, _ in rows]),
        "field_accuracy": sum(sum(f.values()) for f, _, _ in rows) / n_fields if n_fields else 0.0,
        "exact_match": _mean([float(exact) for _, _, exact in rows]),
        "per_field": _per_field(rows),
    }


# --------------------------------------------------------------------------- ROUGE, perplexity


@lru_cache(maxsize=1)
def _rouge_scorer():
    from rouge_score import rouge_scorer

    return rouge_scorer.RougeScorer(["rouge1", "rouge2", "rougeL"], use_stemmer=True)


def _rouge_rows(preds: Sequence[str], refs: Sequence[str]) -> list[dict[str, float]]:
    _check_lengths(preds, refs)
    scorer = _rouge_scorer()
    # rouge_score's signature is score(target, prediction).
    return [{k: s.fmeasure for k, s in scorer.score(r, p).items()} for p, r in zip(preds, refs, strict=True)]


def rouge_scores(preds: Sequence[str], refs: Sequence[str]) -> dict[str, float]:
    """Mean ROUGE-1/2/L F-measures (``rouge_score`` package, Porter stemming), as fractions.

    Note that ``rouge_score``'s default tokenizer keeps only ASCII letters and digits.

    Args:
        preds: Generated texts.
        refs: Reference texts.

    Returns:
        ``{"rouge1", "rouge2", "rougeL"}`` in [0, 1].
    """
    rows = _rouge_rows(preds, refs)
    return {k: _mean([row[k] for row in rows]) for k in ("rouge1", "rouge2", "rougeL")}


def rouge_l(preds: Sequence[str], refs: Sequence[str]) -> float:
    """Mean ROUGE-L F-measure in [0, 1] (see :func:`rouge_scores`)."""
    return rouge_scores(preds, refs)["rougeL"]


def perplexity(mean_nll: float) -> float:
    """``exp(mean_nll)``, returning ``inf`` instead of raising when it overflows.

    Args:
        mean_nll: Mean negative log-likelihood per token, in nats.

    Returns:
        The perplexity (``nan`` passes through).
    """
    if math.isnan(mean_nll):
        return float("nan")
    return math.exp(mean_nll) if mean_nll <= _MAX_EXP_ARG else float("inf")


# --------------------------------------------------------------------------- bootstrap


def _resampled_means(scores: np.ndarray, weights: np.ndarray, n_resamples: int, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    n = len(scores)
    chunk = max(1, _BOOTSTRAP_CHUNK_CELLS // n)
    out = []
    for start in range(0, n_resamples, chunk):
        idx = rng.integers(0, n, size=(min(chunk, n_resamples - start), n))  # (resamples, n)
        w = weights[idx]
        total = w.sum(axis=1)
        # A ratio estimator, so weighted scores (e.g. fields per example) bootstrap their micro-average.
        out.append(np.divide((w * scores[idx]).sum(axis=1), total, out=np.zeros(len(total)), where=total > 0))
    return np.concatenate(out)


def bootstrap_ci(
    per_example_scores: Sequence[float],
    n_resamples: int = 1000,
    alpha: float = 0.05,
    seed: int = 0,
    weights: Sequence[float] | None = None,
) -> tuple[float, float]:
    """Percentile-bootstrap confidence interval for the mean of per-example scores.

    Args:
        per_example_scores: One score per example.
        n_resamples: Number of bootstrap resamples.
        alpha: 1 - confidence level (0.05 gives a 95% interval).
        seed: Seed of the resampling generator (the interval is deterministic for a seed).
        weights: Optional per-example weights; the statistic is then the weighted mean.

    Returns:
        ``(lo, hi)``; ``(0.0, 0.0)`` for no scores.
    """
    scores = np.asarray(per_example_scores, dtype=np.float64)
    if scores.size == 0:
        return 0.0, 0.0
    w = np.ones_like(scores) if weights is None else np.asarray(weights, dtype=np.float64)
    if w.shape != scores.shape:
        raise ValueError(f"{w.size} weights for {scores.size} scores")
    means = _resampled_means(scores, w, n_resamples, seed)
    lo, hi = np.quantile(means, [alpha / 2, 1 - alpha / 2])
    return float(lo), float(hi)


# --------------------------------------------------------------------------- tasks


def infer_task(refs: Sequence[Any]) -> str:
    """Guess the task kind from the references.

    ``"json"`` when at least 90% parse as JSON objects; ``"label"`` when there are at most 20
    distinct references of at most 4 words each; otherwise ``"text"``. A short-answer QA set with
    few examples can look like labels: pass the task explicitly when you know it.

    Args:
        refs: Reference answers.

    Returns:
        ``"json"``, ``"label"`` or ``"text"``.
    """
    if not refs:
        return "text"
    if sum(parse_json_object(r) is not None for r in refs) >= 0.9 * len(refs):
        return "json"
    distinct = {str(r).strip() for r in refs}
    if len(distinct) <= 20 and all(len(r.split()) <= 4 for r in distinct):
        return "label"
    return "text"


def compute_task_metrics(
    task: str, preds: Sequence[Any], refs: Sequence[Any], labels: Sequence[str] | None = None, *,
    probs: Any = None, metrics: Sequence[str] = (), bootstrap: Any = None,
) -> dict[str, Any]:
    """All metrics of one task kind, each with a bootstrap interval, and the headline metric named.

    The metric sets are :data:`tunelab.evaluation.registry.TASK_METRICS`: json ``field_accuracy``,
    ``json_valid``, ``exact_match`` (all fields right); label ``accuracy``, ``macro_f1``, ``micro_f1``,
    ``macro_precision``, ``macro_recall`` (+ ``roc_auc`` with ``probs``); text ``rougeL``, ``rouge1``,
    ``rouge2``, ``exact_match``, ``token_f1`` (SQuAD). Every one gets ``<name>_ci``, computed from the same
    resamples of the examples.

    Args:
        task: ``"json"``, ``"label"``, ``"text"``, or ``"auto"`` to use :func:`infer_task`.
        preds: Generated answers (label tasks: mapped onto ``labels`` with :func:`map_to_label`).
        refs: References, one per prediction.
        labels: Label set for ``"label"`` (default: sorted distinct references); ignored otherwise.
        probs: (n, len(labels)) label probabilities (label scoring by likelihood): adds ``roc_auc``.
        metrics: Extra metric names from :data:`METRICS` (e.g. ``["bleu", "chrf"]``).
        bootstrap: ``BootstrapSpec`` or ``{"n_resamples", "confidence", "seed"}`` (default 1000, 0.95, 0).

    Returns:
        The metrics (fractions in [0, 1]) with ``<name>_ci`` ([lo, hi]) plus ``main`` (headline metric
        name), ``task`` and ``n_examples``; label tasks add ``invalid_rate``, json tasks ``per_field``.

    Raises:
        ValueError: Unknown task, or predictions and references of different lengths.
        TunelabError: An unknown metric name, or ``roc_auc`` without probabilities.
    """
    from tunelab.evaluation.registry import compute_task_metrics as compute

    return compute(task, preds, refs, labels, probs=probs, metrics=metrics, bootstrap=bootstrap)


# --------------------------------------------------------------------------- single metrics


def accuracy(preds: Sequence[str], refs: Sequence[str], labels: Sequence[str] | None = None) -> float:
    """Fraction of predictions that map (:func:`map_to_label`) to their reference label."""
    return label_metrics(preds, refs, labels)["accuracy"] if preds else 0.0


def _registry_value(name: str, preds: Sequence[Any], refs: Sequence[Any], labels=None, probs=None) -> float:
    from tunelab.evaluation.registry import METRICS as registry
    from tunelab.evaluation.registry import Batch

    _check_lengths(preds, refs)
    if not preds:
        return 0.0
    return float(registry[name].build(Batch(preds, refs, labels, probs))(np.ones((1, len(preds))))[0])


def precision(preds: Sequence[str], refs: Sequence[str], labels: Sequence[str] | None = None,
              average: str = "macro") -> float:
    """Label precision, ``average`` ``"macro"`` or ``"micro"`` (= scikit-learn with ``labels=``, zero_division=0)."""
    return _registry_value(f"{average}_precision", preds, refs, labels)


def recall(preds: Sequence[str], refs: Sequence[str], labels: Sequence[str] | None = None,
           average: str = "macro") -> float:
    """Label recall, macro or micro (see :func:`precision`)."""
    return _registry_value(f"{average}_recall", preds, refs, labels)


def f1(preds: Sequence[str], refs: Sequence[str], labels: Sequence[str] | None = None,
       average: str = "macro") -> float:
    """Label F1, macro or micro (see :func:`precision`)."""
    return _registry_value(f"{average}_f1", preds, refs, labels)


def roc_auc(refs: Sequence[str], probs: Any, labels: Sequence[str]) -> float:
    """ROC-AUC from label probabilities: binary (``labels[1]`` positive) or one-vs-rest macro.

    Args:
        refs: Gold labels.
        probs: (n, len(labels)) probabilities (or scores) in ``labels`` order.
        labels: The label set.

    Returns:
        The AUC, or NaN where it is undefined (a single class present).
    """
    return _registry_value("roc_auc", list(refs), refs, labels, np.asarray(probs, dtype=np.float64))


def bleu(preds: Sequence[str], refs: Sequence[str | Sequence[str]]) -> float:
    """Corpus BLEU of sacrebleu (13a tokeniser, exponential smoothing) as a fraction (score / 100)."""
    return _registry_value("bleu", preds, refs)


def chrf(preds: Sequence[str], refs: Sequence[str | Sequence[str]]) -> float:
    """Corpus chrF of sacrebleu (character 6-grams, beta 2) as a fraction (score / 100)."""
    return _registry_value("chrf", preds, refs)


def __getattr__(name: str) -> Any:
    # METRICS lives in registry.py, which imports this module; resolving it lazily avoids the cycle.
    if name == "METRICS":
        from tunelab.evaluation.registry import METRICS as registry

        return registry
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
