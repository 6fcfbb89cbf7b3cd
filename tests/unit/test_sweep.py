"""Sweeps on the tiny model: grid enumeration, pruning, failures, resume, shared storage, outputs, bad input."""

from __future__ import annotations

import csv
import json
import subprocess
import sys

import pytest
import yaml

from tunelab.config import load_recipe
from tunelab.config.specs import SweepSpec
from tunelab.errors import TunelabError
from tunelab.sweep import run_sweep, validate_sweep
from tunelab.sweep.space import grid_configs


def _doc(tmp_path, chat_jsonl, tiny_model_dir, sweep: dict, **train) -> dict:
    return {
        "data": {"path": str(chat_jsonl), "split": {"validation": 0.2, "test": 0.1}},
        "model": {"name": str(tiny_model_dir), "precision": "fp32", "threads": 1},
        "train": {"max_steps": 6, "batch_size": 4, "eval_every": 2, "log_every": 2, **train},
        "eval": {"enabled": False},
        "output": {"dir": str(tmp_path / "runs")},
        "sweep": sweep,
    }


def _write(tmp_path, doc) -> str:
    path = tmp_path / "sweep.yaml"
    path.write_text(yaml.safe_dump(doc), encoding="utf-8")
    return str(path)


def _leaderboard(folder):
    with open(folder / "leaderboard.csv", encoding="utf-8") as f:
        return list(csv.DictReader(f))


def test_grid_enumerates_exactly_the_space_with_conditions():
    sweep = SweepSpec.model_validate({"strategy": "grid", "space": {
        "method.name": {"type": "categorical", "choices": ["lora", "full"]},
        "method.lora.r": {"type": "int", "low": 4, "high": 8, "step": 4, "when": "method.name == 'lora'"},
        "train.lr": {"type": "log_float", "low": 1e-4, "high": 1e-2, "step": 9.0},
    }})
    configs = grid_configs(sweep, {"method": {"name": "lora"}})
    # lora: 2 ranks x 3 lrs; full: 3 lrs (the rank does not exist for full)
    assert len(configs) == 9
    assert sorted({c["train.lr"] for c in configs}) == pytest.approx([1e-4, 1e-3, 1e-2])
    assert all("method.lora.r" not in c for c in configs if c["method.name"] == "full")


def test_grid_sweep_runs_every_config_once_and_writes_outputs(tmp_path, chat_jsonl, tiny_model_dir):
    doc = _doc(tmp_path, chat_jsonl, tiny_model_dir, {
        "strategy": "grid", "pruner": "none", "trials": None,
        "space": {"train.lr": {"type": "categorical", "choices": [1e-3, 1e-2]},
                  "method.lora.r": {"type": "categorical", "choices": [4, 8]}}})
    recipe = load_recipe(_write(tmp_path, doc))
    folder = run_sweep(recipe, "g")
    rows = _leaderboard(folder)
    assert len(rows) == 4 and {r["state"] for r in rows} == {"complete"}
    assert {(r["param:train.lr"], r["param:method.lora.r"]) for r in rows} == {
        ("0.001", "4"), ("0.001", "8"), ("0.01", "4"), ("0.01", "8")}
    values = [float(r["value"]) for r in rows]
    assert values == sorted(values)  # best (lowest val_loss) first
    for r in rows:  # every trial is a normal run folder
        assert (folder / "trials" / f"trial-{int(r['trial']):04d}" / "adapter").is_dir()
    best = load_recipe(folder / "best.yaml")
    assert best.sweep is None and best.train.lr == float(rows[0]["param:train.lr"])
    assert (folder / "plots" / "optimization_history.png").is_file()
    html = (folder / "leaderboard.html").read_text()
    assert "<table>" in html and "data:image/png;base64" in html
    # Re-running the finished study starts no new trial.
    run_sweep(recipe, "g")
    assert len(_leaderboard(folder)) == 4


