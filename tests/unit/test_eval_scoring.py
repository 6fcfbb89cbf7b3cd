"""Continuation log-likelihoods and option scores (tiny model): lm-eval tokenisation, batching, answer extraction."""

from __future__ import annotations

import math

import pytest
import torch

from tunelab.evaluation.extract import extract_answer, last_label, last_number
from tunelab.evaluation.scoring import continuation_logprobs, encode_pair, score_options

PAIRS = [
    ("Question: what colour is the sky?\nAnswer:", " blue"),
    ("The capital of France is ", "Paris"),  # trailing space moves into the continuation
    ("", "Hello there"),  # empty context: BOS stands in
    ("A fairly long context " * 12, " with a longer continuation than the others, to mix lengths."),
    ("x", " y"),
]


def lm_eval_encode_pair(tokenizer, context, continuation):
    """lm-evaluation-harness 0.4 TemplateLM._encode_pair (causal branch) and the empty-context rule."""
    if context == "":
        continuation_enc = tokenizer.encode(continuation, add_special_tokens=False)
        prefix = tokenizer.bos_token_id if tokenizer.bos_token_id is not None else tokenizer.eos_token_id
        if prefix != continuation_enc[0]:
            return [prefix], continuation_enc
        return continuation_enc[:1], continuation_enc[1:]
    n_spaces = len(context) - len(context.rstrip())
    if n_spaces > 0:
        continuation = context[-n_spaces:] + continuation
        context = context[:-n_spaces]
    whole_enc = tokenizer.encode(context + continuation)
    context_enc = tokenizer.encode(context)
    return context_enc, whole_enc[len(context_enc):]


def reference_logprob(model, ctx_ids, cont_ids):
    """Unbatched, unpadded: full logits, log-softmax, sum over the continuation positions."""
    ids = torch.tensor([ctx_ids + cont_ids])
    with torch.no_grad():
        logp = torch.log_softmax(model(ids).logits.float(), dim=-1)[0]
    n = len(cont_ids)
    positions = range(ids.shape[1] - n - 1, ids.shape[1] - 1)
    return sum(logp[p, ids[0, p + 1]].item() for p in positions), n


@pytest.fixture()
def model(tiny_model):
    return tiny_model.eval()


def test_tokenisation_is_lm_evals(tokenizer):
    for ctx, cont in PAIRS:
        assert encode_pair(tokenizer, ctx, cont) == lm_eval_encode_pair(tokenizer, ctx, cont)
    ctx_ids, cont_ids = encode_pair(tokenizer, "The capital of France is ", "Paris")
    assert tokenizer.decode(cont_ids).startswith(" ")


@pytest.mark.parametrize("batch_size", [1, 3, 16])
def test_batched_scores_equal_unbatched_reference(model, tokenizer, batch_size):
    got = continuation_logprobs(model, tokenizer, [c for c, _ in PAIRS], [x for _, x in PAIRS], batch_size, "cpu")
    for (ctx, cont), (value, n) in zip(PAIRS, got, strict=True):
        ref, ref_n = reference_logprob(model, *lm_eval_encode_pair(tokenizer, ctx, cont))
        assert n == ref_n
        assert value == pytest.approx(ref, abs=1e-4)


def test_equals_lm_evaluation_harness(tiny_model_dir, tokenizer):
    lm_eval = pytest.importorskip("lm_eval")
    from lm_eval.api.instance import Instance
    from lm_eval.models.huggingface import HFLM
    from transformers import AutoModelForCausalLM

    lm = HFLM(pretrained=str(tiny_model_dir), batch_size=2, device="cpu", dtype="float32")
    requests = [Instance("loglikelihood", {}, (c, x), i) for i, (c, x) in enumerate(PAIRS)]
    theirs = [ll for ll, _ in lm.loglikelihood(requests, disable_tqdm=True)]
    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir, dtype=torch.float32).eval()
    ours = continuation_logprobs(model, tokenizer, [c for c, _ in PAIRS], [x for _, x in PAIRS], 2, "cpu")
    assert lm_eval.__version__
    assert [v for v, _ in ours] == pytest.approx(theirs, abs=1e-4)


