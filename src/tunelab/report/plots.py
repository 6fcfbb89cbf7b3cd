"""Report figures (matplotlib, Agg): loss curves and a before/after metric chart, as PNG bytes.

Figures are built on :class:`matplotlib.figure.Figure` directly rather than through pyplot, so no
global backend or figure registry is touched (safe inside servers and threads, nothing to close).
"""

from __future__ import annotations

import io
import math
import os
import tempfile
from pathlib import Path
from typing import Any

from matplotlib.figure import Figure
from matplotlib.lines import Line2D
from matplotlib.ticker import PercentFormatter

from tunelab.report.format import is_fraction_metric

__all__ = ["loss_png", "metrics_png", "tradeoff_png", "variants_png", "write_plots", "write_pngs"]

_TRAIN_COLOR, _VAL_COLOR = "#2563eb", "#ea580c"
_BASE_COLOR, _TUNED_COLOR = "#9ca3af", "#2563eb"
_KIND_COLORS = {"base": _BASE_COLOR, "baseline": "#d97706", "tuned": _TUNED_COLOR}
_DPI = 110
# Above this many points the raw training loss is noisy enough that a smoothed line helps the eye.
_SMOOTH_MIN_POINTS = 20


def _series(rows: Any, key: str) -> tuple[list[float], list[float]]:
    pts = [
        (float(r["step"]), float(r[key]))
        for r in (rows or [])
        if isinstance(r, dict) and _finite(r.get("step")) and _finite(r.get(key))
    ]
    return [p[0] for p in pts], [p[1] for p in pts]


def _finite(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)


def _ema(values: list[float], span: int) -> list[float]:
    alpha, out, acc = 2 / (span + 1), [], values[0]
    for v in values:
        acc = alpha * v + (1 - alpha) * acc
        out.append(acc)
    return out


def _png(fig: Figure) -> bytes:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=_DPI, bbox_inches="tight")
    return buf.getvalue()


def _style(ax, title: str, xlabel: str, ylabel: str) -> None:
    ax.set_title(title, loc="left", fontsize=11, fontweight="bold")
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.grid(True, color="#e5e7eb", linewidth=0.8)
    ax.set_axisbelow(True)
    for side in ("top", "right"):
        ax.spines[side].set_visible(False)


