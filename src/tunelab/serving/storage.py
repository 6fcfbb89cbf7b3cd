"""The server's database: API keys, per-day key usage, the audit log and feedback, through SQLAlchemy.

SQLite (one file, ``<state_dir>/serve.db``) is the default; a PostgreSQL URL lets several replicas share
keys, quotas, audit records and feedback. The URL comes from ``serve.database``, else
$TUNELAB_DATABASE_URL, else the SQLite file (used by the server only when it exists: `tunelab keys create`
makes it). Tables are created on first use; rows are plain SQL so operators can query them directly.

Tables:

* ``api_keys``: id, name, salted scrypt hash of the key (never the key), created, revoked, per-key limits
  (rpm, tokens_per_day) and lifetime counters;
* ``key_usage``: requests and tokens per key per UTC day (what the daily quota reads);
* ``audit_log``: one row per request (and per key created/revoked): request id, key id, model, tokens,
  latency, status; prompt/response text only when the server logs it (PII-redacted);
* ``feedback``: /v1/feedback records, the same JSON as the JSONL store (`export_feedback` writes that file).
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from sqlalchemy import (
    BigInteger,
    Column,
    Connection,
    DateTime,
    Float,
    ForeignKey,
    Integer,
    MetaData,
    String,
    Table,
    Text,
    create_engine,
    event,
    select,
)
from sqlalchemy.engine import Engine as SqlEngine
from sqlalchemy.engine import make_url
from sqlalchemy.exc import ArgumentError, SQLAlchemyError

from tunelab.errors import TunelabError
from tunelab.util.io import atomic_write_text

__all__ = ["DATABASE_ENV", "DB_FILE", "Database", "SqlFeedbackStore", "api_keys", "audit_log", "export_feedback",
           "feedback", "key_usage", "read_feedback_records", "resolve_database_url", "utc_now"]

DATABASE_ENV = "TUNELAB_DATABASE_URL"
DB_FILE = "serve.db"
_DIALECTS = ("sqlite", "postgresql")

metadata = MetaData()
api_keys = Table(
    "api_keys", metadata,
    Column("id", String(32), primary_key=True),
    Column("name", String(200), nullable=False),
    Column("hash", String(300), nullable=False),  # "scrypt$n$r$p$salt$digest" (see keystore.hash_secret)
    Column("created", DateTime(timezone=True), nullable=False),
    Column("revoked", DateTime(timezone=True), nullable=True),
    Column("rpm", Integer, nullable=True),
    Column("tokens_per_day", BigInteger, nullable=True),
    Column("requests", BigInteger, nullable=False, default=0),
    Column("tokens", BigInteger, nullable=False, default=0),
    Column("last_used", DateTime(timezone=True), nullable=True),
)
key_usage = Table(
    "key_usage", metadata,
    Column("key_id", String(32), ForeignKey("api_keys.id"), primary_key=True),
    Column("day", String(10), primary_key=True),  # UTC date, ISO (the quota resets at 00:00 UTC)
    Column("requests", BigInteger, nullable=False, default=0),
    Column("tokens", BigInteger, nullable=False, default=0),
)
audit_log = Table(
    "audit_log", metadata,
    Column("id", Integer, primary_key=True, autoincrement=True),
    Column("at", DateTime(timezone=True), nullable=False, index=True),
    Column("kind", String(20), nullable=False),  # request | key_created | key_revoked
    Column("request_id", String(128), nullable=True),
    Column("key_id", String(32), nullable=True, index=True),
    Column("method", String(10), nullable=True),
    Column("path", String(300), nullable=True),
    Column("status", Integer, nullable=True),
    Column("error", String(64), nullable=True),
    Column("model", String(200), nullable=True),
    Column("prompt_tokens", Integer, nullable=True),
    Column("completion_tokens", Integer, nullable=True),
    Column("latency_ms", Float, nullable=True),
    Column("prompt_text", Text, nullable=True),
    Column("response_text", Text, nullable=True),
    Column("detail", Text, nullable=True),
)
feedback = Table(
    "feedback", metadata,
    Column("id", String(64), primary_key=True),
    Column("kind", String(10), primary_key=True),  # pairs | ratings (one request may give both)
    Column("created", DateTime(timezone=True), nullable=False),
    Column("model", String(200), nullable=True),
    Column("response_id", String(200), nullable=True),
    Column("rating", Integer, nullable=True),
    Column("record", Text, nullable=False),  # the JSON row, as the JSONL store writes it
)


def utc_now() -> datetime:
    return datetime.now(timezone.utc)


def resolve_database_url(explicit: str | None, state_dir: str | Path, *, must_exist: bool) -> str | None:
    """The database URL: `explicit`, else $TUNELAB_DATABASE_URL, else the SQLite file in `state_dir`.

    With `must_exist`, the SQLite default counts only when its file is there (the server then uses it;
    without it the server keeps the simple static-key path).
    """
    url = explicit or os.environ.get(DATABASE_ENV)
    if url:
        return url
    path = Path(state_dir).resolve() / DB_FILE
    if must_exist and not path.is_file():
        return None
    return f"sqlite:///{path}"


def _sqlite_pragmas(dbapi_conn: Any, _record: Any) -> None:
    # WAL lets the access log write while key lookups read; busy_timeout waits for the writer instead of
    # failing with "database is locked" (the CLI and the server may share the file). synchronous=NORMAL is
    # WAL's usual setting: no fsync per commit, still never corrupt (a power cut may lose the last commits).
    cur = dbapi_conn.cursor()
    cur.execute("PRAGMA journal_mode=WAL")
    cur.execute("PRAGMA synchronous=NORMAL")
    cur.execute("PRAGMA busy_timeout=10000")
    cur.execute("PRAGMA foreign_keys=ON")
    cur.close()


class Database:
    """One SQLAlchemy engine and the tables above (created if missing).

    Args:
        url: a SQLAlchemy URL: ``sqlite:///path/serve.db`` or ``postgresql+psycopg://user:pw@host/db``.

    Raises:
        TunelabError: malformed URL, unsupported database, missing driver, or the database cannot be opened.
    """

    def __init__(self, url: str):
        self.url = url
        try:
            parsed = make_url(url)
        except ArgumentError:
            raise TunelabError(f"'{url}' is not a database URL", where="database",
                               fix="e.g. sqlite:///serve-state/serve.db or postgresql+psycopg://user@host/db") from None
        self.dialect = parsed.get_backend_name()
        self.label = parsed.render_as_string(hide_password=True)
        if self.dialect not in _DIALECTS:
            raise TunelabError(f"database '{self.dialect}' is not supported", where="database",
                               fix="use sqlite:///PATH or postgresql+psycopg://USER@HOST/DB")
        self.engine = self._connect(parsed)

    def _connect(self, parsed: Any) -> SqlEngine:
        # A server connection can drop (restart, failover): test pooled ones before use. A file cannot.
        kwargs: dict[str, Any] = {"pool_pre_ping": self.dialect != "sqlite"}
        if self.dialect == "sqlite":
            if parsed.database in (None, "", ":memory:"):
                raise TunelabError("an in-memory SQLite database would lose every key at exit", where="database",
                                   fix="give a file: sqlite:///serve-state/serve.db")
            path = Path(parsed.database).expanduser()
            path.parent.mkdir(parents=True, exist_ok=True)
            if not path.exists():  # owner-only: the audit log may hold (redacted) prompts
                os.close(os.open(path, os.O_CREAT | os.O_WRONLY, 0o600))
            kwargs["connect_args"] = {"check_same_thread": False, "timeout": 10}
        try:
            engine = create_engine(parsed, **kwargs)
        except ModuleNotFoundError as e:
            raise TunelabError(f"the driver for {self.label} is not installed ({e.name})", where="database",
                               fix="pip install 'tunelab[postgres]' (psycopg, for PostgreSQL)") from None
        if self.dialect == "sqlite":
            event.listen(engine, "connect", _sqlite_pragmas)
        try:
            metadata.create_all(engine)
        except SQLAlchemyError as e:
            engine.dispose()
            raise TunelabError(f"cannot open the database {self.label}: {getattr(e, 'orig', e)}",
                               where="database", fix="check the URL, the server and its credentials") from None
        return engine

    @contextmanager
    def begin(self) -> Iterator[Connection]:
        """A connection in a transaction (committed on success, rolled back on error)."""
        with self.engine.begin() as conn:
            yield conn

    def close(self) -> None:
        self.engine.dispose()


def as_utc(value: datetime | None) -> datetime | None:
    """SQLite hands back naive datetimes; every stored time is UTC."""
    if value is None or value.tzinfo is not None:
        return value
    return value.replace(tzinfo=timezone.utc)


class SqlFeedbackStore:
    """/v1/feedback records in the ``feedback`` table (a `FeedbackStore`); one row per record kind."""

    def __init__(self, db: Database):
        self.db = db

    def add(self, rows: dict[str, dict[str, Any]]) -> list[str]:
        with self.db.begin() as conn:
            for kind, row in rows.items():
                conn.execute(feedback.insert().values(
                    id=row["id"], kind=kind, created=utc_now(), model=row.get("model"),
                    response_id=row.get("response_id"), rating=row.get("rating"),
                    record=json.dumps(row, ensure_ascii=False, default=str)))
        return [f"{self.db.dialect}:feedback/{kind}" for kind in rows]


def read_feedback_records(db: Database, kind: str | None = None) -> list[dict[str, Any]]:
    """Stored feedback rows (oldest first), optionally of one kind ('pairs' or 'ratings')."""
    query = select(feedback.c.record).order_by(feedback.c.created, feedback.c.id)
    if kind is not None:
        query = query.where(feedback.c.kind == kind)
    with db.begin() as conn:
        return [json.loads(r) for (r,) in conn.execute(query)]


def export_feedback(db: Database, kind: str, path: str | Path) -> int:
    """Write one kind of feedback as JSONL (the JSONL store's file, for `tunelab data from-feedback` or
    `data.path`); returns the number of rows."""
    if kind not in ("pairs", "ratings"):
        raise TunelabError(f"unknown feedback kind '{kind}'", where="kind", fix="use pairs or ratings")
    rows = read_feedback_records(db, kind)
    atomic_write_text(path, "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows))
    return len(rows)
