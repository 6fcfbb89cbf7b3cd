"""tunelab.recipes.common: the helpers every training recipe shares, and the refusals each recipe builds on them."""

from __future__ import annotations

import json
from types import SimpleNamespace

import pytest
import torch

from tunelab.config import load_recipe
from tunelab.errors import TunelabError
from tunelab.recipes.common import (
    data_identity,
    data_lineage,
    model_identity,
    optimizer_steps,
    prepare_training,
    refuse_unsupported,
    restore_best,
    save_policy,
    save_run_files,
    single_process_only,
    start_run,
    steps_per_epoch,
    track_best,
    write_run_manifest,
)

_REWARD = "rl.rewards=[{type: json_valid}]"


def _recipe(*overrides: str):
    return load_recipe(None, ["data.path=x.jsonl", *overrides])


# ------------------------------------------------------------------------------------------------ preflight


def test_refuse_unsupported_names_the_first_refused_setting_in_order():
    refuse_unsupported("sft", {"a": False, "b": False}, fix="none needed")  # nothing refused: no error
    with pytest.raises(TunelabError) as err:
        refuse_unsupported("reward", {"a": False, "b": True, "c": True}, fix="do x")
    assert err.value.what == "train.objective=reward does not support b"
    assert err.value.where == "train.objective" and err.value.fix == "do x"


def test_single_process_only_refuses_data_parallel_and_every_way_to_resume():
    plain = _recipe().train
    assert not any(single_process_only(plain, None, False).values())
    assert single_process_only(plain, SimpleNamespace(enabled=True), False)["data-parallel training (--nproc)"]
    resumes = [single_process_only(plain, None, True), single_process_only(_recipe("train.resume=auto").train, None, False),
               single_process_only(_recipe("train.save_every=5").train, None, False)]
    for refused in resumes:
        assert refused["resumable checkpoints (--resume, train.resume, train.save_every)"]


@pytest.mark.parametrize(("objective", "recipe_module", "cls", "extra", "message"), [
    ("classify", "classify", "ClassifyRecipe", ["train.batching=packed"], "objective=classify does not support train.batching=packed"),
    ("classify", "classify", "ClassifyRecipe", ["train.save_every=5"], "objective=classify does not support resumable"),
    ("reward", "reward", "RewardRecipe", ["train.early_stopping_patience=2"], "objective=reward does not support early stopping"),
    ("reward", "reward", "RewardRecipe", ["method.name=prefix"], "objective=reward does not support prompt-learning"),
    ("grpo", "rl", "OnlineRLRecipe", ["train.resume=auto", _REWARD], "objective=grpo does not support resumable"),
    ("rloo", "rl", "OnlineRLRecipe", ["method.name=prompt", _REWARD], "objective=rloo does not support prompt-learning"),
    ("preference", "preference", "PreferenceRecipe", ["train.curriculum=length"], "objective=preference does not support train.curriculum"),
])
def test_each_recipe_refuses_through_the_shared_table(tiny_model_dir, objective, recipe_module, cls, extra, message):
    import importlib

    recipe = _recipe(f"model.name={tiny_model_dir}", f"train.objective={objective}", *extra)
    recipe_cls = getattr(importlib.import_module(f"tunelab.recipes.{recipe_module}"), cls)
    with pytest.raises(TunelabError, match=message) as err:
        recipe_cls.preflight(recipe)
    assert err.value.where == "train.objective" and err.value.fix


def test_data_parallel_is_refused_before_other_settings(tiny_model_dir):
    """The shared entries keep their place in each table: classify names packing first, preference --nproc."""
    from tunelab.recipes.classify import ClassifyRecipe
    from tunelab.recipes.preference import PreferenceRecipe

    dist = SimpleNamespace(enabled=True)
    both = [f"model.name={tiny_model_dir}", "train.batching=packed"]
    with pytest.raises(TunelabError, match="train.batching=packed"):
        ClassifyRecipe.preflight(_recipe(*both, "train.objective=classify"), dist)
    with pytest.raises(TunelabError, match="data-parallel"):
        PreferenceRecipe.preflight(_recipe(*both, "train.objective=preference"), dist)


