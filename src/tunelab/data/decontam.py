"""Training/evaluation overlap (contamination) by shared word n-grams.

The convention is GPT-3's (Brown et al. 2020, Appendix C) and Llama 2's: text is lowercased and stripped
of punctuation, split into words, and a training row is contaminated when it shares a 13-word n-gram with
an evaluation row. Thirteen words is long enough that ordinary phrases ("on the other hand, it is
important to") almost never reach it, and short enough to catch a copied question with a few words
changed around it.

Normalisation (`normalize`): NFKC, casefold, apostrophes deleted ("don't" = "dont"), every other
punctuation or symbol character (Unicode P* and S*, and '_') replaced by a space ("state-of-the-art" =
"state of the art"), so case, spacing and punctuation edits never hide an overlap.

Words and CJK. Words are whitespace tokens, except that each CJK character (Chinese, Japanese kana) is a
word of its own, since those scripts put no spaces between words. A CJK character counts as half a word:
an n-gram is the shortest run of words, starting at any word, that weighs at least n, so in Chinese a
13-gram is 26 characters (a Chinese word is about 1.5-2 characters; 13 characters would match stock
phrases) and in mixed text the two rules blend. The weight of a run depends only on its own words, so a
passage copied into a longer text yields the same n-grams there.

Short texts. A text weighing less than n words but at least 8 (`MIN_WHOLE_TEXT_WORDS`) is one n-gram: its
whole normalised text, as GPT-3 did for short examples. It matches wherever it occurs as a run of words
in a row of the other side (a 10-word evaluation question pasted into a long training answer is found).
Texts under 8 words are skipped: "what is the capital of france" is everywhere and proves nothing.

Speed. Each distinct word is hashed once (blake2b, 8 bytes: stable across processes, unlike Python's
``hash()``); n-gram hashes are polynomial combinations of word hashes mod 2**64 computed for all rows at
once from prefix sums; the evaluation n-grams are a sorted numpy array behind a bitmap prefilter, and
training rows are streamed through it in batches. 20k training rows of ~160 words against 2k evaluation
rows take about 1.2 s on one CPU core here, with ~300 MB peak memory.
"""

from __future__ import annotations

import hashlib
import itertools
import re
import unicodedata
from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from tunelab.data.quality import CJK_RANGES
from tunelab.errors import TunelabError

__all__ = ["MIN_WHOLE_TEXT_WORDS", "ContaminationHit", "find_contamination", "ngrams", "normalize", "tokens"]

MIN_WHOLE_TEXT_WORDS = 8
# Training rows hashed per batch: peak memory ~200 bytes per token (measured), ~270 MB at 160 words a row.
_TRAIN_BATCH = 8192

_TOKEN_RE = re.compile(rf"[{CJK_RANGES}]|[^\s{CJK_RANGES}]+")
_CJK_RE = re.compile(f"[{CJK_RANGES}]")
_U64 = np.uint64
_P = _U64(0x9E3779B97F4A7C15)  # odd multiplier of the polynomial n-gram hash
_P_INV = _U64(pow(0x9E3779B97F4A7C15, -1, 2**64))  # its inverse mod 2**64 (exists because _P is odd)


@dataclass
class ContaminationHit:
    """A training row that shares n-grams with an evaluation row.

    Attributes:
        train_index: position of the row in ``train_texts``.
        eval_index: the evaluation row it overlaps most (ties: the lowest index).
        overlap: distinct n-grams the two rows share (a whole short text counts as one).
        fraction: ``overlap`` / distinct n-grams of the training row, capped at 1.0.
        example_ngram: one shared n-gram (the first in the training row), normalised.
    """

    train_index: int
    eval_index: int
    overlap: int
    fraction: float
    example_ngram: str


class _PunctuationTable(dict):
    """``str.translate`` table: apostrophes deleted, other punctuation/symbols to spaces, the rest kept.

    Filled on first sight of each character, so the per-character work after that is a C dict lookup.
    """

    def __missing__(self, code: int) -> str:
        ch = chr(code)
        if ch in _APOSTROPHES:
            value = ""
        elif ch == "_" or unicodedata.category(ch)[0] in "PS":
            value = " "
        else:
            value = ch
        self[code] = value
        return value


