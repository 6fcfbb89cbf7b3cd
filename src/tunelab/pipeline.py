"""Stage entry points shared by the CLI, the Python API and (later) the UI: train, evaluate, report, run."""

from __future__ import annotations

import json
import time
from contextlib import nullcontext
from pathlib import Path
from typing import Any

import yaml
from rich.table import Table

from tunelab.config.specs import Recipe
from tunelab.training.rundir import create_run_dir
from tunelab.util.console import console

__all__ = ["build_report", "evaluate", "run", "train"]


def _resume_dir(recipe: Recipe, recipe_name: str, resume: str | bool) -> Path | None:
    """The run folder to continue: an explicit path, output.name, or the newest `<recipe>-*` with checkpoints."""
    from tunelab.errors import TunelabError

    if isinstance(resume, str):
        run_dir = Path(resume)
        if not (run_dir / "checkpoints").is_dir():
            raise TunelabError(f"'{run_dir}' has no checkpoints/ to resume from", where="--resume",
                               fix="pass a run folder written with train.save_every, or interrupted by Ctrl-C")
        return run_dir
    out = Path(recipe.output.dir)
    if recipe.output.name:
        named = out / recipe.output.name
        return named if (named / "checkpoints").is_dir() else None
    candidates = sorted((p for p in out.glob(f"{recipe_name}-*") if (p / "checkpoints").is_dir()),
                        key=lambda p: p.stat().st_mtime)
    return candidates[-1] if candidates else None


def _prepare_run_dir(recipe: Recipe, recipe_name: str, resume: str | bool, dist) -> tuple[Path, bool]:
    from tunelab.errors import TunelabError

    wants = bool(resume) or recipe.train.resume == "auto"
    found = _resume_dir(recipe, recipe_name, resume) if wants else None
    if found is None and resume:
        raise TunelabError(f"nothing to resume: no run folder of '{recipe_name}' in {recipe.output.dir} has checkpoints",
                           where="--resume", fix="start the run without --resume, or pass the run folder")
    if found is not None:
        return found, True
    if dist.is_main:
        run_dir = create_run_dir(recipe.output, recipe_name)
    dist.barrier()
    if not dist.is_main:  # the launcher fixed output.name, so every rank names the same folder
        run_dir = Path(recipe.output.dir) / recipe.output.name
    return run_dir, False


def train(recipe: Recipe, recipe_name: str = "run", resume: str | bool = False,
          tags: dict[str, str] | None = None) -> Path:
    """Fine-tune as the recipe says; returns the run folder (adapter or weights, tokenizer, config, ...).

    `resume`: True continues the newest resumable run of this recipe (or output.name), a path continues that
    run folder; `train.resume: auto` does the former when a checkpoint exists and starts fresh otherwise.
    Under torchrun (WORLD_SIZE > 1) this is one rank of a data-parallel run.
    """
    from tunelab.models import resolve_device
    from tunelab.recipes.objectives import recipe_class
    from tunelab.tracking import track_run
    from tunelab.training.distributed import init_distributed
    from tunelab.training.fsdp import preflight as sharding_preflight

    recipe_cls = recipe_class(recipe)  # train.objective vs the model, checked before a run folder exists
    sharding_preflight(recipe)  # train.sharding vs objective, method and optimizer, before weights load
    dist = init_distributed(resolve_device(recipe.model.device))
    try:
        run_dir, resuming = _prepare_run_dir(recipe, recipe_name, resume, dist)
        console.print(f"run folder: [bold]{run_dir}[/]{' (resuming)' if resuming else ''}")
        t0 = time.perf_counter()
        with track_run(recipe, run_dir, recipe_name, tags) if dist.is_main else nullcontext():
            sft = recipe_cls(recipe, run_dir, dist=dist, resume=resuming)
            sft.setup()
            t_setup = time.perf_counter() - t0
            summary = sft.train()
            sft.save(summary, {"setup_s": round(t_setup, 2), "train_s": summary["train_time_s"]})
            sft.cleanup()
        dist.barrier()
    finally:
        dist.shutdown()
    console.print(
        f"trained {summary['steps']} steps in {summary['train_time_s']:.0f} s · "
        f"{summary['real_tokens_per_s']:,.0f} real tok/s · best validation loss {summary['best_val_loss']}"
    )
    return run_dir


def evaluate(run_dir: str | Path, overrides: list[str] | None = None) -> dict[str, Any]:
    """Evaluate a run folder's tuned model against its base model on the held-out split.

    `overrides` (``eval.key=value``) change the evaluation settings for this call only; other sections
    would change what was trained or which rows are held out, so they are refused.
    """
    from tunelab.config.loading import load_recipe
    from tunelab.errors import TunelabError
    from tunelab.evaluation.runner import evaluate_run

    bad = [o for o in overrides or [] if not o.startswith("eval.")]
    if bad:
        raise TunelabError(f"only eval.* settings can change at evaluation time, not {bad[0].split('=')[0]!r}",
                           where="overrides", fix="retrain with the changed recipe (tunelab run RECIPE key=value)")
    recipe = load_recipe(Path(run_dir) / "config.yaml", overrides)
    if recipe.train.objective == "reward":  # pairwise accuracy of the reward model on held-out pairs
        from tunelab.recipes.reward import evaluate_reward_run

        result = evaluate_reward_run(run_dir, recipe)
    elif recipe.train.objective == "preference":  # implicit-reward accuracy on held-out pairs, not generation
        from tunelab.recipes.preference_eval import evaluate_preference_run

        result = evaluate_preference_run(run_dir, recipe)
    else:
        result = evaluate_run(run_dir, recipe)
    print_comparison(result)
    from tunelab.evaluation.compare import print_evaluation_parts
    from tunelab.evaluation.gate import apply_gate

    result = apply_gate(run_dir, recipe.gate, result)  # last: the gate reads every part above
    print_evaluation_parts(result)
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
        if k == main and isinstance(b, float) and 0 <= min(b, t) <= max(b, t) <= 1:  # percentage points of fractions
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
        "baselines": ev.get("baselines"), "general": ev.get("general"), "gate": ev.get("gate"),
        "bias": ev.get("bias"), "judge": ev.get("judge"), "human": ev.get("human"),
        "deploy": _read_json(run / "deploy.json"),
        "samples": _read_jsonl(run / "eval" / "samples.jsonl")[:8],
    }
    return write_report(run, data)


def finish(run_dir: Path, recipe: Recipe) -> Path:
    """After training: evaluate (base vs tuned, baselines, forgetting) → gate → deploy.merge → report → deploy.serve.

    The report is written before serving starts (serving runs until interrupted), so it already says what the
    gate decided and what was deployed (RUN/deploy.json).
    """
    from tunelab.deploy import deploy_merge, deploy_serve
    from tunelab.tracking import log_evaluation

    if recipe.eval.enabled:
        evaluate(run_dir)
    record = deploy_merge(run_dir, recipe)
    html, _ = build_report(run_dir)
    log_evaluation(run_dir)
    console.print(f"report: [bold]{html}[/]")
    deploy_serve(run_dir, recipe, record)
    return run_dir


def run(recipe: Recipe, recipe_name: str = "run", resume: str | bool = False) -> Path:
    """Everything the recipe names, in order: train → evaluate → gate → deploy (see :func:`finish`) → report.

    The gate's decision is in RUN/eval/gate.json; `tunelab run` turns a blocked gate into exit code 3
    (:func:`tunelab.evaluation.gate.gate_exit_code`), and a blocked gate skips the deploy steps.
    """
    return finish(train(recipe, recipe_name, resume=resume), recipe)
