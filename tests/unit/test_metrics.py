"""Metrics for generated answers, checked by hand and against scikit-learn and rouge_score."""

from __future__ import annotations

import math

import numpy as np
import pytest

from tunelab.evaluation.metrics import (
    INVALID_LABEL,
    bootstrap_ci,
    compute_task_metrics,
    exact_match,
    infer_task,
    json_metrics,
    label_metrics,
    map_to_label,
    normalize_answer,
    parse_json_object,
    perplexity,
    rouge_l,
    rouge_scores,
    token_f1,
)

# ----------------------------------------------------------------------------- SQuAD-style


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("The  Quick, brown fox!", "quick brown fox"),
        ("An apple a day", "apple day"),
        ("theater", "theater"),  # articles only as whole words
        ("  ", ""),
    ],
)
def test_normalize_answer(text, expected):
    assert normalize_answer(text) == expected


def test_exact_match_hand_computed():
    preds = ["The Eiffel Tower.", "paris", "1969"]
    refs = ["eiffel tower", "London", ["1968", "1969"]]  # the last has two acceptable answers
    assert exact_match(preds, refs) == pytest.approx(2 / 3)


def test_token_f1_hand_computed():
    # pred tokens: [cat, sat, on, mat]; ref tokens: [cat, sat]; common 2 -> P=2/4, R=2/2, F1=2/3.
    # second pair has no overlap -> 0; third identical -> 1.
    preds = ["the cat sat on the mat", "dog", "blue whale"]
    refs = ["a cat sat", "bird", "Blue whale!"]
    assert token_f1(preds, refs) == pytest.approx((2 / 3 + 0 + 1) / 3)


def test_token_f1_counts_repeated_tokens_once_each():
    # pred [a->removed] "cat cat cat" vs "cat": common = min(3,1) = 1 -> P=1/3, R=1, F1=0.5
    assert token_f1(["cat cat cat"], ["cat"]) == pytest.approx(0.5)


def test_length_mismatch_raises():
    with pytest.raises(ValueError, match="2 predictions but 1 references"):
        exact_match(["a", "b"], ["a"])


def test_empty_inputs_score_zero():
    assert exact_match([], []) == 0.0
    assert token_f1([], []) == 0.0
    assert label_metrics([], [])["accuracy"] == 0.0


# ----------------------------------------------------------------------------- labels


@pytest.mark.parametrize(
    ("pred", "expected"),
    [
        ("Positive", "positive"),
        ("positive.", "positive"),
        ("The sentiment is NEGATIVE.", "negative"),
        ("positive rather than negative", "positive"),  # earliest occurrence wins
        ("very positively", INVALID_LABEL),  # whole words only
        ("I cannot tell", INVALID_LABEL),
        ("label:neutral", "neutral"),  # punctuation separates words
        ("I'd say neutral-ish", "neutral"),
    ],
)
def test_map_to_label(pred, expected):
    assert map_to_label(pred, ["negative", "neutral", "positive"]) == expected


@pytest.mark.parametrize(
    ("pred", "expected"), [("A", "A"), ("(b)", "B"), ("The answer is C.", "C"), ("E", INVALID_LABEL)]
)
def test_map_to_label_multiple_choice_letters(pred, expected):
    # SQuAD normalisation would delete "a" as an article; label matching must not.
    assert map_to_label(pred, ["A", "B", "C", "D"]) == expected


def test_map_to_label_prefers_longer_label_at_same_position():
    assert map_to_label("very good service", ["very good", "very"]) == "very good"