_APOSTROPHES = "'\u2019\u2018\u02bc`"
_PUNCTUATION = _PunctuationTable()


def normalize(text: str) -> str:
    """NFKC, casefold, apostrophes deleted, other punctuation and symbols turned into spaces."""
    return unicodedata.normalize("NFKC", text).casefold().translate(_PUNCTUATION)


def tokens(text: str) -> list[str]:
    """Normalised words of a text: whitespace tokens, each CJK character a token of its own."""
    text = normalize(text)
    # str.split is ~10x faster than the regex; most texts have no CJK character.
    return _TOKEN_RE.findall(text) if _CJK_RE.search(text) else text.split()


def _weights(toks: Sequence[str]) -> list[int]:
    """Weight of each token in half-words: 1 for a CJK character, 2 for any other word."""
    return [1 if _CJK_RE.match(t) else 2 for t in toks]


def _spans(weights: Sequence[int], n: int) -> list[tuple[int, int]]:
    """(start, end) token spans, end exclusive, of a text's n-grams (reference implementation).

    Each span starts at a token and is the shortest run weighing at least n words (2n half-words). A text
    lighter than n words is one span if it weighs at least `MIN_WHOLE_TEXT_WORDS`, else none.
    """
    total = sum(weights)
    if total < 2 * n:
        return [(0, len(weights))] if total >= 2 * MIN_WHOLE_TEXT_WORDS else []
    spans, end, acc = [], 0, 0
    for start in range(len(weights)):
        while end < len(weights) and acc < 2 * n:
            acc += weights[end]
            end += 1
        if acc < 2 * n:
            break
        spans.append((start, end))
        acc -= weights[start]
    return spans


def ngrams(text: str, n: int = 13) -> set[tuple[str, ...]]:
    """The n-grams of a text under the contamination convention of this module (see its docstring).

    Args:
        text: any text.
        n: n-gram length in words (a CJK character weighs half a word).

    Returns:
        Each n-gram as a tuple of normalised tokens; ``{whole text}`` for a text of 8 to n-1 words;
        empty for shorter texts.
    """
    _check_args(n, 1)
    toks = tokens(text)
    return {tuple(toks[s:e]) for s, e in _spans(_weights(toks), n)}


def _check_args(n: int, min_overlap: int) -> None:
    if n < 1:
        raise TunelabError(f"n-gram size must be at least 1, got {n}", where="n", fix="use n=13 (the default)")
    if min_overlap < 1:
        raise TunelabError(f"min_overlap must be at least 1, got {min_overlap}", where="min_overlap")


# ---------------------------------------------------------------------------------------------------
# Vectorised hashing of all rows of one side
# ---------------------------------------------------------------------------------------------------


@dataclass
class _Side:
    """All rows of one side as flat token arrays. N = total tokens, R = rows."""

    toks: list[list[str]]
    hashes: np.ndarray  # (N,) uint64: hash of each token
    row_of: np.ndarray  # (N,) int64: row of each token
    starts: np.ndarray  # (R,) int64: first token of each row
    ends: np.ndarray  # (R,) int64: one past the last token of each row
    weight_csum: np.ndarray  # (N+1,) int64: half-word weight of tokens [0, i)
    prefix: np.ndarray  # (N+1,) uint64: sum of token_hash[q] * P**q for q < i
    inv_pow: np.ndarray  # (N+1,) uint64: P**-i


