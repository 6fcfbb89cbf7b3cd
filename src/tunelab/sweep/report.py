"""Study outputs: leaderboard (CSV + self-contained HTML), the best config as a ready recipe, plots, sweep.json."""

from __future__ import annotations

import base64
import csv
import io
import json
from html import escape
from pathlib import Path
from typing import Any

import yaml

from tunelab.config.specs import Recipe
from tunelab.sweep.space import apply_params
from tunelab.util.console import console
from tunelab.util.io import atomic_write_json, atomic_write_text

__all__ = ["leaderboard_rows", "pruning_audit", "write_study_report"]


def leaderboard_rows(study) -> list[dict[str, Any]]:
    """One row per trial, best first (finished trials with a value, then pruned, failed, running)."""
    direction = study.direction.name.lower()
    rows = []
    for t in study.get_trials(deepcopy=False):
        duration = (t.datetime_complete - t.datetime_start).total_seconds() if t.datetime_complete and \
            t.datetime_start else None
        last = t.intermediate_values[max(t.intermediate_values)] if t.intermediate_values else None
        rows.append({"trial": t.number, "state": t.state.name.lower(), "value": t.value,
                     "last_intermediate": last, "evaluations": len(t.intermediate_values),
                     "tokens": t.user_attrs.get("tokens"), "duration_s": round(duration, 1) if duration else None,
                     **{f"param:{k}": v for k, v in t.params.items()},
                     "run_dir": t.user_attrs.get("run_dir"), "duplicate_of": t.user_attrs.get("duplicate_of"),
                     "stopped": t.user_attrs.get("stopped"), "error": t.user_attrs.get("error")})
    order = {"complete": 0, "pruned": 1, "fail": 2}
    sign = 1 if direction == "minimize" else -1

    def key(r):
        v = r["value"] if r["value"] is not None else r["last_intermediate"]
        return (order.get(r["state"], 3), sign * v if v is not None else float("inf"), r["trial"])

    return sorted(rows, key=key)


def _csv(rows: list[dict[str, Any]]) -> str:
    cols: list[str] = []
    for r in rows:
        cols.extend(k for k in r if k not in cols)
    buf = io.StringIO()
    w = csv.DictWriter(buf, fieldnames=cols, lineterminator="\n")
    w.writeheader()
    w.writerows(rows)
    return buf.getvalue()


