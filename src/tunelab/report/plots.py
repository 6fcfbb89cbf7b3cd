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
from matplotlib.ticker import PercentFormatter

from tunelab.report.format import is_fraction_metric

__all__ = ["loss_png", "metrics_png", "write_plots"]

_TRAIN_COLOR, _VAL_COLOR = "#2563eb", "#ea580c"
_BASE_COLOR, _TUNED_COLOR = "#9ca3af", "#2563eb"
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
        ``{name: png_bytes}`` for the figures drawn (``"loss"``, ``"metrics"``).
    """
    metrics = data.get("metrics") if isinstance(data.get("metrics"), dict) else {}
    pngs = {
        "loss": loss_png(data.get("train_history"), data.get("eval_history")),
        "metrics": metrics_png(metrics.get("base"), metrics.get("tuned")),
    }
    pngs = {name: png for name, png in pngs.items() if png is not None}
    if pngs:
        plots_dir.mkdir(parents=True, exist_ok=True)
    for name, png in pngs.items():
        _atomic_write_bytes(plots_dir / f"{name}.png", png)
    return pngs
