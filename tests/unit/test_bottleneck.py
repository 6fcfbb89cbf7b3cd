"""Bottleneck adapters (method.name=bottleneck) on the tiny model: identity at the start, only the adapters
train, the saved adapter reloads to the same logits through tunelab, merge/serve/unsupported objectives are
refused naming the keys, and the normal `tunelab train` / classify paths work."""

from __future__ import annotations

import json
import shutil

import pytest
import torch
from method_helpers import train_steps
from safetensors.torch import load_file

from tunelab.cli.main import main
from tunelab.config import load_recipe
from tunelab.config.loading import dump_recipe
from tunelab.errors import TunelabError
from tunelab.methods import MERGEABLE, METHODS, apply_method, count_parameters, preflight
from tunelab.methods.bottleneck import CONFIG_NAME, WEIGHTS_NAME, BottleneckModel, bottleneck_width
from tunelab.models import load_causal_lm, load_run_model
from tunelab.training.batching import collate

FAST = ["model.precision=fp32", "model.threads=1", "output.tracking=[]"]


@pytest.fixture(autouse=True)
def _one_thread():
    # The tiny model's ops take microseconds; thread hand-offs on a shared 2-core box dominate otherwise.
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def _recipe(model_dir, *extra):
    return load_recipe(None, ["data.path=x", f"model.name={model_dir}", "method.name=bottleneck", *extra])


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


def _error(fn) -> TunelabError:
    with pytest.raises(TunelabError) as e:
        fn()
    return e.value


@pytest.mark.parametrize("placement", ["pfeiffer", "houlsby"])
def test_starts_exactly_as_the_base_model(placement, tiny_model_dir, tokenizer):
    batch = _batch(tokenizer)
    expected = _logits(load_causal_lm(str(tiny_model_dir)), batch)
    spec = _recipe(tiny_model_dir, f"method.bottleneck.placement={placement}").method
    model = apply_method(load_causal_lm(str(tiny_model_dir)), spec)
    assert isinstance(model, BottleneckModel)
    assert torch.equal(_logits(model, batch), expected)  # up = 0: not approximately, exactly
    per_block = 2 if placement == "houlsby" else 1
    assert len(model.bottleneck) == 2 * per_block  # 2 blocks in the tiny model
    # hidden 64 / reduction factor 16 = width 4: down (64x4 + 4) and up (4x64 + 64) per adapter
    assert bottleneck_width(64, spec.bottleneck) == 4
    assert count_parameters(model).trainable == 2 * per_block * (64 * 4 + 4 + 4 * 64 + 64)


def test_only_the_adapters_train_and_the_loss_falls(tiny_model_dir, tokenizer):
    model = apply_method(load_causal_lm(str(tiny_model_dir)), _recipe(tiny_model_dir, "method.bottleneck.size=8",
                                                                       "method.bottleneck.activation=gelu").method)
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    assert trainable and all(n.startswith("bottleneck.") for n in trainable)
    assert all(p.dtype == torch.float32 for p in model.parameters() if p.requires_grad)
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    losses = train_steps(model, _batch(tokenizer))
    assert losses[-1] < losses[0]
    for n, p in model.named_parameters():
        if n in trainable:
            assert not torch.equal(p, before[n]), f"{n} did not change"
        else:
            assert torch.equal(p, before[n]), f"frozen {n} changed"
    counts = count_parameters(model)
    assert counts.trainable == sum(p.numel() for n, p in model.named_parameters() if n in trainable)
    assert counts.total == counts.trainable + sum(p.numel() for p in load_causal_lm(str(tiny_model_dir)).parameters())


def test_layers_pick_the_blocks_negative_from_the_end(tiny_model_dir):
    model = apply_method(load_causal_lm(str(tiny_model_dir)),
                         _recipe(tiny_model_dir, "method.bottleneck.layers=[-1]",
                                 "method.bottleneck.placement=houlsby").method)
    assert set(model.bottleneck) == {"layer1_attn", "layer1_mlp"}
    assert model.bottleneck_config["layers"] == [1]


