"""End to end on the tiny random model: the run folder, trainable vs frozen weights, failure paths."""

import json
import math

import pytest
import torch
from safetensors.torch import load_file

from tunelab import pipeline
from tunelab.config import load_recipe
from tunelab.errors import TunelabError
from tunelab.recipes.sft import SFTRecipe

EXPECTED = {
    "adapter", "config.yaml", "data_summary.json", "eval", "manifest.json", "metrics.jsonl", "plots",
    "rejects.jsonl", "report.html", "report.md", "tokenizer", "train_summary.json",
}


def _recipe(tmp_path, chat_jsonl, tiny_model_dir, *extra):
    return load_recipe(None, [
        f"data.path={chat_jsonl}", f"model.name={tiny_model_dir}", f"output.dir={tmp_path / 'runs'}",
        "output.name=t", "train.max_steps=4", "train.batch_size=4", "train.eval_every=2", "train.lr=1e-2",
        "eval.max_new_tokens=4", "eval.max_samples=6", "data.split.test=0.2", *extra,
    ])


def test_run_writes_exactly_the_expected_files(tmp_path, chat_jsonl, tiny_model_dir):
    run_dir = pipeline.run(_recipe(tmp_path, chat_jsonl, tiny_model_dir), "t")
    assert {p.name for p in run_dir.iterdir()} == EXPECTED
    assert {p.name for p in (run_dir / "adapter").iterdir()} >= {"adapter_config.json", "adapter_model.safetensors"}
    assert (run_dir / "tokenizer" / "chat_template.jinja").is_file()
    manifest = json.loads((run_dir / "manifest.json").read_text())
    assert manifest["seed"] == 0 and manifest["data"]["fingerprint"] and "torch" in manifest["libraries"]
    rows = [json.loads(x) for x in (run_dir / "metrics.jsonl").read_text().splitlines()]
    assert any("loss" in r for r in rows) and any("val_loss" in r for r in rows)
    ev = json.loads((run_dir / "eval" / "metrics.json").read_text())
    assert ev["base"] and ev["tuned"] and ev["n"] > 0
    sample = json.loads((run_dir / "eval" / "samples.jsonl").read_text().splitlines()[0])
    assert set(sample) >= {"input", "reference", "base", "tuned"}
    # The resolved config reproduces the recipe exactly.
    assert load_recipe(run_dir / "config.yaml") == _recipe(tmp_path, chat_jsonl, tiny_model_dir)


def test_lora_changes_adapters_and_never_the_base(tmp_path, chat_jsonl, tiny_model_dir):
    recipe = _recipe(tmp_path, chat_jsonl, tiny_model_dir, "model.precision=fp32")
    run_dir = tmp_path / "r"
    run_dir.mkdir()
    sft = SFTRecipe(recipe, run_dir)
    sft.setup()
    before = {n: p.detach().clone() for n, p in sft.model.named_parameters()}
    sft.train()
    after = dict(sft.model.named_parameters())
    changed = {n for n in before if not torch.equal(before[n], after[n].detach())}
    assert changed and all("lora_" in n for n in changed)
    assert any("lora_B" in n for n in changed)
    original = load_file(tiny_model_dir / "model.safetensors")
    base = sft.model.get_base_model().state_dict()
    for name, value in original.items():
        key = name if name in base else name.replace(".weight", ".base_layer.weight")
        torch.testing.assert_close(base[key].float(), value.float())


def test_full_finetuning_saves_weights(tmp_path, chat_jsonl, tiny_model_dir):
    recipe = _recipe(tmp_path, chat_jsonl, tiny_model_dir, "method.name=full", "eval.enabled=false", "train.lr=1e-3")
    run_dir = pipeline.train(recipe, "t")
    assert (run_dir / "model" / "model.safetensors").is_file() and not (run_dir / "adapter").exists()


def test_nan_loss_stops_and_saves_nothing(tmp_path, chat_jsonl, tiny_model_dir, monkeypatch):
    import tunelab.recipes.sft as sft_mod

    def nan_loss(model, batch, label_smoothing=0.0):
        return torch.tensor(math.nan, requires_grad=True), 1

    monkeypatch.setattr(sft_mod, "supervised_nll", nan_loss)
    with pytest.raises(TunelabError, match="diverged"):
        pipeline.train(_recipe(tmp_path, chat_jsonl, tiny_model_dir, "train.save_every=1"), "t")
    run_dir = tmp_path / "runs" / "t"
    assert not (run_dir / "adapter").exists() and not (run_dir / "model").exists()
    assert not (run_dir / "checkpoints").exists()  # the first step diverged: no checkpoint after it


def test_early_stopping_restores_the_best_weights(tmp_path, chat_jsonl, tiny_model_dir, monkeypatch):
    recipe = _recipe(tmp_path, chat_jsonl, tiny_model_dir, "train.max_steps=20", "train.eval_every=1",
                     "train.early_stopping_patience=2")
    run_dir = tmp_path / "r"
    run_dir.mkdir()
    sft = SFTRecipe(recipe, run_dir)
    sft.setup()
    losses = iter([5.0, 4.0, 3.0, 3.5, 3.6, 3.7, 3.8])
    monkeypatch.setattr(sft, "validation_loss", lambda: next(losses))
    summary = sft.train()
    assert summary["stopped_early"] and summary["steps"] == 4 and summary["best_step"] == 2


def test_existing_run_folder_is_not_clobbered(tmp_path, chat_jsonl, tiny_model_dir):
    recipe = _recipe(tmp_path, chat_jsonl, tiny_model_dir)
    (tmp_path / "runs" / "t").mkdir(parents=True)
    with pytest.raises(TunelabError, match="already exists"):
        pipeline.train(recipe, "t")


def test_eval_and_chat_verbs_on_a_run_folder(tmp_path, chat_jsonl, tiny_model_dir, capsys):
    from tunelab.cli.main import main

    run_dir = pipeline.train(_recipe(tmp_path, chat_jsonl, tiny_model_dir, "eval.enabled=false"), "t")
    assert not (run_dir / "eval").exists()
    assert main(["eval", str(run_dir)]) == 0
    assert (run_dir / "eval" / "metrics.json").is_file() and (run_dir / "report.html").is_file()
    assert main(["chat", str(run_dir), "--prompt", "What color is item 3?", "--max-new-tokens", "3"]) == 0


def test_plain_text_data_is_evaluated_by_perplexity(tmp_path, tiny_model_dir):
    text = tmp_path / "corpus.txt"
    text.write_text("".join(f"Line number {i} of a small corpus about the sea.\n" for i in range(60)))
    recipe = load_recipe(None, [
        f"data.path={text}", f"model.name={tiny_model_dir}", f"output.dir={tmp_path / 'runs'}", "output.name=p",
        "train.max_steps=2", "data.split.test=0.2",
    ])
    run_dir = pipeline.run(recipe, "p")
    ev = json.loads((run_dir / "eval" / "metrics.json").read_text())
    assert ev["task"] == "perplexity" and ev["tuned"]["perplexity"] > 1 and ev["base"]["perplexity"] > 1
