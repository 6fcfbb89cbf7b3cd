"""Prompting baselines on the real default model and emotion rows: real chat template, shots, CoT extraction."""

from __future__ import annotations

import json

import pytest
import torch

from tunelab.config import load_recipe
from tunelab.data import prepare_data
from tunelab.evaluation.generate import render_prompt
from tunelab.evaluation.icl import build_few_shot_prompts, run_baselines
from tunelab.models import load_causal_lm, load_tokenizer

pytestmark = [pytest.mark.integration, pytest.mark.shared_data]


def test_baselines_on_emotion_rows(shared_data, tmp_path):
    d = shared_data / "emotion"
    recipe = load_recipe("examples/emotion_eval.yaml", [
        f"data.path={d / 'train.txt'}", f"data.test_path={d / 'test.txt'}", "data.limit=40", "data.eval_limit=4",
        "eval.baselines.zero_shot=false", "eval.baselines.few_shot=[2]", "eval.baselines.cot_max_new_tokens=24",
        "eval.batch_size=4", "gate=[]"])  # the example's gate reads 5_shot, which this short run does not make
    tok = load_tokenizer(recipe.model.name)
    data = prepare_data(recipe.data, tok)
    train, test = data.splits["train"], data.splits["test"]
    prompts, picked = build_few_shot_prompts(test, train, 2, recipe.eval.baselines)
    text = render_prompt(tok, prompts[0])
    # The shots are earlier turns of SmolLM2's own template, their labels as the assistant's answers.
    for i in picked[0]:
        assert f"<|im_start|>assistant\n{train[i].reference}<|im_end|>" in text
    assert text.endswith("<|im_start|>assistant\n") and text.count("<|im_start|>user") == 3
    model = load_causal_lm(recipe.model.name, dtype=torch.bfloat16)
    (tmp_path / "eval").mkdir()
    out = run_baselines(tmp_path, recipe, examples=test, pool=train, tokenizer=tok, task="label", split="test",
                        device="cpu", model=model)
    assert list(out) == ["2_shot", "cot"]
    for metrics in out.values():
        assert metrics["n_examples"] == 4 and 0 <= metrics["accuracy_ci"][0] <= metrics["accuracy"] <= 1
    rows = [json.loads(x) for x in (tmp_path / "eval" / "baselines.jsonl").read_text().splitlines()]
    cot = [r for r in rows if r["variant"] == "cot"]
    assert all(r["output"] for r in cot)  # the model reasons in prose
    assert all(r["answer"] in ("", *recipe.eval.labels) for r in cot)  # extraction gives a label or nothing
