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


# ------------------------------------------------------------- stratification and near-duplicate groups

_VOCAB = [f"w{i}" for i in range(2000)]


def _chat(question: str, answer: str, where: str) -> Example:
    return Example(messages=[{"role": "user", "content": question}, {"role": "assistant", "content": answer}],
                   text=None, where=where, raw={})


def _words(rng: random.Random, n: int) -> str:
    return " ".join(rng.choice(_VOCAB) for _ in range(n))


def _labelled(sizes: list[int], seed: int = 0) -> list[Example]:
    rng = random.Random(seed)
    rows = [_chat(_words(rng, 20), f"Class {c}", f"f:{c}:{k}") for c, n in enumerate(sizes) for k in range(n)]
    rng.shuffle(rows)
    return rows


def _class_counts(members: list[Example]) -> dict[str, int]:
    counts: dict[str, int] = {}
    for e in members:
        counts[e.reference] = counts.get(e.reference, 0) + 1
    return counts


def test_stratified_split_keeps_class_shares_within_one_row():
    sizes = [430, 250, 150, 100, 50, 20]  # imbalanced, 1,000 rows, 6 classes
    examples = _labelled(sizes)
    for stratify in ("label", "auto"):
        spec = SplitSpec(validation=0.1, test=0.2, seed=7, stratify=stratify)
        splits = split_examples(examples, spec)
        assert {k: len(v) for k, v in splits.items()} == {"train": 700, "validation": 100, "test": 200}
        for name, fraction in (("train", 0.7), ("validation", 0.1), ("test", 0.2)):
            counts = _class_counts(splits[name])
            for c, n in enumerate(sizes):
                assert abs(counts.get(f"Class {c}", 0) - n * fraction) <= 1, (stratify, name, c)


def test_stratified_grouped_split_is_deterministic_and_order_independent():
    examples = _labelled([300, 120, 60, 20])
    examples += [_chat(e.messages[0]["content"], e.reference, f"dup:{i}") for i, e in enumerate(examples[:40])]
    spec = SplitSpec(validation=0.15, test=0.15, seed=2, stratify="label")
    first = split_examples(examples, spec)
    assert split_examples(examples, spec) == first
    for seed in range(3):
        shuffled = examples[:]
        random.Random(seed).shuffle(shuffled)
        assert _wheres(split_examples(shuffled, spec)) == _wheres(first)
    assert [e.where for e in first["test"]] == [e.where for e in examples if e in first["test"]]


def _with_planted_near_duplicates(n: int, pairs: int) -> tuple[list[Example], list[tuple[str, str]]]:
    rng = random.Random(5)
    base = [_words(rng, 100) for _ in range(n - pairs)]
    rows = [_chat(text, _words(rng, 3), f"row:{i}") for i, text in enumerate(base)]
    planted = []
    for k in range(pairs):
        words = base[k].split()
        words[50] = "changed"
        rows.append(_chat(" ".join(words), rows[k].reference, f"near:{k}"))
        planted.append((f"row:{k}", f"near:{k}"))
    rng.shuffle(rows)
    return rows, planted


def _split_of(splits) -> dict[str, str]:
    return {e.where: name for name, members in splits.items() for e in members}


def test_planted_near_duplicates_never_straddle_splits():
    rows, planted = _with_planted_near_duplicates(500, 50)
    for stratify in ("none", "label"):
        where = _split_of(split_examples(rows, SplitSpec(validation=0.2, test=0.2, stratify=stratify)))
        assert all(where[a] == where[b] for a, b in planted), stratify
    # Without grouping some pairs do straddle (so the check above means something).
    loose = _split_of(split_examples(rows, SplitSpec(validation=0.2, test=0.2, group_near_duplicates=False)))
    assert any(loose[a] != loose[b] for a, b in planted)


def test_none_without_grouping_reproduces_the_hash_assignment():
    from tunelab.data.split import split_name, split_point

    examples = _labelled([60, 30, 10]) + _examples(200)
    examples += [Example(e.messages, e.text, where=f"copy:{i}", raw={}) for i, e in enumerate(examples[:50])]
    spec = SplitSpec(validation=0.1, test=0.2, seed=4, stratify="none", group_near_duplicates=False)
    expected = {name: [] for name in ("train", "validation", "test")}
    for e in examples:
        expected[split_name(split_point(e, spec.seed), spec)].append(e)
    assert split_examples(examples, spec) == expected


def test_auto_stratifies_labels_but_not_free_text():
    from tunelab.data.split import example_label, looks_like_labels

    labelled, free = _labelled([50, 30, 20]), _examples(100)
    assert looks_like_labels([example_label(e) for e in labelled])
    assert not looks_like_labels([example_label(e) for e in free])  # 100 distinct answers
    assert not looks_like_labels([example_label(e) for e in labelled[:19]])  # too few rows
    long_answers = [_chat(f"q{i}", "this answer has too many words", f"l:{i}") for i in range(40)]
    assert not looks_like_labels([example_label(e) for e in long_answers])
    text_rows = [Example(messages=[], text=f"doc {i}", where=f"t:{i}") for i in range(40)]
    assert not looks_like_labels([example_label(e) for e in text_rows])
    base = {"validation": 0.2, "test": 0.2, "group_near_duplicates": False}
    for rows, same_as in ((labelled, "label"), (free, "none")):
        auto = split_examples(rows, SplitSpec(stratify="auto", **base))
        assert auto == split_examples(rows, SplitSpec(stratify=same_as, **base))


def test_tiny_datasets_do_not_crash_and_keep_train():
    for n in range(0, 20):
        rows = _labelled([n - n // 2, n // 2], seed=n)
        for stratify in ("auto", "label", "none"):
            spec = SplitSpec(validation=0.3, test=0.3, stratify=stratify)
            splits = split_examples(rows, spec)
            assert sum(len(v) for v in splits.values()) == n
            assert bool(splits["train"]) == (n > 0), (n, stratify)
