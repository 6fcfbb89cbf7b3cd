"""Prompting baselines: shot selection, deterministic prompts, chain-of-thought extraction, the run's output."""

from __future__ import annotations

import json

import numpy as np
import pytest

from tunelab.config import load_recipe
from tunelab.config.specs import BaselinesSpec, DataSpec, SplitSpec
from tunelab.data import prepare_data
from tunelab.data.records import Example
from tunelab.errors import TunelabError
from tunelab.evaluation.generate import render_prompt
from tunelab.evaluation.icl import (
    build_cot_prompts,
    build_few_shot_prompts,
    few_shot_messages,
    run_baselines,
    select_random,
    select_similar,
    strip_shared_affixes,
    variant_names,
)


@pytest.fixture()
def splits(chat_jsonl, tokenizer):
    data = prepare_data(DataSpec(path=str(chat_jsonl), split=SplitSpec(validation=0.1, test=0.2)), tokenizer)
    return data.splits["train"], data.splits["test"]


def _ex(question: str, answer: str, where: str, system: str | None = None) -> Example:
    msgs = ([{"role": "system", "content": system}] if system else []) + [
        {"role": "user", "content": question}, {"role": "assistant", "content": answer}]
    return Example(messages=msgs, text=None, where=where)


def test_variant_names_follow_the_spec():
    assert variant_names(BaselinesSpec()) == ["zero_shot", "5_shot", "cot"]
    assert variant_names(BaselinesSpec(zero_shot=False, few_shot=[1, 3], cot=False)) == ["1_shot", "3_shot"]
    assert BaselinesSpec(few_shot=4).few_shot == [4]  # one k as a number
    for bad in ([0], [2, 2]):
        with pytest.raises(ValueError):
            BaselinesSpec(few_shot=bad)


def test_shots_come_from_the_pool_never_from_the_evaluated_rows(splits):
    train, test = splits
    prompts, picked = build_few_shot_prompts(test, train, 3, BaselinesSpec(seed=0))
    train_where, test_where = {ex.where for ex in train}, {ex.where for ex in test}
    for idx in picked:
        assert len(idx) == len(set(idx)) == 3
        assert {train[i].where for i in idx} <= train_where and not {train[i].where for i in idx} & test_where
    # The shots' questions and answers are earlier turns, the test question is the last one.
    first = prompts[0]
    assert [m["role"] for m in first] == ["user", "assistant"] * 3 + ["user"]
    assert first[-1] == test[0].prompt_messages[-1]
    assert first[1]["content"] == train[picked[0][0]].reference


def test_a_duplicate_of_the_question_is_never_its_own_shot():
    question = _ex("What color is item 7?", "red", "t:1")
    pool = [_ex(f"What color is item {i}?", "blue", f"p:{i}") for i in range(3)] + [_ex(
        "What color is item 7?", "red", "p:dup")]
    for seed in range(50):
        (idx,) = select_random([question], pool, 3, seed)
        assert 3 not in idx
    vecs = np.eye(4, dtype=np.float32)
    (idx,) = select_similar(vecs[3:4], vecs, 2, [{3}])
    assert 3 not in idx


def test_same_seed_gives_byte_identical_prompts(splits, tokenizer):
    train, test = splits

    def rendered(seed, rows):
        prompts, _ = build_few_shot_prompts(rows, train, 4, BaselinesSpec(seed=seed))
        return [render_prompt(tokenizer, p) for p in prompts]

    first = rendered(0, test)
    assert first == rendered(0, test)
    # A row's shots depend on the seed and the row, not on which other rows are evaluated or their order.
    assert rendered(0, test[::-1])[::-1] == first and rendered(0, test[2:3]) == first[2:3]
    assert rendered(1, test) != first


def test_system_turn_stays_first_and_shots_lose_theirs():
    shot = _ex("2+2?", "4", "p:1", system="Be brief.")
    question = _ex("3+3?", "6", "t:1", system="Be brief.")
    msgs = few_shot_messages(question, [shot])
    assert msgs == [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "2+2?"},
                    {"role": "assistant", "content": "4"}, {"role": "user", "content": "3+3?"}]
    assert question.prompt_messages[-1]["content"] == "3+3?"  # the example itself is not modified


def test_similar_selection_orders_by_cosine_and_ties_by_index():
    pool = np.array([[1, 0], [0.6, 0.8], [0, 1], [0.6, 0.8]], dtype=np.float32)
    query = np.array([[0.8, 0.6]], dtype=np.float32)
    # Similarities 0.8, 0.96, 0.6, 0.96: the two 0.96 tie (the earlier wins), the most similar comes last.
    assert select_similar(query, pool, 3, [set()]) == [[0, 3, 1]]
    assert select_similar(query, pool, 2, [{1}]) == [[0, 3]]