# ------------------------------------------------------------------------------------------------ setup


def test_start_run_seeds_and_resolves_the_model(tiny_model_dir):
    recipe = _recipe(f"model.name={tiny_model_dir}", "model.device=cpu", "model.precision=fp32", "train.seed=7")
    device, precision, resolved, tokenizer = start_run(recipe)
    first = torch.rand(3)
    start_run(recipe)
    assert torch.equal(first, torch.rand(3))  # the same seed, the same stream
    assert (device, precision) == ("cpu", "fp32")
    assert resolved.path == tiny_model_dir and tokenizer.eos_token_id is not None
    # Several CPU processes keep the plain device (only CUDA is split by local rank).
    assert start_run(recipe, SimpleNamespace(enabled=True, local_rank=1)).device == "cpu"


def test_steps_count_partial_batches_and_honour_max_steps():
    t = _recipe("train.batch_size=3", "train.grad_accum=2", "train.epochs=1.5").train
    assert steps_per_epoch(t, 10, 2) == 2  # 4 micro-batches, 2 per step
    assert steps_per_epoch(t, 10, 8) == 1  # never 0
    assert optimizer_steps(t, 10, 2) == 3  # 1.5 epochs x 2
    assert optimizer_steps(_recipe("train.max_steps=5").train, 10, 2) == 5


def test_prepare_training_writes_config_only_when_given_a_folder(tmp_path):
    recipe = _recipe("train.lr=0.01", "train.warmup_ratio=0")
    model = torch.nn.Linear(2, 2)
    optimizer, scheduler = prepare_training(model, recipe, 10, None)
    assert not (tmp_path / "config.yaml").exists()
    assert optimizer.param_groups[0]["lr"] == pytest.approx(0.01) and scheduler.get_last_lr()
    prepare_training(model, recipe, 10, tmp_path)
    assert load_recipe(tmp_path / "config.yaml").train.lr == pytest.approx(0.01)


# ------------------------------------------------------------------------------------------------ early stopping


def test_track_best_stops_after_patience_and_restore_best_brings_the_weights_back():
    model = torch.nn.Linear(2, 1)
    state = SimpleNamespace(step=0, best_val=float("inf"), best_step=0, bad_evals=0, best_weights=None)
    assert track_best(state, 1.0, model, patience=2, min_delta=1e-4) is False
    best = model.weight.detach().clone()
    with torch.no_grad():
        model.weight.add_(1.0)
    state.step = 5
    assert track_best(state, 1.0 - 1e-5, model, patience=2, min_delta=1e-4) is False  # within min_delta: no gain
    state.step = 10
    assert track_best(state, 2.0, model, patience=2, min_delta=1e-4) is True
    assert (state.best_step, state.bad_evals) == (0, 2)
    restore_best(model, state)
    assert torch.equal(model.weight, best)


def test_without_patience_no_copy_is_kept_and_nothing_is_restored():
    model = torch.nn.Linear(2, 1)
    state = SimpleNamespace(step=3, best_val=float("inf"), best_step=0, bad_evals=0, best_weights=None)
    assert track_best(state, 0.5, model, patience=None, min_delta=0.0) is False
    assert state.best_weights is None and state.best_step == 3
    for _ in range(5):
        assert track_best(state, 0.9, model, patience=None, min_delta=0.0) is False
    before = model.weight.detach().clone()
    restore_best(model, state)
    assert torch.equal(model.weight, before)


# ------------------------------------------------------------------------------------------------ save


def _prepared(tmp_path, summary):
    from tunelab.data.records import Reject

    return SimpleNamespace(fingerprint="f" * 8, summary=summary,
                           rejects=[Reject(where="x.jsonl:3", reason="empty answer", record={"a": 1})])


