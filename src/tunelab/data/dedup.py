"""Exact and near-duplicate detection for text datasets: MinHash + LSH banding, vectorised with numpy.

Pure functions over a list of strings::

    plan = dedup_plan(texts)                 # DedupPlan(keep=[...], dropped={i: (kept_i, reason)}, clusters=[...])
    near_duplicate_clusters(texts)           # [[0, 7], [3, 9, 12], ...]
    exact_duplicate_clusters(texts)          # same, for texts equal after `normalize_for_hash`

How a text becomes a set. `normalize_for_hash` applies NFKC, casefolds, deletes punctuation and symbols
(Unicode categories P* and S*) and collapses whitespace, so case, spacing and punctuation edits never
count as differences. The normalised words are cut into overlapping word 5-grams (``shingle=5``): one
edited word then changes at most five shingles, so documents of ~70 words or more that differ by one word
stay above Jaccard 0.85, while sentences that merely share a common phrase stay far apart. Texts written
without spaces (Chinese, Japanese, Thai: at least half their characters in such scripts, or few spaces
overall, i.e. a mean "word" of 10+ characters) use character 5-grams of the text with spaces removed,
because a whitespace "word" there would be a whole clause. A text with fewer units than the shingle size
(including the empty string) is one shingle: its whole normalised text.

How sets become signatures (the fast part). Each distinct word is hashed once per call (blake2b, stable
across processes: Python's ``hash()`` is salted by PYTHONHASHSEED); a document's shingle hashes are
polynomial rolling combinations of its word hashes computed for a whole batch of documents at once, then
mixed to 32 bits. All ``num_perm`` permutations are applied together as the multiply-add-shift universal
hash ``((a * x + b) mod 2**64) >> 32`` over (num_perm, n_shingles) blocks, and ``np.minimum.reduceat``
takes each document's minimum. Multiply-add-shift is strongly universal for 32-bit keys, like datasketch's
``(a * x + b) mod (2**61 - 1)``, but needs no 64-bit division, the slowest numpy integer operation.

How signatures become clusters. LSH splits each signature into ``bands`` bands of ``rows`` values; documents
that agree on a whole band become candidate pairs; a pair is confirmed when the fraction of agreeing
signature values (an unbiased estimate of the Jaccard similarity) is at least ``threshold``; confirmed pairs
are joined into clusters with union-find.

Defaults: 128 permutations in 16 bands of 8 rows. A pair of similarity s becomes a candidate with
probability ``1 - (1 - s**8)**16``: 50% at s = 0.674 and 95% at s = 0.802 (`MinHashParams.similarity_at`),
99.4% at 0.85. So pairs at the confirmation threshold (0.8) are almost all examined, while the estimate's
standard error at 128 permutations (about 0.035 near s = 0.8) keeps pairs below ~0.7 from being confirmed.
Fewer rows per band would examine more unrelated pairs for no gain in recall at 0.8; more permutations
would sharpen the estimate at a proportional cost in time and memory (num_perm * 4 bytes per document).
"""

from __future__ import annotations

import functools
import hashlib
import re
import unicodedata
from collections import defaultdict
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field

import numpy as np

from tunelab.errors import TunelabError

__all__ = [
    "DedupPlan", "MinHashParams", "choose_representative", "dedup_plan", "exact_duplicate_clusters", "jaccard",
    "minhash_signatures", "near_duplicate_clusters", "normalize_for_hash", "shingles",
]

# Documents hashed per batch: bounds the flat token and shingle arrays (a few MB) whatever the corpus size.
_DOC_BATCH = 4096
# Shingles per permutation block: (num_perm=128, 8192) uint64 = 8 MB (measured best of 2k-32k here).
_SHINGLE_BLOCK = 8192
# Confirmed in blocks of this many candidate pairs: (pairs, num_perm) boolean comparisons.
_PAIR_BLOCK = 65536
# Within one band bucket, each document is paired with at most this many following members (all pairs
# for buckets up to 33 documents; larger buckets stay connected through these overlapping windows).
_BUCKET_SPAN = 32
# The token-hash cache is dropped between batches when it grows beyond this many distinct tokens.
_VOCAB_CAP = 2_000_000
# A text is "written without spaces" when its mean whitespace-separated word has at least this many chars.
_UNSPACED_MEAN_WORD = 10
_NO_SPACE_SCRIPTS = re.compile("[\u0e00-\u0e7f\u0e80-\u0eff\u1000-\u109f\u1780-\u17ff"
                               "\u3040-\u30ff\u3400-\u4dbf\u4e00-\u9fff\uf900-\ufaff]")

