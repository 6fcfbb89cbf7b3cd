"""PEFT-backed methods: LoRA (rsLoRA, DoRA, PiSSA/OLoRA inits), QLoRA, prefix, prompt, P-tuning, IA3.

Each builder turns one section of `MethodSpec` into a PEFT config; `wrap` applies it. PEFT is the engine;
what we add is the mapping from documented recipe keys and errors that name those keys.
"""

from __future__ import annotations

import torch

from tunelab.config.specs import MethodSpec
from tunelab.errors import TunelabError
from tunelab.methods.modules import check_targets

__all__ = ["PROMPT_LEARNING", "peft_config", "wrap"]

PROMPT_LEARNING = ("prefix", "prompt", "ptuning")

# PEFT's names for our init choices; pissa_niter_16 is PiSSA with a 16-iteration randomised SVD.
_LORA_INIT = {"default": True, "gaussian": "gaussian", "pissa": "pissa", "pissa_fast": "pissa_niter_16",
              "olora": "olora"}


def _lora(model: torch.nn.Module, spec: MethodSpec):
    from peft import LoraConfig

    lora = spec.lora
    check_targets(model, lora.target_modules, "method.lora.target_modules")
    return LoraConfig(
        r=lora.r, lora_alpha=lora.alpha, lora_dropout=lora.dropout, target_modules=lora.target_modules,
        use_rslora=lora.rslora, use_dora=lora.dora, init_lora_weights=_LORA_INIT[lora.init],
        bias="none", task_type="CAUSAL_LM",
    )


def _ia3(model: torch.nn.Module, spec: MethodSpec):
    from peft import IA3Config

    ia3 = spec.ia3
    ff = ia3.feedforward_modules
    if ia3.target_modules is not None:
        names = check_targets(model, ia3.target_modules, "method.ia3.target_modules")
        if ff is None:
            # IA3 scales feed-forward layers on their input; guess them from common down-projection names.
            ff = sorted({n.rsplit(".", 1)[-1] for n in names
                         if n.rsplit(".", 1)[-1] in ("down_proj", "fc2", "w2", "c_proj", "dense_4h_to_h")})
    return IA3Config(target_modules=ia3.target_modules, feedforward_modules=ff, task_type="CAUSAL_LM")


def _prefix(model: torch.nn.Module, spec: MethodSpec):
    from peft import PrefixTuningConfig

    p = spec.prefix
    return PrefixTuningConfig(num_virtual_tokens=p.num_virtual_tokens, prefix_projection=p.projection,
                              encoder_hidden_size=p.encoder_hidden_size, task_type="CAUSAL_LM")


def _prompt(model: torch.nn.Module, spec: MethodSpec):
    from peft import PromptTuningConfig, PromptTuningInit

    p = spec.prompt
    if p.init == "random":
        return PromptTuningConfig(num_virtual_tokens=p.num_virtual_tokens, task_type="CAUSAL_LM",
                                  prompt_tuning_init=PromptTuningInit.RANDOM)
    # PEFT reads the tokenizer from the model's own folder (always local here: tunelab resolves names first).
    folder = getattr(model, "name_or_path", "") or ""
    if not folder:
        raise TunelabError("prompt init 'text' needs the model's tokenizer, but the model has no folder",
                           where="method.prompt.init", fix="load the model from a folder, or use init: random")
    return PromptTuningConfig(num_virtual_tokens=p.num_virtual_tokens, task_type="CAUSAL_LM",
                              prompt_tuning_init=PromptTuningInit.TEXT, prompt_tuning_init_text=p.init_text,
                              tokenizer_name_or_path=str(folder))


def _ptuning(model: torch.nn.Module, spec: MethodSpec):
    from peft import PromptEncoderConfig, PromptEncoderReparameterizationType

    p = spec.ptuning
    kind = {"mlp": PromptEncoderReparameterizationType.MLP, "lstm": PromptEncoderReparameterizationType.LSTM}
    return PromptEncoderConfig(
        num_virtual_tokens=p.num_virtual_tokens, encoder_reparameterization_type=kind[p.encoder],
        encoder_hidden_size=p.encoder_hidden_size, encoder_num_layers=p.encoder_num_layers,
        encoder_dropout=p.encoder_dropout, task_type="CAUSAL_LM",
    )


_BUILDERS = {"lora": _lora, "qlora": _lora, "ia3": _ia3, "prefix": _prefix, "prompt": _prompt,
             "ptuning": _ptuning}


def peft_config(model: torch.nn.Module, spec: MethodSpec):
    """The PEFT config for `spec.name` on this model (target names checked against the model first)."""
    return _BUILDERS[spec.name](model, spec)


def wrap(model: torch.nn.Module, spec: MethodSpec) -> torch.nn.Module:
    """Wrap `model` with the PEFT method; PEFT's own errors are re-raised naming the recipe section."""
    from peft import get_peft_model

    config = peft_config(model, spec)
    section = "lora" if spec.name == "qlora" else spec.name
    try:
        # PEFT keeps adapter weights in fp32 even when the frozen base is bf16 (autocast_adapter_dtype).
        peft_model = get_peft_model(model, config)
    except (ValueError, TypeError, NotImplementedError, AttributeError) as e:
        raise TunelabError(f"method '{spec.name}' cannot be applied to this model: {e}",
                           where=f"method.{section}", fix="see docs/methods.md for what each method supports") from e
    if spec.name == "prefix" and spec.prefix.init == "text":
        init_prefix_from_text(peft_model, spec.prefix.init_text)
    return peft_model


@torch.no_grad()
def init_prefix_from_text(peft_model: torch.nn.Module, text: str) -> None:
    """Set the prefix to the keys/values the base model computes for `text` (repeated or cut to length).

    PEFT lays the prefix embedding out as (num_virtual_tokens, layers * 2 * kv_heads * head_dim) with
    key then value per layer; the base's KV cache for the same tokens has exactly that content.
    """
    from transformers import AutoTokenizer

    folder = getattr(peft_model.get_base_model(), "name_or_path", "") or ""
    if not folder:
        raise TunelabError("prefix init 'text' needs the model's tokenizer, but the model has no folder",
                           where="method.prefix.init", fix="load the model from a folder, or use init: random")
    embedding = peft_model.prompt_encoder[peft_model.active_adapter].embedding
    n = embedding.weight.shape[0]
    ids = AutoTokenizer.from_pretrained(folder)(text, add_special_tokens=False)["input_ids"]
    ids = (ids * (n // max(len(ids), 1) + 1))[:n]
    base = peft_model.get_base_model()
    cache = base(input_ids=torch.tensor([ids], device=embedding.weight.device), use_cache=True).past_key_values
    kv = [t for layer in cache.layers for t in (layer.keys, layer.values)]  # each (1, kv_heads, n, head_dim)
    stacked = torch.stack(kv)[:, 0]  # (layers * 2, kv_heads, n, head_dim)
    embedding.weight.copy_(stacked.permute(2, 0, 1, 3).reshape(n, -1).float())