def test_save_run_files_and_manifest(tmp_path, tokenizer):
    data = _prepared(tmp_path, {"files": {"train": {"path": "x.jsonl", "sha256": "ab"}}, "kept": 9})
    save_run_files(tmp_path, tokenizer, data, {"steps": 4})
    assert json.loads((tmp_path / "data_summary.json").read_text())["kept"] == 9
    assert json.loads((tmp_path / "train_summary.json").read_text()) == {"steps": 4}
    assert json.loads((tmp_path / "rejects.jsonl").read_text())["reason"] == "empty answer"
    assert (tmp_path / "tokenizer" / "tokenizer_config.json").is_file()
    save_run_files(tmp_path, tokenizer, data, {"steps": 4}, data_summary={"kept": 1})
    assert json.loads((tmp_path / "data_summary.json").read_text()) == {"kept": 1}

    recipe = _recipe("train.seed=3", "method.name=lora")
    resolved = SimpleNamespace(path=tmp_path / "m", source="local", kind="causal-lm")
    write_run_manifest(tmp_path, recipe, model_identity(recipe, resolved, with_kind=True), data_identity(data),
                       {"train_s": 1.0}, objective="reward")
    m = json.loads((tmp_path / "manifest.json").read_text())
    assert (m["seed"], m["method"], m["objective"], m["timings"]) == (3, "lora", "reward", {"train_s": 1.0})
    assert m["model"] == {"name": recipe.model.name, "path": str(tmp_path / "m"), "source": "local",
                          "kind": "causal-lm"}
    assert m["data"] == {"fingerprint": "ffffffff", "files": {"train": {"path": "x.jsonl", "sha256": "ab"}}}
    assert "kind" not in model_identity(recipe, resolved)


def test_data_lineage_adds_curation_and_a_curated_folders_identity(tmp_path):
    curation = [{"split": "train", "step": "dedup", "rows_in": 10, "kept": 8, "rejected": 2, "seconds": 0.1}]
    data = _prepared(tmp_path, {"curation": curation})
    plain = tmp_path / "plain.jsonl"
    plain.write_text("{}\n")
    lineage = data_lineage(data, str(plain))
    assert lineage == {"fingerprint": "ffffffff", "files": {},
                       "curation": [{k: v for k, v in curation[0].items() if k != "seconds"}]}
    folder = tmp_path / "curated"
    folder.mkdir()
    (folder / "data.jsonl").write_text("{}\n")
    (folder / "manifest.json").write_text(json.dumps({"fingerprint": "abc", "steps": [{"step": "clean"}]}))
    assert data_lineage(data, str(folder))["dataset"] == {"path": str(folder), "fingerprint": "abc",
                                                          "steps": ["clean"]}


def test_save_policy_leaves_out_trls_reference_adapter(tmp_path, tiny_model):
    from peft import LoraConfig, get_peft_model

    model = get_peft_model(tiny_model, LoraConfig(r=2, target_modules=["q_proj"]))
    model.add_adapter("ref", LoraConfig(r=2, target_modules=["q_proj"]))
    save_policy(model, tmp_path / "adapter")
    assert (tmp_path / "adapter" / "adapter_model.safetensors").is_file()
    assert not (tmp_path / "adapter" / "ref").exists()
    save_policy(model.get_base_model(), tmp_path / "model")  # not PEFT: the whole model, as safetensors
    assert (tmp_path / "model" / "model.safetensors").is_file()


# ------------------------------------------------------------------------------------------------ data columns


def test_unknown_column_mapping_is_refused_for_instruction_and_preference_data():
    from tunelab.data.formats import resolve_format
    from tunelab.data.preference import detect_preference_format

    rows = [("x.jsonl:1", {"q": "a", "chosen": "b", "rejected": "c"})]
    with pytest.raises(TunelabError) as err:
        resolve_format(rows, _recipe("data.columns={promt: q}").data)
    assert err.value.what == "unknown field 'promt' in column mapping" and err.value.where == "data.columns"
    assert err.value.fix.startswith("did you mean 'prompt'? keys are canonical fields: messages,")
    with pytest.raises(TunelabError) as err:
        detect_preference_format(rows, _recipe("data.columns={chosn: q}").data)
    assert err.value.what == "unknown field 'chosn' in column mapping for preference data"
    assert err.value.fix == ("did you mean 'chosen'? keys are canonical fields: prompt, chosen, rejected, "
                             "conversations, completion, label, system")
    assert detect_preference_format(rows, _recipe("data.columns={prompt: q}").data) == "pairs"
