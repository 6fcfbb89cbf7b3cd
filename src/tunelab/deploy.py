"""What `tunelab run` does after the gate (the recipe's ``deploy:`` section).

The gate decides; this module acts on the decision. When the gate passes, or the recipe has no gate, the run is
merged into a standalone model folder (``deploy.merge``, through `tunelab merge` and its logit parity check)
and/or served behind the OpenAI-compatible API (``deploy.serve``, the recipe's ``serve:`` settings). When the
gate blocks, every step is skipped. Either way the decision is written to ``RUN/deploy.json`` and shown in the
report, so a blocked run says what it did not ship and why.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from tunelab.errors import TunelabError
from tunelab.util.console import console

__all__ = ["DEPLOY_FILE", "check_deploy", "deploy_merge", "deploy_serve", "read_deploy"]

DEPLOY_FILE = "deploy.json"
_NOT_MERGEABLE = ("prefix", "prompt", "ptuning", "bottleneck")


def check_deploy(recipe: Any) -> None:
    """Refuse a ``deploy:`` section the run could never carry out (checked when the recipe loads).

    Raises:
        TunelabError: deploying a non-generative objective (a classifier or reward head is not a chat
            model), or merging a method whose weights cannot be folded into the base.
    """
    from tunelab.recipes.objectives import GENERATIVE

    d, objective = recipe.deploy, recipe.train.objective
    steps = [k for k, on in (("deploy.merge", d.merge), ("deploy.serve", d.serve)) if on]
    if objective not in GENERATIVE:
        raise TunelabError(f"{' and '.join(steps)} ship a generative model, but train.objective={objective} "
                           "trains a scoring head", where=steps[0],
                           fix="remove the deploy section; the run folder holds the head (tunelab reward score, "
                           "tunelab eval)")
    if d.merge and recipe.method.name in _NOT_MERGEABLE:
        raise TunelabError(f"method '{recipe.method.name}' cannot be merged into the base weights",
                           where="deploy.merge", fix="set deploy.merge=false (deploy.serve serves the run folder "
                           "itself), or train with lora, ia3, full or freeze")


def _gate_state(run_dir: Path) -> tuple[str, dict[str, Any] | None]:
    path = run_dir / "eval" / "gate.json"
    if not path.is_file():
        return "none", None
    gate = json.loads(path.read_text(encoding="utf-8"))
    return ("passed" if gate.get("passed") else "blocked"), gate


def _failed_rules(gate: dict[str, Any] | None) -> str:
    failed = [r["rule"] for r in (gate or {}).get("rules", []) if not r.get("passed")]
    return "; ".join(failed) or "a rule failed"


def _write(run_dir: Path, record: dict[str, Any]) -> None:
    from tunelab.util.io import atomic_write_json

    atomic_write_json(run_dir / DEPLOY_FILE, record)


def read_deploy(run_dir: str | Path) -> dict[str, Any] | None:
    """The deployment record of a run folder (None when its recipe deployed nothing)."""
    path = Path(run_dir) / DEPLOY_FILE
    return json.loads(path.read_text(encoding="utf-8")) if path.is_file() else None


def deploy_merge(run_dir: str | Path, recipe: Any) -> dict[str, Any] | None:
    """Decide every deploy step from the gate and carry out the merge; the serve step is only recorded here.

    Returns:
        The record written to RUN/deploy.json (None, and any old record removed, when nothing is deployed):
        ``{"gate": passed|blocked|none, "steps": {"merge": {...}, "serve": {...}}}``, each step with a
        ``status`` of done, pending (serve, started by :func:`deploy_serve`) or skipped and its ``why``.

    Raises:
        TunelabError: the merge's parity check failed (nothing is written at the merge folder).
    """
    from tunelab.methods.merge import merge_run

    run, d = Path(run_dir), recipe.deploy
    if not (d.merge or d.serve):
        (run / DEPLOY_FILE).unlink(missing_ok=True)
        return None
    state, gate = _gate_state(run)
    record: dict[str, Any] = {"gate": state, "steps": {}}
    wanted = [s for s, on in (("merge", d.merge), ("serve", d.serve)) if on]
    if state == "blocked":
        why = f"the gate blocked ({_failed_rules(gate)})"
        record["steps"] = {s: {"status": "skipped", "why": why} for s in wanted}
        _write(run, record)
        console.print(f"[yellow]deploy skipped[/]: {', '.join(wanted)} — {why}")
        return record
    if d.merge:
        out = Path(d.merge_dir) if d.merge_dir else run / "merged"
        console.print(f"merging the run into [bold]{out}[/] ({d.merge_dtype}, with a logit parity check)")
        merged = merge_run(run, out, dtype=d.merge_dtype, overwrite=True)
        record["steps"]["merge"] = {"status": "done", "out": str(out), "dtype": d.merge_dtype,
                                    "max_abs_logit_diff": merged["max_abs_logit_diff"]}
    if d.serve:
        target = record["steps"]["merge"]["out"] if d.merge else str(run)
        record["steps"]["serve"] = {"status": "pending", "model": target, "host": recipe.serve.host,
                                    "port": recipe.serve.port}
    _write(run, record)
    return record


def deploy_serve(run_dir: str | Path, recipe: Any, record: dict[str, Any] | None) -> bool:
    """Serve the run (or its merged folder) until interrupted, when :func:`deploy_merge` left serving pending.

    Returns:
        True when a server ran (and stopped), False when there was nothing to serve.
    """
    step = (record or {}).get("steps", {}).get("serve")
    if not step or step["status"] != "pending":
        return False
    from tunelab.serving import serve
    from tunelab.serving.lifecycle import exit_zero_on_sigterm

    run = Path(run_dir)
    step["status"] = "started"
    _write(run, record)
    spec = recipe.serve.model_copy(update={"model": step["model"]})
    console.print(f"the gate {record['gate'] if record['gate'] != 'none' else 'is not configured'}: serving "
                  f"[bold]{step['model']}[/] (stop with Ctrl+C)")
    exit_zero_on_sigterm()  # an orchestrator's SIGTERM ends a served run as a success, as with `tunelab serve`
    serve(spec)
    return True