class _Vocab:
    """Token ids shared by all rows, with each distinct token's hash and weight computed once."""

    def __init__(self) -> None:
        self.ids: defaultdict[str, int] = defaultdict(itertools.count().__next__)
        self.hashes = np.zeros(0, dtype=_U64)  # (V,) by token id
        self.weights = np.zeros(0, dtype=np.int64)  # (V,) by token id

    def encode(self, flat: list[str]) -> tuple[np.ndarray, np.ndarray]:
        """(token hashes (N,) uint64, token weights (N,) int64) of a flat token list."""
        ids = np.fromiter(map(self.ids.__getitem__, flat), dtype=np.int64, count=len(flat))
        new = list(itertools.islice(self.ids, self.hashes.size, None))  # tokens first seen just now
        digests = b"".join(hashlib.blake2b(tok.encode(), digest_size=8).digest() for tok in new)
        self.hashes = np.concatenate([self.hashes, np.frombuffer(digests, dtype="<u8").astype(_U64)])
        self.weights = np.concatenate([self.weights, [1 if _CJK_RE.match(t) else 2 for t in new]])
        return self.hashes[ids], self.weights[ids]


def _side(texts: Sequence[str], vocab: _Vocab) -> _Side:
    """Tokenise and hash every row of one side."""
    toks = [tokens(t) for t in texts]
    lengths = np.array([len(t) for t in toks], dtype=np.int64)
    ends = np.cumsum(lengths)
    hashes, weights = vocab.encode(list(itertools.chain.from_iterable(toks)))
    ones = np.ones(1, dtype=_U64)
    pow_from_0 = np.concatenate([ones, np.cumprod(np.full(hashes.size, _P, dtype=_U64))])  # P**0..P**N
    inv_pow = np.concatenate([ones, np.cumprod(np.full(hashes.size, _P_INV, dtype=_U64))])  # P**-0..P**-N
    return _Side(
        toks=toks,
        hashes=hashes,
        row_of=np.repeat(np.arange(len(texts), dtype=np.int64), lengths),
        starts=ends - lengths,
        ends=ends,
        weight_csum=np.concatenate([[0], np.cumsum(weights)]),
        prefix=np.concatenate([np.zeros(1, dtype=_U64), np.cumsum(hashes * pow_from_0[:-1], dtype=_U64)]),
        inv_pow=inv_pow,
    )


def _span_hashes(side: _Side, start: np.ndarray, end: np.ndarray) -> np.ndarray:
    """Hash of each token span [start, end): sum of token_hash[start + k] * P**k, position-free."""
    return (side.prefix[end] - side.prefix[start]) * side.inv_pow[start]


@dataclass
class _Grams:
    """N-gram occurrences: hash, row, and token span [start, end) in the side's flat arrays."""

    hash: np.ndarray
    row: np.ndarray
    start: np.ndarray
    end: np.ndarray

    @classmethod
    def of(cls, side: _Side, start: np.ndarray, end: np.ndarray) -> _Grams:
        return cls(_span_hashes(side, start, end), side.row_of[start], start, end)


def _long_grams(side: _Side, n: int) -> _Grams:
    """The n-grams of rows weighing at least n words (shortest span of weight ≥ 2n from each token)."""
    start = np.arange(len(side.row_of), dtype=np.int64)
    if side.weight_csum[-1] == 2 * start.size:  # no CJK on this side: every n-gram is n tokens
        end = start + n
    else:  # one past the first token at which the weight from `start` reaches 2n
        end = np.searchsorted(side.weight_csum, side.weight_csum[start] + 2 * n, side="left")
    ok = end <= side.ends[side.row_of[start]] if start.size else np.zeros(0, dtype=bool)
    return _Grams.of(side, start[ok], end[ok])


def _whole_grams(side: _Side, n: int) -> _Grams:
    """One gram per row weighing between `MIN_WHOLE_TEXT_WORDS` and n words: the whole row."""
    weight = side.weight_csum[side.ends] - side.weight_csum[side.starts]
    short = (weight >= 2 * MIN_WHOLE_TEXT_WORDS) & (weight < 2 * n)
    return _Grams.of(side, side.starts[short], side.ends[short])


def _fixed_grams(side: _Side, wanted: _Grams, other: _Side) -> _Grams:
    """Runs of this side's tokens that could equal one of `wanted` (whole short texts of `other`).

    Only runs of the same number of tokens, starting with the same token as some wanted text, are
    hashed: that skips almost every position of a large side.
    """
    parts = []
    for m in np.unique(wanted.end - wanted.start):
        first_tokens = other.hashes[wanted.start[wanted.end - wanted.start == m]]
        start = np.flatnonzero(np.isin(side.hashes, first_tokens))
        start = start[start + m <= side.ends[side.row_of[start]]]
        parts.append(_Grams.of(side, start, start + m))
    return _concat(parts)


