"""Streaming data stages: `tunelab data` verbs over files larger than memory.

Memory holds a compact state per row, never the rows themselves:

- `ExampleSource` reads a file as a recipe does (records → format → examples) one line or parquet batch
  at a time, with a progress bar over bytes read (the number of rows is not known up front).
- per-row steps (clean, pii, filter) are `tunelab.data.curate.RowStep`s applied as rows stream by;
- dedup is two-pass: `DedupIndex` keeps a 16-byte digest, the LSH band keys (8 bytes per band) and the
  length of each row, and writes the MinHash signatures to disk; the rows themselves go to a `Spill` (JSONL
  on disk) and are read back once the plan is known;
- decontam holds the evaluation side's n-gram index (`ContaminationIndex`) and one batch of rows;
- whole-dataset steps that other modules add (augment, score) still collect their input in memory.

Outputs (data.jsonl, rejects.jsonl) are written incrementally into a work folder beside the output
and renamed into place at the end, so a failure leaves the previous output untouched. The rows, rejects and
counts are byte-identical to the in-memory path (`tunelab.data.curate.curate`).

Why JSONL and not Arrow for spilled rows: measured here on 100k chat rows (430 bytes of JSON each), writing
and reading back a JSONL spill took 2.1 s + 2.0 s, an Arrow IPC file (memory-mapped, JSON-encoded nested
columns) 2.5 s + 2.8 s; Arrow only wins when reading a single column, which no step needs, and would need
a schema for arbitrary records. See docs/data.md ("large files").
"""

from __future__ import annotations

import bisect
import dataclasses
import itertools
import json
import os
import shutil
import tempfile
from array import array
from collections import Counter
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TextIO

import numpy as np

from tunelab.config.specs import DataSpec
from tunelab.data.records import Example, Reject
from tunelab.errors import TunelabError

__all__ = [
    "ContaminationIndex", "DedupDecision", "DedupIndex", "ExampleSource", "Spill", "SpooledExamples",
    "StreamCuration", "TopCounts",
    "Bars", "atomic_writer", "batched", "work_folder",
]

_CONVERT_BATCH = 1024  # records converted to examples per call
_DETECT_ROWS = 20  # the rows tunelab.data.formats looks at to detect the format
_DECONTAM_BATCH = 8192  # training rows per contamination lookup (as find_contamination batches them)
_DEDUP_BATCH = 4096  # documents hashed per MinHash batch (as minhash_signatures batches them)
# The shingle hasher caches each distinct word's hash; past this many words the cache is rebuilt, so that
# a corpus with an open vocabulary (ids, numbers, typos) does not grow it without bound (~100 bytes a word).
_HASHER_VOCAB = 200_000
_TOP_BUFFER = 1 << 17  # TopCounts writes keys to its partition files in batches of this many
_TOP_WATCH = 4096  # TopCounts keeps the strings of this many of the most frequent keys
_TOP_TABLE = 1 << 16  # ... chosen by running counts of this many keys (the rest restart from 0 when dropped)
_TOP_PART_BITS = 6
_TOP_PARTS = 1 << _TOP_PART_BITS  # partition files: one at a time in memory when counting
_SIGNATURE_PAIRS = 4096  # pairs compared per mapping of the signature file (<= 4 MB of its pages resident)
_PAIR_CODES = 1 << 22  # candidate pairs from several bands are merged past this many (32 MB)


# ------------------------------------------------------------------------------------------- small helpers


def batched(items: Iterable[Any], size: int) -> Iterator[list[Any]]:
    """Consecutive lists of ``size`` items (the last one shorter)."""
    it = iter(items)
    while batch := list(itertools.islice(it, size)):
        yield batch


