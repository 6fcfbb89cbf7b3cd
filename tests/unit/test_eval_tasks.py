"""Task types of `tunelab eval` on the tiny model: choice, labels by likelihood, extraction, perplexity, bad input."""

from __future__ import annotations

import json

import numpy as np
import pytest

from tunelab.cli.main import main
from tunelab.config import load_recipe
from tunelab.config.loading import dump_recipe
from tunelab.errors import TunelabError
from tunelab.evaluation.scoring import score_options
from tunelab.evaluation.task_scoring import check_task_inputs, choice_row

EMOTIONS = ["joy", "sadness", "anger"]


def _write(path, rows):
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    return path


def _run_dir(tmp_path, tiny_model_dir, tokenizer, data, *overrides):
    """A finished run folder whose tuned model is the tiny model itself (model/ holds full weights)."""
    import shutil

    run = tmp_path / "run"
    (run / "model").mkdir(parents=True)
    for f in tiny_model_dir.iterdir():
        if f.suffix in (".json", ".safetensors"):
            shutil.copy(f, run / "model" / f.name)
    tokenizer.save_pretrained(run / "tokenizer")
    recipe = load_recipe(None, [f"data.path={data}", f"model.name={tiny_model_dir}", "model.precision=fp32",
                                "data.split.test=0.5", "data.split.validation=0", "eval.max_samples=8",
                                "eval.batch_size=4", "eval.max_new_tokens=4", "eval.bootstrap.n_resamples=50",
                                "eval.compare_base=false", *overrides])
    (run / "config.yaml").write_text(dump_recipe(recipe), encoding="utf-8")
    return run


def _metrics(run):
    return json.loads((run / "eval" / "metrics.json").read_text())


def _choice_rows(n=24):
    rows = []
    for i in range(n):
        opts = [f"red {i}", f"green {i}", f"blue {i}"]
        row = {"prompt": f"Item {i}: which colour?", "completion": opts[i % 3], "options": opts}
        if i % 2:
            row["answer"] = i % 3  # an index; the others use the completion text
        rows.append(row)
    return rows


def test_choice_task_equals_option_scores_and_reports_intervals(tmp_path, tiny_model_dir, tokenizer, tiny_model):
    data = _write(tmp_path / "mc.jsonl", _choice_rows())
    run = _run_dir(tmp_path, tiny_model_dir, tokenizer, data, "eval.task=choice")
    assert main(["eval", str(run)]) == 0
    ev = _metrics(run)
    tuned = ev["tuned"]
    assert ev["task"] == "choice" and tuned["main"] == "accuracy" and tuned["n_examples"] == ev["n"] > 0
    # Recompute from the scoring function: the same rows, the same options, arg-max of summed log-likelihoods.
    from tunelab.data import prepare_data

    recipe = load_recipe(run / "config.yaml")
    examples = prepare_data(recipe.data, tokenizer).splits["test"][:ev["n"]]
    rows = [choice_row(ex) for ex in examples]
    scores = score_options(tiny_model.eval(), tokenizer, [ex.prompt_messages for ex in examples],
                           [o for o, _ in rows], 4, "cpu")
    expected = np.mean([int(np.argmax(s)) == g for s, (_, g) in zip(scores, rows, strict=True)])
    assert tuned["accuracy"] == pytest.approx(expected)
    assert tuned["accuracy_ci"][0] <= tuned["accuracy"] <= tuned["accuracy_ci"][1] and "accuracy_norm" in tuned
    sample = json.loads((run / "eval" / "samples.jsonl").read_text().splitlines()[0])
    assert sample["tuned"] in {f"{c} {i}" for c in ("red", "green", "blue") for i in range(24)}


