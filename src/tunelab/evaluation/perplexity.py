"""Perplexity of long text with a sliding window: the Transformers "Perplexity of fixed-length models" recipe.

Each text is tokenised whole and read in windows of ``max_length`` tokens that start every ``stride``
tokens; in each window only the tokens not already scored by the previous window count (the recipe's
labels are -100 on the overlap), so every token after the first is predicted exactly once, with at least
``max_length - stride`` tokens of context once the first window is past.

One difference from the recipe, on purpose: the recipe weights each window's mean loss by
``valid labels - 1`` ("subtract batch_size due to internal label shift"), which is the number of predicted
tokens only for the first window; in a later window the first label is already -100, so all its
``trg_len`` labels are predicted. Here each token's negative log-likelihood is summed and divided by the
exact number of predicted tokens. Where the windows do not overlap (``stride == max_length``) or the text
fits in one window, the two agree exactly (tests/unit/test_eval_perplexity.py checks both cases).

Texts are separate documents: no window spans two texts (join them first to score a corpus as one).
"""

from __future__ import annotations

import math
from collections.abc import Sequence

from tunelab.evaluation.scoring import encode_text, token_logprobs
from tunelab.training.progress import task_progress

__all__ = ["sliding_window_perplexity", "windows"]


def windows(n_tokens: int, max_length: int, stride: int) -> list[tuple[int, int, int]]:
    """The recipe's windows over a sequence of ``n_tokens``.

    Args:
        n_tokens: Sequence length in tokens.
        max_length: Window length (the model's context).
        stride: Step between window starts (at most ``max_length``).

    Returns:
        ``(begin, end, n_scored)`` per window: tokens ``begin:end`` are read, the last ``n_scored`` are scored.
    """
    out, prev_end = [], 0
    for begin in range(0, n_tokens, stride):
        end = min(begin + max_length, n_tokens)
        trg_len = end - prev_end
        # A window's first token has no context inside the window, so it cannot be scored there.
        n_scored = min(trg_len, end - begin - 1)
        if n_scored > 0:
            out.append((begin, end, n_scored))
        prev_end = end
        if end == n_tokens:
            break
    return out


def _check(max_length: int | None, stride: int, model) -> int:
    if max_length is None:
        max_length = getattr(getattr(model, "config", None), "max_position_embeddings", None)
        if not max_length:
            raise ValueError("max_length is None and the model config has no max_position_embeddings")
    if max_length < 2:
        raise ValueError(f"max_length must be at least 2, not {max_length}")
    if not 1 <= stride <= max_length:
        raise ValueError(f"stride must be between 1 and max_length ({max_length}), not {stride}")
    return max_length


def sliding_window_perplexity(
    model, tokenizer, texts: Sequence[str], max_length: int | None, stride: int, device: str, batch_size: int = 1,
) -> dict:
    """Token-level perplexity of ``texts`` with the sliding-window recipe.

    Args:
        model: A causal LM.
        tokenizer: Its tokenizer (special tokens added as by default, as in the recipe).
        texts: Documents, each scored on its own.
        max_length: Window length in tokens; None uses the model's ``max_position_embeddings``.
        stride: Step between windows; ``max_length - stride`` tokens of each window are context only.
        device: Where the model lives.
        batch_size: Windows per forward pass.

    Returns:
        ``{"perplexity", "nll" (mean per token, nats), "tokens" (predicted tokens),
        "text_nll" (summed nll per text), "text_tokens" (predicted tokens per text)}``.

    Raises:
        ValueError: Bad ``max_length``/``stride``, or no text has two tokens (nothing to predict).
    """
    max_length = _check(max_length, stride, model)
    jobs = []  # (text index, window token ids, n_scored)
    for t, text in enumerate(texts):
        ids = encode_text(tokenizer, text)
        jobs.extend((t, ids[b:e], n) for b, e, n in windows(len(ids), max_length, stride))
    if not jobs:
        raise ValueError("no text has at least two tokens: nothing to predict")
    text_nll, text_tokens = [0.0] * len(texts), [0] * len(texts)
    order = sorted(range(len(jobs)), key=lambda j: -len(jobs[j][1]))
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
    was_training = getattr(model, "training", False)
    model.eval()
    try:
        with task_progress() as progress:
            bar = progress.add_task("perplexity", total=len(jobs))
            for start in range(0, len(order), batch_size):
                batch = [jobs[j] for j in order[start:start + batch_size]]
                scores = token_logprobs(model, [ids for _, ids, _ in batch], [n for _, _, n in batch], pad, device)
                for (t, _, n), s in zip(batch, scores, strict=True):
                    text_nll[t] -= float(s.double().sum())
                    text_tokens[t] += n
                progress.advance(bar, len(batch))
    finally:
        model.train(was_training)
    tokens = sum(text_tokens)
    nll = sum(text_nll) / tokens
    return {"perplexity": math.exp(nll) if nll < 709 else math.inf, "nll": nll, "tokens": tokens,
            "text_nll": text_nll, "text_tokens": text_tokens}
