"""Does fine-tuning pay off? Variants side by side, within one run and across runs (``tunelab compare``).

Within a run the variants are the base model, the prompting baselines (metrics.json["baselines"]) and the
fine-tuned model, all scored on the same held-out rows. ``tunelab compare RUN_A RUN_B ...`` puts every
run's variants in one table (terminal, CSV, HTML) with the headline metric and its 95% bootstrap interval,
the other task metrics, what each variant costs (prompt tokens per query, training time) and what the
fine-tune forgot (general-set perplexity change), plus the plots. Run records come from
:func:`tunelab.runs.compare_runs` (the same reader as ``tunelab runs compare``), so the config keys that
differ between the runs are listed too.
"""

from __future__ import annotations

import csv
import io
import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from tunelab.errors import TunelabError

__all__ = ["compare_runs_report", "comparison_rows", "gate_table", "general_table", "print_evaluation_parts", "print_gate",
           "tradeoff_sentence", "variant_rows", "variants_table"]

_SKIP = {"main", "task", "per_field", "same_as", "selection"}
_VARIANT_LABELS = {"zero_shot": "zero-shot", "cot": "chain-of-thought"}


def _num(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)


def _variant_label(name: str, metrics: dict[str, Any]) -> str:
    if name in _VARIANT_LABELS:
        return _VARIANT_LABELS[name]
    k = name.split("_")[0]
    return f"{k}-shot ({metrics.get('selection', 'random')})"


def variant_rows(ev: dict[str, Any]) -> list[dict[str, Any]]:
    """The variants of one evaluation, in order: base, prompting baselines, fine-tuned.

    Args:
        ev: A metrics.json dict.

    Returns:
        ``[{"variant": label, "key": metric path prefix, "kind": "base"|"baseline"|"tuned",
        "metrics": METRICS}, ...]``. A zero-shot baseline that is the base model's own evaluation is
        shown once, as "base (zero-shot)".
    """
    base, tuned = ev.get("base") or {}, ev.get("tuned") or {}
    baselines = dict(ev.get("baselines") or {})
    rows = []
    if base:
        merged = (baselines.get("zero_shot") or {}).get("same_as") == "base"
        label = "base (zero-shot)" if merged else "base"
        rows.append({"variant": label, "key": "base", "kind": "base",
                     "metrics": {**base, **(baselines.pop("zero_shot") if merged else {})}})
    for name, metrics in baselines.items():
        rows.append({"variant": _variant_label(name, metrics), "key": f"baselines.{name}", "kind": "baseline",
                     "metrics": metrics})
    if tuned:
        rows.append({"variant": "fine-tuned", "key": "tuned", "kind": "tuned", "metrics": tuned})
    return rows


def _ci(metrics: dict[str, Any], name: str) -> tuple[float, float] | None:
    ci = metrics.get(f"{name}_ci")
    return (float(ci[0]), float(ci[1])) if isinstance(ci, (list, tuple)) and len(ci) == 2 and all(
        _num(x) for x in ci) else None


def _score_names(rows: list[dict[str, Any]], main: str | None) -> list[str]:
    """The main metric, then the other task metrics every variant has (losses only where all have them)."""
    from tunelab.report.format import is_context_value

    names = [main] if main else []
    shared = None
    for r in rows:
        keys = {k for k, v in r["metrics"].items() if _num(v) and k not in _SKIP and not k.endswith("_ci")
                and not is_context_value(k) and k not in ("k", "prompt_tokens", "shots_used")}
        shared = keys if shared is None else shared & keys
    first = rows[0]["metrics"] if rows else {}
    return names + [k for k in first if k in (shared or set()) and k != main]


def comparison_rows(records: Sequence[dict[str, Any]]) -> tuple[list[dict[str, Any]], list[str]]:
    """One flat row per (run, variant) for the table, the CSV and the plots.

    Args:
        records: :func:`tunelab.runs.run_record` dicts (their ``eval`` is the run's metrics.json).

    Returns:
        ``(rows, metric names)``; each row has run, variant, kind, metric, value, ci_lo, ci_hi, every
        shared task metric, prompt_tokens, train_time_s and (fine-tuned rows) general_worst_ppl_change, gate.
    """
    out, names = [], []
    for rec in records:
        ev = rec["eval"]
        variants = variant_rows(ev)
        main = (ev.get("tuned") or {}).get("main")
        for n in _score_names(variants, main):
            if n not in names:
                names.append(n)
        for v in variants:
            out.append(_flat_row(rec, ev, v, main))
    return out, names


