"""Exact resume, signals, checkpoint integrity and retention, training controls and data-parallel equivalence.

The subprocess tests run the real CLI (`python -m tunelab.cli.main train ...`) on the tiny random model in
fp32, kill or signal it, resume it, and compare every logged loss with an uninterrupted run.
"""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from tunelab import pipeline
from tunelab.config import load_recipe
from tunelab.errors import TunelabError
from tunelab.training import checkpoint as ckpt

STEPS = 10


def _overrides(tmp_path: Path, chat_jsonl, tiny_model_dir, name: str, *extra: str) -> list[str]:
    return [f"data.path={chat_jsonl}", f"model.name={tiny_model_dir}", f"output.dir={tmp_path / 'runs'}",
            f"output.name={name}", f"train.max_steps={STEPS}", "train.batch_size=4", "train.lr=5e-3",
            "train.log_every=1", "train.eval_every=5", "model.precision=fp32", "model.threads=1",
            "method.lora.dropout=0.1", "eval.enabled=false", "data.split.test=0.1", *extra]


def _losses(run_dir: Path) -> dict[int, float]:
    rows = [json.loads(x) for x in (run_dir / "metrics.jsonl").read_text().splitlines() if x.strip()]
    return {r["step"]: r["loss"] for r in rows if "loss" in r}


def _val_losses(run_dir: Path) -> dict[int, float]:
    rows = [json.loads(x) for x in (run_dir / "metrics.jsonl").read_text().splitlines() if x.strip()]
    return {r["step"]: r["val_loss"] for r in rows if "val_loss" in r}


def _cli(args: list[str], **kw) -> subprocess.Popen:
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    return subprocess.Popen([sys.executable, "-m", "tunelab.cli.main", *args], env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, **kw)


def _wait_for(predicate, proc: subprocess.Popen, timeout: float = 120.0) -> None:
    t0 = time.monotonic()
    while not predicate():
        if proc.poll() is not None:
            raise AssertionError(f"process ended early ({proc.returncode}): {proc.stdout.read()[-2000:]}")
        if time.monotonic() - t0 > timeout:
            proc.kill()
            raise AssertionError("timed out waiting for the training process")
        time.sleep(0.02)


@pytest.fixture()
def reference_losses(tmp_path, chat_jsonl, tiny_model_dir):
    """An uninterrupted run in this process (same recipe): the losses every resumed run must reproduce."""
    torch.set_num_threads(1)
    recipe = load_recipe(None, _overrides(tmp_path, chat_jsonl, tiny_model_dir, "ref"))
    run_dir = pipeline.train(recipe, "ref")
    adapter = load_file(str(run_dir / "adapter" / "adapter_model.safetensors"))
    return _losses(run_dir), _val_losses(run_dir), adapter


def _assert_same_run(run_dir: Path, reference) -> None:
    losses, vals, adapter = reference
    got = _losses(run_dir)
    assert sorted(got) == list(range(1, STEPS + 1))
    for step, value in losses.items():
        assert got[step] == pytest.approx(value, rel=1e-4), f"step {step}"
    for step, value in vals.items():
        assert _val_losses(run_dir)[step] == pytest.approx(value, rel=1e-4)
    resumed = load_file(str(run_dir / "adapter" / "adapter_model.safetensors"))
    for k, v in adapter.items():
        torch.testing.assert_close(resumed[k], v, rtol=1e-4, atol=1e-6)


def test_sigkill_at_a_random_step_then_resume_matches_an_uninterrupted_run(
        tmp_path, chat_jsonl, tiny_model_dir, reference_losses):
    kill_after = random.Random().randint(1, STEPS - 2)  # any step; printed on failure
    args = ["train", *_recipe_file(tmp_path),
            *_overrides(tmp_path, chat_jsonl, tiny_model_dir, "killed", "train.save_every=1")]
    run_dir = tmp_path / "runs" / "killed"
    proc = _cli(args)
    _wait_for(lambda: (run_dir / "checkpoints" / f"step-{kill_after:06d}").is_dir(), proc)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert not (run_dir / "adapter").exists(), f"finished before the kill (kill_after={kill_after})"
    resumed = _cli([*args, "--resume"])
    out, _ = resumed.communicate(timeout=300)
    assert resumed.returncode == 0, out
    assert "resumed from" in out
    _assert_same_run(run_dir, reference_losses)


