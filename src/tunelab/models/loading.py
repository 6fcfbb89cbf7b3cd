"""Load tokenizers and models from resolved (local, safetensors) folders."""

from __future__ import annotations

import torch

from tunelab.errors import TunelabError
from tunelab.models.registry import resolve_model

__all__ = ["load_causal_lm", "load_tokenizer"]


def load_tokenizer(name: str, trust_remote_code: bool = False):
    """The model's tokenizer with a pad token set (the EOS token when the model has none)."""
    from transformers import AutoTokenizer

    resolved = resolve_model(name)
    tok = AutoTokenizer.from_pretrained(resolved.path, trust_remote_code=trust_remote_code)
    if tok.pad_token is None:
        tok.pad_token = tok.eos_token
    if not getattr(tok, "chat_template", None) and resolved.kind == "causal-lm":
        raise TunelabError(f"model '{name}' has no chat template in its tokenizer",
                           fix="use an instruct/chat model, or set tokenizer.chat_template in the model folder")
    return tok


def load_causal_lm(name: str, trust_remote_code: bool = False, dtype: torch.dtype = torch.float32):
    """A causal LM from safetensors only (never pickle), in eval mode, weights in `dtype`."""
    from transformers import AutoModelForCausalLM

    resolved = resolve_model(name)
    if resolved.kind != "causal-lm":
        raise TunelabError(f"model '{name}' is not a causal language model (kind: {resolved.kind})",
                           where="model.name", fix="use a decoder model such as smollm2-135m-instruct")
    model = AutoModelForCausalLM.from_pretrained(
        resolved.path, dtype=dtype, use_safetensors=True, trust_remote_code=trust_remote_code,
        attn_implementation="sdpa",
    )
    model.eval()
    return model
