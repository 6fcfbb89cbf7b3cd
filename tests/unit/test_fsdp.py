"""FSDP sharded data-parallel training (train.sharding=fsdp): same update as one process, normal artefacts, resume.

The 2-process runs are the real CLI under torchrun with gloo on the tiny random model in fp32; each reference is
one process with twice the gradient accumulation, in this process.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file
from sharding_helpers import assert_same_tensors as _assert_same_tensors
from sharding_helpers import by_step as _by_step
from sharding_helpers import logits as _logits
from sharding_helpers import overrides as _overrides
from sharding_helpers import reference, torchrun

from tunelab.cli.main import main
from tunelab.config import load_recipe
from tunelab.errors import TunelabError
from tunelab.training import fsdp


def _torchrun(tmp_path: Path, overrides: list[str], name: str, *flags: str, accum: int = 1) -> str:
    return torchrun(tmp_path, overrides, name, "fsdp", *flags, accum=accum)


def _assert_same_curves(a: Path, b: Path, keys: tuple[str, ...] = ("loss", "grad_norm", "val_loss")) -> None:
    for key in keys:
        ref, got = _by_step(a, key), _by_step(b, key)
        assert ref and sorted(got) == sorted(ref), key
        for step, value in ref.items():
            assert got[step] == pytest.approx(value, rel=1e-4), f"{key} at step {step}"




# ------------------------------------------------------------------------------------------------ full


def test_full_finetuning_matches_one_process_saves_normal_files_and_resumes(tmp_path, chat_jsonl, tiny_model_dir,
                                                                            tokenizer):
    """Full fine-tuning (with gradient checkpointing inside the FSDP units), checkpoints, artefact, resume."""
    from transformers import AutoModelForCausalLM

    common = _overrides(tmp_path, chat_jsonl, tiny_model_dir, "method.name=full", "train.max_steps=4",
                        "train.eval_every=2", "train.save_every=2", "train.save_total_limit=null",
                        "train.gradient_checkpointing=true")
    one = reference(common, "one")
    out = _torchrun(tmp_path, common, "two")
    two = tmp_path / "runs" / "two"
    assert "FSDP: 2 decoder layers + root sharded over 2 processes" in out
    _assert_same_curves(one, two)
    weights_one = load_file(str(one / "model" / "model.safetensors"))
    _assert_same_tensors(weights_one, load_file(str(two / "model" / "model.safetensors")))
    assert json.loads((two / "train_summary.json").read_text())["processes"] == 2

    # The checkpoint holds whole tensors, the same files as one process writes (weights and AdamW moments).
    for f in ("weights.safetensors", "optimizer.safetensors"):
        _assert_same_tensors(load_file(str(one / "checkpoints/step-000002" / f)),
                             load_file(str(two / "checkpoints/step-000002" / f)))

    # The artefact is a normal model folder: one process loads it (no missing keys) and gets the same logits.
    loaded, info = AutoModelForCausalLM.from_pretrained(two / "model", output_loading_info=True)
    assert not info["missing_keys"] and not info["unexpected_keys"]
    torch.testing.assert_close(_logits(loaded, tokenizer),
                               _logits(AutoModelForCausalLM.from_pretrained(one / "model"), tokenizer),
                               rtol=1e-4, atol=1e-4)

    # Exact resume under FSDP from the step-2 checkpoint: steps 3-4 and the final weights match again.
    (two / "model" / "model.safetensors").unlink()
    # (the run folder by path: a bare --resume before overrides would take the first override as its value)
    out = _torchrun(tmp_path, common, "two", "--resume", str(two))
    assert "resumed from" in out and "step 2/4" in out
    _assert_same_curves(one, two, ("loss", "grad_norm"))
    _assert_same_tensors(weights_one, load_file(str(two / "model" / "model.safetensors")))


# ------------------------------------------------------------------------------------------------ LoRA


def test_lora_matches_one_process_with_a_short_last_step(tmp_path, chat_jsonl, tiny_model_dir, tokenizer):
    """48 train rows in micro-batches of 7: 7 micro-batches, so the last step gives rank 1 none (a padding pass).
    Early stopping on accuracy generates through the sharded model at every evaluation."""
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    common = _overrides(tmp_path, chat_jsonl, tiny_model_dir, "method.name=lora", "train.batch_size=7",
                        "train.eval_every=2", "train.early_stopping_metric=accuracy", "train.eval_samples=4",
                        "eval.max_new_tokens=3")
    one = reference(common, "one")
    _torchrun(tmp_path, common, "two")
    two = tmp_path / "runs" / "two"
    assert sorted(_by_step(one, "loss")) == [1, 2, 3, 4]
    _assert_same_curves(one, two, ("loss", "grad_norm", "val_loss", "val_accuracy"))
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


# ------------------------------------------------------------------------------------------------ helpers


def test_balanced_passes_pad_with_zero_weight_copies():
    a, b = {"x": torch.ones(1)}, {"x": torch.zeros(1)}
    assert fsdp.balanced_passes([a, b], 2, lambda: b) == [(a, 1.0), (b, 1.0)]
    assert fsdp.balanced_passes([a], 3, lambda: b) == [(a, 1.0), (a, 0.0), (a, 0.0)]
    assert fsdp.balanced_passes([], 1, lambda: b) == [(b, 0.0)]


# ------------------------------------------------------------------------------------------------ refusals


@pytest.mark.parametrize(("overrides", "where", "message"), [
    (["train.objective=classify"], "train.sharding, train.objective", "train.objective=classify"),
    (["method.name=prefix"], "train.sharding, method.name", "method.name=prefix"),
    (["method.name=qlora"], "train.sharding, method.name", "method.name=qlora"),
    (["train.optimizer=adafactor"], "train.sharding, train.optimizer", "train.optimizer=adafactor"),
    (["train.fsdp_offload_params=true", "model.device=cpu"], "train.fsdp_offload_params, model.device",
     "already are"),
])
def test_conflicting_keys_are_refused(overrides, where, message):
    recipe = load_recipe(None, ["data.path=chat.jsonl", "train.sharding=fsdp", *overrides])
    with pytest.raises(TunelabError, match=message) as err:
        fsdp.preflight(recipe)
    assert err.value.where == where


def test_fsdp_options_without_sharding_are_refused():
    with pytest.raises(TunelabError, match="train.sharding is 'none'") as err:
        fsdp.preflight(load_recipe(None, ["data.path=chat.jsonl", "train.fsdp_mixed_precision=true"]))
    assert err.value.where == "train.fsdp_mixed_precision, train.sharding"
    fsdp.preflight(load_recipe(None, ["data.path=chat.jsonl"]))  # the defaults pass


def test_cli_refuses_before_loading_weights(tmp_path, chat_jsonl, capsys):
    """Exit 2 with one line, and no run folder: the check runs before anything is created or loaded."""
    recipe = tmp_path / "recipe.yaml"
    recipe.write_text("data:\n  path: placeholder.jsonl\n", encoding="utf-8")
    rc = main(["train", str(recipe), f"data.path={chat_jsonl}", f"output.dir={tmp_path / 'runs'}",
               "train.sharding=fsdp", "method.name=prompt"])
    assert rc == 2
    err = capsys.readouterr()
    assert "train.sharding=fsdp does not support method.name=prompt" in err.out + err.err
    assert not (tmp_path / "runs").exists()


# ------------------------------------------------------------------------------------------------ GPU


@pytest.mark.gpu
def test_two_gpus_nccl_with_mixed_precision(tmp_path, chat_jsonl, tiny_model_dir):
    """Opt-in (pytest -m gpu): NCCL, 2 GPUs, bf16 all-gather; the losses follow the one-process fp32 run."""
    if not torch.cuda.is_available() or torch.cuda.device_count() < 2:
        pytest.skip("needs 2 CUDA GPUs")
    common = _overrides(tmp_path, chat_jsonl, tiny_model_dir, "method.name=full", "train.max_steps=3",
                        "model.device=cuda")
    one = reference(common, "one")
    _torchrun(tmp_path, [*common, "train.fsdp_mixed_precision=true", "model.precision=bf16"], "two")
    ref, got = _by_step(one, "loss"), _by_step(tmp_path / "runs" / "two", "loss")
    assert sorted(got) == sorted(ref)
    for step, value in ref.items():
        assert got[step] == pytest.approx(value, rel=2e-2)


@pytest.mark.parametrize("resume", [["--resume"], ["--resume", "runs/x"]])
def test_the_launcher_passes_resume_after_the_overrides(monkeypatch, tmp_path, chat_jsonl, tiny_model_dir, resume):
    # Each worker re-parses the argv: a bare --resume in front of the overrides would swallow the first one.
    import tunelab.training.distributed as distributed
    from tunelab.cli.main import build_parser

    seen = []
    monkeypatch.setattr(distributed, "launch", lambda n, argv: seen.append(argv) or 0)
    recipe = tmp_path / "r.yaml"
    recipe.write_text(f"data:\n  path: {chat_jsonl}\nmodel:\n  name: {tiny_model_dir}\n")
    main(["train", str(recipe), "train.max_steps=2", f"output.dir={tmp_path}", "--nproc", "2", *resume])
    child = build_parser().parse_args(seen[0])
    assert child.overrides[:2] == ["train.max_steps=2", f"output.dir={tmp_path}"]
    assert child.resume == (True if resume == ["--resume"] else "runs/x")
