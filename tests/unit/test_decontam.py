"""Train/eval contamination by shared 13-grams: planted copies found, paraphrases not, short texts, speed."""

from __future__ import annotations

import random
import subprocess
import sys
import time

import pytest

from tunelab.data.decontam import ContaminationHit, find_contamination, ngrams, normalize, tokens
from tunelab.errors import TunelabError

EVAL_PASSAGE = ("The Amazon rainforest covers much of the Amazon basin of South America, a basin that "
                "encompasses seven million square kilometres, of which five and a half million are covered "
                "by the rainforest.")
PARAPHRASE = ("Much of South America's Amazon basin is covered by the Amazon rainforest; the basin spans "
              "about seven million km², and the forest itself occupies roughly five and a half million of them.")


def _filler(k: int, seed: int = 0) -> str:
    rng = random.Random(seed)
    vocab = ["alpha", "bravo", "charlie", "delta", "echo", "foxtrot", "golf", "hotel", "india", "juliet",
             "kilo", "lima", "mike", "november", "oscar", "papa", "quebec", "romeo", "sierra", "tango"]
    return " ".join(rng.choice(vocab) + str(rng.randrange(1000)) for _ in range(k))


def test_normalization_ignores_case_and_punctuation():
    assert normalize("Don’t STOP — state-of-the-art, snake_case!") == "dont stop   state of the art  snake case "
    assert tokens("Hello, WORLD... it's fine") == ["hello", "world", "its", "fine"]
    assert tokens("我喜欢Python！") == ["我", "喜", "欢", "python"]


def test_ngrams_of_a_text():
    text = " ".join(f"w{i}" for i in range(15))
    grams = ngrams(text)
    assert len(grams) == 3  # 15 words -> 3 thirteen-grams
    assert ("w0",) + tuple(f"w{i}" for i in range(1, 13)) in grams
    assert len(ngrams(text, n=5)) == 11


def test_planted_contamination_is_found_with_indices_and_fraction():
    # The eval passage, upper-cased and re-punctuated, pasted into the middle of a longer train row.
    mangled = EVAL_PASSAGE.upper().replace(",", " ;").replace(".", "!!")
    planted = f"{_filler(40, 1)} {mangled} {_filler(20, 2)}"
    train = [_filler(60, 3), planted, _filler(30, 4)]
    evals = [_filler(50, 5), EVAL_PASSAGE, _filler(50, 6)]
    hits = find_contamination(train, evals)
    assert len(hits) == 1
    hit = hits[0]
    assert (hit.train_index, hit.eval_index) == (1, 1)
    shared = ngrams(planted) & ngrams(EVAL_PASSAGE)
    assert hit.overlap == len(shared) == len(ngrams(EVAL_PASSAGE))
    assert hit.fraction == pytest.approx(len(shared) / len(ngrams(planted)))
    assert hit.example_ngram == " ".join(tokens(EVAL_PASSAGE)[:13])


def test_paraphrase_sharing_no_13gram_is_not_contamination():
    assert not ngrams(PARAPHRASE) & ngrams(EVAL_PASSAGE)
    assert find_contamination([PARAPHRASE, _filler(80)], [EVAL_PASSAGE]) == []


def test_one_hit_per_train_row_naming_the_eval_row_with_most_overlap():
    words = tokens(EVAL_PASSAGE)
    half = " ".join(words[:16])  # 4 thirteen-grams
    evals = [half, EVAL_PASSAGE, half]  # rows 0 and 2 overlap less than row 1
    hits = find_contamination([f"{_filler(10)} {EVAL_PASSAGE}"], evals)
    assert [(h.train_index, h.eval_index, h.overlap) for h in hits] == [(0, 1, len(ngrams(EVAL_PASSAGE)))]
    # A tie goes to the lowest eval index.
    assert find_contamination([EVAL_PASSAGE], [half, half])[0].eval_index == 0


def test_min_overlap():
    half = " ".join(tokens(EVAL_PASSAGE)[:16])  # shares 4 thirteen-grams
    assert find_contamination([half], [EVAL_PASSAGE], min_overlap=4)[0].overlap == 4
    assert find_contamination([half], [EVAL_PASSAGE], min_overlap=5) == []


def test_short_eval_question_inside_a_long_train_row():
    question = "Which river flows through the city of Vienna in Austria?"  # 10 words: one whole-text gram
    assert ngrams(question) == {tuple(tokens(question))}
    train = [f"{_filler(30)} Q: which river flows through the city of Vienna in Austria A: the Danube"]
    hits = find_contamination(train, [question])
    assert [(h.train_index, h.eval_index, h.overlap) for h in hits] == [(0, 0, 1)]
    assert hits[0].fraction == pytest.approx(1 / len(ngrams(train[0])))
    assert hits[0].example_ngram == "which river flows through the city of vienna in austria"


def test_short_train_row_inside_a_long_eval_row():
    train = ["a basin that encompasses seven million square kilometres of forest"]  # 10 words
    assert find_contamination(train, [EVAL_PASSAGE]) == []  # "of forest" breaks it
    train = ["a basin that encompasses seven million square kilometres, of which five"]
    hits = find_contamination(train, [EVAL_PASSAGE])
    assert [(h.train_index, h.eval_index, h.overlap, h.fraction) for h in hits] == [(0, 0, 1, 1.0)]


