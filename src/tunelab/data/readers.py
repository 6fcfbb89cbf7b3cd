"""Read data files into ``(where, record)`` pairs: JSONL, JSON, CSV/TSV/delimited text, parquet, plain text.

Every problem with the file itself (missing, wrong encoding, malformed line, not an object) is a
`TunelabError` naming the file and line; problems with a record's *content* are left to `formats`,
which turns them into rejects.

`iter_records` streams: JSONL, CSV/TSV/delimited and plain text are read line by line (bytes split at
``\\n``, decoded one line at a time), parquet one record batch at a time, so a file larger than memory can
be read. Only a ``.json`` file (one JSON document) and text in an encoding that is not ASCII-compatible
(UTF-16/32) are read whole, because neither can be cut into lines before decoding. `read_records` is
`iter_records` collected into a list.
"""

from __future__ import annotations

import codecs
import csv
import hashlib
import json
import re
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from typing import Any

from tunelab.errors import TunelabError

__all__ = ["SUPPORTED_SUFFIXES", "file_sha256", "iter_records", "read_records"]

Record = tuple[str, dict[str, Any]]
SUPPORTED_SUFFIXES = (".jsonl", ".json", ".csv", ".tsv", ".txt", ".parquet")
_DEFAULT_DELIMITER = {".csv": ",", ".tsv": "\t"}
_CHUNK = 1 << 20  # bytes per read when hashing or checking for content, and per progress update
_PARQUET_BATCH = 4096  # rows per parquet record batch
# Universal newlines (what io.StringIO(newline="") and the csv module split on): \r\n, \r or \n.
_LINE_RE = re.compile(r"[^\r\n]*(?:\r\n|\r|\n)|[^\r\n]+")

OnBytes = Callable[[int], None]


def read_records(
    path: str | Path, *, delimiter: str | None = None, encoding: str = "utf-8", skipped: list | None = None
) -> list[Record]:
    """Read every record of a data file.

    Args:
        path: a ``.jsonl``, ``.json``, ``.csv``, ``.tsv``, ``.txt`` or ``.parquet`` file.
        delimiter: column separator for delimited files (default ``,`` for .csv, tab for .tsv). With a
            ``.txt`` file it makes the file delimited (header row required); without, ``.txt`` is plain
            text, one ``{"text": line}`` record per non-empty line.
        encoding: text encoding of the file.
        skipped: when given (``data.on_error: skip``), malformed JSONL lines, non-object records and
            malformed CSV rows are appended to it as `Reject`s instead of stopping the read.

    Returns:
        ``(where, record)`` pairs in file order; ``where`` is ``"path:line"`` (1-based) or
        ``"path:#index"`` (0-based) for JSON arrays and parquet.

    Raises:
        TunelabError: the file is missing, unreadable, empty, of an unknown kind or malformed.
    """
    return list(iter_records(path, delimiter=delimiter, encoding=encoding, skipped=skipped))


def iter_records(
    path: str | Path, *, delimiter: str | None = None, encoding: str = "utf-8", skipped: Any = None,
    on_bytes: OnBytes | None = None,
) -> Iterator[Record]:
    """Stream the records of a data file (same arguments, order and errors as `read_records`).

    Args:
        path: the data file.
        delimiter: see `read_records`.
        encoding: see `read_records`.
        skipped: a list, or any object with ``append`` (e.g. a writer that spills to disk), that receives
            a `Reject` for each malformed row; None stops at the first one.
        on_bytes: called with the number of bytes consumed since its last call (about every MiB), for a
            progress bar over bytes: the number of rows is not known before the end.

    Yields:
        ``(where, record)`` pairs in file order. A malformed line raises when the reader reaches it, so
        the rows before it have been yielded already.

    Raises:
        TunelabError: as `read_records`; "file has no records" at the end when nothing was yielded or
        skipped.
    """
    path = Path(path)
    suffix = path.suffix.lower()
    if suffix not in SUPPORTED_SUFFIXES:
        raise TunelabError(f"unsupported file type '{suffix or '(none)'}'", where=str(path),
                           fix=f"use one of {', '.join(SUPPORTED_SUFFIXES)}")
    counted = _Counted(skipped)
    found = 0
    if suffix == ".parquet":
        records = _read_parquet(path, on_bytes)
    else:
        records = _parse_text(path, suffix, delimiter, encoding, counted if skipped is not None else None, on_bytes)
    for record in records:
        found += 1
        yield record
    if not found and not counted.n:
        raise TunelabError("file has no records", where=str(path),
                           fix="check that this is the right file and that it is not truncated")


