"""Bottleneck adapters (Houlsby et al. 2019, Pfeiffer et al. 2021): tunelab's own, small implementation.

Each selected decoder block gets a residual bottleneck ``x + up(act(down(x)))`` (down: d -> r, up: r -> d)
on the output of its MLP ('pfeiffer') or of both its attention and its MLP ('houlsby'). ``up`` starts at
zero, so the adapted model computes exactly what the base computes until it trains.

Why our own: PEFT 0.21 has no bottleneck adapters, and the maintained `adapters` library (AdapterHub)
requires transformers 4.x. The adapters attach with forward hooks on the block's attention/MLP modules, so
the base model's module tree and state dict are untouched and any LLaMA/Mistral/Qwen-style decoder works.

The adapter is not a PEFT adapter: `adapter/` holds ``bottleneck_config.json`` and
``adapter_model.safetensors`` (adapter tensors only, plus a new classification head for
train.objective=classify), and reloads through `load_bottleneck` (used by `tunelab.models.load_run_model`,
classification evaluation and the serving engine). It cannot be merged into the base weights: the
activation between down and up is not linear.
"""

from __future__ import annotations

import contextlib
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import torch
from torch import nn

from tunelab.config.specs import BottleneckSpec, Recipe
from tunelab.errors import TunelabError

__all__ = [
    "CONFIG_NAME",
    "UNSUPPORTED_OBJECTIVES",
    "WEIGHTS_NAME",
    "BottleneckAdapter",
    "BottleneckModel",
    "apply_bottleneck",
    "bottleneck_width",
    "check_bottleneck",
    "check_on_skeleton",
    "is_bottleneck_dir",
    "load_bottleneck",
    "save_bottleneck",
]

CONFIG_NAME = "bottleneck_config.json"
WEIGHTS_NAME = "adapter_model.safetensors"
_FORMAT = 1
# Attribute names of a decoder block's attention and MLP in transformers' LLaMA-style models (LLaMA,
# Mistral, Qwen2/3, Gemma, Phi-3: self_attn/mlp; GPT-2: attn/mlp; Falcon: self_attention/mlp; Mixtral: MoE).
_ATTN_NAMES = ("self_attn", "self_attention", "attn")
_MLP_NAMES = ("mlp", "feed_forward", "block_sparse_moe")
_ACTIVATIONS = {"relu": nn.ReLU, "gelu": nn.GELU, "swish": nn.SiLU}
# The new head of a *ForSequenceClassification model (tunelab.recipes.classify.HEAD_NAMES).
_HEAD_NAMES = ("score", "classifier")
# train.objective values whose recipes cannot use a bottleneck model (see docs/methods.md).
UNSUPPORTED_OBJECTIVES = {
    "reward": "the reward recipe also exports a merged Transformers folder, and bottleneck adapters cannot merge",
}


class BottleneckAdapter(nn.Module):
    """``x + up(dropout(act(down(x))))`` with ``up`` zero-initialised (the identity at the start).

    Args:
        hidden: the model's hidden size d.
        size: the bottleneck width r.
        activation: 'relu', 'gelu' or 'swish'.
        dropout: dropout probability on the bottleneck activations.
    """

    def __init__(self, hidden: int, size: int, activation: str, dropout: float):
        super().__init__()
        self.down = nn.Linear(hidden, size)
        self.act = _ACTIVATIONS[activation]()
        self.dropout = nn.Dropout(dropout)
        self.up = nn.Linear(size, hidden)
        nn.init.zeros_(self.up.weight)
        nn.init.zeros_(self.up.bias)
        self.enabled = True  # False inside BottleneckModel.disable_adapter(): the hook passes outputs through

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # x: (B, T, d), possibly bf16 from a bf16 base; the adapter's own weights stay fp32 (autocast, when
        # on, still runs the matmuls in bf16). The sum is taken in x's dtype: a zero delta leaves x exact.
        delta = self.up(self.dropout(self.act(self.down(x.to(self.down.weight.dtype)))))
        return x + delta.to(x.dtype)

    def hook(self, _module: nn.Module, _args: Any, output: Any) -> Any:
        """Forward hook on an attention or MLP module: adapt its hidden-state output (the first of a tuple)."""
        if not self.enabled:
            return output
        if isinstance(output, tuple):
            return (self(output[0]), *output[1:])
        return self(output)


