"""``data_report.html``: the dataset audit (see `tunelab.data.audit`) as one self-contained page.

Inline CSS (the run report's stylesheet plus severity colours), matplotlib charts as base64 PNG data URIs,
every piece of dataset text escaped. The page references no external resource and opens offline.
"""

from __future__ import annotations

import base64
from html import escape
from importlib import resources
from typing import Any

from matplotlib.figure import Figure

from tunelab import __version__
from tunelab.report.plots import _png, _style

__all__ = ["SECTION_TITLES", "render_audit_html"]

SECTION_TITLES = ("Findings", "Counts", "Lengths", "Turns", "Vocabulary", "Languages", "Duplicates",
                  "Personal data", "Labels", "Refusals", "Degenerate turns", "Inconsistent answers",
                  "Evaluation overlap")
_SEVERITY_CSS = """
.finding { border-left: 5px solid var(--muted); background: var(--panel); border-radius: 8px; padding: 8px 14px;
  margin: 0 0 10px; }
.finding.high { border-color: #b91c1c; } .finding.medium { border-color: #d97706; }
.finding.low { border-color: #2563eb; } .finding.info { border-color: #9ca3af; }
.sev { font-size: 12px; font-weight: 700; text-transform: uppercase; margin-right: 8px; }
.high .sev { color: #b91c1c; } .medium .sev { color: #d97706; } .low .sev { color: #2563eb; }
.info .sev { color: #6b7280; }
pre.snippet { white-space: pre-wrap; word-break: break-word; margin: 0; font-size: 13px; }
"""
_COLORS = {"system": "#9ca3af", "user": "#ea580c", "assistant": "#2563eb", "text": "#2563eb"}


def _e(text: object) -> str:
    return escape(str(text), quote=True)


def _img(png: bytes | None, alt: str) -> str:
    if png is None:
        return ""
    uri = "data:image/png;base64," + base64.b64encode(png).decode("ascii")
    return f'<figure><img alt="{_e(alt)}" src="{uri}"></figure>'


def _table(header: list[str], rows: list[list[Any]]) -> str:
    if not rows:
        return ""
    head = "".join(f"<th>{_e(h)}</th>" for h in header)
    body = "".join("<tr>" + "".join(f"<td>{_cell(c)}</td>" for c in row) + "</tr>" for row in rows)
    return f'<div class="table-wrap"><table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table></div>'


def _cell(value: Any) -> str:
    if isinstance(value, list):
        value = "\n---\n".join(str(v) for v in value)
    text = str(value)
    return f'<pre class="snippet">{_e(text)}</pre>' if "\n" in text or len(text) > 60 else _e(text)


def _section(title: str, body: str, empty: str = "Nothing to report.") -> str:
    body = body or f'<p class="empty">{_e(empty)}</p>'
    return f"<section><h2>{_e(title)}</h2>{body}</section>"


def _kv(d: dict[str, Any]) -> str:
    return _table(["", "count"], [[k, v] for k, v in d.items()])


# ------------------------------------------------------------------------------------------------ charts


def _hist_png(hists: dict[str, dict[str, Any]], title: str, xlabel: str, vline: float | None = None) -> bytes | None:
    """Step histograms (one per series) from the report's precomputed edges and counts."""
    if not hists:
        return None
    fig = Figure(figsize=(7, 3.2))
    ax = fig.add_subplot()
    for name, st in hists.items():
        h = st["histogram"]
        ax.stairs(h["counts"], h["edges"], label=name, color=_COLORS.get(name, "#2563eb"), linewidth=1.6)
    if vline:
        ax.axvline(vline, color="#b91c1c", linestyle="--", linewidth=1, label=f"max_length {vline:g}")
    _style(ax, title, xlabel, "rows")
    ax.legend(frameon=False)
    return _png(fig)


def _bar_png(series: dict[str, dict[str, int]], title: str, xlabel: str, limit: int = 15) -> bytes | None:
    """Grouped bars: one group per key (the first `limit` keys of the first series), one bar per series."""
    if not series or not any(series.values()):
        return None
    keys = list(dict.fromkeys(k for s in series.values() for k in s))[:limit]
    fig = Figure(figsize=(7, 3.2))
    ax = fig.add_subplot()
    width = 0.8 / len(series)
    for j, (name, counts) in enumerate(series.items()):
        xs = [i + j * width for i in range(len(keys))]
        ax.bar(xs, [counts.get(k, 0) for k in keys], width=width, label=name, color=_COLORS.get(name, "#2563eb"))
    ax.set_xticks([i + 0.4 - width / 2 for i in range(len(keys))], [k[:20] for k in keys], rotation=30, ha="right")
    _style(ax, title, xlabel, "rows")
    if len(series) > 1:
        ax.legend(frameon=False)
    return _png(fig)


