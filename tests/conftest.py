"""Shared fixtures: the default tokenizer and a tiny random LLaMA model built from it."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

SHARED_DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data"


@pytest.fixture(scope="session")
def shared_data() -> Path:
    """../shared/data (real public datasets); tests using it skip when it is absent."""
    if not SHARED_DATA.is_dir():
        pytest.skip(f"shared datasets not found at {SHARED_DATA}")
    return SHARED_DATA


@pytest.fixture(scope="session", autouse=True)
def _isolated_cache(tmp_path_factory):
    # Keep the tokenized-data cache per test session; the model cache stays shared (it is expensive).
    os.environ.setdefault("TUNELAB_DATA_CACHE", str(tmp_path_factory.mktemp("data-cache")))
    # MLflow's first database setup costs seconds per runs folder; tests of tracking turn it back on.
    os.environ.setdefault("TUNELAB_TRACKING", "none")


@pytest.fixture(scope="session")
def tokenizer():
    """The default model's tokenizer (SmolLM2, with its chat template)."""
    from tunelab.models import load_tokenizer

    return load_tokenizer("smollm2-135m-instruct")


def _tiny_llama(tokenizer):
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    cfg = LlamaConfig(
        vocab_size=len(tokenizer), hidden_size=64, intermediate_size=128, num_hidden_layers=2,
        num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=1024, tie_word_embeddings=True,
        bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
    )
    return LlamaForCausalLM(cfg)


@pytest.fixture()
def tiny_model(tokenizer):
    """A 2-layer, hidden-64 random LLaMA with the default vocabulary (fast enough for unit tests)."""
    return _tiny_llama(tokenizer)


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory, tokenizer) -> Path:
    """The tiny random model saved as a local Hugging Face folder (safetensors + tokenizer)."""
    out = tmp_path_factory.mktemp("tiny-llama")
    _tiny_llama(tokenizer).save_pretrained(out, safe_serialization=True)
    tokenizer.save_pretrained(out)
    return out


@pytest.fixture()
def chat_jsonl(tmp_path) -> Path:
    """A small messages-format dataset (60 rows, varied) for end-to-end runs on the tiny model."""
    import json

    colors = ["red", "green", "blue", "black", "white", "yellow"]
    rows = []
    for i in range(60):
        c = colors[i % len(colors)]
        rows.append({"messages": [{"role": "user", "content": f"Item {i} is {c}. What color is item {i}?"},
                                  {"role": "assistant", "content": c}]})
    path = tmp_path / "chat.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    return path
