"""Objectives as recipes: continued pretraining (blocks), classification (encoder and decoder), multi-task
mixtures, curriculum ordering, and the errors of impossible combinations. Tiny random models only."""

from __future__ import annotations

import csv
import json
import random

import pytest
import torch

from tunelab import pipeline
from tunelab.config import load_recipe
from tunelab.data import prepare_data
from tunelab.data.mixture import quotas
from tunelab.errors import TunelabError
from tunelab.recipes.classify import ClassifyRecipe, predict_logits
from tunelab.recipes.classify_eval import load_classifier_run, macro_f1_ci
from tunelab.training.batching import plan_batches

# One thread: the test machine's cores are shared, and oversubscribed OpenMP threads are ~10x slower.
# No experiment tracker: these tests are about the objectives.
FAST = ["model.precision=fp32", "model.threads=1", "output.tracking=[]"]


@pytest.fixture(autouse=True)
def _own_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("TUNELAB_DATA_CACHE", str(tmp_path / "cache"))


@pytest.fixture(scope="module")
def tiny_encoder_dir(tmp_path_factory):
    """A 2-layer, hidden-32 random BERT with the all-MiniLM-L6-v2 tokenizer, saved as a model folder."""
    from transformers import BertConfig, BertModel

    from tunelab.models import load_tokenizer

    tok = load_tokenizer("all-minilm-l6-v2")
    torch.manual_seed(0)
    cfg = BertConfig(vocab_size=tok.vocab_size, hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                     intermediate_size=64, max_position_embeddings=128)
    out = tmp_path_factory.mktemp("tiny-bert")
    BertModel(cfg).save_pretrained(out)
    tok.save_pretrained(out)
    return out


def _jsonl(path, rows):
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    return path


def _toy_labels(tmp_path, n=100):
    """Plain-text rows whose label is decided by a keyword (three times) among random filler words."""
    rng = random.Random(0)
    filler = ["the", "a", "of", "to", "and", "in", "is", "was", "it", "for", "on", "with", "as", "at", "by",
              "this", "that", "from"]
    rows = []
    for i in range(n):
        word = ("sunny", "rainy")[i % 2]
        words = [*rng.sample(filler, 3), word, word, word]
        rng.shuffle(words)
        rows.append({"text": " ".join(words), "label": "pos" if word == "sunny" else "neg"})
    return _jsonl(tmp_path / "toy.jsonl", rows)


def _corpus(tmp_path, n=40):
    """Varied one-line documents from a small grammar (learnable, and no two are near-duplicates)."""
    rng = random.Random(0)
    who, verb, what = ["the cat", "a dog", "my aunt", "the pilot", "our baker"], ["sees", "paints", "sells",
                                                                                  "finds"], ["boats", "bread", "maps"]
    docs = [" and ".join(f"{rng.choice(who)} {rng.choice(verb)} {rng.choice(what)}" for _ in range(1 + i % 4))
            + f" on day {i}." for i in range(n)]
    path = tmp_path / "corpus.txt"
    path.write_text("\n".join(docs) + "\n", encoding="utf-8")
    return path


# ------------------------------------------------------------------------------------------- pretraining


def test_blocks_join_documents_with_eos_and_label_every_token(tmp_path, tokenizer):
    path = _corpus(tmp_path)
    spec = load_recipe(None, [f"data.path={path}", "train.objective=pretrain", "data.max_length=32",
                              "data.split.validation=0", "data.split.test=0"]).data
    assert spec.packing == "blocks"
    data = prepare_data(spec, tokenizer)
    blocks = data.encoded["train"]
    assert blocks and all(len(b["input_ids"]) == 32 and b["labels"] == b["input_ids"] for b in blocks)
    joined = [t for ex in data.splits["train"]
              for t in [*tokenizer(ex.text, add_special_tokens=False)["input_ids"], tokenizer.eos_token_id]]
    flat = [t for b in blocks for t in b["input_ids"]]
    assert flat == joined[:len(flat)]  # documents in order, EOS after each, nothing padded
    assert flat.count(tokenizer.eos_token_id) >= len(data.splits["train"]) - 2
    stats = data.summary["splits"]["train"]["packing"]
    assert stats["tail_tokens_dropped"] == len(joined) - len(flat) < 32
    assert stats["blocks"] == len(blocks) and data.summary["splits"]["train"]["kept"] == 40  # none dropped


