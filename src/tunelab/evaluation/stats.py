"""Corpus metrics as functions of per-example weights, so that one code path gives the point estimate
(every weight 1) and every bootstrap resample (weights = how often each example was drawn).

Most corpus metrics are a function of summed per-example statistics (accuracy: hits and rows; F1:
per-class true positives, predicted and gold counts; BLEU and chrF: sacrebleu's n-gram statistics), so a
resample's value is ``value(weights @ stats)``. ROC-AUC is not a sum; :func:`weighted_roc_auc` computes the
Mann-Whitney statistic with example weights. The resampled draws are those of the original
``bootstrap_ci`` (same generator, same chunks), so a seed gives the same interval as before.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence

import numpy as np

__all__ = [
    "bleu_stats",
    "chrf_stats",
    "confusion_stats",
    "f1_values",
    "percentile_interval",
    "precision_values",
    "recall_values",
    "resample_weights",
    "sacrebleu_values",
    "weighted_roc_auc",
]

# Bound the (resamples x n) matrices to about 8 MB per chunk.
_CHUNK_CELLS = 1_000_000


def resample_weights(n: int, n_resamples: int, seed: int) -> Iterator[np.ndarray]:
    """Bootstrap resamples of ``n`` examples as multiplicity matrices, in chunks.

    Args:
        n: Number of examples (at least 1).
        n_resamples: Total resamples.
        seed: Seed of ``numpy.random.default_rng``.

    Yields:
        ``(chunk, n)`` float arrays: row r counts how often each example is in resample r (rows sum to n).
    """
    rng = np.random.default_rng(seed)
    chunk = max(1, _CHUNK_CELLS // n)
    for start in range(0, n_resamples, chunk):
        idx = rng.integers(0, n, size=(min(chunk, n_resamples - start), n))  # (resamples, n)
        counts = np.zeros(idx.shape, dtype=np.float64)
        np.add.at(counts, (np.arange(idx.shape[0])[:, None], idx), 1.0)
        yield counts


def percentile_interval(values: np.ndarray, confidence: float) -> tuple[float, float]:
    """The central ``confidence`` interval of bootstrap values (percentile method; NaNs dropped)."""
    values = values[~np.isnan(values)]
    if values.size == 0:
        return float("nan"), float("nan")
    alpha = 1.0 - confidence
    lo, hi = np.quantile(values, [alpha / 2, 1 - alpha / 2])
    return float(lo), float(hi)


# --------------------------------------------------------------------------- classification


def confusion_stats(gold: Sequence[str], pred: Sequence[str], labels: Sequence[str]) -> np.ndarray:
    """Per-example one-hot counts ``[tp_c..., predicted_c..., gold_c...]`` over ``labels``, shape (n, 3k).

    A prediction outside ``labels`` (e.g. an invalid answer) is a false negative of its gold class and a
    false positive of none, as scikit-learn counts it when given ``labels=``.
    """
    index = {label: i for i, label in enumerate(labels)}
    k = len(labels)
    out = np.zeros((len(gold), 3 * k))
    for row, (g, p) in enumerate(zip(gold, pred, strict=True)):
        gi, pi = index.get(g), index.get(p)
        if pi is not None:
            out[row, k + pi] = 1.0
        if gi is not None:
            out[row, 2 * k + gi] = 1.0
            if gi == pi:
                out[row, gi] = 1.0
    return out


def _split(summed: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    k = summed.shape[-1] // 3
    return summed[..., :k], summed[..., k:2 * k], summed[..., 2 * k:]


def _ratio(num: np.ndarray, den: np.ndarray) -> np.ndarray:
    # scikit-learn's zero_division=0: an undefined ratio counts as 0.
    return np.divide(num, den, out=np.zeros(np.broadcast(num, den).shape), where=den > 0)


def _averaged(summed: np.ndarray, average: str, fn: Callable[[np.ndarray, np.ndarray, np.ndarray], np.ndarray]):
    tp, pred, gold = _split(summed)
    if average == "micro":
        return fn(tp.sum(-1), pred.sum(-1), gold.sum(-1))
    return fn(tp, pred, gold).mean(-1)


def precision_values(summed: np.ndarray, average: str) -> np.ndarray:
    """Precision from summed :func:`confusion_stats` (``average``: ``"macro"`` or ``"micro"``)."""
    return _averaged(summed, average, lambda tp, pred, gold: _ratio(tp, pred))


def recall_values(summed: np.ndarray, average: str) -> np.ndarray:
    """Recall from summed :func:`confusion_stats`."""
    return _averaged(summed, average, lambda tp, pred, gold: _ratio(tp, gold))


def f1_values(summed: np.ndarray, average: str) -> np.ndarray:
    """F1 from summed :func:`confusion_stats` (2 tp / (predicted + gold), 0 where undefined)."""
    return _averaged(summed, average, lambda tp, pred, gold: _ratio(2 * tp, pred + gold))


def _binary_auc(weights: np.ndarray, positive: np.ndarray, scores: np.ndarray) -> np.ndarray:
    """Weighted Mann-Whitney AUC of one class vs the rest, ties counting one half; (R,) (NaN if undefined)."""
    uniq, inverse = np.unique(scores, return_inverse=True)
    onehot = np.zeros((len(scores), len(uniq)))
    onehot[np.arange(len(scores)), inverse] = 1.0
    pos_w = (weights * positive) @ onehot  # (R, distinct scores), ascending score
    neg_w = (weights * ~positive) @ onehot
    below = np.cumsum(neg_w, axis=1) - neg_w
    num = (pos_w * (below + 0.5 * neg_w)).sum(axis=1)
    den = pos_w.sum(axis=1) * neg_w.sum(axis=1)
    return np.divide(num, den, out=np.full(len(num), np.nan), where=den > 0)


def weighted_roc_auc(weights: np.ndarray, gold: Sequence[int], probs: np.ndarray) -> np.ndarray:
    """ROC-AUC under example weights: binary (2 classes, class 1 positive) or one-vs-rest macro.

    Equals ``sklearn.metrics.roc_auc_score(gold, probs[:, 1])`` (binary) or
    ``roc_auc_score(gold, probs, multi_class="ovr", average="macro")`` when every weight is 1 and every
    class occurs; classes absent from a resample are left out of its macro average.

    Args:
        weights: (R, n) example multiplicities.
        gold: Gold class index per example.
        probs: (n, k) class probabilities (or any scores; only their order matters).

    Returns:
        (R,) AUC per resample (NaN where no class has both positives and negatives).
    """
    gold = np.asarray(gold)
    k = probs.shape[1]
    if k == 2:
        return _binary_auc(weights, gold == 1, probs[:, 1])
    per_class = np.stack([_binary_auc(weights, gold == c, probs[:, c]) for c in range(k)], axis=1)  # (R, k)
    with np.errstate(invalid="ignore"):
        counts = (~np.isnan(per_class)).sum(axis=1)
        total = np.nansum(per_class, axis=1)
    return np.divide(total, counts, out=np.full(len(total), np.nan), where=counts > 0)


# --------------------------------------------------------------------------- sacrebleu


def _ref_streams(refs: Sequence[str | Sequence[str]]) -> list[list[str]]:
    per_row = [[r] if isinstance(r, str) else list(r) for r in refs]
    counts = {len(r) for r in per_row}
    if len(counts) > 1:
        raise ValueError(f"BLEU/chrF need the same number of references per example, got {sorted(counts)}")
    width = counts.pop() if counts else 1
    return [[row[i] for row in per_row] for i in range(width)]


def _sacrebleu_metric(name: str):
    from sacrebleu.metrics import BLEU, CHRF

    return BLEU() if name == "bleu" else CHRF()


def _stats(name: str, preds: Sequence[str], refs: Sequence[str | Sequence[str]]) -> np.ndarray:
    metric = _sacrebleu_metric(name)
    rows = metric._extract_corpus_statistics(list(preds), _ref_streams(refs))
    return np.asarray(rows, dtype=np.float64).reshape(len(preds), -1)


def bleu_stats(preds: Sequence[str], refs: Sequence[str | Sequence[str]]) -> np.ndarray:
    """sacrebleu's per-sentence BLEU statistics (default BLEU: 13a tokeniser, exp smoothing), (n, 10)."""
    return _stats("bleu", preds, refs)


def chrf_stats(preds: Sequence[str], refs: Sequence[str | Sequence[str]]) -> np.ndarray:
    """sacrebleu's per-sentence chrF statistics (default chrF: char order 6, beta 2), (n, 18)."""
    return _stats("chrf", preds, refs)


def sacrebleu_values(name: str, summed: np.ndarray) -> np.ndarray:
    """Corpus BLEU or chrF (as fractions in [0, 1]) from summed statistics, one per row of ``summed``."""
    metric = _sacrebleu_metric(name)
    rows = np.atleast_2d(summed)
    # sacrebleu reads lengths as ints; the sums of integer counts are whole numbers.
    return np.array([metric._compute_score_from_stats(np.rint(r).astype(np.int64).tolist()).score / 100
                     for r in rows])