@contextmanager
def atomic_writer(path: str | Path) -> Iterator[TextIO]:
    """A text file written incrementally, then renamed over ``path``: readers see the old file or the whole
    new one, and a failure (or an exception in the ``with`` body) leaves ``path`` as it was."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    try:
        with os.fdopen(fd, "w", encoding="utf-8", newline="") as f:
            yield f
        os.chmod(tmp, 0o644)  # mkstemp creates 0600; outputs are meant to be shared
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


class Bars:
    """One rich progress display for a streaming job (rich allows one live display at a time): a bar over
    the bytes of each pass over a file, whose row count is unknown up front, and a bar over the rows of each
    pass over a spill. Disabled, it only passes the rows through.

    Use::

        with Bars(enabled) as bars:
            rows = iter_records(path, on_bytes=bars.bytes(path, "reading"))
            for ex in bars.rows(spill, len(spill), "writing"): ...
    """

    def __init__(self, enabled: bool = True):
        self.enabled = enabled
        self._progress = None

    def __enter__(self) -> Bars:
        if self.enabled:
            from rich.progress import (
                BarColumn,
                Progress,
                TaskProgressColumn,
                TextColumn,
                TimeElapsedColumn,
                TimeRemainingColumn,
            )

            from tunelab.util.console import console

            self._progress = Progress(TextColumn("{task.description}"), BarColumn(), TaskProgressColumn(),
                                      TimeElapsedColumn(), TextColumn("eta"), TimeRemainingColumn(), console=console)
            self._progress.__enter__()
        return self

    def __exit__(self, *exc: Any) -> None:
        if self._progress is not None:
            self._progress.__exit__(*exc)
            self._progress = None

    def bytes(self, path: Path, what: str) -> Callable[[int], None] | None:
        """A new bar over the bytes of ``path``; returns the ``on_bytes`` callback of
        `tunelab.data.readers.iter_records` (None when disabled)."""
        if self._progress is None:
            return None
        size = max(1, path.stat().st_size) if path.is_file() else 1
        task = self._progress.add_task(f"{what} ({size / 1e6:,.1f} MB)", total=size)
        return lambda n: self._progress.advance(task, n) if self._progress is not None else None

    def rows(self, items: Iterable[Any], total: int, what: str) -> Iterator[Any]:
        """Iterate ``items`` with a new bar over ``total`` rows."""
        if self._progress is None:
            yield from items
            return
        task = self._progress.add_task(what, total=max(1, total))
        i = 0
        for i, item in enumerate(items, 1):
            yield item
            if i % 1024 == 0:  # rich takes a lock on every update; the bar moves fine in steps
                self._progress.update(task, completed=i)
        self._progress.update(task, completed=max(1, total))


# ---------------------------------------------------------------------------------------------------- spill


class Spill:
    """Rows appended to a JSONL file and read back in order, or by index (8 bytes of offset per row).

    Args:
        path: the file (created or truncated).
        kind: ``"example"`` (`Example` rows) or ``"reject"`` (`Reject` rows, written exactly as
            `tunelab.data.pipeline.write_rejects` writes them, so spilled rejects concatenate into
            rejects.jsonl).
        indexed: keep offsets for `__getitem__`.
    """

    def __init__(self, path: Path, kind: str = "example", indexed: bool = False):
        self.path, self.kind = Path(path), kind
        self._out = open(self.path, "wb")  # noqa: SIM115 - closed by finish()
        self._offsets = array("q") if indexed else None
        self._end, self._n = 0, 0
        self._reader = None

    def append(self, item: Example | Reject) -> None:
        # The fields, not to_dict(): dataclasses.asdict deep-copies every nested record first (it took 40% of
        # a streaming dedup); the JSON is the same.
        fields = {f.name: getattr(item, f.name) for f in dataclasses.fields(item)}
        line = (json.dumps(fields, ensure_ascii=False, default=str) + "\n").encode("utf-8")
        if self._offsets is not None:
            self._offsets.append(self._end)
        self._out.write(line)
        self._end += len(line)
        self._n += 1

    def __len__(self) -> int:
        return self._n

    def finish(self) -> None:
        """Flush what was appended; reading finishes the file first."""
        if not self._out.closed:
            self._out.close()

    def _decode(self, line: bytes) -> Example | Reject:
        d = json.loads(line)
        return Example.from_dict(d) if self.kind == "example" else Reject.from_dict(d)

    def __iter__(self) -> Iterator[Example | Reject]:
        self.finish()
        with open(self.path, "rb") as f:
            for line in f:
                yield self._decode(line)

    def __getitem__(self, i: int) -> Example | Reject:
        if self._offsets is None:
            raise TypeError("this spill keeps no offsets (indexed=False)")
        self.finish()
        if self._reader is None:
            self._reader = open(self.path, "rb")  # noqa: SIM115 - closed by close()
        self._reader.seek(self._offsets[i])
        return self._decode(self._reader.readline())

    def copy_to(self, f: TextIO) -> None:
        """Append the raw lines to an open text file."""
        self.finish()
        with open(self.path, encoding="utf-8", newline="") as src:
            shutil.copyfileobj(src, f, 1 << 20)

    def close(self) -> None:
        self.finish()
        if self._reader is not None:
            self._reader.close()


# --------------------------------------------------------------------------------------------------- source


class ExampleSource:
    """A data file read as a recipe reads it (`tunelab.data.pipeline.read_examples`), one row at a time.

    Iterating it (`examples`) streams the file: records → format (detected on the first rows) →
    examples. Malformed rows (with ``data.on_error=skip``) go to ``read_rejects`` and rows whose fields
    do not fit the format to ``format_rejects``, in file order; both only need an ``append``.

    Attributes:
        fmt: the detected (or configured) format, once iteration started.
        rows_read: rows read so far, malformed ones included.
        usable: examples yielded so far.
    """

    def __init__(self, path: Path, spec: DataSpec, read_rejects: Any, format_rejects: Any,
                 on_bytes: Callable[[int], None] | None = None):
        self.path, self.spec, self.on_bytes = Path(path), spec, on_bytes
        self.read_rejects, self.format_rejects = read_rejects, format_rejects
        self.fmt: str | None = None
        self.rows_read = self.usable = 0

    def _records(self, skipped: Any, on_bytes: Callable[[int], None] | None) -> Iterator[tuple[str, dict]]:
        from tunelab.data.readers import iter_records

        return iter_records(self.path, delimiter=self.spec.delimiter, encoding=self.spec.encoding, skipped=skipped,
                            on_bytes=on_bytes)

    def _resolve(self, head: list[tuple[str, dict]], skipped: _Counter | None) -> str:
        from tunelab.data.formats import resolve_format

        if not head:
            raise TunelabError(f"no readable records ({skipped.n if skipped else 0} malformed rows skipped)",
                               where=str(self.path), fix="check that this is the right file and format")
        return resolve_format(head, self.spec)

    def detect_format(self) -> str:
        """The format, from the first rows (reads only those, the first time)."""
        if self.fmt is None:
            skipped = _Counter(None) if self.spec.on_error == "skip" else None
            records = self._records(skipped, None)
            self.fmt = self._resolve(list(itertools.islice(records, _DETECT_ROWS)), skipped)
            records.close()
        return self.fmt

    def examples(self) -> Iterator[Example]:
        """Stream the file's examples (each call reads it again)."""
        from tunelab.data.formats import to_examples

        skipped = _Counter(self.read_rejects) if self.spec.on_error == "skip" else None
        records = self._records(skipped, self.on_bytes)
        head = list(itertools.islice(records, _DETECT_ROWS))
        self.fmt = self._resolve(head, skipped)
        for batch in batched(itertools.chain(head, records), _CONVERT_BATCH):
            examples, rejects = to_examples(batch, self.spec, fmt=self.fmt)
            for r in rejects:
                self.format_rejects.append(r)
            self.rows_read = self.rows_read + len(batch)
            self.usable += len(examples)
            yield from examples
        self.rows_read += skipped.n if skipped else 0


