"""Per-request token choice: penalties, logit bias, temperature, top-p, a seeded generator, logprobs, JSON.

Every request owns a `RowSampler`, so requests batched together never share random state: a request with
a seed draws the same tokens whatever else runs beside it (up to float differences in batched logits).
"""

from __future__ import annotations

import secrets

import torch

from tunelab.serving.engines.base import SamplingParams, TokenEvent
from tunelab.serving.engines.jsonmode import JsonConstraint, JsonVocab

__all__ = ["RowSampler"]

_REJECTION_TRIES = 32  # JSON mode: resample this often before scanning candidates in order
_SCAN_CHUNK = 64


class RowSampler:
    """Chooses the next token of one request from its row of logits.

    Args:
        params: the request's sampling parameters.
        vocab_size: width of the logits row.
        json_vocab: token texts for JSON mode (required when params.json_object).
    """

    def __init__(self, params: SamplingParams, vocab_size: int, json_vocab: JsonVocab | None = None):
        self.params = params
        seed = params.seed if params.seed is not None else secrets.randbits(63)
        self.generator = torch.Generator().manual_seed(seed % (1 << 64))
        self.greedy = params.temperature == 0.0 or params.top_p == 0.0
        self.counts = (torch.zeros(vocab_size) if (params.presence_penalty or params.frequency_penalty)
                       else None)  # (V,) occurrences of each token in this request's output
        self.bias_ids = torch.tensor(list(params.logit_bias), dtype=torch.long) if params.logit_bias else None
        self.bias_values = torch.tensor(list(params.logit_bias.values())) if params.logit_bias else None
        self.json = JsonConstraint(json_vocab) if params.json_object and json_vocab is not None else None
        self.stop_ids = set(params.stop_token_ids)

    @property
    def plain_greedy(self) -> bool:
        """True when the batch-wide argmax is this request's choice (no per-row work needed)."""
        return self.greedy and self.counts is None and self.bias_ids is None and self.json is None

    def _processed(self, logits: torch.Tensor) -> torch.Tensor:
        if self.bias_ids is None and self.counts is None:
            return logits
        out = logits.clone()
        if self.bias_ids is not None:
            out[self.bias_ids] += self.bias_values
        if self.counts is not None:
            p = self.params
            out -= p.presence_penalty * (self.counts > 0).float() + p.frequency_penalty * self.counts
        return out

    def _probs(self, logits: torch.Tensor) -> torch.Tensor:
        """Temperature then top-p: the distribution to sample from. (V,)"""
        probs = torch.softmax(logits / self.params.temperature, dim=-1)
        if self.params.top_p < 1.0:
            sorted_p, order = torch.sort(probs, descending=True)
            # Keep the smallest prefix whose mass reaches top_p (the first token always stays).
            drop = torch.cumsum(sorted_p, 0) - sorted_p >= self.params.top_p
            sorted_p[drop] = 0.0
            probs = torch.zeros_like(probs).scatter_(0, order, sorted_p)
        return probs

    def choose(self, logits: torch.Tensor, greedy_id: int | None = None) -> TokenEvent | None:
        """The next token for a (V,) float32 row of raw logits; None when JSON mode has no valid token."""
        if self.plain_greedy and greedy_id is not None:
            token = greedy_id
        else:
            processed = self._processed(logits)
            token = self._choose_json(processed) if self.json is not None else self._choose_free(processed)
            if token is None:
                return None
        self.record(token)
        return self._event(logits, token)

    def record(self, token: int) -> None:
        if self.counts is not None:
            self.counts[token] += 1
        if self.json is not None:
            state = self.json.try_token(token)
            if state is not None:
                self.json.accept(state)

    def _choose_free(self, logits: torch.Tensor) -> int:
        if self.greedy:
            return int(torch.argmax(logits))
        return int(torch.multinomial(self._probs(logits), 1, generator=self.generator))

    def _valid(self, token: int) -> bool:
        # Stop tokens are not allowed while the object is open; the engine ends the request when it closes.
        return token not in self.stop_ids and self.json.try_token(token) is not None  # type: ignore[union-attr]

    def _choose_json(self, logits: torch.Tensor) -> int | None:
        if not self.greedy:
            probs = self._probs(logits)
            for _ in range(_REJECTION_TRIES):
                if float(probs.sum()) <= 0.0:
                    break
                token = int(torch.multinomial(probs, 1, generator=self.generator))
                if self._valid(token):
                    return token  # rejection sampling: exact draws from the distribution over valid tokens
                probs[token] = 0.0
        return self._scan(logits)

    def _scan(self, logits: torch.Tensor) -> int | None:
        """The most likely valid token (greedy JSON mode, or after rejection sampling gave up)."""
        top = torch.topk(logits, min(_SCAN_CHUNK, logits.numel())).indices.tolist()
        for token in top:
            if self._valid(token):
                return token
        for token in torch.argsort(logits, descending=True)[_SCAN_CHUNK:].tolist():
            if self._valid(token):
                return token
        return None

    def _event(self, logits: torch.Tensor, token: int) -> TokenEvent:
        k = self.params.logprobs
        if k is None:
            return TokenEvent(token)
        logp = torch.log_softmax(logits, dim=-1)  # the model's own distribution, before sampling settings
        top = None
        if k > 0:
            values, ids = torch.topk(logp, k)
            top = list(zip(ids.tolist(), values.tolist(), strict=True))
        return TokenEvent(token, float(logp[token]), top)
