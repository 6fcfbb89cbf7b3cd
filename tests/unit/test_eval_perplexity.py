"""Sliding-window perplexity against a literal transcription of the Transformers recipe (tiny model)."""

from __future__ import annotations

import math

import pytest
import torch

from tunelab.evaluation.perplexity import sliding_window_perplexity, windows

TEXT = " ".join(f"The {w} number {i} walks past the {w} gate while rain falls on town {i % 7}."
                for i, w in enumerate(["red", "old", "quiet", "tall", "green", "cold"] * 2))


def recipe_perplexity(model, tokenizer, text: str, max_length: int, stride: int, exact_count: bool = False):
    """The "Perplexity of fixed-length models" recipe, line for line (transformers docs).

    With ``exact_count`` the one weighting line counts the labels that the shifted loss really averages
    over instead of ``valid - batch_size`` (they differ only in windows after the first that overlap).
    """
    encodings = tokenizer(text, return_tensors="pt")
    seq_len = encodings.input_ids.size(1)
    nll_sum = 0.0
    n_tokens = 0
    prev_end_loc = 0
    for begin_loc in range(0, seq_len, stride):
        end_loc = min(begin_loc + max_length, seq_len)
        trg_len = end_loc - prev_end_loc  # may be different from stride on last loop
        input_ids = encodings.input_ids[:, begin_loc:end_loc]
        target_ids = input_ids.clone()
        target_ids[:, :-trg_len] = -100
        with torch.no_grad():
            outputs = model(input_ids, labels=target_ids)
            neg_log_likelihood = outputs.loss
        num_valid_tokens = (target_ids != -100).sum().item()
        batch_size = target_ids.size(0)
        num_loss_tokens = num_valid_tokens - batch_size  # subtract batch_size due to internal label shift
        if exact_count:
            num_loss_tokens = (target_ids[:, 1:] != -100).sum().item()
        nll_sum += neg_log_likelihood * num_loss_tokens
        n_tokens += num_loss_tokens
        prev_end_loc = end_loc
        if end_loc == seq_len:
            break
    avg_nll = nll_sum / n_tokens
    return float(avg_nll), float(torch.exp(avg_nll)), n_tokens


@pytest.fixture()
def model(tiny_model):
    return tiny_model.eval()


@pytest.mark.parametrize(("max_length", "stride"), [(64, 64), (1024, 512)])
def test_equals_the_literal_recipe_where_its_count_is_exact(model, tokenizer, max_length, stride):
    # No overlap (stride == max_length) or a text that fits one window: the recipe counts tokens exactly.
    nll, ppl, n = recipe_perplexity(model, tokenizer, TEXT, max_length, stride)
    out = sliding_window_perplexity(model, tokenizer, [TEXT], max_length, stride, "cpu")
    assert out["tokens"] == n
    assert out["nll"] == pytest.approx(nll, rel=1e-6)
    assert out["perplexity"] == pytest.approx(ppl, rel=1e-6)


@pytest.mark.parametrize(("max_length", "stride"), [(64, 32), (30, 11)])
def test_overlapping_windows_equal_the_recipe_with_the_exact_token_count(model, tokenizer, max_length, stride):
    nll, ppl, n = recipe_perplexity(model, tokenizer, TEXT, max_length, stride, exact_count=True)
    out = sliding_window_perplexity(model, tokenizer, [TEXT], max_length, stride, "cpu", batch_size=8)
    n_ids = len(tokenizer(TEXT).input_ids)
    assert out["tokens"] == n == n_ids - 1  # every token after the first, exactly once
    assert out["nll"] == pytest.approx(nll, rel=1e-6)  # the recipe sums in float32
    # The literal recipe weights later windows by one token fewer: close, but not the same number.
    literal_nll, _, literal_n = recipe_perplexity(model, tokenizer, TEXT, max_length, stride)
    assert literal_n < n
    assert literal_nll == pytest.approx(out["nll"], abs=0.05)


def test_every_token_scored_once_and_context_bounded():
    for n, length, stride in [(300, 64, 32), (10, 64, 32), (129, 50, 17), (2, 2, 1), (7, 3, 1)]:
        spans = windows(n, length, stride)
        scored = [i for b, e, k in spans for i in range(e - k, e)]
        assert scored == list(range(1, n))
        assert all(e - b <= length and e - k > b for b, e, k in spans)
    # Without overlap a window's first token has no context in it, so (as in the recipe) it is not scored.
    spans = windows(130, 64, 64)
    assert [i for b, e, k in spans for i in range(e - k, e)] == [i for i in range(130) if i % 64]


def test_texts_are_separate_documents_and_batching_does_not_change_numbers(model, tokenizer):
    texts = [TEXT[:300], TEXT[300:], "Short one.", TEXT]
    one = sliding_window_perplexity(model, tokenizer, texts, 48, 24, "cpu", batch_size=1)
    many = sliding_window_perplexity(model, tokenizer, texts, 48, 24, "cpu", batch_size=5)
    assert many["tokens"] == one["tokens"] == sum(len(tokenizer(t).input_ids) - 1 for t in texts)
    assert many["nll"] == pytest.approx(one["nll"], abs=1e-6)
    for t, text in enumerate(texts):
        alone = sliding_window_perplexity(model, tokenizer, [text], 48, 24, "cpu")
        assert one["text_nll"][t] == pytest.approx(alone["nll"] * alone["tokens"], rel=1e-6)
    assert math.exp(one["nll"]) == pytest.approx(one["perplexity"])


def test_bad_windows_and_empty_input_raise(model, tokenizer):
    with pytest.raises(ValueError, match="stride"):
        sliding_window_perplexity(model, tokenizer, [TEXT], 32, 64, "cpu")
    with pytest.raises(ValueError, match="max_length"):
        sliding_window_perplexity(model, tokenizer, [TEXT], 1, 1, "cpu")
    with pytest.raises(ValueError, match="nothing to predict"):
        sliding_window_perplexity(model, tokenizer, ["", "a"], 32, 16, "cpu")