def test_label_metrics_match_sklearn():
    from sklearn.metrics import accuracy_score, f1_score

    refs = ["pos", "neg", "neu", "pos", "neg", "pos", "neu", "neg"]
    preds = ["pos", "Neg.", "pos", "answer: pos", "neu", "pos", "???", "neg"]
    mapped = ["pos", "neg", "pos", "pos", "neu", "pos", INVALID_LABEL, "neg"]
    labels = ["neg", "neu", "pos"]
    got = label_metrics(preds, refs)
    assert got["accuracy"] == pytest.approx(accuracy_score(refs, mapped)) == pytest.approx(5 / 8)
    assert got["macro_f1"] == pytest.approx(f1_score(refs, mapped, labels=labels, average="macro"))
    assert got["micro_f1"] == pytest.approx(f1_score(refs, mapped, labels=labels, average="micro"))
    assert got["invalid_rate"] == pytest.approx(1 / 8)


def test_label_metrics_with_explicit_labels_and_case_insensitive_refs():
    got = label_metrics(["Spam", "ham"], ["SPAM", "ham"], labels=["spam", "ham"])
    assert got["accuracy"] == 1.0 and got["macro_f1"] == 1.0


# ----------------------------------------------------------------------------- JSON


@pytest.mark.parametrize(
    "text",
    [
        '{"name": "Ada", "age": 36}',
        'Sure! Here is the JSON:\n```json\n{"name": "Ada", "age": 36}\n```\nAnything else?',
        '```\n{"name": "Ada", "age": 36}\n```',
        'The answer is {"name": "Ada", "age": 36} as requested.',
        'Note {not json} then {"name": "Ada", "age": 36}',
    ],
)
def test_parse_json_object_tolerates_fences_and_prose(text):
    assert parse_json_object(text) == {"name": "Ada", "age": 36}


def test_parse_json_object_fence_without_json_falls_back_to_prose():
    assert parse_json_object('```\nprint(1)\n```\nso: {"a": 1}') == {"a": 1}


def test_parse_json_object_braces_inside_strings():
    assert parse_json_object('x {"a": "}{", "b": "say \\"}\\""} y') == {"a": "}{", "b": 'say "}"'}


@pytest.mark.parametrize("text", ["[1, 2]", "no json here", '{"a": 1', "", None, "{" * 5000])
def test_parse_json_object_rejects_non_objects(text):
    assert parse_json_object(text) is None


def test_json_metrics_hand_computed():
    refs = [
        '{"name": "Ada Lovelace", "year": 1843, "city": null}',
        '{"name": "Alan", "year": 1936, "city": "London"}',
        '{"name": "Grace", "year": 1952, "city": "NYC"}',
    ]
    preds = [
        '```json\n{"name": "  ada   LOVELACE ", "year": 1843, "city": null, "extra": 1}\n```',  # 3/3
        '{"name": "Alan", "year": "1936", "city": "london"}',  # "1936" is not 1936 -> 2/3
        "I don't know",  # invalid -> 0/3
    ]
    got = json_metrics(preds, refs)
    assert got["json_valid"] == pytest.approx(2 / 3)
    assert got["field_accuracy"] == pytest.approx(5 / 9)
    assert got["exact_match"] == pytest.approx(1 / 3)
    assert got["per_field"] == pytest.approx({"name": 2 / 3, "year": 1 / 3, "city": 2 / 3})


def test_json_metrics_bool_is_not_number_and_missing_is_not_null():
    got = json_metrics(['{"ok": 1, "x": 2}'], ['{"ok": true, "x": 2, "y": null}'])
    assert got["field_accuracy"] == pytest.approx(1 / 3)


# ----------------------------------------------------------------------------- ROUGE / perplexity


def test_rouge_matches_rouge_score_package():
    from rouge_score import rouge_scorer

    preds = ["the cats were sitting on the mat", "a quick brown dog", "completely different"]
    refs = ["the cat sat on the mat", "the quick brown fox jumps", "nothing in common here"]
    scorer = rouge_scorer.RougeScorer(["rouge1", "rouge2", "rougeL"], use_stemmer=True)
    rows = [scorer.score(r, p) for p, r in zip(preds, refs, strict=True)]
    got = rouge_scores(preds, refs)
    for key in ("rouge1", "rouge2", "rougeL"):
        assert got[key] == pytest.approx(np.mean([row[key].fmeasure for row in rows]))
        assert 0.0 <= got[key] <= 1.0
    assert rouge_l(preds, refs) == got["rougeL"]


