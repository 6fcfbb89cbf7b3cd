"""The LLM judge on the real default model (SmolLM2-135M-Instruct), four rows.

Measured here: the 135M model does not tell a good answer from a degenerate one under the default rubric
(e.g. 3.04 for "The capital of France is Paris." against 3.19 for "asdf asdf"), so this test checks only
what holds for any judge: scores in [1, 5], the same scores on a second run, and that the rows' text
reaches the model (not every row gets the same score). docs/data.md says so; use a larger judge
(`curate.score.generator.model` or `.endpoint`) for real filtering.
"""

import pytest

from tunelab.config.specs import JudgeSpec, ScoreSpec
from tunelab.data.records import Example
from tunelab.data.score import step_score
from tunelab.generation import LocalGenerator

pytestmark = pytest.mark.integration

ROWS = [
    ("What is the capital of France?", "The capital of France is Paris."),
    ("What is the capital of France?", "asdf asdf"),
    ("Write a Python function that returns the square of a number.", "def square(x):\n    return x * x"),
    ("Write a Python function that returns the square of a number.", "asdf asdf asdf"),
]


def test_real_judge_is_deterministic_and_in_range():
    examples = [Example([{"role": "user", "content": p}, {"role": "assistant", "content": a}], None, f"r:{i}")
                for i, (p, a) in enumerate(ROWS)]
    judge = LocalGenerator(JudgeSpec())
    kept, rejects, report = step_score(examples, ScoreSpec(), judge)
    values = [ex.raw["score"]["value"] for ex in kept]
    assert rejects == [] and report.details["unscored"] == 0
    assert all(1.0 <= v <= 5.0 for v in values)
    assert len(set(values)) > 1
    again = [ex.raw["score"]["value"] for ex in step_score(examples, ScoreSpec(), judge)[0]]
    assert again == values
