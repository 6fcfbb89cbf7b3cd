"""DeepSpeed ZeRO data-parallel training (train.sharding=deepspeed): same update as one process, normal artefacts,
exact resume, refusals.

The 2-process runs are the real CLI under torchrun with gloo on the tiny random model in fp32; each reference is
one process with twice the gradient accumulation, in this process. Tests that start DeepSpeed skip when it is not
installed (pip install 'tunelab[deepspeed]').
"""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file
from sharding_helpers import assert_same_tensors as _assert_same_tensors
from sharding_helpers import by_step as _by_step
from sharding_helpers import logits as _logits
from sharding_helpers import overrides as _overrides
from sharding_helpers import reference as _reference
from sharding_helpers import torchrun

from tunelab.cli.main import main
from tunelab.config import load_recipe
from tunelab.errors import TunelabError
from tunelab.training import deepspeed as zero

needs_deepspeed = pytest.mark.skipif(importlib.util.find_spec("deepspeed") is None,
                                     reason="deepspeed is not installed (pip install 'tunelab[deepspeed]')")


def _torchrun(tmp_path: Path, overrides: list[str], name: str, *flags: str, accum: int = 1) -> str:
    return torchrun(tmp_path, overrides, name, "deepspeed", *flags, accum=accum)


def _assert_same_curves(a: Path, b: Path, keys: tuple[str, ...] = ("loss", "grad_norm", "lr", "val_loss")) -> None:
    for key in keys:
        ref, got = _by_step(a, key), _by_step(b, key)
        assert ref and sorted(got) == sorted(ref), key
        for step, value in ref.items():
            assert got[step] == pytest.approx(value, rel=1e-4, abs=1e-12), f"{key} at step {step}"




@pytest.fixture(scope="module")
def full_setup(tmp_path_factory, tokenizer, tiny_model_dir):
    """Full fine-tuning with gradient checkpointing, 4 steps, validation and checkpoints every 2: the one-process
    reference, shared by the ZeRO-2 and ZeRO-3 tests."""
    tmp = tmp_path_factory.mktemp("ds-full")
    data = tmp / "chat.jsonl"
    colors = ["red", "green", "blue", "black", "white", "yellow"]
    data.write_text("".join(json.dumps({"messages": [
        {"role": "user", "content": f"Item {i} is {colors[i % 6]}. What color is item {i}?"},
        {"role": "assistant", "content": colors[i % 6]}]}) + "\n" for i in range(60)), encoding="utf-8")
    common = _overrides(tmp, data, tiny_model_dir, "method.name=full", "train.max_steps=4", "train.eval_every=2",
                        "train.save_every=2", "train.save_total_limit=null", "train.gradient_checkpointing=true")
    return tmp, common, _reference(common, "one")


# ------------------------------------------------------------------------------------------------ full


@needs_deepspeed
def test_full_zero2_matches_one_process_saves_normal_files_and_resumes(full_setup, tokenizer):
    """ZeRO-2: curves (LR per step included), final weights, a loadable model, checkpoint files, exact resume."""
    from transformers import AutoModelForCausalLM

    tmp, common, one = full_setup
    out = _torchrun(tmp, common, "two")
    two = tmp / "runs" / "two"
    assert "DeepSpeed ZeRO-2: optimizer state and gradients partitioned over 2 processes" in out
    _assert_same_curves(one, two)
    weights_one = load_file(str(one / "model" / "model.safetensors"))
    _assert_same_tensors(weights_one, load_file(str(two / "model" / "model.safetensors")))
    summary = json.loads((two / "train_summary.json").read_text())
    assert summary["processes"] == 2 and summary["sharding"] == "deepspeed-zero2"

    # The checkpoint: DeepSpeed's per-rank optimizer partitions + ours, every file hashed in state.json.
    step2 = two / "checkpoints" / "step-000002"
    state = json.loads((step2 / "state.json").read_text())
    assert state["processes"] == 2 and state["step"] == 2
    assert {"deepspeed/zero_pp_rank_0_mp_rank_00_optim_states.pt", "deepspeed/zero_pp_rank_1_mp_rank_00_optim_states.pt",
            "rng.safetensors"} <= set(state["files"])
    assert not list((two / "checkpoints").glob(".tmp-*"))

    # The artefact is a normal model folder: one process loads it (no missing keys) and gets the same logits.
    loaded, info = AutoModelForCausalLM.from_pretrained(two / "model", output_loading_info=True)
    assert not info["missing_keys"] and not info["unexpected_keys"]
    torch.testing.assert_close(_logits(loaded, tokenizer),
                               _logits(AutoModelForCausalLM.from_pretrained(one / "model"), tokenizer),
                               rtol=1e-4, atol=1e-4)

    # Exact resume from the step-2 checkpoint: steps 3-4 and the final weights match again.
    (two / "model" / "model.safetensors").unlink()
    out = _torchrun(tmp, common, "two", "--resume", str(two))
    assert "resumed from" in out and "step 2/4" in out
    _assert_same_curves(one, two, ("loss", "grad_norm", "lr"))
    _assert_same_tensors(weights_one, load_file(str(two / "model" / "model.safetensors")))