def test_shared_template_wording_is_stripped_before_embedding():
    texts = ["Classify: I am happy\nEmotion:", "Classify: so sad today\nEmotion:", "Classify: x\nEmotion:"]
    assert strip_shared_affixes(texts) == ["I am happy", "so sad today", "x"]
    assert strip_shared_affixes(["same", "same"]) == ["same", "same"]  # nothing left: keep the text
    assert strip_shared_affixes(["only one"]) == ["only one"]


def test_similar_selection_with_the_packaged_encoder():
    template = "Classify the topic.\nText: {}\nTopic:"
    pool = [_ex(template.format(t), lab, f"p:{i}") for i, (t, lab) in enumerate([
        ("the stock market fell sharply", "finance"), ("I love my dog so much", "pets"),
        ("interest rates rose again", "finance"), ("my cat sleeps all day", "pets")])]
    question = _ex(template.format("my puppy chewed my shoes"), "pets", "t:1")
    _, picked = build_few_shot_prompts([question], pool, 2, BaselinesSpec(selection="similar"))
    assert sorted(picked[0]) == [1, 3]  # the two pet sentences, not the finance ones


def test_cot_appends_the_instruction_to_the_last_user_turn():
    ex = _ex("Is 7 prime?", "yes", "t:1", system="sys")
    (prompt,) = build_cot_prompts([ex], "Think step by step.")
    assert prompt[-1]["content"] == "Is 7 prime?\n\nThink step by step." and prompt[0]["content"] == "sys"
    assert ex.prompt_messages[-1]["content"] == "Is 7 prime?"


def _recipe(tmp_path, chat_jsonl, tiny_model_dir, *extra):
    return load_recipe(None, [
        f"data.path={chat_jsonl}", f"model.name={tiny_model_dir}", f"output.dir={tmp_path / 'runs'}",
        "output.name=b", "data.split.test=0.2", "eval.max_new_tokens=3", "eval.baselines.enabled=true",
        "eval.task=label", *extra])


