"""Deterministic content-hash split: repeatable, order-independent, duplicates together, fractions met."""

from __future__ import annotations

import random

from tunelab.config.specs import SplitSpec
from tunelab.data import Example, split_examples


def _examples(n: int) -> list[Example]:
    return [Example(messages=[{"role": "user", "content": f"q{i}"}, {"role": "assistant", "content": f"a{i}"}],
                    text=None, where=f"f:{i + 1}", raw={"i": i}) for i in range(n)]


def _wheres(splits) -> dict[str, set[str]]:
    return {k: {e.where for e in v} for k, v in splits.items()}


def test_same_result_twice_and_independent_of_order():
    examples, spec = _examples(300), SplitSpec(validation=0.1, test=0.2, seed=3)
    first = split_examples(examples, spec)
    assert split_examples(examples, spec) == first
    shuffled = examples[:]
    random.Random(0).shuffle(shuffled)
    assert _wheres(split_examples(shuffled, spec)) == _wheres(first)
    # Within a split, input order is kept.
    assert [e.where for e in first["train"]] == [e.where for e in examples if e in first["train"]]


def test_fractions_approximately_respected():
    splits = split_examples(_examples(1000), SplitSpec(validation=0.1, test=0.2))
    sizes = {k: len(v) for k, v in splits.items()}
    assert sum(sizes.values()) == 1000
    assert 60 <= sizes["validation"] <= 140 and 160 <= sizes["test"] <= 240


def test_exact_duplicates_share_a_split_whatever_their_provenance():
    base = _examples(200)
    dupes = [Example(e.messages, e.text, where=f"other:{i}", raw={}) for i, e in enumerate(base)]
    splits = split_examples(base + dupes, SplitSpec(validation=0.2, test=0.2))
    for name, members in splits.items():
        contents = [str(e.messages) for e in members]
        assert all(contents.count(c) == 2 for c in contents), name


def test_seed_changes_assignment_and_zero_fractions_keep_all_in_train():
    examples = _examples(200)
    a = split_examples(examples, SplitSpec(seed=0))
    b = split_examples(examples, SplitSpec(seed=1))
    assert _wheres(a) != _wheres(b)
    only_train = split_examples(examples, SplitSpec(validation=0.0, test=0.0))
    assert len(only_train["train"]) == 200 and not only_train["validation"] and not only_train["test"]


def test_test_split_is_stable_when_validation_fraction_changes():
    examples = _examples(500)
    a = split_examples(examples, SplitSpec(validation=0.1, test=0.1))
    b = split_examples(examples, SplitSpec(validation=0.3, test=0.1))
    assert _wheres(a)["test"] == _wheres(b)["test"]
