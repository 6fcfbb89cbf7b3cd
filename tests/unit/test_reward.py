"""Reward models: training on a planted preference signal, export parity, held-out metrics, `tunelab reward score`."""

from __future__ import annotations

import json
import random
from pathlib import Path

import pytest

from tunelab.config.loading import load_recipe
from tunelab.errors import TunelabError
from tunelab.recipes.reward import RewardScorer, pair_metrics

WORDS = ["apple", "river", "stone", "cloud", "lamp", "garden", "window", "paper", "music", "train", "honey", "forest"]


def _pairs(path: Path, n: int = 96) -> Path:
    """Pairs whose chosen answer carries the marker 'thanks' (rejected: 'sorry'), with random filler words on both
    sides so that neither length nor position gives it away."""
    rng = random.Random(0)
    rows = []
    for i in range(n):
        a, b = rng.sample(WORDS, 3), rng.sample(WORDS, 3)
        marked_first = rng.random() < 0.5
        chosen = " ".join(["thanks", *a] if marked_first else [*a, "thanks"])
        rejected = " ".join(["sorry", *b] if marked_first else [*b, "sorry"])
        rows.append({"prompt": f"Question {i}: say something about {rng.choice(WORDS)}.", "chosen": chosen,
                     "rejected": rejected})
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    return path


@pytest.fixture(scope="module")
def reward_run(tmp_path_factory, tiny_model_dir) -> Path:
    """A reward model trained on the planted signal (module-scoped: several tests read it)."""
    from tunelab.pipeline import evaluate, train

    tmp = tmp_path_factory.mktemp("reward")
    recipe = load_recipe(None, [
        f"data.path={_pairs(tmp / 'pairs.jsonl')}", "data.max_length=64", "data.split.validation=0.15",
        "data.split.test=0.25", f"model.name={tiny_model_dir}", "model.precision=fp32", "train.objective=reward",
        "train.max_steps=16", "train.batch_size=8", "train.lr=5e-3", "train.log_every=4", "train.eval_every=8",
        "eval.batch_size=16", f"output.dir={tmp}", "output.name=rm"])
    run = train(recipe, "rm")
    evaluate(run)
    return run


def _rows(run: Path) -> list[dict]:
    return [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines()]


def test_reward_model_learns_the_planted_preference(reward_run):
    rows = _rows(reward_run)
    val = [r for r in rows if "val_accuracy" in r]
    assert val[0]["step"] == 0 and val[-1]["step"] == 16
    train_rows = [r for r in rows if "loss" in r]
    assert {"accuracy", "margin", "reward_mean", "lr"} <= train_rows[-1].keys()
    assert train_rows[-1]["loss"] < train_rows[0]["loss"]
    assert val[-1]["val_margin"] > val[0]["val_margin"]
    ev = json.loads((reward_run / "eval" / "metrics.json").read_text())
    tuned = ev["tuned"]
    assert ev["task"] == "reward" and ev["split"] == "test" and tuned["n_pairs"] == ev["n"] >= 15
    # held-out prompts, scored by the exported model: well above chance, and not explained by length
    assert tuned["pairwise_accuracy"] >= 0.85 and tuned["p_value_vs_chance"] < 0.01
    assert tuned["mean_margin"] > 0 and tuned["reward_chosen"] > tuned["reward_rejected"]
    assert tuned["length_baseline_accuracy"] < 0.8
    samples = [json.loads(x) for x in (reward_run / "eval" / "samples.jsonl").read_text().splitlines()]
    assert samples and {"where", "reward_chosen", "reward_rejected"} <= samples[0].keys()


