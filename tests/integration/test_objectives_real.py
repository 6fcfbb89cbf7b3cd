"""The encoder classifier (all-MiniLM-L6-v2 + a new head, examples/emotion_classify.yaml) on a few emotion rows."""

import json
from pathlib import Path

import pytest

from tunelab import pipeline
from tunelab.config import load_recipe

pytestmark = [pytest.mark.integration, pytest.mark.shared_data]

EXAMPLE = Path(__file__).resolve().parents[2] / "examples" / "emotion_classify.yaml"


def test_emotion_classifier_on_a_few_rows(tmp_path, shared_data):
    emotion = shared_data / "emotion"
    recipe = load_recipe(EXAMPLE, [
        f"data.path={emotion / 'train.txt'}", f"data.validation_path={emotion / 'val.txt'}",
        f"data.test_path={emotion / 'test.txt'}", "data.limit=160", "data.eval_limit=64", "train.batch_size=16",
        "train.max_steps=10", "train.eval_every=5", "eval.max_samples=64", f"output.dir={tmp_path}",
        "model.threads=1", "output.tracking=[]",
    ])
    run_dir = pipeline.run(recipe, "emotion")
    labels = json.loads((run_dir / "labels.json").read_text())
    assert sorted(labels["labels"]) == ["anger", "fear", "joy", "love", "sadness", "surprise"]
    rows = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    evals = [r for r in rows if "val_loss" in r]
    assert evals[-1]["val_loss"] < evals[0]["val_loss"]  # ten steps already move the new head
    ev = json.loads((run_dir / "eval" / "metrics.json").read_text())
    assert ev["task"] == "classify" and ev["n"] == 64 and 0 <= ev["tuned"]["accuracy"] <= 1
    # The baseline predicts the most frequent training label: its accuracy is that label's share of the test rows.
    majority = ev["base_kind"].split("(")[1].rstrip(")")
    refs = [json.loads(line)["reference"] for line in (run_dir / "eval" / "samples.jsonl").read_text().splitlines()]
    assert ev["base"]["accuracy"] == pytest.approx(refs.count(majority) / len(refs))
