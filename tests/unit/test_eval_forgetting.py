"""Learning vs forgetting: general sets read, scored on base and tuned, compared, reported."""

from __future__ import annotations

import json
import math

import pytest
import torch

from tunelab.config import load_recipe
from tunelab.config.specs import GeneralSetSpec
from tunelab.errors import TunelabError
from tunelab.evaluation.forgetting import (
    evaluate_general,
    load_instruction_set,
    load_text_set,
    relative_changes,
    tradeoff_rows,
)
from tunelab.evaluation.perplexity import sliding_window_perplexity


@pytest.fixture()
def text_file(tmp_path):
    path = tmp_path / "general.txt"
    path.write_bytes(b"Rivers run to the sea.\r\n\r\n  Mountains rise above the clouds.  \r\nA third line.\r\n")
    return path


@pytest.fixture()
def self_instruct(tmp_path):
    rows = [{"id": f"t{i}", "instruction": f"Name a colour number {i}.",
             "instances": [{"input": "", "output": f"Colour {i} is blue."}, {"input": "x", "output": "unused"}]}
            for i in range(4)]
    path = tmp_path / "tasks.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def test_text_set_reads_documents(text_file):
    assert load_text_set(text_file, None) == ["Rivers run to the sea.", "Mountains rise above the clouds.",
                                              "A third line."]
    assert load_text_set(text_file, 2) == ["Rivers run to the sea.", "Mountains rise above the clouds."]
    with pytest.raises(TunelabError, match="not found") as e:
        load_text_set(text_file.parent / "missing.txt", None)
    assert e.value.where == "eval.general.path"
    (text_file.parent / "blank.txt").write_text("\n \n")
    with pytest.raises(TunelabError, match="no non-empty line"):
        load_text_set(text_file.parent / "blank.txt", None)
    (text_file.parent / "latin.txt").write_bytes("caf\xe9\n".encode("latin-1"))
    with pytest.raises(TunelabError, match="not utf-8"):
        load_text_set(text_file.parent / "latin.txt", None)
    assert load_text_set(text_file.parent / "latin.txt", None, "latin-1") == ["café"]


def test_instruction_sets_in_self_instruct_and_chat_formats(self_instruct, chat_jsonl):
    rows = load_instruction_set(GeneralSetSpec(name="si", kind="instructions", path=str(self_instruct),
                                               max_samples=3))
    assert len(rows) == 3
    assert rows[1].messages == [{"role": "user", "content": "Name a colour number 1."},
                                {"role": "assistant", "content": "Colour 1 is blue."}]
    chat = load_instruction_set(GeneralSetSpec(name="c", kind="instructions", path=str(chat_jsonl), max_samples=None))
    assert len(chat) == 60 and chat[0].reference == "red"
    with pytest.raises(TunelabError, match="not found"):
        load_instruction_set(GeneralSetSpec(name="c", kind="instructions", path=str(chat_jsonl) + ".nope"))


def test_relative_changes_and_the_worst_set():
    base = {"a": {"perplexity": 10.0, "nll": 2.0, "tokens": 5, "accuracy": 0.5},
            "b": {"perplexity": 20.0, "nll": 3.0, "tokens": 5, "accuracy": 0.8}}
    tuned = {"a": {"perplexity": 11.0, "nll": 2.1, "tokens": 5, "accuracy": 0.4},
             "b": {"perplexity": 19.0, "nll": 2.9, "tokens": 5, "accuracy": 0.8}}
    change, worst = relative_changes(base, tuned)
    assert change["a"] == pytest.approx({"perplexity": 0.1, "nll": 0.05, "accuracy": -0.2})
    assert change["b"]["perplexity"] == pytest.approx(-0.05) and "tokens" not in change["b"]
    # Worst: the largest perplexity increase, but the largest accuracy decrease.
    assert worst == pytest.approx({"perplexity": 0.1, "nll": 0.05, "accuracy": -0.2})


def _recipe(tmp_path, chat_jsonl, tiny_model_dir, sets, *extra):
    return load_recipe(None, [f"data.path={chat_jsonl}", f"model.name={tiny_model_dir}",
                              f"output.dir={tmp_path / 'runs'}", "output.name=f", f"eval.general={sets}", *extra])


