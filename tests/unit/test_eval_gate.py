"""The deployment gate: rule grammar, decisions, recipe checks, files and exit codes."""

from __future__ import annotations

import json
import math
import re

import pytest

from tunelab.cli.main import main
from tunelab.config import load_recipe
from tunelab.errors import TunelabError
from tunelab.evaluation.gate import (
    GATE_BLOCKED_EXIT,
    apply_gate,
    evaluate_gate,
    gate_exit_code,
    metric_names,
    parse_gate,
)

METRICS = {
    "split": "test", "n": 50, "task": "label",
    "base": {"accuracy": 0.40, "macro_f1": 0.30, "accuracy_ci": [0.3, 0.5], "main": "accuracy"},
    "tuned": {"accuracy": 0.90, "macro_f1": 0.85, "accuracy_ci": [0.8, 0.95], "main": "accuracy"},
    "delta": {"accuracy": 0.50},
    "baselines": {"5_shot": {"accuracy": 0.60, "k": 5}, "cot": {"accuracy": 0.45}},
    "general": {"change": {"wiki": {"perplexity": 0.031}}, "worst": {"perplexity": 0.031}},
}


def test_grammar_numbers_percent_unicode_and_references():
    rules = parse_gate(["task.macro_f1 ≥ 0.8 and general.worst.perplexity <= 5%",
                        "tuned.accuracy >= baselines.5_shot.accuracy + 0.02", "n > 1e1",
                        "delta.accuracy != -.5"])
    assert [(r.metric, r.op) for r in rules] == [("tuned.macro_f1", ">="), ("general.worst.perplexity", "<="),
                                                 ("tuned.accuracy", ">="), ("n", ">"), ("delta.accuracy", "!=")]
    assert rules[0].number == 0.8 and rules[1].number == pytest.approx(0.05)
    assert rules[2].ref == "baselines.5_shot.accuracy" and rules[2].offset == pytest.approx(0.02)
    assert rules[3].number == 10.0 and rules[4].number == -0.5
    assert parse_gate("tuned.accuracy >= 0.5")[0].metric == "tuned.accuracy"  # one string is one rule list


@pytest.mark.parametrize("bad", ["tuned.accuracy", "tuned.accuracy >= ", ">= 0.8", "tuned.accuracy => 0.8",
                                 "tuned.accuracy >= 0.8 or base.accuracy < 1", "tuned.accuracy >= 80 %%", ""])
def test_malformed_rules_are_errors(bad):
    with pytest.raises(TunelabError) as e:
        parse_gate([bad])
    assert e.value.where == "gate[0]"


def test_unknown_root_lists_the_roots():
    with pytest.raises(TunelabError, match="unknown 'score'") as e:
        parse_gate(["score.f1 >= 0.5"])
    assert "tuned" in e.value.fix and "baselines" in e.value.fix


def test_decision_passes_and_blocks_with_numbers():
    passed = evaluate_gate(["tuned.macro_f1 >= 0.8", "general.worst.perplexity <= 5%"], METRICS)
    assert passed["passed"] is True
    assert passed["rules"][1] == {"rule": "general.worst.perplexity <= 5%", "metric": "general.worst.perplexity",
                                  "value": 0.031, "op": "<=", "threshold": 0.05, "passed": True}
    blocked = evaluate_gate(["tuned.macro_f1 >= 0.9 and general.worst.perplexity <= 5%"], METRICS)
    assert blocked["passed"] is False and [r["passed"] for r in blocked["rules"]] == [False, True]
    beats = evaluate_gate(["tuned.accuracy >= baselines.5_shot.accuracy + 0.35"], METRICS)["rules"][0]
    assert beats["threshold"] == pytest.approx(0.95) and beats["threshold_metric"] == "baselines.5_shot.accuracy"
    assert beats["passed"] is False
    assert evaluate_gate([], METRICS) == {"passed": True, "rules": []}


def test_nan_never_passes():
    metrics = {"tuned": {"accuracy": math.nan}}
    for op in (">=", "<=", "!="):
        assert evaluate_gate([f"tuned.accuracy {op} 0.5"], metrics)["passed"] is False


def test_unknown_metric_lists_the_valid_ones():
    with pytest.raises(TunelabError, match="unknown gate metric 'tuned.f1'") as e:
        evaluate_gate(["tuned.f1 >= 0.5"], METRICS)
    assert "tuned.macro_f1" in e.value.fix and "baselines.5_shot.accuracy" in e.value.fix
    assert "accuracy_ci" not in e.value.fix  # intervals are lists, not numbers a rule can compare
    assert set(metric_names(METRICS)) >= {"n", "delta.accuracy", "general.change.wiki.perplexity"}


def _recipe(*overrides):
    return load_recipe(None, ["data.path=x.jsonl", *overrides])