# ------------------------------------------------------------------------------------------------ sections


def _header(r: dict[str, Any]) -> str:
    src = r.get("source") or {}
    meta = [("file", src.get("path", "(in memory)")), ("sha256", src.get("sha256", "—")),
            ("format", r["counts"]["format"]), ("rows", r["counts"]["rows"])]
    spans = "".join(f"<span><b>{_e(k)}</b>{_e(v)}</span>" for k, v in meta)
    return f'<header><h1>Dataset report</h1><p class="meta">{spans}</p></header>'


def _findings(r: dict[str, Any]) -> str:
    items = "".join(
        f'<div class="finding {_e(f["severity"])}"><span class="sev">{_e(f["severity"])}</span>'
        f'<b>{_e(f["title"])}</b><p>{_e(f["detail"])}</p><p class="note">Action: {_e(f["action"])}</p></div>'
        for f in r["findings"])
    return _section("Findings", items, "No problems found.")


def _counts(r: dict[str, Any]) -> str:
    c = r["counts"]
    rows = [["rows read", c["rows"]], ["usable", c["usable"]], ["rejected", c["rejected"]]]
    rows += [[f"rejected: {k}", v] for k, v in c["rejected_by_reason"].items()]
    return _section("Counts", _table(["", "rows"], rows))


def _stat_rows(stats: dict[str, dict[str, Any]], unit: str) -> list[list[Any]]:
    return [[f"{name} ({unit})", s["count"], s["min"], round(s["mean"], 1), s["p50"], s["p95"], s["max"]]
            for name, s in stats.items()]


def _lengths(r: dict[str, Any]) -> str:
    ln = r["lengths"]
    tokens = {"tokens": ln["tokens"]} if ln["tokens"] else {}
    table = _table(["", "n", "min", "mean", "p50", "p95", "max"],
                   _stat_rows(ln["chars"], "chars") + _stat_rows(tokens, "chat template"))
    trunc = ln["truncation"]
    note = (f'<p class="note">{trunc["count"]} rows ({100 * trunc["fraction"]:.1f}%) are longer than '
            f'{trunc["max_length"]} tokens.</p>') if trunc else ""
    charts = _img(_hist_png(ln["chars"], "Characters per turn", "characters"), "characters per turn")
    if tokens:
        vline = trunc["max_length"] if trunc else None
        charts += _img(_hist_png(tokens, "Tokens per row (chat template)", "tokens", vline), "tokens per row")
    return _section("Lengths", table + note + charts)


def _turns(r: dict[str, Any]) -> str:
    t = r["turns"]
    if not t:
        return _section("Turns", "", "Plain text: no turns.")
    chart = _img(_bar_png({"rows": t["distribution"]}, "Turns per conversation", "user + assistant turns"),
                 "turns per conversation")
    return _section("Turns", _kv(t["distribution"]) + f'<p class="note">{t["with_system"]} rows have a system '
                    "prompt.</p>" + chart)


def _vocabulary(r: dict[str, Any]) -> str:
    v = r["vocabulary"]
    note = f'<p class="note">{v["words"]} words, {v["distinct_words"]} distinct (in {_e(v["of"])} text).</p>'
    cols = [v["top_words"], v["top_bigrams"], v["top_trigrams"]]
    rows = [[f"{k} ({c[k]})" if i < len(c) else "" for c in cols for k in [list(c)[i] if i < len(c) else ""]]
            for i in range(max(map(len, cols)))]
    return _section("Vocabulary", note + _table(["top words", "top bigrams", "top trigrams"], rows))


def _languages(r: dict[str, Any]) -> str:
    mix = r["languages"]
    rows = [[role, k, n] for role, counts in mix.items() for k, n in counts.items()]
    chart = _img(_bar_png(mix, "Language mix", "language"), "language mix")
    return _section("Languages", _table(["turns", "language", "rows"], rows) + chart)


def _duplicates(r: dict[str, Any]) -> str:
    d = r["duplicates"]
    note = (f'<p class="note">{d["removable"]} removable rows ({100 * d["fraction"]:.1f}%): {d["exact"]} exact, '
            f'{d["near"]} near; {d["clusters"]} clusters covering {d["rows_in_clusters"]} rows.</p>')
    rows = [[c["size"], [e["where"] for e in c["examples"]], [e["text"] for e in c["examples"]]] for c in d["largest"]]
    return _section("Duplicates", note + _table(["size", "where", "texts"], rows))