class _Counter:
    """Counts what is appended to a sink (rows skipped by the reader count as rows read); None discards."""

    def __init__(self, target: Any):
        self.target, self.n = target, 0

    def append(self, item: Any) -> None:
        if self.target is not None:
            self.target.append(item)
        self.n += 1


class SpooledExamples:
    """A source's examples as a re-readable sequence: the first pass streams the file and writes each example
    to a `Spill`; later passes and ``examples[i]`` read the spill (8 bytes of offset per row in memory).

    Raw records are not spilled (``raw`` is empty on re-reads): the report never looks at them.
    """

    def __init__(self, source: ExampleSource, spill: Spill, bars: Bars | None = None):
        self.source, self.spill, self.bars = source, spill, bars or Bars(False)
        self._state = "new"  # new -> reading -> spooled

    def __iter__(self) -> Iterator[Example]:
        if self._state == "spooled":
            yield from self.bars.rows(self.spill, len(self.spill), f"re-reading {self.source.path.name}")
            return
        if self._state == "reading":
            raise RuntimeError("the first pass over a SpooledExamples must finish before another starts")
        self._state = "reading"
        for ex in self.source.examples():
            self.spill.append(Example(ex.messages, ex.text, ex.where))
            yield ex
        self._state = "spooled"

    def __len__(self) -> int:
        if self._state != "spooled":
            raise RuntimeError("the length is known after the first pass")
        return len(self.spill)

    def __getitem__(self, i: int) -> Example:
        if self._state != "spooled":
            raise RuntimeError("rows can be looked up after the first pass")
        return self.spill[i]