_U64 = np.uint64
_P = _U64(0x9E3779B97F4A7C15)  # odd 64-bit multiplier of the rolling shingle hash (golden ratio)
_SEED_HASH = _U64(0x2545F4914F6CDD1D)  # start value of the rolling hash; the empty text hashes to it
_MIX1, _MIX2 = _U64(0xFF51AFD7ED558CCD), _U64(0xC4CEB9FE1A85EC53)  # murmur3 fmix64 constants
_S33, _S32 = _U64(33), _U64(32)


@dataclass(frozen=True)
class MinHashParams:
    """MinHash and LSH settings (see the module docstring for the defaults' reasoning).

    Attributes:
        shingle: words per shingle (word n-grams).
        num_perm: hash permutations, i.e. values per signature.
        bands: LSH bands; ``num_perm`` must be a multiple of it (rows per band = num_perm // bands).
        threshold: estimated Jaccard similarity (fraction of equal signature values) that confirms a pair.
        seed: seed of the permutations; signatures are comparable only under equal params.
        char_shingle: characters per shingle for texts written without spaces.
    """

    shingle: int = 5
    num_perm: int = 128
    bands: int = 16
    threshold: float = 0.8
    seed: int = 1
    char_shingle: int = 5

    def __post_init__(self):
        if self.shingle < 1 or self.char_shingle < 1:
            raise TunelabError(f"shingle sizes must be >= 1, got {self.shingle} and {self.char_shingle}",
                               where="dedup.shingle")
        if self.num_perm < 1 or self.bands < 1 or self.num_perm % self.bands:
            raise TunelabError(f"num_perm ({self.num_perm}) must be a positive multiple of bands ({self.bands})",
                               where="dedup.bands", fix="e.g. num_perm=128 with bands=16, 32 or 64")
        if not 0.0 < self.threshold <= 1.0:
            raise TunelabError(f"threshold must be in (0, 1], got {self.threshold}", where="dedup.threshold")

    @property
    def rows(self) -> int:
        """Signature values per band."""
        return self.num_perm // self.bands

    def detection_probability(self, s: float) -> float:
        """Probability that a pair of Jaccard similarity ``s`` shares at least one band: 1 - (1 - s^r)^b."""
        return 1.0 - (1.0 - s**self.rows) ** self.bands

    def similarity_at(self, p: float) -> float:
        """The Jaccard similarity that becomes a candidate with probability ``p`` (inverse of the above)."""
        if not 0.0 <= p <= 1.0:
            raise TunelabError(f"probability must be in [0, 1], got {p}")
        lo, hi = 0.0, 1.0
        for _ in range(60):  # detection_probability is increasing in s; 60 halvings reach double precision
            mid = (lo + hi) / 2
            lo, hi = (mid, hi) if self.detection_probability(mid) < p else (lo, mid)
        return (lo + hi) / 2


@dataclass(frozen=True)
class DedupPlan:
    """What `dedup_plan` decided.

    Attributes:
        keep: indices to keep, ascending.
        dropped: for each dropped index, ``(kept_index, reason)``; the reason is ``"exact duplicate of row i"``
            or ``"near duplicate of row i (est. Jaccard 0.91)"``, and ``kept_index`` is always in ``keep``.
        clusters: the duplicate clusters (size >= 2, ascending, sorted by first index), exact and near merged.
    """

    keep: list[int]
    dropped: dict[int, tuple[int, str]] = field(default_factory=dict)
    clusters: list[list[int]] = field(default_factory=list)


# ---------------------------------------------------------------------------------------------- normalising


@functools.cache
def _punct_table() -> dict[int, None]:
    # `[^\w\s]` would also delete combining marks (Devanagari vowel signs, Thai vowels), which are not
    # punctuation; so the table holds the Unicode categories P* and S* (BMP + SMP, ~10 ms once).
    # str.translate with it is ~6x faster than an equivalent regex character class.
    return {c: None for c in range(0x20000) if unicodedata.category(chr(c))[0] in "PS"}


def _words(text: str) -> list[str]:
    return unicodedata.normalize("NFKC", text).casefold().translate(_punct_table()).split()


def normalize_for_hash(text: str) -> str:
    """NFKC, casefold, delete punctuation and symbols, collapse whitespace to single spaces, strip.

    Example: ``normalize_for_hash("  Hello,   WORLD!! ")`` is ``"hello world"``.
    """
    return " ".join(_words(text))