def _plain_prompt_tokens(ev: dict[str, Any]) -> float | None:
    # Base and tuned answer the plain evaluation prompt: the zero-shot baseline measured its length.
    return ((ev.get("baselines") or {}).get("zero_shot") or {}).get("prompt_tokens")


def _flat_row(rec: dict[str, Any], ev: dict[str, Any], v: dict[str, Any], main: str | None) -> dict[str, Any]:
    m = v["metrics"]
    ci = _ci(m, main) if main else None
    tuned = v["kind"] == "tuned"
    worst = ((ev.get("general") or {}).get("worst") or {}).get("perplexity")
    gate = ev.get("gate")
    row = {"run": rec["name"], "path": rec["path"], "variant": v["variant"], "kind": v["kind"], "metric": main,
           "value": m.get(main) if main else None, "ci_lo": ci[0] if ci else None, "ci_hi": ci[1] if ci else None,
           "prompt_tokens": m.get("prompt_tokens", _plain_prompt_tokens(ev) if v["kind"] != "baseline" else None),
           "n_examples": m.get("n_examples"),
           "train_time_s": rec.get("train_time_s") if tuned else None,
           "general_worst_ppl_change": worst if tuned else None,
           "gate": ("passed" if gate["passed"] else "blocked") if tuned and gate else None}
    row.update({k: val for k, val in m.items() if _num(val) and k not in row})
    return row


def _check_evaluated(records: Sequence[dict[str, Any]]) -> None:
    for rec in records:
        if not (rec.get("eval") or {}).get("tuned"):
            raise TunelabError(f"run '{rec['path']}' has no evaluation (eval/metrics.json)",
                               fix=f"evaluate it first: tunelab eval {rec['path']}")


def _csv_text(rows: list[dict[str, Any]], names: list[str]) -> str:
    cols = ["run", "variant", "kind", "metric", "value", "ci_lo", "ci_hi", *[n for n in names if n],
            "prompt_tokens", "n_examples", "train_time_s", "general_worst_ppl_change", "gate", "path"]
    cols = list(dict.fromkeys(cols))
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=cols, extrasaction="ignore", lineterminator="\n")
    writer.writeheader()
    writer.writerows(rows)
    return buf.getvalue()


def _fmt_cell(name: str, v: Any) -> str:
    from tunelab.report.format import fmt_metric, fmt_value, is_fraction_metric

    if v is None:
        return "—"
    if name == "general_worst_ppl_change" and _num(v):
        return f"{100 * v:+.1f}%"
    return fmt_metric(v, is_fraction_metric(name, v)) if _num(v) else fmt_value(v)


def _main_cell(r: dict[str, Any]) -> str:
    name = r["metric"] or ""
    value = _fmt_cell(name, r["value"])
    if r["ci_lo"] is None:
        return value
    return f"{value} [{_fmt_cell(name, r['ci_lo'])}, {_fmt_cell(name, r['ci_hi'])}]"


def _table(rows: list[dict[str, Any]], names: list[str]):
    from tunelab.report.content import Table

    mains = list(dict.fromkeys(r["metric"] or "" for r in rows))
    mixed = len(mains) > 1  # runs of different tasks: each cell names its own headline metric
    others = [n for n in names if n not in mains]
    header = ("run", "variant", f"{'headline' if mixed else mains[0] or 'metric'} [95% CI]", *others,
              "prompt tokens", "train time", "general ppl change", "gate")
    body = []
    for r in rows:
        cell = _main_cell(r)
        cell = f"{r['metric']} {cell}" if mixed else cell
        body.append((r["run"], r["variant"], cell, *(_fmt_cell(n, r.get(n)) for n in others),
                     _fmt_cell("prompt_tokens", r["prompt_tokens"]), _duration(r["train_time_s"]),
                     _fmt_cell("general_worst_ppl_change", r["general_worst_ppl_change"]), r["gate"] or "—"))
    return Table(header, body, ("l", "l") + ("r",) * (len(header) - 3) + ("l",))


