"""Architecture checks on a weightless copy of the model (meta device): cheap enough to run first."""

from __future__ import annotations

import torch

from tunelab.config.specs import Recipe
from tunelab.methods.modules import check_targets, transformer_blocks

__all__ = ["check_on_skeleton", "meta_model"]


def meta_model(name: str, trust_remote_code: bool = False) -> torch.nn.Module:
    """The model's module tree with no storage (shapes only), from its config."""
    from transformers import AutoConfig, AutoModelForCausalLM

    from tunelab.models import resolve_model

    config = AutoConfig.from_pretrained(resolve_model(name).path, trust_remote_code=trust_remote_code)
    with torch.device("meta"):
        return AutoModelForCausalLM.from_config(config, trust_remote_code=trust_remote_code)


def check_on_skeleton(recipe: Recipe) -> None:
    """Target modules and freeze depth checked against the architecture; TunelabError on a conflict."""
    m = recipe.method
    needs = (m.name in ("lora", "qlora") or (m.name == "ia3" and m.ia3.target_modules is not None)
             or (m.name == "freeze" and m.freeze.top_k_blocks > 0))
    if not needs:
        return
    model = meta_model(recipe.model.name, recipe.model.trust_remote_code)
    if m.name in ("lora", "qlora"):
        check_targets(model, m.lora.target_modules, "method.lora.target_modules")
    elif m.name == "ia3":
        check_targets(model, m.ia3.target_modules, "method.ia3.target_modules")
    else:
        from tunelab.errors import TunelabError

        n = len(transformer_blocks(model))
        if m.freeze.top_k_blocks > n:
            raise TunelabError(f"top_k_blocks is {m.freeze.top_k_blocks} but the model has {n} blocks",
                               where="method.freeze.top_k_blocks", fix=f"use a value from 0 to {n}")