def test_labels_scored_by_likelihood_give_probabilities_and_roc_auc(tmp_path, tiny_model_dir, tokenizer):
    rows = [{"prompt": f"Message {i}: feeling number {i}", "completion": EMOTIONS[i % 3]} for i in range(30)]
    data = _write(tmp_path / "labels.jsonl", rows)
    run = _run_dir(tmp_path, tiny_model_dir, tokenizer, data, "eval.task=label", "eval.label_scoring=loglik",
                   f"eval.labels={EMOTIONS}", "eval.metrics=[micro_precision]")
    assert main(["eval", str(run)]) == 0
    tuned = _metrics(run)["tuned"]
    for name in ("accuracy", "macro_f1", "micro_f1", "roc_auc", "micro_precision"):
        assert 0.0 <= tuned[name] <= 1.0 and len(tuned[f"{name}_ci"]) == 2
    assert tuned["invalid_rate"] == 0.0  # a likelihood choice is always a label


def test_generation_with_extraction_and_extra_metrics(tmp_path, tiny_model_dir, tokenizer):
    rows = [{"prompt": f"Say something about {i}", "completion": f"A sentence about the number {i}."}
            for i in range(20)]
    data = _write(tmp_path / "text.jsonl", rows)
    run = _run_dir(tmp_path, tiny_model_dir, tokenizer, data, "eval.task=text", "eval.extract=auto",
                   "eval.metrics=[bleu, chrf]")
    assert main(["eval", str(run)]) == 0
    tuned = _metrics(run)["tuned"]
    assert {"rougeL", "rougeL_ci", "bleu", "bleu_ci", "chrf", "chrf_ci", "extract_failed_rate"} <= set(tuned)


def test_perplexity_task_uses_the_sliding_window(tmp_path, tiny_model_dir, tokenizer, tiny_model):
    from tunelab.evaluation.perplexity import sliding_window_perplexity

    text = tmp_path / "docs.txt"
    text.write_text("\n".join(f"Document {i} talks about rivers, hills and the weather in town {i}." * 3
                              for i in range(12)) + "\n", encoding="utf-8")
    run = _run_dir(tmp_path, tiny_model_dir, tokenizer, text, "eval.perplexity.max_length=16",
                   "eval.perplexity.stride=8")
    assert main(["eval", str(run)]) == 0
    ev = _metrics(run)
    tuned = ev["tuned"]
    assert ev["task"] == "perplexity" and tuned["main"] == "perplexity"
    from tunelab.data import prepare_data

    docs = [ex.text for ex in prepare_data(load_recipe(run / "config.yaml").data, tokenizer).splits["test"]]
    ref = sliding_window_perplexity(tiny_model.eval(), tokenizer, docs[:ev["n"]], 16, 8, "cpu")
    assert tuned["perplexity"] == pytest.approx(ref["perplexity"], rel=1e-5) and tuned["tokens"] == ref["tokens"]
    assert tuned["perplexity_ci"][0] <= tuned["perplexity"] <= tuned["perplexity_ci"][1]


@pytest.mark.parametrize(("rows", "overrides", "message"), [
    ([{"prompt": f"p{i}", "completion": EMOTIONS[i % 3]} for i in range(12)],
     ["eval.task=label", "eval.labels=[joy, sadness]"], "not in eval.labels: 'anger'"),
    ([{"prompt": f"p{i}", "completion": "x"} for i in range(4)], ["data.split.test=0"], "evaluation split is empty"),
])
def test_bad_input_exits_2_with_one_line(tmp_path, tiny_model_dir, tokenizer, capsys, rows, overrides, message):
    data = _write(tmp_path / "bad.jsonl", rows)
    run = _run_dir(tmp_path, tiny_model_dir, tokenizer, data, *overrides)
    assert main(["eval", str(run)]) == 2
    err = capsys.readouterr()
    out = (err.err + err.out).strip()
    assert message in out and "fix:" in out and len(out.splitlines()) == 1
    assert not (run / "eval" / "metrics.json").exists()  # nothing half-written


def _examples(rows):
    from tunelab.data.formats import to_examples

    spec = load_recipe(None, ["data.path=x.jsonl"]).data
    examples, rejects = to_examples([(f"d.jsonl:{i + 1}", r) for i, r in enumerate(rows)], spec)
    assert not rejects
    return examples