def test_rouge_identical_is_one():
    assert rouge_l(["Hello world"], ["hello world"]) == pytest.approx(1.0)


def test_perplexity():
    assert perplexity(0.0) == 1.0
    assert perplexity(math.log(20.0)) == pytest.approx(20.0)
    assert perplexity(1e6) == math.inf
    assert math.isnan(perplexity(float("nan")))


# ----------------------------------------------------------------------------- bootstrap


def test_bootstrap_ci_contains_mean_and_narrows():
    rng = np.random.default_rng(1)
    small = rng.binomial(1, 0.7, size=40).astype(float)
    large = rng.binomial(1, 0.7, size=4000).astype(float)
    lo_s, hi_s = bootstrap_ci(small)
    lo_l, hi_l = bootstrap_ci(large)
    assert lo_s <= small.mean() <= hi_s
    assert lo_l <= large.mean() <= hi_l
    assert hi_l - lo_l < (hi_s - lo_s) / 3
    assert bootstrap_ci(small) == (lo_s, hi_s)  # deterministic for a seed


def test_bootstrap_ci_edge_cases():
    assert bootstrap_ci([]) == (0.0, 0.0)
    assert bootstrap_ci([0.5]) == (0.5, 0.5)
    lo, hi = bootstrap_ci([1.0, 0.0], weights=[3, 1], n_resamples=2000)
    assert 0.0 <= lo <= 0.75 <= hi <= 1.0
    with pytest.raises(ValueError):
        bootstrap_ci([1.0, 0.0], weights=[1.0])


# ----------------------------------------------------------------------------- tasks


def test_infer_task_each_kind():
    assert infer_task(['{"a": 1}'] * 9 + ["oops"]) == "json"
    assert infer_task(["positive", "negative", "neutral"] * 10) == "label"
    assert infer_task([f"a longer free text answer number {i}" for i in range(30)]) == "text"
    assert infer_task([f"label{i}" for i in range(21)]) == "text"  # too many distinct
    assert infer_task([]) == "text"


def _check_task_result(out, main):
    assert out["main"] == main
    lo, hi = out[f"{main}_ci"]
    assert lo <= out[main] <= hi
    for key, value in out.items():
        if isinstance(value, float):
            assert 0.0 <= value <= 1.0, key


def test_compute_task_metrics_json():
    out = compute_task_metrics("json", ['{"a": 1}', "nope"], ['{"a": 1}', '{"a": 2}'])
    _check_task_result(out, "field_accuracy")
    assert out["field_accuracy"] == 0.5 and out["task"] == "json" and out["n_examples"] == 2


def test_compute_task_metrics_label():
    out = compute_task_metrics("label", ["yes", "No.", "maybe"], ["yes", "no", "no"])
    _check_task_result(out, "accuracy")
    assert out["accuracy"] == pytest.approx(2 / 3)
    assert {"macro_f1", "micro_f1", "invalid_rate"} <= set(out)


def test_compute_task_metrics_text():
    out = compute_task_metrics("text", ["the cat sat", "a dog"], ["the cat sat on the mat", "dog"])
    _check_task_result(out, "rougeL")
    assert {"rouge1", "rouge2", "exact_match", "token_f1"} <= set(out)
    assert out["exact_match"] == 0.5


def test_compute_task_metrics_auto_and_errors():
    assert compute_task_metrics("auto", ["pos"], ["pos"])["task"] == "label"
    with pytest.raises(ValueError, match="unknown task"):
        compute_task_metrics("regression", ["a"], ["a"])
    with pytest.raises(ValueError):
        compute_task_metrics("text", ["a"], [])
