"""Every fine-tuning method on the tiny model: what trains, what stays frozen, the loss falls, the saved
artefact reloads to the same logits, LoRA/IA3/DoRA merge into a plain Transformers folder; conflicts are
caught with errors that name the recipe keys."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from method_helpers import train_steps

from tunelab.cli.main import main
from tunelab.config import load_recipe
from tunelab.config.loading import dump_recipe
from tunelab.errors import TunelabError
from tunelab.methods import (
    METHODS,
    apply_method,
    artifact_dir,
    base_dtype,
    count_parameters,
    estimate_training_memory_mb,
    optimizer_param_groups,
    preflight,
)
from tunelab.models import load_causal_lm, load_run_model
from tunelab.training.batching import collate
from tunelab.training.loss import supervised_nll
from tunelab.training.optim import build_optimizer

# method overrides, learning rate for the few-step check, and what a trainable parameter's name contains
CASES = {
    "full": ([], 1e-3, ""),
    "freeze": (["method.freeze.top_k_blocks=1"], 1e-3, ""),
    "lora": (["method.lora.r=4"], 1e-2, "lora_"),
    "rslora": (["method.name=lora", "method.lora.r=4", "method.lora.rslora=true"], 1e-2, "lora_"),
    "dora": (["method.name=lora", "method.lora.r=4", "method.lora.dora=true"], 1e-2, "lora_"),
    "pissa": (["method.name=lora", "method.lora.r=4", "method.lora.init=pissa"], 1e-2, "lora_"),
    "prefix": (["method.prefix.num_virtual_tokens=4"], 1e-2, "prompt_encoder"),
    "prompt": (["method.prompt.num_virtual_tokens=4", "method.prompt.init=text",
                "method.prompt.init_text=Say the colour"], 1e-2, "prompt_encoder"),
    "ptuning": (["method.ptuning.num_virtual_tokens=4", "method.ptuning.encoder_hidden_size=16"], 1e-2,
                "prompt_encoder"),
    "ia3": ([], 5e-2, "ia3_"),
}
MERGEABLE_CASES = ("lora", "dora", "pissa", "ia3")


@pytest.fixture(autouse=True)
def _one_thread():
    # The tiny model's ops take microseconds; thread hand-offs on a shared 2-core box dominate otherwise.
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def _recipe(tiny_model_dir, case: str, extra: list[str] | None = None):
    overrides, _, _ = CASES[case]
    name = [] if any(o.startswith("method.name=") for o in overrides) else [f"method.name={case}"]
    return load_recipe(None, ["data.path=x", f"model.name={tiny_model_dir}", *name, *overrides, *(extra or [])])


def _batch(tokenizer):
    g = torch.Generator().manual_seed(0)
    rows = []
    for n in (7, 12, 5, 9):
        ids = torch.randint(10, 500, (n,), generator=g).tolist()
        rows.append({"input_ids": ids, "labels": [-100] * (n // 2) + ids[n // 2:]})
    return collate(rows, "length_grouped", tokenizer.pad_token_id, 0)


@torch.no_grad()
def _logits(model, batch) -> torch.Tensor:
    return model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits


def _save_run(model, recipe, tokenizer, run):
    run.mkdir()
    (run / "config.yaml").write_text(dump_recipe(recipe), encoding="utf-8")
    tokenizer.save_pretrained(run / "tokenizer")
    model.save_pretrained(run / artifact_dir(recipe.method))


def _trained_run(tiny_model_dir, tokenizer, tmp_path, case: str):
    recipe = _recipe(tiny_model_dir, case)
    model = apply_method(load_causal_lm(str(tiny_model_dir)), recipe.method)
    batch = _batch(tokenizer)
    train_steps(model, batch, CASES[case][1], steps=3)
    run = tmp_path / case
    _save_run(model, recipe, tokenizer, run)
    return model, run, batch


def _expected_trainable(case: str, name: str) -> bool:
    if case == "full":
        return True
    if case == "freeze":  # the last block, the final norm and the head (tied to the input embedding)
        return "layers.1." in name or name in ("model.norm.weight", "model.embed_tokens.weight")
    return CASES[case][2] in name


@pytest.mark.parametrize("case", list(CASES))
def test_method_trains_its_parameters_only_and_lowers_the_loss(case, tiny_model_dir, tokenizer):
    recipe = _recipe(tiny_model_dir, case)
    model = apply_method(load_causal_lm(str(tiny_model_dir)), recipe.method)
    names = {n for n, p in model.named_parameters() if p.requires_grad}
    assert names and all(_expected_trainable(case, n) for n in names)
    assert all(p.dtype == torch.float32 for p in model.parameters() if p.requires_grad)
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    losses = train_steps(model, _batch(tokenizer), CASES[case][1])
    assert losses[-1] < losses[0]
    for n, p in model.named_parameters():
        if n in names:
            assert not torch.equal(p, before[n]), f"{n} did not change"
        else:
            assert torch.equal(p, before[n]), f"frozen {n} changed"
    counts = count_parameters(model)
    assert counts.trainable == sum(p.numel() for n, p in model.named_parameters() if n in names)
    assert (counts.trainable == counts.total) == (case == "full")


@pytest.mark.parametrize("case", list(CASES))
def test_saved_artefact_reloads_to_the_same_logits(case, tiny_model_dir, tokenizer, tmp_path):
    model, run, batch = _trained_run(tiny_model_dir, tokenizer, tmp_path, case)
    assert (run / ("model" if case in ("full", "freeze") else "adapter")).is_dir()
    reloaded, _ = load_run_model(run)  # what eval and chat use: merged where the method allows it
    prompt_learning = case in ("prefix", "prompt", "ptuning")
    assert (type(reloaded).__name__ == "PeftModelForCausalLM") == prompt_learning
    torch.testing.assert_close(_logits(reloaded, batch), _logits(model, batch), rtol=1e-4, atol=1e-4)


def test_prompt_learning_loss_equals_the_full_peft_forward(tiny_model_dir, tokenizer):
    batch = _batch(tokenizer)
    for case in ("prefix", "prompt", "ptuning"):
        model = apply_method(load_causal_lm(str(tiny_model_dir)), _recipe(tiny_model_dir, case).method).eval()
        logits = _logits(model, batch)[:, -batch["input_ids"].shape[1]:]  # drop the virtual positions
        ref = F.cross_entropy(logits[:, :-1].reshape(-1, logits.shape[-1]), batch["labels"][:, 1:].reshape(-1),
                              ignore_index=-100, reduction="sum")
        loss, _ = supervised_nll(model, batch)
        torch.testing.assert_close(loss, ref, rtol=1e-5, atol=1e-4)


@pytest.mark.parametrize("case", MERGEABLE_CASES)
def test_merge_writes_a_plain_transformers_folder(case, tiny_model_dir, tokenizer, tmp_path):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    model, run, batch = _trained_run(tiny_model_dir, tokenizer, tmp_path, case)
    out = tmp_path / "merged"
    assert main(["merge", str(run), "-o", str(out)]) == 0
    plain = AutoModelForCausalLM.from_pretrained(out)
    assert not hasattr(plain, "peft_config")
    torch.testing.assert_close(_logits(plain, batch), _logits(model, batch), rtol=1e-4, atol=1e-4)
    assert AutoTokenizer.from_pretrained(out).chat_template == tokenizer.chat_template


def test_merge_refuses_a_full_folder_and_writes_bf16(tiny_model_dir, tokenizer, tmp_path):
    from transformers import AutoModelForCausalLM

    _, run, _ = _trained_run(tiny_model_dir, tokenizer, tmp_path, "lora")
    out = tmp_path / "merged"
    out.mkdir()
    (out / "keep.txt").write_text("x")
    assert main(["merge", str(run), "-o", str(out)]) == 2  # not empty: refuses without --overwrite
    assert (out / "keep.txt").is_file()
    assert main(["merge", str(run), "-o", str(out), "--overwrite", "--dtype", "bf16"]) == 0
    assert next(AutoModelForCausalLM.from_pretrained(out).parameters()).dtype == torch.bfloat16
    assert not (out / "keep.txt").exists() and (out / "tunelab_merge.json").is_file()


def test_prompt_learning_runs_cannot_merge(tiny_model_dir, tokenizer, tmp_path, capsys):
    _, run, _ = _trained_run(tiny_model_dir, tokenizer, tmp_path, "prompt")
    assert main(["merge", str(run), "-o", str(tmp_path / "out")]) == 2
    err = capsys.readouterr().err
    assert "method 'prompt' cannot be merged" in err and "method.name" in err and len(err.splitlines()) == 1
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("case", ["prefix"])
def test_chat_loads_the_run_onto_its_base(case, tiny_model_dir, tokenizer, tmp_path, capsys):
    _, run, _ = _trained_run(tiny_model_dir, tokenizer, tmp_path, case)
    assert main(["chat", str(run), "--prompt", "What colour is item 3?", "--max-new-tokens", "3"]) == 0
    assert "error" not in capsys.readouterr().err


def test_lora_options_reach_peft(tiny_model_dir):
    spec = _recipe(tiny_model_dir, "rslora", ["method.lora.alpha=8"]).method
    model = apply_method(load_causal_lm(str(tiny_model_dir)), spec)
    q = model.base_model.model.model.layers[0].self_attn.q_proj
    assert q.scaling["default"] == pytest.approx(8 / 4**0.5)  # rsLoRA: alpha / sqrt(r), not alpha / r
    dora = apply_method(load_causal_lm(str(tiny_model_dir)), _recipe(tiny_model_dir, "dora").method)
    assert any("lora_magnitude_vector" in n for n, p in dora.named_parameters() if p.requires_grad)


def test_loraplus_gives_b_matrices_a_larger_learning_rate(tiny_model_dir):
    from tunelab.config.specs import TrainSpec

    spec = _recipe(tiny_model_dir, "lora", ["method.lora.plus_ratio=16"]).method
    model = apply_method(load_causal_lm(str(tiny_model_dir)), spec)
    groups = optimizer_param_groups(model, spec, lr=1e-3, weight_decay=0.1)
    by_id = {id(p): n for n, p in model.named_parameters()}
    for g in groups:
        names = [by_id[id(p)] for p in g["params"]]
        assert all(".lora_B." in n for n in names) == (g["lr"] == pytest.approx(16e-3))
    assert sum(len(g["params"]) for g in groups) == sum(p.requires_grad for p in model.parameters())
    # build_optimizer picks the method up from the model (apply_method records it)
    opt = build_optimizer(model, TrainSpec(lr=1e-3))
    assert sorted({g["lr"] for g in opt.param_groups}) == pytest.approx([1e-3, 16e-3])
    plain = optimizer_param_groups(model, _recipe(tiny_model_dir, "lora").method, lr=1e-3, weight_decay=0.0)
    assert {g["lr"] for g in plain} == {1e-3}


def test_base_dtype_and_memory_estimate():
    spec = load_recipe(None, ["data.path=x"]).method
    assert base_dtype(spec, "bf16") == torch.bfloat16 and base_dtype(spec, "fp32") == torch.float32
    full = load_recipe(None, ["data.path=x", "method.name=freeze"]).method
    assert base_dtype(full, "bf16") == torch.float32  # trained and saved blocks stay exact
    assert estimate_training_memory_mb(2**20, 0, base_bytes=2) == pytest.approx(2.0)
    assert estimate_training_memory_mb(2**20, 2**20) == pytest.approx(16.0)  # weight, grad, two moments
    assert set(METHODS) == {"full", "freeze", "lora", "qlora", "prefix", "prompt", "ptuning", "ia3",
                            "bottleneck"}


# ---- conflicts: caught before weights load, naming the keys --------------------------------------------


def _error(fn) -> TunelabError:
    with pytest.raises(TunelabError) as e:
        fn()
    return e.value


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the CPU error")
def test_qlora_on_cpu_is_refused_naming_the_keys(tiny_model_dir):
    recipe = load_recipe(None, ["data.path=x", f"model.name={tiny_model_dir}", "method.name=qlora"])
    err = _error(lambda: preflight(recipe))
    assert "method.name" in err.where and "model.device" in err.where and "lora" in err.fix
    err = _error(lambda: apply_method(load_causal_lm(str(tiny_model_dir)), recipe.method))
    assert "CUDA" in err.what


def test_target_modules_that_match_nothing_list_the_linear_modules(tiny_model_dir):
    recipe = _recipe(tiny_model_dir, "lora", ["method.lora.target_modules=[q_proj, attn_out]"])
    for check in (lambda: preflight(recipe),
                  lambda: apply_method(load_causal_lm(str(tiny_model_dir)), recipe.method)):
        err = _error(check)
        assert err.where == "method.lora.target_modules" and "attn_out" in err.what
        assert "q_proj" in err.fix and "down_proj" in err.fix and "lm_head" not in err.fix
    ia3 = _recipe(tiny_model_dir, "ia3", ["method.ia3.target_modules=[nope]"])
    assert _error(lambda: preflight(ia3)).where == "method.ia3.target_modules"


def test_prompt_learning_with_packed_batches_is_refused(tiny_model_dir, tokenizer):
    recipe = _recipe(tiny_model_dir, "prefix", ["train.batching=packed"])
    err = _error(lambda: preflight(recipe))
    assert err.where == "method.name, train.batching"
    model = apply_method(load_causal_lm(str(tiny_model_dir)), recipe.method)
    rows = [{"input_ids": [5, 6, 7], "labels": [-100, 6, 7]}]
    assert _error(lambda: supervised_nll(model, collate(rows, "packed", 0, 0))).where == "train.batching"


def test_freeze_depth_is_checked_against_the_model(tiny_model_dir):
    recipe = _recipe(tiny_model_dir, "freeze", ["method.freeze.top_k_blocks=3"])
    for check in (lambda: preflight(recipe),
                  lambda: apply_method(load_causal_lm(str(tiny_model_dir)), recipe.method)):
        err = _error(check)
        assert err.where == "method.freeze.top_k_blocks" and "2 blocks" in err.what


@pytest.mark.parametrize(("overrides", "key"), [
    (["method.name=freeze", "method.freeze.top_k_blocks=0", "method.freeze.train_head=false",
      "method.freeze.train_final_norm=false"], "method.freeze"),
    (["method.name=prompt", "method.prompt.init=text"], "method.prompt"),
    (["method.name=adapter"], "method.name"),
    (["method.lora.init=loftq"], "method.lora.init"),
])
def test_impossible_method_settings_are_config_errors(overrides, key):
    err = _error(lambda: load_recipe(None, ["data.path=x", *overrides]))
    assert key in err.what


@pytest.mark.gpu
def test_qlora_trains_on_a_4bit_base(tiny_model_dir, tokenizer):
    pytest.importorskip("bitsandbytes")
    if not torch.cuda.is_available():
        pytest.skip("needs CUDA")
    from tunelab.methods import load_base_model

    recipe = load_recipe(None, ["data.path=x", f"model.name={tiny_model_dir}", "method.name=qlora",
                                "method.lora.r=4", "model.device=cuda"])
    preflight(recipe)
    model = apply_method(load_base_model(recipe.model, recipe.method, "bf16"), recipe.method)
    assert getattr(model, "is_loaded_in_4bit", False)
    batch = {k: v.cuda() for k, v in _batch(tokenizer).items()}
    with torch.autocast("cuda", dtype=torch.bfloat16):
        losses = train_steps(model, batch, 1e-2)
    assert losses[-1] < losses[0]
