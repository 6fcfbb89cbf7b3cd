"""Text generators for data augmentation, LLM-as-judge scoring and evaluation judges.

One small Protocol with two implementations:

* `LocalGenerator` — any model tunelab can load (builtin alias, local folder, run folder, cached hub id),
  batched `generate` on this machine;
* `EndpointGenerator` — any OpenAI-compatible HTTP API (vLLM, tunelab serve, OpenAI, llama.cpp server)
  through the official `openai` client.

Both take chat prompts (lists of ``{"role", "content"}``) and return strings in input order. `choice_probs`
gives the model's next-token probability of each of a few short answers ("1".."5", "A"/"B") after the
prompt: judges use it to turn a small model's opinion into a score without parsing free text
(G-Eval-style probability-weighted scores).
"""

from __future__ import annotations

import math
import os
from typing import Protocol

import torch

from tunelab.config.specs import GeneratorSpec
from tunelab.errors import TunelabError

__all__ = ["EndpointGenerator", "LocalGenerator", "TextGenerator", "make_generator"]

Messages = list[dict[str, str]]


class TextGenerator(Protocol):
    name: str

    def generate(self, prompts: list[Messages], *, max_new_tokens: int | None = None,
                 temperature: float | None = None, seed: int | None = None) -> list[str]:
        """One completion per prompt, in input order."""
        ...

    def choice_probs(self, prompts: list[Messages], choices: list[str]) -> list[dict[str, float]]:
        """Per prompt, the normalised probability of each choice as the first token of the answer."""
        ...


class LocalGenerator:
    """A model loaded in this process (CPU or GPU), batched by similar prompt length."""

    def __init__(self, spec: GeneratorSpec, model=None, tokenizer=None):
        self.spec = spec
        self.name = spec.model
        if model is None:
            model, tokenizer = _load_local(spec.model)
        self.model, self.tokenizer = model, tokenizer
        self.device = next(model.parameters()).device

    def _encode(self, prompts: list[Messages]):
        from tunelab.evaluation.generate import render_prompt

        texts = [render_prompt(self.tokenizer, m) for m in prompts]
        side = self.tokenizer.padding_side
        self.tokenizer.padding_side = "left"  # generation continues from the right edge of every row
        try:
            return self.tokenizer(texts, return_tensors="pt", padding=True, add_special_tokens=False).to(self.device)
        finally:
            self.tokenizer.padding_side = side

    def _batches(self, n: int, prompts: list[Messages]):
        order = sorted(range(n), key=lambda i: sum(len(m["content"]) for m in prompts[i]))
        for start in range(0, n, self.spec.batch_size):
            yield order[start:start + self.spec.batch_size]

    @torch.no_grad()
    def generate(self, prompts: list[Messages], *, max_new_tokens: int | None = None,
                 temperature: float | None = None, seed: int | None = None) -> list[str]:
        from tunelab.evaluation.generate import stop_token_ids

        temp = self.spec.temperature if temperature is None else temperature
        out: list[str] = [""] * len(prompts)
        gen = torch.Generator().manual_seed(self.spec.seed if seed is None else seed)
        for idx in self._batches(len(prompts), prompts):
            enc = self._encode([prompts[i] for i in idx])
            sample = {"do_sample": True, "temperature": temp, "top_p": self.spec.top_p} if temp > 0 else {
                "do_sample": False}
            # Seed per batch from our own generator so results do not depend on what ran before.
            torch.manual_seed(int(torch.randint(0, 2**31 - 1, (1,), generator=gen)))
            ids = self.model.generate(**enc, max_new_tokens=max_new_tokens or self.spec.max_new_tokens,
                                      eos_token_id=stop_token_ids(self.tokenizer),
                                      pad_token_id=self.tokenizer.pad_token_id, **sample)
            new = ids[:, enc["input_ids"].shape[1]:]  # (B, new tokens)
            for i, row in zip(idx, new, strict=True):
                out[i] = self.tokenizer.decode(row, skip_special_tokens=True).strip()
        return out

    @torch.no_grad()
    def choice_probs(self, prompts: list[Messages], choices: list[str]) -> list[dict[str, float]]:
        token_ids = [_first_token(self.tokenizer, c) for c in choices]
        out: list[dict[str, float]] = [{}] * len(prompts)
        for idx in self._batches(len(prompts), prompts):
            enc = self._encode([prompts[i] for i in idx])
            # Only the last position's logits are needed: (B, 1, vocab) instead of (B, T, vocab).
            logits = self.model(**enc, logits_to_keep=1).logits[:, -1, :].float()
            probs = torch.softmax(logits[:, token_ids], dim=-1)  # (B, choices), renormalised over the choices
            for i, row in zip(idx, probs.tolist(), strict=True):
                out[i] = dict(zip(choices, row, strict=True))
        return out


