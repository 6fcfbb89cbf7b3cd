"""Chat-template tokenization with assistant-only loss, plain text, and over-long examples."""

from __future__ import annotations

import pytest
from jinja2 import TemplateError

from tunelab.data import Example, Reject, encode_example
from tunelab.data.tokenize import IGNORE_INDEX
from tunelab.errors import TunelabError

TWO_TURNS = [
    {"role": "user", "content": "What is 2+2?"},
    {"role": "assistant", "content": "It is 4."},
    {"role": "user", "content": "And 3+3?"},
    {"role": "assistant", "content": "That makes 6."},
]


def _chat(messages) -> Example:
    return Example(messages=messages, text=None, where="f:1", raw={"messages": messages})


def test_labels_cover_exactly_the_assistant_turns_and_their_end_token(tokenizer):
    enc = encode_example(_chat(TWO_TURNS), tokenizer, 512, "drop")
    ids, labels = enc["input_ids"], enc["labels"]
    # Same tokens the model sees at inference.
    assert ids == list(tokenizer.apply_chat_template(TWO_TURNS, tokenize=True, return_dict=True)["input_ids"])
    assert all(lab in (IGNORE_INDEX, tok) for tok, lab in zip(ids, labels, strict=True))
    # Labelled positions form exactly two runs, one per assistant turn, each ending in <|im_end|>.
    positions = [i for i, lab in enumerate(labels) if lab != IGNORE_INDEX]
    runs: list[list[int]] = []
    for p in positions:
        if runs and runs[-1][-1] == p - 1:
            runs[-1].append(p)
        else:
            runs.append([p])
    texts = [tokenizer.decode([ids[p] for p in run]) for run in runs]
    assert texts == ["It is 4.<|im_end|>", "That makes 6.<|im_end|>"]
    # Everything else, including the default system prompt, the user turns and the turn separators, is masked.
    expected = sum(len(tokenizer(t, add_special_tokens=False)["input_ids"]) for t in texts)
    assert enc["n_loss"] == expected == len(positions)
    assert enc["n_tokens"] == len(ids) and enc["truncated"] is False


def test_system_turn_is_masked(tokenizer):
    msgs = [{"role": "system", "content": "Be brief."}, *TWO_TURNS[:2]]
    enc = encode_example(_chat(msgs), tokenizer)
    labelled = [t for t in enc["labels"] if t != IGNORE_INDEX]
    assert tokenizer.decode(labelled) == "It is 4.<|im_end|>"


def test_plain_text_learns_every_token_and_eos(tokenizer):
    enc = encode_example(Example([], "Once upon a time.", "f:1", {}), tokenizer)
    assert enc["labels"] == enc["input_ids"]
    assert enc["input_ids"][-1] == tokenizer.eos_token_id
    assert tokenizer.decode(enc["input_ids"][:-1]) == "Once upon a time."


def test_drop_vs_truncate(tokenizer):
    long = _chat([{"role": "user", "content": "hi"}, {"role": "assistant", "content": "word " * 100}])
    full = encode_example(long, tokenizer, 512)["n_tokens"]
    dropped = encode_example(long, tokenizer, 64, "drop")
    assert isinstance(dropped, Reject) and dropped.reason == f"longer than max_length ({full} tokens > 64)"
    cut = encode_example(long, tokenizer, 64, "truncate")
    assert cut["truncated"] and cut["n_tokens"] == 64 == len(cut["labels"])
    assert 0 < cut["n_loss"] < 64


def test_truncation_that_removes_every_answer_token_is_a_reject(tokenizer):
    ex = _chat([{"role": "user", "content": "word " * 100}, {"role": "assistant", "content": "ok"}])
    rej = encode_example(ex, tokenizer, 32, "truncate")
    assert isinstance(rej, Reject) and rej.reason.startswith("no answer tokens left after truncation")
    assert rej.where == "f:1" and rej.record == ex.raw


class _Wrapped:
    """The real tokenizer with a replaced apply_chat_template."""

    def __init__(self, tokenizer, render):
        self._tok, self.apply_chat_template = tokenizer, render

    def __getattr__(self, name):
        return getattr(self._tok, name)

    def __call__(self, *args, **kwargs):
        return self._tok(*args, **kwargs)


def test_template_that_renders_prefixes_differently_is_an_error(tokenizer):
    def render(messages, tokenize=False, add_generation_prompt=False):
        # Puts the turn count up front, so a prefix is never a string prefix of the full conversation.
        return f"[{len(messages)}]" + "".join(m["content"] + "|" for m in messages)

    with pytest.raises(TunelabError, match="chat template renders a conversation prefix"):
        encode_example(_chat(TWO_TURNS), _Wrapped(tokenizer, render))


def test_template_raising_for_a_conversation_is_a_reject(tokenizer):
    def render(messages, tokenize=False, add_generation_prompt=False):
        raise TemplateError("Conversation roles must alternate user/assistant/user/assistant/...")

    rej = encode_example(_chat(TWO_TURNS), _Wrapped(tokenizer, render))
    assert isinstance(rej, Reject) and rej.reason.startswith("chat template rejected the conversation (")
