"""Report sections for bias probes, LLM judges and human review (eval/metrics.json: bias, judge, human).

Each builder turns its part of the evaluation into `PeopleSection`s of formatted tables and notes; the HTML
and Markdown renderers draw them alike. A part that is missing gives no section.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

from tunelab.report.format import MISSING, fmt_value

__all__ = ["PeopleSection", "bias_section", "human_section", "judge_section", "people_sections"]


@dataclass(frozen=True)
class PeopleSection:
    """A titled report section: tables with optional sub-headings, then notes."""

    title: str
    blocks: list[tuple[str | None, Any]] = field(default_factory=list)  # (sub-heading, Table)
    notes: list[str] = field(default_factory=list)


def _dict(v: Any) -> dict[str, Any]:
    return v if isinstance(v, dict) else {}


def _num(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)


def _pct(v: Any) -> str:
    return f"{100 * v:.1f}%" if _num(v) else MISSING


def _signed(v: Any) -> str:
    return f"{v:+.4g}" if _num(v) else MISSING


def _plain(v: Any) -> str:
    return f"{v:.4g}" if _num(v) else fmt_value(v)


def _with_ci(metrics: dict[str, Any], name: str, fmt) -> str:
    if name not in metrics:
        return MISSING
    ci = metrics.get(f"{name}_ci")
    text = fmt(metrics[name])
    if isinstance(ci, (list, tuple)) and len(ci) == 2 and all(_num(x) for x in ci):
        text += f" [{fmt(ci[0])}, {fmt(ci[1])}]"
    return text


def _table(header: tuple[str, ...], rows: list[tuple[str, ...]]):
    from tunelab.report.content import Table

    return Table(header, rows, ("l",) + ("r",) * (len(header) - 1)) if rows else None


# ------------------------------------------------------------------------------------------------- bias

_INPUT_ROWS = (
    ("output_change_rate", "answer changes beyond the swap", _pct),
    ("label_flip_rate", "predicted label flips", _pct),
    ("mean_score_diff", "task score, swapped − original", _signed),
    ("mean_abs_score_diff", "|task score difference|", _plain),
    ("mean_abs_dlogprob", "|Δ log-prob of the reference| (nats)", _plain),
)
_TEMPLATE_ROWS = (
    ("mean_abs_dlogprob", "|Δ log-prob| of continuations (nats, normalised)", _plain),
    ("top_flip_rate", "most likely continuation differs", _pct),
)


def _bias_rows(part: dict[str, Any], spec) -> tuple[tuple[str, ...], list[tuple[str, ...]]]:
    models = [m for m in ("base", "tuned") if any(_dict(v).get(m) for v in part.values())]
    rows = []
    for attr, by_model in sorted(part.items()):
        by_model = _dict(by_model)
        n = next((_dict(by_model.get(m)).get("n_pairs") for m in models if by_model.get(m)), None)
        for key, label, fmt in spec:
            if not any(key in _dict(by_model.get(m)) for m in models):
                continue
            rows.append((attr, fmt_value(n), label, *(_with_ci(_dict(by_model.get(m)), key, fmt) for m in models)))
    return ("attribute", "pairs", "measure", *models), rows


def _skew_notes(templates: dict[str, Any]) -> list[str]:
    notes = []
    for attr, by_model in sorted(templates.items()):
        s = _dict(_dict(_dict(by_model).get("tuned")).get("most_skewed"))
        if s:
            notes.append(f"{attr}: the tuned model's most uneven continuation is '{s['continuation'].strip()}' after "
                         f"'{s['template']}' — most likely for '{s['highest']}', least for '{s['lowest']}' "
                         f"({s['spread']:.2f} nats apart).")
    return notes


def bias_section(bias: Any) -> PeopleSection | None:
    """Counterfactual input pairs and template probes, base vs tuned, per attribute."""
    bias = _dict(bias)
    if not bias:
        return None
    blocks = []
    inputs, templates = _dict(bias.get("inputs")), _dict(bias.get("templates"))
    if inputs:
        header, rows = _bias_rows(inputs, _INPUT_ROWS)
        blocks.append(("Counterfactual inputs (one attribute's terms swapped in the evaluation prompts)",
                       _table(header, rows)))
    if templates:
        header, rows = _bias_rows(templates, _TEMPLATE_ROWS)
        blocks.append((f"Templates ({bias.get('n_templates', '?')} templates, every pair of terms in a group)",
                       _table(header, rows)))
    found = _dict(bias.get("pairs_found"))
    notes = []
    if found:
        notes.append("Evaluation rows that mention a term: " + ", ".join(f"{k} {v}" for k, v in sorted(found.items()))
                     + ". An attribute with few pairs says little either way.")
    notes += _skew_notes(templates)
    notes.append("[lo, hi]: 95% percentile-bootstrap interval over pairs. Per-pair answers: eval/bias.jsonl.")
    blocks = [(h, t) for h, t in blocks if t is not None]
    return PeopleSection("Bias probes", blocks, notes) if blocks else None


# ------------------------------------------------------------------------------------------------ judge


def _pairwise_table(pairwise: dict[str, Any]):
    rows = []
    balanced = any(_dict(p).get("balanced") for p in pairwise.values())
    for other, p in pairwise.items():
        p = _dict(p)
        row = (f"tuned vs {other}", fmt_value(p.get("n")), fmt_value(p.get("n_consistent")),
               _with_ci(p, "win_rate", _pct), _with_ci(p, "tie_rate", _pct), _with_ci(p, "loss_rate", _pct),
               _with_ci(p, "inconsistent_rate", _pct), _pct(p.get("first_position_rate")))
        rows.append(row + ((_with_ci(_dict(p.get("balanced")), "win_rate", _pct),) if balanced else ()))
    header = ("comparison", "rows", "consistent", "tuned wins", "ties", "tuned loses", "inconsistent",
              "first answer picked") + (("position-balanced: tuned preferred",) if balanced else ())
    return _table(header, rows)


def _single_table(single: dict[str, Any], diffs: dict[str, Any]):
    rows = [(name, _with_ci(_dict(s), "mean", _plain), fmt_value(_dict(s).get("scored")),
             fmt_value(_dict(s).get("unscored"))) for name, s in single.items()]
    rows += [(f"tuned − {o}", _with_ci({"mean": _dict(d).get("mean_diff"), "mean_ci": _dict(d).get("mean_diff_ci")},
                                        "mean", _signed), fmt_value(_dict(d).get("n")), "") for o, d in diffs.items()]
    scale = next((_dict(s).get("scale") for s in single.values()), None)
    return _table(("system", f"mean grade (1-{scale})" if scale else "mean grade", "graded", "ungraded"), rows)


def judge_section(judge: Any) -> PeopleSection | None:
    """Pairwise win/tie/loss with position swapping, and single-answer grades."""
    judge = _dict(judge)
    if not judge:
        return None
    blocks = []
    if judge.get("pairwise"):
        blocks.append(("Pairwise, each pair judged in both orders", _pairwise_table(_dict(judge["pairwise"]))))
    if judge.get("single"):
        blocks.append(("Single-answer grades", _single_table(_dict(judge["single"]), _dict(judge.get("single_diff")))))
    notes = [f"Judge: {judge.get('judge')} ({judge.get('scoring')}), rubric {judge.get('rubric')}, "
             f"{judge.get('n')} rows. A pairwise verdict counts only when both orders agree; win/tie/loss are "
             "shares of those rows, 'inconsistent' the share of all rows where the order decided."]
    if any(_dict(p).get("balanced") for p in _dict(judge.get("pairwise")).values()):
        notes.append("Position-balanced: per row, the judge's probability of the tuned answer minus the other's, "
                     "summed over both orders (a constant preference for one position cancels; Wang et al. 2023); "
                     "the share of rows where it favours the tuned answer.")
    if judge.get("note"):
        notes.append(f"Caution: {judge['note']}.")
    blocks = [(h, t) for h, t in blocks if t is not None]
    return PeopleSection("LLM judge", blocks, notes) if blocks else None


# ------------------------------------------------------------------------------------------------ human


def human_section(human: Any) -> PeopleSection | None:
    """Win/tie/loss of the tuned model in blind human ratings."""
    h = _dict(human)
    if not h:
        return None
    systems = h.get("systems") or ["tuned", "other"]
    row = (f"{systems[0]} vs {systems[1]}", fmt_value(h.get("n_ratings")), fmt_value(h.get("n_items")),
           _with_ci(h, "win_rate", _pct), _with_ci(h, "tie_rate", _pct), _with_ci(h, "loss_rate", _pct),
           _pct(h.get("agreement")), fmt_value(h.get("unrated")))
    header = ("comparison", "ratings", "items", f"{systems[0]} wins", "ties", f"{systems[0]} loses",
              "rater agreement", "unrated")
    raters = h.get("raters") or []
    notes = [f"Blind side-by-side sheet (A/B order seeded, seed {h.get('seed')}), ratings from {h.get('file')}"
             + (f", raters: {', '.join(raters)}" if raters else "") + ". Intervals resample items (95%); "
             "agreement is the share of pairs of ratings of one item that agree."]
    return PeopleSection("Human review", [(None, _table(header, [row]))], notes)


def people_sections(data: dict[str, Any]) -> list[PeopleSection]:
    """The bias, judge and human-review sections that the report data holds, in that order."""
    found = (bias_section(data.get("bias")), judge_section(data.get("judge")), human_section(data.get("human")))
    return [s for s in found if s is not None]