class _Counted:
    """Forwards appends to the caller's `skipped` and counts them (it may be a writer with no len())."""

    def __init__(self, target: Any):
        self.target, self.n = target, 0

    def append(self, item: Any) -> None:
        self.target.append(item)
        self.n += 1


def _parse_text(path: Path, suffix: str, delimiter: str | None, encoding: str, skipped: Any,
                on_bytes: OnBytes | None) -> Iterator[Record]:
    if suffix == ".json":
        text = _read_text(path, encoding)
        if on_bytes:
            on_bytes(path.stat().st_size)
        return iter(_parse_json(path, text, skipped))
    lines = _lines(path, encoding, on_bytes)
    if suffix == ".jsonl":
        return _parse_jsonl(path, lines, skipped)
    if suffix in _DEFAULT_DELIMITER or delimiter is not None:
        return _parse_delimited(path, lines, delimiter or _DEFAULT_DELIMITER[suffix], quoting=suffix == ".csv",
                                skipped=skipped)
    return _parse_plain(path, lines)


def file_sha256(path: str | Path) -> str:
    """sha256 of a data file's bytes (read in chunks), with the same clear errors as `read_records`."""
    h = hashlib.sha256()
    with _open(Path(path)) as f:
        while block := f.read(_CHUNK):
            h.update(block)
    return h.hexdigest()


# ------------------------------------------------------------------------------------------ bytes and lines


def _open(path: Path):
    try:
        return open(path, "rb")  # noqa: SIM115 - the callers close it with `with`
    except FileNotFoundError:
        raise TunelabError("file not found", where=str(path), fix="check data.path (relative paths start "
                           "at the current folder)") from None
    except IsADirectoryError:
        raise TunelabError("is a folder, not a file", where=str(path), fix="point data.path at a file") from None
    except OSError as e:
        raise TunelabError(f"cannot read file ({e.strerror})", where=str(path),
                           fix="check the file's permissions") from None


def _read_bytes(path: Path) -> bytes:
    with _open(path) as f:
        return f.read()


def _check_not_empty(path: Path) -> None:
    """"file is empty" for a file of whitespace only; reads only up to the first other byte."""
    with _open(path) as f:
        while block := f.read(_CHUNK):
            if block.strip():
                return
    raise TunelabError("file is empty", where=str(path), fix="check that this is the right file")


def _decode_error(encoding: str, path: Path, line: int, start: int, e: UnicodeDecodeError) -> TunelabError:
    return TunelabError(f"not valid {encoding} text (byte {start}: {e.reason})", where=f"{path}:{line}",
                        fix="set data.encoding to the file's encoding, e.g. data.encoding=latin-1")


def _unknown_encoding(encoding: str) -> TunelabError:
    return TunelabError(f"unknown text encoding '{encoding}'", where="data.encoding",
                        fix="use a Python codec name such as utf-8, latin-1 or cp1252")


def _splits_at_newline_bytes(encoding: str) -> bool:
    """Whether the byte 0x0A is always a line break in this encoding (true of UTF-8, latin-1, cp1252, GBK,
    Shift-JIS...; false of UTF-16/32, whose characters contain 0x0A bytes)."""
    try:
        return b"a\nb\r\n".decode(encoding) == "a\nb\r\n"
    except (UnicodeDecodeError, ValueError):
        return False