@needs_deepspeed
def test_full_zero3_gathers_the_partitioned_weights(full_setup):
    """ZeRO-3 keeps 1/N of each weight per rank: the saved model is gathered whole and equals one process's."""
    tmp, common, one = full_setup
    out = _torchrun(tmp, [*common, "train.deepspeed_zero_stage=3"], "three")
    three = tmp / "runs" / "three"
    assert "DeepSpeed ZeRO-3: optimizer state, gradients and weights partitioned" in out
    _assert_same_curves(one, three)
    _assert_same_tensors(load_file(str(one / "model" / "model.safetensors")),
                         load_file(str(three / "model" / "model.safetensors")))


# ------------------------------------------------------------------------------------------------ LoRA


@needs_deepspeed
def test_lora_zero3_with_accumulation_and_a_short_last_step(tmp_path, chat_jsonl, tiny_model_dir, tokenizer):
    """LoRA under ZeRO-3, 2 processes x accumulation 2 against one process x 4 (DeepSpeed's own division by the
    accumulation steps is undone). 48 train rows in micro-batches of 7: 7 micro-batches, so the last step gives
    rank 0 two and rank 1 one (plus a zero-weighted padding pass). Early stopping on accuracy generates through the
    engine."""
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    common = _overrides(tmp_path, chat_jsonl, tiny_model_dir, "method.name=lora", "train.batch_size=7",
                        "train.eval_every=1", "train.early_stopping_metric=accuracy", "train.eval_samples=4",
                        "eval.max_new_tokens=3", "train.scheduler=linear", "train.warmup_ratio=0.4")
    one = _reference(common, "one", accum=4)
    _torchrun(tmp_path, [*common, "train.deepspeed_zero_stage=3"], "two", accum=2)
    two = tmp_path / "runs" / "two"
    assert sorted(_by_step(one, "loss")) == [1, 2]
    _assert_same_curves(one, two, ("loss", "grad_norm", "lr", "val_loss", "val_accuracy"))
    adapter_one = load_file(str(one / "adapter" / "adapter_model.safetensors"))
    _assert_same_tensors(adapter_one, load_file(str(two / "adapter" / "adapter_model.safetensors")))
    assert sorted(p.name for p in (two / "adapter").iterdir()) == sorted(p.name for p in (one / "adapter").iterdir())
    summary_one, summary_two = (json.loads((d / "train_summary.json").read_text()) for d in (one, two))
    assert summary_two["real_tokens"] == summary_one["real_tokens"]  # padding passes are not counted

    base = AutoModelForCausalLM.from_pretrained(tiny_model_dir)
    tuned_two = _logits(PeftModel.from_pretrained(base, two / "adapter"), tokenizer)
    base = AutoModelForCausalLM.from_pretrained(tiny_model_dir)
    tuned_one = _logits(PeftModel.from_pretrained(base, one / "adapter"), tokenizer)
    torch.testing.assert_close(tuned_two, tuned_one, rtol=1e-4, atol=1e-4)