def test_texts_under_eight_words_are_skipped():
    assert ngrams("what is the capital of france") == set()
    assert find_contamination(["what is the capital of france"], ["What is the capital of France?"]) == []
    eight = "one two three four five six seven eight"
    assert find_contamination([eight], [eight.upper()])[0].fraction == 1.0


def test_cjk_ngrams_are_26_characters():
    passage = "人工智能是计算机科学的一个分支，它企图了解智能的实质，并生产出一种新的能以人类智能相似的方式做出反应的智能机器。"
    n_chars = len(tokens(passage))
    assert len(ngrams(passage)) == n_chars - 26 + 1
    train = [f"我们知道{passage}这很重要。", "人工智能是计算机科学的一个分支。"]
    hits = find_contamination(train, [passage])
    assert [(h.train_index, h.eval_index, h.overlap) for h in hits] == [(0, 0, n_chars - 25)]
    assert hits[0].example_ngram == "".join(tokens(passage)[:26])


def test_n_is_configurable():
    a = "alpha bravo charlie delta echo foxtrot golf"
    train = [f"{_filler(20, 1)} {a} {_filler(20, 2)}"]
    evals = [f"{_filler(20, 3)} {a} {_filler(20, 4)}"]
    assert find_contamination(train, evals) == []
    hits = find_contamination(train, evals, n=7)
    assert [(h.overlap, h.example_ngram) for h in hits] == [(1, a)]
    assert len(find_contamination(train, evals, n=5)) == 1
    with pytest.raises(TunelabError, match="n-gram size"):
        find_contamination(train, evals, n=0)
    with pytest.raises(TunelabError, match="min_overlap"):
        find_contamination(train, evals, min_overlap=0)


def test_empty_inputs():
    assert find_contamination([], []) == []
    assert find_contamination(["", "  "], [EVAL_PASSAGE]) == []
    assert find_contamination([EVAL_PASSAGE], []) == []


def _reference(train: list[str], evals: list[str], n: int) -> list[tuple[int, int, int, float]]:
    """Brute force from the public `ngrams`: shared grams, plus whole short texts found as token runs."""
    def contains(big: list[str], small: list[str]) -> bool:
        return any(big[i:i + len(small)] == small for i in range(len(big) - len(small) + 1))

    def is_whole(grams: set, toks: list[str]) -> bool:
        return grams == {tuple(toks)} and bool(toks)

    out = []
    for i, t in enumerate(train):
        tg, tt = ngrams(t, n), tokens(t)
        best = (0, 0)
        for j, e in enumerate(evals):
            eg, et = ngrams(e, n), tokens(e)
            shared = tg & eg
            if is_whole(eg, et) and contains(tt, et):
                shared.add(tuple(et))
            if is_whole(tg, tt) and contains(et, tt):
                shared.add(tuple(tt))
            if len(shared) > best[0]:
                best = (len(shared), j)
        if best[0]:
            out.append((i, best[1], best[0], min(1.0, best[0] / max(1, len(tg)))))
    return out


def test_matches_brute_force_reference_on_random_texts():
    rng = random.Random(7)
    vocab = ["a", "b", "c", "d", "人", "工", "智", "能"]

    def text() -> str:
        return " ".join(rng.choice(vocab) for _ in range(rng.randrange(0, 40)))

    evals = [text() for _ in range(25)]
    train = [text() for _ in range(40)]
    train += [f"{text()} {rng.choice(evals)} {text()}" for _ in range(10)]
    for n in (4, 9, 13):
        hits = find_contamination(train, evals, n=n)
        assert [(h.train_index, h.eval_index, h.overlap, pytest.approx(h.fraction)) for h in hits] == \
            _reference(train, evals, n)


def test_deterministic_across_processes():
    code = ("from tunelab.data.decontam import find_contamination as f; import sys; "
            "print(f([sys.argv[1] + ' tail words here'], ['x ' + sys.argv[1]]))")
    runs = [subprocess.run([sys.executable, "-c", code, EVAL_PASSAGE], capture_output=True, text=True,
                           check=True, env={"PYTHONHASHSEED": seed}).stdout for seed in ("1", "2")]
    assert runs[0] == runs[1] and "ContaminationHit" in runs[0]
    again = find_contamination([f"{EVAL_PASSAGE} tail words here"], [f"x {EVAL_PASSAGE}"])
    assert repr(again) + "\n" == runs[0]


def test_fast_on_20k_by_2k():
    rng = random.Random(0)
    vocab = ["".join(rng.choice("abcdefghijklmnopqrstuvwxyz") for _ in range(rng.randint(2, 9)))
             for _ in range(20_000)]

    def text(k: int) -> str:
        return " ".join(rng.choice(vocab) for _ in range(k))

    evals = [text(rng.randint(10, 120)) for _ in range(2_000)]
    train = [text(rng.randint(20, 150)) for _ in range(20_000)]
    for i in range(0, 20_000, 500):
        train[i] = f"{train[i]} {evals[i // 10].upper()}."
    start = time.perf_counter()
    hits = find_contamination(train, evals)
    elapsed = time.perf_counter() - start
    expected = {(i, i // 10) for i in range(0, 20_000, 500) if len(tokens(evals[i // 10])) >= 8}
    assert {(h.train_index, h.eval_index) for h in hits} == expected
    assert all(isinstance(h, ContaminationHit) for h in hits)
    assert elapsed < 10, f"{elapsed:.1f}s"