class BottleneckModel(nn.Module):
    """A base model with bottleneck adapters hooked into its blocks (the PeftModel-like face recipes use).

    Attributes the wrapper does not have (config, generate, get_decoder, ...) come from the base model;
    ``get_base_model()`` returns it, so code written for PEFT-wrapped models finds the decoder and head. The
    base is held as ``base_lm``: ``base_model`` keeps its transformers meaning (the backbone without the
    head), which TRL's fused-head forward looks up on whatever model it trains.
    """

    def __init__(self, base: nn.Module, adapters: nn.ModuleDict, handles: list[Any], config: dict[str, Any],
                 head: str | None = None):
        super().__init__()
        self.base_lm = base
        self.bottleneck = adapters
        self.bottleneck_config = config
        self.head_name = head
        self.adapter_name = "default"  # the one adapter this model holds (the serving engine names it)
        self.hook_handles = handles  # torch RemovableHandles: .remove() on each detaches the adapters

    def forward(self, *args: Any, **kwargs: Any) -> Any:
        return self.base_lm(*args, **kwargs)

    def __getattr__(self, name: str) -> Any:
        try:
            return super().__getattr__(name)
        except AttributeError:
            if name == "base_lm":  # not set yet (inside __init__): no recursion
                raise
            return getattr(self.base_lm, name)

    def get_base_model(self) -> nn.Module:
        """The transformers model (its blocks carry the adapters' hooks)."""
        return self.base_lm

    def adapter_state_dict(self) -> dict[str, torch.Tensor]:
        """The tensors `save_pretrained` writes: ``bottleneck.*`` and, for a classifier, ``head.<name>.*``."""
        out = {f"bottleneck.{k}": v for k, v in self.bottleneck.state_dict().items()}
        if self.head_name is not None:
            head = getattr(self.base_lm, self.head_name)
            out.update({f"head.{self.head_name}.{k}": v for k, v in head.state_dict().items()})
        return out

    def save_pretrained(self, save_directory: str | Path, **_kwargs: Any) -> None:
        """Write the adapter (not the base) to ``save_directory`` (PEFT's keyword arguments are ignored)."""
        save_bottleneck(self, save_directory)

    @contextlib.contextmanager
    def disable_adapter(self) -> Iterator[None]:
        """Inside the block the model computes exactly the base model (PEFT's context manager of the same name)."""
        adapters = list(self.bottleneck.values())
        states = [a.enabled for a in adapters]
        for a in adapters:
            a.enabled = False
        try:
            yield
        finally:
            for a, state in zip(adapters, states, strict=True):
                a.enabled = state

    def set_adapter(self, name: str) -> None:
        """PEFT's adapter selection, for the one adapter this model holds."""
        if name != self.adapter_name:
            raise TunelabError(f"this bottleneck model holds one adapter, '{self.adapter_name}', not '{name}'",
                               fix="serve each bottleneck run on its own base")