def _pii(r: dict[str, Any]) -> str:
    p = r["pii"]
    if not p["matches"]:
        return _section("Personal data", "", "No PII found.")
    rows = [[e["where"], ", ".join(e["types"]), e["context"]] for e in p["examples"]]
    note = f'<p class="note">{p["matches"]} matches in {p["rows"]} rows (examples are redacted).</p>'
    return _section("Personal data", note + _kv(p["by_type"]) + _table(["where", "types", "context"], rows))


def _labels(r: dict[str, Any]) -> str:
    lab = r["labels"]
    if not lab:
        return _section("Labels", "", "The answers do not look like class labels.")
    rows = [[k, n, f"{100 * lab['fractions'][k]:.1f}%"] for k, n in lab["counts"].items()]
    chart = _img(_bar_png({"rows": lab["counts"]}, "Class balance", "label", limit=30), "class balance")
    note = f'<p class="note">Imbalance ratio (largest/smallest): {lab["imbalance_ratio"]:g}.</p>'
    return _section("Labels", note + _table(["label", "rows", "share"], rows) + chart)


def _examples_section(title: str, note: str, header: list[str], keys: list[str], items: list[dict]) -> str:
    return _section(title, f'<p class="note">{_e(note)}</p>' + _table(header, [[e[k] for k in keys] for e in items]))


def _inconsistent(inc: dict[str, Any], threshold: float | None) -> str:
    """Identical prompts with different answers, then groups of near-same prompts, each row with its answer."""
    exact = f'<p class="note">{inc["prompts"]} prompts with different answers.</p>' + _table(
        ["prompt", "where", "answers"], [[e["prompt"], e["where"], e["answers"]] for e in inc["examples"]])
    near = inc.get("near")
    if near is None:
        return _section("Inconsistent answers", exact)
    rows = [[g, e["where"], e["similarity"], e["prompt"], e["answer"]]
            for g, group in enumerate(near["examples"], start=1) for e in group]
    note = (f'<p class="note">{near["groups"]} groups of near-same prompts (character 5-gram Jaccard &ge; '
            f'{_e(threshold)}) with different answers ({near["rows"]} rows); similarity is to the group\'s first '
            "prompt.</p>")
    return _section("Inconsistent answers", exact + note + _table(["group", "where", "similarity", "prompt",
                                                                    "answer"], rows))


def _details(r: dict[str, Any]) -> str:
    ref, deg, inc, ov = r["refusals"], r["degenerate"], r["inconsistent"], r["eval_overlap"]
    parts = [
        _examples_section("Refusals", f"{ref['count']} of {ref['answers']} answers ({100 * ref['ratio']:.1f}%).",
                          ["where", "prompt", "answer"], ["where", "prompt", "answer"], ref["examples"]),
        _examples_section("Degenerate turns", f"{deg['turns']} turns in {deg['rows']} rows.",
                          ["where", "role", "reason", "text"], ["where", "role", "reason", "text"], deg["examples"]),
        _inconsistent(inc, r["thresholds"].get("near_prompt_similarity")),
    ]
    if ov is None:
        parts.append(_section("Evaluation overlap", "", "Not checked (no evaluation data given)."))
    else:
        parts.append(_examples_section("Evaluation overlap", f"{ov['count']} rows overlap {ov['eval_rows']} "
                                       "evaluation rows.", ["where", "eval row", "shared n-grams", "n-gram"],
                                       ["where", "eval_index", "overlap", "ngram"], ov["examples"]))
    return "".join(parts)


def render_audit_html(report: dict[str, Any]) -> str:
    """The dataset report as one HTML page.

    Args:
        report: from `tunelab.data.audit.audit_examples`.

    Returns:
        A complete HTML document referencing no external resource.
    """
    css = resources.files("tunelab.report").joinpath("style.css").read_text(encoding="utf-8") + _SEVERITY_CSS
    body = "".join([_header(report), _findings(report), _counts(report), _lengths(report), _turns(report),
                    _vocabulary(report), _languages(report), _duplicates(report), _pii(report), _labels(report),
                    _details(report), f"<footer>Generated by tunelab {_e(__version__)}.</footer>"])
    return ('<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8">'
            '<meta name="viewport" content="width=device-width, initial-scale=1">'
            f"<title>Dataset report</title><style>{css}</style></head><body><main>{body}</main></body></html>\n")
