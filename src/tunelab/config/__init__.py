"""Recipe specs and loading."""

from tunelab.config.loading import apply_overrides, dump_recipe, load_recipe
from tunelab.config.specs import (
    DataSpec,
    EvalSpec,
    LoraSpec,
    MethodSpec,
    ModelSpec,
    OutputSpec,
    Recipe,
    SplitSpec,
    TrainSpec,
)

__all__ = [
    "DataSpec", "EvalSpec", "LoraSpec", "MethodSpec", "ModelSpec", "OutputSpec", "Recipe", "SplitSpec",
    "TrainSpec", "apply_overrides", "dump_recipe", "load_recipe",
]
