"""The run report: self-contained HTML and Markdown, from full and from nearly empty data."""

from __future__ import annotations

import base64
import math
import re

import pytest

from tunelab.evaluation.metrics import compute_task_metrics
from tunelab.report import write_report
from tunelab.report.content import MAX_SAMPLES, build_content
from tunelab.report.format import fmt_delta, fmt_duration, fmt_metric, fmt_params, is_fraction_metric

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def _full_data() -> dict:
    refs = ['{"name": "Ada", "year": 1843}'] * 20
    tuned_preds = refs[:18] + ['{"name": "ada", "year": 1842}', "no idea"]
    base_preds = ["Ada, 1843"] * 19 + ['```json\n{"name": "Ada", "year": "1843"}\n```']
    base = {**compute_task_metrics("json", base_preds, refs), "val_loss": 2.4, "perplexity": math.exp(2.4)}
    tuned = {**compute_task_metrics("json", tuned_preds, refs), "val_loss": 0.6, "perplexity": math.exp(0.6)}
    split = {
        "rows_read": 120,
        "kept": 110,
        "rejected": {"duplicate": 7, "empty": 3},
        "truncated": 2,
        "tokens": 25_000,
        "loss_tokens": 6_000,
        "mean_len": 227.3,
        "max_len": 512,
    }
    return {
        "title": "Demo <run> & co",
        "recipe": {"model": {"name": "tiny"}, "method": {"kind": "lora", "r": 8}},
        "model": "tiny-llama",
        "method": "lora",
        "date": "2025-01-01 12:00 UTC",
        "data_summary": {"format": "alpaca", "splits": {"train": split, "validation": split, "test": split}},
        "train_history": [
            {"step": s, "loss": 2.5 / (1 + s / 20), "lr": 1e-4, "tokens_per_s": 400.0, "elapsed_s": s * 0.5}
            for s in range(1, 61)
        ],
        "eval_history": [{"step": s, "val_loss": 2.4 / (1 + s / 25)} for s in (0, 20, 40, 60)],
        "throughput": {
            "real_tokens_per_s": 412.5,
            "train_time_s": 95.2,
            "steps": 60,
            "precision": "bf16",
            "peak_rss_mb": 1800.4,
            "trainable_params": 460_800,
            "total_params": 135_000_000,
        },
        "metrics": {"base": base, "tuned": tuned},
        "samples": [
            {
                "input": f"Extract the record <script>alert({i})</script>",
                "reference": refs[i],
                "base": base_preds[i],
                "tuned": tuned_preds[i],
            }
            for i in range(12)
        ],
    }


def _no_external_resources(html: str) -> bool:
    return re.search(r"""(?:src|href)\s*=\s*["']?\s*(?:https?:)?//""", html, re.IGNORECASE) is None


def _embedded_pngs(html: str) -> list[bytes]:
    return [base64.b64decode(m) for m in re.findall(r'src="data:image/png;base64,([A-Za-z0-9+/=]+)"', html)]


def test_full_report(tmp_path):
    html_path, md_path = write_report(tmp_path / "run", _full_data())
    assert html_path == tmp_path / "run" / "report.html" and md_path == tmp_path / "run" / "report.md"
    html, md = html_path.read_text(encoding="utf-8"), md_path.read_text(encoding="utf-8")

    assert (tmp_path / "run" / "plots" / "loss.png").read_bytes().startswith(PNG_MAGIC)
    assert (tmp_path / "run" / "plots" / "metrics.png").read_bytes().startswith(PNG_MAGIC)
    pngs = _embedded_pngs(html)
    assert len(pngs) == 2 and all(p.startswith(PNG_MAGIC) for p in pngs)
    assert _no_external_resources(html)
    assert "<link" not in html and "<script" not in html and "@import" not in html

    # user text is escaped, never interpreted
    assert "&lt;script&gt;alert(0)&lt;/script&gt;" in html
    assert "Demo &lt;run&gt; &amp; co" in html

    assert "field_accuracy" in html and "points" in html and "95% CI" in html
    assert html.count('class="sample"') == MAX_SAMPLES
    assert "Resolved recipe" in html and "rows read" in html and "trainable parameters" in html

    assert "![Training and validation loss by step](plots/loss.png)" in md
    assert "](plots/metrics.png)" in md
    assert re.search(r"^\| train \| 120 \| 110 \| 10 \(duplicate 7, empty 3\) \|", md, re.MULTILINE)
    assert re.search(r"^\| field_accuracy \| .+ \| .+ \| \+\d+\.\d points \|$", md, re.MULTILINE)
    assert re.search(r"^\| real \(non-padding\) tokens/s \| 412\.5 \|$", md, re.MULTILINE)
    assert md.count("### Sample ") == MAX_SAMPLES
    assert "&lt;run&gt;" in md  # the heading is escaped too