def test_score_options_renders_chat_prompts_and_normalises(model, tokenizer):
    prompts = [[{"role": "user", "content": "Pick a colour."}], "Plain prompt:"]
    options = [["red", "dark blue", "green"], [" yes", " no"]]
    summed = score_options(model, tokenizer, prompts, options, 4, "cpu")
    mean = score_options(model, tokenizer, prompts, options, 4, "cpu", normalize="mean")
    rendered = tokenizer.apply_chat_template(prompts[0], tokenize=False, add_generation_prompt=True)
    direct = continuation_logprobs(model, tokenizer, [rendered] * 3 + ["Plain prompt:"] * 2,
                                   options[0] + options[1], 1, "cpu")
    assert [len(r) for r in summed] == [3, 2]
    flat = [v for row in summed for v in row]
    assert flat == pytest.approx([v for v, _ in direct], abs=1e-5)
    assert [v for row in mean for v in row] == pytest.approx([v / n for v, n in direct], abs=1e-5)
    assert all(v < 0 for v in flat)


def test_a_continuation_that_merges_into_the_context_is_still_scored(model, tokenizer):
    ctx, cont = encode_pair(tokenizer, "x", "y")
    assert len(tokenizer.encode("xy")) == 1 and cont == tokenizer.encode("y")  # "xy" is one token here
    (value, n), (empty, n_empty) = continuation_logprobs(model, tokenizer, ["x", "x"], ["y", ""], 1, "cpu")
    assert n == 1 and value == pytest.approx(reference_logprob(model, ctx, cont)[0], abs=1e-5)
    assert (empty, n_empty) == (0.0, 0)


def test_scoring_leaves_training_mode_alone(model, tokenizer):
    model.train()
    continuation_logprobs(model, tokenizer, ["a"], ["b"], 1, "cpu")
    assert model.training


def test_bad_arguments_raise(model, tokenizer):
    with pytest.raises(ValueError, match="contexts"):
        continuation_logprobs(model, tokenizer, ["a", "b"], ["c"], 1, "cpu")
    with pytest.raises(ValueError, match="normalize"):
        score_options(model, tokenizer, ["a"], [["b"]], 1, "cpu", normalize="bytes")
    with pytest.raises(ValueError, match="option lists"):
        score_options(model, tokenizer, ["a", "b"], [["b"]], 1, "cpu")


@pytest.mark.parametrize(("text", "task", "labels", "pattern", "expected"), [
    ("Let me think. Joy is unlikely here... The answer is: sadness.", "label", ["joy", "sadness"], None, "sadness"),
    ("It might be sadness, but overall I'd say JOY!", "label", ["joy", "sadness"], None, "joy"),
    ("Answer: (B) love", "choice", ["love", "fear"], None, "love"),
    ("No label mentioned at all.", "label", ["joy", "sadness"], None, ""),
    ("12 apples plus 30 makes 42. The answer is 1,042 apples", "number", None, None, "1042"),
    ("3 + 4 = 7", "number", None, None, "7"),
    ("nothing numeric", "number", None, None, ""),
    ('Sure! ```json\n{"a": 1, "b": "x"}\n``` hope it helps', "json", None, None, '{"a": 1, "b": "x"}'),
    ("no object here", "json", None, None, ""),
    ("Reasoning first.\nFinal answer: **Marie Curie**.", "text", None, None, "Marie Curie"),
    ("just the answer", "text", None, None, "just the answer"),
    ("#### 18 and then #### 20", "number", None, r"#### (\d+)", "20"),
    ("label=fear; label=joy", "label", ["joy", "fear"], r"label=(\w+)", "joy"),
    ("no match", "text", None, r"ANSWER=(\w+)", ""),
])
def test_extract_answer(text, task, labels, pattern, expected):
    assert extract_answer(text, task, labels, pattern) == expected


def test_extract_helpers_and_errors():
    assert last_label("happy sad happy", ["happy", "sad"]) == "happy"
    assert last_label("very sad", ["sad", "very sad"]) == "very sad"
    assert last_number("-3.5 then +2") == "2"
    assert math.isfinite(float(last_number("x 1,234,567.25")))
    with pytest.raises(ValueError, match="valid: label"):
        extract_answer("x", "summary")
