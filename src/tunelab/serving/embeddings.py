"""Sentence embeddings for /v1/embeddings: an encoder, mean-pooled over real tokens, L2-normalised.

That is how all-MiniLM-L6-v2 is meant to be used (sentence-transformers' pooling + Normalize), so cosine
similarity is a dot product. Texts are encoded in batches of `batch_size` on a worker thread.
"""

from __future__ import annotations

import threading

import torch

__all__ = ["Embedder"]


class Embedder:
    """An encoder model from the registry (builtin alias, local folder or cached hub id)."""

    def __init__(self, name: str, batch_size: int = 32):
        from transformers import AutoModel, AutoTokenizer

        from tunelab.models import resolve_model

        resolved = resolve_model(name)
        self.tokenizer = AutoTokenizer.from_pretrained(resolved.path)
        self.model = AutoModel.from_pretrained(resolved.path, use_safetensors=True).eval()
        self.max_length = min(int(getattr(self.model.config, "max_position_embeddings", 512)),
                              int(self.tokenizer.model_max_length) if self.tokenizer.model_max_length < 10**7 else 512)
        self.batch_size = batch_size
        self._lock = threading.Lock()  # one batch at a time: the encoder is not re-entrant across threads

    def count_tokens(self, texts: list[str]) -> list[int]:
        return [len(ids) for ids in self.tokenizer(texts, add_special_tokens=True)["input_ids"]]

    @torch.inference_mode()
    def embed(self, texts: list[str]) -> list[list[float]]:
        out: list[list[float]] = []
        with self._lock:
            for start in range(0, len(texts), self.batch_size):
                enc = self.tokenizer(texts[start:start + self.batch_size], padding=True, truncation=True,
                                     max_length=self.max_length, return_tensors="pt")
                hidden = self.model(**enc).last_hidden_state  # (B, T, H)
                mask = enc["attention_mask"].unsqueeze(-1).to(hidden.dtype)  # (B, T, 1)
                pooled = (hidden * mask).sum(1) / mask.sum(1).clamp(min=1e-9)  # (B, H)
                out += torch.nn.functional.normalize(pooled, dim=-1).tolist()
        return out
