"""`tunelab keys create|list|revoke`: manage the server's API keys (see `tunelab.serving.keystore`)."""

from __future__ import annotations

from datetime import datetime

from rich.table import Table

from tunelab.errors import TunelabError
from tunelab.serving.keystore import KeyInfo, KeyStore
from tunelab.serving.storage import Database, resolve_database_url
from tunelab.util.console import console

__all__ = ["keys_command"]


def _when(t: datetime | None) -> str:
    return "-" if t is None else f"{t:%Y-%m-%d %H:%M}"


def _limit(value: int | None) -> str:
    return "none" if value is None else f"{value:,}"


def _table(keys: list[KeyInfo]) -> Table:
    table = Table(title="API keys (times in UTC)")
    for col in ("id", "name", "created", "revoked", "rpm", "tokens/day", "tokens today", "requests", "tokens",
                "last used"):
        table.add_column(col, justify="right" if col in ("rpm", "tokens/day", "tokens today", "requests", "tokens")
                         else "left")
    for k in keys:
        table.add_row(k.id, k.name, _when(k.created), _when(k.revoked), _limit(k.rpm), _limit(k.tokens_per_day),
                      f"{k.tokens_today:,}", f"{k.requests:,}", f"{k.tokens:,}", _when(k.last_used))
    return table


def keys_command(action: str, target: str | None, *, rpm: int | None = None, tokens_per_day: int | None = None,
                 db_url: str | None = None, state_dir: str = "serve-state") -> int:
    """Run one `tunelab keys` action; returns the exit code.

    Raises:
        TunelabError: missing NAME/ID, options that do not apply, bad limits, unknown or revoked id, bad URL.
    """
    if action == "create" and not target:
        raise TunelabError("tunelab keys create needs the key's name", where="NAME", fix="tunelab keys create my-app")
    if action == "revoke" and not target:
        raise TunelabError("tunelab keys revoke needs the key's id", where="ID", fix="tunelab keys list shows them")
    if action != "create" and (rpm is not None or tokens_per_day is not None):
        raise TunelabError(f"--rpm and --tokens-per-day apply to create, not {action}", where="--rpm/--tokens-per-day")
    if action == "list" and target:
        raise TunelabError("tunelab keys list takes no NAME or ID", where=target)
    db = Database(resolve_database_url(db_url, state_dir, must_exist=False))  # type: ignore[arg-type]
    try:
        store = KeyStore(db)
        if action == "create":
            key, info = store.create(target, rpm, tokens_per_day)  # type: ignore[arg-type]
            console.print(f"created key [bold]{info.id}[/] ({info.name}; rpm {_limit(rpm)}, tokens/day "
                          f"{_limit(tokens_per_day)}) in {db.label}")
            console.print("the key (shown this once; only its hash is stored):")
            print(key)  # the only stdout line (messages go to stderr): KEY=$(tunelab keys create app) works
        elif action == "list":
            keys = store.list()
            console.print(_table(keys) if keys else f"no keys in {db.label} (tunelab keys create NAME)")
        else:
            info = store.revoke(target)  # type: ignore[arg-type]
            console.print(f"revoked key [bold]{info.id}[/] ({info.name}); requests with it now get 401")
    finally:
        db.close()
    return 0
