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


# Config attributes that hold the model's own dropout probabilities, across common architectures.
DROPOUT_KEYS = ("attention_dropout", "hidden_dropout", "hidden_dropout_prob", "attention_probs_dropout_prob",
                "resid_pdrop", "embd_pdrop", "attn_pdrop", "dropout", "activation_dropout")


def dropout_overrides(path, dropout: float | None, trust_remote_code: bool = False) -> dict[str, float]:
    """from_pretrained kwargs that set every dropout probability the model's config has to `dropout`."""
    if dropout is None:
        return {}
    from transformers import AutoConfig

    cfg = AutoConfig.from_pretrained(path, trust_remote_code=trust_remote_code)
    keys = {k: dropout for k in DROPOUT_KEYS if isinstance(getattr(cfg, k, None), int | float)}
    if not keys:
        raise TunelabError(f"this model's config has no dropout setting ({type(cfg).__name__})",
                           where="train.dropout", fix="leave train.dropout null, or use method.lora.dropout")
    return keys


def load_causal_lm(name: str, trust_remote_code: bool = False, dtype: torch.dtype = torch.float32,
                   dropout: float | None = None):
    """A causal LM from safetensors only (never pickle), in eval mode, weights in `dtype`.

    `dropout` overrides the model's own dropout probabilities (regularisation during training).
    """
    from transformers import AutoModelForCausalLM

    resolved = resolve_model(name)
    if resolved.kind != "causal-lm":
        raise TunelabError(f"model '{name}' is not a causal language model (kind: {resolved.kind})",
                           where="model.name", fix="use a decoder model such as smollm2-135m-instruct")
    model = AutoModelForCausalLM.from_pretrained(
        resolved.path, dtype=dtype, use_safetensors=True, trust_remote_code=trust_remote_code,
        attn_implementation="sdpa", **dropout_overrides(resolved.path, dropout, trust_remote_code),
    )
    model.eval()
    return model


def is_run_dir(path) -> bool:
    from pathlib import Path

    p = Path(path)
    return (p / "config.yaml").is_file() and ((p / "adapter").is_dir() or (p / "model").is_dir())


def load_run_model(run_dir, dtype: torch.dtype = torch.float32, merge: bool = True):
    """The fine-tuned model of a run folder: full weights (`model/`) or base + adapter (`adapter/`).

    With merge=True a LoRA/IA3 adapter is folded into the base weights (faster generation, same outputs);
    prompt-learning adapters always stay a PEFT model, and a bottleneck adapter (tunelab's own format,
    non-linear, so never merged) comes back as a `BottleneckModel` around the base.
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
    weights = _full_weights_dir(run)
    if weights is not None:
        return load_causal_lm(str(weights), recipe.model.trust_remote_code, dtype), tok
    from peft import PeftModel

    from tunelab.methods.bottleneck import is_bottleneck_dir, load_bottleneck

    base = load_causal_lm(recipe.model.name, recipe.model.trust_remote_code, dtype)
    if is_bottleneck_dir(run / "adapter"):
        return load_bottleneck(base, run / "adapter"), tok
    model = PeftModel.from_pretrained(base, run / "adapter")
    # Prefix/prompt/P-tuning add virtual tokens, not weights: there is nothing to merge, the PEFT model runs.
    if merge and not model.active_peft_config.is_prompt_learning:
        model = model.merge_and_unload()
    model.eval()
    return model, tok


def _full_weights_dir(run):
    """`model/`, or `adapter/` when it holds a whole model rather than a PEFT adapter (freeze tuning saved
    by a recipe that chose the folder by `method.name == 'full'`); None for an adapter."""
    if (run / "model").is_dir():
        return run / "model"
    adapter = run / "adapter"
    if (adapter / "config.json").is_file() and not (adapter / "adapter_config.json").is_file():
        return adapter
    return None