# ------------------------------------------------------------------------------------------------ config


def _recipe(*overrides: str):
    return load_recipe(None, ["data.path=chat.jsonl", "train.sharding=deepspeed", *overrides])


def test_generated_config_follows_the_recipe_and_merges_the_users_file(tmp_path):
    user = tmp_path / "ds.json"
    user.write_text(json.dumps({"zero_optimization": {"reduce_bucket_size": 1000, "stage": 3},
                                "gradient_accumulation_steps": 3, "train_micro_batch_size_per_gpu": 2}))
    recipe = _recipe("train.batch_size=2", "train.grad_accum=3", "train.max_grad_norm=0.5",
                     "train.deepspeed_zero_stage=3", f"train.deepspeed_config={user}")
    config = zero.build_config(recipe, "cpu", 4, "fp32")
    assert config["train_batch_size"] == 24 and config["gradient_clipping"] == 0.5
    assert config["zero_optimization"] == {"stage": 3, "reduce_bucket_size": 1000}  # merged, not replaced
    assert config["bf16"] == {"enabled": False}
    # bf16 on CUDA: DeepSpeed's bf16 weights with fp32 masters; on CPU the recipe's autocast does it.
    assert zero.build_config(_recipe(), "cuda:0", 2, "bf16")["bf16"] == {"enabled": True}
    assert zero.build_config(_recipe("train.max_grad_norm=null"), "cpu", None, "bf16")["gradient_clipping"] == 0.0


@pytest.mark.parametrize(("content", "where", "message"), [
    ({"gradient_accumulation_steps": 4}, "gradient_accumulation_steps", "from train.grad_accum"),
    ({"zero_optimization": {"stage": 1}}, "zero_optimization.stage", "from train.deepspeed_zero_stage"),
    ({"gradient_clipping": 0.0}, "gradient_clipping", "from train.max_grad_norm"),
    ({"train_batch_size": 64}, "train_batch_size", "--nproc"),
    ({"bf16": {"enabled": True}}, "bf16.enabled", "from model.precision"),
    ({"optimizer": {"type": "Adam"}}, "optimizer", "tunelab sets from train.optimizer"),
    ({"fp16": {"enabled": True}}, "fp16", "tunelab sets from model.precision"),
])
def test_a_deepspeed_config_key_that_conflicts_with_the_recipe_is_refused(tmp_path, content, where, message):
    user = tmp_path / "ds.json"
    user.write_text(json.dumps(content))
    recipe = _recipe("model.precision=fp32", f"train.deepspeed_config={user}")
    with pytest.raises(TunelabError, match=message) as err:
        zero.build_config(recipe, "cpu", 2)
    assert err.value.where == f"{user}: {where}"


def test_a_broken_deepspeed_config_file_is_refused(tmp_path):
    bad = tmp_path / "ds.json"
    bad.write_text('{\n  "zero_optimization": {,\n}')
    with pytest.raises(TunelabError, match="not valid JSON") as err:
        zero.build_config(_recipe(f"train.deepspeed_config={bad}"), "cpu", 2)
    assert err.value.where == f"{bad}:2"
    bad.write_text("[1, 2]")
    with pytest.raises(TunelabError, match="must be a JSON object"):
        zero.build_config(_recipe(f"train.deepspeed_config={bad}"), "cpu", 2)
    with pytest.raises(TunelabError, match="not found"):
        zero.build_config(_recipe(f"train.deepspeed_config={tmp_path / 'missing.json'}"), "cpu", 2)


# ------------------------------------------------------------------------------------------------ refusals