def _duration(v: Any) -> str:
    from tunelab.report.format import fmt_duration

    return fmt_duration(v) if _num(v) else "—"


def _differ_table(differ: dict[str, list[Any]], records: Sequence[dict[str, Any]]):
    from tunelab.report.content import Table
    from tunelab.report.format import fmt_value

    if not differ:
        return None
    rows = [(k, *(fmt_value(v) for v in vals)) for k, vals in differ.items()]
    return Table(("config key", *(r["name"] for r in records)), rows, ("l",) * (1 + len(records)))


def _plots(rows: list[dict[str, Any]], records: Sequence[dict[str, Any]]) -> dict[str, bytes]:
    from tunelab.evaluation.forgetting import tradeoff_rows
    from tunelab.report.plots import tradeoff_png, variants_png

    metric = next((r["metric"] for r in rows if r["metric"]), "score")
    points = [{"label": f"{r['run']} · {r['variant']}", "value": r["value"], "ci": (r["ci_lo"], r["ci_hi"])
               if r["ci_lo"] is not None else None, "kind": r["kind"]} for r in rows if _num(r["value"])]
    trade = [{"label": rec["name"], "x": t["perplexity_change"], "y": t["task_gain"], "set": t["set"]}
             for rec in records for t in tradeoff_rows(rec["eval"])]
    pngs = {"variants": variants_png(points, metric), "tradeoff": tradeoff_png(trade, metric)}
    return {k: v for k, v in pngs.items() if v is not None}


def compare_runs_report(paths: Sequence[str], out: str | Path = "compare") -> Path:
    """Compare evaluated runs: print the table, write compare.csv, compare.html and plots/ under ``out``.

    Args:
        paths: Two or more run folders, each evaluated (eval/metrics.json).
        out: Output folder (created).

    Returns:
        The output folder.

    Raises:
        TunelabError: fewer than two runs, a folder that is not a run, or a run without evaluation.
    """
    from tunelab.report.html import render_page
    from tunelab.report.plots import write_pngs
    from tunelab.runs import compare_runs
    from tunelab.util.io import atomic_write_text

    records, differ = compare_runs(list(paths))
    _check_evaluated(records)
    rows, names = comparison_rows(records)
    table = _table(rows, names)
    _print_table_titled(table, "runs compared (95% bootstrap CIs)")
    folder = Path(out)
    pngs = _plots(rows, records)
    write_pngs(pngs, folder / "plots")
    atomic_write_text(folder / "compare.csv", _csv_text(rows, names))
    note = ("Every variant of a run is scored on that run's held-out rows; intervals are 95% percentile-bootstrap "
            "over examples. Prompt tokens: mean prompt length per query (the inference cost of prompting). "
            "General ppl change: the largest relative perplexity increase over the run's general sets.")
    sections = [("Variants", [pngs.get("variants"), table, note]),
                ("Task gain vs general loss", [pngs.get("tradeoff")]),
                ("Config keys that differ", [_differ_table(differ, records)])]
    atomic_write_text(folder / "compare.html", render_page(f"tunelab compare: {len(records)} runs", sections))
    return folder


# ----------------------------------------------------------------------------------------- console


def print_gate(gate: dict[str, Any] | None) -> None:
    """The gate decision and every rule with its numbers."""
    from tunelab.util.console import console

    if not gate:
        return
    word = "[bold green]PASSED[/]" if gate["passed"] else "[bold red]BLOCKED[/] (exit code 3)"
    console.print(f"gate {word}")
    for r in gate["rules"]:
        mark = "[green]✓[/]" if r["passed"] else "[red]✗[/]"
        ref = f" ({r['threshold_metric']})" if r.get("threshold_metric") else ""
        console.print(f"  {mark} {r['rule']}: {r['metric']} = {r['value']:.4g} {r['op']} {r['threshold']:.4g}{ref}")


