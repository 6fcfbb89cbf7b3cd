"""Fine-tuning methods as one model transform: `apply_method(model, MethodSpec)`.

Methods: full, freeze (top-k blocks / head / embeddings / final norm), lora (rsLoRA, DoRA, PiSSA/OLoRA
inits, LoRA+ learning rates), qlora (LoRA on a 4-bit base, CUDA only), prefix, prompt, ptuning, ia3,
bottleneck (Houlsby/Pfeiffer adapters).
Every recipe calls the same few functions, so every objective accepts every method:

- `preflight(recipe)`: conflicts caught before data or weights are loaded;
- `load_base_model(model_spec, method_spec, precision)`: the base in the dtype (or 4 bits) the method wants;
- `apply_method(model, spec)`: trainable flags set, adapters attached;
- `optimizer_param_groups(model, spec, lr, weight_decay)`: AdamW groups (LoRA+ ratios);
- `artifact_dir(spec)` / `saves_full_weights(spec)`: `model/` (full weights) or `adapter/` (PEFT, or
  tunelab's bottleneck format).

Bottleneck adapters are tunelab's own (`tunelab.methods.bottleneck`): PEFT 0.21 has none, and the
maintained `adapters` library requires transformers 4.x. They load back only through tunelab and never merge.
"""

from __future__ import annotations

import torch

from tunelab.config.specs import MethodSpec, ModelSpec, Recipe
from tunelab.errors import TunelabError
from tunelab.methods.bottleneck import apply_bottleneck
from tunelab.methods.freeze import apply_freeze, apply_full
from tunelab.methods.optim_groups import optimizer_param_groups
from tunelab.methods.params import ParamCounts, count_parameters, estimate_training_memory_mb
from tunelab.methods.peft_methods import PROMPT_LEARNING, wrap
from tunelab.methods.quantize import check_qlora_possible, is_4bit, load_4bit_base, prepare_4bit

__all__ = [
    "MERGEABLE",
    "METHODS",
    "PROMPT_LEARNING",
    "ParamCounts",
    "apply_method",
    "artifact_dir",
    "base_dtype",
    "count_parameters",
    "estimate_training_memory_mb",
    "is_prompt_learning",
    "load_base_model",
    "optimizer_param_groups",
    "preflight",
    "saves_full_weights",
]

METHODS = ("full", "freeze", "lora", "qlora", "prefix", "prompt", "ptuning", "ia3", "bottleneck")
# Methods whose trained state folds into the base weights (prompt learning adds inputs, not weights; a
# bottleneck adapter is non-linear).
MERGEABLE = ("lora", "qlora", "ia3")


def saves_full_weights(spec: MethodSpec) -> bool:
    """True when the run saves a whole model (`model/`), False when it saves an adapter (`adapter/`)."""
    return spec.name in ("full", "freeze")


def artifact_dir(spec: MethodSpec) -> str:
    """Name of the run-folder subdirectory holding the trained weights."""
    return "model" if saves_full_weights(spec) else "adapter"


def is_prompt_learning(spec_or_model: MethodSpec | torch.nn.Module) -> bool:
    """Prefix, prompt or P-tuning: virtual tokens the PEFT forward adds (not mergeable, not packable)."""
    if isinstance(spec_or_model, MethodSpec):
        return spec_or_model.name in PROMPT_LEARNING
    config = getattr(spec_or_model, "active_peft_config", None)
    return bool(getattr(config, "is_prompt_learning", False))


def base_dtype(spec: MethodSpec, precision: str) -> torch.dtype:
    """Storage dtype of the base weights: bf16 when they stay frozen under bf16 compute, else fp32.

    Full and freeze tuning keep fp32 weights so that updates are not rounded away and the saved model
    holds the untouched blocks exactly as loaded.
    """
    return torch.bfloat16 if precision == "bf16" and not saves_full_weights(spec) else torch.float32


def load_base_model(model_spec: ModelSpec, method: MethodSpec, precision: str,
                    dropout: float | None = None) -> torch.nn.Module:
    """The base causal LM as the method needs it: 4-bit for qlora (CUDA), else in `base_dtype`.

    `dropout` overrides the model's own dropout probabilities (train.dropout).
    """
    from tunelab.models import load_causal_lm, resolve_model

    dtype = base_dtype(method, precision)
    if method.name == "qlora":
        check_qlora_possible(model_spec.device)
        return load_4bit_base(str(resolve_model(model_spec.name).path), method, dtype, model_spec.trust_remote_code)
    return load_causal_lm(model_spec.name, model_spec.trust_remote_code, dtype=dtype, dropout=dropout)


def _wrap_task(model: torch.nn.Module, spec: MethodSpec, task_type: str) -> torch.nn.Module:
    """`wrap` for another PEFT task type; with SEQ_CLS, PEFT also trains and saves the new head (modules_to_save)."""
    from peft import get_peft_model

    from tunelab.methods.peft_methods import peft_config

    if task_type == "CAUSAL_LM":
        return wrap(model, spec)
    config = peft_config(model, spec)
    config.task_type = task_type
    try:
        return get_peft_model(model, config)
    except (ValueError, TypeError, NotImplementedError, AttributeError) as e:
        raise TunelabError(f"method '{spec.name}' cannot be applied to this {task_type} model: {e}",
                           where="method.name, train.objective", fix="use method.name=lora or full") from e


def apply_method(model: torch.nn.Module, spec: MethodSpec, task_type: str = "CAUSAL_LM") -> torch.nn.Module:
    """Return the model prepared for training with the chosen method (trainable flags set).

    Args:
        model: the base model.
        spec: the recipe's method section.
        task_type: PEFT task type: 'CAUSAL_LM', or 'SEQ_CLS' for a sequence classifier (train.objective=classify).

    Raises:
        TunelabError: the method cannot apply to this model (names the recipe key and what would work).
    """
    if spec.name == "full":
        out = apply_full(model)
    elif spec.name == "freeze":
        out = apply_freeze(model, spec.freeze)
    elif spec.name == "bottleneck":
        out = apply_bottleneck(model, spec.bottleneck, task_type)
    elif spec.name == "qlora":
        if not is_4bit(model):
            check_qlora_possible("auto")
            raise TunelabError("method.name=qlora but the base model is not loaded in 4 bits", where="method.name",
                               fix="load it with tunelab.methods.load_base_model")
        out = _wrap_task(prepare_4bit(model), spec, task_type)
    else:
        out = _wrap_task(model, spec, task_type)
    # Recorded so that helpers given only the model (optimizer groups, loss) know the method.
    out.tunelab_method = spec
    return out


def preflight(recipe: Recipe) -> None:
    """Catch method conflicts before data or weights are loaded; TunelabError naming the keys.

    Checks: qlora without CUDA; prompt learning with packed batches (virtual tokens are per row, a packed
    row holds many documents); target modules, freeze depth and bottleneck blocks against the model's
    architecture (built on the meta device from its config: no weights read); bottleneck with an objective
    whose recipe cannot use it.
    """
    from tunelab.methods.bottleneck import check_on_skeleton as check_bottleneck_on_skeleton
    from tunelab.methods.skeleton import check_on_skeleton

    m = recipe.method
    if m.name == "qlora":
        check_qlora_possible(recipe.model.device)
    if m.name in PROMPT_LEARNING and recipe.train.batching == "packed":
        raise TunelabError(f"method '{m.name}' adds virtual tokens to each row, which packed batches cannot hold",
                           where="method.name, train.batching",
                           fix="use train.batching=length_grouped, or method.name=lora")
    if m.name == "bottleneck":
        check_bottleneck_on_skeleton(recipe)
    check_on_skeleton(recipe)
