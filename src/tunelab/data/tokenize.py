"""Tokenize examples with the model's chat template and assistant-only loss labels.

How the loss mask is found: render the conversation once as text; for each assistant turn, render the
prefix before it with the generation prompt (where the answer starts) and the prefix including it (where
the turn ends). That works for any template for which rendering a prefix gives a string prefix of the
full rendering, which we check. The full text is tokenized once with offsets, and a token is labelled
when it starts inside an assistant span. The span ends after the end-of-turn token (``<|im_end|>``) so
the model learns to stop, but not after the newline that the template puts between turns.
"""

from __future__ import annotations

from typing import Any, Literal

from jinja2 import TemplateError

from tunelab.data.records import Example, Reject
from tunelab.errors import TunelabError

__all__ = ["IGNORE_INDEX", "encode_example", "render_with_spans"]

IGNORE_INDEX = -100  # label of tokens without loss (the value torch's cross_entropy ignores by default)


class _TemplateRejected(Exception):
    """The chat template raised for this conversation (e.g. roles must alternate)."""


def _render(tokenizer: Any, messages: list[dict[str, str]], generation_prompt: bool = False) -> str:
    try:
        return tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=generation_prompt)
    except TemplateError as e:
        raise _TemplateRejected(str(e)) from None


def _check_prefix(full: str, prefix: str, turn: int) -> None:
    if not full.startswith(prefix):
        raise TunelabError(
            f"the tokenizer's chat template renders a conversation prefix (up to message {turn}) differently "
            "from the same messages inside the full conversation, so assistant turns cannot be located",
            where="model.name",
            fix="use a model whose chat template renders turns independently (e.g. ChatML), or edit "
            "chat_template in the model folder",
        )


def render_with_spans(messages: list[dict[str, str]], tokenizer: Any) -> tuple[str, list[tuple[int, int]]]:
    """The chat-template text of ``messages`` and the character spans ``[start, end)`` of assistant turns.

    Raises:
        TunelabError: the template violates the prefix assumption (see the module docstring).
    """
    full = _render(tokenizer, messages)
    spans = []
    for i, message in enumerate(messages):
        if message["role"] != "assistant":
            continue
        before = _render(tokenizer, messages[:i], generation_prompt=True)
        through = _render(tokenizer, messages[: i + 1])
        _check_prefix(full, before, i)
        _check_prefix(full, through, i)
        start = len(before)
        # Whitespace after the end-of-turn token is the template's separator, not part of the answer.
        end = start + len(full[start : len(through)].rstrip())
        spans.append((start, end))
    return full, spans


def _encode_chat(messages: list[dict[str, str]], tokenizer: Any) -> tuple[list[int], list[int]]:
    text, spans = render_with_spans(messages, tokenizer)
    try:
        enc = tokenizer(text, return_offsets_mapping=True, add_special_tokens=False)
    except NotImplementedError:
        raise TunelabError("the tokenizer cannot report character offsets (a slow tokenizer)",
                           where="model.name", fix="use a model folder with a fast tokenizer.json") from None
    ids = list(enc["input_ids"])
    labels = [
        tok if any(s <= start < e for s, e in spans) else IGNORE_INDEX
        for tok, (start, _end) in zip(ids, enc["offset_mapping"], strict=True)
    ]
    return ids, labels


def _encode_text(text: str, tokenizer: Any) -> tuple[list[int], list[int]]:
    ids = list(tokenizer(text, add_special_tokens=False)["input_ids"])
    if tokenizer.eos_token_id is not None:
        ids.append(tokenizer.eos_token_id)  # so that generation learns where documents end
    return ids, list(ids)


def encode_example(
    example: Example,
    tokenizer: Any,
    max_length: int = 512,
    overlength: Literal["truncate", "drop"] = "drop",
) -> dict[str, Any] | Reject:
    """Token ids and assistant-only labels for one example.

    Args:
        example: a chat example (loss on assistant turns, end-of-turn token included) or plain text
            (loss on every token, EOS appended).
        tokenizer: a Hugging Face fast tokenizer with a chat template.
        max_length: most tokens kept.
        overlength: ``"drop"`` rejects longer examples; ``"truncate"`` keeps the first ``max_length`` tokens.

    Returns:
        ``{"input_ids", "labels", "n_tokens", "n_loss", "truncated"}`` where ``labels`` is ``input_ids``
        with ``IGNORE_INDEX`` (-100) on tokens without loss (not shifted: the model shifts), or a `Reject`.

    Raises:
        TunelabError: the tokenizer or its chat template cannot do this (not a data problem).
    """
    try:
        if example.text is not None:
            ids, labels = _encode_text(example.text, tokenizer)
        else:
            ids, labels = _encode_chat(example.messages, tokenizer)
    except _TemplateRejected as e:
        return Reject(example.where, f"chat template rejected the conversation ({e})", example.raw)
    n, truncated = len(ids), False
    if n > max_length:
        if overlength == "drop":
            return Reject(example.where, f"longer than max_length ({n} tokens > {max_length})", example.raw)
        ids, labels, truncated = ids[:max_length], labels[:max_length], True
    n_loss = sum(label != IGNORE_INDEX for label in labels)
    if n_loss == 0:
        reason = (f"no answer tokens left after truncation (max_length {max_length})" if truncated
                  else "no tokens to learn from (no assistant turn)")
        return Reject(example.where, reason, example.raw)
    return {"input_ids": ids, "labels": labels, "n_tokens": len(ids), "n_loss": n_loss, "truncated": truncated}
