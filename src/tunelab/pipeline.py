"""Stage entry points shared by the CLI, the Python API and (later) the UI: train, evaluate, report, run."""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import yaml
from rich.table import Table

from tunelab.config.specs import Recipe
from tunelab.training.rundir import create_run_dir
from tunelab.util.console import console

__all__ = ["build_report", "evaluate", "run", "train"]


def train(recipe: Recipe, recipe_name: str = "run") -> Path:
    """Fine-tune as the recipe says; returns the run folder (adapter or weights, tokenizer, config, ...)."""
    from tunelab.recipes.sft import SFTRecipe

    run_dir = create_run_dir(recipe.output, recipe_name)
    console.print(f"run folder: [bold]{run_dir}[/]")
    t0 = time.perf_counter()
    sft = SFTRecipe(recipe, run_dir)
    sft.setup()
    t_setup = time.perf_counter() - t0
    summary = sft.train()
    sft.save(summary, {"setup_s": round(t_setup, 2), "train_s": summary["train_time_s"]})
    sft.cleanup()
    console.print(
        f"trained {summary['steps']} steps in {summary['train_time_s']:.0f} s · "
        f"{summary['real_tokens_per_s']:,.0f} real tok/s · best validation loss {summary['best_val_loss']}"
    )
    return run_dir


def evaluate(run_dir: str | Path) -> dict[str, Any]:
    """Evaluate a run folder's tuned model against its base model on the held-out split."""
    from tunelab.evaluation.runner import evaluate_run

    result = evaluate_run(run_dir)
    print_comparison(result)
    return result


def _fmt(v: Any) -> str:
    return f"{v:.4f}" if isinstance(v, float) else ("-" if v is None else str(v))


def print_comparison(result: dict[str, Any]) -> None:
    """A before/after table on the console, headline metric first."""
    tuned, base = result.get("tuned") or {}, result.get("base") or {}
    main = tuned.get("main")
    table = Table(title=f"{result.get('task')} task · {result.get('n')} held-out examples ({result.get('split')})")
    for col in ("metric", "base", "tuned", "change"):
        table.add_column(col, justify="left" if col == "metric" else "right")
    keys = [k for k, v in tuned.items() if isinstance(v, float) and not k.endswith("_s")]
    keys.sort(key=lambda k: k != main)
    for k in keys:
        b, t = base.get(k), tuned.get(k)
        change = f"{t - b:+.4f}" if isinstance(b, float) else "-"
        if k == main and isinstance(b, float):
            change = f"{100 * (t - b):+.1f} points"
        table.add_row(f"[bold]{k}[/]" if k == main else k, _fmt(b), _fmt(t), change)
    console.print(table)


def _read_jsonl(path: Path) -> list[dict[str, Any]]:
    if not path.is_file():
        return []
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]


def _read_json(path: Path) -> Any:
    return json.loads(path.read_text(encoding="utf-8")) if path.is_file() else None


def build_report(run_dir: str | Path) -> tuple[Path, Path]:
    """Write report.html and report.md from what the run folder holds."""
    from tunelab.report import write_report

    run = Path(run_dir)
    recipe = yaml.safe_load((run / "config.yaml").read_text(encoding="utf-8"))
    rows = _read_jsonl(run / "metrics.jsonl")
    ev = _read_json(run / "eval" / "metrics.json") or {}
    train_summary = _read_json(run / "train_summary.json") or {}
    data = {
        "title": f"tunelab run {run.name}",
        "recipe": recipe, "model": recipe["model"]["name"], "method": recipe["method"]["name"],
        "data_summary": _read_json(run / "data_summary.json"),
        "train_history": [r for r in rows if "loss" in r],
        "eval_history": [r for r in rows if "val_loss" in r],
        "throughput": train_summary,
        "metrics": {"base": ev.get("base"), "tuned": ev.get("tuned")},
        "samples": _read_jsonl(run / "eval" / "samples.jsonl")[:8],
    }
    return write_report(run, data)


def run(recipe: Recipe, recipe_name: str = "run") -> Path:
    """Everything the recipe names, in order: train → evaluate (base vs tuned) → report."""
    run_dir = train(recipe, recipe_name)
    if recipe.eval.enabled:
        evaluate(run_dir)
    html, _ = build_report(run_dir)
    console.print(f"report: [bold]{html}[/]")
    return run_dir