@needs_deepspeed
@pytest.mark.parametrize(("overrides", "where", "message"), [
    (["method.name=prefix", "train.deepspeed_zero_stage=3"], "train.deepspeed_zero_stage, method.name",
     "does not support method.name=prefix"),
    (["method.name=qlora"], "train.deepspeed_zero_stage, method.name", "method.name=qlora"),
    (["train.optimizer=adafactor"], "train.sharding, train.optimizer", "train.optimizer=adafactor"),
    (["train.deepspeed_offload_optimizer=true", "model.device=cpu"],
     "train.deepspeed_offload_optimizer, model.device", "already are"),
    (["train.deepspeed_offload_params=true", "train.deepspeed_zero_stage=3", "model.device=cpu"],
     "train.deepspeed_offload_params, model.device", "already are"),
    (["train.deepspeed_offload_params=true"], "train.deepspeed_offload_params, train.deepspeed_zero_stage",
     "only ZeRO stage 3"),
])
def test_conflicting_keys_are_refused(overrides, where, message):
    with pytest.raises(TunelabError, match=message) as err:
        zero.preflight(_recipe(*overrides))
    assert err.value.where == where


def test_objectives_without_our_loop_and_options_without_deepspeed_are_refused_at_load():
    with pytest.raises(TunelabError, match="train.objective=classify") as err:
        _recipe("train.objective=classify")
    assert err.value.where == "train.sharding, train.objective"
    with pytest.raises(TunelabError, match="train.sharding is 'fsdp'") as err:
        load_recipe(None, ["data.path=chat.jsonl", "train.sharding=fsdp", "train.deepspeed_zero_stage=3"])
    assert err.value.where == "train.deepspeed_zero_stage, train.sharding"
    zero.preflight(load_recipe(None, ["data.path=chat.jsonl"]))  # the defaults pass


def test_a_missing_deepspeed_is_named_with_its_install_command(monkeypatch):
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "deepspeed" else real(name, *a))
    with pytest.raises(TunelabError, match="needs the deepspeed package") as err:
        zero.preflight(_recipe())
    assert "pip install 'tunelab[deepspeed]'" in err.value.fix


@needs_deepspeed
@pytest.mark.parametrize(("flags", "extra", "message"), [
    ([], [], "with one process there is nothing to partition"),
    (["--nproc", "2"], ["method.name=prompt", "train.deepspeed_zero_stage=3"], "does not support method.name=prompt"),
    (["--nproc", "2"], ["train.deepspeed_config=ds.json"], "gradient_accumulation_steps=8"),
])
def test_cli_refuses_before_starting_processes(tmp_path, chat_jsonl, capsys, monkeypatch, flags, extra, message):
    """Exit 2 with one line and no run folder: the launcher checks before torchrun starts any worker."""
    monkeypatch.chdir(tmp_path)
    (tmp_path / "ds.json").write_text('{"gradient_accumulation_steps": 8}')
    recipe = tmp_path / "recipe.yaml"
    recipe.write_text("data:\n  path: placeholder.jsonl\n", encoding="utf-8")
    rc = main(["train", str(recipe), f"data.path={chat_jsonl}", f"output.dir={tmp_path / 'runs'}",
               "train.sharding=deepspeed", *extra, *flags])
    assert rc == 2
    err = capsys.readouterr()
    assert message in err.out + err.err
    assert not (tmp_path / "runs").exists()


# ------------------------------------------------------------------------------------------------ GPU


@pytest.mark.gpu
def test_two_gpus_nccl_bf16_with_optimizer_offload(tmp_path, chat_jsonl, tiny_model_dir):
    """Opt-in (pytest -m gpu): NCCL, 2 GPUs, DeepSpeed bf16 with the optimizer offloaded to the CPU; the losses
    follow the one-process fp32 run."""
    if not torch.cuda.is_available() or torch.cuda.device_count() < 2:
        pytest.skip("needs 2 CUDA GPUs")
    common = _overrides(tmp_path, chat_jsonl, tiny_model_dir, "method.name=full", "train.max_steps=3",
                        "model.device=cuda")
    one = _reference(common, "one")
    _torchrun(tmp_path, [*common, "model.precision=bf16", "train.deepspeed_offload_optimizer=true"], "two")
    ref, got = _by_step(one, "loss"), _by_step(tmp_path / "runs" / "two", "loss")
    assert sorted(got) == sorted(ref)
    for step, value in ref.items():
        assert got[step] == pytest.approx(value, rel=2e-2)
