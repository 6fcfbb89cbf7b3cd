"""`tunelab chat`: one prompt or an interactive session with a run folder's model or any model."""

from __future__ import annotations

import torch

from tunelab.evaluation.generate import render_prompt, stop_token_ids
from tunelab.models import (
    is_run_dir,
    load_causal_lm,
    load_run_model,
    load_tokenizer,
    resolve_device,
    resolve_precision,
)
from tunelab.util.console import console

__all__ = ["chat", "load_chat_model"]


def load_chat_model(target: str):
    device = resolve_device("auto")
    dtype = torch.bfloat16 if resolve_precision("auto", device) == "bf16" else torch.float32
    if is_run_dir(target):
        model, tok = load_run_model(target, dtype=dtype)
    else:
        model, tok = load_causal_lm(target, dtype=dtype), load_tokenizer(target)
    return model.to(device), tok, device


@torch.no_grad()
def reply(model, tok, messages: list[dict[str, str]], max_new_tokens: int, device: str) -> str:
    from transformers import TextStreamer

    enc = tok(render_prompt(tok, messages), return_tensors="pt", add_special_tokens=False).to(device)
    streamer = TextStreamer(tok, skip_prompt=True, skip_special_tokens=True)
    out = model.generate(**enc, max_new_tokens=max_new_tokens, do_sample=False, streamer=streamer,
                         eos_token_id=stop_token_ids(tok), pad_token_id=tok.pad_token_id)
    return tok.decode(out[0, enc["input_ids"].shape[1]:], skip_special_tokens=True).strip()


def chat(target: str, prompt: str | None, system: str | None, max_new_tokens: int) -> int:
    model, tok, device = load_chat_model(target)
    base: list[dict[str, str]] = [{"role": "system", "content": system}] if system else []
    if prompt is not None:
        reply(model, tok, [*base, {"role": "user", "content": prompt}], max_new_tokens, device)
        return 0
    console.print(f"[dim]chat with {target}; /reset clears the history, /exit or Ctrl-D quits[/]")
    history = list(base)
    while True:
        try:
            text = input("you> ").strip()
        except EOFError:
            return 0
        if text in {"/exit", "/quit"}:
            return 0
        if text == "/reset":
            history = list(base)
            continue
        if not text:
            continue
        history.append({"role": "user", "content": text})
        print("model> ", end="", flush=True)
        history.append({"role": "assistant", "content": reply(model, tok, history, max_new_tokens, device)})