@pytest.mark.parametrize(("rows", "overrides", "task", "message"), [
    (_choice_rows(4), ["eval.task=choice", "eval.metrics=[bleu]"], "choice", "apply to generated answers"),
    ([{"prompt": "p", "completion": "x", "options": ["a"]}], ["eval.task=choice"], "choice", "at least two"),
    ([{"prompt": "p", "completion": "z", "options": ["a", "b"]}], ["eval.task=choice"], "choice",
     "d.jsonl:1: answer 'z' names none of the 2 options"),
    ([{"prompt": "p", "completion": "x", "options": ["a", "b"], "answer": 2}], ["eval.task=choice"], "choice",
     "answer 2 names none"),
    ([{"prompt": "p", "completion": "text"}], ["eval.task=text", "eval.label_scoring=loglik"], "text",
     "label_scoring 'loglik'"),
    ([{"prompt": "p", "completion": "joy"}], ["eval.metrics=[roc_auc]"], "label", "roc_auc needs label probabilities"),
])
def test_bad_task_inputs_raise_tunelab_errors(rows, overrides, task, message):
    spec = load_recipe(None, ["data.path=x.jsonl", *overrides]).eval
    with pytest.raises(TunelabError) as e:
        check_task_inputs(_examples(rows), spec, task)
    assert message in str(e.value) and e.value.fix


def test_rows_without_references_exit_2(tmp_path, tiny_model_dir, tokenizer, capsys):
    # A plain-text test file beside chat training data: nothing to compare a generated answer with.
    data = _write(tmp_path / "train.jsonl", [{"prompt": f"p{i}", "completion": "x"} for i in range(8)])
    test = tmp_path / "test.txt"
    test.write_text("".join(f"just some text {i}\n" for i in range(4)), encoding="utf-8")
    run = _run_dir(tmp_path, tiny_model_dir, tokenizer, data, "eval.task=text", f"data.test_path={test}")
    assert main(["eval", str(run)]) == 2
    out = capsys.readouterr()
    assert "test.txt:1: the row has no reference answer" in out.err + out.out


@pytest.mark.parametrize(("eval_yaml", "expected"), [
    ("{metrics: [rouge3]}", ["unknown metric 'rouge3'; valid:", "rougeL", "bleu"]),
    ("{task: multiple_choice}", ["'eval.task'", "'choice'", "'perplexity'"]),
])
def test_unknown_metric_or_task_in_a_recipe_exits_2(tmp_path, capsys, eval_yaml, expected):
    recipe = tmp_path / "r.yaml"
    recipe.write_text(f"data: {{path: x.jsonl}}\neval: {eval_yaml}\n", encoding="utf-8")
    assert main(["validate", str(recipe)]) == 2
    out = capsys.readouterr()
    assert all(e in out.err + out.out for e in expected)


def test_check_task_inputs_accepts_letters_and_choices_key():
    from tunelab.data.records import Example

    ex = Example(messages=[{"role": "user", "content": "q"}, {"role": "assistant", "content": "B"}], text=None,
                 where="f:1", raw={"choices": ["one", "two", "three"]})
    assert choice_row(ex) == (["one", "two", "three"], 1)
    spec = load_recipe(None, ["data.path=x", "eval.task=choice"]).eval
    check_task_inputs([ex], spec, "choice")


def test_label_loglik_predictions_are_the_most_likely_label(tiny_model, tokenizer):
    from tunelab.evaluation.task_scoring import score_task

    rows = [{"prompt": f"Message {i}", "completion": EMOTIONS[i % 3]} for i in range(9)]
    examples = _examples(rows)
    spec = load_recipe(None, ["data.path=x.jsonl", "eval.task=label", "eval.label_scoring=loglik",
                              "eval.bootstrap.n_resamples=20"]).eval
    metrics, preds = score_task(tiny_model.eval(), tokenizer, examples, spec, "label", "cpu")
    labels = sorted(EMOTIONS)  # no eval.labels: the distinct references, sorted
    scores = score_options(tiny_model, tokenizer, [ex.prompt_messages for ex in examples], [labels] * 9, 4, "cpu")
    assert preds == [labels[int(np.argmax(s))] for s in scores]
    assert metrics["accuracy"] == pytest.approx(np.mean([p == ex.reference for p, ex in zip(preds, examples, strict=True)]))
    assert 0.0 <= metrics["roc_auc"] <= 1.0