def test_scores_match_the_reference_functions(tmp_path, tiny_model, tokenizer, text_file, self_instruct, chat_jsonl,
                                              tiny_model_dir):
    from tunelab.data.tokenize import encode_example
    from tunelab.training.loss import mean_nll

    sets = f"[{{name: text, kind: perplexity, path: {text_file}}}, {{name: si, kind: instructions, path: {self_instruct}}}]"
    recipe = _recipe(tmp_path, chat_jsonl, tiny_model_dir, sets, "eval.perplexity.max_length=8",
                     "eval.perplexity.stride=4")
    # Base and tuned are the same weights: every change is exactly zero.
    out = evaluate_general(tmp_path, recipe, tiny_model, tokenizer, device="cpu", precision="fp32", base=tiny_model)
    assert out["change"] == {"text": {"perplexity": 0.0, "nll": 0.0}, "si": {"perplexity": 0.0, "nll": 0.0}}
    ref = sliding_window_perplexity(tiny_model, tokenizer, load_text_set(text_file, None), 8, 4, "cpu")
    assert out["tuned"]["text"]["perplexity"] == pytest.approx(ref["perplexity"], rel=1e-9)
    assert out["tuned"]["text"]["tokens"] == ref["tokens"] and out["tuned"]["text"]["n_examples"] == 3
    rows = [encode_example(ex, tokenizer, 1024, "truncate") for ex in load_instruction_set(recipe.eval.general[1])]
    nll = mean_nll(tiny_model, rows, recipe.eval.batch_size, tokenizer.pad_token_id, "cpu", "fp32")
    assert out["tuned"]["si"]["nll"] == pytest.approx(nll) and out["tuned"]["si"]["perplexity"] == pytest.approx(
        math.exp(nll))
    assert out["tuned"]["si"]["tokens"] == sum(r["n_loss"] for r in rows)


def test_a_changed_model_shows_its_change(tmp_path, tiny_model, tokenizer, text_file, chat_jsonl, tiny_model_dir):
    import copy

    sets = f"[{{name: text, kind: perplexity, path: {text_file}}}]"
    recipe = _recipe(tmp_path, chat_jsonl, tiny_model_dir, sets)
    tuned = copy.deepcopy(tiny_model)
    with torch.no_grad():
        tuned.model.norm.weight.mul_(3.0)  # sharper logits: a different perplexity
    out = evaluate_general(tmp_path, recipe, tuned, tokenizer, device="cpu", precision="fp32", base=tiny_model)
    b, t = out["base"]["text"]["perplexity"], out["tuned"]["text"]["perplexity"]
    assert b != t and out["change"]["text"]["perplexity"] == pytest.approx((t - b) / b)
    assert out["worst"]["perplexity"] == out["change"]["text"]["perplexity"]


def test_bad_sets_fail_before_any_model_runs(tmp_path, chat_jsonl, tiny_model_dir, tokenizer):
    class Untouchable:  # a model that must not be called
        def parameters(self):
            raise AssertionError("a model ran before the sets were read")

    sets = f"[{{name: a, kind: perplexity, path: {tmp_path / 'nope.txt'}}}]"
    recipe = _recipe(tmp_path, chat_jsonl, tiny_model_dir, sets)
    with pytest.raises(TunelabError, match="not found"):
        evaluate_general(tmp_path, recipe, Untouchable(), tokenizer, device="cpu", precision="fp32")
    for bad, match in (("[{name: a, kind: perplexity, path: x}, {name: a, kind: perplexity, path: y}]", "must differ"),
                       ("[{name: worst, kind: perplexity, path: x}]", "reserved"),
                       ("[{name: 'a b', kind: perplexity, path: x}]", "pattern"),
                       ("[{name: a, kind: rouge, path: x}]", "perplexity")):
        with pytest.raises(TunelabError, match=match):
            _recipe(tmp_path, chat_jsonl, tiny_model_dir, bad)


def test_tradeoff_rows():
    ev = {"base": {"accuracy": 0.4, "main": "accuracy"}, "tuned": {"accuracy": 0.9, "main": "accuracy"},
          "general": {"base": {"w": {"perplexity": 10.0}}, "tuned": {"w": {"perplexity": 10.5}},
                      "change": {"w": {"perplexity": 0.05}}}}
    (row,) = tradeoff_rows(ev)
    assert row["task_gain"] == pytest.approx(0.5) and row["perplexity_change"] == 0.05 and row["set"] == "w"
    assert row["general_base"] == 10.0 and row["general_tuned"] == 10.5
    assert tradeoff_rows({"tuned": {"main": "accuracy", "accuracy": 0.9}}) == []


def test_general_sets_in_a_run(tmp_path, chat_jsonl, tiny_model_dir, text_file):
    from tunelab import pipeline

    sets = (f"[{{name: text, kind: perplexity, path: {text_file}}}, "
            f"{{name: chat, kind: instructions, path: {chat_jsonl}, max_samples: 8}}]")
    recipe = _recipe(tmp_path, chat_jsonl, tiny_model_dir, sets, "train.max_steps=2", "train.batch_size=4",
                     "eval.max_samples=4", "eval.max_new_tokens=2", "data.split.test=0.2",
                     "gate=['general.worst.perplexity <= 50%']")
    run = pipeline.run(recipe, "f")
    general = json.loads((run / "eval" / "metrics.json").read_text())["general"]
    assert set(general) == {"base", "tuned", "change", "worst"} and set(general["tuned"]) == {"text", "chat"}
    assert general["tuned"]["chat"]["n_examples"] == 8
    report = (run / "report.md").read_text()
    assert "## Learning and forgetting" in report and "| text |" in report
    assert (run / "plots" / "tradeoff.png").is_file()
