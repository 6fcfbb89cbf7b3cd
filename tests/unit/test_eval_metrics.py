"""Every metric against its reference implementation on fixed inputs; the registry; bootstrap intervals."""

from __future__ import annotations

import math
import re
import string
from collections import Counter

import numpy as np
import pytest
import sacrebleu
from rouge_score import rouge_scorer
from sklearn.metrics import accuracy_score, precision_recall_fscore_support, roc_auc_score

from tunelab.errors import TunelabError
from tunelab.evaluation import metrics as M
from tunelab.evaluation.registry import METRICS, TASK_METRICS, mean_metrics, perplexity_metrics

LABELS = ["anger", "fear", "joy", "love", "sadness", "surprise"]
GOLD = ["joy", "sadness", "anger", "joy", "fear", "love", "sadness", "joy", "surprise", "anger", "fear", "joy",
        "sadness", "love", "joy", "anger"]
PRED = ["joy", "joy", "anger", "I think joy", "sadness", "love", "sadness", "Sadness.", "joy", "fear", "fear",
        "no idea", "sadness", "joy", "JOY", "anger"]  # "no idea" maps to no label


def _mapped():
    return [M.map_to_label(p, LABELS) for p in PRED]


# ----------------------------------------------------------------------------- classification


def test_accuracy_equals_sklearn():
    assert M.accuracy(PRED, GOLD, LABELS) == pytest.approx(accuracy_score(GOLD, _mapped()), abs=1e-12)


@pytest.mark.parametrize("average", ["macro", "micro"])
def test_precision_recall_f1_equal_sklearn(average):
    p, r, f, _ = precision_recall_fscore_support(GOLD, _mapped(), labels=LABELS, average=average, zero_division=0)
    assert M.precision(PRED, GOLD, LABELS, average) == pytest.approx(p, abs=1e-12)
    assert M.recall(PRED, GOLD, LABELS, average) == pytest.approx(r, abs=1e-12)
    assert M.f1(PRED, GOLD, LABELS, average) == pytest.approx(f, abs=1e-12)


def test_f1_with_a_class_never_seen_equals_sklearn():
    labels = ["a", "b", "c"]  # c is neither gold nor predicted: counts 0 in the macro average, as sklearn does
    gold, pred = ["a", "a", "b", "b"], ["a", "b", "b", "b"]
    _, _, f, _ = precision_recall_fscore_support(gold, pred, labels=labels, average="macro", zero_division=0)
    assert M.f1(pred, gold, labels) == pytest.approx(f, abs=1e-12)


def _probs(n, k, seed=0):
    rng = np.random.default_rng(seed)
    x = rng.random((n, k))
    x[3] = x[4]  # ties between rows
    return x / x.sum(axis=1, keepdims=True)


def test_roc_auc_multiclass_equals_sklearn_ovr_macro():
    probs = _probs(len(GOLD), len(LABELS))
    expected = roc_auc_score(GOLD, probs, multi_class="ovr", average="macro", labels=LABELS)
    assert M.roc_auc(GOLD, probs, LABELS) == pytest.approx(expected, abs=1e-12)


def test_roc_auc_binary_equals_sklearn_with_ties():
    gold = ["neg", "pos", "pos", "neg", "pos", "neg", "neg", "pos"]
    p_pos = np.array([0.1, 0.8, 0.4, 0.4, 0.9, 0.2, 0.8, 0.4])  # tied scores across classes
    probs = np.stack([1 - p_pos, p_pos], axis=1)
    expected = roc_auc_score([g == "pos" for g in gold], p_pos)
    assert M.roc_auc(gold, probs, ["neg", "pos"]) == pytest.approx(expected, abs=1e-12)
    assert math.isnan(M.roc_auc(["pos", "pos"], probs[:2], ["neg", "pos"]))  # one class: undefined


# ----------------------------------------------------------------------------- SQuAD v1.1