def test_pruning_stops_bad_trials_and_failures_do_not_stop_the_study(tmp_path, chat_jsonl, tiny_model_dir,
                                                                     monkeypatch):
    monkeypatch.delenv("TUNELAB_TRACKING", raising=False)  # MLflow on: pruned trials keep their last evaluation
    # adamw_8bit fails on CPU (the trial is recorded with its error); tiny learning rates are pruned by the median.
    doc = _doc(tmp_path, chat_jsonl, tiny_model_dir, {
        "strategy": "grid", "pruner": "median", "trials": None, "min_resource": 1,
        "space": {"train.lr": {"type": "categorical", "choices": [3e-2, 2e-2, 1e-2, 1e-7, 2e-7]},
                  "train.optimizer": {"type": "categorical", "choices": ["adamw", "adamw_8bit"],
                                      "when": "train.lr == 0.03"}}},
        max_steps=10, eval_every=2)
    folder = run_sweep(load_recipe(_write(tmp_path, doc)), "p")
    rows = _leaderboard(folder)
    failed = [r for r in rows if r["state"] == "fail"]
    assert len(rows) == 6 and len(failed) == 1
    assert failed[0]["param:train.optimizer"] == "adamw_8bit" and "CUDA" in failed[0]["error"]
    pruned = [r for r in rows if r["state"] == "pruned"]
    assert pruned and all(float(r["param:train.lr"]) < 1e-6 for r in pruned)
    assert all(int(r["evaluations"]) < 5 for r in pruned)
    summary = json.loads((folder / "sweep.json").read_text())
    assert summary["states"]["complete"] >= 3
    from mlflow.tracking import MlflowClient

    client = MlflowClient(f"sqlite:///{tmp_path / 'runs' / 'mlflow.db'}")  # the project's store
    runs = {r.data.tags["tunelab.trial"]: r for r in client.search_runs([client.get_experiment_by_name("p")
                                                                        .experiment_id])}
    from tunelab.util.io import sha256_file

    for r in pruned:  # the evaluation that pruned it reached the tracker before the trial stopped
        run = runs[r["trial"]]
        assert run.data.metrics["val_loss"] == pytest.approx(float(r["last_intermediate"]), rel=1e-4)
        # stopped before its manifest: the data file's hash identifies what it trained on
        assert run.data.tags[f"data.file.{chat_jsonl.name}"] == sha256_file(chat_jsonl)


def test_tpe_study_resumes_without_repeating_and_two_workers_share_it(tmp_path, chat_jsonl, tiny_model_dir,
                                                                      monkeypatch):
    doc = _doc(tmp_path, chat_jsonl, tiny_model_dir, {
        "strategy": "tpe", "pruner": "none", "trials": 2,
        "space": {"train.lr": {"type": "log_float", "low": 1e-4, "high": 1e-2}}}, max_steps=2, eval_every=2)
    path = _write(tmp_path, doc)
    folder = run_sweep(load_recipe(path), "sweep")
    first = {r["trial"]: r["param:train.lr"] for r in _leaderboard(folder)}
    assert len(first) == 2
    # Raise the budget to 4 and continue with 2 processes on the same SQLite study, both tracking to a new
    # MLflow store (created by whichever process comes first).
    monkeypatch.delenv("TUNELAB_TRACKING", raising=False)
    out = subprocess.run([sys.executable, "-m", "tunelab.cli.main", "sweep", path, "sweep.trials=4", "--workers", "2"],
                         capture_output=True, text=True, timeout=600)
    assert out.returncode == 0, out.stdout[-2000:] + out.stderr[-2000:]
    rows = _leaderboard(folder)
    assert len(rows) == 4 and {r["state"] for r in rows} == {"complete"}
    assert len({r["trial"] for r in rows}) == 4
    for trial, lr in first.items():  # the finished trials were kept, not repeated
        assert {r["trial"]: r["param:train.lr"] for r in rows}[trial] == lr
    # The resumed process and its worker do not replay the seed: four different learning rates.
    assert len({r["param:train.lr"] for r in rows}) == 4
    # Both processes' trials are in MLflow, in one experiment named after the study, with the data fingerprint.
    from mlflow.tracking import MlflowClient

    client = MlflowClient(f"sqlite:///{tmp_path / 'runs' / 'mlflow.db'}")  # the project's store
    runs = client.search_runs([client.get_experiment_by_name("sweep").experiment_id])
    assert sorted(r.data.tags["tunelab.trial"] for r in runs) == sorted(r["trial"] for r in rows)[2:]
    assert all(r.info.status == "FINISHED" and r.data.tags["data.fingerprint"] for r in runs)