def _plot_train(ax, steps: list[float], losses: list[float]) -> None:
    if len(losses) >= _SMOOTH_MIN_POINTS:
        ax.plot(steps, losses, color=_TRAIN_COLOR, alpha=0.25, linewidth=1)
        span = max(5, len(losses) // 20)
        ax.plot(steps, _ema(losses, span), color=_TRAIN_COLOR, linewidth=2, label=f"training (EMA {span})")
    else:
        ax.plot(steps, losses, color=_TRAIN_COLOR, linewidth=2, marker="o", markersize=3, label="training")


def loss_png(train_history: Any, eval_history: Any) -> bytes | None:
    """Training loss (and validation loss, same axes) against optimizer step; None with no points."""
    t_steps, t_loss = _series(train_history, "loss")
    v_steps, v_loss = _series(eval_history, "val_loss")
    if not t_loss and not v_loss:
        return None
    fig = Figure(figsize=(8, 3.8))
    ax = fig.add_subplot()
    if t_loss:
        _plot_train(ax, t_steps, t_loss)
    if v_loss:
        ax.plot(v_steps, v_loss, color=_VAL_COLOR, linewidth=2, marker="o", markersize=4, label="validation")
    _style(ax, "Loss", "step", "loss (nats/token)")
    ax.legend(frameon=False)
    return _png(fig)


def reward_png(train_history: Any) -> bytes | None:
    """Online RL (GRPO/RLOO): mean reward of each step's completions, and KL to the reference; None without."""
    steps, reward = _series(train_history, "reward_mean")
    if not reward:
        return None
    fig = Figure(figsize=(8, 3.8))
    ax = fig.add_subplot()
    _plot_train(ax, steps, reward)
    k_steps, kl = _series(train_history, "kl")
    if kl:
        ax2 = ax.twinx()
        ax2.plot(k_steps, kl, color=_VAL_COLOR, linewidth=1.2, linestyle="--", label="KL to reference")
        ax2.set_ylabel("KL (nats)")
        ax2.legend(frameon=False, loc="lower right")
    _style(ax, "Reward", "step", "mean reward of the step's completions")
    ax.legend(frameon=False, loc="upper left")
    return _png(fig)


def _fraction_metrics(base: dict[str, Any], tuned: dict[str, Any]) -> list[str]:
    names = [tuned.get("main")] + [k for k in tuned if k != tuned.get("main")]
    return [
        n
        for n in names
        if isinstance(n, str) and not n.endswith("_ci") and is_fraction_metric(n, base.get(n), tuned.get(n))
    ]


def _ci(metrics: dict[str, Any], name: str) -> tuple[float, float] | None:
    ci, v = metrics.get(f"{name}_ci"), metrics.get(name)
    ok = isinstance(ci, (list, tuple)) and len(ci) == 2 and _finite(v) and all(_finite(x) for x in ci)
    return (float(ci[0]), float(ci[1])) if ok else None


def _bars(ax, names: list[str], metrics: dict[str, Any], offset: float, style: dict) -> None:
    xs = [i + offset for i in range(len(names))]
    values = [float(metrics[n]) if _finite(metrics.get(n)) else 0.0 for n in names]
    ax.bar(xs, values, width=0.38, **style)
    for x, v, n in zip(xs, values, names, strict=True):
        ci = _ci(metrics, n)
        if ci:  # error bars only where an interval exists; a zero-height bar would still draw caps
            err = [[max(0.0, v - ci[0])], [max(0.0, ci[1] - v)]]
            ax.errorbar([x], [v], yerr=err, fmt="none", ecolor="#111827", elinewidth=1, capsize=3)
        top = max(v, ci[1]) if ci else v
        ax.text(x, top + 0.015, f"{100 * v:.1f}", ha="center", va="bottom", fontsize=8)


def metrics_png(base: Any, tuned: Any) -> bytes | None:
    """Grouped bars of the fraction metrics, base vs tuned, with bootstrap CIs; None with none."""
    base = base if isinstance(base, dict) else {}
    tuned = tuned if isinstance(tuned, dict) else {}
    names = _fraction_metrics(base, tuned)
    if not names:
        return None
    fig = Figure(figsize=(max(5.0, 1.1 * len(names) + 2), 3.8))
    ax = fig.add_subplot()
    if base:
        _bars(ax, names, base, -0.2, {"color": _BASE_COLOR, "label": "base"})
    _bars(ax, names, tuned, 0.2 if base else 0.0, {"color": _TUNED_COLOR, "label": "tuned"})
    tilt = len(names) > 5
    ax.set_xticks(range(len(names)), names, rotation=20 if tilt else 0, ha="right" if tilt else "center")
    # Headroom above 100% for the value labels and the legend.
    ax.set_ylim(0, 1.25)
    ax.set_yticks([0, 0.2, 0.4, 0.6, 0.8, 1.0])
    ax.yaxis.set_major_formatter(PercentFormatter(1.0))
    has_ci = any(_ci(m, n) for m in (base, tuned) for n in names)
    _style(ax, "Task metrics" + (" (95% bootstrap CI)" if has_ci else ""), "", "score")
    ax.legend(frameon=False, loc="upper left", ncols=2)
    return _png(fig)


def _variant_ys(n: int) -> list[int]:
    return list(range(n))[::-1]  # the first variant on top


def _percent_axis(axis, fraction: bool) -> None:
    if fraction:
        axis.set_major_formatter(PercentFormatter(1.0))


def variants_png(points: Any, metric: str) -> bytes | None:
    """The headline metric of every variant (base, prompting baselines, fine-tuned) with its 95% CI.

    Args:
        points: ``[{"label", "value", "ci": (lo, hi) | None, "kind": "base"|"baseline"|"tuned"}, ...]``,
            drawn top to bottom in this order.
        metric: The metric's name (axis label; fractions are drawn as percentages).

    Returns:
        PNG bytes, or None with no finite value.
    """
    pts = [p for p in (points or []) if isinstance(p, dict) and _finite(p.get("value"))]
    if not pts:
        return None
    fraction = is_fraction_metric(metric, *[p["value"] for p in pts])
    fig = Figure(figsize=(8, 0.42 * len(pts) + 1.5))
    ax = fig.add_subplot()
    for y, p in zip(_variant_ys(len(pts)), pts, strict=True):
        color = _KIND_COLORS.get(p.get("kind"), _BASE_COLOR)
        ci = p.get("ci")
        if isinstance(ci, (list, tuple)) and len(ci) == 2 and all(_finite(c) for c in ci):
            ax.hlines(y, ci[0], ci[1], color=color, linewidth=2.5, alpha=0.6)
        ax.plot([p["value"]], [y], "o", color=color, markersize=7)
        text = f"{100 * p['value']:.1f}%" if fraction else f"{p['value']:.4g}"
        ax.annotate(text, (p["value"], y), textcoords="offset points", xytext=(0, 7), ha="center", fontsize=8)
    ax.set_yticks(_variant_ys(len(pts)), [str(p.get("label", "")) for p in pts])
    ax.set_ylim(-0.7, len(pts) - 0.3)
    _percent_axis(ax.xaxis, fraction)
    if fraction:  # the whole 0-100% scale, so that distances between variants are not exaggerated
        ax.set_xlim(0, 1.05)
    _style(ax, f"{metric} by variant (95% bootstrap CI)", metric, "")
    handles = [Line2D([], [], marker="o", linestyle="", color=c, label=k)
               for k, c in _KIND_COLORS.items() if any(p.get("kind") == k for p in pts)]
    ax.legend(handles=handles, frameon=False, loc="upper left", bbox_to_anchor=(1.0, 1.0), fontsize=8)
    return _png(fig)


def tradeoff_png(points: Any, metric: str, limit: float | None = None) -> bytes | None:
    """Task gain against general-capability loss: one point per (run,) general set.

    Args:
        points: ``[{"label", "x": relative perplexity change of a general set, "y": task gain (tuned -
            base of the headline metric), "set"}, ...]``.
        metric: The headline metric (fractions: the gain is drawn in points).
        limit: The gate's bound on the perplexity change (relative), drawn as a dashed line.

    Returns:
        PNG bytes, or None with no point that has both numbers.
    """
    pts = [p for p in (points or []) if isinstance(p, dict) and _finite(p.get("x")) and _finite(p.get("y"))]
    if not pts:
        return None
    # A gain may be negative, so the metric's kind comes from its name (fractions: gains in points).
    scale = 100.0 if is_fraction_metric(metric, 0.5) else 1.0
    fig = Figure(figsize=(7, 4.2))
    ax = fig.add_subplot()
    ax.axhline(0, color="#9ca3af", linewidth=1)
    ax.axvline(0, color="#9ca3af", linewidth=1)
    for p in pts:
        ax.plot([100 * p["x"]], [scale * p["y"]], "o", color=_TUNED_COLOR, markersize=8)
        label = " · ".join(str(v) for v in (p.get("label"), p.get("set")) if v)
        ax.annotate(label, (100 * p["x"], scale * p["y"]), textcoords="offset points", xytext=(6, 4), fontsize=8)
    xs, ys = [100 * p["x"] for p in pts], [scale * p["y"] for p in pts]
    if _finite(limit):
        ax.axvline(100 * limit, color="#b91c1c", linestyle="--", linewidth=1.2, label=f"gate: ≤ {100 * limit:.3g}%")
        ax.legend(frameon=False, loc="lower right", fontsize=8)
        xs.append(100 * limit)
    ax.set_xlim(min(-1.0, *xs) * 1.25, max(1.0, *xs) * 1.25)
    ax.set_ylim(min(0.0, *ys) * 1.25 - 1, max(1.0, *ys) * 1.25)
    unit = " (points)" if scale == 100.0 else ""
    _style(ax, "Task gain vs general loss (up and left is better)",
           "general perplexity change, % (right: forgot more)", f"{metric} gain{unit}")
    return _png(fig)


def _atomic_write_bytes(path: Path, payload: bytes) -> None:
    # util.io has only a text variant; same temp-and-rename pattern for the PNGs.
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(payload)
        os.chmod(tmp, 0o644)  # mkstemp creates 0600; a report is meant to be read by others
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def write_plots(data: dict[str, Any], plots_dir: Path) -> dict[str, bytes]:
    """Render the figures the data allows and save them as ``plots_dir/<name>.png``.

    Returns:
        ``{name: png_bytes}`` for the figures drawn (``"loss"``, ``"metrics"``, and with prompting
        baselines ``"variants"``, with general sets ``"tradeoff"``).
    """
    metrics = data.get("metrics") if isinstance(data.get("metrics"), dict) else {}
    pngs = {
        "loss": loss_png(data.get("train_history"), data.get("eval_history")),
        "reward": reward_png(data.get("train_history")),
        "metrics": metrics_png(metrics.get("base"), metrics.get("tuned")),
        **_comparison_plots(data, metrics),
    }
    pngs = {name: png for name, png in pngs.items() if png is not None}
    write_pngs(pngs, plots_dir)
    return pngs


def _comparison_plots(data: dict[str, Any], metrics: dict[str, Any]) -> dict[str, bytes | None]:
    """Variants (base, prompting baselines, tuned) and the learning-forgetting trade-off, when evaluated."""
    from tunelab.evaluation.compare import variant_rows
    from tunelab.evaluation.forgetting import tradeoff_rows

    ev = {"base": metrics.get("base"), "tuned": metrics.get("tuned"), "baselines": data.get("baselines"),
          "general": data.get("general")}
    main = (metrics.get("tuned") or {}).get("main") if isinstance(metrics.get("tuned"), dict) else None
    out: dict[str, bytes | None] = {}
    if isinstance(ev["baselines"], dict) and ev["baselines"] and main:
        points = [{"label": v["variant"], "value": v["metrics"].get(main), "kind": v["kind"],
                   "ci": v["metrics"].get(f"{main}_ci")} for v in variant_rows(ev)]
        out["variants"] = variants_png(points, main)
    if isinstance(ev["general"], dict) and ev["general"] and main:
        trade = [{"label": "", "set": t["set"], "x": t["perplexity_change"], "y": t["task_gain"]}
                 for t in tradeoff_rows(ev)]
        out["tradeoff"] = tradeoff_png(trade, main, _perplexity_limit(data.get("gate")))
    return out


def _perplexity_limit(gate: Any) -> float | None:
    """The tightest upper bound a gate puts on general perplexity changes, if it has one."""
    rules = gate.get("rules") if isinstance(gate, dict) else None
    bounds = [r["threshold"] for r in rules or [] if isinstance(r, dict) and r.get("op") in ("<=", "<")
              and str(r.get("metric", "")).startswith("general.") and str(r["metric"]).endswith(".perplexity")
              and str(r["metric"]).split(".")[1] in ("worst", "change") and _finite(r.get("threshold"))]
    return min(bounds) if bounds else None


def write_pngs(pngs: dict[str, bytes], plots_dir: Path) -> None:
    """Save ``{name: png}`` as ``plots_dir/<name>.png`` (atomically; the folder is made when needed)."""
    if pngs:
        plots_dir.mkdir(parents=True, exist_ok=True)
    for name, png in pngs.items():
        _atomic_write_bytes(plots_dir / f"{name}.png", png)