@pytest.fixture(scope="module")
def trained(tiny_model_dir, tokenizer, tmp_path_factory):
    """(model, run folder, batch): a Houlsby adapter trained 3 steps and saved as a run (shared: read only)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # module scope: set up before the per-test one-thread fixture
    recipe = _recipe(tiny_model_dir, "method.bottleneck.placement=houlsby", "method.bottleneck.dropout=0.1")
    model = apply_method(load_causal_lm(str(tiny_model_dir)), recipe.method)
    batch = _batch(tokenizer)
    train_steps(model, batch, steps=3)
    torch.set_num_threads(threads)
    run = tmp_path_factory.mktemp("bottleneck") / "run"
    run.mkdir()
    (run / "config.yaml").write_text(dump_recipe(recipe), encoding="utf-8")
    tokenizer.save_pretrained(run / "tokenizer")
    model.save_pretrained(run / "adapter", safe_serialization=True)
    return model, run, batch


def test_saved_adapter_holds_only_adapter_tensors_and_reloads_exactly(trained, tiny_model_dir):
    model, run, batch = trained
    assert {p.name for p in (run / "adapter").iterdir()} == {CONFIG_NAME, WEIGHTS_NAME}
    tensors = load_file(run / "adapter" / WEIGHTS_NAME)
    assert set(tensors) == {f"bottleneck.{n}" for n in model.bottleneck.state_dict()}
    config = json.loads((run / "adapter" / CONFIG_NAME).read_text())
    assert config["placement"] == "houlsby" and config["size"] == 4 and config["layers"] == [0, 1]
    reloaded, _ = load_run_model(run)  # what `tunelab eval` and `tunelab chat` use; merge=True cannot apply
    assert isinstance(reloaded, BottleneckModel) and not reloaded.training
    assert torch.equal(_logits(reloaded, batch), _logits(model, batch))  # dropout off in eval: exact
    assert not torch.equal(_logits(reloaded, batch), _logits(load_causal_lm(str(tiny_model_dir)), batch))
    # `tunelab chat` loads it in bf16 where the CPU has it: a bf16 base with the fp32 adapters hooked in
    assert main(["chat", str(run), "--prompt", "What colour is item 3?", "--max-new-tokens", "3"]) == 0


def test_a_damaged_adapter_is_refused(trained, tmp_path):
    run = tmp_path / "run"
    shutil.copytree(trained[1], run)
    tensors = load_file(run / "adapter" / WEIGHTS_NAME)
    from safetensors.torch import save_file

    save_file({k: v for k, v in tensors.items() if "layer0_mlp" not in k}, run / "adapter" / WEIGHTS_NAME)
    assert "missing" in str(_error(lambda: load_run_model(run)))
    (run / "adapter" / CONFIG_NAME).write_text("{not json")
    assert _error(lambda: load_run_model(run)).where.endswith(CONFIG_NAME)


def test_merge_refuses_a_bottleneck_run(trained, tmp_path, capsys):
    run = trained[1]
    assert "bottleneck" in METHODS and "bottleneck" not in MERGEABLE
    capsys.readouterr()  # drop the weight-loading progress of the training above
    assert main(["merge", str(run), "-o", str(tmp_path / "out")]) == 2
    err = capsys.readouterr().err
    assert "method 'bottleneck' cannot be merged" in err and "method.name" in err and len(err.splitlines()) == 1
    assert not (tmp_path / "out").exists()


def _lively_run(trained, tmp_path, name: str):
    """A copy of the trained run whose adapters have large random `up` weights (outputs clearly not the base's)."""
    from safetensors.torch import save_file

    run = tmp_path / name
    shutil.copytree(trained[1], run)
    g = torch.Generator().manual_seed(0)
    tensors = load_file(run / "adapter" / WEIGHTS_NAME)
    tensors = {k: torch.randn(v.shape, generator=g) * 0.5 if k.endswith("up.weight") else v for k, v in tensors.items()}
    save_file(tensors, run / "adapter" / WEIGHTS_NAME)
    return run


def test_served_as_the_one_adapter_of_its_base(trained, tmp_path, tokenizer):
    import asyncio

    from tunelab.config.specs import ServeSpec
    from tunelab.serving.catalog import build_catalog
    from tunelab.serving.engines.base import GenerationRequest, SamplingParams
    from tunelab.serving.engines.transformers import TransformersEngine, load_modules

    run = _lively_run(trained, tmp_path, "served")
    catalog = build_catalog(ServeSpec(model=str(run), dtype="fp32"))
    tuned_id = next(m.id for m in catalog.models.values() if m.adapter_dir is not None)
    base_id = next(m.id for m in catalog.models.values() if m.adapter_dir is None)
    engine = TransformersEngine(catalog, ServeSpec(dtype="fp32", batch_size=2),
                                modules=load_modules(catalog, torch.float32, "cpu"))
    prompt = tokenizer("what colour is the sky?")["input_ids"]

    async def both():
        await engine.start()
        try:
            async def one(model_id):
                stream = engine.submit(GenerationRequest(model_id, model_id, prompt, SamplingParams(max_tokens=6,
                                                                                                   temperature=0)))
                return [e.token_id async for e in stream]
            return await asyncio.gather(one(tuned_id), one(base_id))
        finally:
            await engine.stop()

    served_tuned, served_base = asyncio.run(both())
    model, _ = load_run_model(run)

    def greedy():
        out = model.generate(torch.tensor([prompt]), max_new_tokens=6, do_sample=False, eos_token_id=None, pad_token_id=0)
        return out[0, len(prompt):].tolist()

    with torch.inference_mode():
        expected_tuned = greedy()
        with model.disable_adapter():
            expected_base = greedy()
    assert served_tuned == expected_tuned and served_base == expected_base and expected_tuned != expected_base


def test_serving_refuses_a_bottleneck_adapter_beside_another(trained, tmp_path, monkeypatch):
    from tunelab.config.specs import ServeSpec
    from tunelab.serving.catalog import build_catalog
    from tunelab.serving.engines.transformers import load_modules

    spec = ServeSpec(model=str(trained[1]), adapters={"other": str(_lively_run(trained, tmp_path, "o"))})
    # refused when the catalog is built (startup, exit 2), before any weights load
    e = _error(lambda: build_catalog(spec))
    assert "method 'bottleneck'" in str(e) and "only as the one adapter" in str(e) and "tunelab serve" in e.fix
    assert e.where == "--adapter" and "also asked for: other" in str(e)
    # the engine keeps its own check for catalogs built another way
    monkeypatch.setattr("tunelab.serving.catalog._check_bottleneck_alone", lambda models: None)
    e = _error(lambda: load_modules(build_catalog(spec), torch.float32, "cpu"))
    assert "method 'bottleneck'" in str(e)


# ---- bad configuration ----------------------------------------------------------------------------------


@pytest.mark.parametrize("overrides", [
    ["method.bottleneck.size=8", "method.bottleneck.reduction_factor=4"],
    ["method.bottleneck.layers=[0, 0]"],
    ["method.bottleneck.placement=middle"],
    ["method.bottleneck.activation=tanh"],
    ["method.bottleneck.size=0"],
    ["method.bottleneck.rank=4"],
])
def test_impossible_settings_are_config_errors(tiny_model_dir, overrides):
    assert "'method.bottleneck" in str(_error(lambda: _recipe(tiny_model_dir, *overrides)))


def test_layers_outside_the_model_are_refused_before_weights_load(tiny_model_dir):
    e = _error(lambda: preflight(_recipe(tiny_model_dir, "method.bottleneck.layers=[0, 2]")))
    assert e.where == "method.bottleneck.layers" and "[2]" in str(e)
    e = _error(lambda: preflight(_recipe(tiny_model_dir, "method.bottleneck.layers=[1, -1]")))
    assert "same block twice" in str(e)


def test_an_architecture_without_decoder_blocks_is_refused():
    class NoBlocks(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.proj = torch.nn.Linear(4, 4)

    class OddBlock(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.layers = torch.nn.ModuleList([torch.nn.Sequential(torch.nn.Linear(4, 4))])

    spec = load_recipe(None, ["data.path=x", "method.name=bottleneck"]).method
    assert "no stack of decoder blocks" in str(_error(lambda: apply_method(NoBlocks(), spec)))
    e = _error(lambda: apply_method(OddBlock(), spec))
    assert "cannot find the MLP of Sequential" in str(e) and e.where == "method.name, model.name"


def test_an_encoder_classifier_is_refused_before_weights_load(tmp_path):
    from transformers import BertConfig, BertForSequenceClassification

    cfg = BertConfig(vocab_size=100, hidden_size=16, num_hidden_layers=2, num_attention_heads=2,
                     intermediate_size=32, max_position_embeddings=32)
    BertForSequenceClassification(cfg).save_pretrained(tmp_path / "bert")
    recipe = _recipe(tmp_path / "bert", "train.objective=classify")
    e = _error(lambda: preflight(recipe))
    assert "cannot find the MLP of BertLayer" in str(e) and e.where == "method.name, model.name"


def test_objectives_that_cannot_use_it_are_refused(tiny_model_dir):
    e = _error(lambda: preflight(_recipe(tiny_model_dir, "train.objective=reward")))
    assert e.where == "method.name, train.objective" and "train.objective=reward" in str(e)
    # preference: 'peft' means the PEFT base (adapter disabled), which a bottleneck adapter does not offer;
    # 'auto' resolves to precomputed reference log-probabilities for it, as for full weights
    e = _error(lambda: preflight(_recipe(tiny_model_dir, "train.objective=preference", "preference.reference=peft")))
    assert e.where == "preference.reference, method.name" and "precompute" in e.fix
    from tunelab.recipes.preference import resolve_reference

    auto = _recipe(tiny_model_dir, "train.objective=preference")
    preflight(auto)
    assert resolve_reference(auto) == "precompute"
    preflight(_recipe(tiny_model_dir, "train.objective=preference", "preference.reference=precompute"))
    preflight(_recipe(tiny_model_dir, "train.objective=preference", "preference.loss=orpo"))


def test_cli_train_with_a_bad_layer_exits_2_with_one_line(tmp_path, chat_jsonl, tiny_model_dir, capsys):
    recipe = tmp_path / "r.yaml"
    recipe.write_text(f"data:\n  path: {chat_jsonl}\nmodel:\n  name: {tiny_model_dir}\nmethod:\n  name: bottleneck\n")
    assert main(["train", str(recipe), f"output.dir={tmp_path / 'runs'}", "method.bottleneck.layers=[5]",
                 *FAST]) == 2
    err = capsys.readouterr().err
    assert "method.bottleneck.layers" in err and len(err.strip().splitlines()) == 1
    assert not (tmp_path / "runs").exists() or not any((tmp_path / "runs").iterdir())


# ---- through the recipes ----------------------------------------------------------------------------------


def test_tunelab_train_then_eval_on_the_tiny_model(tmp_path, chat_jsonl, tiny_model_dir):
    recipe = tmp_path / "r.yaml"
    recipe.write_text(f"data:\n  path: {chat_jsonl}\nmodel:\n  name: {tiny_model_dir}\nmethod:\n  name: bottleneck\n")
    common = [f"output.dir={tmp_path / 'runs'}", "output.name=b", "train.max_steps=4", "train.batch_size=4",
              "train.lr=1e-2", "data.split.test=0.2", "eval.max_new_tokens=4", "eval.max_samples=4", *FAST]
    # gradient checkpointing recomputes each block, hooks included, in the backward pass
    assert main(["train", str(recipe), "train.eval_every=2", "train.gradient_checkpointing=true", *common]) == 0
    run = tmp_path / "runs" / "b"
    assert {p.name for p in (run / "adapter").iterdir()} == {CONFIG_NAME, WEIGHTS_NAME}
    summary = json.loads((run / "train_summary.json").read_text())
    # tiny model: 2 blocks x one Pfeiffer adapter of width 64 / 16 = 4
    assert summary["trainable_params"] == 2 * (64 * 4 + 4 + 4 * 64 + 64)
    vals = [json.loads(x)["val_loss"] for x in (run / "metrics.jsonl").read_text().splitlines() if "val_loss" in x]
    assert len(vals) >= 2 and vals[-1] < vals[0]
    assert main(["eval", str(run)]) in (0, 3)  # 3 would be the gate; this recipe has none
    metrics = json.loads((run / "eval" / "metrics.json").read_text())
    assert metrics["n"] > 0 and metrics["tuned"] and metrics["base"]


def test_decoder_classifier_trains_adapters_and_head_and_reloads(tmp_path, tiny_model_dir):
    from tunelab.recipes.classify import ClassifyRecipe, predict_logits
    from tunelab.recipes.classify_eval import load_classifier_run

    rows = [{"text": f"{'good great fine' if i % 2 else 'bad awful poor'} item {i}", "label": "pos" if i % 2 else "neg"}
            for i in range(60)]
    data = tmp_path / "l.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    recipe = load_recipe(None, [
        f"data.path={data}", f"model.name={tiny_model_dir}", f"output.dir={tmp_path / 'runs'}", "output.name=c",
        "train.objective=classify", "method.name=bottleneck", "train.batch_size=8", "train.max_steps=6",
        "train.lr=1e-2", "train.eval_every=100", "data.split.validation=0.2", "data.split.test=0.0", *FAST])
    run = tmp_path / "runs" / "c"
    run.mkdir(parents=True)
    rec = ClassifyRecipe(recipe, run)
    rec.setup()
    trainable = {n for n, p in rec.model.named_parameters() if p.requires_grad}
    assert trainable == {n for n in trainable if n.startswith("bottleneck.") or ".score." in f".{n}"}
    assert any(".score." in f".{n}" for n in trainable)
    before = {n: p.detach().clone() for n, p in rec.model.named_parameters()}
    summary = rec.train()
    rec.save(summary, {"train_s": summary["train_time_s"]})
    after = dict(rec.model.named_parameters())
    assert all(torch.equal(before[n], after[n]) != (n in trainable) for n in before)
    saved = load_file(run / "adapter" / WEIGHTS_NAME)
    assert "head.score.weight" in saved and not any("embed_tokens" in k for k in saved)
    model, tok, _ = load_classifier_run(run)
    val = rec.data.encoded["validation"]
    assert torch.equal(predict_logits(model, val, tok.pad_token_id, 8, "cpu", "fp32"),
                       predict_logits(rec.model, val, tok.pad_token_id, 8, "cpu", "fp32"))


def test_dpo_with_a_precomputed_reference_learns_the_preference(tmp_path, tiny_model_dir):
    from tunelab import pipeline

    wrong = ["red", "green", "black", "white", "yellow"]
    rows = [{"prompt": f"Q{i}: colour of a clear sky?", "chosen": "blue", "rejected": wrong[i % 5]} for i in range(24)]
    data = tmp_path / "sky.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    recipe = load_recipe(None, [
        f"data.path={data}", "data.split.validation=0.25", "data.split.test=0.0", "data.max_length=64",
        f"model.name={tiny_model_dir}", "method.name=bottleneck", "train.objective=preference",
        "preference.reference=precompute", "train.max_steps=6", "train.batch_size=6", "train.lr=0.02",
        "train.warmup_ratio=0.0", "train.scheduler=constant", "train.log_every=1", f"output.dir={tmp_path / 'runs'}",
        "output.name=dpo", *FAST])
    run = pipeline.train(recipe, "dpo")
    steps = [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines() if '"loss"' in x]
    assert steps[0]["loss"] == pytest.approx(0.6931, abs=1e-3)  # policy = reference at the start: log 2
    assert steps[-1]["loss"] < steps[0]["loss"] and steps[-1]["reward_margin"] > steps[0]["reward_margin"]
    assert {p.name for p in (run / "adapter").iterdir()} == {CONFIG_NAME, WEIGHTS_NAME}
    result = pipeline.evaluate(run)  # the tuned policy reloads through load_run_model
    assert result["base"]["reward_accuracy"] == 0.5 and result["tuned"]["reward_margin"] > 0


