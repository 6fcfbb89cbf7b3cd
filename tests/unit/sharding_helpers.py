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