def test_a_configuration_already_tried_is_not_trained_again(tmp_path, chat_jsonl, tiny_model_dir):
    # Random search with seed 2 proposes 1e-3, then 1e-3 again: the repeat is not trained (its twin's result is
    # reused) and the closest untried configuration, 1e-2, is queued and runs next; then the space (2
    # configurations) is exhausted and the study stops well before its 10 trials.
    doc = _doc(tmp_path, chat_jsonl, tiny_model_dir, {
        "strategy": "random", "pruner": "none", "trials": 10, "seed": 2,
        "space": {"train.lr": {"type": "categorical", "choices": [1e-3, 1e-2]}}}, max_steps=2, eval_every=2)
    folder = run_sweep(load_recipe(_write(tmp_path, doc)), "dup")
    rows = sorted(_leaderboard(folder), key=lambda r: int(r["trial"]))
    assert [(r["param:train.lr"], r["duplicate_of"]) for r in rows] == [("0.001", ""), ("0.001", "0"), ("0.01", "")]
    assert {r["state"] for r in rows} == {"complete"}
    twin, first = rows[1], rows[0]  # the twin's value, no tokens spent, no run folder of its own
    assert twin["value"] == first["value"]
    assert twin["tokens"] == "0" and not (folder / "trials" / "trial-0001").exists()


def test_a_repeat_queues_the_closest_untried_configuration():
    import random

    from tunelab.sweep.space import config_key as _key
    from tunelab.sweep.study import nearest_untried

    sweep = SweepSpec.model_validate({"space": {
        "train.lr": {"type": "categorical", "choices": [2e-3, 2.5e-4, 1e-3, 5e-4]},  # ranked by value, not order
        "method.lora.r": {"type": "categorical", "choices": [4, 8, 16]},
        "train.batch_size": {"type": "categorical", "choices": [4, 8]}}})
    configs = grid_configs(sweep, {})
    at = {"train.lr": 1e-3, "method.lora.r": 16, "train.batch_size": 8}
    tried = {_key(at)} | {_key({**at, "train.lr": lr}) for lr in (5e-4, 2e-3)} | {_key({**at, "train.batch_size": 4})}
    # one dimension changed by one step: only rank 8 is left at that distance
    assert nearest_untried(at, configs, tried, sweep, random.Random(0)) == {**at, "method.lora.r": 8}
    # ties (lr 5e-4 or 2e-3, one step either way) are drawn, never a farther one
    tried = {_key(at), _key({**at, "method.lora.r": 8}), _key({**at, "train.batch_size": 4})}
    drawn = {nearest_untried(at, configs, tried, sweep, random.Random(seed))["train.lr"] for seed in range(20)}
    assert drawn == {5e-4, 2e-3}
    assert nearest_untried(at, configs, {_key(c) for c in configs}, sweep, random.Random(0)) is None
    # an unordered categorical counts one step for any change; a dimension that appears or disappears, one too
    cond = SweepSpec.model_validate({"space": {
        "method.name": {"type": "categorical", "choices": ["lora", "full", "freeze"]},
        "method.lora.r": {"type": "categorical", "choices": [4, 8], "when": "method.name == lora"}}})
    configs = grid_configs(cond, {})
    at = {"method.name": "lora", "method.lora.r": 4}
    got = nearest_untried(at, configs, {_key(at), _key({**at, "method.lora.r": 8})}, cond, random.Random(0))
    assert got in ({"method.name": "full"}, {"method.name": "freeze"})


def test_the_token_cap_looks_one_step_ahead_except_at_the_last_step():
    from tunelab.sweep.study import over_budget

    assert not over_budget(900, 50, 5, 20, 1000)     # the next step fits
    assert over_budget(960, 50, 5, 20, 1000)         # the next step would pass the cap: stop at this one
    assert not over_budget(960, 50, 20, 20, 1000)    # the last step: only the final evaluation is left
    assert over_budget(1010, 50, 20, 20, 1000)       # already past the cap
    assert not over_budget(960, 50, 5, None, 1000)   # last step unknown (epochs): stop only once past it
    assert over_budget(1001, 50, 5, None, 1000)