def _first_token(tokenizer, choice: str) -> int:
    ids = tokenizer.encode(choice, add_special_tokens=False)
    if not ids:
        raise TunelabError(f"choice '{choice}' encodes to no tokens")
    return ids[0]


def _load_local(name: str):
    from tunelab.models import (
        is_run_dir,
        load_causal_lm,
        load_run_model,
        load_tokenizer,
        resolve_device,
        resolve_precision,
    )

    device = resolve_device("auto")
    # Decode is memory-bound: bf16 weights halve the bytes per token where bf16 is native (GPU, AVX512-BF16/AMX).
    dtype = torch.bfloat16 if resolve_precision("auto", device) == "bf16" else torch.float32
    if is_run_dir(name):
        model, tok = load_run_model(name, dtype=dtype)
    else:
        model, tok = load_causal_lm(name, dtype=dtype), load_tokenizer(name)
    return model.to(device), tok


class EndpointGenerator:
    """An OpenAI-compatible chat completions endpoint (the official `openai` client, retries included)."""

    def __init__(self, spec: GeneratorSpec, client=None):
        self.spec = spec
        self.name = f"{spec.model}@{spec.endpoint}"
        if client is None:
            from openai import OpenAI

            key = os.environ.get(spec.api_key_env) or "not-needed"  # local servers often take any key
            client = OpenAI(base_url=spec.endpoint, api_key=key, timeout=spec.timeout_s, max_retries=2)
        self.client = client

    def _chat(self, messages: Messages, **kw):
        import openai

        try:
            return self.client.chat.completions.create(model=self.spec.model, messages=messages, **kw)
        except openai.APIConnectionError as e:
            raise TunelabError(f"cannot reach the generator endpoint {self.spec.endpoint}: {e}",
                               where="generator.endpoint", fix="start the server or correct the URL") from e
        except openai.APIStatusError as e:
            raise TunelabError(f"the generator endpoint answered {e.status_code}: {e.message}",
                               where="generator.endpoint",
                               fix=f"check generator.model ('{self.spec.model}') and the key in "
                                   f"${self.spec.api_key_env}") from e

    def generate(self, prompts: list[Messages], *, max_new_tokens: int | None = None,
                 temperature: float | None = None, seed: int | None = None) -> list[str]:
        out = []
        for i, m in enumerate(prompts):
            r = self._chat(m, max_tokens=max_new_tokens or self.spec.max_new_tokens,
                           temperature=self.spec.temperature if temperature is None else temperature,
                           top_p=self.spec.top_p, seed=(self.spec.seed if seed is None else seed) + i)
            out.append((r.choices[0].message.content or "").strip())
        return out

    def choice_probs(self, prompts: list[Messages], choices: list[str]) -> list[dict[str, float]]:
        out = []
        for m in prompts:
            r = self._chat(m, max_tokens=1, temperature=0.0, logprobs=True, top_logprobs=20)
            lp = r.choices[0].logprobs
            scores = dict.fromkeys(choices, 0.0)
            if lp and lp.content:
                for t in lp.content[0].top_logprobs:
                    tok = t.token.strip()
                    if tok in scores:
                        scores[tok] += math.exp(t.logprob)
            else:  # no logprobs from this server: the generated token decides
                text = (r.choices[0].message.content or "").strip()
                for c in choices:
                    if text.startswith(c):
                        scores[c] = 1.0
                        break
            total = sum(scores.values())
            out.append({c: v / total for c, v in scores.items()} if total > 0 else
                       dict.fromkeys(choices, 1.0 / len(choices)))
        return out


def make_generator(spec: GeneratorSpec) -> TextGenerator:
    """The endpoint generator when `spec.endpoint` is set, else a local model."""
    return EndpointGenerator(spec) if spec.endpoint else LocalGenerator(spec)