def test_minimal_report(tmp_path):
    data = {
        "title": "minimal",
        "train_history": [],
        "eval_history": [],
        "metrics": {"base": None, "tuned": {"accuracy": 0.8, "main": "accuracy", "accuracy_ci": [0.7, 0.9]}},
    }
    html_path, md_path = write_report(tmp_path, data)
    html, md = html_path.read_text(encoding="utf-8"), md_path.read_text(encoding="utf-8")
    assert not (tmp_path / "plots" / "loss.png").exists()
    assert len(_embedded_pngs(html)) == 1  # the metrics chart, tuned only
    assert "No training history was recorded." in html and "_No training history was recorded._" in md
    assert "accuracy 80.0%" in md and "→" not in md
    assert "| accuracy | 80.0% [70.0%, 90.0%] |" in md
    assert _no_external_resources(html)


@pytest.mark.parametrize(
    "data",
    [
        {},
        {"title": None, "metrics": None, "samples": None, "throughput": None, "data_summary": None},
        {"metrics": {"tuned": {}}, "data_summary": {"splits": {"train": None}}, "samples": [None, {}]},
        {"train_history": [{"step": 1, "loss": float("nan")}, {"step": None}], "throughput": {"steps": 3}},
    ],
)
def test_degenerate_data_still_renders(tmp_path, data):
    html_path, md_path = write_report(tmp_path, data)
    assert "<h1>tunelab run report</h1>" in html_path.read_text(encoding="utf-8")
    assert md_path.read_text(encoding="utf-8").startswith("# ")


def test_markdown_fences_survive_backticks_in_samples(tmp_path):
    data = {"samples": [{"input": "code:\n```python\nx = 1\n```", "reference": "r", "tuned": "t"}]}
    md = write_report(tmp_path, data)[1].read_text(encoding="utf-8")
    assert "````text\ncode:\n```python\nx = 1\n```\n````" in md


def test_headline_text_and_trend():
    content = build_content(
        {
            "metrics": {
                "base": {"field_accuracy": 0.04},
                "tuned": {"field_accuracy": 0.935, "main": "field_accuracy"},
            }
        }
    )
    (headline,) = content.headlines
    assert headline.text == "field_accuracy 4.0% → 93.5% (+89.5 points)"
    assert headline.trend == 1
    worse = build_content(
        {"metrics": {"base": {"val_loss": 1.0}, "tuned": {"val_loss": 2.0, "main": "val_loss"}}}
    )
    assert worse.headlines[0].trend == -1  # loss went up


def test_formatting_helpers():
    assert fmt_metric(0.935, True) == "93.5%"
    assert fmt_delta(0.04, 0.935, True) == "+89.5 points"
    assert fmt_delta(None, 0.5, True) is None
    assert (
        fmt_duration(42.14) == "42.1 s"
        and fmt_duration(192) == "3 min 12 s"
        and fmt_duration(7500) == "2 h 05 min"
    )
    assert fmt_params(135_000_000) == "135 M" and fmt_params(4600) == "4.6 k"
    assert is_fraction_metric("accuracy", 0.2, 0.9)
    assert not is_fraction_metric("val_loss", 0.2, 0.9)
    assert not is_fraction_metric("accuracy", 0.2, 3.0)
    assert not is_fraction_metric("eval_time_s", 0.4, 0.5)  # a short timing is not a score


def test_context_values_get_no_delta_and_no_bar():
    metrics = {
        "base": {"accuracy": 0.5, "n_examples": 10, "eval_time_s": 0.4},
        "tuned": {"accuracy": 0.9, "n_examples": 10, "eval_time_s": 0.6, "main": "accuracy"},
    }
    rows = {row[0]: row for row in build_content({"metrics": metrics}).metric_table.rows}
    assert rows["eval_time_s"] == ("eval_time_s", "0.4", "0.6", "—")
    assert rows["n_examples"][-1] == "—"
    assert rows["accuracy"][-1] == "+40.0 points"


def test_online_rl_runs_get_a_reward_plot_and_raw_reward_statistics(tmp_path):
    history = [{"step": s, "loss": 0.001, "reward_mean": 0.5 + 0.05 * s, "kl": 0.01 * s} for s in range(1, 11)]
    html, md = write_report(tmp_path, {"title": "grpo", "train_history": history})
    assert (tmp_path / "plots" / "reward.png").is_file()
    assert "plots/reward.png" in md.read_text() and "mean reward per step" in html.read_text()
    html2, md2 = write_report(tmp_path / "sft", {"title": "sft", "train_history": [{"step": 1, "loss": 1.0}]})
    assert not (tmp_path / "sft" / "plots" / "reward.png").exists()
    # reward-model statistics that happen to lie in [0, 1] are not percentages
    for name in ("p_value_vs_chance", "reward_chosen", "reward_rejected", "reward_margin"):
        assert not is_fraction_metric(name, 0.58)
    assert is_fraction_metric("reward_accuracy", 0.45)