def test_the_token_budget_is_a_cap_the_running_trial_stops_at(tmp_path, chat_jsonl, tiny_model_dir):
    # One full trial spends T tokens; a budget of 1.5 T lets the first trial finish and stops the second one
    # part-way (pruned, with the reason) at the last step that fits, so the study spends about 1.5 T, not 2 T,
    # and starts no third trial.
    space = {"train.lr": {"type": "categorical", "choices": [1e-3, 3e-3, 1e-2, 3e-2]}}
    probe = run_sweep(load_recipe(_write(tmp_path, _doc(tmp_path, chat_jsonl, tiny_model_dir, {
        "strategy": "grid", "pruner": "none", "space": {"train.lr": {"type": "categorical", "choices": [1e-3]}},
        "study_name": "probe"}, log_every=1))), "probe")
    full = int(_leaderboard(probe)[0]["tokens"])
    cap = full * 3 // 2
    folder = run_sweep(load_recipe(_write(tmp_path, _doc(tmp_path, chat_jsonl, tiny_model_dir, {
        "strategy": "grid", "pruner": "none", "space": space, "max_tokens": cap,
        "study_name": "capped"}, log_every=1))), "capped")
    rows = sorted(_leaderboard(folder), key=lambda r: int(r["trial"]))
    assert [r["state"] for r in rows] == ["complete", "pruned", "waiting", "waiting"]  # the rest of the grid: queued
    rows = rows[:2]
    assert int(rows[0]["tokens"]) == full and "token budget" in rows[1]["stopped"]
    per_step = full / 6
    assert cap - 2 * per_step <= sum(int(r["tokens"]) for r in rows) <= cap + per_step / 2  # stopped at the cap
    summary = json.loads((folder / "sweep.json").read_text())
    assert summary["tokens"] == sum(int(r["tokens"]) for r in rows)


@pytest.mark.parametrize(("sweep", "match"), [
    ({"space": {"train.lrr": {"type": "float", "low": 0.1, "high": 0.2}}}, "did you mean 'train.lr'"),
    ({"space": {"method.name": {"type": "categorical", "choices": ["lora", "magic"]}}}, "method.name"),
    ({"space": {"train.lr": {"type": "float", "low": 0.1, "high": 0.2}}, "metric": "bleu"}, "not produced"),
    ({"space": {"train.lr": {"type": "float", "low": 0.1, "high": 0.2}}, "strategy": "grid"}, "needs a step"),
])
def test_bad_sweeps_fail_before_any_trial(tmp_path, chat_jsonl, tiny_model_dir, sweep, match):
    recipe = load_recipe(_write(tmp_path, _doc(tmp_path, chat_jsonl, tiny_model_dir, sweep)))
    with pytest.raises(TunelabError, match=match):
        run_sweep(recipe, "bad")
    assert not (tmp_path / "runs" / "sweeps" / "bad" / "trials").exists()


def test_the_reduction_factor_reaches_the_pruner_and_must_be_at_least_two(tmp_path, chat_jsonl, tiny_model_dir):
    from tunelab.sweep.study import _pruner

    space = {"train.lr": {"type": "float", "low": 0.1, "high": 0.2}}
    for pruner in ("asha", "hyperband"):
        p = _pruner(SweepSpec.model_validate({"space": space, "pruner": pruner, "reduction_factor": 2}))
        assert p._reduction_factor == 2
    doc = _doc(tmp_path, chat_jsonl, tiny_model_dir, {"space": space, "reduction_factor": 1})
    with pytest.raises(TunelabError, match="reduction_factor"):
        load_recipe(_write(tmp_path, doc))


def test_inverted_range_and_bad_storage_are_clear_errors(tmp_path, chat_jsonl, tiny_model_dir):
    doc = _doc(tmp_path, chat_jsonl, tiny_model_dir, {"space": {"train.lr": {"type": "float", "low": 1, "high": 0}}})
    with pytest.raises(TunelabError, match="inverted range"):
        load_recipe(_write(tmp_path, doc))
    doc["sweep"] = {"space": {"train.lr": {"type": "float", "low": 0.1, "high": 0.2}},
                    "storage": "postgresql://nobody@127.0.0.1:1/none"}
    recipe = load_recipe(_write(tmp_path, doc))
    validate_sweep(recipe)
    with pytest.raises(TunelabError, match="cannot open the study storage"):
        run_sweep(recipe, "st")


