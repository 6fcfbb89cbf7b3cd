"""``report.html``: one self-contained page (inline CSS, PNGs as data URIs) that opens offline."""

from __future__ import annotations

import base64
from html import escape
from importlib import resources

from tunelab import __version__
from tunelab.report.content import Headline, ReportContent, Table

__all__ = ["render_html", "render_page"]


def _e(text: object) -> str:
    return escape(str(text), quote=True)


def _css() -> str:
    return resources.files("tunelab.report").joinpath("style.css").read_text(encoding="utf-8")


def _table(table: Table | None) -> str:
    if table is None:
        return ""
    head = "".join(f'<th class="{a}">{_e(h)}</th>' for h, a in zip(table.header, table.align, strict=True))
    body = "".join(
        "<tr>"
        + "".join(f'<td class="{a}">{_e(c)}</td>' for c, a in zip(row, table.align, strict=True))
        + "</tr>"
        for row in table.rows
    )
    return f'<div class="table-wrap"><table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table></div>'


def _img(png: bytes | None, alt: str) -> str:
    if png is None:
        return ""
    uri = "data:image/png;base64," + base64.b64encode(png).decode("ascii")
    return f'<figure><img alt="{_e(alt)}" src="{uri}"></figure>'


def _section(title: str, body: str, empty: str | None = None) -> str:
    if not body and empty is None:
        return ""
    body = body or f'<p class="empty">{_e(empty)}</p>'
    return f"<section><h2>{_e(title)}</h2>{body}</section>"


def _header(c: ReportContent) -> str:
    meta = "".join(f"<span><b>{_e(k)}</b>{_e(v)}</span>" for k, v in c.meta)
    return f'<header><h1>{_e(c.title)}</h1><p class="meta">{meta}</p></header>'


def _kpi(h: Headline, main: bool) -> str:
    values = f'<span class="tuned">{_e(h.tuned)}</span>'
    if h.base is not None:
        values = f'<span class="base">{_e(h.base)}</span><span class="arrow">→</span>' + values
    trend = {1: "up", -1: "down"}.get(h.trend, "")
    delta = f'<div class="delta {trend}">{_e(h.delta)}</div>' if h.delta else ""
    ci = f'<div class="ci">95% CI {_e(h.ci)}</div>' if h.ci else ""
    cls = "kpi main" if main else "kpi"
    return f'<div class="{cls}"><div class="kpi-name">{_e(h.metric)}</div><div class="kpi-values">{values}</div>{delta}{ci}</div>'


def _headline(c: ReportContent) -> str:
    if not c.headlines:
        return ""
    kpis = "".join(_kpi(h, i == 0) for i, h in enumerate(c.headlines))
    return f'<section><div class="kpis">{kpis}</div></section>'


def _data(c: ReportContent) -> str:
    fmt = f"<p>Format: <code>{_e(c.data_format)}</code></p>" if c.data_format else ""
    return _section("Data", fmt + _table(c.data_table))


def _training(c: ReportContent, images: dict[str, bytes]) -> str:
    caption = f"<figcaption>{_e(c.loss_caption)}</figcaption>" if c.loss_caption else ""
    body = _img(images.get("loss"), "training and validation loss by step") + caption
    body += _img(images.get("reward"), "online RL: mean reward per step and KL to the reference")
    return _section("Training", body, empty="No training history was recorded.")


def _metrics(c: ReportContent, images: dict[str, bytes]) -> str:
    body = _img(images.get("metrics"), "task metrics, base vs tuned") + _table(c.metric_table)
    if c.per_field_table is not None:
        body += "<h3>Per-field accuracy</h3>" + _table(c.per_field_table)
    if c.metric_note and body:
        body += f'<p class="note">{_e(c.metric_note)}</p>'
    return _section("Task metrics", body, empty="No evaluation metrics were recorded.")


def _variants(c: ReportContent, images: dict[str, bytes]) -> str:
    if c.variants_table is None:
        return ""
    body = _img(images.get("variants"), "headline metric of base, prompting baselines and fine-tuned")
    body += _table(c.variants_table)
    note = ("Every variant answers the same held-out rows; the baselines prompt the base model (k-shot: solved "
            "training rows as earlier turns; chain-of-thought: reasoning, then the extracted answer). Prompt "
            "tokens: mean prompt length per query.")
    return _section("Fine-tuning vs prompting", body + f'<p class="note">{_e(note)}</p>')