def _concat(parts: list[_Grams]) -> _Grams:
    if not parts:
        empty_i, empty_u = np.zeros(0, dtype=np.int64), np.zeros(0, dtype=_U64)
        return _Grams(empty_u, empty_i, empty_i, empty_i)
    return _Grams(*(np.concatenate([getattr(p, f) for p in parts]) for f in ("hash", "row", "start", "end")))


# ---------------------------------------------------------------------------------------------------
# Matching
# ---------------------------------------------------------------------------------------------------


@dataclass
class _Matches:
    """Shared n-grams: one entry per (train gram occurrence, eval row) with equal hashes."""

    train_row: np.ndarray
    eval_row: np.ndarray
    hash: np.ndarray
    start: np.ndarray  # token span of the train occurrence, in the train side's flat arrays
    end: np.ndarray

    @classmethod
    def concat(cls, parts: list[_Matches]) -> _Matches:
        return cls(*(np.concatenate([getattr(p, f) for p in parts])
                     for f in ("train_row", "eval_row", "hash", "start", "end")))


class _Index:
    """Eval n-grams sorted by hash (one entry per hash and eval row), with a bitmap prefilter.

    Most train n-grams match nothing, and one gather from a bitmap with ~16 bits per entry is an order of
    magnitude faster than a binary search per n-gram; the few false candidates drop out in the search.
    """

    def __init__(self, grams: _Grams) -> None:
        order = np.lexsort((grams.row, grams.hash))
        h, r = grams.hash[order], grams.row[order]
        first = _runs(h, r)
        self.hash, self.row = h[first], r[first]
        bits = int(np.clip(np.ceil(np.log2(max(self.hash.size, 1) * 16)), 10, 26))
        self.mask = _U64((1 << bits) - 1)
        self.bitmap = np.zeros(1 << bits, dtype=bool)
        self.bitmap[self.hash & self.mask] = True

    def lookup(self, train: _Grams) -> _Matches:
        """Every (train gram occurrence, eval row) pair with equal hashes."""
        candidates = np.flatnonzero(self.bitmap[train.hash & self.mask])
        lo = np.searchsorted(self.hash, train.hash[candidates], side="left")
        counts = np.searchsorted(self.hash, train.hash[candidates], side="right") - lo
        gram = np.repeat(candidates, counts)
        # Position of each match in the sorted eval arrays: its gram's `lo` plus its rank within the run.
        rank = np.arange(gram.size) - np.repeat(np.cumsum(counts) - counts, counts)
        return _Matches(train.row[gram], self.row[np.repeat(lo, counts) + rank], train.hash[gram],
                        train.start[gram], train.end[gram])


def _runs(*keys: np.ndarray) -> np.ndarray:
    """Start indices of the runs of equal key tuples in arrays already sorted by those keys."""
    if keys[0].size == 0:
        return np.zeros(0, dtype=np.int64)
    change = np.zeros(keys[0].size - 1, dtype=bool)
    for key in keys:
        change |= key[1:] != key[:-1]
    return np.flatnonzero(np.r_[True, change])