def _lines(path: Path, encoding: str, on_bytes: OnBytes | None) -> Iterator[str]:
    """The decoded physical lines of a text file, each with its ``\\n`` (the last one may lack it).

    Lines are cut at the byte ``\\n`` before decoding, so memory holds one line at a time; the incremental
    decoder keeps state across lines (a UTF-8 BOM is dropped once). Encodings where ``\\n`` is not one byte
    are decoded whole (the file must then fit in memory).
    """
    _check_not_empty(path)
    try:
        codecs.lookup(encoding)
    except LookupError:
        raise _unknown_encoding(encoding) from None
    if not _splits_at_newline_bytes(encoding):
        yield from _LINE_RE.findall(_read_text(path, encoding))
        return
    decoder = codecs.getincrementaldecoder(encoding)("strict")
    offset, line_no, pending = 0, 0, 0
    with _open(path) as f:
        for raw in f:
            line_no += 1
            try:  # the last line may lack its \n: final=True then reports a character it cuts off
                text = decoder.decode(raw, final=not raw.endswith(b"\n"))
            except UnicodeDecodeError as e:
                raise _decode_error(encoding, path, line_no, offset + e.start, e) from None
            if not offset:
                # A byte-order mark would otherwise end up in the first column name or the first JSON line.
                text = text.removeprefix("\ufeff")
            offset += len(raw)
            pending += len(raw)
            if on_bytes and pending >= _CHUNK:
                on_bytes(pending)
                pending = 0
            yield text
    if on_bytes and pending:
        on_bytes(pending)


def _universal(lines: Iterable[str]) -> Iterator[str]:
    """Physical lines re-cut at every line break the csv module knows (``\\r\\n``, ``\\r``, ``\\n``), ends kept."""
    for line in lines:
        if "\r" in line:
            yield from _LINE_RE.findall(line)
        else:
            yield line


def _read_text(path: Path, encoding: str) -> str:
    data = _read_bytes(path)
    if not data.strip():
        raise TunelabError("file is empty", where=str(path), fix="check that this is the right file")
    try:
        text = data.decode(encoding)
    except LookupError:
        raise _unknown_encoding(encoding) from None
    except UnicodeDecodeError as e:
        line = data[: e.start].count(b"\n") + 1
        raise _decode_error(encoding, path, line, e.start, e) from None
    # A byte-order mark would otherwise end up in the first column name or the first JSON line.
    return text.removeprefix("\ufeff")


# ------------------------------------------------------------------------------------------------ records


def _as_object(value: Any, where: str) -> dict[str, Any]:
    if not isinstance(value, dict):
        raise TunelabError(f"record is a JSON {_json_type(value)}, not an object", where=where,
                           fix='each record must be an object such as {"prompt": ..., "completion": ...}')
    return value


def _json_type(value: Any) -> str:
    return {list: "array", str: "string", bool: "boolean", type(None): "null"}.get(type(value), "number")


def _skip_or_raise(skipped: Any, error: TunelabError, raw: str) -> None:
    """With on_error=skip, keep the bad row as a Reject (reason, where, raw text); otherwise stop."""
    if skipped is None:
        raise error
    from tunelab.data.records import Reject

    skipped.append(Reject(where=error.where or "", reason=error.what, record={"raw": raw[:10_000]}))


def _parse_plain(path: Path, lines: Iterable[str]) -> Iterator[Record]:
    # str.splitlines also breaks at \v, \f, \x1c-\x1e, \x85, \u2028 and \u2029: one record per such piece.
    i = 0
    for physical in lines:
        for line in physical.splitlines():
            i += 1
            if line.strip():
                yield f"{path}:{i}", {"text": line}


def _parse_jsonl(path: Path, lines: Iterable[str], skipped: Any = None) -> Iterator[Record]:
    # Lines end at \n, \r\n or \r only: the other characters str.splitlines breaks at (\u2028, \x85, ...)
    # are legal inside JSON strings, and json.dumps(ensure_ascii=False) writes them unescaped.
    for i, line in enumerate(_universal(lines), 1):
        if not line.strip():
            continue
        where = f"{path}:{i}"
        line = line.rstrip("\r\n")
        try:
            yield where, _as_object(json.loads(line), where)
        except json.JSONDecodeError as e:
            err = TunelabError(f"malformed JSON ({e.msg} at column {e.colno})", where=where,
                               fix="fix or remove this line, or pass --on-error skip (data.on_error=skip)")
            _skip_or_raise(skipped, err, line)
        except TunelabError as err:
            _skip_or_raise(skipped, err, line)


