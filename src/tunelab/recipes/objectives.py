"""Which recipe trains which objective (``train.objective``); every recipe accepts every method.

- ``sft``: `SFTRecipe` (next-token loss on assistant turns, or on every token of plain text);
- ``pretrain``: `SFTRecipe` on plain text packed into blocks (``data.packing: blocks``, set by the recipe
  validator): the only difference from SFT is the data, so there is no second training loop;
- ``classify``: `ClassifyRecipe` (a new sequence-classification head);
- ``preference``, ``reward``, ``grpo``/``rloo``, ``ppo`` (`PPORecipe`, tunelab's own loop with a value
  head): see docs/preferences.md.

A new objective adds one line to ``RECIPES`` (module and class of its recipe). A recipe class may define a
static ``preflight(recipe)`` that refuses impossible settings before a run folder is created.
"""

from __future__ import annotations

import importlib

from tunelab.config.specs import Recipe
from tunelab.errors import TunelabError

__all__ = ["GENERATIVE", "RECIPES", "recipe_class"]

RECIPES: dict[str, tuple[str, str]] = {
    "sft": ("tunelab.recipes.sft", "SFTRecipe"),
    "pretrain": ("tunelab.recipes.sft", "SFTRecipe"),
    "classify": ("tunelab.recipes.classify", "ClassifyRecipe"),
    "preference": ("tunelab.recipes.preference", "PreferenceRecipe"),
    "reward": ("tunelab.recipes.reward", "RewardRecipe"),
    "grpo": ("tunelab.recipes.rl", "OnlineRLRecipe"),
    "rloo": ("tunelab.recipes.rl", "OnlineRLRecipe"),
    "ppo": ("tunelab.recipes.ppo", "PPORecipe"),
}
GENERATIVE = ("sft", "pretrain", "preference", "grpo", "rloo", "ppo")  # train a causal LM: an encoder cannot


def recipe_class(recipe: Recipe) -> type:
    """The recipe class for ``recipe.train.objective``, after checking that the model can learn it.

    Raises:
        TunelabError: an encoder-only model with a generative objective, an objective without a recipe, or
            what the recipe's own ``preflight`` refuses.
    """
    from tunelab.models import resolve_model

    objective = recipe.train.objective
    if objective not in RECIPES:
        raise TunelabError(f"train.objective={objective} has no training recipe in this version",
                           where="train.objective", fix=f"use one of: {', '.join(RECIPES)}")
    if objective in GENERATIVE and resolve_model(recipe.model.name).kind == "encoder":
        raise TunelabError(f"model '{recipe.model.name}' is an encoder and cannot generate text "
                           f"(train.objective={objective})", where="model.name, train.objective",
                           fix="use train.objective=classify with this model, or a decoder such as "
                           "smollm2-135m-instruct")
    module, name = RECIPES[objective]
    cls = getattr(importlib.import_module(module), name)
    preflight = getattr(cls, "preflight", None)
    if callable(preflight):
        preflight(recipe)
    return cls
