"""What a run report says, independent of how it is drawn: the HTML and Markdown renderers share this.

Every key of the report data may be missing or None; each builder returns None (or an empty list)
when it has nothing to show, and the renderers skip that section.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from tunelab.report.format import (
    MISSING,
    fmt_delta,
    fmt_duration,
    fmt_metric,
    fmt_params,
    fmt_value,
    is_context_value,
    is_fraction_metric,
    lower_is_better,
)

__all__ = ["MAX_SAMPLES", "Headline", "ReportContent", "Table", "build_content"]

MAX_SAMPLES = 8
# Long generations would make the page unreadable; the full text lives in the eval samples file.
MAX_SAMPLE_CHARS = 3000
_CI_NOTE = "[lo, hi]: 95% percentile-bootstrap confidence interval over examples."
_SPLIT_ORDER = ("train", "validation", "test")
_SKIPPED_METRIC_KEYS = {"main", "task", "per_field"}
_SPLIT_COLUMNS = (
    ("rows_read", "rows read"),
    ("kept", "kept"),
    ("rejected", "rejected"),
    ("truncated", "truncated"),
    ("tokens", "tokens"),
    ("loss_tokens", "loss tokens"),
    ("mean_len", "mean len"),
    ("max_len", "max len"),
)
_SAMPLE_COLUMNS = ("input", "reference", "base", "tuned")
_THROUGHPUT_ROWS = (
    ("real_tokens_per_s", "real (non-padding) tokens/s", fmt_value),
    ("train_time_s", "training time", fmt_duration),
    ("steps", "optimizer steps", fmt_value),
    ("precision", "precision", fmt_value),
    ("peak_rss_mb", "peak RSS (MB)", fmt_value),
)


@dataclass(frozen=True)
class Table:
    """A table of already-formatted cells; ``align`` holds "l" or "r" per column."""

    header: tuple[str, ...]
    rows: list[tuple[str, ...]]
    align: tuple[str, ...]


@dataclass(frozen=True)
class Headline:
    """One before/after line, e.g. ``field_accuracy 4.0% → 93.5% (+89.5 points)``.

    ``trend`` is +1 when the change is an improvement, -1 when it is a regression, 0 otherwise.
    """

    metric: str
    base: str | None
    tuned: str
    delta: str | None
    trend: int
    ci: str | None

    @property
    def text(self) -> str:
        values = f"{self.base} → {self.tuned}" if self.base is not None else self.tuned
        line = f"{self.metric} {values}"
        line += f" ({self.delta})" if self.delta else ""
        return line + (f", 95% CI {self.ci}" if self.ci else "")


@dataclass
class ReportContent:
    """Everything the report shows, formatted."""

    title: str
    meta: list[tuple[str, str]]
    headlines: list[Headline] = field(default_factory=list)
    data_format: str | None = None
    data_table: Table | None = None
    loss_caption: str | None = None
    metric_table: Table | None = None
    per_field_table: Table | None = None
    metric_note: str | None = None
    throughput_table: Table | None = None
    sample_columns: tuple[str, ...] = ()
    samples: list[dict[str, str]] = field(default_factory=list)
    recipe_json: str | None = None
    variants_table: Table | None = None
    general_table: Table | None = None
    tradeoff_caption: str | None = None
    gate_passed: bool | None = None
    gate_table: Table | None = None
    deploy_table: Table | None = None  # what the run did after the gate (RUN/deploy.json)
    people: list = field(default_factory=list)  # report.people.PeopleSection: bias, judge, human


def _dict(v: Any) -> dict[str, Any]:
    return v if isinstance(v, dict) else {}


def _rows(v: Any) -> list[dict[str, Any]]:
    return [r for r in v if isinstance(r, dict)] if isinstance(v, (list, tuple)) else []


def _num(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)


# ----------------------------------------------------------------------------- header and headline


def _meta(data: dict[str, Any]) -> list[tuple[str, str]]:
    tuned = _dict(_dict(data.get("metrics")).get("tuned"))
    date = data.get("date") or datetime.now().astimezone().strftime("%Y-%m-%d %H:%M %Z").strip()
    pairs = [("model", data.get("model")), ("method", data.get("method")), ("task", tuned.get("task"))]
    return [(k, str(v)) for k, v in pairs if v] + [("date", str(date))]


def _ci_text(ci: Any, fraction: bool) -> str | None:
    if not (isinstance(ci, (list, tuple)) and len(ci) == 2 and all(_num(x) for x in ci)):
        return None
    lo, hi = (fmt_metric(x, fraction) for x in ci)
    return f"[{lo}, {hi}]"


def _trend(name: str, base: Any, tuned: Any) -> int:
    if not (_num(base) and _num(tuned)) or base == tuned:
        return 0
    better = tuned < base if lower_is_better(name) else tuned > base
    return 1 if better else -1


def _headline(name: str, base: dict[str, Any], tuned: dict[str, Any]) -> Headline | None:
    if name not in tuned:
        return None
    b, t = base.get(name) if base else None, tuned[name]
    fraction = is_fraction_metric(name, b, t)
    return Headline(
        metric=name,
        base=fmt_metric(b, fraction) if base and name in base else None,
        tuned=fmt_metric(t, fraction),
        delta=fmt_delta(b, t, fraction),
        trend=_trend(name, b, t),
        ci=_ci_text(tuned.get(f"{name}_ci"), fraction),
    )


def _headlines(metrics: dict[str, Any]) -> list[Headline]:
    base, tuned = _dict(metrics.get("base")), _dict(metrics.get("tuned"))
    names = [tuned.get("main"), "perplexity" if "perplexity" in tuned else "val_loss"]
    return [h for n in names if isinstance(n, str) and (h := _headline(n, base, tuned))]


# ----------------------------------------------------------------------------- data summary


def _rejected(v: Any) -> str:
    if not isinstance(v, dict):
        return fmt_value(v)
    total = sum(c for c in v.values() if _num(c))
    reasons = ", ".join(
        f"{k} {fmt_value(c)}" for k, c in sorted(v.items(), key=lambda kv: -kv[1] if _num(kv[1]) else 0)
    )
    return f"{total:,} ({reasons})" if reasons else "0"


def _data_table(summary: dict[str, Any]) -> Table | None:
    splits = _dict(summary.get("splits"))
    if not splits:
        return None
    order = [s for s in _SPLIT_ORDER if s in splits] + [s for s in splits if s not in _SPLIT_ORDER]
    rows = []
    for name in order:
        split = _dict(splits[name])
        cells = [
            _rejected(split.get(k)) if k == "rejected" else fmt_value(split.get(k)) for k, _ in _SPLIT_COLUMNS
        ]
        rows.append((name, *cells))
    header = ("split", *(label for _, label in _SPLIT_COLUMNS))
    return Table(header, rows, ("l",) + ("r",) * len(_SPLIT_COLUMNS))


# ----------------------------------------------------------------------------- training curves


def _loss_caption(train: list[dict[str, Any]], evals: list[dict[str, Any]]) -> str | None:
    parts = []
    last = next((r for r in reversed(train) if _num(r.get("loss"))), None)
    if last:
        parts.append(
            f"final training loss {fmt_value(float(last['loss']))} at step {fmt_value(last.get('step'))}"
        )
    scored = [r for r in evals if _num(r.get("val_loss"))]
    if scored:
        best = min(scored, key=lambda r: r["val_loss"])
        parts.append(
            f"best validation loss {fmt_value(float(best['val_loss']))} at step {fmt_value(best.get('step'))}"
        )
    if not parts:
        return None
    text = "; ".join(parts)
    return text[0].upper() + text[1:] + "."


# ----------------------------------------------------------------------------- metrics


def _metric_names(base: dict[str, Any], tuned: dict[str, Any]) -> list[str]:
    names: list[str] = []
    main = tuned.get("main") or base.get("main")
    for name in [main, *tuned, *base]:
        if not isinstance(name, str) or name in names or name in _SKIPPED_METRIC_KEYS or name.endswith("_ci"):
            continue
        if any(_num(d.get(name)) for d in (base, tuned)):
            names.append(name)
    return names


def _metric_cell(metrics: dict[str, Any], name: str, fraction: bool) -> str:
    if name not in metrics:
        return MISSING
    ci = _ci_text(metrics.get(f"{name}_ci"), fraction)
    value = fmt_metric(metrics[name], fraction)
    return f"{value} {ci}" if ci else value


def _metric_table(metrics: dict[str, Any]) -> Table | None:
    base, tuned = _dict(metrics.get("base")), _dict(metrics.get("tuned"))
    names = _metric_names(base, tuned)
    if not names:
        return None
    rows = []
    for name in names:
        fraction = is_fraction_metric(name, base.get(name), tuned.get(name))
        cells = (_metric_cell(base, name, fraction),) if base else ()
        cells += (_metric_cell(tuned, name, fraction),)
        delta = None if is_context_value(name) else fmt_delta(base.get(name), tuned.get(name), fraction)
        cells += (delta or MISSING,) if base else ()
        rows.append((name, *cells))
    header = ("metric", "base", "tuned", "change") if base else ("metric", "tuned")
    return Table(header, rows, ("l",) + ("r",) * (len(header) - 1))


def _has_ci(metrics: dict[str, Any]) -> bool:
    sides = (_dict(metrics.get("base")), _dict(metrics.get("tuned")))
    return any(k.endswith("_ci") and _ci_text(v, False) for side in sides for k, v in side.items())


def _per_field_table(metrics: dict[str, Any]) -> Table | None:
    base, tuned = _dict(metrics.get("base")), _dict(metrics.get("tuned"))
    b_fields, t_fields = _dict(base.get("per_field")), _dict(tuned.get("per_field"))
    if not t_fields:
        return None
    rows = []
    for name, t in t_fields.items():
        b = b_fields.get(name)
        cells = (
            (fmt_metric(b, True), fmt_metric(t, True), fmt_delta(b, t, True) or MISSING)
            if base
            else (fmt_metric(t, True),)
        )
        rows.append((name, *cells))
    header = ("field", "base", "tuned", "change") if base else ("field", "tuned")
    return Table(header, rows, ("l",) + ("r",) * (len(header) - 1))


# ----------------------------------------------------------------------------- throughput, samples


def _params_text(trainable: Any, total: Any) -> str:
    if _num(trainable) and _num(total) and total > 0:
        return f"{fmt_params(trainable)} of {fmt_params(total)} ({100 * trainable / total:.2f}%)"
    return fmt_params(trainable if trainable is not None else total)


def _throughput_table(tp: dict[str, Any]) -> Table | None:
    if not tp:
        return None
    rows = [(label, fmt(tp[key])) for key, label, fmt in _THROUGHPUT_ROWS if tp.get(key) is not None]
    if tp.get("trainable_params") is not None or tp.get("total_params") is not None:
        rows.append(
            ("trainable parameters", _params_text(tp.get("trainable_params"), tp.get("total_params")))
        )
    known = {k for k, _, _ in _THROUGHPUT_ROWS} | {"trainable_params", "total_params"}
    rows += [(k.replace("_", " "), fmt_value(v)) for k, v in tp.items() if k not in known and v is not None]
    return Table(("quantity", "value"), rows, ("l", "r")) if rows else None


def _clip(text: Any) -> str:
    text = "" if text is None else str(text)
    if len(text) <= MAX_SAMPLE_CHARS:
        return text
    return text[:MAX_SAMPLE_CHARS] + f"\n… [{len(text) - MAX_SAMPLE_CHARS:,} more characters]"


def _samples(raw: Any) -> tuple[tuple[str, ...], list[dict[str, str]]]:
    rows = _rows(raw)[:MAX_SAMPLES]
    columns = tuple(c for c in _SAMPLE_COLUMNS if any(s.get(c) is not None for s in rows))
    return columns, [{c: _clip(s.get(c)) for c in columns} for s in rows]


def _recipe_json(recipe: Any) -> str | None:
    if not recipe:
        return None
    return json.dumps(recipe, indent=2, ensure_ascii=False, default=str, sort_keys=False)


def build_content(data: dict[str, Any]) -> ReportContent:
    """Turn raw report data (see :func:`tunelab.report.write_report`) into formatted content."""
    data = _dict(data)
    metrics = _dict(data.get("metrics"))
    summary = _dict(data.get("data_summary"))
    columns, samples = _samples(data.get("samples"))
    return ReportContent(
        title=str(data.get("title") or "tunelab run report"),
        meta=_meta(data),
        headlines=_headlines(metrics),
        data_format=summary.get("format"),
        data_table=_data_table(summary),
        loss_caption=_loss_caption(_rows(data.get("train_history")), _rows(data.get("eval_history"))),
        metric_table=_metric_table(metrics),
        per_field_table=_per_field_table(metrics),
        metric_note=_CI_NOTE if _has_ci(metrics) else None,
        throughput_table=_throughput_table(_dict(data.get("throughput"))),
        sample_columns=columns,
        samples=samples,
        recipe_json=_recipe_json(data.get("recipe")),
        people=_people(data),
        **_comparison(data, metrics),
    )


def _comparison(data: dict[str, Any], metrics: dict[str, Any]) -> dict[str, Any]:
    """Prompting baselines beside the fine-tune, general-set forgetting and the gate (when evaluated)."""
    from tunelab.evaluation.compare import gate_table, general_table, tradeoff_sentence, variants_table

    ev = {"base": metrics.get("base"), "tuned": metrics.get("tuned"), "baselines": _dict(data.get("baselines")),
          "general": _dict(data.get("general"))}
    gate = _dict(data.get("gate"))
    return {"variants_table": variants_table(ev), "general_table": general_table(ev),
            "tradeoff_caption": tradeoff_sentence(ev) if ev["general"] else None,
            "gate_passed": bool(gate["passed"]) if "passed" in gate else None, "gate_table": gate_table(gate),
            "deploy_table": _deploy_table(_dict(data.get("deploy")))}


def _deploy_table(record: dict[str, Any]) -> Table | None:
    """One row per deploy step: done (where to), started (the server's address) or skipped (why)."""
    rows = []
    for step, info in _dict(record.get("steps")).items():
        if info.get("status") == "skipped":
            detail = info.get("why", "")
        elif step == "merge":
            diff = _dict(info.get("max_abs_logit_diff")).get("saved_vs_adapter")
            detail = f"{info.get('out')} ({info.get('dtype')}; max logit difference {diff:.3g})" if diff is not None \
                else str(info.get("out"))
        else:
            detail = f"{info.get('model')} on {info.get('host')}:{info.get('port')}" + (
                " (the server starts once this report is written)" if info.get("status") == "pending" else "")
        rows.append((step, str(info.get("status")), detail))
    return Table(("step", "status", "detail"), rows, ("l", "l", "l")) if rows else None


def _people(data: dict[str, Any]) -> list:
    """Bias probes, LLM judge and human review sections (tunelab.report.people)."""
    from tunelab.report.people import people_sections

    return people_sections(data)
