"""Exact and near-duplicate detection: normalisation, MinHash signatures, LSH clusters, the dedup plan."""

from __future__ import annotations

import json
import os
import random
import string
import subprocess
import sys

import numpy as np
import pytest

from tunelab.data import dedup
from tunelab.data.dedup import (
    MinHashParams,
    choose_representative,
    dedup_plan,
    exact_duplicate_clusters,
    jaccard,
    minhash_signatures,
    near_duplicate_clusters,
    normalize_for_hash,
    shingles,
)
from tunelab.errors import TunelabError

_RNG = random.Random(0)
VOCAB = ["".join(_RNG.choices(string.ascii_lowercase, k=_RNG.randint(3, 9))) for _ in range(2000)]
HANZI = [chr(c) for c in range(0x4E00, 0x4E00 + 3000)]


def words(n: int, seed: int) -> list[str]:
    rng = random.Random(seed)
    return [rng.choice(VOCAB) for _ in range(n)]


def substitute(ws: list[str], n_edits: int, seed: int) -> list[str]:
    rng, ws = random.Random(seed), ws[:]
    for pos in rng.sample(range(len(ws)), n_edits):
        ws[pos] = rng.choice(VOCAB) + "x"  # "x": never equal to the word it replaces
    return ws


def test_normalize_for_hash_ignores_case_spacing_and_punctuation_but_keeps_marks():
    assert normalize_for_hash("  Hello,   WORLD!!\n\tIt's ") == "hello world its"
    assert normalize_for_hash("Straße — «quoted»") == "strasse quoted"
    assert normalize_for_hash("ｆｕｌｌ－ｗｉｄｔｈ") == "fullwidth"  # NFKC
    assert normalize_for_hash("नमस्ते दुनिया") == "नमस्ते दुनिया"  # combining marks are not punctuation
    assert normalize_for_hash("") == ""


def test_exact_clusters_collapse_case_whitespace_and_punctuation_variants():
    texts = ["The cat sat.", "a different row", "the  CAT sat", "The cat, sat!!", "another", "A different row?", "x"]
    assert exact_duplicate_clusters(texts) == [[0, 2, 3], [1, 5]]
    assert exact_duplicate_clusters(["only", "unique", "rows"]) == []
    assert exact_duplicate_clusters([]) == []


def test_planted_near_duplicates_are_found_and_unrelated_texts_are_not_clustered():
    bases = [words(120, seed) for seed in range(40)]
    texts = [" ".join(b) for b in bases]
    texts.append(" ".join(substitute(bases[3], 1, 1)).upper())  # 40: one word changed, upper case
    texts.append(" ".join(bases[7][:60] + ["extra"] + bases[7][60:]) + " !!")  # 41: one word inserted
    texts.append(" ".join(substitute(bases[11], 30, 2)))  # 42: a quarter of the words changed
    assert jaccard(texts[3], texts[40]) > 0.9 and jaccard(texts[7], texts[41]) > 0.9
    assert jaccard(texts[11], texts[42]) < 0.3
    assert near_duplicate_clusters(texts) == [[3, 40], [7, 41]]


def test_signature_agreement_estimates_the_true_jaccard():
    base = words(200, 5)
    sig_base = minhash_signatures([" ".join(base)])[0]
    for n_edits in (0, 2, 5, 10, 20, 40):
        other = " ".join(substitute(base, n_edits, n_edits))
        est = float(np.mean(minhash_signatures([other])[0] == sig_base))
        assert abs(est - jaccard(" ".join(base), other)) <= 0.1, n_edits


def test_signatures_shape_dtype_and_determinism_within_a_process():
    texts = [" ".join(words(30, s)) for s in range(5)] + ["", "one"]
    sig = minhash_signatures(texts)
    assert sig.shape == (7, 128) and sig.dtype == np.uint32
    assert np.array_equal(sig, minhash_signatures(texts))
    assert np.array_equal(sig[2:4], minhash_signatures(texts[2:4]))  # a row does not depend on its neighbours
    assert minhash_signatures([]).shape == (0, 128)
    assert not np.array_equal(sig, minhash_signatures(texts, MinHashParams(seed=2)))


def test_signatures_do_not_depend_on_batch_or_block_boundaries(monkeypatch):
    texts = [" ".join(words(n, n)) for n in range(0, 60)] + ["漢字のテキスト" * 3, "a"]
    ref = minhash_signatures(texts)
    monkeypatch.setattr(dedup, "_SHINGLE_BLOCK", 7)  # documents straddle permutation blocks
    monkeypatch.setattr(dedup, "_DOC_BATCH", 5)  # and the word-hash cache spans batches
    assert np.array_equal(minhash_signatures(texts), ref)


def test_signatures_are_identical_in_a_process_with_another_hash_seed():
    texts = ["The quick brown fox jumps over the lazy dog again and again", "中文文本没有空格也可以去重", ""]
    code = ("import sys, json; from tunelab.data.dedup import minhash_signatures;"
            "print(minhash_signatures(json.loads(sys.stdin.read())).tobytes().hex())")
    env = {**os.environ, "PYTHONHASHSEED": "12345"}
    out = subprocess.run([sys.executable, "-c", code], input=json.dumps(texts), capture_output=True, text=True,
                         env=env, check=True).stdout.strip()
    assert out == minhash_signatures(texts).tobytes().hex()