def squad_normalize_answer(s):
    """evaluate-v1.1.py, verbatim logic."""
    def remove_articles(text):
        return re.sub(r"\b(a|an|the)\b", " ", text)

    def white_space_fix(text):
        return " ".join(text.split())

    def remove_punc(text):
        exclude = set(string.punctuation)
        return "".join(ch for ch in text if ch not in exclude)

    def lower(text):
        return text.lower()

    return white_space_fix(remove_articles(remove_punc(lower(s))))


def squad_f1_score(prediction, ground_truth):
    prediction_tokens = squad_normalize_answer(prediction).split()
    ground_truth_tokens = squad_normalize_answer(ground_truth).split()
    common = Counter(prediction_tokens) & Counter(ground_truth_tokens)
    num_same = sum(common.values())
    if num_same == 0:
        return 0
    precision = 1.0 * num_same / len(prediction_tokens)
    recall = 1.0 * num_same / len(ground_truth_tokens)
    return (2 * precision * recall) / (precision + recall)


def squad_exact_match_score(prediction, ground_truth):
    return squad_normalize_answer(prediction) == squad_normalize_answer(ground_truth)


def metric_max_over_ground_truths(metric_fn, prediction, ground_truths):
    return max(metric_fn(prediction, gt) for gt in ground_truths)


SQUAD_PRED = ["The Eiffel Tower", "in 1969.", "Denver Broncos", "a cat sat on the mat", "", "Paris, France",
              "the the the", "Saint-Étienne"]
SQUAD_REFS = [["Eiffel Tower"], ["1969", "July 1969"], ["Carolina Panthers"], ["the cat sat"], ["nothing"],
              ["Paris"], ["the"], ["Saint Étienne", "Saint-Étienne"]]


def test_exact_match_and_token_f1_equal_official_squad_script():
    em = np.mean([metric_max_over_ground_truths(squad_exact_match_score, p, g)
                  for p, g in zip(SQUAD_PRED, SQUAD_REFS, strict=True)])
    f1 = np.mean([metric_max_over_ground_truths(squad_f1_score, p, g)
                  for p, g in zip(SQUAD_PRED, SQUAD_REFS, strict=True)])
    assert M.exact_match(SQUAD_PRED, SQUAD_REFS) == pytest.approx(em, abs=1e-12)
    assert M.token_f1(SQUAD_PRED, SQUAD_REFS) == pytest.approx(f1, abs=1e-12)


# ----------------------------------------------------------------------------- BLEU, chrF, ROUGE

HYPS = ["the cat is on the mat", "there is a dog in the garden today", "hello world", "a completely unrelated text",
        "The quick brown fox jumps over the lazy dog."]
REFS = ["the cat sat on the mat", "a dog is in the garden", "hello there world", "something else entirely here",
        "The quick brown fox jumped over the lazy dog."]
REFS2 = ["there is a cat on the mat", "the dog is in the garden today", "hello world", "nothing related",
         "A quick brown fox jumps over a lazy dog."]


def test_bleu_and_chrf_equal_sacrebleu_corpus_scores():
    assert M.bleu(HYPS, REFS) == pytest.approx(sacrebleu.corpus_bleu(HYPS, [REFS]).score / 100, abs=1e-12)
    assert M.chrf(HYPS, REFS) == pytest.approx(sacrebleu.corpus_chrf(HYPS, [REFS]).score / 100, abs=1e-12)
    multi = [[a, b] for a, b in zip(REFS, REFS2, strict=True)]
    assert M.bleu(HYPS, multi) == pytest.approx(sacrebleu.corpus_bleu(HYPS, [REFS, REFS2]).score / 100, abs=1e-12)
    assert M.chrf(HYPS, multi) == pytest.approx(sacrebleu.corpus_chrf(HYPS, [REFS, REFS2]).score / 100, abs=1e-12)
    with pytest.raises(ValueError, match="same number of references"):
        M.bleu(HYPS[:2], [["a", "b"], ["c"]])


