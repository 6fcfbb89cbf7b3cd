"""Which modules of a model a method can target, checked before any weights change."""

from __future__ import annotations

import re

import torch

from tunelab.errors import TunelabError

__all__ = ["check_targets", "linear_module_names", "transformer_blocks"]


def linear_module_names(model: torch.nn.Module) -> list[str]:
    """Distinct leaf names of linear layers, excluding the output head (what 'all-linear' adapts)."""
    head = model.get_output_embeddings() if hasattr(model, "get_output_embeddings") else None
    names = set()
    for full, module in model.named_modules():
        if module is head:
            continue
        # bitsandbytes' Linear4bit subclasses nn.Linear, so a 4-bit base lists the same names.
        if isinstance(module, torch.nn.Linear):
            names.add(full.rsplit(".", 1)[-1])
    return sorted(names)


def _matches(full: str, target: str) -> bool:
    return full == target or full.endswith("." + target)


def check_targets(model: torch.nn.Module, targets: list[str] | str, where: str) -> list[str]:
    """Full names of the modules that `targets` selects; a TunelabError naming `where` if any target is unused.

    A string other than 'all-linear' is a regular expression over full module names (PEFT's rule).
    """
    available = linear_module_names(model)
    if targets == "all-linear":
        return [n for n, m in model.named_modules() if isinstance(m, torch.nn.Linear)
                and n.rsplit(".", 1)[-1] in available]
    names = [n for n, _ in model.named_modules() if n]
    if isinstance(targets, str):
        hits = [n for n in names if re.fullmatch(targets, n)]
        unused = [] if hits else [targets]
    else:
        hits = [n for n in names if any(_matches(n, t) for t in targets)]
        unused = [t for t in targets if not any(_matches(n, t) for n in names)]
    if unused or not hits:
        raise TunelabError(
            f"target module(s) {unused} match nothing in this model", where=where,
            fix=f"use 'all-linear' or names of its linear modules: {', '.join(available)}",
        )
    return hits


def transformer_blocks(model: torch.nn.Module) -> torch.nn.ModuleList:
    """The stack of decoder blocks (the longest ModuleList of the model: `model.layers` for LLaMA)."""
    lists = [m for m in model.modules() if isinstance(m, torch.nn.ModuleList)]
    if not lists:
        raise TunelabError("this model has no stack of transformer blocks to freeze", where="method.freeze",
                           fix="use method.name=full or lora")
    return max(lists, key=len)