def _general(c: ReportContent, images: dict[str, bytes]) -> str:
    if c.general_table is None:
        return ""
    caption = f"<p>{_e(c.tradeoff_caption)}</p>" if c.tradeoff_caption else ""
    body = caption + _img(images.get("tradeoff"), "task gain against general perplexity change")
    return _section("Learning and forgetting", body + _table(c.general_table))


def _people(s) -> str:
    """A bias / judge / human-review section (tunelab.report.people.PeopleSection)."""
    body = "".join((f"<h3>{_e(h)}</h3>" if h else "") + _table(t) for h, t in s.blocks)
    body += "".join(f'<p class="note">{_e(n)}</p>' for n in s.notes)
    return _section(s.title, body)


def _gate(c: ReportContent) -> str:
    deploy = ("<h3>Deployment</h3>" + _table(c.deploy_table)) if c.deploy_table is not None else ""
    if c.gate_table is None:
        return _section("Deployment", _table(c.deploy_table)) if deploy else ""
    word = "PASSED: the run may ship" if c.gate_passed else "BLOCKED: at least one rule failed"
    trend = "up" if c.gate_passed else "down"
    return _section("Gate", f'<p class="delta {trend}">{_e(word)}</p>' + _table(c.gate_table) + deploy)


def render_page(title: str, sections: list[tuple[str, list[Table | bytes | str | None]]]) -> str:
    """A self-contained page of titled sections holding tables, PNG figures and notes (``tunelab compare``).

    Args:
        title: Page title.
        sections: ``(heading, items)``; an item is a Table, PNG bytes, a note string, or None (skipped).

    Returns:
        A complete HTML document referencing no external resource.
    """
    parts = [f'<header><h1>{_e(title)}</h1></header>']
    for heading, items in sections:
        body = "".join(_table(i) if isinstance(i, Table) else _img(i, heading) if isinstance(i, bytes)
                       else f'<p class="note">{_e(i)}</p>' if isinstance(i, str) else "" for i in items)
        parts.append(_section(heading, body) if any(isinstance(i, (Table, bytes)) for i in items) else "")
    parts.append(f"<footer>Generated by tunelab {_e(__version__)}.</footer>")
    return (
        '<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8">'
        '<meta name="viewport" content="width=device-width, initial-scale=1">'
        f"<title>{_e(title)}</title><style>{_css()}</style></head>"
        f"<body><main>{''.join(parts)}</main></body></html>\n"
    )


def _sample(i: int, sample: dict[str, str], columns: tuple[str, ...]) -> str:
    outputs = [col for col in columns if col != "input"]
    cells = "".join(
        f'<div class="cell {_e(col)}"><h4>{_e(col)}</h4><pre>{_e(sample[col])}</pre></div>' for col in columns
    )
    grid = f"grid-template-columns: repeat({max(1, len(outputs))}, minmax(0, 1fr))"
    return f'<div class="sample"><div class="sample-title">Sample {i}</div><div class="sample-grid" style="{grid}">{cells}</div></div>'


def _samples(c: ReportContent) -> str:
    body = "".join(_sample(i, s, c.sample_columns) for i, s in enumerate(c.samples, 1))
    return _section("Samples", body)


def _recipe(c: ReportContent) -> str:
    if not c.recipe_json:
        return ""
    return f"<section><details><summary>Resolved recipe</summary><pre>{_e(c.recipe_json)}</pre></details></section>"


def render_html(content: ReportContent, images: dict[str, bytes]) -> str:
    """The full page.

    Args:
        content: What to show (see :func:`tunelab.report.content.build_content`).
        images: PNG bytes by name (``"loss"``, ``"metrics"``), embedded as data URIs.

    Returns:
        A complete HTML document referencing no external resource.
    """
    body = "".join(
        [
            _header(content),
            _headline(content),
            _data(content),
            _training(content, images),
            _metrics(content, images),
            _variants(content, images),
            _general(content, images),
            *(_people(s) for s in content.people),
            _gate(content),
            _section("Throughput", _table(content.throughput_table)),
            _samples(content),
            _recipe(content),
            f"<footer>Generated by tunelab {_e(__version__)}.</footer>",
        ]
    )
    return (
        '<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8">'
        '<meta name="viewport" content="width=device-width, initial-scale=1">'
        f"<title>{_e(content.title)}</title><style>{_css()}</style></head>"
        f"<body><main>{body}</main></body></html>\n"
    )