def test_a_signal_inside_a_trial_stops_the_study_and_resumes_later(tmp_path, chat_jsonl, tiny_model_dir,
                                                                   monkeypatch):
    import signal

    from tunelab import pipeline
    from tunelab.recipes.sft import TrainingInterrupted

    doc = _doc(tmp_path, chat_jsonl, tiny_model_dir, {
        "strategy": "grid", "pruner": "none", "trials": None,
        "space": {"train.lr": {"type": "categorical", "choices": [1e-3, 1e-2, 3e-2]}}}, max_steps=2)
    recipe = load_recipe(_write(tmp_path, doc))
    real_train, calls = pipeline.train, []

    def interrupted_once(*args, **kwargs):
        calls.append(1)
        if len(calls) == 1:  # Ctrl+C / SIGTERM during the first trial: not a failed trial, the end of the study
            raise TrainingInterrupted(signal.SIGTERM, None)
        return real_train(*args, **kwargs)

    monkeypatch.setattr(pipeline, "train", interrupted_once)
    with pytest.raises(TrainingInterrupted):
        run_sweep(recipe, "s")
    assert len(calls) == 1  # no further trial started after the signal
    folder = run_sweep(recipe, "s")  # running it again resumes the study
    rows = _leaderboard(folder)
    assert len(calls) == 4 and sum(r["state"] == "complete" for r in rows) == 3


def test_each_worker_and_each_resume_gets_its_own_sampler_sequence(tmp_path, chat_jsonl, tiny_model_dir,
                                                                   monkeypatch):
    # A seeded sampler opened again would replay its proposals: workers and resumed studies would train the
    # configurations the study already has.
    from optuna.distributions import FloatDistribution

    from tunelab.sweep.study import WORKER_ENV, open_study

    doc = _doc(tmp_path, chat_jsonl, tiny_model_dir, {
        "strategy": "random", "space": {"train.lr": {"type": "log_float", "low": 1e-4, "high": 1e-2}}})
    recipe = load_recipe(_write(tmp_path, doc))
    dist = {"lr": FloatDistribution(1e-4, 1e-2, log=True)}

    def first(folder: str, worker: str) -> float:
        monkeypatch.setenv(WORKER_ENV, worker)
        return open_study(recipe, "s", tmp_path / folder).ask(dist).params["lr"]

    fresh, fresh_again, worker = first("a", "0"), first("b", "0"), first("c", "1")
    assert fresh == fresh_again  # a fresh single-process study is reproducible
    assert worker != fresh
    assert first("a", "0") != fresh  # reopened with one trial in it: a new proposal, not the first one again


def _study_with_curves(curves: list[list[float]], direction: str = "minimize"):
    import optuna

    study = optuna.create_study(direction=direction)
    for values in curves:
        trial = study.ask()
        for k, v in enumerate(values, 1):
            trial.report(v, k)
        study.tell(trial, values[-1])
    return study


def test_the_rank_agreement_check_warns_when_the_winner_trailed_where_pruning_starts():
    from types import SimpleNamespace

    from tunelab.sweep.report import pruning_audit

    space = {"train.lr": {"type": "categorical", "choices": [1e-3]}}
    rec = lambda **kw: SimpleNamespace(sweep=SweepSpec.model_validate({"space": space, **kw}))  # noqa: E731
    # the last trial ends best but is worst at the 1st evaluation and second at the 2nd: a slow starter
    curves = [[1.0, 0.9, 0.8], [1.1, 1.0, 0.9], [1.2, 1.1, 1.0], [1.3, 1.2, 1.1], [2.0, 0.95, 0.5]]
    audit = pruning_audit(_study_with_curves(curves), rec(pruner="asha", min_resource=1))
    assert audit["trials"] == 5 and [r["best_rank"] for r in audit["evaluations"]] == [5, 2]
    assert audit["evaluations"][0]["spearman"] == pytest.approx(0.0)
    assert "ranked 5 of 5 at evaluation 1" in audit["warning"]
    assert pruning_audit(_study_with_curves(curves), rec(pruner="asha", min_resource=2))["warning"] is not None
    assert pruning_audit(_study_with_curves(curves), rec(pruner="median", min_resource=2))["warning"] is None  # 2 of 5
    assert pruning_audit(_study_with_curves(curves), rec(pruner="none"))["warning"] is None
    flipped = [[-v for v in c] for c in curves]  # the same curves as accuracies: same ranks, same warning
    audit = pruning_audit(_study_with_curves(flipped, "maximize"), rec(pruner="asha", min_resource=1))
    assert [r["best_rank"] for r in audit["evaluations"]] == [5, 2] and audit["warning"]
    assert pruning_audit(_study_with_curves(curves[:3]), rec(pruner="asha")) is None  # too few to say anything
