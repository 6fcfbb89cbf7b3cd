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

__all__ = ["IGNORE_INDEX", "classification_input", "encode_classification", "encode_example", "pack_blocks",
           "render_with_spans"]

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


# ------------------------------------------------------------------------------------------ other objectives


def classification_input(example: Example, label_column: str | None = None) -> tuple[str, str | None]:
    """The text a classifier reads and the row's label (None when the row has none).

    Chat rows: the non-system turns before the final answer, joined by newlines (the prompt template is
    already applied); the label is the final assistant answer. Plain-text rows: the text; the label is the
    raw ``label`` column. ``label_column`` names another raw column for either.
    """
    if example.text is not None:
        text = example.text
        label = example.raw.get(label_column or "label")
    else:
        text = "\n".join(m["content"] for m in example.prompt_messages if m["role"] != "system")
        label = example.raw.get(label_column) if label_column else example.reference
    if isinstance(label, bool) or not isinstance(label, (str, int, float)) or not str(label).strip():
        return text, None
    return text, " ".join(str(label).split())


def encode_classification(
    example: Example,
    tokenizer: Any,
    max_length: int = 512,
    overlength: Literal["truncate", "drop"] = "drop",
    label_column: str | None = None,
) -> dict[str, Any] | Reject:
    """Token ids (with the tokenizer's special tokens, e.g. [CLS] ... [SEP]) and the label name of one row.

    Returns:
        ``{"input_ids", "label", "n_tokens", "n_loss": 1, "truncated"}`` or a `Reject` (no label, too long).
    """
    text, label = classification_input(example, label_column)
    if label is None:
        source = f"column '{label_column}'" if label_column else (
            "column 'label'" if example.text is not None else "final assistant answer")
        return Reject(example.where, f"missing label ({source})", example.raw)
    ids = list(tokenizer(text, add_special_tokens=True)["input_ids"])
    truncated = len(ids) > max_length
    if truncated:
        if overlength == "drop":
            return Reject(example.where, f"longer than max_length ({len(ids)} tokens > {max_length})", example.raw)
        # Re-encoding with truncation keeps the closing special token ([SEP]) that slicing would cut.
        ids = list(tokenizer(text, add_special_tokens=True, truncation=True, max_length=max_length)["input_ids"])
    return {"input_ids": ids, "label": label, "n_tokens": len(ids), "n_loss": 1, "truncated": truncated}


def pack_blocks(rows: list[dict[str, Any]], block_size: int) -> tuple[list[dict[str, Any]], dict[str, int]]:
    """Join encoded documents and cut them into blocks of ``block_size`` tokens (continued pretraining).

    Documents already end with EOS (`encode_example` appends it to plain text), so blocks hold EOS between
    documents and a document may continue into the next block. Every token is a label. The last partial
    block is dropped (counted), unless it is the only block: then nothing is lost on a small split.

    Returns:
        (blocks as ``encode_example`` dicts, stats ``{"blocks", "block_size", "block_tokens", "tail_tokens_dropped"}``).
    """
    ids = [t for row in rows for t in row["input_ids"]]
    n_full = len(ids) // block_size
    cuts = [(i * block_size, (i + 1) * block_size) for i in range(n_full)] or ([(0, len(ids))] if ids else [])
    blocks = [{"input_ids": ids[a:b], "labels": ids[a:b], "n_tokens": b - a, "n_loss": b - a, "truncated": False}
              for a, b in cuts]
    used = sum(b["n_tokens"] for b in blocks)
    return blocks, {"blocks": len(blocks), "block_size": block_size, "block_tokens": used,
                    "tail_tokens_dropped": len(ids) - used}
