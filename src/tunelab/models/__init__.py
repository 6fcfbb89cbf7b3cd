"""Model registry, loading and the dtype/device policy."""

from tunelab.models.loading import is_run_dir, load_causal_lm, load_run_model, load_tokenizer
from tunelab.models.precision import autocast, cpu_has_fast_bf16, resolve_device, resolve_precision
from tunelab.models.registry import BUILTINS, ResolvedModel, cache_root, resolve_model

__all__ = [
    "BUILTINS", "ResolvedModel", "autocast", "cache_root", "cpu_has_fast_bf16", "is_run_dir", "load_causal_lm", "load_run_model",
    "load_tokenizer", "resolve_device", "resolve_model", "resolve_precision",
]