def _plots(study, out: Path) -> dict[str, bytes]:
    """Optuna's matplotlib plots that apply to this study (each skipped with a note when it cannot be drawn)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import optuna.visualization.matplotlib as ovm

    out.mkdir(parents=True, exist_ok=True)
    made: dict[str, bytes] = {}
    for name, fn in (("optimization_history", ovm.plot_optimization_history),
                     ("param_importances", ovm.plot_param_importances),
                     ("parallel_coordinate", ovm.plot_parallel_coordinate),
                     ("intermediate_values", ovm.plot_intermediate_values)):
        try:
            ax = fn(study)
        except Exception as e:  # e.g. importances need two finished trials with different params
            console.print(f"[dim]plot {name} skipped: {str(e).splitlines()[0][:120]}[/]")
            plt.close("all")
            continue
        fig = ax.figure if hasattr(ax, "figure") else ax.flat[0].figure
        fig.set_size_inches(8, 4.5)
        fig.tight_layout()
        buf = io.BytesIO()
        fig.savefig(buf, format="png", dpi=110)
        plt.close(fig)
        made[name] = buf.getvalue()
        (out / f"{name}.png").write_bytes(made[name])
    return made


def _html(rows: list[dict[str, Any]], images: dict[str, bytes], title: str, best: dict[str, Any] | None) -> str:
    cols: list[str] = []
    for r in rows:
        cols.extend(k for k in r if k not in cols and k != "error")
    head = "".join(f"<th>{escape(c)}</th>" for c in cols)
    body = []
    for r in rows:
        cells = "".join(f"<td>{escape(_fmt(r.get(c)))}</td>" for c in cols)
        err = f' title="{escape(r["error"])}"' if r.get("error") else ""
        body.append(f'<tr class="{r["state"]}"{err}>{cells}</tr>')
    figs = "".join(f'<figure><img alt="{n}" src="data:image/png;base64,{base64.b64encode(b).decode()}">'
                   f"<figcaption>{n.replace('_', ' ')}</figcaption></figure>" for n, b in images.items())
    best_html = f"<p>best: trial {best['trial']} = {escape(_fmt(best['value']))}</p>" if best else "<p>no finished trial</p>"
    style = ("body{font-family:system-ui,sans-serif;margin:2rem}table{border-collapse:collapse;font-size:13px}"
             "td,th{border:1px solid #ddd;padding:4px 8px}tr.pruned{color:#888}tr.fail{color:#b00}"
             "figure{display:inline-block;margin:1rem}img{max-width:720px}")
    return (f"<!doctype html><html><head><meta charset='utf-8'><title>{escape(title)}</title><style>{style}</style>"
            f"</head><body><h1>{escape(title)}</h1>{best_html}<table><thead><tr>{head}</tr></thead><tbody>"
            f"{''.join(body)}</tbody></table>{figs}</body></html>")


def _fmt(v: Any) -> str:
    if v is None:
        return ""
    if isinstance(v, float):
        return f"{v:.5g}"
    return str(v)


def write_study_report(study, recipe: Recipe, folder: Path) -> dict[str, Any]:
    """leaderboard.csv/.html, best.yaml (the base recipe with the best params, no sweep section), plots/."""
    rows = leaderboard_rows(study)
    atomic_write_text(folder / "leaderboard.csv", _csv(rows))
    images = _plots(study, folder / "plots")
    complete = [r for r in rows if r["state"] == "complete" and r["value"] is not None]
    best = complete[0] if complete else None
    atomic_write_text(folder / "leaderboard.html", _html(rows, images, f"sweep {study.study_name}", best))
    summary: dict[str, Any] = {
        "study": study.study_name, "direction": study.direction.name.lower(), "metric": recipe.sweep.metric,
        "trials": len(rows), "states": {s: sum(r["state"] == s for r in rows) for s in {r["state"] for r in rows}},
        "tokens": sum(r["tokens"] or 0 for r in rows), "best": best,
    }
    if best:
        params = {k.split(":", 1)[1]: v for k, v in best.items() if k.startswith("param:") and v is not None}
        doc = apply_params(recipe.model_dump(mode="json", exclude={"sweep"}), params)
        doc["output"]["name"] = None
        header = (f"# Best configuration of sweep '{study.study_name}' (trial {best['trial']}, "
                  f"{recipe.sweep.metric} = {best['value']:.5g}).\n# Run it: tunelab run {folder / 'best.yaml'}\n")
        atomic_write_text(folder / "best.yaml", header + yaml.safe_dump(doc, sort_keys=False))
        summary["best_params"] = params
    audit = pruning_audit(study, recipe)
    if audit:
        summary["rank_agreement"] = audit
        console.print(audit["text"])
        if audit["warning"]:
            console.print(f"[yellow]warning:[/] {audit['warning']}")
    atomic_write_json(folder / "sweep.json", summary)
    console.print(f"sweep: {summary['states']} · best {best['value'] if best else None} · {folder / 'leaderboard.html'}")
    return summary


def pruning_audit(study, recipe: Recipe, min_trials: int = 4) -> dict[str, Any] | None:
    """Did early evaluations rank the trials as their final values do? Pruning assumes they do.

    Over the complete trials (repeats excluded): for each evaluation before the last that they all reached,
    Spearman's rho between the values there and the final values, and the rank there of the trial that ended
    best. Descriptive, not a guarantee: with pruning on, the complete trials are the survivors (the check can only
    under-state the risk), and an asynchronous pruner compares a trial with whichever trials reached the rung
    before it. `warning` is set when the eventual best ranked outside the share the pruner keeps (1/
    reduction_factor for ASHA/Hyperband, half for the median pruner) at the evaluation where pruning starts.
    None with fewer than `min_trials` complete trials.
    """
    from scipy.stats import spearmanr

    trials = [t for t in study.get_trials(deepcopy=False) if t.state.name == "COMPLETE" and t.value is not None
              and "duplicate_of" not in t.user_attrs and len(t.intermediate_values) >= 2]
    if len(trials) < min_trials:
        return None
    sign = 1 if study.direction.name == "MINIMIZE" else -1
    finals = [t.value for t in trials]
    winner = min(range(len(trials)), key=lambda i: sign * finals[i])
    rows = []
    for k in range(min(len(t.intermediate_values) for t in trials) - 1):
        at = [t.intermediate_values[sorted(t.intermediate_values)[k]] for t in trials]
        rho = spearmanr(at, finals).statistic
        rows.append({"evaluation": k + 1, "spearman": None if rho != rho else round(float(rho), 3),
                     "best_rank": 1 + sum(sign * v < sign * at[winner] for v in at)})
    sweep = recipe.sweep
    summary = ", ".join(f"eval {r['evaluation']}: rho {r['spearman']}, best ranked {r['best_rank']}" for r in rows)
    audit: dict[str, Any] = {"trials": len(trials), "evaluations": rows, "warning": None,
                             "text": f"early vs final rankings over {len(trials)} complete trials: {summary}"}
    first = next((r for r in rows if r["evaluation"] == sweep.min_resource), None)
    if sweep.pruner != "none" and first is not None:
        keep = 0.5 if sweep.pruner == "median" else 1 / sweep.reduction_factor
        if first["best_rank"] > max(1, int(len(trials) * keep)):
            audit["warning"] = (
                f"the trial that ended best ranked {first['best_rank']} of {len(trials)} at evaluation "
                f"{sweep.min_resource}, where pruning starts (the pruner keeps the best {keep:.0%}): early and final "
                "rankings disagree on this task, so the pruner can stop eventual winners; prune later "
                "(sweep.min_resource) or not at all")
    return audit


def read_summary(folder: Path) -> dict[str, Any]:
    return json.loads((folder / "sweep.json").read_text(encoding="utf-8"))
