"""Comparing variants and runs: rows, CSV, HTML, plots, the CLI verb, and the run report's new sections."""

from __future__ import annotations

import csv
import io
import json

import pytest
import yaml

from tunelab.cli.main import main
from tunelab.errors import TunelabError
from tunelab.evaluation.compare import (
    compare_runs_report,
    comparison_rows,
    gate_table,
    general_table,
    variant_rows,
    variants_table,
)
from tunelab.evaluation.metrics import compute_task_metrics
from tunelab.report import write_report

REFS = ["joy", "sadness", "anger", "fear"] * 10


def _metrics(n_right: int, **extra) -> dict:
    preds = REFS[:n_right] + ["love"] * (len(REFS) - n_right)
    return {**compute_task_metrics("label", preds, REFS, ["joy", "sadness", "anger", "fear", "love"]), **extra}


def _eval(tuned_right: int, worst: float | None = None, gate: bool | None = None) -> dict:
    base = _metrics(8)
    ev = {"split": "test", "n": 40, "task": "label", "base": base, "tuned": _metrics(tuned_right),
          "baselines": {"zero_shot": {**base, "same_as": "base", "k": 0, "prompt_tokens": 40.0},
                        "5_shot": _metrics(20, k=5, selection="similar", prompt_tokens=260.0),
                        "cot": _metrics(12, k=0, prompt_tokens=60.0)}}
    if worst is not None:
        ev["general"] = {"base": {"wiki": {"perplexity": 20.0, "tokens": 900, "n_examples": 10}},
                         "tuned": {"wiki": {"perplexity": 20.0 * (1 + worst), "tokens": 900, "n_examples": 10}},
                         "change": {"wiki": {"perplexity": worst}}, "worst": {"perplexity": worst}}
    if gate is not None:
        ev["gate"] = {"passed": gate, "rules": [{"rule": "tuned.accuracy >= 0.8", "metric": "tuned.accuracy",
                                                 "value": tuned_right / 40, "op": ">=", "threshold": 0.8,
                                                 "passed": gate}]}
    return ev


def _run(root, name: str, ev: dict, train_s: float = 120.0):
    run = root / name
    (run / "eval").mkdir(parents=True)
    (run / "config.yaml").write_text(yaml.safe_dump({"model": {"name": "m"}, "method": {"name": name},
                                                     "train": {"lr": 1e-3 if name == "a" else 2e-4}}))
    (run / "train_summary.json").write_text(json.dumps({"train_time_s": train_s, "steps": 10}))
    (run / "eval" / "metrics.json").write_text(json.dumps(ev))
    return run


def test_variant_rows_show_the_zero_shot_base_once():
    rows = variant_rows(_eval(36))
    assert [r["variant"] for r in rows] == ["base (zero-shot)", "5-shot (similar)", "chain-of-thought", "fine-tuned"]
    assert rows[0]["metrics"]["prompt_tokens"] == 40.0 and rows[0]["kind"] == "base"
    separate = _eval(36)
    separate["baselines"]["zero_shot"].pop("same_as")
    assert [r["variant"] for r in variant_rows(separate)][:2] == ["base", "zero-shot"]


def test_comparison_rows_carry_ci_cost_forgetting_and_gate(tmp_path):
    records = [{"name": "a", "path": "runs/a", "train_time_s": 100.0, "eval": _eval(36, 0.02, True)}]
    rows, names = comparison_rows(records)
    assert names[0] == "accuracy" and "macro_f1" in names and "prompt_tokens" not in names
    tuned = rows[-1]
    assert tuned["value"] == pytest.approx(0.9) and tuned["ci_lo"] <= 0.9 <= tuned["ci_hi"]
    assert tuned["train_time_s"] == 100.0 and tuned["general_worst_ppl_change"] == 0.02 and tuned["gate"] == "passed"
    assert rows[1]["prompt_tokens"] == 260.0 and rows[1]["train_time_s"] is None and rows[1]["gate"] is None


def test_compare_two_runs_writes_csv_html_and_plots(tmp_path):
    a = _run(tmp_path, "a", _eval(36, 0.02, True))
    b = _run(tmp_path, "b", _eval(28, 0.09, False), train_s=300.0)
    out = compare_runs_report([str(a), str(b)], tmp_path / "cmp")
    table = list(csv.DictReader(io.StringIO((out / "compare.csv").read_text())))
    assert [(r["run"], r["variant"]) for r in table] == [
        (run, v) for run in ("a", "b") for v in ("base (zero-shot)", "5-shot (similar)", "chain-of-thought", "fine-tuned")]
    b_tuned = table[-1]
    assert float(b_tuned["value"]) == pytest.approx(0.7) and b_tuned["gate"] == "blocked"
    assert float(b_tuned["train_time_s"]) == 300.0 and float(b_tuned["general_worst_ppl_change"]) == 0.09
    assert float(b_tuned["ci_lo"]) <= 0.7 <= float(b_tuned["ci_hi"])
    html = (out / "compare.html").read_text()
    assert "data:image/png;base64," in html and "train.lr" in html and "http" not in html.split("<body>")[1]
    assert {p.name for p in (out / "plots").iterdir()} == {"variants.png", "tradeoff.png"}