def test_blocks_refuse_chat_data(tokenizer, chat_jsonl):
    spec = load_recipe(None, [f"data.path={chat_jsonl}", "data.packing=blocks"]).data
    with pytest.raises(TunelabError, match="plain-text") as e:
        prepare_data(spec, tokenizer)
    assert "data.packing" in e.value.where


def test_pretrain_loss_falls_and_evaluation_is_perplexity_without_generation(tmp_path, tiny_model_dir,
                                                                             monkeypatch):
    import tunelab.evaluation.runner as runner

    recipe = load_recipe(None, [
        f"data.path={_corpus(tmp_path, 60)}", f"model.name={tiny_model_dir}", f"output.dir={tmp_path / 'runs'}",
        "output.name=p", "train.objective=pretrain", "data.max_length=32", "train.max_steps=12",
        "train.batch_size=4", "train.lr=3e-3", "train.log_every=1", "train.warmup_ratio=0", "method.name=full",
        *FAST,
    ])
    run_dir = pipeline.train(recipe, "p")
    rows = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    losses = [r["loss"] for r in rows if "loss" in r]
    assert losses[-1] < losses[0] - 0.5
    assert [r["val_ppl"] for r in rows if "val_ppl" in r][-1] < rows[0]["val_ppl"]  # validation perplexity
    assert json.loads((run_dir / "data_summary.json").read_text())["splits"]["train"]["packing"]["blocks"] >= 10

    def no_generation(*args, **kwargs):
        raise AssertionError("pretraining runs are scored by perplexity, not generation")

    monkeypatch.setattr("tunelab.evaluation.generate.generate_answers", no_generation)
    result = runner.evaluate_run(run_dir)
    assert result["task"] == "perplexity" and result["n"] > 0
    assert result["tuned"]["perplexity"] < result["base"]["perplexity"]


# ---------------------------------------------------------------------------------------- classification


def _classify(tmp_path, model_dir, *extra):
    return load_recipe(None, [
        f"data.path={_toy_labels(tmp_path)}", f"model.name={model_dir}", f"output.dir={tmp_path / 'runs'}",
        "output.name=c", "train.objective=classify", "train.batch_size=8", "train.eval_every=10",
        "data.split.validation=0.15", "data.split.test=0.15", *FAST, *extra,
    ])


def _train(recipe, tmp_path):
    run_dir = tmp_path / "runs" / "c"
    run_dir.mkdir(parents=True)
    rec = ClassifyRecipe(recipe, run_dir)
    rec.setup()
    head_before = {n: p.detach().clone() for n, p in rec.model.named_parameters() if p.requires_grad}
    summary = rec.train()
    rec.save(summary, {"train_s": summary["train_time_s"]})
    return rec, run_dir, head_before


def test_encoder_classifier_learns_saves_reloads_and_evaluates(tmp_path, tiny_encoder_dir):
    recipe = _classify(tmp_path, tiny_encoder_dir, "train.max_steps=20", "train.lr=1e-2")
    rec, run_dir, _ = _train(recipe, tmp_path)
    evals = rec.metrics.eval_rows()  # step 0 is the random head
    assert evals[-1]["val_accuracy"] >= 0.9 and evals[-1]["val_loss"] < 0.5 * evals[0]["val_loss"]
    assert json.loads((run_dir / "labels.json").read_text())["labels"] == ["neg", "pos"]
    assert (run_dir / "adapter" / "adapter_model.safetensors").is_file()
    # Reloaded from the run folder, the classifier gives the same logits.
    rows = rec.data.encoded["test"]
    model, _, labels = load_classifier_run(run_dir)
    expected = predict_logits(rec.model, rows, rec.tokenizer.pad_token_id, 8, "cpu", "fp32")
    torch.testing.assert_close(predict_logits(model, rows, rec.tokenizer.pad_token_id, 8, "cpu", "fp32"), expected)
    # `tunelab eval RUN` and the report work on a classification run.
    result = pipeline.evaluate(run_dir)
    assert result["task"] == "classify" and result["tuned"]["accuracy"] >= 0.9
    assert result["base"]["accuracy"] <= 0.6 and len(result["tuned"]["macro_f1_ci"]) == 2
    html, _ = pipeline.build_report(run_dir)
    assert "accuracy" in html.read_text()