def _is_unspaced(words: list[str], joined: str) -> bool:
    if len(joined) >= _UNSPACED_MEAN_WORD * len(words) > 0:
        return True
    # isascii() is O(1) in CPython, so English text skips the script scan.
    return not joined.isascii() and 2 * len(_NO_SPACE_SCRIPTS.findall(joined)) >= len(joined)


def _units(text: str) -> tuple[list[str], bool]:
    """The words of a text, or its characters (spaces removed) when it is written without spaces."""
    words = _words(text)
    joined = "".join(words)
    return (list(joined), True) if _is_unspaced(words, joined) else (words, False)


def shingles(text: str, params: MinHashParams | None = None) -> list[str]:
    """The shingles MinHash sees for ``text``, as strings (word n-grams joined by spaces, or char n-grams).

    This is the reference definition (used for exact Jaccard and by the benchmark's baseline);
    `minhash_signatures` computes hashes of exactly these sets without building the strings.
    """
    params = params or MinHashParams()
    units, chars = _units(text)
    k, sep = (params.char_shingle, "") if chars else (params.shingle, " ")
    if len(units) <= k:
        return [sep.join(units)]
    return [sep.join(units[i:i + k]) for i in range(len(units) - k + 1)]


def jaccard(a: str, b: str, params: MinHashParams | None = None) -> float:
    """Exact Jaccard similarity of the shingle sets of two texts."""
    sa, sb = set(shingles(a, params)), set(shingles(b, params))
    return len(sa & sb) / len(sa | sb)


# ------------------------------------------------------------------------------------------ exact duplicates


def _digest(text: str) -> bytes:
    return hashlib.blake2b(normalize_for_hash(text).encode(), digest_size=16).digest()


def exact_duplicate_clusters(texts: list[str]) -> list[list[int]]:
    """Clusters (size >= 2) of texts equal after `normalize_for_hash`, ascending, sorted by first index."""
    by_key: dict[bytes, list[int]] = defaultdict(list)
    for i, text in enumerate(texts):
        by_key[_digest(text)].append(i)
    # Dicts keep insertion order, so clusters come out sorted by first index, members ascending.
    return [idx for idx in by_key.values() if len(idx) >= 2]


# ------------------------------------------------------------------------------------------------- MinHash


def _ranges(begins: np.ndarray, counts: np.ndarray) -> np.ndarray:
    """Concatenated ``arange(b, b + c)`` for each (b, c), without a Python loop."""
    ends = np.cumsum(counts)
    return np.repeat(begins - (ends - counts), counts) + np.arange(ends[-1] if len(ends) else 0)


def _offsets(counts: np.ndarray) -> np.ndarray:
    out = np.zeros(len(counts), np.int64)
    np.cumsum(counts[:-1], out=out[1:])
    return out


def _fmix64(x: np.ndarray) -> np.ndarray:
    # Murmur3's finaliser: every input bit reaches every output bit before we keep the top 32.
    x ^= x >> _S33
    x *= _MIX1
    x ^= x >> _S33
    x *= _MIX2
    x ^= x >> _S33
    return x