def test_compare_refuses_what_it_cannot_compare(tmp_path):
    a = _run(tmp_path, "a", _eval(36))
    with pytest.raises(TunelabError, match="at least two"):
        compare_runs_report([str(a)], tmp_path / "cmp")
    unevaluated = _run(tmp_path, "u", {})
    with pytest.raises(TunelabError, match="no evaluation") as e:
        compare_runs_report([str(a), str(unevaluated)], tmp_path / "cmp")
    assert "tunelab eval" in e.value.fix
    assert main(["compare", str(a), str(tmp_path / "missing"), "-o", str(tmp_path / "cmp")]) == 2


def test_compare_verb(tmp_path, capsys):
    a, b = _run(tmp_path, "a", _eval(36)), _run(tmp_path, "b", _eval(30))
    assert main(["compare", str(a), str(b), "-o", str(tmp_path / "out")]) == 0
    assert (tmp_path / "out" / "compare.csv").is_file()
    assert "runs compared" in capsys.readouterr().err


def test_tables_for_the_report():
    ev = _eval(36, 0.031, False)
    table = variants_table(ev)
    assert table.header[:2] == ("variant", "accuracy [95% CI]") and "run" not in table.header
    assert table.rows[-1][0] == "fine-tuned" and table.rows[-1][1].startswith("90.0% [")
    # The fine-tune answers the plain prompt: the zero-shot prompt's length is its per-query cost too.
    assert table.rows[-1][table.header.index("prompt tokens")] == "40"
    assert general_table(ev).rows == [("wiki", "20", "20.62", "+3.10%", "900", "10")]
    assert gate_table(ev["gate"]).rows == [("tuned.accuracy >= 0.8", "tuned.accuracy", "0.9", ">= 0.8", "FAIL")]
    assert variants_table({"tuned": ev["tuned"]}) is None and general_table({}) is None and gate_table(None) is None


def test_report_sections(tmp_path):
    ev = _eval(36, 0.031, False)
    data = {"metrics": {"base": ev["base"], "tuned": ev["tuned"]}, "baselines": ev["baselines"],
            "general": ev["general"], "gate": ev["gate"]}
    html_path, md_path = write_report(tmp_path, data)
    md, html = md_path.read_text(), html_path.read_text()
    for heading in ("Fine-tuning vs prompting", "Learning and forgetting", "Gate"):
        assert f"## {heading}" in md and f"<h2>{heading}</h2>" in html
    assert "**BLOCKED**" in md and "general perplexity change at worst +3.10% (wiki)" in md
    assert "5-shot (similar)" in md and {p.name for p in (tmp_path / "plots").iterdir()} >= {"variants.png",
                                                                                              "tradeoff.png"}
    # Without these parts the report has none of their sections.
    _, plain = write_report(tmp_path / "plain", {"metrics": {"base": ev["base"], "tuned": ev["tuned"]}})
    assert "Fine-tuning vs prompting" not in plain.read_text() and "## Gate" not in plain.read_text()


def test_compare_help_shows_an_example(capsys):
    with pytest.raises(SystemExit) as e:
        main(["compare", "--help"])
    assert e.value.code == 0 and "tunelab compare runs/" in capsys.readouterr().out


def test_the_gate_bound_on_forgetting_is_drawn():
    from tunelab.report.plots import _perplexity_limit, tradeoff_png

    gate = {"rules": [{"metric": "general.worst.perplexity", "op": "<=", "threshold": 0.05},
                      {"metric": "general.change.wiki.perplexity", "op": "<", "threshold": 0.03},
                      {"metric": "general.change.wiki.nll", "op": "<=", "threshold": 0.01},
                      {"metric": "tuned.accuracy", "op": "<=", "threshold": 0.001}]}
    assert _perplexity_limit(gate) == 0.03 and _perplexity_limit(None) is None
    points = [{"label": "", "set": "wiki", "x": 0.2, "y": 0.5}]
    assert tradeoff_png(points, "accuracy", 0.03) != tradeoff_png(points, "accuracy")
