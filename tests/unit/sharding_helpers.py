"""Shared by the sharded-training tests (FSDP, DeepSpeed): the tiny-model recipe and metrics readers."""

from __future__ import annotations

import json
from pathlib import Path


def overrides(tmp_path: Path, chat_jsonl: Path, model_dir: Path, *extra: str) -> list[str]:
    """A deterministic fp32 LoRA recipe on the tiny model (dropout off, so processes can be compared exactly)."""
    return [f"data.path={chat_jsonl}", f"model.name={model_dir}", f"output.dir={tmp_path / 'runs'}",
            "train.batch_size=4", "train.lr=5e-3", "train.log_every=1", "model.precision=fp32", "model.threads=1",
            "eval.enabled=false", "data.split.test=0.1", "method.lora.dropout=0", *extra]


def rows(run_dir: Path) -> list[dict]:
    return [json.loads(x) for x in (run_dir / "metrics.jsonl").read_text().splitlines() if x.strip()]


def by_step(run_dir: Path, key: str) -> dict[int, float]:
    return {r["step"]: r[key] for r in rows(run_dir) if key in r}


def reference(overrides: list[str], name: str, accum: int = 2) -> Path:
    """One process with ``accum`` micro-batches per step, in this process."""
    import torch

    from tunelab import pipeline
    from tunelab.config import load_recipe

    torch.set_num_threads(1)
    return pipeline.train(load_recipe(None, [*overrides, f"output.name={name}", f"train.grad_accum={accum}"]), name)


def torchrun(tmp_path: Path, overrides: list[str], name: str, sharding: str, *flags: str, accum: int = 1) -> str:
    """2 processes with ``train.sharding=sharding``, through the CLI (which re-launches under torchrun)."""
    import os
    import subprocess
    import sys

    recipe = tmp_path / "recipe.yaml"
    recipe.write_text("data:\n  path: placeholder.jsonl\n", encoding="utf-8")
    cmd = [sys.executable, "-m", "tunelab.cli.main", "train", str(recipe), *overrides, f"output.name={name}",
           f"train.grad_accum={accum}", f"train.sharding={sharding}", "--nproc", "2", *flags]
    proc = subprocess.run(cmd, env={**os.environ, "OMP_NUM_THREADS": "1"}, capture_output=True, text=True,
                          timeout=300)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    return proc.stdout + proc.stderr


def assert_same_tensors(a: dict, b: dict) -> None:
    """Equal tensors up to reduction order: atol 1e-5 = 0.2% of one lr-5e-3 step (sums in another order, and
    Adam's division by sqrt(v) magnifies that rounding for the few elements whose gradients are near zero)."""
    import torch

    assert sorted(a) == sorted(b)
    for k in a:
        torch.testing.assert_close(b[k], a[k], rtol=1e-4, atol=1e-5)


def logits(model, tokenizer):
    import torch

    ids = tokenizer(["What color is item 7?", "Item 3 is blue."], return_tensors="pt", padding=True)
    with torch.no_grad():
        return model(**ids).logits