def _parse_json(path: Path, text: str, skipped: Any = None) -> list[Record]:
    try:
        value = json.loads(text)
    except json.JSONDecodeError as e:
        raise TunelabError(f"malformed JSON ({e.msg} at column {e.colno})", where=f"{path}:{e.lineno}",
                           fix="fix the JSON syntax (a .jsonl file holds one object per line)") from None
    records = []
    for i, row in enumerate(_json_rows(path, value)):
        try:
            records.append((f"{path}:#{i}", _as_object(row, f"{path}:#{i}")))
        except TunelabError as err:
            _skip_or_raise(skipped, err, json.dumps(row, ensure_ascii=False))
    return records


def _json_rows(path: Path, value: Any) -> list[Any]:
    if isinstance(value, list):
        return value
    if isinstance(value, dict):
        lists = [k for k, v in value.items() if isinstance(v, list)]
        if len(lists) == 1:
            return value[lists[0]]
    raise TunelabError("expected a JSON array of records or an object with one list field (e.g. 'data')",
                       where=str(path), fix="put the records in a top-level array, or use JSONL")


def _parse_delimited(path: Path, lines: Iterable[str], delimiter: str, *, quoting: bool, skipped: Any = None
                     ) -> Iterator[Record]:
    # CSV uses standard quoting; TSV and delimited .txt are read literally, because their text columns often
    # hold stray quote characters that would otherwise swallow the following lines.
    reader = csv.reader(_universal(lines), delimiter=delimiter,
                        quoting=csv.QUOTE_MINIMAL if quoting else csv.QUOTE_NONE)
    header = _header(path, reader)
    line = reader.line_num
    while True:
        start = line + 1  # a quoted field may span lines; report the line where the row starts
        try:
            row = next(reader)
        except StopIteration:
            return
        except csv.Error as e:
            err = TunelabError(f"malformed row ({e})", where=f"{path}:{start}",
                               fix="check the quoting of this row, set data.delimiter, or data.on_error=skip")
            _skip_or_raise(skipped, err, "")
            line = reader.line_num
            continue
        line = reader.line_num
        if any(cell.strip() for cell in row):
            yield f"{path}:{start}", _row_record(header, row, delimiter)


def _header(path: Path, reader: Any) -> list[str]:
    try:
        header = next(reader)
    except StopIteration:
        header = []
    except csv.Error as e:
        raise TunelabError(f"malformed header ({e})", where=f"{path}:1") from None
    if not header or len(set(header)) != len(header) or not all(h.strip() for h in header):
        raise TunelabError("the first row must be a header of unique, non-empty column names",
                           where=f"{path}:1", fix="add a header row such as 'text,label'")
    return [h.strip() for h in header]


def _row_record(header: list[str], row: list[str], delimiter: str) -> dict[str, str]:
    """Zip a row with the header; surplus leading fields belong to the first column (text with delimiters)."""
    extra = len(row) - len(header)
    if extra > 0:
        row = [delimiter.join(row[: extra + 1]), *row[extra + 1 :]]
    # Short rows keep only the columns they have; the format step then rejects the missing fields by name.
    return dict(zip(header, row, strict=False))


def _read_parquet(path: Path, on_bytes: OnBytes | None) -> Iterator[Record]:
    import pyarrow.parquet as pq

    with _open(path) as f:  # uniform errors for missing/unreadable files
        if not f.read(1):
            raise TunelabError("file is empty", where=str(path), fix="check that this is the right file")
    size, i = path.stat().st_size, 0
    try:
        pf = pq.ParquetFile(path)
        total = max(1, pf.metadata.num_rows)
        for batch in pf.iter_batches(batch_size=_PARQUET_BATCH):
            # Round-trip through JSON so that records hold only JSON types (dates, bytes → str), as cached.
            rows = json.loads(json.dumps(batch.to_pylist(), default=str))
            for row in rows:
                yield f"{path}:#{i}", row
                i += 1
            if on_bytes:  # parquet is compressed: bytes are prorated by rows
                on_bytes(size * len(rows) // total)
    except TunelabError:
        raise
    except Exception as e:  # pyarrow raises several unrelated types for corrupt files
        raise TunelabError(f"cannot read parquet file ({e})", where=str(path),
                           fix="check that the file is a complete parquet file") from None