def test_sigterm_saves_a_checkpoint_and_exits_143_then_resume_matches(
        tmp_path, chat_jsonl, tiny_model_dir, reference_losses):
    args = [*_recipe_file(tmp_path), *_overrides(tmp_path, chat_jsonl, tiny_model_dir, "term")]
    run_dir = tmp_path / "runs" / "term"
    proc = _cli(["train", *args])
    _wait_for(lambda: len(_losses(run_dir)) >= 2 if (run_dir / "metrics.jsonl").is_file() else False, proc)
    proc.send_signal(signal.SIGTERM)
    out, _ = proc.communicate(timeout=120)
    assert proc.returncode == 128 + signal.SIGTERM, out
    assert "interrupted" in out and "--resume" in out
    saved = ckpt.find_resumable(run_dir / "checkpoints")
    assert saved is not None and 2 <= saved.step < STEPS
    resumed = _cli(["train", *args, "--resume"])
    out, _ = resumed.communicate(timeout=300)
    assert resumed.returncode == 0, out
    _assert_same_run(run_dir, reference_losses)


def _recipe_file(tmp_path: Path) -> list[str]:
    """A minimal recipe file (the CLI needs one); everything else comes from overrides."""
    path = tmp_path / "recipe.yaml"
    if not path.exists():
        path.write_text("data:\n  path: placeholder.jsonl\n", encoding="utf-8")
    return [str(path)]


# --------------------------------------------------------------------------------- in-process checks


def _train(tmp_path, chat_jsonl, tiny_model_dir, name, *extra, resume=False):
    recipe = load_recipe(None, _overrides(tmp_path, chat_jsonl, tiny_model_dir, name, *extra))
    return pipeline.train(recipe, name, resume=resume)


def test_damaged_newest_checkpoint_falls_back_to_the_previous_one(tmp_path, chat_jsonl, tiny_model_dir, capsys):
    run_dir = _train(tmp_path, chat_jsonl, tiny_model_dir, "c", "train.save_every=3", "train.save_total_limit=null")
    root = run_dir / "checkpoints"
    assert [p.name for p in ckpt.list_checkpoints(root)] == ["step-000003", "step-000006", "step-000009"]
    newest = root / "step-000009" / "weights.safetensors"
    newest.write_bytes(newest.read_bytes()[:-7] + b"garbage")
    found = ckpt.find_resumable(root)
    assert found is not None and found.step == 6
    assert "skipping damaged checkpoint" in capsys.readouterr().err.replace("\n", " ")
    (root / "step-000006" / "state.json").unlink()  # an interrupted write: no state.json
    assert ckpt.find_resumable(root).step == 3


def test_resume_with_a_different_recipe_names_the_keys(tmp_path, chat_jsonl, tiny_model_dir):
    _train(tmp_path, chat_jsonl, tiny_model_dir, "d", "train.save_every=5")
    with pytest.raises(TunelabError, match=r"train\.lr: 0\.005 -> 0\.001"):
        _train(tmp_path, chat_jsonl, tiny_model_dir, "d", "train.save_every=5", "train.lr=1e-3", resume=True)


def test_resume_without_checkpoints_is_a_clear_error(tmp_path, chat_jsonl, tiny_model_dir):
    from tunelab.cli.main import main

    code = main(["train", *_recipe_file(tmp_path), *_overrides(tmp_path, chat_jsonl, tiny_model_dir, "none"),
                 "--resume"])
    assert code == 2


def test_retention_keeps_the_last_k_and_the_best(tmp_path, chat_jsonl, tiny_model_dir):
    run_dir = _train(tmp_path, chat_jsonl, tiny_model_dir, "r", "train.save_every=1", "train.save_total_limit=2",
                     "train.eval_every=1", "train.early_stopping_patience=100")
    summary = json.loads((run_dir / "train_summary.json").read_text())
    names = {p.name for p in ckpt.list_checkpoints(run_dir / "checkpoints")}
    # save_every skips the final step (the run folder holds it); the last two saved are 8 and 9.
    expected = {"step-000008", "step-000009"} | ({f"step-{summary['best_step']:06d}"}
                                                 if summary["best_step"] < STEPS else set())
    assert names == expected
    assert not list((run_dir / "checkpoints").glob(".tmp-*"))


@pytest.mark.parametrize("optimizer", ["adafactor", "sgd"])
def test_other_optimizers_lower_the_loss(tmp_path, chat_jsonl, tiny_model_dir, optimizer):
    lr = "train.lr=5e-2" if optimizer == "sgd" else "train.lr=1e-2"
    run_dir = _train(tmp_path, chat_jsonl, tiny_model_dir, optimizer, f"train.optimizer={optimizer}", lr,
                     "train.warmup_ratio=0")
    losses = _losses(run_dir)
    assert sum(list(losses.values())[-3:]) < sum(list(losses.values())[:3])


