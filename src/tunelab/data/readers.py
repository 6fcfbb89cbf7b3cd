"""Read data files into ``(where, record)`` pairs: JSONL, JSON, CSV/TSV/delimited text, parquet, plain text.

Every problem with the file itself (missing, wrong encoding, malformed line, not an object) is a
`TunelabError` naming the file and line; problems with a record's *content* are left to `formats`,
which turns them into rejects.
"""

from __future__ import annotations

import csv
import hashlib
import io
import json
from pathlib import Path
from typing import Any

from tunelab.errors import TunelabError

__all__ = ["SUPPORTED_SUFFIXES", "file_sha256", "read_records"]

Record = tuple[str, dict[str, Any]]
SUPPORTED_SUFFIXES = (".jsonl", ".json", ".csv", ".tsv", ".txt", ".parquet")
_DEFAULT_DELIMITER = {".csv": ",", ".tsv": "\t"}


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
    path = Path(path)
    suffix = path.suffix.lower()
    if suffix not in SUPPORTED_SUFFIXES:
        raise TunelabError(f"unsupported file type '{suffix or '(none)'}'", where=str(path),
                           fix=f"use one of {', '.join(SUPPORTED_SUFFIXES)}")
    if suffix == ".parquet":
        records = _read_parquet(path)
    else:
        text = _read_text(path, encoding)
        records = _parse_text(path, text, suffix, delimiter, skipped)
    if not records and not skipped:
        raise TunelabError("file has no records", where=str(path),
                           fix="check that this is the right file and that it is not truncated")
    return records


def _parse_text(path: Path, text: str, suffix: str, delimiter: str | None, skipped: list | None) -> list[Record]:
    if suffix == ".jsonl":
        return _parse_jsonl(path, text, skipped)
    if suffix == ".json":
        return _parse_json(path, text, skipped)
    if suffix in _DEFAULT_DELIMITER or delimiter is not None:
        return _parse_delimited(path, text, delimiter or _DEFAULT_DELIMITER[suffix], quoting=suffix == ".csv",
                                skipped=skipped)
    return [(f"{path}:{i}", {"text": line}) for i, line in enumerate(text.splitlines(), 1) if line.strip()]


def file_sha256(path: str | Path) -> str:
    """sha256 of a data file's bytes, with the same clear errors as `read_records` for a bad path."""
    return hashlib.sha256(_read_bytes(Path(path))).hexdigest()


def _read_bytes(path: Path) -> bytes:
    try:
        return path.read_bytes()
    except FileNotFoundError:
        raise TunelabError("file not found", where=str(path), fix="check data.path (relative paths start "
                           "at the current folder)") from None
    except IsADirectoryError:
        raise TunelabError("is a folder, not a file", where=str(path), fix="point data.path at a file") from None
    except OSError as e:
        raise TunelabError(f"cannot read file ({e.strerror})", where=str(path),
                           fix="check the file's permissions") from None


def _read_text(path: Path, encoding: str) -> str:
    data = _read_bytes(path)
    if not data.strip():
        raise TunelabError("file is empty", where=str(path), fix="check that this is the right file")
    try:
        text = data.decode(encoding)
    except LookupError:
        raise TunelabError(f"unknown text encoding '{encoding}'", where="data.encoding",
                           fix="use a Python codec name such as utf-8, latin-1 or cp1252") from None
    except UnicodeDecodeError as e:
        line = data[: e.start].count(b"\n") + 1
        raise TunelabError(f"not valid {encoding} text (byte {e.start}: {e.reason})", where=f"{path}:{line}",
                           fix="set data.encoding to the file's encoding, e.g. data.encoding=latin-1") from None
    # A byte-order mark would otherwise end up in the first column name or the first JSON line.
    return text.removeprefix("\ufeff")


def _as_object(value: Any, where: str) -> dict[str, Any]:
    if not isinstance(value, dict):
        raise TunelabError(f"record is a JSON {_json_type(value)}, not an object", where=where,
                           fix='each record must be an object such as {"prompt": ..., "completion": ...}')
    return value


def _json_type(value: Any) -> str:
    return {list: "array", str: "string", bool: "boolean", type(None): "null"}.get(type(value), "number")


def _skip_or_raise(skipped: list | None, error: TunelabError, raw: str) -> None:
    """With on_error=skip, keep the bad row as a Reject (reason, where, raw text); otherwise stop."""
    if skipped is None:
        raise error
    from tunelab.data.records import Reject

    skipped.append(Reject(where=error.where or "", reason=error.what, record={"raw": raw[:10_000]}))


def _parse_jsonl(path: Path, text: str, skipped: list | None = None) -> list[Record]:
    records = []
    for i, line in enumerate(text.splitlines(), 1):
        if not line.strip():
            continue
        where = f"{path}:{i}"
        try:
            records.append((where, _as_object(json.loads(line), where)))
        except json.JSONDecodeError as e:
            err = TunelabError(f"malformed JSON ({e.msg} at column {e.colno})", where=where,
                               fix="fix or remove this line, or pass --on-error skip (data.on_error=skip)")
            _skip_or_raise(skipped, err, line)
        except TunelabError as err:
            _skip_or_raise(skipped, err, line)
    return records


def _parse_json(path: Path, text: str, skipped: list | None = None) -> list[Record]:
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


def _parse_delimited(path: Path, text: str, delimiter: str, *, quoting: bool, skipped: list | None = None
                     ) -> list[Record]:
    # CSV uses standard quoting; TSV and delimited .txt are read literally, because their text columns often
    # hold stray quote characters that would otherwise swallow the following lines.
    reader = csv.reader(io.StringIO(text, newline=""), delimiter=delimiter,
                        quoting=csv.QUOTE_MINIMAL if quoting else csv.QUOTE_NONE)
    header = _header(path, reader)
    records, line = [], reader.line_num
    while True:
        start = line + 1  # a quoted field may span lines; report the line where the row starts
        try:
            row = next(reader)
        except StopIteration:
            return records
        except csv.Error as e:
            err = TunelabError(f"malformed row ({e})", where=f"{path}:{start}",
                               fix="check the quoting of this row, set data.delimiter, or data.on_error=skip")
            _skip_or_raise(skipped, err, "")
            line = reader.line_num
            continue
        line = reader.line_num
        if any(cell.strip() for cell in row):
            records.append((f"{path}:{start}", _row_record(header, row, delimiter)))


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


def _read_parquet(path: Path) -> list[Record]:
    import pyarrow.parquet as pq

    if not _read_bytes(path):  # uniform errors for missing/unreadable/empty files
        raise TunelabError("file is empty", where=str(path), fix="check that this is the right file")
    try:
        rows = pq.read_table(path).to_pylist()
    except Exception as e:  # pyarrow raises several unrelated types for corrupt files
        raise TunelabError(f"cannot read parquet file ({e})", where=str(path),
                           fix="check that the file is a complete parquet file") from None
    # Round-trip through JSON so that records hold only JSON types (dates, bytes → str), exactly as cached.
    rows = json.loads(json.dumps(rows, default=str))
    return [(f"{path}:#{i}", row) for i, row in enumerate(rows)]
