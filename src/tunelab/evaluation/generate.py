"""Batched greedy generation for evaluation and chat (left padding, KV cache, stop at end-of-turn)."""

from __future__ import annotations

import torch

from tunelab.training.progress import task_progress

__all__ = ["generate_answers", "render_prompt", "stop_token_ids"]


def render_prompt(tokenizer, messages: list[dict[str, str]]) -> str:
    """The prompt exactly as training saw it, ending with the assistant header."""
    return tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)


def stop_token_ids(tokenizer) -> list[int]:
    """EOS plus the chat template's end-of-turn token when it differs (e.g. <|im_end|>)."""
    ids = {tokenizer.eos_token_id}
    for tok in ("<|im_end|>", "<|eot_id|>", "<|end|>"):
        tid = tokenizer.convert_tokens_to_ids(tok)
        if isinstance(tid, int) and tid != tokenizer.unk_token_id and tid >= 0:
            ids.add(tid)
    return sorted(i for i in ids if i is not None)


@torch.no_grad()
def _generate_batch(model, tokenizer, texts: list[str], max_new_tokens: int, device: str) -> list[str]:
    enc = tokenizer(texts, return_tensors="pt", padding=True, add_special_tokens=False).to(device)
    out = model.generate(
        **enc, max_new_tokens=max_new_tokens, do_sample=False, eos_token_id=stop_token_ids(tokenizer),
        pad_token_id=tokenizer.pad_token_id,
    )  # (B, prompt_len + new)
    new = out[:, enc["input_ids"].shape[1]:]
    return [tokenizer.decode(row, skip_special_tokens=True).strip() for row in new]


def generate_answers(model, tokenizer, prompts: list[list[dict[str, str]]], max_new_tokens: int,
                     batch_size: int, device: str = "cpu", label: str = "generate") -> list[str]:
    """Greedy answers for chat prompts, batched by similar length; output order matches input order."""
    texts = [render_prompt(tokenizer, m) for m in prompts]
    order = sorted(range(len(texts)), key=lambda i: len(texts[i]))
    answers: list[str] = [""] * len(texts)
    side = tokenizer.padding_side
    tokenizer.padding_side = "left"  # generation continues from the right edge of every row
    try:
        with task_progress() as progress:
            task = progress.add_task(label, total=len(texts))
            for start in range(0, len(order), batch_size):
                idx = order[start:start + batch_size]
                for i, ans in zip(idx, _generate_batch(model, tokenizer, [texts[i] for i in idx],
                                                       max_new_tokens, device), strict=True):
                    answers[i] = ans
                progress.advance(task, len(idx))
    finally:
        tokenizer.padding_side = side
    return answers