def test_export_is_a_standard_folder_matching_the_adapter(reward_run, tiny_model_dir):
    import torch
    from peft import PeftModel
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    from tunelab.recipes.classify import load_classifier

    info = json.loads((reward_run / "reward.json").read_text())
    assert info["input_format"] == "chat" and info["max_length"] == 64
    tok = AutoTokenizer.from_pretrained(reward_run / "model")
    exported = AutoModelForSequenceClassification.from_pretrained(reward_run / "model").eval()
    assert exported.config.num_labels == 1
    base = load_classifier(str(tiny_model_dir), ["reward"], tok.pad_token_id)
    adapter = PeftModel.from_pretrained(base, reward_run / "adapter").eval()
    text = tok.apply_chat_template([{"role": "user", "content": "hi"}, {"role": "assistant", "content": "thanks"}],
                                   tokenize=False)
    ids = tok(text, return_tensors="pt", add_special_tokens=False)
    with torch.no_grad():
        a, b = exported(**ids).logits, adapter(**ids).logits
    assert a.shape == (1, 1) and torch.allclose(a, b, atol=1e-4)


def test_reward_score_cli(reward_run, tmp_path, capsys):
    from tunelab.cli.main import main

    rows = [{"prompt": "Say something about lamps.", "response": "thanks lamp paper honey"},
            {"prompt": "Say something about lamps.", "response": "sorry lamp paper honey"},
            {"prompt": [{"role": "user", "content": "Say something."}], "completion": "thanks river stone"},
            {"messages": [{"role": "user", "content": "Say something."},
                          {"role": "assistant", "content": "sorry river stone"}]}]
    src = tmp_path / "answers.jsonl"
    src.write_text("".join(json.dumps(r) + "\n" for r in rows))
    out = tmp_path / "scored.jsonl"
    assert main(["reward", "score", str(reward_run), str(src), "-o", str(out)]) == 0
    scored = [json.loads(x) for x in out.read_text().splitlines()]
    assert [s.get("response", s.get("completion")) for s in scored[:3]] == [r.get("response", r.get("completion"))
                                                                           for r in rows[:3]]
    assert scored[0]["reward"] > scored[1]["reward"] and scored[2]["reward"] > scored[3]["reward"]
    assert "scored 4 of 4 rows" in capsys.readouterr().err  # the console writes to stderr
    # the exported folder alone scores the same
    assert main(["reward", "score", str(reward_run / "model"), str(src), "-o", str(tmp_path / "b.jsonl")]) == 0
    again = [json.loads(x)["reward"] for x in (tmp_path / "b.jsonl").read_text().splitlines()]
    assert again == pytest.approx([s["reward"] for s in scored], abs=1e-5)


def test_reward_score_bad_rows(reward_run, tmp_path, capsys):
    from tunelab.cli.main import main

    src = tmp_path / "bad.jsonl"
    src.write_text(json.dumps({"prompt": "q", "response": "thanks"}) + "\n" + json.dumps({"prompt": "q"}) + "\n")
    out = tmp_path / "o.jsonl"
    assert main(["reward", "score", str(reward_run), str(src), "-o", str(out)]) == 2
    err = capsys.readouterr().err
    assert "bad.jsonl:2" in err and "missing field" in err and not out.exists()
    assert main(["reward", "score", str(reward_run), str(src), "-o", str(out), "--on-error", "skip"]) == 0
    assert len(out.read_text().splitlines()) == 1
    reject = json.loads(Path(f"{out}.rejects.jsonl").read_text())
    assert reject["where"].endswith("bad.jsonl:2") and "missing field" in reject["reason"]


def test_reward_score_refuses_what_is_not_a_reward_model(tiny_model_dir, tmp_path, capsys):
    from tunelab.cli.main import main

    src = tmp_path / "a.jsonl"
    src.write_text(json.dumps({"prompt": "q", "response": "a"}) + "\n")
    assert main(["reward", "score", str(tiny_model_dir), str(src), "-o", str(tmp_path / "o.jsonl")]) == 2
    assert "not a reward model" in capsys.readouterr().err
    assert main(["reward", "score", str(tmp_path / "nowhere"), str(src), "-o", str(tmp_path / "o.jsonl")]) == 2
    assert "reward model not found" in capsys.readouterr().err
    assert main(["reward"]) == 2