def test_decoder_classifier_trains_its_new_head_with_full_finetuning(tmp_path, tiny_model_dir):
    recipe = _classify(tmp_path, tiny_model_dir, "method.name=full", "train.max_steps=20", "train.lr=3e-3")
    rec, run_dir, before = _train(recipe, tmp_path)
    evals = rec.metrics.eval_rows()
    assert evals[-1]["val_loss"] < evals[0]["val_loss"]
    after = dict(rec.model.named_parameters())
    assert not torch.equal(before["score.weight"], after["score.weight"])
    config = json.loads((run_dir / "model" / "config.json").read_text())
    assert config["pad_token_id"] == rec.tokenizer.pad_token_id and config["id2label"] == {"0": "neg", "1": "pos"}
    model, tok, _ = load_classifier_run(run_dir)
    rows = rec.data.encoded["validation"]
    torch.testing.assert_close(predict_logits(model, rows, tok.pad_token_id, 8, "cpu", "fp32"),
                               predict_logits(rec.model, rows, tok.pad_token_id, 8, "cpu", "fp32"))


@pytest.mark.parametrize("method", ["lora", "full", "freeze", "ia3", "prompt", "prefix", "ptuning"])
def test_every_method_trains_and_saves_a_classifier(tmp_path, tiny_encoder_dir, method):
    extra = ["method.freeze.top_k_blocks=1"] if method == "freeze" else []
    rec, run_dir, before = _train(_classify(tmp_path, tiny_encoder_dir, f"method.name={method}",
                                            "train.max_steps=2", "train.eval_every=100", *extra), tmp_path)
    after = dict(rec.model.named_parameters())
    head = [n for n in before if "classifier" in n]
    assert head and all(not torch.equal(before[n], after[n]) for n in head)  # the new head learned
    assert (run_dir / ("model" if method in ("full", "freeze") else "adapter")).is_dir()
    model, tok, _ = load_classifier_run(run_dir)
    rows = rec.data.encoded["validation"]
    torch.testing.assert_close(predict_logits(model, rows, tok.pad_token_id, 8, "cpu", "fp32"),
                               predict_logits(rec.model, rows, tok.pad_token_id, 8, "cpu", "fp32"))


def test_macro_f1_interval_brackets_the_estimate():
    from sklearn.metrics import f1_score

    rng = random.Random(1)
    gold = [rng.randrange(3) for _ in range(300)]
    pred = [g if rng.random() < 0.7 else rng.randrange(3) for g in gold]
    lo, hi = macro_f1_ci(gold, pred, 3)
    assert lo < f1_score(gold, pred, average="macro") < hi and hi - lo < 0.2


# ----------------------------------------------------------------------------------------------- mixtures


