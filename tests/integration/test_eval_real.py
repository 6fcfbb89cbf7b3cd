"""Evaluation core on the real default model (SmolLM2-135M-Instruct, fp32): perplexity equals the Transformers
recipe, continuation log-likelihoods equal lm-evaluation-harness."""

from __future__ import annotations

import pytest
import torch

from tunelab.evaluation.perplexity import sliding_window_perplexity
from tunelab.evaluation.scoring import continuation_logprobs
from tunelab.models import load_causal_lm, load_tokenizer

pytestmark = pytest.mark.integration


def recipe_perplexity(model, tokenizer, text, max_length, stride, exact_count=False):
    """The "Perplexity of fixed-length models" recipe, line for line (see tests/unit/test_eval_perplexity.py)."""
    encodings = tokenizer(text, return_tensors="pt")
    seq_len = encodings.input_ids.size(1)
    nll_sum, n_tokens, prev_end_loc = 0.0, 0, 0
    for begin_loc in range(0, seq_len, stride):
        end_loc = min(begin_loc + max_length, seq_len)
        trg_len = end_loc - prev_end_loc
        input_ids = encodings.input_ids[:, begin_loc:end_loc]
        target_ids = input_ids.clone()
        target_ids[:, :-trg_len] = -100
        with torch.no_grad():
            neg_log_likelihood = model(input_ids, labels=target_ids).loss
        num_loss_tokens = (target_ids != -100).sum().item() - target_ids.size(0)
        if exact_count:
            num_loss_tokens = (target_ids[:, 1:] != -100).sum().item()
        nll_sum += neg_log_likelihood * num_loss_tokens
        n_tokens += num_loss_tokens
        prev_end_loc = end_loc
        if end_loc == seq_len:
            break
    return float(nll_sum / n_tokens), n_tokens


@pytest.fixture(scope="module")
def real():
    tokenizer = load_tokenizer("smollm2-135m-instruct")
    model = load_causal_lm("smollm2-135m-instruct", dtype=torch.float32).eval()
    return model, tokenizer


@pytest.fixture(scope="module")
def wiki_text(shared_data):
    raw = (shared_data / "wikitext2_raw" / "wiki.test.raw").read_text(encoding="utf-8")
    return " ".join(raw.split())[:800]  # about 180 tokens


@pytest.mark.shared_data
def test_perplexity_equals_the_recipe_on_the_real_model(real, wiki_text):
    model, tokenizer = real
    nll, n = recipe_perplexity(model, tokenizer, wiki_text, 64, 64)  # no overlap: the recipe's count is exact
    ours = sliding_window_perplexity(model, tokenizer, [wiki_text], 64, 64, "cpu", batch_size=4)
    assert ours["tokens"] == n and ours["nll"] == pytest.approx(nll, rel=1e-6)
    nll, n = recipe_perplexity(model, tokenizer, wiki_text, 64, 32, exact_count=True)
    ours = sliding_window_perplexity(model, tokenizer, [wiki_text], 64, 32, "cpu", batch_size=4)
    assert ours["tokens"] == n and ours["nll"] == pytest.approx(nll, rel=1e-6)
    assert 5 < ours["perplexity"] < 200  # a real language model on real English


def test_continuation_logprobs_equal_lm_evaluation_harness(real):
    pytest.importorskip("lm_eval")
    from lm_eval.api.instance import Instance
    from lm_eval.models.huggingface import HFLM

    model, tokenizer = real
    pairs = [("Question: What is the capital of France?\nAnswer:", " Paris"),
             ("The opposite of hot is", " cold"), ("", "Once upon a time"),
             ("<|im_start|>user\nSay yes.<|im_end|>\n<|im_start|>assistant\n", "Yes")]
    lm = HFLM(pretrained=model, tokenizer=tokenizer, batch_size=2, device="cpu")
    theirs = [ll for ll, _ in lm.loglikelihood([Instance("loglikelihood", {}, p, i) for i, p in enumerate(pairs)],
                                               disable_tqdm=True)]
    ours = continuation_logprobs(model, tokenizer, [c for c, _ in pairs], [x for _, x in pairs], 2, "cpu")
    assert [v for v, _ in ours] == pytest.approx(theirs, abs=1e-4)
    assert ours[0][0] > -5  # " Paris" is likely after that question
