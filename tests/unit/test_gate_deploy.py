"""`deploy:` after the gate: merge and serve only when the gate passes (or there is none), skipped and
recorded when it blocks, refused at load when the run could never carry them out."""

from __future__ import annotations

import json

import pytest
from transformers import AutoModelForCausalLM

from tunelab.cli.main import main
from tunelab.config import load_recipe
from tunelab.errors import TunelabError


def _recipe(*overrides):
    return load_recipe(None, ["data.path=x.jsonl", *overrides])


def test_impossible_deploy_sections_are_refused_at_load():
    assert _recipe("deploy.merge=true", "deploy.serve=true").deploy.serve
    with pytest.raises(TunelabError, match="method 'prefix' cannot be merged") as e:
        _recipe("deploy.merge=true", "method.name=prefix")
    assert e.value.where == "deploy.merge"
    assert _recipe("deploy.serve=true", "method.name=prefix").deploy.serve  # served as a run folder
    with pytest.raises(TunelabError, match="train.objective=classify trains a scoring head") as e:
        _recipe("deploy.serve=true", "train.objective=classify")
    assert e.value.where == "deploy.serve"
    with pytest.raises(TunelabError, match="merge_dir is set but merge is false"):
        _recipe("deploy.merge_dir=out")
    with pytest.raises(TunelabError, match="did you mean 'deploy.serve'"):
        _recipe("deploy.server=true")


@pytest.fixture()
def run_args(tmp_path, chat_jsonl, tiny_model_dir):
    recipe = tmp_path / "r.yaml"
    recipe.write_text("data: {path: x}\n")
    return [str(recipe), f"data.path={chat_jsonl}", f"model.name={tiny_model_dir}", f"output.dir={tmp_path / 'runs'}",
            "output.name=d", "train.max_steps=2", "train.batch_size=4", "eval.max_new_tokens=2", "eval.max_samples=4",
            "data.split.test=0.2", "eval.compare_base=false", "model.precision=fp32"]


def test_a_passing_gate_merges_and_the_report_says_so(tmp_path, run_args):
    assert main(["run", *run_args, "gate=['tuned.accuracy >= 0.0']", "deploy.merge=true"]) == 0
    run = tmp_path / "runs" / "d"
    record = json.loads((run / "deploy.json").read_text())
    assert record["gate"] == "passed" and record["steps"]["merge"]["status"] == "done"
    merged = run / "merged"
    assert json.loads((merged / "tunelab_merge.json").read_text())["method"] == "lora"
    assert AutoModelForCausalLM.from_pretrained(merged).config.vocab_size > 0  # a standalone Transformers folder
    report = (run / "report.md").read_text()
    assert "### Deployment" in report and "| merge | done |" in report
    # Without deploy steps a rerun under the same name leaves no stale record behind.
    assert main(["run", *run_args, "output.overwrite=true"]) == 0
    assert not (run / "deploy.json").exists()


def test_a_blocked_gate_skips_every_step_and_exits_3(tmp_path, run_args, monkeypatch):
    import tunelab.serving

    def no_serving(*a, **k):
        raise AssertionError("a blocked gate must not serve")

    monkeypatch.setattr(tunelab.serving, "serve", no_serving)
    # A random tiny model answers nothing right: accuracy 0 blocks a 0.5 threshold.
    assert main(["run", *run_args, "gate=['tuned.accuracy >= 0.5']", "deploy.merge=true", "deploy.serve=true"]) == 3
    run = tmp_path / "runs" / "d"
    record = json.loads((run / "deploy.json").read_text())
    assert record["gate"] == "blocked"
    for step in ("merge", "serve"):
        assert record["steps"][step]["status"] == "skipped"
        assert "tuned.accuracy >= 0.5" in record["steps"][step]["why"]
    assert not (run / "merged").exists()
    report = (run / "report.md").read_text()
    assert "**BLOCKED**" in report and "| serve | skipped |" in report


def test_no_gate_means_deploy_without_a_decision(tmp_path, run_args, monkeypatch):
    import tunelab.serving

    served = []
    monkeypatch.setattr(tunelab.serving, "serve", lambda spec, **k: served.append(spec))
    monkeypatch.setattr("tunelab.serving.lifecycle.exit_zero_on_sigterm", lambda: None)
    assert main(["run", *run_args, "deploy.serve=true", "serve.port=9", "serve.default_max_tokens=16"]) == 0
    run = tmp_path / "runs" / "d"
    record = json.loads((run / "deploy.json").read_text())
    assert record == {"gate": "none", "steps": {"serve": {"status": "started", "model": str(run), "host": "127.0.0.1",
                                                          "port": 9}}}
    (spec,) = served
    assert spec.model == str(run) and spec.port == 9 and spec.default_max_tokens == 16  # the recipe's serve: settings
    assert "## Deployment" in (run / "report.md").read_text()
