"""Log-likelihood scoring of continuations and of multiple-choice options.

Tokenisation follows lm-evaluation-harness (``TemplateLM._encode_pair`` and ``loglikelihood``), so that a
continuation's log-probability here is the number lm-eval computes for the same model and text:

- trailing whitespace of the context moves to the front of the continuation;
- ``context + continuation`` is encoded as one string and the continuation is its tail after
  ``len(encode(context))`` tokens (so a token that merges across the boundary is scored, as lm-eval does);
- an empty context is replaced by the BOS token (EOS when there is none);
- special tokens are added as the tokenizer does by default, unless the text already starts with BOS.

Rows are batched by length with right padding (no position ids to fix, so prompt-learning adapters work too)
and the vocabulary projection runs only over the tail of each batch that holds continuation tokens.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch

from tunelab.training.progress import task_progress

__all__ = ["continuation_logprobs", "encode_pair", "encode_text", "score_options", "token_logprobs"]


def encode_text(tokenizer, text: str) -> list[int]:
    """Token ids as lm-eval's ``tok_encode``: the tokenizer's default special tokens, but no second BOS."""
    bos = tokenizer.bos_token
    if bos and text.startswith(bos):
        return tokenizer.encode(text, add_special_tokens=False)
    return tokenizer.encode(text)


def _prefix_id(tokenizer) -> int:
    return tokenizer.bos_token_id if tokenizer.bos_token_id is not None else tokenizer.eos_token_id


def encode_pair(tokenizer, context: str, continuation: str) -> tuple[list[int], list[int]]:
    """Token ids of a context and of its continuation, split as lm-evaluation-harness splits them.

    Args:
        tokenizer: A Hugging Face tokenizer.
        context: Conditioning text (may be empty: the BOS/EOS token then stands in for it).
        continuation: Text whose tokens are scored.

    Returns:
        ``(context_ids, continuation_ids)``; their concatenation is what the model reads.
    """
    if not context:
        cont = tokenizer.encode(continuation, add_special_tokens=False)
        prefix = _prefix_id(tokenizer)
        # lm-eval: when the continuation itself starts with the prefix token, that token is the context.
        return ([prefix], cont) if not cont or cont[0] != prefix else (cont[:1], cont[1:])
    n_spaces = len(context) - len(context.rstrip())
    if n_spaces:
        context, continuation = context[:-n_spaces], context[-n_spaces:] + continuation
    whole = encode_text(tokenizer, context + continuation)
    ctx = encode_text(tokenizer, context)
    if len(whole) <= len(ctx) and continuation:
        # The continuation merged into the context's last token (lm-eval would fail an assertion here):
        # score it on its own tokens rather than as nothing, which would be a perfect score.
        return ctx, tokenizer.encode(continuation, add_special_tokens=False)
    return ctx, whole[len(ctx):]


def _batch_tensors(rows: list[list[int]], pad_id: int, device: str) -> tuple[torch.Tensor, torch.Tensor]:
    width = max(len(r) for r in rows)
    ids = torch.full((len(rows), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(rows), width), dtype=torch.long)
    for i, r in enumerate(rows):
        ids[i, :len(r)] = torch.tensor(r, dtype=torch.long)
        mask[i, :len(r)] = 1
    return ids.to(device), mask.to(device)


def _tail_logits(model, ids: torch.Tensor, mask: torch.Tensor, keep: int) -> torch.Tensor:
    """Logits of the last ``keep`` positions, (B, keep, V); the head runs only there when the model allows."""
    try:
        out = model(input_ids=ids, attention_mask=mask, logits_to_keep=keep)
    except TypeError:  # a model without logits_to_keep: project every position, then slice
        out = model(input_ids=ids, attention_mask=mask)
    return out.logits[:, -keep:]


@torch.no_grad()
def token_logprobs(model, rows: list[list[int]], n_scored: list[int], pad_id: int, device: str) -> list[torch.Tensor]:
    """Log-probabilities of the last ``n_scored[i]`` tokens of each row, given everything before them.

    Args:
        model: A causal LM (Transformers or PEFT).
        rows: Token ids per row (read together as one batch, right-padded).
        n_scored: How many tail tokens of each row to score (each at most ``len(row) - 1``).
        pad_id: Padding id (never read: the attention mask hides it).
        device: Where the model lives.

    Returns:
        One float32 tensor of shape ``(n_scored[i],)`` per row, on the CPU.
    """
    ids, mask = _batch_tensors(rows, pad_id, device)
    width = ids.shape[1]
    # Position p predicts token p + 1: row i needs positions len_i - n_i - 1 .. len_i - 2.
    keep = max(width - len(r) + n + 1 for r, n in zip(rows, n_scored, strict=True))
    logits = _tail_logits(model, ids, mask, min(keep, width)).float()  # (B, keep, V)
    logp = torch.log_softmax(logits, dim=-1)
    offset = width - logp.shape[1]
    out = []
    for i, (r, n) in enumerate(zip(rows, n_scored, strict=True)):
        start = len(r) - n - 1 - offset
        pred = logp[i, start:start + n]  # (n, V)
        target = ids[i, len(r) - n:len(r)].unsqueeze(-1)
        out.append(pred.gather(-1, target).squeeze(-1).cpu())
    return out


def _max_length(model) -> int | None:
    cfg = getattr(model, "config", None)
    return getattr(cfg, "max_position_embeddings", None)


def continuation_logprobs(
    model, tokenizer, contexts: Sequence[str], continuations: Sequence[str], batch_size: int, device: str,
    label: str = "score",
) -> list[tuple[float, int]]:
    """Summed log-probability of each continuation given its context (lm-eval ``loglikelihood``).

    Args:
        model: A causal LM in eval mode.
        tokenizer: Its tokenizer.
        contexts: Conditioning texts.
        continuations: Texts to score, one per context (a leading space belongs here, as in lm-eval).
        batch_size: Rows per forward pass.
        device: Where the model lives.
        label: Progress bar label.

    Returns:
        ``(sum log p(continuation tokens) in nats, number of continuation tokens)`` per row, in input order.
        An empty continuation scores ``(0.0, 0)``.

    Raises:
        ValueError: ``contexts`` and ``continuations`` differ in length.
    """
    if len(contexts) != len(continuations):
        raise ValueError(f"{len(contexts)} contexts but {len(continuations)} continuations")
    pairs = [encode_pair(tokenizer, c, x) for c, x in zip(contexts, continuations, strict=True)]
    limit = _max_length(model)
    rows, n_scored = [], []
    for ctx, cont in pairs:
        row = ctx + cont
        # As lm-eval: keep the last max_length + 1 tokens, the final one is only a target.
        row = row[-(limit + 1):] if limit else row
        rows.append(row)
        n_scored.append(min(len(cont), len(row) - 1))
    return _score_rows(model, tokenizer, rows, n_scored, batch_size, device, label)


def _score_rows(model, tokenizer, rows, n_scored, batch_size: int, device: str, label: str) -> list[tuple[float, int]]:
    results: list[tuple[float, int]] = [(0.0, 0)] * len(rows)
    order = sorted((i for i in range(len(rows)) if n_scored[i] > 0), key=lambda i: -len(rows[i]))
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
    was_training = getattr(model, "training", False)
    model.eval()
    try:
        with task_progress() as progress:
            task = progress.add_task(label, total=len(order))
            for start in range(0, len(order), batch_size):
                idx = order[start:start + batch_size]
                scores = token_logprobs(model, [rows[i] for i in idx], [n_scored[i] for i in idx], pad, device)
                for i, s in zip(idx, scores, strict=True):
                    results[i] = (float(s.double().sum()), int(s.numel()))
                progress.advance(task, len(idx))
    finally:
        model.train(was_training)
    return results


def _render(tokenizer, prompt: str | list[dict[str, str]]) -> str:
    if isinstance(prompt, str):
        return prompt
    return tokenizer.apply_chat_template(prompt, tokenize=False, add_generation_prompt=True)


def score_options(
    model, tokenizer, prompts: Sequence[list[dict[str, str]]] | Sequence[str], options: Sequence[Sequence[str]],
    batch_size: int, device: str, normalize: str = "sum", label: str = "score options",
) -> list[list[float]]:
    """Log-likelihood of every option of every row (multiple choice, verbalised labels).

    Chat-message prompts are rendered with the tokenizer's chat template and the generation prompt, so an
    option is scored as the assistant's whole answer; plain-string prompts are used as they are (put the
    separator, e.g. a leading space, in the options).

    Args:
        model: A causal LM.
        tokenizer: Its tokenizer.
        prompts: One prompt per row: chat messages or a string.
        options: The candidate answers of each row.
        batch_size: Sequences per forward pass.
        device: Where the model lives.
        normalize: ``"sum"`` (total log-probability, lm-eval's ``acc``) or ``"mean"`` (per token).
        label: Progress bar label.

    Returns:
        ``scores[row][option]`` in nats (``-inf`` for an option that encodes to no tokens under ``"mean"``).

    Raises:
        ValueError: Unknown ``normalize`` or rows and option lists of different lengths.
    """
    if normalize not in ("sum", "mean"):
        raise ValueError(f"normalize must be 'sum' or 'mean', not {normalize!r}")
    if len(prompts) != len(options):
        raise ValueError(f"{len(prompts)} prompts but {len(options)} option lists")
    texts = [_render(tokenizer, p) for p in prompts]
    flat_ctx = [t for t, opts in zip(texts, options, strict=True) for _ in opts]
    flat_opt = [o for opts in options for o in opts]
    scored = continuation_logprobs(model, tokenizer, flat_ctx, flat_opt, batch_size, device, label=label)
    values = [s if normalize == "sum" else (s / n if n else -math.inf) for s, n in scored]
    out, pos = [], 0
    for opts in options:
        out.append(values[pos:pos + len(opts)])
        pos += len(opts)
    return out