def test_pair_metrics_known_answers():
    m = pair_metrics([1.0, 2.0, 0.0, 3.0], [0.0, 2.0, 1.0, 1.0], [10, 5, 5, 5], [5, 5, 10, 1])
    assert m["pairwise_accuracy"] == pytest.approx((1 + 0.5 + 0 + 1) / 4)  # a tie counts one half
    assert m["mean_margin"] == pytest.approx((1 + 0 - 1 + 2) / 4)
    assert m["length_baseline_accuracy"] == pytest.approx((1 + 0.5 + 0 + 1) / 4)
    assert m["n_pairs"] == 4 and 0 < m["p_value_vs_chance"] <= 1
    strong = pair_metrics([1.0] * 30, [0.0] * 30)
    assert strong["pairwise_accuracy"] == 1.0 and strong["p_value_vs_chance"] < 1e-6
    assert pair_metrics([], [])["n_pairs"] == 0


def test_reward_recipe_errors(tmp_path, tiny_model_dir):
    with pytest.raises(TunelabError, match="learns from pairs"):
        load_recipe(None, ["data.path=x.jsonl", "data.format=unpaired", "train.objective=reward"])
    unpaired = tmp_path / "u.jsonl"
    unpaired.write_text("".join(json.dumps({"prompt": f"q{i}", "completion": "a", "label": "good"}) + "\n"
                                for i in range(4)))
    from tunelab.pipeline import train

    recipe = load_recipe(None, [f"data.path={unpaired}", f"model.name={tiny_model_dir}", "train.objective=reward",
                                f"output.dir={tmp_path}"])
    with pytest.raises(TunelabError, match="unpaired good/bad labels"):
        train(recipe, "rm")
    with pytest.raises(TunelabError, match="does not support resumable checkpoints"):
        train(load_recipe(None, [f"data.path={unpaired}", f"model.name={tiny_model_dir}", "train.objective=reward",
                                 "train.save_every=5", f"output.dir={tmp_path}"]), "rm")


def test_encoder_reward_model_uses_the_plain_format(tmp_path):
    """An encoder has no chat template: tunelab renders `role: content` lines between [CLS] and [SEP]."""
    import torch
    from transformers import BertConfig, BertModel

    from tunelab.models import load_tokenizer
    from tunelab.pipeline import evaluate, train

    tok = load_tokenizer("all-minilm-l6-v2")
    folder = tmp_path / "tiny-bert"
    torch.manual_seed(0)
    BertModel(BertConfig(vocab_size=tok.vocab_size, hidden_size=32, num_hidden_layers=1, num_attention_heads=2,
                         intermediate_size=64, max_position_embeddings=128)).save_pretrained(folder)
    tok.save_pretrained(folder)
    recipe = load_recipe(None, [
        f"data.path={_pairs(tmp_path / 'pairs.jsonl', 40)}", "data.max_length=64", f"model.name={folder}",
        "model.precision=fp32", "method.name=full", "train.objective=reward", "train.max_steps=3",
        "train.batch_size=8", "train.lr=1e-3", "eval.batch_size=16", f"output.dir={tmp_path}", "output.name=enc"])
    run = train(recipe, "enc")
    assert json.loads((run / "reward.json").read_text())["input_format"] == "plain"
    assert not (run / "adapter").exists() and (run / "model" / "config.json").is_file()
    scorer = RewardScorer.load(run)
    ids = scorer.encode([{"role": "user", "content": "hello"}], "thanks")
    assert ids[0] == tok.cls_token_id and ids[-1] == tok.sep_token_id
    assert tok.decode(ids[1:-1]) == "user : hello assistant : thanks"
    assert evaluate(run)["tuned"]["n_pairs"] > 0
    too_long = load_recipe(None, [f"data.path={tmp_path / 'pairs.jsonl'}", "data.max_length=512",
                                  f"model.name={folder}", "train.objective=reward", f"output.dir={tmp_path}"])
    with pytest.raises(TunelabError, match="exceeds what .* can read \\(128 positions\\)"):
        train(too_long, "enc2")