def _sources(tmp_path):
    alpaca = _jsonl(tmp_path / "alpaca.jsonl",
                    [{"instruction": f"Add {i} and 1.", "output": str(i + 1)} for i in range(60)])
    qa = tmp_path / "qa.csv"
    with qa.open("w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["question", "answer"])
        w.writerows([f"Capital number {i}?", f"City {i}"] for i in range(60))
    chat = _jsonl(tmp_path / "chat.jsonl", [{"messages": [{"role": "user", "content": f"Say {i} twice."},
                                                          {"role": "assistant", "content": f"{i} {i}"}]}
                                            for i in range(30)])
    return alpaca, qa, chat


def _mixture(tmp_path, weights, *extra):
    alpaca, qa, chat = _sources(tmp_path)
    entries = (f"[{{path: {alpaca}, weight: {weights[0]}}}, "
               f"{{path: {qa}, weight: {weights[1]}, columns: {{prompt: question, completion: answer}}, "
               f"prompt_template: 'Q: {{prompt}}'}}, {{path: {chat}, weight: {weights[2]}, name: chat}}]")
    return load_recipe(None, [f"data.mixture={entries}", "data.split.stratify=none", *extra]).data


def test_mixture_samples_by_weight_with_its_own_format_per_source(tmp_path, tokenizer, monkeypatch):
    spec = _mixture(tmp_path, (1, 2, 1), "data.limit=80")
    data = prepare_data(spec, tokenizer)
    mix = data.summary["mixture"]
    assert [m["format"] for m in mix] == ["alpaca", "prompt_completion", "messages"]
    assert [m["train_sampled"] for m in mix] == quotas([1, 2, 1], 80) == [20, 40, 20]
    assert len(data.encoded["train"]) == 80
    by_source = {name: sum(ex.where.startswith(str(tmp_path / name)) for ex in data.splits["train"])
                 for name in ("alpaca.jsonl", "qa.csv", "chat.jsonl")}
    assert by_source == {"alpaca.jsonl": 20, "qa.csv": 40, "chat.jsonl": 20}
    assert all(ex.messages[-2]["content"].startswith("Q: ") for ex in data.splits["train"] if "qa.csv" in ex.where)
    # Validation and test are split per source: every source is held out, and counted on its own.
    for split in ("validation", "test"):
        assert {ex.where.split(":")[0].rsplit("/", 1)[-1] for ex in data.splits[split]} == set(by_source)
        assert sum(m["splits"][split]["kept"] for m in mix) == len(data.encoded[split])
    # Deterministic: rebuilt from scratch (fresh cache), the same rows in the same order.
    monkeypatch.setenv("TUNELAB_DATA_CACHE", str(tmp_path / "cache2"))
    again = prepare_data(spec, tokenizer)
    assert not again.from_cache and again.encoded == data.encoded


def test_mixture_repeats_a_source_whose_share_exceeds_its_rows(tmp_path, tokenizer):
    data = prepare_data(_mixture(tmp_path, (1, 1, 6)), tokenizer)
    chat = data.summary["mixture"][2]
    assert chat["train_sampled"] > chat["train_available"]
    assert chat["splits"]["train"]["repeated"] == chat["train_sampled"] - chat["train_available"]
    assert data.summary["splits"]["train"]["repeated"] == chat["splits"]["train"]["repeated"]


def test_mixture_errors_name_the_entry(tmp_path, tokenizer):
    alpaca, qa, _ = _sources(tmp_path)
    with pytest.raises(TunelabError) as e:
        load_recipe(None, [f"data.mixture=[{{path: {alpaca}}}, {{path: {qa}, wieght: 2}}]"])
    assert e.value.where == "data.mixture[1].wieght" and "weight" in e.value.fix
    with pytest.raises(TunelabError) as e:
        prepare_data(load_recipe(None, [f"data.mixture=[{{path: {alpaca}}}, {{path: {tmp_path}/none.jsonl}}]"]).data,
                     tokenizer)
    assert e.value.where.startswith("data.mixture[1].path") and "not found" in e.value.what
    with pytest.raises(TunelabError) as e:  # the csv's columns are not mapped: its format cannot be told
        prepare_data(load_recipe(None, [f"data.mixture=[{{path: {alpaca}}}, {{path: {qa}}}]"]).data, tokenizer)
    assert e.value.where == "data.mixture[1].format"
    with pytest.raises(TunelabError, match="data.mixture"):
        load_recipe(None, [f"data.path={qa}", f"data.mixture=[{{path: {alpaca}}}]"])


# --------------------------------------------------------------------------------------------- curriculum


def test_curriculum_orders_the_first_epoch_easy_to_hard_then_shuffles():
    lengths = [random.Random(i).randrange(5, 500) for i in range(64)]
    first = [i for b in plan_batches(lengths, 4, "length_grouped", 0, 0, "length") for i in b]
    assert [lengths[i] for i in first] == sorted(lengths)
    second = [i for b in plan_batches(lengths, 4, "length_grouped", 0, 1, "length") for i in b]
    assert sorted(second) == list(range(64)) and [lengths[i] for i in second] != sorted(lengths)
    scores = [-x for x in lengths]
    by_score = [i for b in plan_batches(lengths, 4, "padded", 0, 0, "score", scores) for i in b]
    assert [scores[i] for i in by_score] == sorted(scores)
    with pytest.raises(TunelabError, match="score"):
        plan_batches(lengths, 4, "padded", 0, 0, "score", [None] * 64)


def test_score_column_feeds_the_sft_curriculum(tmp_path, tiny_model_dir):
    from tunelab.recipes.sft import SFTRecipe

    rows = [{"prompt": f"Question {i}?", "completion": f"Answer {i}.", "difficulty": (i * 7) % 40} for i in range(40)]
    rows[3]["difficulty"] = "hard"
    recipe = load_recipe(None, [
        f"data.path={_jsonl(tmp_path / 'scored.jsonl', rows)}", f"model.name={tiny_model_dir}",
        "data.score_column=difficulty", "train.curriculum=score", "train.batch_size=4", "data.split.test=0",
        f"output.dir={tmp_path}", *FAST,
    ])
    sft = SFTRecipe(recipe, tmp_path)
    sft.setup()
    assert sft.data.summary["rejected"].get("score is not a number") == 1
    *_, micro_batches = next(sft._steps())
    batch = micro_batches[0]
    easiest = min(r["score"] for r in sft.train_rows)
    first_ids = {tuple(r["input_ids"]) for r in sft.train_rows if r["score"] == easiest}
    assert tuple(batch["input_ids"][0][batch["attention_mask"][0].bool()].tolist()) in first_ids


# ------------------------------------------------------------------------------------------------- errors


def test_impossible_objective_combinations_name_the_keys(tmp_path, tiny_encoder_dir, chat_jsonl):
    from tunelab.recipes.objectives import recipe_class

    with pytest.raises(TunelabError, match="train.objective"):
        load_recipe(None, ["data.path=x", "train.objective=rlhf"])
    with pytest.raises(TunelabError) as e:
        load_recipe(None, ["data.path=x", "train.objective=classify", "data.packing=blocks"])
    assert e.value.where == "train.objective, data.packing"
    with pytest.raises(TunelabError) as e:
        load_recipe(None, ["data.path=x", "train.objective=pretrain", "data.packing=none"])
    assert e.value.where == "data.packing"
    with pytest.raises(TunelabError) as e:
        recipe_class(load_recipe(None, [f"data.path={chat_jsonl}", f"model.name={tiny_encoder_dir}"]))
    assert e.value.where == "model.name, train.objective"
    with pytest.raises(TunelabError) as e:
        recipe_class(_classify(tmp_path, tiny_encoder_dir, "train.batching=packed"))
    assert e.value.where == "train.objective"


@pytest.mark.parametrize(("overrides", "where"), [
    (["method.name=freeze", "method.freeze.train_head=false"], "method.freeze.train_head, train.objective"),
    (["method.lora.target_modules=[q_proj, v_proj]"], "method.lora.target_modules"),
])
def test_a_method_that_cannot_train_a_classifier_is_refused(tmp_path, tiny_encoder_dir, overrides, where):
    recipe = _classify(tmp_path, tiny_encoder_dir, "train.max_steps=1", *overrides)
    with pytest.raises(TunelabError) as e:
        ClassifyRecipe(recipe, tmp_path).setup()
    assert e.value.where == where


def test_rows_without_a_label_are_rejected_and_counted(tmp_path, tiny_encoder_dir):
    rows = [{"text": f"sentence {i}", **({"label": ("a", "b")[i % 2]} if i % 3 else {})} for i in range(30)]
    spec = load_recipe(None, [f"data.path={_jsonl(tmp_path / 'l.jsonl', rows)}", "train.objective=classify"]).data
    from tunelab.models import load_tokenizer

    data = prepare_data(spec, load_tokenizer(str(tiny_encoder_dir)), objective="classify")
    assert data.summary["rejected"] == {"missing label": 10}
    unlabeled = _jsonl(tmp_path / "u.jsonl", [{"text": f"sentence {i}"} for i in range(30)])
    recipe = load_recipe(None, [f"data.path={unlabeled}", f"model.name={tiny_encoder_dir}",
                                "train.objective=classify", f"output.dir={tmp_path / 'runs'}", *FAST])
    with pytest.raises(TunelabError, match="missing label"):
        pipeline.train(recipe, "u")


def test_cli_prints_one_line_and_exits_2_for_impossible_objectives(tmp_path, capsys):
    from tunelab.cli.main import main

    recipe = tmp_path / "r.yaml"
    recipe.write_text("data:\n  path: x.jsonl\ntrain:\n  objective: classify\n")
    assert main(["validate", str(recipe), "data.packing=blocks"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "train.objective, data.packing" in err[0]
    assert main(["validate", str(recipe), "data.path=null", "data.mixture=[{path: a.jsonl, wieght: 2}]"]) == 2
    assert "data.mixture[0].wieght" in capsys.readouterr().err


def test_perplexity_change_is_not_printed_as_percentage_points(capsys):
    pipeline.print_comparison({"task": "perplexity", "n": 3, "split": "test",
                               "base": {"perplexity": 79.4, "loss": 4.37},
                               "tuned": {"main": "perplexity", "perplexity": 43.2, "loss": 3.77}})
    out = capsys.readouterr().err  # the console writes to stderr
    assert "-36.2000" in out and "points" not in out