def test_grpo_step_runs_and_saves_the_adapter(tmp_path, tiny_model_dir, chat_jsonl):
    from tunelab import pipeline

    recipe = load_recipe(None, [
        f"data.path={chat_jsonl}", "data.max_length=64", f"model.name={tiny_model_dir}", "method.name=bottleneck",
        "train.objective=grpo", "train.max_steps=2", "train.batch_size=4", "train.lr=5e-3", "train.log_every=1",
        "rl.num_generations=4", "rl.max_completion_length=6", "rl.eval_prompts=2", "rl.beta=0.1",
        "rl.rewards=[{type: length_penalty, target: 25}]", "eval.batch_size=2", f"output.dir={tmp_path}",
        "output.name=rl", *FAST])
    run = pipeline.train(recipe, "rl")
    steps = [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines() if '"reward_mean"' in x]
    # TRL keeps a frozen copy of the base as the KL reference: equal to the policy before the first update
    assert [r["step"] for r in steps] == [1, 2] and steps[0]["kl"] == 0.0 and steps[1]["kl"] > 0
    model, _ = load_run_model(run)
    ups = [t for k, t in model.adapter_state_dict().items() if k.endswith(".up.weight")]
    assert isinstance(model, BottleneckModel) and ups and all(bool(t.abs().sum() > 0) for t in ups)  # trained from 0


