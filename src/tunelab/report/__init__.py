"""The run report: ``report.html`` (self-contained, opens offline) and ``report.md`` with its plots."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from tunelab.report.content import build_content
from tunelab.report.html import render_html
from tunelab.report.markdown import render_markdown
from tunelab.report.plots import write_plots
from tunelab.util.io import atomic_write_text

__all__ = ["write_report"]


def write_report(run_dir: str | Path, data: dict[str, Any]) -> tuple[Path, Path]:
    """Write ``report.html``, ``report.md`` and ``plots/*.png`` into ``run_dir``.

    Every key of ``data`` may be missing or None; sections without data are left out.

    Args:
        run_dir: The run folder (created if needed).
        data: Report data::

            {"title": str, "model": str, "method": str, "recipe": dict, "date": str (optional),
             "data_summary": {"format": str, "splits": {split: {"rows_read", "kept",
                 "rejected": {reason: count}, "truncated", "tokens", "loss_tokens", "mean_len",
                 "max_len"}}},
             "train_history": [{"step", "loss", "lr", "tokens_per_s", "elapsed_s"}, ...],
             "eval_history": [{"step", "val_loss"}, ...],
             "throughput": {"real_tokens_per_s", "train_time_s", "steps", "precision",
                 "peak_rss_mb", "trainable_params", "total_params"},
             "metrics": {"base": dict | None, "tuned": dict},   # compute_task_metrics() output,
                                                                 # plus val_loss, perplexity
             "samples": [{"input", "reference", "base", "tuned"}, ...]}   # first 8 shown

    Returns:
        ``(html_path, md_path)``.
    """
    run_dir = Path(run_dir)
    data = data if isinstance(data, dict) else {}
    images = write_plots(data, run_dir / "plots")
    content = build_content(data)
    html_path, md_path = run_dir / "report.html", run_dir / "report.md"
    atomic_write_text(html_path, render_html(content, images))
    atomic_write_text(md_path, render_markdown(content, images.keys()))
    return html_path, md_path
