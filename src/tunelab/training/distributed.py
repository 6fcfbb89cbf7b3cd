"""Data-parallel training over torch.distributed (launched by torchrun; gloo on CPU, NCCL on GPU).

Every rank holds the whole model. An optimizer step consumes ``grad_accum × world_size`` micro-batches — the
same micro-batches, in the same order, that one process with ``grad_accum × world_size`` accumulation would —
and rank r takes every world_size-th of them. Each rank sums its token losses, the gradients are summed across
ranks once per step (one flat all-reduce) and divided by the global count of loss tokens, so two processes
give the same update as one process with double accumulation (tested). With ``train.sharding: fsdp`` the
model is sharded instead of replicated (tunelab.training.fsdp) and FSDP reduces the gradients; with
``train.sharding: deepspeed`` a DeepSpeed ZeRO engine partitions the training state and reduces them
(tunelab.training.deepspeed); the micro-batch assignment and the scaling stay the same.

Launch: ``tunelab train RECIPE --nproc 2`` re-runs the command under ``torch.distributed.run`` (torchrun);
multi-node: run ``torchrun --nnodes N --node-rank I --master-addr HOST --nproc-per-node G -m tunelab.cli.main
train RECIPE`` on every node (see docs/training.md).
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
from dataclasses import dataclass

import torch
import torch.distributed as dist

__all__ = ["DistContext", "init_distributed", "launch"]

LAUNCHED_ENV = "TUNELAB_DISTRIBUTED_CHILD"


@dataclass
class DistContext:
    rank: int = 0
    world: int = 1
    local_rank: int = 0

    @property
    def enabled(self) -> bool:
        return self.world > 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    def barrier(self) -> None:
        if self.enabled:
            dist.barrier()

    def sum_int(self, value: int) -> int:
        if not self.enabled:
            return value
        t = torch.tensor([value], dtype=torch.long)
        dist.all_reduce(t)
        return int(t.item())

    def max_int(self, value: int) -> int:
        """The largest ``value`` over all ranks (every rank gets it)."""
        if not self.enabled:
            return value
        t = torch.tensor([value], dtype=torch.long)
        dist.all_reduce(t, op=dist.ReduceOp.MAX)
        return int(t.item())

    def gather_float(self, value: float) -> list[float]:
        """Every rank's ``value``, in rank order (every rank gets the list)."""
        if not self.enabled:
            return [value]
        out = [torch.zeros(1, dtype=torch.float64) for _ in range(self.world)]
        dist.all_gather(out, torch.tensor([value], dtype=torch.float64))
        return [float(t.item()) for t in out]

    def any_flag(self, flag: bool) -> bool:
        """True on every rank when any rank raised the flag (so all ranks stop at the same step)."""
        return self.sum_int(int(flag)) > 0

    def all_reduce_grads(self, params: list[torch.nn.Parameter]) -> None:
        """Sum gradients across ranks with one flat buffer (a rank with no micro-batch contributes zeros)."""
        if not self.enabled:
            return
        grads = [p.grad if p.grad is not None else torch.zeros_like(p) for p in params]
        flat = torch.cat([g.reshape(-1).float() for g in grads])
        dist.all_reduce(flat)
        offset = 0
        for p, g in zip(params, grads, strict=True):
            n = g.numel()
            p.grad = flat[offset:offset + n].view_as(g).to(g.dtype)
            offset += n

    def shutdown(self) -> None:
        if self.enabled and dist.is_initialized():
            dist.destroy_process_group()


def init_distributed(device: str = "cpu") -> DistContext:
    """A context from torchrun's environment (WORLD_SIZE, RANK, LOCAL_RANK); a no-op for one process."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        return DistContext()
    rank, local = int(os.environ["RANK"]), int(os.environ.get("LOCAL_RANK", "0"))
    if not dist.is_initialized():
        backend = "nccl" if device == "cuda" else "gloo"
        if device == "cuda":
            torch.cuda.set_device(local)
        dist.init_process_group(backend=backend)
    if rank != 0:  # one voice: progress bars and summaries come from rank 0
        from tunelab.util.console import console

        console.quiet = True
    return DistContext(rank=rank, world=world, local_rank=local)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def launch(nproc: int, argv: list[str]) -> int:
    """Re-run `tunelab <argv>` as `nproc` processes under torchrun on this machine; returns the exit code."""
    cmd = [sys.executable, "-m", "torch.distributed.run", f"--nproc-per-node={nproc}", "--nnodes=1",
           f"--master-port={_free_port()}", "-m", "tunelab.cli.main", *argv]
    env = {**os.environ, LAUNCHED_ENV: "1", "OMP_NUM_THREADS": os.environ.get(
        "OMP_NUM_THREADS", str(max(1, (os.cpu_count() or 1) // nproc)))}
    return subprocess.call(cmd, env=env)