def test_resume_from_a_checkpoint_reproduces_the_uninterrupted_adapter(tmp_path, chat_jsonl, tiny_model_dir):
    from tunelab import pipeline

    def train(name, *extra, resume=False):
        recipe = load_recipe(None, [
            f"data.path={chat_jsonl}", f"model.name={tiny_model_dir}", f"output.dir={tmp_path / 'runs'}",
            f"output.name={name}", "train.max_steps=6", "train.batch_size=4", "train.lr=5e-3", "train.log_every=1",
            "method.name=bottleneck", "method.bottleneck.dropout=0.1", "eval.enabled=false", "data.split.test=0.1",
            *FAST, *extra])
        return pipeline.train(recipe, name, resume=resume)

    whole = train("whole")
    cut = train("cut", "train.save_every=3")
    # Back to the state after step 3, as if the process had died there (the checkpoint holds RNG and optimizer).
    shutil.rmtree(cut / "adapter")
    rows = (cut / "metrics.jsonl").read_text().splitlines()
    (cut / "metrics.jsonl").write_text("".join(r + "\n" for r in rows if json.loads(r).get("step", 0) <= 3))
    resumed = train("cut", "train.save_every=3", resume=True)
    a, b = (load_file(r / "adapter" / WEIGHTS_NAME) for r in (whole, resumed))
    assert set(a) == set(b) and all(torch.equal(a[k], b[k]) for k in a)  # dropout masks included