class TopCounts:
    """Exact counts of string keys, and the top keys by count with ties broken by the key (as
    ``sorted(counter.items(), key=(-count, key))[:k]``), in bounded memory.

    Up to ``keep_strings`` distinct keys it is a plain `Counter`. Past that, keys are counted by a 64-bit
    hash of their UTF-8 bytes: each batch's (hash, count) pairs go to one of 64 partition files in
    ``workdir`` by the hash's top bits (16 bytes of disk per distinct key per batch), and the counts are exact
    sums over a partition, one partition in memory at a time. Memory keeps the strings of the most frequent few thousand keys, chosen by a small running table of
    approximate counts; `top` returns None when a key it needs has no string (rare: a key that was never
    among the most frequent while counting), and feeding the keys again through `recover` (a second pass
    over the data) then finds it. Two keys collide with probability about distinct^2 / 2^65. (Python's hash
    of the str itself would not do: CPython hashes a string's internal buffer, so 'up' and '灵', whose
    two-byte code unit is b'up', collide.)
    """

    def __init__(self, workdir: str | Path | None = None, keep_strings: int = 100_000):
        self.workdir, self.keep_strings = workdir, keep_strings
        self._counter: Counter | None = Counter()  # None once counting on disk
        self._tmp: tempfile.TemporaryDirectory | None = None
        self._parts: list[Any] = []
        self._buffer, self._buffer_keys = array("q"), []  # hashes and keys not yet written
        self._watch = (np.zeros(0, np.int64), np.zeros(0, np.int64))  # running (hash, approx. count), sorted
        self._strings: dict[int, str] = {}  # hash -> key, for the most frequent keys
        self._finished: dict[str, Any] | None = None
        self._ties: list[str] = []

    # ------------------------------------------------------------------------------------------ counting

    def add(self, keys: list[str]) -> None:
        if self._counter is not None:
            self._counter.update(keys)
            if len(self._counter) > self.keep_strings:
                self._to_disk()
            return
        self._buffer.extend([hash(k.encode("utf-8", "surrogatepass")) for k in keys])
        self._buffer_keys += keys
        if len(self._buffer) >= _TOP_BUFFER:
            self._flush()

    def _to_disk(self) -> None:
        """Move the Counter's counts to the partition files, keeping the strings of its most frequent keys."""
        counter, self._counter = self._counter, None
        self._tmp = tempfile.TemporaryDirectory(prefix="topcounts-", dir=self.workdir)
        self._parts = [open(Path(self._tmp.name) / f"{p:02d}.i64", "w+b") for p in range(_TOP_PARTS)]  # noqa: SIM115
        keys = list(counter)
        hashes = np.array([_key_hash(k) for k in keys], np.int64)
        counts = np.array([counter[k] for k in keys], np.int64)
        self._write(hashes, counts)
        order = np.argsort(hashes)
        self._watch_counts(hashes[order], counts[order])
        self._strings = {int(hashes[i]): keys[i] for i in np.argsort(-counts, kind="stable")[:_TOP_WATCH].tolist()}

    def _write(self, hashes: np.ndarray, counts: np.ndarray) -> None:
        """Append (hash, count) pairs to the partition of each hash (by its top bits)."""
        part = (hashes.view(np.uint64) >> np.uint64(64 - _TOP_PART_BITS)).astype(np.int64)
        order = np.argsort(part, kind="stable")
        pairs = np.stack([hashes[order], counts[order]], axis=1)  # (n, 2) int64
        ends = np.cumsum(np.bincount(part, minlength=_TOP_PARTS))
        for p, (lo, hi) in enumerate(zip(np.r_[0, ends[:-1]], ends, strict=True)):
            if hi > lo:
                self._parts[p].write(pairs[lo:hi].tobytes())

    def _flush(self) -> None:
        """Write the buffered keys' counts to the partitions; update the running table and the kept strings."""
        if not self._buffer:
            return
        new, first, counts = np.unique(np.frombuffer(self._buffer, np.int64), return_index=True, return_counts=True)
        self._write(new, counts)
        self._watch_counts(new, counts)
        top = self._top_watched()
        self._strings = {h: self._strings[h] for h in top.tolist() if h in self._strings}
        for j in np.flatnonzero(np.isin(new, top)).tolist():
            self._strings.setdefault(int(new[j]), self._buffer_keys[first[j]])
        self._buffer, self._buffer_keys = array("q"), []

    def _watch_counts(self, new: np.ndarray, counts: np.ndarray) -> None:
        """Running counts of the frequent keys (approximate: a key dropped from the table restarts at 0)."""
        hashes, totals = self._watch
        merged, inverse = np.unique(np.concatenate([hashes, new]), return_inverse=True)
        totals = np.bincount(inverse.ravel(), np.concatenate([totals, counts]), len(merged)).astype(np.int64)
        if len(merged) > _TOP_TABLE:
            keep = np.sort(np.argpartition(totals, -_TOP_TABLE // 2)[-_TOP_TABLE // 2:])
            merged, totals = merged[keep], totals[keep]
        self._watch = (merged, totals)

    def _top_watched(self) -> np.ndarray:
        """The hashes of the keys with the highest running counts, whose strings are kept."""
        hashes, totals = self._watch
        if len(hashes) <= _TOP_WATCH:
            return hashes
        return hashes[np.argpartition(totals, -_TOP_WATCH)[-_TOP_WATCH:]]

    # -------------------------------------------------------------------------------------------- results

    def _partitions(self) -> Iterator[tuple[np.ndarray, np.ndarray]]:
        """(distinct hashes, their exact counts) of each partition, one in memory at a time."""
        self._flush()
        for f in self._parts:
            f.flush()
            f.seek(0)
            pairs = np.fromfile(f, np.int64).reshape(-1, 2)
            hashes, inverse = np.unique(pairs[:, 0], return_inverse=True)
            yield hashes, np.bincount(inverse.ravel(), pairs[:, 1], len(hashes)).astype(np.int64)

    def _finish(self, k: int, exclude: Iterable[str]) -> dict[str, Any]:
        """Exact totals, and the keys the top k needs: those counted more often than the k-th, and those tied
        with it (of which the smallest keys fill the remaining places)."""
        excluded = np.array([_key_hash(e) for e in exclude], np.int64)
        total = distinct = 0
        best: list[np.ndarray] = []
        for hashes, counts in self._partitions():  # pass 1: totals and the k-th largest count
            total, distinct = total + int(counts.sum()), distinct + len(hashes)
            eligible = counts[~np.isin(hashes, excluded)]
            best.append(np.sort(eligible)[-k:])
        pool = np.sort(np.concatenate(best)) if best else np.zeros(0, np.int64)
        t = int(pool[-k]) if len(pool) >= k else 0
        wanted: dict[int, int] = {}
        ties: set[int] = set()
        for hashes, counts in self._partitions():  # pass 2: the keys at or above it
            pick = (counts >= max(t, 1)) & ~np.isin(hashes, excluded)
            for h, c in zip(hashes[pick].tolist(), counts[pick].tolist(), strict=True):
                wanted[h] = c
                if c == t:
                    ties.add(h)
        return {"k": k, "exclude": tuple(exclude), "total": total, "distinct": distinct, "counts": wanted,
                "ties": ties, "room": k - (len(wanted) - len(ties)), "recovering": False}

    @property
    def total(self) -> int:
        """All keys counted."""
        if self._counter is not None:
            return sum(self._counter.values())
        return self._finished["total"] if self._finished else self._finish(1, ())["total"]

    @property
    def distinct(self) -> int:
        """Distinct keys counted."""
        if self._counter is not None:
            return len(self._counter)
        return self._finished["distinct"] if self._finished else self._finish(1, ())["distinct"]

    def top(self, k: int, exclude: Iterable[str] = ()) -> dict[str, int] | None:
        """The k most frequent keys (not in ``exclude``) with their counts, or None if `recover` is needed."""
        if self._counter is not None:
            skip = set(exclude)
            items = [(key, c) for key, c in self._counter.items() if key not in skip]
            return dict(sorted(items, key=lambda kv: (-kv[1], kv[0]))[:k])
        f = self._finished
        if f is None or (f["k"], f["exclude"]) != (k, tuple(exclude)):
            f = self._finished = self._finish(k, exclude)
        if f["recovering"]:
            keys = [self._strings[h] for h in f["counts"] if h not in f["ties"]] + self._ties
        elif all(h in self._strings for h in f["counts"]):
            keys = [self._strings[h] for h in f["counts"]]
        else:
            return None
        items = [(key, f["counts"][_key_hash(key)]) for key in keys]
        return dict(sorted(items, key=lambda kv: (-kv[1], kv[0]))[:k])

    def begin_recovery(self, k: int, exclude: Iterable[str] = ()) -> None:
        """Get ready to take the strings the top k needs from the keys fed to `recover`."""
        if self._counter is not None:
            return
        if self._finished is None or (self._finished["k"], self._finished["exclude"]) != (k, tuple(exclude)):
            self._finished = self._finish(k, exclude)
        self._finished["recovering"] = True
        self._ties = []

    def recover(self, keys: list[str]) -> None:
        """Feed keys again (any order, repeats allowed) after `begin_recovery`."""
        f = self._finished
        if f is None or not f["recovering"]:
            return
        hashes = np.array([_key_hash(key) for key in keys], np.int64)
        wanted = np.fromiter(f["counts"], np.int64, len(f["counts"]))
        for j in np.flatnonzero(np.isin(hashes, wanted)).tolist():
            h, key = int(hashes[j]), keys[j]
            if h not in f["ties"]:
                self._strings[h] = key
                continue
            at = bisect.bisect_left(self._ties, key)  # keep the `room` smallest tied keys, sorted
            if at < f["room"] and (at == len(self._ties) or self._ties[at] != key):
                self._ties.insert(at, key)
                del self._ties[f["room"]:]

    def close(self) -> None:
        """Remove the partition files."""
        for f in self._parts:
            f.close()
        self._parts = []
        if self._tmp is not None:
            self._tmp.cleanup()


def _key_hash(key: str) -> int:
    return hash(key.encode("utf-8", "surrogatepass"))


# --------------------------------------------------------------------------------------------------- dedup


@dataclass
class DedupDecision:
    """What `DedupIndex.plan` decided, as arrays: the same drops, kept rows, reasons and clusters as
    `tunelab.data.dedup.dedup_plan` for the same texts.

    Attributes:
        dropped: (d,) rows to drop, ascending.
        kept: (d,) for each, the row kept in its place.
        exact: (d,) whether it is an exact duplicate of that row (else near).
        est: (d,) the estimated Jaccard with that row (NaN where not estimated).
        nodes: (m,) the rows that are in a cluster, ascending.
        labels: (m,) the cluster of each, numbered in order of the clusters' first rows.
    """

    dropped: np.ndarray
    kept: np.ndarray
    exact: np.ndarray
    est: np.ndarray
    nodes: np.ndarray
    labels: np.ndarray

    def drops(self) -> Iterator[tuple[int, int, str]]:
        """(dropped row, kept row, reason) in ascending order of the dropped row; the reasons read
        ``"exact duplicate of row i"`` or ``"near duplicate of row i (est. Jaccard 0.91)"``."""
        for i, keep, exact, est in zip(self.dropped.tolist(), self.kept.tolist(), self.exact.tolist(),
                                       self.est.tolist(), strict=True):
            why = f"exact duplicate of row {keep}" if exact else f"near duplicate of row {keep} (est. Jaccard {est:.2f})"
            yield i, keep, why

    @property
    def n_clusters(self) -> int:
        return int(self.labels.max()) + 1 if len(self.labels) else 0

    def clusters(self, largest: int | None = None) -> list[list[int]]:
        """The clusters (rows ascending, sorted by first row), or the ``largest`` biggest ones (ties: the
        earlier first row), as `dedup_plan` lists them."""
        order = np.argsort(self.labels, kind="stable")
        sizes = np.bincount(self.labels, minlength=self.n_clusters)
        chosen = range(self.n_clusters) if largest is None else np.lexsort((np.arange(len(sizes)), -sizes))[:largest]
        starts = np.r_[0, np.cumsum(sizes)]
        return [self.nodes[order[starts[c]:starts[c + 1]]].tolist() for c in chosen]


class DedupIndex:
    """The state `tunelab.data.dedup.dedup_plan` needs, collected one row at a time.

    Memory holds 24 bytes per row: a 16-byte digest of the normalised text (exact duplicates) and the text's
    length (the longest text of a cluster is kept). The MinHash signatures (num_perm * 4 bytes per row) and
    their LSH band keys (8 bytes per band) go to files in ``workdir``: `plan` loads one band's keys at a
    time and reads signatures back only for candidate pairs. It decides exactly what ``dedup_plan`` decides
    for the same texts in the same order: signatures do not depend on batching, and candidates are searched
    among the first row of each exact-duplicate group, in row order, as there.
    """

    def __init__(self, params: Any, workdir: Path, exact: bool = True, near: bool = True):
        from tunelab.data.dedup import _permutations, _ShingleHasher

        self.params, self.exact, self.near = params, exact, near
        self._perm = _permutations(params.num_perm, params.seed)
        self._hasher = _ShingleHasher(params)
        self._pending: list[str] = []
        self._lengths = array("q")
        self._digests: list[np.ndarray] = []  # (k, 2) uint64 per batch
        self._batches: list[int] = []  # rows per batch in the key file
        fd, sig_path = tempfile.mkstemp(prefix="signatures-", suffix=".u32", dir=workdir)
        self._sig_path, self._sig_file = Path(sig_path), os.fdopen(fd, "wb")
        fd, key_path = tempfile.mkstemp(prefix="bands-", suffix=".u64", dir=workdir)
        self._key_path, self._key_file = Path(key_path), os.fdopen(fd, "wb")  # per batch: (bands, k) keys

    def __len__(self) -> int:
        return len(self._lengths) + len(self._pending)

    def add(self, text: str) -> None:
        """Add the next row's text."""
        self._pending.append(text)
        if len(self._pending) >= _DEDUP_BATCH:
            self._flush()

    def _flush(self) -> None:
        from tunelab.data.dedup import _band_keys, _digest, _min_hash, _ShingleHasher

        texts, self._pending = self._pending, []
        if not texts:
            return
        self._lengths.extend(len(t) for t in texts)
        if self.exact:
            self._digests.append(np.frombuffer(b"".join(map(_digest, texts)), "<u8").reshape(-1, 2))
        if self.near:
            if len(self._hasher.vocab) > _HASHER_VOCAB:
                self._hasher = _ShingleHasher(self.params)
            sig = _min_hash(*self._hasher.batch(texts), *self._perm)  # (k, num_perm) uint32
            r = self.params.rows
            np.stack([_band_keys(sig[:, b * r:(b + 1) * r]) for b in range(self.params.bands)]).tofile(self._key_file)
            self._batches.append(len(texts))
            sig.tofile(self._sig_file)

    def _band(self, band: int) -> np.ndarray:
        """(n,) uint64: one band's keys of every row, read from the key file."""
        out = np.empty(sum(self._batches), np.uint64)
        with open(self._key_path, "rb") as f:
            offset = row = 0
            for k in self._batches:
                f.seek(offset + band * k * 8)
                out[row:row + k] = np.fromfile(f, "<u8", k)
                offset, row = offset + self.params.bands * k * 8, row + k
        return out

    def _leaders(self, n: int) -> np.ndarray:
        """(n,) the first row with the same digest as each row (the row itself without exact dedup)."""
        if not self.exact or not n:
            return np.arange(n, dtype=np.int64)
        d = np.concatenate(self._digests)
        self._digests = []
        order = np.lexsort((d[:, 1], d[:, 0]))  # stable: each group's first entry is its lowest row
        sd = d[order]
        new = np.r_[True, (sd[1:] != sd[:-1]).any(axis=1)]
        leader = np.empty(n, np.int64)
        leader[order] = order[new][np.cumsum(new) - 1]
        return leader

    def _agreement(self, pairs: np.ndarray) -> np.ndarray:
        """Estimated Jaccard of (row, row) pairs from the signature file, a block of pairs at a time: each
        block maps the file afresh, so the pages it reads leave this process's resident memory after it."""
        from tunelab.data.dedup import _agreement

        est = np.empty(len(pairs))
        shape = (len(self._lengths), self.params.num_perm)
        for lo in range(0, len(pairs), _SIGNATURE_PAIRS):
            sig = np.memmap(self._sig_path, np.uint32, "r", shape=shape)
            est[lo:lo + _SIGNATURE_PAIRS] = _agreement(sig, pairs[lo:lo + _SIGNATURE_PAIRS])
            del sig
        return est

    def _near_links(self, leader: np.ndarray) -> np.ndarray:
        """Near-duplicate links among the first rows of the exact groups, with the same clusters as
        `dedup_plan`: LSH candidates confirmed by estimated Jaccard >= threshold.

        Bands are searched one at a time, and a candidate whose rows are already in one cluster is not
        compared again (the clusters are the same whichever links join them); so memory holds one band's
        candidates and a cluster label per row, not every candidate pair. Returns (row, cluster's first row)
        links in file rows.
        """
        uniq = np.flatnonzero(leader == np.arange(len(leader)))
        m = len(uniq)
        comp = np.arange(m)  # each row's cluster, named by its lowest member (positions in uniq)
        for band in range(self.params.bands):  # one band's keys in memory at a time: 8 bytes a row
            joined: list[np.ndarray] = []
            for i, j in _bucket_pair_chunks(self._band(band)[uniq]):
                open_ = comp[i] != comp[j]
                pairs = np.stack([i[open_], j[open_]], axis=1)
                joined.append(pairs[self._agreement(uniq[pairs]) >= self.params.threshold - 1e-12])
            if joined and sum(map(len, joined)):
                confirmed = np.concatenate(joined)
                comp = _merge_clusters(comp, confirmed[:, 0], confirmed[:, 1])
        linked = np.flatnonzero(comp != np.arange(m))
        return np.stack([uniq[comp[linked]], uniq[linked]], axis=1)

    def plan(self) -> DedupDecision:
        """Which rows to drop, and why (call once, after the last `add`)."""
        self._flush()
        self._sig_file.close()
        self._key_file.close()
        n = len(self._lengths)
        leader = self._leaders(n)
        rows = np.arange(n, dtype=np.int64)
        links = [np.stack([leader, rows], axis=1)[leader != rows]]
        if self.near and n:
            links.append(self._near_links(leader))
        nodes, labels = _components(np.concatenate(links))
        lengths = np.frombuffer(self._lengths, np.int64) if n else np.zeros(0, np.int64)
        # Keep the longest text of each cluster, the lowest row among equals (dedup.choose_representative).
        order = np.lexsort((-nodes, lengths[nodes], labels))
        last = np.r_[labels[order][1:] != labels[order][:-1], True] if len(order) else np.zeros(0, bool)
        rep = np.empty(int(labels.max(initial=-1)) + 1, np.int64)
        rep[labels[order][last]] = nodes[order][last]
        keep = rep[labels]
        mask = nodes != keep
        dropped, kept = nodes[mask], keep[mask]
        est = np.full(len(dropped), np.nan)
        if self.near and len(dropped):
            est = self._agreement(np.stack([leader[dropped], leader[kept]], axis=1))
        decision = DedupDecision(dropped, kept, leader[dropped] == leader[kept], est, nodes, labels)
        self.close()
        return decision

    def close(self) -> None:
        for f, path in ((self._sig_file, self._sig_path), (self._key_file, self._key_path)):
            f.close()
            path.unlink(missing_ok=True)


def _bucket_pair_chunks(key: np.ndarray) -> Iterator[tuple[np.ndarray, np.ndarray]]:
    """The candidate pairs (i < j) of `tunelab.data.dedup._bucket_pairs` (rows with equal keys, each paired
    with up to 32 following members of its bucket), one offset at a time so that they are never all in
    memory together."""
    from tunelab.data.dedup import _BUCKET_SPAN

    order = np.argsort(key, kind="stable")  # stable: ascending row within a bucket
    sk = key[order]
    bucket = np.cumsum(np.r_[True, sk[1:] != sk[:-1]])
    for t in range(1, _BUCKET_SPAN + 1):
        same = bucket[t:] == bucket[:-t]  # member k and the member t places after it share a bucket
        if not same.any():
            return
        yield order[:-t][same], order[t:][same]


def _merge_clusters(comp: np.ndarray, i: np.ndarray, j: np.ndarray) -> np.ndarray:
    """Cluster labels (lowest member) after joining rows i[k] and j[k] to the clusters ``comp`` describes."""
    from scipy.sparse import coo_matrix
    from scipy.sparse.csgraph import connected_components

    m = len(comp)
    star = np.flatnonzero(comp != np.arange(m))  # each clustered row linked to its cluster's lowest member
    rows, cols = np.concatenate([star, i]), np.concatenate([comp[star], j])
    _, labels = connected_components(coo_matrix((np.ones(len(rows), np.int8), (rows, cols)), shape=(m, m)),
                                     directed=False)
    lowest = np.full(labels.max() + 1, m, np.int64)
    np.minimum.at(lowest, labels, np.arange(m))
    return lowest[labels]


def _components(pairs: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Connected components of a pairs graph: (rows with a link, ascending; component of each, numbered in
    order of the components' lowest rows)."""
    from scipy.sparse import coo_matrix
    from scipy.sparse.csgraph import connected_components

    if not len(pairs):
        return np.zeros(0, np.int64), np.zeros(0, np.int64)
    nodes, inverse = np.unique(pairs, return_inverse=True)
    inverse = inverse.reshape(-1, 2)
    graph = coo_matrix((np.ones(len(inverse), np.int8), (inverse[:, 0], inverse[:, 1])), shape=(len(nodes),) * 2)
    _, labels = connected_components(graph, directed=False)
    _, first = np.unique(labels, return_index=True)  # each component's lowest position in `nodes`
    rank = np.empty(len(first), np.int64)
    rank[np.argsort(first)] = np.arange(len(first))
    return nodes, rank[labels]


# ------------------------------------------------------------------------------------------------- decontam


class ContaminationIndex:
    """The evaluation side of `tunelab.data.decontam.find_contamination`, hashed once, for batches of rows.

    ``hits(texts, offset)`` returns what ``find_contamination`` returns for those rows at those positions
    (it looks at each training row on its own, so batching does not change a row's result).
    """

    def __init__(self, eval_texts: list[str], n: int = 13, min_overlap: int = 1):
        from tunelab.data.decontam import _check_args, _Eval, _Index, _long_grams, _side, _Vocab, _whole_grams

        _check_args(n, min_overlap)
        self.n, self.min_overlap, self.eval_rows = n, min_overlap, len(eval_texts)
        self._vocab = _Vocab()
        side = _side(eval_texts, self._vocab)
        short = _whole_grams(side, n)
        self._eval = _Eval(side, _Index(_long_grams(side, n)), short, _Index(short))

    def hits(self, texts: list[str], offset: int) -> list[Any]:
        """`ContaminationHit`s of ``texts``, whose ``train_index`` counts from ``offset``."""
        from tunelab.data.decontam import _batch_hits

        if not texts or not self.eval_rows:
            return []
        return _batch_hits(texts, offset, self._eval, self._vocab, self.n, self.min_overlap)


# ------------------------------------------------------------------------------------------------- curation


class StreamCuration:
    """Curation steps over a file, streaming (see the module docstring); the same rows as `curate`.

    Use::

        run = StreamCuration(spec, steps, eval_texts, workdir)
        for ex in run.rows(): ...            # kept rows, in order, as the last step emits them
        run.write_rejects(f)                 # read, format and step rejects, in the in-memory order
        run.reports                          # one StepReport per step

    Args:
        spec: the data section (``path``, reading options, ``curate`` settings).
        steps: step names in order.
        eval_texts: evaluation texts for decontam.
        workdir: a folder for spill files (the caller removes it).
        progress: show progress bars.
    """

    def __init__(self, spec: DataSpec, steps: list[str], eval_texts: list[str] | None, workdir: Path,
                 progress: bool = True):
        from tunelab.data.pipeline import resolve_data_path

        self.spec, self.steps, self.eval_texts = spec, list(steps), list(eval_texts or [])
        self.workdir, self.progress = Path(workdir), progress
        self.path = resolve_data_path(spec.path)
        self._sinks = [Spill(self.workdir / f"rejects-{k}.jsonl", "reject") for k in range(len(self.steps) + 2)]
        self.reports: list[Any] = [None] * len(self.steps)
        self.source: ExampleSource | None = None
        self._bars = Bars(False)

    @property
    def read_rejected(self) -> int:
        """Rows rejected while reading (malformed rows and rows that do not fit the format)."""
        return len(self._sinks[0]) + len(self._sinks[1])

    @property
    def rejected(self) -> int:
        return sum(len(s) for s in self._sinks)

    def rows(self) -> Iterator[Example]:
        """The kept rows; iterate to the end before reading `reports` or writing rejects."""
        with Bars(self.progress) as self._bars:
            on_bytes = self._bars.bytes(self.path, f"reading {self.path.name}")
            self.source = ExampleSource(self.path, self.spec, self._sinks[0], self._sinks[1], on_bytes)
            rows: Iterator[Example] = self.source.examples()
            for k, name in enumerate(self.steps):
                rows = self._stage(k, name, rows)
            yield from rows

    def _stage(self, k: int, name: str, rows: Iterator[Example]) -> Iterator[Example]:
        from tunelab.data.curate import row_step

        step = row_step(name, self.spec.curate)
        if step is not None:
            return self._row_stage(k, step, rows)
        if name == "dedup":
            return self._dedup_stage(k, rows)
        if name == "decontam":
            return self._decontam_stage(k, rows)
        return self._whole_stage(k, name, rows)

    def _row_stage(self, k: int, step: Any, rows: Iterator[Example]) -> Iterator[Example]:
        sink = self._sinks[k + 2]
        for ex in rows:
            out = step(ex)
            if isinstance(out, Reject):
                sink.append(out)
            else:
                yield out
        self.reports[k] = step.report()

    def _dedup_stage(self, k: int, rows: Iterator[Example]) -> Iterator[Example]:
        from tunelab.data.curate import dedup_params, dedup_reject, dedup_report, example_text

        spec = self.spec.curate.dedup
        index = DedupIndex(dedup_params(spec), self.workdir, exact=spec.exact, near=spec.near)
        spill = Spill(self.workdir / f"rows-{k}.jsonl", "example", indexed=True)
        try:
            for ex in rows:  # pass 1: every row to disk, its digest and signature to the index
                spill.append(ex)
                index.add(example_text(ex))
            decision = index.plan()
            drops, kept_where = decision.drops(), {}
            nxt = next(drops, None)
            for i, ex in enumerate(self._bars.rows(spill, len(spill), "dedup: writing kept rows")):
                if nxt is None or nxt[0] != i:
                    yield ex
                    continue
                _, keep, why = nxt
                if keep not in kept_where:
                    kept_where[keep] = spill[keep].where
                self._sinks[k + 2].append(dedup_reject(ex, why, kept_where[keep]))
                nxt = next(drops, None)
            self.reports[k] = dedup_report(spec, len(spill), (why for _, _, why in decision.drops()))
        finally:
            spill.close()
            spill.path.unlink(missing_ok=True)
            index.close()

    def _decontam_stage(self, k: int, rows: Iterator[Example]) -> Iterator[Example]:
        from tunelab.data.curate import decontam_reject, decontam_report, example_text

        spec = self.spec.curate.decontam
        index = ContaminationIndex(self.eval_texts, spec.n)
        rows_in = hits = 0
        for batch in batched(rows, _DECONTAM_BATCH):
            found = {h.train_index: h for h in index.hits([example_text(ex) for ex in batch], rows_in)}
            for i, ex in enumerate(batch, rows_in):
                if i in found and spec.action == "drop":
                    self._sinks[k + 2].append(decontam_reject(ex, found[i], spec.n))
                else:
                    yield ex
            rows_in, hits = rows_in + len(batch), hits + len(found)
        self.reports[k] = decontam_report(spec, rows_in, hits, len(self.eval_texts))

    def _whole_stage(self, k: int, name: str, rows: Iterator[Example]) -> Iterator[Example]:
        """A step that needs the whole dataset at once (augment, score): its input is collected in memory."""
        from tunelab.data.curate import run_step

        kept, rejects, self.reports[k] = run_step(name, list(rows), self.spec.curate, self.eval_texts)
        for r in rejects:
            self._sinks[k + 2].append(r)
        yield from kept

    def write_rejects(self, f: TextIO) -> None:
        """All rejects as rejects.jsonl lines: read, then format, then each step's (each in row order)."""
        for sink in self._sinks:
            sink.copy_to(f)

    def close(self) -> None:
        for sink in self._sinks:
            sink.close()


def work_folder(out: Path) -> Any:
    """A temporary folder beside ``out`` (same file system, so finished files can be renamed into it)."""
    out.parent.mkdir(parents=True, exist_ok=True)
    return tempfile.TemporaryDirectory(prefix=f".{out.name}.work-", dir=out.parent)

