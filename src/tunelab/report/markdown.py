"""``report.md``: the same content as the HTML page, in GitHub-flavoured Markdown.

Images are referenced relatively (``plots/loss.png``), so the file reads correctly next to its plots.
"""

from __future__ import annotations

import re
from collections.abc import Collection
from html import escape

from tunelab import __version__
from tunelab.report.content import ReportContent, Table

__all__ = ["render_markdown"]

_ALIGN = {"l": ":---", "r": "---:"}


def _inline(text: object) -> str:
    # Markdown passes raw HTML through, so user text is escaped; "|" would split a table cell.
    return escape(str(text), quote=False).replace("|", "\\|").replace("\n", "<br>")


def _table(table: Table | None) -> list[str]:
    if table is None:
        return []
    lines = ["| " + " | ".join(_inline(h) for h in table.header) + " |"]
    lines.append("|" + "|".join(_ALIGN[a] for a in table.align) + "|")
    lines += ["| " + " | ".join(_inline(c) for c in row) + " |" for row in table.rows]
    return [*lines, ""]


def _fence(text: str, lang: str = "text") -> list[str]:
    # A fence longer than any backtick run inside the text cannot be closed early by it.
    longest = max((len(m) for m in re.findall(r"`+", text)), default=0)
    ticks = "`" * max(3, longest + 1)
    return [f"{ticks}{lang}", text, ticks]


def _header(c: ReportContent) -> list[str]:
    meta = " · ".join(f"**{_inline(k)}:** {_inline(v)}" for k, v in c.meta)
    return [f"# {_inline(c.title)}", "", meta, ""]


def _headline(c: ReportContent) -> list[str]:
    if not c.headlines:
        return []
    return [
        "## Headline",
        "",
        *(
            f"- **{_inline(h.text)}**" if i == 0 else f"- {_inline(h.text)}"
            for i, h in enumerate(c.headlines)
        ),
        "",
    ]


def _data(c: ReportContent) -> list[str]:
    if c.data_table is None and not c.data_format:
        return []
    fmt = [f"Format: `{c.data_format}`", ""] if c.data_format else []
    return ["## Data", "", *fmt, *_table(c.data_table)]


def _training(c: ReportContent, images: Collection[str]) -> list[str]:
    body = ["![Training and validation loss by step](plots/loss.png)", ""] if "loss" in images else []
    body += [_inline(c.loss_caption), ""] if c.loss_caption else []
    body += ["![Mean reward per step and KL to the reference](plots/reward.png)", ""] if "reward" in images else []
    return ["## Training", "", *(body or ["_No training history was recorded._", ""])]


def _metrics(c: ReportContent, images: Collection[str]) -> list[str]:
    body = ["![Task metrics, base vs tuned](plots/metrics.png)", ""] if "metrics" in images else []
    body += _table(c.metric_table)
    if c.per_field_table is not None:
        body += ["### Per-field accuracy", "", *_table(c.per_field_table)]
    if c.metric_note and body:
        body += [f"_{_inline(c.metric_note)}_", ""]
    return ["## Task metrics", "", *(body or ["_No evaluation metrics were recorded._", ""])]


def _variants(c: ReportContent, images: Collection[str]) -> list[str]:
    if c.variants_table is None:
        return []
    fig = ["![Headline metric by variant](plots/variants.png)", ""] if "variants" in images else []
    note = ("_Every variant answers the same held-out rows; the baselines prompt the base model. Prompt tokens: "
            "mean prompt length per query._")
    return ["## Fine-tuning vs prompting", "", *fig, *_table(c.variants_table), note, ""]


def _general(c: ReportContent, images: Collection[str]) -> list[str]:
    if c.general_table is None:
        return []
    caption = [_inline(c.tradeoff_caption), ""] if c.tradeoff_caption else []
    fig = ["![Task gain vs general perplexity change](plots/tradeoff.png)", ""] if "tradeoff" in images else []
    return ["## Learning and forgetting", "", *caption, *fig, *_table(c.general_table)]


def _people(s) -> list[str]:
    """A bias / judge / human-review section (tunelab.report.people.PeopleSection)."""
    lines = [f"## {_inline(s.title)}", ""]
    for heading, table in s.blocks:
        lines += ([f"### {_inline(heading)}", ""] if heading else []) + _table(table)
    return lines + [line for n in s.notes for line in (f"_{_inline(n)}_", "")]


def _gate(c: ReportContent) -> list[str]:
    deploy = ["### Deployment", "", *_table(c.deploy_table)] if c.deploy_table is not None else []
    if c.gate_table is None:
        return ["## Deployment", "", *_table(c.deploy_table)] if deploy else []
    word = "**PASSED**: the run may ship." if c.gate_passed else "**BLOCKED**: at least one rule failed."
    return ["## Gate", "", word, "", *_table(c.gate_table), *deploy]


def _throughput(c: ReportContent) -> list[str]:
    return ["## Throughput", "", *_table(c.throughput_table)] if c.throughput_table else []


def _samples(c: ReportContent) -> list[str]:
    if not c.samples:
        return []
    lines = ["## Samples", ""]
    for i, sample in enumerate(c.samples, 1):
        lines += [f"### Sample {i}", ""]
        for col in c.sample_columns:
            lines += [f"**{col}**", "", *_fence(sample[col]), ""]
    return lines


def _recipe(c: ReportContent) -> list[str]:
    if not c.recipe_json:
        return []
    return [
        "<details><summary>Resolved recipe</summary>",
        "",
        *_fence(c.recipe_json, "json"),
        "",
        "</details>",
        "",
    ]


def render_markdown(content: ReportContent, images: Collection[str]) -> str:
    """The Markdown report.

    Args:
        content: What to show (see :func:`tunelab.report.content.build_content`).
        images: Names of the plots written under ``plots/`` (``"loss"``, ``"metrics"``).

    Returns:
        The document text.
    """
    lines = [
        *_header(content),
        *_headline(content),
        *_data(content),
        *_training(content, images),
        *_metrics(content, images),
        *_variants(content, images),
        *_general(content, images),
        *(line for s in content.people for line in _people(s)),
        *_gate(content),
        *_throughput(content),
        *_samples(content),
        *_recipe(content),
        "---",
        f"_Generated by tunelab {__version__}._",
    ]
    return "\n".join(lines) + "\n"
