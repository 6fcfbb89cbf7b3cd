"""MLflow/TensorBoard tracking, `tunelab runs`, and re-running a run folder's config reproduces its metrics."""

from __future__ import annotations

import json
import re

import pytest

from tunelab import pipeline
from tunelab.cli.main import main
from tunelab.config import load_recipe


def _recipe(tmp_path, chat_jsonl, tiny_model_dir, name, *extra):
    return load_recipe(None, [
        f"data.path={chat_jsonl}", f"model.name={tiny_model_dir}", f"output.dir={tmp_path / 'runs'}",
        f"output.name={name}", "train.max_steps=4", "train.batch_size=4", "train.eval_every=2", "train.log_every=1",
        "model.precision=fp32", "eval.max_new_tokens=3", "eval.max_samples=4", "data.split.test=0.1", *extra])


def _rows(run_dir):
    return [json.loads(x) for x in (run_dir / "metrics.jsonl").read_text().splitlines() if x.strip()]


def test_mlflow_and_tensorboard_get_params_metrics_artifacts_and_fingerprints(
        tmp_path, chat_jsonl, tiny_model_dir, monkeypatch):
    monkeypatch.delenv("TUNELAB_TRACKING", raising=False)
    from mlflow.tracking import MlflowClient

    recipe = _recipe(tmp_path, chat_jsonl, tiny_model_dir, "tracked", "output.tracking=[mlflow, tensorboard]")
    run_dir = pipeline.run(recipe, "tracked")
    info = json.loads((run_dir / "mlflow_run.json").read_text())
    client = MlflowClient(tracking_uri=info["tracking_uri"])
    run = client.get_run(info["run_id"])
    assert run.info.status == "FINISHED"
    assert run.data.params["train.lr"] == "0.0002" and run.data.params["method.name"] == "lora"
    losses = client.get_metric_history(info["run_id"], "loss")
    assert [m.step for m in losses] == [1, 2, 3, 4]
    assert "val_loss" in run.data.metrics and "system.real_tokens_per_s" in run.data.metrics
    assert "eval.tuned.loss" in run.data.metrics  # evaluation joined the same MLflow run
    manifest = json.loads((run_dir / "manifest.json").read_text())
    assert run.data.tags["data.fingerprint"] == manifest["data"]["fingerprint"]
    artifacts = {a.path for a in client.list_artifacts(info["run_id"])}
    assert {"config.yaml", "manifest.json", "adapter", "report.html"} <= artifacts
    assert list((run_dir / "tensorboard").glob("events.out.tfevents.*"))


def test_a_broken_tracker_never_stops_training(tmp_path, chat_jsonl, tiny_model_dir, monkeypatch, capsys):
    monkeypatch.delenv("TUNELAB_TRACKING", raising=False)
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "0")
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_TIMEOUT", "2")
    recipe = _recipe(tmp_path, chat_jsonl, tiny_model_dir, "down", "output.mlflow_uri=http://127.0.0.1:9")
    run_dir = pipeline.train(recipe, "down")
    assert (run_dir / "adapter").is_dir()
    assert "MLflow tracking is off for this run" in capsys.readouterr().err.replace("\n", " ")


def test_runs_list_show_compare_and_rerunning_a_config_reproduces_metrics(tmp_path, chat_jsonl, tiny_model_dir, capsys):
    first = pipeline.train(_recipe(tmp_path, chat_jsonl, tiny_model_dir, "a"), "a")
    # Re-run from the run folder's own config.yaml (only the folder name changes): same metrics on CPU.
    assert main(["train", str(first / "config.yaml"), "output.name=a-again"]) == 0
    again = tmp_path / "runs" / "a-again"
    strip = ("time_s", "tokens_per_s")
    assert [{k: v for k, v in r.items() if k not in strip} for r in _rows(again)] == \
        [{k: v for k, v in r.items() if k not in strip} for r in _rows(first)]
    pipeline.train(_recipe(tmp_path, chat_jsonl, tiny_model_dir, "b", "train.lr=1e-3"), "b")
    capsys.readouterr()
    assert main(["runs", "list", "--dir", str(tmp_path / "runs")]) == 0
    out = "".join(capsys.readouterr())
    assert "a-again" in out and "finished" in out
    assert main(["runs", "show", str(first)]) == 0
    assert '"best_val_loss"' in "".join(capsys.readouterr())
    assert main(["runs", "compare", str(first), str(tmp_path / "runs" / "b")]) == 0
    out = "".join(capsys.readouterr())
    assert "train.lr" in out and "0.001" in out
    assert main(["runs", "show", str(tmp_path / "nope")]) == 2
    assert main(["runs", "compare", str(first)]) == 2


@pytest.mark.parametrize("argv", [["runs", "list", "--dir", "/nonexistent/runs"], ["track", "ui", "--port", "x"]])
def test_runs_and_track_bad_input(argv):
    with pytest.raises(SystemExit) if "--port" in argv else _noop():
        assert main(argv) == 2


class _noop:
    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return False


def test_dry_run_measures_and_writes_nothing(tmp_path, chat_jsonl, tiny_model_dir, capsys):
    recipe_file = tmp_path / "r.yaml"
    recipe_file.write_text(f"data:\n  path: {chat_jsonl}\nmodel:\n  name: {tiny_model_dir}\n"
                           f"output:\n  dir: {tmp_path / 'runs'}\ntrain:\n  max_steps: 40\n  batch_size: 4\n"
                           "sweep:\n  strategy: grid\n  space:\n    train.lr: {type: categorical, choices: [0.001, 0.01]}\n",
                           encoding="utf-8")
    assert main(["train", str(recipe_file), "--dry-run"]) == 0
    out = " ".join("".join(capsys.readouterr()).split())
    assert "tokens to process" in out and "measured real tok/s" in out and "peak memory" in out
    assert re.search(r"optimizer steps\W+40\b", out)
    assert not (tmp_path / "runs").exists()
    assert main(["sweep", str(recipe_file), "--dry-run"]) == 0
    out = " ".join("".join(capsys.readouterr()).split())
    assert re.search(r"trials\W+2\b", out) and "study tokens (no pruning)" in out
    assert not (tmp_path / "runs").exists()