def _best_pairs(m: _Matches) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Per train row: the eval row sharing most distinct hashes (ties: lowest index), that count, and the
    token span of the first shared n-gram in the train row."""
    # Distinct hashes per (train row, eval row), each at its first occurrence in the train row.
    order = np.lexsort((m.start, m.hash, m.eval_row, m.train_row))
    first = order[_runs(m.train_row[order], m.eval_row[order], m.hash[order])]
    # Grouped by pair in train-row order: each pair's run starts with its earliest shared n-gram.
    first = first[np.lexsort((m.start[first], m.eval_row[first], m.train_row[first]))]
    pair_runs = _runs(m.train_row[first], m.eval_row[first])
    pair, overlap = first[pair_runs], np.diff(np.r_[pair_runs, first.size])
    best = np.lexsort((m.eval_row[pair], -overlap, m.train_row[pair]))
    best = best[_runs(m.train_row[pair][best])]
    chosen = pair[best]
    return m.train_row[chosen], m.eval_row[chosen], overlap[best], m.start[chosen], m.end[chosen]


def _denominators(grams: _Grams, rows: np.ndarray) -> np.ndarray:
    """Distinct n-grams of each given train row (its own n-grams, or 1 for a whole short text)."""
    order = np.argsort(grams.row, kind="stable")
    sorted_rows, sorted_hash = grams.row[order], grams.hash[order]
    lo, hi = np.searchsorted(sorted_rows, rows, "left"), np.searchsorted(sorted_rows, rows, "right")
    return np.array([max(1, np.unique(sorted_hash[a:b]).size) for a, b in zip(lo, hi, strict=True)],
                    dtype=np.int64)


def _gram_text(side: _Side, start: int, end: int, row: int) -> str:
    """The normalised words of a span; CJK characters are joined without spaces."""
    toks = side.toks[row][start - int(side.starts[row]):end - int(side.starts[row])]
    out = ""
    for tok in toks:
        glue = "" if not out or (_CJK_RE.match(tok) and _CJK_RE.match(out[-1])) else " "
        out += glue + tok
    return out


@dataclass
class _Eval:
    """The evaluation side, hashed and indexed once for all training batches."""

    side: _Side
    long: _Index  # n-grams of rows of n words or more
    short: _Grams  # whole texts of 8 to n-1 words
    short_index: _Index


def _batch_hits(texts: Sequence[str], offset: int, ev: _Eval, vocab: _Vocab, n: int,
                min_overlap: int) -> list[ContaminationHit]:
    """Hits of one batch of training rows (row numbers shifted by `offset`)."""
    train = _side(texts, vocab)
    train_long, train_short = _long_grams(train, n), _whole_grams(train, n)
    matches = _Matches.concat([
        ev.long.lookup(train_long),
        # A whole short text is looked for as every run of as many tokens on the other side.
        ev.short_index.lookup(_fixed_grams(train, ev.short, ev.side)),
        _Index(_fixed_grams(ev.side, train_short, train)).lookup(train_short),
    ])
    rows, eval_rows, overlap, start, end = _best_pairs(matches)
    keep = overlap >= min_overlap
    rows, eval_rows, overlap, start, end = rows[keep], eval_rows[keep], overlap[keep], start[keep], end[keep]
    denom = _denominators(_concat([train_long, train_short]), rows)
    return [ContaminationHit(offset + int(r), int(e), int(o), min(1.0, float(o) / float(d)),
                             _gram_text(train, int(a), int(b), int(r)))
            for r, e, o, d, a, b in zip(rows, eval_rows, overlap, denom, start, end, strict=True)]


def find_contamination(train_texts: list[str], eval_texts: list[str], n: int = 13,
                       min_overlap: int = 1) -> list[ContaminationHit]:
    """Training rows that share n-grams with evaluation rows.

    Args:
        train_texts: training rows (e.g. each example's messages joined).
        eval_texts: evaluation rows (benchmark prompts, answers, passages).
        n: n-gram length in words (13 by convention; a CJK character weighs half a word).
        min_overlap: report a row only if it shares at least this many distinct n-grams with one
            evaluation row.

    Returns:
        One hit per contaminated training row, in training order, naming the evaluation row it overlaps
        most.

    Raises:
        TunelabError: n or min_overlap below 1.
    """
    _check_args(n, min_overlap)
    vocab = _Vocab()
    side = _side(eval_texts, vocab)
    short = _whole_grams(side, n)
    ev = _Eval(side, _Index(_long_grams(side, n)), short, _Index(short))
    hits: list[ContaminationHit] = []
    # Training rows go in batches so memory stays bounded (~200 bytes per token) whatever their number.
    for offset in range(0, len(train_texts), _TRAIN_BATCH):
        hits += _batch_hits(train_texts[offset:offset + _TRAIN_BATCH], offset, ev, vocab, n, min_overlap)
    return hits