def bottleneck_width(hidden: int, spec: BottleneckSpec) -> int:
    """The bottleneck width r: `spec.size`, else hidden // reduction_factor (16 when neither is set), >= 1."""
    if spec.size is not None:
        return spec.size
    return max(1, int(hidden // (spec.reduction_factor or 16.0)))


def _blocks(model: nn.Module) -> nn.ModuleList:
    lists = [m for m in model.modules() if isinstance(m, nn.ModuleList)]
    if not lists:
        raise TunelabError(f"{type(model).__name__} has no stack of decoder blocks for bottleneck adapters",
                           where="method.name", fix="use method.name=lora (PEFT supports more architectures)")
    return max(lists, key=len)  # the decoder stack is the longest ModuleList (`model.layers` for LLaMA)


def _child(block: nn.Module, names: tuple[str, ...], what: str) -> nn.Module:
    for name in names:
        if isinstance(getattr(block, name, None), nn.Module):
            return getattr(block, name)
    children = ", ".join(n for n, _ in block.named_children())
    raise TunelabError(
        f"method 'bottleneck' cannot find the {what} of {type(block).__name__} (children: {children}); it "
        f"expects a LLaMA/Mistral/Qwen-style decoder block with one of {', '.join(names)}",
        where="method.name, model.name", fix="use method.name=lora with this model")


def _points(placement: str) -> tuple[str, ...]:
    return ("attn", "mlp") if placement == "houlsby" else ("mlp",)


def _select_layers(n: int, layers: list[int] | None) -> list[int]:
    if layers is None:
        return list(range(n))
    bad = [i for i in layers if not -n <= i < n]
    if bad:
        raise TunelabError(f"block indices {bad} are outside this model's {n} blocks", where="method.bottleneck.layers",
                           fix=f"use indices from 0 to {n - 1} (or -{n} to -1 from the end), or null for every block")
    chosen = sorted({i % n for i in layers})
    if len(chosen) != len(layers):
        raise TunelabError(f"block indices {layers} name the same block twice", where="method.bottleneck.layers",
                           fix="list each block once")
    return chosen


def _hidden_size(model: nn.Module) -> int:
    embed = model.get_input_embeddings() if hasattr(model, "get_input_embeddings") else None
    hidden = getattr(getattr(model, "config", None), "hidden_size", None) or getattr(embed, "embedding_dim", None)
    if not isinstance(hidden, int):
        raise TunelabError(f"cannot tell the hidden size of {type(model).__name__}", where="method.name",
                           fix="use method.name=lora with this model")
    return hidden


def check_bottleneck(model: nn.Module, spec: BottleneckSpec) -> list[int]:
    """The block indices that get adapters; TunelabError when the blocks, their parts or the layers are wrong.

    Works on a weightless (meta-device) copy too: only the module tree is read.
    """
    blocks = _blocks(model)
    layers = _select_layers(len(blocks), spec.layers)
    for i in layers:
        for point in _points(spec.placement):
            _child(blocks[i], _ATTN_NAMES if point == "attn" else _MLP_NAMES,
                   "attention" if point == "attn" else "MLP")
    return layers


def _train_head(model: nn.Module) -> str:
    """A classifier's new head trains (fp32) beside the adapters; its name is returned."""
    for name in _HEAD_NAMES:
        head = getattr(model, name, None)
        if isinstance(head, nn.Module):
            for p in head.parameters():
                p.data = p.data.float()
                p.requires_grad_(True)
            return name
    raise TunelabError(f"{type(model).__name__} has no classification head named {' or '.join(_HEAD_NAMES)}",
                       where="model.name, train.objective", fix="use method.name=lora or full")


def apply_bottleneck(model: nn.Module, spec: BottleneckSpec, task_type: str = "CAUSAL_LM") -> BottleneckModel:
    """Freeze `model` and hook trainable fp32 bottleneck adapters into its blocks.

    Args:
        model: a transformers decoder (causal LM, or *ForSequenceClassification with task_type 'SEQ_CLS').
        spec: the recipe's ``method.bottleneck`` section.
        task_type: 'CAUSAL_LM', or 'SEQ_CLS' (the classification head trains too and is saved with the adapter).

    Raises:
        TunelabError: blocks, attention or MLP not found; layer indices out of range; another task type.
    """
    if task_type not in ("CAUSAL_LM", "SEQ_CLS"):
        raise TunelabError(f"method 'bottleneck' does not support task type {task_type}", where="method.name",
                           fix="use method.name=lora")
    layers = check_bottleneck(model, spec)
    blocks = _blocks(model)
    hidden = _hidden_size(model)
    size = bottleneck_width(hidden, spec)
    device = next(model.parameters()).device
    model.requires_grad_(False)
    adapters, handles = nn.ModuleDict(), []
    for i in layers:
        for point in _points(spec.placement):
            part = _child(blocks[i], _ATTN_NAMES if point == "attn" else _MLP_NAMES, point)
            adapter = BottleneckAdapter(hidden, size, spec.activation, spec.dropout).to(device)
            adapters[f"layer{i}_{point}"] = adapter
            handles.append(part.register_forward_hook(adapter.hook))
    head = _train_head(model) if task_type == "SEQ_CLS" else None
    config = {"method": "bottleneck", "format": _FORMAT, "task_type": task_type, "hidden_size": hidden,
              "size": size, "placement": spec.placement, "activation": spec.activation, "dropout": spec.dropout,
              "layers": layers, "num_blocks": len(blocks), "head": head,
              "base_model": str(getattr(model, "name_or_path", "") or "")}
    return BottleneckModel(model, adapters, handles, config, head)


def is_bottleneck_dir(path: str | Path) -> bool:
    """True when `path` holds a saved bottleneck adapter."""
    return (Path(path) / CONFIG_NAME).is_file()


def save_bottleneck(model: BottleneckModel, out: str | Path) -> None:
    """Write ``bottleneck_config.json`` and ``adapter_model.safetensors`` (adapter tensors only) atomically."""
    import os
    import tempfile

    from safetensors.torch import save_file

    from tunelab.util.io import atomic_write_json

    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    tensors = {k: v.detach().cpu().contiguous() for k, v in model.adapter_state_dict().items()}
    fd, tmp = tempfile.mkstemp(prefix=f".{WEIGHTS_NAME}.", dir=out)
    os.close(fd)
    try:
        save_file(tensors, tmp, metadata={"format": "pt", "method": "bottleneck"})
        os.replace(tmp, out / WEIGHTS_NAME)
    finally:
        Path(tmp).unlink(missing_ok=True)
    atomic_write_json(out / CONFIG_NAME, model.bottleneck_config)


def _read_config(adapter_dir: Path) -> dict[str, Any]:
    path = adapter_dir / CONFIG_NAME
    try:
        config = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError) as e:
        raise TunelabError(f"cannot read the bottleneck adapter config: {e}", where=str(path),
                           fix="re-run training; the adapter folder is incomplete") from e
    if config.get("method") != "bottleneck" or config.get("format") != _FORMAT:
        raise TunelabError(f"'{path}' is not a bottleneck adapter config of format {_FORMAT}", where=str(path),
                           fix="load it with the tunelab version that wrote it")
    return config


def _load_tensors(model: BottleneckModel, adapter_dir: Path) -> None:
    from safetensors.torch import load_file

    path = adapter_dir / WEIGHTS_NAME
    if not path.is_file():
        raise TunelabError(f"bottleneck adapter weights are missing: {path}", where=str(adapter_dir),
                           fix="re-run training; the adapter folder is incomplete")
    tensors = load_file(str(path))
    expected = model.adapter_state_dict()
    if set(tensors) != set(expected):
        missing, extra = sorted(set(expected) - set(tensors)), sorted(set(tensors) - set(expected))
        raise TunelabError(f"bottleneck adapter tensors do not match its config (missing {missing[:3]}, "
                           f"unexpected {extra[:3]})", where=str(path), fix="re-run training")
    with torch.no_grad():
        for name, target in expected.items():
            if tensors[name].shape != target.shape:
                raise TunelabError(f"{name} has shape {tuple(tensors[name].shape)}, the model needs "
                                   f"{tuple(target.shape)}", where=str(path), fix="load it onto the base it was trained on")
            target.copy_(tensors[name])


def load_bottleneck(base: nn.Module, adapter_dir: str | Path) -> BottleneckModel:
    """Attach a saved bottleneck adapter to `base` (the model it was trained on) for inference (eval mode).

    Raises:
        TunelabError: unreadable config, missing or mismatched tensors, a base of another hidden size.
    """
    adapter_dir = Path(adapter_dir)
    config = _read_config(adapter_dir)
    hidden = _hidden_size(base)
    if hidden != config["hidden_size"]:
        raise TunelabError(f"the adapter was trained on a model of hidden size {config['hidden_size']}, this base "
                           f"has {hidden}", where=str(adapter_dir), fix="load it onto the base it was trained on")
    spec = BottleneckSpec(size=config["size"], placement=config["placement"], activation=config["activation"],
                          dropout=config["dropout"], layers=config["layers"])
    model = apply_bottleneck(base, spec, config["task_type"])
    _load_tensors(model, adapter_dir)
    model.requires_grad_(False)
    model.eval()
    return model


def check_on_skeleton(recipe: Recipe) -> None:
    """Objective, architecture and layer indices checked before weights load (TunelabError naming the keys)."""
    from tunelab.methods.skeleton import meta_model

    objective = recipe.train.objective
    if objective in UNSUPPORTED_OBJECTIVES:
        raise TunelabError(f"method 'bottleneck' does not work with train.objective={objective}: "
                           f"{UNSUPPORTED_OBJECTIVES[objective]}", where="method.name, train.objective",
                           fix="use method.name=lora or ia3 for this objective")
    if objective == "preference":
        _check_reference(recipe)
    name, remote = recipe.model.name, recipe.model.trust_remote_code
    try:
        skeleton = _meta_classifier(name, remote) if objective == "classify" else meta_model(name, remote)
    except ValueError:
        return  # no such head class for this architecture: the recipe's own loader says so, naming model.name
    check_bottleneck(skeleton, recipe.method.bottleneck)


def _check_reference(recipe: Recipe) -> None:
    """A 'peft' reference means "the policy with its adapter disabled", which only PEFT models offer."""
    from tunelab.recipes.preference import resolve_reference

    if resolve_reference(recipe) == "peft":
        raise TunelabError(
            f"preference.reference={recipe.preference.reference} means the PEFT base (adapter disabled) for "
            "adapter methods, and a bottleneck adapter is not a PEFT adapter",
            where="preference.reference, method.name",
            fix="set preference.reference=precompute (or copy), or use a reference-free loss (orpo, simpo)")


def _meta_classifier(name: str, trust_remote_code: bool) -> nn.Module:
    """The *ForSequenceClassification module tree of the model (meta device: shapes only, no weights)."""
    from transformers import AutoConfig, AutoModelForSequenceClassification

    from tunelab.models import resolve_model

    config = AutoConfig.from_pretrained(resolve_model(name).path, trust_remote_code=trust_remote_code)
    with torch.device("meta"):
        return AutoModelForSequenceClassification.from_config(config, trust_remote_code=trust_remote_code)