def test_detection_probability_and_similarity_at_are_inverses():
    params = MinHashParams()
    assert params.rows == 8
    assert params.similarity_at(0.5) == pytest.approx(0.674, abs=1e-3)
    assert params.similarity_at(0.95) == pytest.approx(0.802, abs=1e-3)
    for p in (0.01, 0.3, 0.5, 0.9, 0.99):
        assert params.detection_probability(params.similarity_at(p)) == pytest.approx(p, abs=1e-9)
    for s in (0.2, 0.6, 0.85):
        assert params.similarity_at(params.detection_probability(s)) == pytest.approx(s, abs=1e-6)
    assert MinHashParams(num_perm=64, bands=32).similarity_at(0.5) < params.similarity_at(0.5)


def test_invalid_params_are_user_errors():
    with pytest.raises(TunelabError, match="multiple of bands"):
        MinHashParams(num_perm=128, bands=10)
    with pytest.raises(TunelabError, match="threshold"):
        MinHashParams(threshold=1.5)
    with pytest.raises(TunelabError, match="shingle"):
        MinHashParams(shingle=0)


def test_representative_rule_score_then_length_then_lowest_index():
    texts = ["short", "a much longer text", "a much longer text", "mid text"]
    assert choose_representative([0, 1, 2, 3], texts) == 1  # longest; tie between 1 and 2 -> lowest index
    assert choose_representative([3, 2, 1], texts) == 1  # order of the cluster does not matter
    assert choose_representative([0, 1, 3], texts, scores=[0.1, 0.5, 0.5, 0.9]) == 3  # highest score wins
    assert choose_representative([0, 1, 2], texts, scores=[0.9, 0.9, 0.9, 0.0]) == 1  # score tie -> longest
    with pytest.raises(TunelabError):
        choose_representative([], texts)


def test_dedup_plan_keeps_one_per_cluster_and_gives_reasons():
    base = words(150, 9)
    near = " ".join(substitute(base, 1, 3))
    longest = " ".join(base) + " and a few more words"
    texts = ["Hello there, world!", longest, "hello THERE world", near, "unrelated row", near.upper()]
    plan = dedup_plan(texts)
    assert plan.clusters == [[0, 2], [1, 3, 5]]
    assert plan.keep == [0, 1, 4]  # equal lengths in [0, 2] -> lowest index; 1 is the longest of its cluster
    assert plan.dropped[2] == (0, "exact duplicate of row 0")
    kept, reason = plan.dropped[3]
    assert kept == 1 and reason.startswith("near duplicate of row 1 (est. Jaccard 0.")
    assert float(reason.rsplit(" ", 1)[1].rstrip(")")) >= 0.8
    assert plan.dropped[5][0] == 1 and plan.dropped[5][1].startswith("near duplicate of row 1")
    assert all(k in plan.keep for k, _ in plan.dropped.values())


def test_dedup_plan_switches_and_scores():
    texts = ["Same text.", "same text", " ".join(words(100, 1)), " ".join(words(100, 1)[:-1])]
    assert dedup_plan(texts, near=False).clusters == [[0, 1]]
    only_near = dedup_plan(texts, exact=False)
    assert only_near.clusters == [[0, 1], [2, 3]]
    assert only_near.dropped[1] == (0, "near duplicate of row 0 (est. Jaccard 1.00)")
    assert dedup_plan(texts, exact=False, near=False).keep == [0, 1, 2, 3]
    assert dedup_plan(texts, scores=[0, 1, 0, 0]).dropped[0] == (1, "exact duplicate of row 1")
    with pytest.raises(TunelabError, match="scores"):
        dedup_plan(texts, scores=[1.0])


def test_cjk_text_without_spaces_uses_character_shingles():
    rng = random.Random(3)
    base = "".join(rng.choices(HANZI, k=300))
    edited = base[:100] + "的" + base[101:200] + "。" + base[200:]  # one character changed, punctuation added
    other = "".join(rng.choices(HANZI, k=300))
    assert shingles("中文测试文本")[:2] == ["中文测试文", "文测试文本"]
    assert jaccard(base, edited) > 0.9
    assert near_duplicate_clusters([base, other, edited]) == [[0, 2]]
    mixed = "我们使用 Python 和 numpy 进行数据分析，效果很好"  # a few spaces, mostly Chinese: still characters
    assert all(" " not in s for s in shingles(mixed)) and len(shingles(mixed)) > 10


def test_short_and_empty_texts_are_one_shingle():
    assert shingles("") == [""] and shingles("Two words") == ["two words"]
    assert shingles("one two three four five six") == ["one two three four five", "two three four five six"]
    texts = ["", "two words", "", "Two words!", "two other", "x"]
    assert near_duplicate_clusters(texts) == [[0, 2], [1, 3]]
    # "Two words!" is the longer raw text, so it is the one kept.
    assert dedup_plan(texts).dropped == {2: (0, "exact duplicate of row 0"), 1: (3, "exact duplicate of row 3")}
    assert near_duplicate_clusters([]) == [] and dedup_plan([]).keep == []


def test_large_buckets_form_one_cluster():
    text = " ".join(words(50, 4))
    texts = [text] * 80 + [" ".join(words(50, 6))]
    assert near_duplicate_clusters(texts) == [list(range(80))]
