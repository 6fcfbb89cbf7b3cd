"""`tunelab runs list|show|compare`: read run folders directly (no tracker needed)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import yaml

from tunelab.errors import TunelabError

__all__ = ["compare_runs", "find_runs", "run_record"]


def _read(path: Path) -> dict[str, Any]:
    try:
        return json.loads(path.read_text(encoding="utf-8")) if path.is_file() else {}
    except (OSError, json.JSONDecodeError):
        return {}


def _flatten(d: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    out: dict[str, Any] = {}
    for k, v in d.items():
        if isinstance(v, dict):
            out.update(_flatten(v, f"{prefix}{k}."))
        else:
            out[f"{prefix}{k}"] = v
    return out


def _status(run: Path, summary: dict[str, Any]) -> str:
    if summary:
        return "finished"
    if (run / "checkpoints").is_dir():
        return "interrupted (resumable)"
    return "failed or running"


def run_record(run: Path) -> dict[str, Any]:
    """What a run folder says about itself: config, outcome, throughput, evaluation."""
    if not (run / "config.yaml").is_file():
        raise TunelabError(f"'{run}' is not a tunelab run folder (no config.yaml)", fix="tunelab runs list")
    config = yaml.safe_load((run / "config.yaml").read_text(encoding="utf-8")) or {}
    summary = _read(run / "train_summary.json")
    manifest = _read(run / "manifest.json")
    ev = _read(run / "eval" / "metrics.json")
    tuned, base = ev.get("tuned") or {}, ev.get("base") or {}
    main = tuned.get("main")
    return {
        "name": run.name, "path": str(run), "status": _status(run, summary), "created": manifest.get("created"),
        "model": config.get("model", {}).get("name"), "method": config.get("method", {}).get("name"),
        "objective": config.get("train", {}).get("objective", "sft"),
        "steps": summary.get("steps"), "train_time_s": summary.get("train_time_s"),
        "tokens_per_s": summary.get("real_tokens_per_s"), "best_val_loss": summary.get("best_val_loss"),
        "trainable_params": summary.get("trainable_params"), "peak_rss_mb": summary.get("peak_rss_mb"),
        "data_fingerprint": (manifest.get("data") or {}).get("fingerprint"),
        "eval_metric": main, "eval_tuned": tuned.get(main) if main else None,
        "eval_base": base.get(main) if main else None, "config": config, "summary": summary, "eval": ev,
    }


def find_runs(root: str | Path) -> list[dict[str, Any]]:
    """Every run folder under `root` (sweep trials included), newest first."""
    base = Path(root)
    if not base.is_dir():
        raise TunelabError(f"runs folder not found: {base}", where="--dir", fix="pass the output.dir of your recipes")
    runs = [p.parent for p in base.rglob("config.yaml") if "checkpoints" not in p.parts]
    records = [run_record(p) for p in runs]
    return sorted(records, key=lambda r: r["created"] or "", reverse=True)


def compare_runs(paths: list[str]) -> tuple[list[dict[str, Any]], dict[str, list[Any]]]:
    """Records of the runs and the config keys whose values differ between them (key -> value per run)."""
    if len(paths) < 2:
        raise TunelabError("compare needs at least two run folders", fix="tunelab runs compare RUN_A RUN_B")
    records = [run_record(Path(p)) for p in paths]
    flat = [_flatten(r["config"]) for r in records]
    keys = sorted(set().union(*flat))
    differ = {k: [f.get(k) for f in flat] for k in keys
              if len({json.dumps(f.get(k), sort_keys=True, default=str) for f in flat}) > 1 and not k.startswith("output.")}
    return records, differ
