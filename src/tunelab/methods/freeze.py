"""Full fine-tuning and freeze tuning (train the top-k blocks, the head, embeddings, final norm)."""

from __future__ import annotations

import torch

from tunelab.config.specs import FreezeSpec
from tunelab.errors import TunelabError
from tunelab.methods.modules import transformer_blocks

__all__ = ["apply_freeze", "apply_full"]


def _train_fp32(module: torch.nn.Module) -> None:
    # Trained weights stay fp32 even on a bf16 base: bf16 has 8 mantissa bits and rounds small updates away.
    # `p.data = ...` keeps the Parameter object, so tied weights (head = embedding) stay tied.
    for p in module.parameters():
        if p.is_floating_point() and p.dtype != torch.float32:
            p.data = p.data.float()
        p.requires_grad_(True)


def apply_full(model: torch.nn.Module) -> torch.nn.Module:
    """Every weight trains."""
    _train_fp32(model)
    return model


def _final_norm(model: torch.nn.Module) -> torch.nn.Module | None:
    decoder = model.get_decoder() if hasattr(model, "get_decoder") else model
    for name in ("norm", "final_layer_norm", "ln_f"):
        if isinstance(getattr(decoder, name, None), torch.nn.Module):
            return getattr(decoder, name)
    return None


def apply_freeze(model: torch.nn.Module, spec: FreezeSpec) -> torch.nn.Module:
    """Freeze everything, then unfreeze what `spec` names (in fp32)."""
    blocks = transformer_blocks(model)
    if spec.top_k_blocks > len(blocks):
        raise TunelabError(f"top_k_blocks is {spec.top_k_blocks} but the model has {len(blocks)} blocks",
                           where="method.freeze.top_k_blocks", fix=f"use a value from 0 to {len(blocks)}")
    model.requires_grad_(False)
    parts: list[torch.nn.Module | None] = list(blocks[len(blocks) - spec.top_k_blocks:])
    if spec.train_head:
        parts.append(model.get_output_embeddings())
    if spec.train_embeddings:
        parts.append(model.get_input_embeddings())
    if spec.train_final_norm:
        parts.append(_final_norm(model))
    for part in parts:
        if part is not None:
            _train_fp32(part)
    if not any(p.requires_grad for p in model.parameters()):
        raise TunelabError("freeze left no trainable weights in this model", where="method.freeze",
                           fix="set top_k_blocks > 0 or train_head: true")
    return model