class _ShingleHasher:
    """Turns batches of texts into flat 32-bit shingle hashes; caches each distinct unit's hash."""

    def __init__(self, params: MinHashParams):
        self.params = params
        self.vocab: defaultdict[str, int] = defaultdict()
        self.vocab.default_factory = self.vocab.__len__  # an unseen unit gets the next id
        self.unit_hash = np.empty(0, _U64)  # (len(vocab),) blake2b-64 of each unit

    def _unit_ids(self, texts: Sequence[str]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        if len(self.vocab) > _VOCAB_CAP:
            self.vocab.clear()
            self.unit_hash = np.empty(0, _U64)
        ids: list[int] = []
        lengths, is_char = [], []
        lookup = self.vocab.__getitem__
        for text in texts:
            units, chars = _units(text)
            ids.extend(map(lookup, units))
            lengths.append(len(units))
            is_char.append(chars)
        return np.array(ids, np.int64), np.array(lengths, np.int64), np.array(is_char, bool)

    def _hash_new_units(self) -> None:
        new = list(self.vocab)[len(self.unit_hash):]
        if new:
            digests = b"".join(hashlib.blake2b(u.encode(), digest_size=8).digest() for u in new)
            self.unit_hash = np.concatenate([self.unit_hash, np.frombuffer(digests, "<u8").astype(_U64)])

    def batch(self, texts: Sequence[str]) -> tuple[np.ndarray, np.ndarray]:
        """Shingle hashes of a batch: ``(hashes (n_shingles,) uint64 < 2**32, counts (n_docs,) int64)``."""
        ids, lengths, is_char = self._unit_ids(texts)
        self._hash_new_units()
        k = np.where(is_char, self.params.char_shingle, self.params.shingle)  # (n_docs,)
        return _rolling_shingles(self.unit_hash[ids], lengths, k)


def _rolling_shingles(units: np.ndarray, lengths: np.ndarray, k: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Hash every window of ``k[d]`` units of each document d, over a flat (n_units,) array.

    ``h_w[i]`` is the rolling hash of ``units[i:i+w]``; windows that run past a document's end are computed
    (it is cheaper than masking) and never selected. A document shorter than its k is one shingle: all of it.
    """
    n = len(units)
    starts = _offsets(lengths)
    counts = np.maximum(lengths - k + 1, 1)
    first = _offsets(counts)  # (n_docs,) where each document's shingles begin in the output
    out = np.full(int(counts.sum()), _SEED_HASH, _U64)  # empty documents keep the seed value
    padded = np.concatenate([units, np.zeros(int(k.max(initial=1)), _U64)])
    h = np.full(n, _SEED_HASH, _U64)
    for w in range(1, int(k.max(initial=1)) + 1):
        h = h * _P + padded[w - 1:w - 1 + n]  # uint64 arithmetic wraps: a polynomial hash mod 2**64
        whole = np.flatnonzero((lengths == w) & (w < k))
        out[first[whole]] = h[starts[whole]]
        full = np.flatnonzero((k == w) & (lengths >= w))
        if len(full):
            out[_ranges(first[full], counts[full])] = h[_ranges(starts[full], counts[full])]
    return _fmix64(out) >> _S32, counts


@functools.cache
def _permutations(num_perm: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """(num_perm,) multipliers ``a`` (odd) and offsets ``b``, from blake2b: the same on every platform and
    numpy version (numpy promises stable bit streams, not stable ``Generator.integers``)."""
    raw = b"".join(hashlib.blake2b(f"minhash:{seed}:{i}".encode(), digest_size=16).digest() for i in range(num_perm))
    ab = np.frombuffer(raw, "<u8").astype(_U64).reshape(num_perm, 2)
    return ab[:, 0] | _U64(1), ab[:, 1].copy()


def _min_hash(x: np.ndarray, counts: np.ndarray, a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Per-document minimum of ``(a * x + b) mod 2**64`` for every permutation: (n_docs, num_perm) uint32."""
    first = _offsets(counts)
    # Permutations on the first axis: reduceat then runs along contiguous rows (3x faster than axis 0).
    sig = np.full((len(a), len(counts)), np.iinfo(_U64).max, _U64)  # (num_perm, n_docs)
    buf = np.empty((len(a), _SHINGLE_BLOCK), _U64)
    for c0 in range(0, len(x), _SHINGLE_BLOCK):
        c1 = min(c0 + _SHINGLE_BLOCK, len(x))
        d0 = int(np.searchsorted(first, c0, "right")) - 1  # document owning shingle c0
        d1 = int(np.searchsorted(first, c1 - 1, "right"))  # one past the document owning shingle c1-1
        block = buf[:, :c1 - c0]
        np.multiply(a[:, None], x[None, c0:c1], out=block)  # (num_perm, block), wraps mod 2**64
        block += b[:, None]
        mins = np.minimum.reduceat(block, np.maximum(first[d0:d1] - c0, 0), axis=1)  # (num_perm, d1-d0)
        np.minimum(sig[:, d0:d1], mins, out=sig[:, d0:d1])
    # The minimum of the full 64-bit values has the minimum top half: shifting once at the end is enough.
    return np.ascontiguousarray((sig >> _S32).astype(np.uint32).T)


def _batches(n: int, progress: bool, what: str) -> Iterator[tuple[int, int]]:
    spans = [(lo, min(lo + _DOC_BATCH, n)) for lo in range(0, n, _DOC_BATCH)]
    if not progress:
        yield from spans
        return
    from rich.progress import Progress

    with Progress(transient=True) as bar:
        task = bar.add_task(what, total=n)
        for lo, hi in spans:
            yield lo, hi
            bar.advance(task, hi - lo)


def minhash_signatures(texts: Sequence[str], params: MinHashParams | None = None,
                       progress: bool = False) -> np.ndarray:
    """MinHash signatures of the shingle sets (see `shingles`) of each text.

    Args:
        texts: the documents.
        params: shingle size, permutations and seed (default `MinHashParams()`).
        progress: show a progress bar (rich, on stderr).

    Returns:
        ``(n_docs, num_perm)`` uint32; equal params give equal signatures in every process. The fraction of
        positions where two rows agree estimates the Jaccard similarity of the two shingle sets.
    """
    params = params or MinHashParams()
    a, b = _permutations(params.num_perm, params.seed)
    sig = np.empty((len(texts), params.num_perm), np.uint32)
    hasher = _ShingleHasher(params)
    for lo, hi in _batches(len(texts), progress, "MinHash"):
        x, counts = hasher.batch(texts[lo:hi])
        sig[lo:hi] = _min_hash(x, counts, a, b)
    return sig


# ------------------------------------------------------------------------------------------ LSH and clusters


def _band_keys(band: np.ndarray) -> np.ndarray:
    """A 64-bit key per row of a (n_docs, rows) band; a rare collision only adds a pair that is then rejected."""
    key = np.full(len(band), _SEED_HASH, _U64)
    for col in band.T.astype(_U64):
        key = (key ^ col) * _P
    return key


def _bucket_pairs(key: np.ndarray) -> list[np.ndarray]:
    """Pairs ``i * n + j`` (i < j) of documents with equal keys (the same bucket of one band)."""
    order = np.argsort(key, kind="stable")  # stable: ascending document index within a bucket
    sk = key[order]
    new_bucket = np.concatenate([[True], sk[1:] != sk[:-1]])
    if new_bucket.all():
        return []
    bucket = np.cumsum(new_bucket)
    out, n = [], len(key)
    for t in range(1, _BUCKET_SPAN + 1):
        same = bucket[t:] == bucket[:-t]  # member i and the member t places after it share a bucket
        if not same.any():
            break
        out.append(order[:-t][same] * n + order[t:][same])
    return out


def _candidate_pairs(sig: np.ndarray, params: MinHashParams) -> np.ndarray:
    r, codes = params.rows, []
    for band in range(params.bands):
        codes += _bucket_pairs(_band_keys(sig[:, band * r:(band + 1) * r]))
    if not codes:
        return np.empty((0, 2), np.int64)
    flat = np.unique(np.concatenate(codes))  # a pair found in several bands counts once
    return np.stack([flat // len(sig), flat % len(sig)], axis=1)


def _agreement(sig: np.ndarray, pairs: np.ndarray) -> np.ndarray:
    """Fraction of equal signature values for each (i, j) pair: the estimated Jaccard, (n_pairs,) float."""
    est = np.empty(len(pairs))
    for lo in range(0, len(pairs), _PAIR_BLOCK):
        i, j = pairs[lo:lo + _PAIR_BLOCK].T
        est[lo:lo + len(i)] = np.count_nonzero(sig[i] == sig[j], axis=1) / sig.shape[1]
    return est


def _confirmed_pairs(sig: np.ndarray, params: MinHashParams) -> np.ndarray:
    pairs = _candidate_pairs(sig, params)
    # A tiny epsilon so that e.g. 103/128 >= 0.8 is not lost to float rounding of the threshold.
    return pairs[_agreement(sig, pairs) >= params.threshold - 1e-12]


def _clusters(n: int, pairs: Sequence[Sequence[int]] | np.ndarray) -> list[list[int]]:
    """Connected components (size >= 2) of the pairs graph, by union-find with path halving."""
    parent = list(range(n))

    def find(i: int) -> int:
        while parent[i] != i:
            parent[i] = parent[parent[i]]
            i = parent[i]
        return i

    pairs = np.asarray(pairs, np.int64).reshape(-1, 2)
    for i, j in pairs.tolist():
        ri, rj = find(i), find(j)
        if ri != rj:
            parent[max(ri, rj)] = min(ri, rj)  # the root is the lowest index, so sorting by root is by first
    members: dict[int, list[int]] = defaultdict(list)
    for i in np.unique(pairs).tolist():  # ascending, and only the documents that have a pair
        members[find(i)].append(i)
    return [m for _, m in sorted(members.items())]


def near_duplicate_clusters(texts: Sequence[str], params: MinHashParams | None = None,
                            progress: bool = False) -> list[list[int]]:
    """Clusters of near-duplicate texts: LSH candidates confirmed by estimated Jaccard >= ``threshold``.

    Args:
        texts: the documents.
        params: see `MinHashParams` (default `MinHashParams()`).
        progress: show a progress bar while hashing.

    Returns:
        Clusters of size >= 2, indices ascending, sorted by first index. A cluster is a connected component
        of confirmed pairs, so two of its members may be less similar than the threshold to each other.
    """
    params = params or MinHashParams()
    sig = minhash_signatures(texts, params, progress)
    return _clusters(len(texts), _confirmed_pairs(sig, params))


# ---------------------------------------------------------------------------------------------------- plan


def choose_representative(cluster: Sequence[int], texts: Sequence[str],
                          scores: Sequence[float] | None = None) -> int:
    """The member of a cluster to keep: the highest score if scores are given, then the longest text, then
    the lowest index (so the choice never depends on the order of ``cluster``).
    """
    if not cluster:
        raise TunelabError("choose_representative needs a non-empty cluster")

    def rank(i: int) -> tuple[float, int, int]:
        score = float(scores[i]) if scores is not None else 0.0
        return (score if score == score else float("-inf"), len(texts[i]), -i)  # NaN scores rank last

    return max(cluster, key=rank)


def _leaders(texts: Sequence[str], exact: bool) -> tuple[list[bytes | int], list[int]]:
    """Per text, its exact-duplicate key and the first index with that key (itself when exact is off)."""
    keys: list[bytes | int] = [_digest(t) for t in texts] if exact else list(range(len(texts)))
    first: dict[bytes | int, int] = {}
    return keys, [first.setdefault(key, i) for i, key in enumerate(keys)]


def _reason(i: int, keep: int, keys: list, est: float | None) -> str:
    if keys[i] == keys[keep]:
        return f"exact duplicate of row {keep}"
    return f"near duplicate of row {keep} (est. Jaccard {est:.2f})"


def dedup_plan(texts: Sequence[str], params: MinHashParams | None = None, exact: bool = True, near: bool = True,
               scores: Sequence[float] | None = None, progress: bool = False) -> DedupPlan:
    """Decide which rows to keep: one representative per cluster of exact and/or near duplicates.

    Exact duplicates (equal after `normalize_for_hash`) are grouped first; near-duplicate search then runs
    on one text per group (they have identical signatures anyway), and the two kinds of links are merged into
    clusters. Each cluster keeps `choose_representative`; every other member is dropped with a reason naming
    the kept row: ``"exact duplicate of row i"`` when its normalised text equals the kept one, else
    ``"near duplicate of row i (est. Jaccard 0.91)"`` with the signature estimate against the kept row
    (which may be below the threshold when the two are linked through a third row).

    Args:
        texts: the documents.
        params: MinHash settings (default `MinHashParams()`); only used when ``near``.
        exact: find exact duplicates.
        near: find near duplicates.
        scores: optional quality score per text (higher is kept), e.g. from a quality filter.
        progress: show a progress bar while hashing.

    Returns:
        A `DedupPlan`.
    """
    if scores is not None and len(scores) != len(texts):
        raise TunelabError(f"scores has {len(scores)} values for {len(texts)} texts", where="dedup_plan(scores=)")
    params = params or MinHashParams()
    keys, leader = _leaders(texts, exact)
    links = [(lead, i) for i, lead in enumerate(leader) if lead != i]
    sig, row = None, {}
    if near:
        uniq = sorted(set(leader))
        row = {doc: r for r, doc in enumerate(uniq)}  # text index -> signature row
        sig = minhash_signatures([texts[i] for i in uniq], params, progress)
        links += [(uniq[i], uniq[j]) for i, j in _confirmed_pairs(sig, params).tolist()]
    clusters = _clusters(len(texts), links)
    drops = [(i, keep) for cluster in clusters for keep in [choose_representative(cluster, texts, scores)]
             for i in cluster if i != keep]
    est = [None] * len(drops)
    if sig is not None and drops:
        est = _agreement(sig, np.array([[row[leader[i]], row[leader[k]]] for i, k in drops])).tolist()
    dropped = {i: (keep, _reason(i, keep, keys, e)) for (i, keep), e in zip(drops, est, strict=True)}
    kept = [i for i in range(len(texts)) if i not in dropped]
    return DedupPlan(keep=kept, dropped=dropped, clusters=clusters)