def test_cot_answers_are_extracted_and_scored(tmp_path, splits, tiny_model, tokenizer, chat_jsonl, tiny_model_dir,
                                              monkeypatch):
    import tunelab.evaluation.generate as generate

    train, test = splits
    seen = []

    def reasoning(model, tok, prompts, max_new_tokens, batch_size, device="cpu", label=""):
        seen.extend(prompts)
        # Right answers for the first half only; the label is named in prose before the final line.
        return [f"The item could be red. Answer: {ex.reference}" if i < len(test) // 2 else "I am not sure."
                for i, ex in enumerate(test)]

    monkeypatch.setattr(generate, "generate_answers", reasoning)
    recipe = _recipe(tmp_path, chat_jsonl, tiny_model_dir, "eval.baselines.zero_shot=false",
                     "eval.baselines.few_shot=[]")
    (tmp_path / "run" / "eval").mkdir(parents=True)
    out = run_baselines(tmp_path / "run", recipe, examples=test, pool=train, tokenizer=tokenizer, task="label",
                        split="test", device="cpu", model=tiny_model)
    assert list(out) == ["cot"]
    assert out["cot"]["accuracy"] == pytest.approx((len(test) // 2) / len(test))
    assert out["cot"]["invalid_rate"] == pytest.approx(1 - (len(test) // 2) / len(test))
    assert all(p[-1]["content"].endswith("'Answer: X'.") for p in seen)
    rows = [json.loads(x) for x in (tmp_path / "run" / "eval" / "baselines.jsonl").read_text().splitlines()]
    assert rows[0]["answer"] == test[0].reference and rows[0]["output"].startswith("The item could be red.")


def test_shots_are_dropped_to_fit_the_context(tmp_path, splits, tiny_model, tokenizer, chat_jsonl, tiny_model_dir):
    train, test = splits
    tiny_model.config.max_position_embeddings = 90  # room for about one shot with the question
    recipe = _recipe(tmp_path, chat_jsonl, tiny_model_dir, "eval.baselines.zero_shot=false",
                     "eval.baselines.cot=false", "eval.baselines.few_shot=[5]")
    out = run_baselines(tmp_path, recipe, examples=test[:3], pool=train, tokenizer=tokenizer, task="label",
                        split="test", device="cpu", model=tiny_model)
    assert 0 < out["5_shot"]["shots_used"] < 5
    assert out["5_shot"]["prompt_tokens"] + 3 <= 90


def test_bad_pools_and_tasks_are_errors(tmp_path, splits, tiny_model, tokenizer, chat_jsonl, tiny_model_dir):
    train, test = splits
    recipe = _recipe(tmp_path, chat_jsonl, tiny_model_dir, "eval.baselines.pool=validation")
    kwargs = {"tokenizer": tokenizer, "device": "cpu", "model": tiny_model, "examples": test}
    with pytest.raises(TunelabError, match="evaluated split") as e:
        run_baselines(tmp_path, recipe, pool=train, task="label", split="validation", **kwargs)
    assert e.value.where == "eval.baselines.pool"
    with pytest.raises(TunelabError, match="no rows to take shots from"):
        run_baselines(tmp_path, recipe, pool=[], task="label", split="test", **kwargs)
    with pytest.raises(TunelabError, match="task is 'perplexity'"):
        run_baselines(tmp_path, recipe, pool=train, task="perplexity", split="test", **kwargs)
    with pytest.raises(TunelabError, match="its own evaluation"):
        _recipe(tmp_path, chat_jsonl, tiny_model_dir, "train.objective=classify")
    with pytest.raises(TunelabError, match="'train' or 'validation'"):
        _recipe(tmp_path, chat_jsonl, tiny_model_dir, "eval.baselines.pool=test")


def test_baselines_in_a_run(tmp_path, chat_jsonl, tiny_model_dir):
    from tunelab import pipeline

    recipe = _recipe(tmp_path, chat_jsonl, tiny_model_dir, "train.max_steps=2", "train.batch_size=4",
                     "eval.max_samples=5", "eval.baselines.few_shot=[2]", "eval.baselines.cot_max_new_tokens=6")
    run = pipeline.run(recipe, "b")
    ev = json.loads((run / "eval" / "metrics.json").read_text())
    assert list(ev["baselines"]) == ["zero_shot", "2_shot", "cot"]
    for name, metrics in ev["baselines"].items():
        assert metrics["n_examples"] == 5 and len(metrics["accuracy_ci"]) == 2 and metrics["main"] == "accuracy"
        assert metrics["prompt_tokens"] > 0, name
    assert ev["baselines"]["zero_shot"]["same_as"] == "base"
    assert ev["baselines"]["2_shot"]["prompt_tokens"] > ev["baselines"]["zero_shot"]["prompt_tokens"]
    rows = [json.loads(x) for x in (run / "eval" / "baselines.jsonl").read_text().splitlines()]
    tested = {json.loads(x)["where"] for x in (run / "eval" / "samples.jsonl").read_text().splitlines()}
    shots = {w for r in rows if r["variant"] == "2_shot" for w in r["shots"]}
    assert len(rows) == 15 and shots and not shots & tested
    report = (run / "report.md").read_text()
    assert "## Fine-tuning vs prompting" in report and "2-shot (random)" in report
    assert (run / "plots" / "variants.png").is_file()


def test_k_shot_uses_the_task_scoring_of_base_and_tuned(tmp_path, splits, tiny_model, tokenizer, chat_jsonl,
                                                       tiny_model_dir):
    train, test = splits
    labels = ["red", "green", "blue", "black", "white", "yellow"]
    recipe = _recipe(tmp_path, chat_jsonl, tiny_model_dir, "eval.label_scoring=loglik", f"eval.labels={labels}",
                     "eval.baselines.cot=false", "eval.baselines.few_shot=[2]", "eval.metrics=[roc_auc]")
    out = run_baselines(tmp_path, recipe, examples=test[:4], pool=train, tokenizer=tokenizer, task="label",
                        split="test", device="cpu", model=tiny_model)
    # Labels scored by likelihood after the shots: every answer is a label, probabilities give ROC-AUC.
    assert "roc_auc" in out["2_shot"] and "roc_auc" in out["zero_shot"]
    rows = [json.loads(x) for x in (tmp_path / "eval" / "baselines.jsonl").read_text().splitlines()]
    assert rows and all(r["output"] in labels for r in rows)


def test_multiple_choice_rows_with_shots_and_reasoning(tmp_path, tiny_model, tokenizer, chat_jsonl, tiny_model_dir,
                                                       monkeypatch):
    import tunelab.evaluation.generate as generate

    def mc(i):
        options = ["a cat", "a car", "a cloud"]
        ex = _ex(f"Question {i}: which one purrs? Options: a cat, a car, a cloud", "a cat", f"q:{i}")
        ex.raw = {"options": options, "answer": 0}
        return ex

    pool, test = [mc(i) for i in range(6)], [mc(i) for i in range(6, 10)]
    monkeypatch.setattr(generate, "generate_answers", lambda *a, **k: ["It meows. Answer: a cat"] * 2 + ["no"] * 2)
    recipe = _recipe(tmp_path, chat_jsonl, tiny_model_dir, "eval.task=choice", "eval.baselines.few_shot=[2]")
    out = run_baselines(tmp_path, recipe, examples=test, pool=pool, tokenizer=tokenizer, task="choice",
                        split="test", device="cpu", model=tiny_model)
    assert out["cot"]["accuracy"] == 0.5 and out["cot"]["extract_failed_rate"] == 0.5
    assert out["2_shot"]["task"] == "choice" and 0 <= out["2_shot"]["accuracy"] <= 1
    assert "accuracy_norm" in out["2_shot"]  # scored as base and tuned are: options by likelihood