def test_rouge_equals_rouge_score():
    scorer = rouge_scorer.RougeScorer(["rouge1", "rouge2", "rougeL"], use_stemmer=True)
    rows = [scorer.score(r, h) for h, r in zip(HYPS, REFS, strict=True)]
    out = M.compute_task_metrics("text", HYPS, REFS)
    for k in ("rouge1", "rouge2", "rougeL"):
        assert out[k] == pytest.approx(np.mean([row[k].fmeasure for row in rows]), abs=1e-12)


# ----------------------------------------------------------------------------- JSON


def test_json_validity_and_per_field_accuracy():
    refs = ['{"name": "Ann", "urgency": "high", "n": 3}'] * 4
    preds = ['{"name": "ann", "urgency": "high", "n": 3}',  # case-folded strings match
             'Here: {"name": "Bob", "urgency": "high", "n": "3"}',  # "3" is not 3
             "not json at all",
             '```json\n{"name": "Ann", "urgency": "low"}\n```']  # n missing
    out = M.compute_task_metrics("json", preds, refs)
    assert out["json_valid"] == 0.75
    assert out["field_accuracy"] == pytest.approx((3 + 1 + 0 + 1) / 12)
    assert out["exact_match"] == 0.25
    assert out["per_field"] == {"name": 0.5, "urgency": 0.5, "n": 0.25}
    assert {"field_accuracy_ci", "json_valid_ci", "exact_match_ci"} <= set(out)


# ----------------------------------------------------------------------------- registry


def test_registry_names_a_reference_for_every_metric_and_tasks_use_it():
    assert all(m.reference and m.family in {"label", "probs", "text", "json"} for m in METRICS.values())
    assert {name for names in TASK_METRICS.values() for name in names} <= set(METRICS)
    assert M.METRICS is METRICS


def test_unknown_metric_is_a_tunelab_error_listing_valid_names():
    with pytest.raises(TunelabError) as e:
        M.compute_task_metrics("text", HYPS, REFS, metrics=["blue"])
    assert "unknown metric 'blue'" in str(e.value) and "bleu" in str(e.value) and e.value.where == "eval.metrics"


def test_roc_auc_without_probabilities_is_a_tunelab_error():
    with pytest.raises(TunelabError, match="label_scoring: loglik"):
        M.compute_task_metrics("label", PRED, GOLD, LABELS, metrics=["roc_auc"])


def test_extra_metrics_are_added_with_intervals():
    out = M.compute_task_metrics("text", HYPS, REFS, metrics=["bleu", "chrf"])
    assert out["bleu"] == pytest.approx(sacrebleu.corpus_bleu(HYPS, [REFS]).score / 100, abs=1e-12)
    assert out["bleu_ci"][0] <= out["bleu"] <= out["bleu_ci"][1]
    assert out["main"] == "rougeL"


def test_label_task_with_probabilities_reports_roc_auc():
    probs = _probs(len(GOLD), len(LABELS), seed=3)
    out = M.compute_task_metrics("label", PRED, GOLD, LABELS, probs=probs)
    assert out["roc_auc"] == pytest.approx(roc_auc_score(GOLD, probs, multi_class="ovr", labels=LABELS))
    for name in TASK_METRICS["label"] + ("roc_auc",):
        lo, hi = out[f"{name}_ci"]
        assert lo <= out[name] <= hi


# ----------------------------------------------------------------------------- bootstrap


def _draws(n, n_resamples, seed):
    # The resamples compute_task_metrics uses (fewer than one chunk here): numpy's generator, seeded.
    return np.random.default_rng(seed).integers(0, n, size=(n_resamples, n))


def _percentile(values, confidence):
    a = 1 - confidence
    return list(np.quantile(values, [a / 2, 1 - a / 2]))


