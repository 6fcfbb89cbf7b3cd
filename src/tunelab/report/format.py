"""Formatting of numbers for reports: one place decides how a value looks in HTML and Markdown alike."""

from __future__ import annotations

import json
import math
from typing import Any

__all__ = [
    "MISSING",
    "fmt_delta",
    "fmt_duration",
    "fmt_metric",
    "fmt_params",
    "fmt_value",
    "is_context_value",
    "is_fraction_metric",
    "lower_is_better",
]

MISSING = "—"
# Metrics that are not fractions in [0, 1] even when their value happens to fall there.
_RAW_MARKERS = ("loss", "perplexity", "nll", "n_examples", "tokens", "count", "p_value", "reward_chosen",
                "reward_rejected", "margin", "reward_mean", "kl")
_LOWER_BETTER_MARKERS = ("loss", "perplexity", "nll", "invalid_rate")
# Counts, timings and sizes describe the run; they are never scores, and their change is no result.
_CONTEXT_PREFIXES = ("n_",)
_CONTEXT_SUFFIXES = ("_s", "_ms", "_mb", "_gb", "_per_s")


def _finite(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)


def fmt_value(v: Any) -> str:
    """Render any JSON-ish value compactly: ints with separators, floats to 4 significant digits."""
    if v is None:
        return MISSING
    if isinstance(v, bool):
        return "yes" if v else "no"
    if isinstance(v, int):
        return f"{v:,}"
    if isinstance(v, float):
        if not math.isfinite(v):
            return str(v)
        return f"{v:,.0f}" if abs(v) >= 1e4 else f"{v:.4g}"
    if isinstance(v, (list, dict)):
        return json.dumps(v, ensure_ascii=False, default=str)
    return str(v)


def is_context_value(name: str) -> bool:
    """True for counts, timings and sizes (``n_examples``, ``eval_time_s``) shown next to metrics."""
    return name.startswith(_CONTEXT_PREFIXES) or name.endswith(_CONTEXT_SUFFIXES)


def is_fraction_metric(name: str, *values: Any) -> bool:
    """True when ``name`` is a score in [0, 1] (shown as a percentage, compared in points)."""
    if is_context_value(name) or any(marker in name for marker in _RAW_MARKERS):
        return False
    present = [v for v in values if v is not None]
    return bool(present) and all(_finite(v) and 0.0 <= v <= 1.0 for v in present)


def lower_is_better(name: str) -> bool:
    """Whether a decrease of this metric is an improvement (losses, perplexity, invalid rate)."""
    return any(marker in name for marker in _LOWER_BETTER_MARKERS)


def fmt_metric(v: Any, fraction: bool) -> str:
    """A metric value: ``93.5%`` for fractions, :func:`fmt_value` otherwise."""
    if fraction and _finite(v):
        return f"{100 * v:.1f}%"
    return fmt_value(v)


def fmt_delta(base: Any, tuned: Any, fraction: bool) -> str | None:
    """``+89.5 points`` for fractions, ``-1.234`` otherwise; None when either side is not a number."""
    if not (_finite(base) and _finite(tuned)):
        return None
    delta = tuned - base
    return f"{100 * delta:+.1f} points" if fraction else f"{delta:+.4g}"


def fmt_duration(seconds: Any) -> str:
    """``42.1 s``, ``3 min 12 s`` or ``2 h 05 min``."""
    if not _finite(seconds):
        return fmt_value(seconds)
    if seconds < 60:
        return f"{seconds:.1f} s"
    minutes, secs = divmod(round(seconds), 60)
    if minutes < 60:
        return f"{minutes} min {secs:02d} s"
    hours, minutes = divmod(minutes, 60)
    return f"{hours} h {minutes:02d} min"


def fmt_params(n: Any) -> str:
    """A parameter count: ``135 M``, ``4.6 k``, ``1.24 B``."""
    if not _finite(n):
        return fmt_value(n)
    for scale, unit in ((1e9, "B"), (1e6, "M"), (1e3, "k")):
        if abs(n) >= scale:
            return f"{n / scale:.3g} {unit}"
    return f"{int(n)}"
