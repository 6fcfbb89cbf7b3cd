"""Sharded data-parallel training with PyTorch FSDP2 (``train.sharding: fsdp`` with ``--nproc N > 1``).

Each decoder layer becomes one FSDP unit (``fully_shard``), and everything outside the layers (embeddings,
final norm, the tied head, PEFT extras) one more: the root. A rank keeps 1/N of every parameter, gradient and
optimizer state; a layer's full weights exist only while its forward or backward runs (all-gather), and its
gradients are reduce-scattered back to the owning shards.

The root is :class:`ShardedRoot`, a thin module whose forward runs any function on the model
(``root(supervised_nll, batch)``, ``root(mean_nll, rows, ...)``). Our loss calls the decoder and the head
separately (the head runs only at labelled positions), so the causal LM's own forward never runs; routing every
use of the model through the root's forward is what makes FSDP all-gather the root parameters around it.

Update semantics are those of the replicated path (tunelab.training.distributed): the loss of each micro-batch is
divided by the global count of loss tokens and the gradients are **summed** over ranks (FSDP2 averages by default:
the divide factor is set to 1 and the reduction forced to a plain sum, which gloo also supports), so N processes
with accumulation A give the update of one process with accumulation N·A. Every rank must run the same number of
forward/backward passes (each one is a collective): a rank with fewer micro-batches in the last step of an epoch
runs zero-weighted copies (:func:`balanced_passes`).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
from torch import nn

from tunelab.config.specs import Recipe, TrainSpec
from tunelab.errors import TunelabError

__all__ = ["FSDP_METHODS", "FSDP_OBJECTIVES", "FSDP_OPTIMIZERS", "ShardedRoot", "artifact_state_dict",
           "balanced_passes", "decoder_layers", "gather_full", "gather_optimizer_state", "place_all", "place_like",
           "preflight", "scalar", "shard_model"]

FSDP_OBJECTIVES = ("sft", "pretrain")  # the recipes with our own training loop (SFTRecipe)
# Methods whose trainable weights live inside the sharded modules as ordinary parameters (tested). Not:
# qlora (bitsandbytes 4-bit tensors cannot be split into DTensor shards); prefix/prompt/ptuning (PEFT saves
# their virtual-token tables by reading the sharded weights directly, bypassing the gathered state dict);
# bottleneck (our own adapter, not tried under FSDP yet).
FSDP_METHODS = ("full", "freeze", "lora", "ia3")
# Element-wise optimizers give the same update on a shard as on the whole tensor. Adafactor factors its second
# moment over whole rows and columns of a matrix (a shard holds only some rows); 8-bit AdamW keeps
# bitsandbytes state tensors that are not DTensors.
FSDP_OPTIMIZERS = ("adamw", "sgd")


# ------------------------------------------------------------------------------------------------ preflight


def preflight(recipe: Recipe) -> None:
    """Refuse FSDP settings that cannot work, before a run folder exists or weights load.

    Raises:
        TunelabError: naming the conflicting keys (``train.sharding`` and the other one).
    """
    t, m = recipe.train, recipe.method
    if t.sharding != "fsdp":
        _refuse_options_without_fsdp(t)
        return
    if t.objective not in FSDP_OBJECTIVES:
        raise TunelabError(f"train.sharding=fsdp is not supported with train.objective={t.objective} "
                           "(that recipe trains through TRL or its own loop, replicated only)",
                           where="train.sharding, train.objective",
                           fix=f"use train.sharding=none, or one of: {', '.join(FSDP_OBJECTIVES)}")
    if m.name not in FSDP_METHODS:
        raise TunelabError(f"train.sharding=fsdp does not support method.name={m.name}",
                           where="train.sharding, method.name",
                           fix=f"use train.sharding=none with {m.name}, or a method of: {', '.join(FSDP_METHODS)}")
    if t.optimizer not in FSDP_OPTIMIZERS:
        raise TunelabError(f"train.sharding=fsdp does not support train.optimizer={t.optimizer} (its state is not "
                           "element-wise, so a shard's update would differ from the whole tensor's)",
                           where="train.sharding, train.optimizer", fix="use train.optimizer=adamw or sgd")
    _check_offload(recipe)


def _refuse_options_without_fsdp(t: TrainSpec) -> None:
    """FSDP options set while sharding is off would silently do nothing."""
    for key, value, default in (("fsdp_offload_params", t.fsdp_offload_params, False),
                                ("fsdp_reshard_after_forward", t.fsdp_reshard_after_forward, True),
                                ("fsdp_mixed_precision", t.fsdp_mixed_precision, False)):
        if value != default:
            raise TunelabError(f"train.{key} is set but train.sharding is '{t.sharding}'",
                               where=f"train.{key}, train.sharding",
                               fix=f"set train.sharding=fsdp, or remove train.{key}")


def _check_offload(recipe: Recipe) -> None:
    from tunelab.models import resolve_device

    if recipe.train.fsdp_offload_params and resolve_device(recipe.model.device) != "cuda":
        raise TunelabError("train.fsdp_offload_params moves parameter shards from the GPU to CPU memory; this run "
                           "is on the CPU, where they already are", where="train.fsdp_offload_params, model.device",
                           fix="remove train.fsdp_offload_params (or run on a CUDA GPU)")


# ------------------------------------------------------------------------------------------------ sharding


class ShardedRoot(nn.Module):
    """The FSDP root around a model: ``root(fn, *args)`` runs ``fn(model, *args)`` inside the root's forward.

    FSDP all-gathers the root unit's parameters in its pre-forward hook; calling through the root makes every
    use of the model (training loss, validation, generation) see whole parameters outside the decoder layers.
    """

    def __init__(self, model: nn.Module):
        super().__init__()
        self.model = model

    def forward(self, fn: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
        return fn(self.model, *args, **kwargs)


def decoder_layers(model: nn.Module) -> list[nn.Module]:
    """The transformer blocks of a causal LM (optionally PEFT-wrapped), one FSDP unit each.

    Raises:
        TunelabError: the architecture has no ``layers`` / ``h`` block list under its decoder.
    """
    inner = model.get_base_model() if callable(getattr(model, "get_base_model", None)) else model
    decoder = inner.get_decoder() if callable(getattr(inner, "get_decoder", None)) else inner
    for name in ("layers", "h", "blocks"):
        blocks = getattr(decoder, name, None)
        if isinstance(blocks, nn.ModuleList) and len(blocks):
            return list(blocks)
    raise TunelabError(f"cannot find the decoder layers of {type(inner).__name__} to shard",
                       where="train.sharding", fix="use train.sharding=none with this model")


def _fsdp_kwargs(train: TrainSpec, device: str, world: int) -> dict[str, Any]:
    from torch.distributed.device_mesh import init_device_mesh
    from torch.distributed.fsdp import CPUOffloadPolicy, MixedPrecisionPolicy

    kind = device.split(":")[0]
    kwargs: dict[str, Any] = {"mesh": init_device_mesh(kind, (world,)),
                              "reshard_after_forward": train.fsdp_reshard_after_forward}
    if train.fsdp_mixed_precision:
        # bf16 copies for all-gather and compute; gradients reduced and stored in fp32 (the shards stay fp32).
        kwargs["mp_policy"] = MixedPrecisionPolicy(param_dtype=torch.bfloat16, reduce_dtype=torch.float32)
    if train.fsdp_offload_params:
        kwargs["offload_policy"] = CPUOffloadPolicy()
    return kwargs


def shard_model(model: nn.Module, train: TrainSpec, device: str, world: int) -> ShardedRoot:
    """Shard ``model`` in place (its parameters become DTensor shards) and return the FSDP root around it.

    Build the optimizer after this: it must hold the sharded parameters.
    """
    from torch.distributed.fsdp import FSDPModule, fully_shard

    kwargs = _fsdp_kwargs(train, device, world)
    for layer in decoder_layers(model):
        fully_shard(layer, **kwargs)
    root = ShardedRoot(model)
    fully_shard(root, **kwargs)
    for module in root.modules():
        if isinstance(module, FSDPModule):
            # Our loss is already divided by the global token count: sum the ranks' gradients, do not average.
            # A forced SUM also avoids PREMUL_SUM, which gloo does not have.
            module.set_gradient_divide_factor(1.0)
            module.set_force_sum_reduction_for_comms(True)
    return root


def balanced_passes(micro_batches: list[dict[str, torch.Tensor]], most: int,
                    filler: Callable[[], dict[str, torch.Tensor]]) -> list[tuple[dict[str, torch.Tensor], float]]:
    """(micro-batch, loss weight) pairs: this rank's own with weight 1, then weight-0 copies up to ``most``.

    Every forward/backward of a sharded model is a collective, so all ranks must run as many as the rank with
    the most micro-batches. A padding pass repeats a real batch (so it touches the same parameters: every rank
    then reduces gradients for the same tensors) and contributes exactly zero.

    Args:
        micro_batches: this rank's micro-batches of the step.
        most: the largest count over all ranks.
        filler: builds a batch when this rank has none at all.
    """
    own = [(mb, 1.0) for mb in micro_batches]
    if len(own) >= most:
        return own
    template = micro_batches[0] if micro_batches else filler()
    return own + [(template, 0.0)] * (most - len(own))


# ------------------------------------------------------------------------------------------------ gather


def _is_dtensor(t: Any) -> bool:
    from torch.distributed.tensor import DTensor

    return isinstance(t, DTensor)


def scalar(t: torch.Tensor) -> float:
    """A Python float of a tensor that may be a DTensor (the global gradient norm from clip_grad_norm_)."""
    return float(t.full_tensor() if _is_dtensor(t) else t)


def gather_full(tensors: dict[str, torch.Tensor], keep: bool) -> dict[str, torch.Tensor]:
    """Whole CPU copies of (possibly sharded) tensors; collective: every rank calls it, in the same order.

    Args:
        tensors: name -> tensor or DTensor.
        keep: whether this rank keeps the result (the writing rank); others drop each copy at once.
    """
    out: dict[str, torch.Tensor] = {}
    for name, t in tensors.items():
        full = t.detach().full_tensor() if _is_dtensor(t) else t.detach()
        if keep:
            out[name] = full.cpu()
    return out


def gather_optimizer_state(optimizer: torch.optim.Optimizer, keep: bool) -> dict[str, Any]:
    """The optimizer's state dict with whole tensors (what one process would hold); collective.

    Same layout as ``optimizer.state_dict()`` (state keyed by parameter index), so checkpoints of sharded and
    replicated runs have the same files.
    """
    sd = optimizer.state_dict()
    state = {idx: gather_full(st, keep) | {k: v for k, v in st.items() if not torch.is_tensor(v)}
             for idx, st in sd["state"].items()}
    return {"state": state, "param_groups": sd["param_groups"]}


def artifact_state_dict(model: nn.Module, trainable_only: bool) -> dict[str, torch.Tensor]:
    """The model's full state dict on rank 0 (empty elsewhere), on CPU; collective.

    Args:
        model: the sharded model (not the root: keys are the model's own).
        trainable_only: gather only trainable parameters (an adapter); False for full weights.
    """
    from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict

    options = StateDictOptions(full_state_dict=True, cpu_offload=True, ignore_frozen_params=trainable_only)
    sd = get_model_state_dict(model, options=options)
    # Tied weights (SmolLM2's head is its embedding) come back as separate copies under both names; a
    # single-process save stores the first name only, and loading ties them again.
    tied = ({n for n, _ in model.named_parameters(remove_duplicate=False)}
            - {n for n, _ in model.named_parameters()})
    return {k: v for k, v in sd.items() if k not in tied}


def place_like(param: torch.Tensor, full: torch.Tensor) -> torch.Tensor:
    """``full`` laid out like ``param``: this rank's shard of it when ``param`` is a DTensor, else ``full``.

    Every rank holds the whole tensor (read from the checkpoint), so each takes its own slice without
    communication (``src_data_rank=None``). Tensors of another shape (an optimizer's step count) pass through.
    """
    if not _is_dtensor(param) or tuple(full.shape) != tuple(param.shape):
        return full
    from torch.distributed.tensor import distribute_tensor

    return distribute_tensor(full.to(device=param.device_mesh.device_type, dtype=param.dtype),
                             param.device_mesh, param.placements, src_data_rank=None)


def place_all(tensors: dict[str, torch.Tensor] | None, model: nn.Module) -> dict[str, torch.Tensor] | None:
    """Whole tensors named like ``model``'s parameters, each laid out like its parameter (see `place_like`)."""
    if tensors is None:
        return None
    params = dict(model.named_parameters())
    return {name: place_like(params[name], t) for name, t in tensors.items()}