def test_intervals_equal_recomputing_the_reference_on_each_resample():
    boot = {"n_resamples": 60, "confidence": 0.9, "seed": 7}
    out = M.compute_task_metrics("label", PRED, GOLD, LABELS, bootstrap=boot)
    mapped, gold = np.array(_mapped()), np.array(GOLD)
    idx = _draws(len(GOLD), 60, 7)
    f1s = [precision_recall_fscore_support(gold[i], mapped[i], labels=LABELS, average="macro", zero_division=0)[2]
           for i in idx]
    accs = [accuracy_score(gold[i], mapped[i]) for i in idx]
    assert out["macro_f1_ci"] == pytest.approx(_percentile(f1s, 0.9), abs=1e-12)
    assert out["accuracy_ci"] == pytest.approx(_percentile(accs, 0.9), abs=1e-12)
    text = M.compute_task_metrics("text", HYPS, REFS, metrics=["bleu"], bootstrap=boot)
    hyps, refs = np.array(HYPS), np.array(REFS)
    bleus = [sacrebleu.corpus_bleu(list(hyps[i]), [list(refs[i])]).score / 100 for i in _draws(len(HYPS), 60, 7)]
    assert text["bleu_ci"] == pytest.approx(_percentile(bleus, 0.9), abs=1e-12)


def test_auc_interval_equals_sklearn_on_each_resample():
    probs = _probs(len(GOLD), len(LABELS), seed=5)
    out = M.compute_task_metrics("label", PRED, GOLD, LABELS, probs=probs, bootstrap={"n_resamples": 40, "seed": 1})
    gold = np.array(GOLD)
    aucs = []
    for i in _draws(len(GOLD), 40, 1):
        present = [c for c, label in enumerate(LABELS) if 0 < (gold[i] == label).sum() < len(i)]
        aucs.append(np.mean([roc_auc_score(gold[i] == LABELS[c], probs[i, c]) for c in present]))
    assert out["roc_auc_ci"] == pytest.approx(_percentile(aucs, 0.95), abs=1e-12)


def test_bootstrap_is_reproducible_with_a_seed():
    a = M.compute_task_metrics("label", PRED, GOLD, LABELS, bootstrap={"seed": 3})
    b = M.compute_task_metrics("label", PRED, GOLD, LABELS, bootstrap={"seed": 3})
    c = M.compute_task_metrics("label", PRED, GOLD, LABELS, bootstrap={"seed": 4})
    assert a == b
    assert a["macro_f1_ci"] != c["macro_f1_ci"]
    # The mean metrics keep the draws of bootstrap_ci: same seed, same interval as before.
    correct = [float(m == g) for m, g in zip(_mapped(), GOLD, strict=True)]
    assert a["accuracy_ci"] == pytest.approx(list(M.bootstrap_ci(correct, seed=3)), abs=1e-12)


def test_wider_confidence_gives_a_wider_interval():
    narrow = M.compute_task_metrics("text", HYPS, REFS, bootstrap={"confidence": 0.5})["rougeL_ci"]
    wide = M.compute_task_metrics("text", HYPS, REFS, bootstrap={"confidence": 0.99})["rougeL_ci"]
    assert wide[0] <= narrow[0] and narrow[1] <= wide[1] and (wide[1] - wide[0]) > (narrow[1] - narrow[0])


def test_mean_and_perplexity_metrics():
    out = mean_metrics({"accuracy": [1, 0, 1, 1], "accuracy_norm": [1, 1, 1, 0]}, {"seed": 0})
    assert out["accuracy"] == 0.75 and out["accuracy_norm"] == 0.75 and "accuracy_ci" in out
    ppl = perplexity_metrics([10.0, 30.0], [5, 10])
    assert ppl["nll"] == pytest.approx(40 / 15) and ppl["perplexity"] == pytest.approx(math.exp(40 / 15))
    assert ppl["tokens"] == 15 and ppl["perplexity_ci"][0] <= ppl["perplexity"] <= ppl["perplexity_ci"][1]
    with pytest.raises(ValueError, match="different lengths"):
        mean_metrics({"a": [1], "b": [1, 0]})


def test_empty_evaluation_scores_zero():
    out = M.compute_task_metrics("label", [], [], LABELS)
    assert out["accuracy"] == 0.0 and out["accuracy_ci"] == [0.0, 0.0] and out["n_examples"] == 0