def test_8bit_adamw_on_cpu_is_a_clear_error(tmp_path, chat_jsonl, tiny_model_dir):
    if torch.cuda.is_available():
        pytest.skip("CUDA present")
    with pytest.raises(TunelabError, match="adamw_8bit needs a CUDA GPU"):
        _train(tmp_path, chat_jsonl, tiny_model_dir, "b8", "train.optimizer=adamw_8bit")


def test_gradient_checkpointing_gives_the_same_losses(tmp_path, chat_jsonl, tiny_model_dir):
    a = _losses(_train(tmp_path, chat_jsonl, tiny_model_dir, "gc0", "method.lora.dropout=0"))
    b = _losses(_train(tmp_path, chat_jsonl, tiny_model_dir, "gc1", "method.lora.dropout=0",
                       "train.gradient_checkpointing=true"))
    for step in a:
        assert b[step] == pytest.approx(a[step], rel=1e-4)


def test_label_smoothing_matches_torch_cross_entropy(tiny_model):
    import torch.nn.functional as F

    from tunelab.training.loss import supervised_nll

    ids = torch.randint(0, 500, (2, 12))
    labels = ids.clone()
    labels[:, :5] = -100
    batch = {"input_ids": ids, "labels": labels, "attention_mask": torch.ones_like(ids)}
    loss, n = supervised_nll(tiny_model, batch, label_smoothing=0.1)
    logits = tiny_model(input_ids=ids).logits[:, :-1]
    ref = F.cross_entropy(logits.reshape(-1, logits.shape[-1]), labels[:, 1:].reshape(-1), ignore_index=-100,
                          reduction="sum", label_smoothing=0.1)
    assert n == int((labels[:, 1:] != -100).sum())
    assert float(loss) == pytest.approx(float(ref), rel=1e-5)


def test_early_stopping_on_a_task_metric(tmp_path, chat_jsonl, tiny_model_dir):
    run_dir = _train(tmp_path, chat_jsonl, tiny_model_dir, "acc", "train.early_stopping_metric=accuracy",
                     "train.eval_samples=6", "eval.max_new_tokens=3", "data.split.validation=0.2")
    rows = [json.loads(x) for x in (run_dir / "metrics.jsonl").read_text().splitlines()]
    accs = [r["val_accuracy"] for r in rows if "val_accuracy" in r]
    assert len(accs) == 3 and all(0.0 <= a <= 1.0 for a in accs)  # steps 0, 5 and 10
    summary = json.loads((run_dir / "train_summary.json").read_text())
    assert summary["best_metric"] == "accuracy" and summary["best_value"] == max(accs)
    with pytest.raises(TunelabError, match="not a metric of this label task"):
        _train(tmp_path, chat_jsonl, tiny_model_dir, "bad", "train.early_stopping_metric=bleu_score",
               "train.eval_samples=2", "eval.max_new_tokens=2")


# ------------------------------------------------------------------------------------ data parallel


def test_two_processes_equal_one_process_with_double_accumulation(tmp_path, chat_jsonl, tiny_model_dir):
    """torchrun with 2 gloo processes × grad_accum 1 == 1 process × grad_accum 2 (same micro-batches per step)."""
    common = [*_recipe_file(tmp_path), *_overrides(tmp_path, chat_jsonl, tiny_model_dir, "x", "train.max_steps=6",
                                                    "method.lora.dropout=0")]
    one = _cli(["train", *common, "output.name=one", "train.grad_accum=2"])
    out1, _ = one.communicate(timeout=300)
    assert one.returncode == 0, out1
    two = _cli(["train", *common, "output.name=two", "train.grad_accum=1", "--nproc", "2"])
    out2, _ = two.communicate(timeout=300)
    assert two.returncode == 0, out2
    runs = tmp_path / "runs"
    a, b = _losses(runs / "one"), _losses(runs / "two")
    assert sorted(b) == sorted(a) == list(range(1, 7))
    for step in a:
        assert b[step] == pytest.approx(a[step], rel=1e-4)
    wa = load_file(str(runs / "one" / "adapter" / "adapter_model.safetensors"))
    wb = load_file(str(runs / "two" / "adapter" / "adapter_model.safetensors"))
    for k in wa:
        torch.testing.assert_close(wb[k], wa[k], rtol=1e-4, atol=1e-6)
    summary = json.loads((runs / "two" / "train_summary.json").read_text())
    assert summary["processes"] == 2


def test_train_dropout_sets_the_models_dropout(tiny_model_dir):
    from tunelab.models import load_causal_lm

    model = load_causal_lm(str(tiny_model_dir), dropout=0.2)
    assert model.config.attention_dropout == 0.2
    assert model.model.layers[0].self_attn.attention_dropout == 0.2
    assert load_causal_lm(str(tiny_model_dir)).config.attention_dropout == 0.0
