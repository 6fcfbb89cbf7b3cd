"""Load tokenizers and models from resolved (local, safetensors) folders."""

from __future__ import annotations

import torch

from tunelab.errors import TunelabError
from tunelab.models.registry import resolve_model

__all__ = ["is_run_dir", "load_causal_lm", "load_run_model", "load_tokenizer"]


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


def is_run_dir(path) -> bool:
    from pathlib import Path

    p = Path(path)
    return (p / "config.yaml").is_file() and ((p / "adapter").is_dir() or (p / "model").is_dir())


def load_run_model(run_dir, dtype: torch.dtype = torch.float32, merge: bool = True):
    """The fine-tuned model of a run folder: full weights (`model/`) or base + LoRA adapter (`adapter/`).

    With merge=True the adapter is folded into the base weights (faster generation, same outputs).
    Returns (model, tokenizer).
    """
    from pathlib import Path

    from transformers import AutoTokenizer

    from tunelab.config.loading import load_recipe

    run = Path(run_dir)
    if not is_run_dir(run):
        raise TunelabError(f"'{run}' is not a finished tunelab run folder (needs config.yaml and adapter/ or model/)",
                           fix="pass a folder created by `tunelab train` or `tunelab run`")
    recipe = load_recipe(run / "config.yaml")
    tok = AutoTokenizer.from_pretrained(run / "tokenizer")
    if (run / "model").is_dir():
        return load_causal_lm(str(run / "model"), recipe.model.trust_remote_code, dtype), tok
    from peft import PeftModel

    base = load_causal_lm(recipe.model.name, recipe.model.trust_remote_code, dtype)
    model = PeftModel.from_pretrained(base, run / "adapter")
    model = model.merge_and_unload() if merge else model
    model.eval()
    return model, tok
