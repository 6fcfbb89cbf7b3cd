"""Back-translation with the real default model: rows come out, marked synthetic (their quality is not judged)."""

from __future__ import annotations

import pytest

from tunelab.config.specs import AugmentSpec, CurateSpec, GeneratorSpec
from tunelab.data.augment import step_augment
from tunelab.data.records import Example

pytestmark = pytest.mark.integration

ANSWERS = [
    "To reverse a list in Python, call my_list.reverse() to change it in place, or use my_list[::-1] for a copy.",
    "The water cycle moves water from oceans to clouds by evaporation, and back to the ground as rain or snow.",
    "A good cover letter names the job, shows two or three achievements that fit it, and ends with a clear ask.",
]


def test_back_translation_with_the_default_model():
    rows = [Example(messages=[{"role": "user", "content": f"Question {i}"}, {"role": "assistant", "content": a}],
                    text=None, where=f"rows.jsonl:{i + 1}") for i, a in enumerate(ANSWERS)]
    generator = GeneratorSpec(max_new_tokens=32, temperature=0.0, batch_size=3)  # greedy: same text every run
    spec = CurateSpec(augment=AugmentSpec(ops=["back_translate"], generator=generator))
    kept, rejects, report = step_augment(rows, spec)
    assert report.details["generated"] == {"back_translate": 3}
    assert report.details["generator"] == "smollm2-135m-instruct"
    assert len(kept) + len(rejects) == 3 + 3
    new = kept[3:]
    assert new, [r.reason for r in rejects]
    for ex in new:
        assert ex.raw["synthetic"]["op"] == "back_translate"
        assert ex.raw["synthetic"]["generator"] == "smollm2-135m-instruct"
        assert ex.messages[-1]["content"] in ANSWERS and ex.messages[0]["role"] == "user"
        assert ex.messages[0]["content"].strip()