def test_recipe_gate_is_checked_when_loaded():
    assert _recipe("gate=tuned.accuracy >= 0.8").gate == ["tuned.accuracy >= 0.8"]
    with pytest.raises(TunelabError, match="cannot read gate rule"):
        _recipe("gate=['tuned.accuracy is high']")
    with pytest.raises(TunelabError, match="eval.enabled is false"):
        _recipe("gate=['tuned.accuracy >= 0.8']", "eval.enabled=false")
    with pytest.raises(TunelabError, match="writes no 'delta'") as e:
        _recipe("gate=['delta.accuracy >= 0.1']", "eval.compare_base=false")
    assert "compare_base" in e.value.fix
    with pytest.raises(TunelabError, match="writes no 'baselines'"):
        _recipe("gate=['tuned.accuracy >= baselines.5_shot.accuracy']")
    with pytest.raises(TunelabError, match="'baselines' has no '3_shot'") as e:
        _recipe("gate=['tuned.accuracy >= baselines.3_shot.accuracy']", "eval.baselines.enabled=true")
    assert "5_shot" in e.value.fix and "cot" in e.value.fix
    general = "eval.general=[{name: wiki, kind: perplexity, path: w.txt}]"
    assert _recipe("gate=['general.change.wiki.perplexity <= 0.05']", general).gate
    with pytest.raises(TunelabError, match="'general.change' has no 'ptb'"):
        _recipe("gate=['general.change.ptb.perplexity <= 0.05']", general)


def test_apply_gate_writes_files_and_removes_stale_ones(tmp_path):
    (tmp_path / "eval").mkdir()
    result = apply_gate(tmp_path, ["tuned.accuracy >= 0.95"], dict(METRICS))
    gate = json.loads((tmp_path / "eval" / "gate.json").read_text())
    assert gate == result["gate"] and gate["passed"] is False
    assert json.loads((tmp_path / "eval" / "metrics.json").read_text())["gate"] == gate
    assert gate_exit_code(tmp_path) == GATE_BLOCKED_EXIT == 3
    apply_gate(tmp_path, ["tuned.accuracy >= 0.5"], dict(METRICS))
    assert gate_exit_code(tmp_path) == 0
    # A recipe without a gate leaves no decision from an earlier evaluation behind.
    assert "gate" not in apply_gate(tmp_path, [], dict(METRICS))
    assert not (tmp_path / "eval" / "gate.json").exists() and gate_exit_code(tmp_path) == 0


def _eval_folder(tmp_path, gate=None):
    run = tmp_path / "run"
    (run / "eval").mkdir(parents=True)
    (run / "eval" / "metrics.json").write_text(json.dumps(METRICS))
    (run / "config.yaml").write_text(json.dumps({"gate": gate} if gate else {}))
    return run


def test_gate_verb_exit_codes(tmp_path, capsys):
    run = _eval_folder(tmp_path, gate=["tuned.accuracy >= 0.8"])
    assert main(["gate", str(run)]) == 0
    assert main(["gate", str(run), "tuned.accuracy >= 0.95"]) == 3
    assert json.loads((run / "eval" / "gate.json").read_text())["passed"] is False
    assert main(["gate", str(run), "tuned.f1 >= 0.95"]) == 2
    assert "tuned.macro_f1" in capsys.readouterr().err
    assert main(["gate", str(_eval_folder(tmp_path / "other"))]) == 2  # no rules anywhere


def test_run_exits_3_when_the_gate_blocks(tmp_path, chat_jsonl, tiny_model_dir):
    common = [f"data.path={chat_jsonl}", f"model.name={tiny_model_dir}", f"output.dir={tmp_path / 'runs'}",
              "output.name=g", "train.max_steps=2", "train.batch_size=4", "eval.max_new_tokens=2",
              "eval.max_samples=4", "data.split.test=0.2", "eval.compare_base=false"]
    recipe = tmp_path / "r.yaml"
    recipe.write_text("data: {path: x}\n")
    # A random tiny model answers nothing right: accuracy 0 blocks a 0.5 threshold.
    assert main(["run", str(recipe), *common, "gate=['tuned.accuracy >= 0.5']"]) == 3
    run = tmp_path / "runs" / "g"
    gate = json.loads((run / "eval" / "gate.json").read_text())
    assert gate["rules"][0]["value"] == 0.0 and not gate["passed"]
    assert "**BLOCKED**" in (run / "report.md").read_text()
    # The same evaluation passes a rule it meets (decided again without a model).
    assert main(["gate", str(run), "tuned.accuracy >= 0.0"]) == 0
    assert "**PASSED**" in (run / "report.md").read_text()


@pytest.mark.parametrize("verb", ["gate", "run", "eval"])
def test_help_documents_exit_code_3(verb, capsys):
    with pytest.raises(SystemExit):
        main([verb, "--help"])
    out = " ".join(capsys.readouterr().out.split())
    assert re.search(r"3 the recipe's gate blocked|Exits 3 when the recipe's gate blocks|3 blocked", out)