def variants_table(ev: dict[str, Any]):
    """Base, prompting baselines and fine-tuned of one evaluation as a report Table (None without baselines)."""
    from tunelab.report.content import Table

    if not ev.get("baselines") or not ev.get("tuned"):
        return None
    rows, names = comparison_rows([{"name": "", "path": "", "eval": ev, "train_time_s": None}])
    table = _table(rows, names)
    keep = [i for i, h in enumerate(table.header) if h not in ("run", "train time", "general ppl change", "gate")]
    return Table(tuple(table.header[i] for i in keep), [tuple(r[i] for i in keep) for r in table.rows],
                 tuple(table.align[i] for i in keep))


def general_table(ev: dict[str, Any]):
    """The general sets, base vs tuned perplexity and its relative change (None without general sets)."""
    from tunelab.report.content import Table
    from tunelab.report.format import fmt_value

    general = ev.get("general") or {}
    if not general.get("tuned"):
        return None
    rows = []
    for name, tuned in general["tuned"].items():
        base = (general.get("base") or {}).get(name, {})
        change = (general.get("change") or {}).get(name, {}).get("perplexity")
        rows.append((name, fmt_value(base.get("perplexity")), fmt_value(tuned.get("perplexity")),
                     f"{100 * change:+.2f}%" if _num(change) else "—", fmt_value(tuned.get("tokens")),
                     fmt_value(tuned.get("n_examples"))))
    return Table(("general set", "base perplexity", "tuned perplexity", "change", "tokens", "rows"), rows,
                 ("l", "r", "r", "r", "r", "r"))


def tradeoff_sentence(ev: dict[str, Any]) -> str | None:
    """"accuracy +45.0 points (56.0% → 91.0%) for at most +3.1% perplexity on general sets (wikitext)"."""
    from tunelab.evaluation.forgetting import tradeoff_rows
    from tunelab.report.format import fmt_delta, fmt_metric, is_fraction_metric

    rows = [r for r in tradeoff_rows(ev) if _num(r["perplexity_change"])]
    if not rows or not _num(rows[0]["task_gain"]):
        return None
    r0 = rows[0]
    frac = is_fraction_metric(r0["task_metric"], r0["task_base"], r0["task_tuned"])
    worst = max(rows, key=lambda r: r["perplexity_change"])
    return (f"Task {r0['task_metric']} {fmt_delta(r0['task_base'], r0['task_tuned'], frac)} "
            f"({fmt_metric(r0['task_base'], frac)} → {fmt_metric(r0['task_tuned'], frac)}); general perplexity "
            f"change at worst {100 * worst['perplexity_change']:+.2f}% ({worst['set']}).")


def gate_table(gate: dict[str, Any] | None):
    """Every gate rule with its value, threshold and result (None without a gate)."""
    from tunelab.report.content import Table
    from tunelab.report.format import fmt_value

    if not gate or not gate.get("rules"):
        return None
    rows = [(r["rule"], r["metric"], fmt_value(r["value"]),
             f"{r['op']} {fmt_value(r['threshold'])}" + (f" ({r['threshold_metric']})" if r.get("threshold_metric")
                                                         else ""), "pass" if r["passed"] else "FAIL")
            for r in gate["rules"]]
    return Table(("rule", "metric", "value", "threshold", "result"), rows, ("l", "l", "r", "l", "l"))


def _print_table_titled(table, title: str) -> None:
    from rich.table import Table as RichTable

    from tunelab.util.console import console

    if table is None:
        return
    t = RichTable(title=title)
    for h, a in zip(table.header, table.align, strict=True):
        t.add_column(h, justify="right" if a == "r" else "left")
    for row in table.rows:
        t.add_row(*row)
    console.print(t)


def print_evaluation_parts(ev: dict[str, Any]) -> None:
    """Print the prompting baselines, the general sets and the gate of an evaluation (what exists)."""
    from tunelab.util.console import console

    _print_table_titled(variants_table(ev), "fine-tuning vs prompting the base model (95% bootstrap CIs)")
    _print_table_titled(general_table(ev), "learning vs forgetting: general sets (perplexity, lower is better)")
    if sentence := tradeoff_sentence(ev):
        console.print(sentence)
    print_gate(ev.get("gate"))
