"""API keys in the database: created and revoked with `tunelab keys`, checked by `KeyStoreAuthenticator`.

A key reads ``tlk_<id>_<secret>``: the id (12 hex digits) names the key in listings and logs and finds
its row; the secret (256 random bits) is shown once at creation and stored only as a salted scrypt hash.
Checking a key derives the hash again and compares it with `hmac.compare_digest` (constant time).

Why scrypt when the secret is random: it costs an attacker who copies the database nothing extra today,
but keeps the file safe if keys are ever imported from a weaker source; its cost (a few ms) is paid once
per key and process, because verified keys are remembered (by SHA-256 of the key, in memory only). The
row itself is read on every request, so a revocation takes effect at the next request on every replica.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import hmac
import logging
import re
import secrets
import threading
from collections import OrderedDict
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import func, select, update
from sqlalchemy.exc import SQLAlchemyError

from tunelab.errors import TunelabError
from tunelab.serving.auth import Authenticator, Principal
from tunelab.serving.errors import APIError
from tunelab.serving.storage import Database, api_keys, as_utc, audit_log, key_usage, utc_now

__all__ = ["KEY_PREFIX", "KeyInfo", "KeyStore", "KeyStoreAuthenticator", "hash_secret", "parse_key",
           "verify_secret"]

log = logging.getLogger("tunelab.serving")
KEY_PREFIX = "tlk"
_KEY = re.compile(r"^tlk_([0-9a-f]{12})_([A-Za-z0-9_-]{20,200})$")
# scrypt cost: n=2**12, r=8 is 4 MiB and a few ms per check; stored with each hash so it can be raised.
_SCRYPT = {"n": 2**12, "r": 8, "p": 1}


def hash_secret(secret: str, salt: bytes | None = None, n: int = _SCRYPT["n"], r: int = _SCRYPT["r"],
                p: int = _SCRYPT["p"]) -> str:
    """``scrypt$n$r$p$salt$digest`` (base64) for a key's secret; a fresh 16-byte salt unless given."""
    salt = salt if salt is not None else secrets.token_bytes(16)
    digest = hashlib.scrypt(secret.encode("utf-8"), salt=salt, n=n, r=r, p=p, dklen=32)
    b64 = base64.urlsafe_b64encode
    return f"scrypt${n}${r}${p}${b64(salt).decode()}${b64(digest).decode()}"


def verify_secret(secret: str, stored: str) -> bool:
    """Whether `secret` derives to `stored` (compared in constant time)."""
    try:
        scheme, n, r, p, salt, digest = stored.split("$")
        if scheme != "scrypt":
            return False
        expected = base64.urlsafe_b64decode(digest)
        got = hashlib.scrypt(secret.encode("utf-8"), salt=base64.urlsafe_b64decode(salt), n=int(n), r=int(r),
                             p=int(p), dklen=len(expected))
    except ValueError:
        return False
    return hmac.compare_digest(got, expected)


def parse_key(token: str) -> tuple[str, str] | None:
    """(id, secret) of a ``tlk_<id>_<secret>`` key, or None for anything else."""
    m = _KEY.match(token)
    return (m.group(1), m.group(2)) if m else None


@dataclass
class KeyInfo:
    """A key's row (never its secret) with today's usage (UTC day)."""

    id: str
    name: str
    created: datetime
    revoked: datetime | None
    rpm: int | None
    tokens_per_day: int | None
    requests: int
    tokens: int
    last_used: datetime | None
    tokens_today: int = 0
    requests_today: int = 0


def today() -> str:
    return utc_now().date().isoformat()


def _positive(value: int | None, name: str) -> None:
    if value is not None and value < 1:
        raise TunelabError(f"{name} must be at least 1 (got {value})", where=f"--{name.replace('_', '-')}",
                           fix="leave it out for no limit")


class KeyStore:
    """Create, list, revoke and look up keys; record their usage.

    Args:
        db: the server database (see `tunelab.serving.storage`).
    """

    def __init__(self, db: Database):
        self.db = db

    def create(self, name: str, rpm: int | None = None, tokens_per_day: int | None = None) -> tuple[str, KeyInfo]:
        """A new key: returns (the key itself, shown once; its row).

        Raises:
            TunelabError: empty or over-long name, or a limit below 1.
        """
        name = name.strip()
        if not name or len(name) > 200:
            raise TunelabError("a key needs a name of 1-200 characters", where="NAME", fix="e.g. support-bot")
        _positive(rpm, "rpm")
        _positive(tokens_per_day, "tokens_per_day")
        key_id, secret = secrets.token_hex(6), secrets.token_urlsafe(32)
        now = utc_now()
        with self.db.begin() as conn:
            conn.execute(api_keys.insert().values(id=key_id, name=name, hash=hash_secret(secret), created=now,
                                                  rpm=rpm, tokens_per_day=tokens_per_day, requests=0, tokens=0))
            conn.execute(audit_log.insert().values(at=now, kind="key_created", key_id=key_id,
                                                   detail=f"name={name} rpm={rpm} tokens_per_day={tokens_per_day}"))
        return f"{KEY_PREFIX}_{key_id}_{secret}", KeyInfo(key_id, name, now, None, rpm, tokens_per_day, 0, 0, None)

    def _query(self):
        usage = key_usage.alias("today")
        return (select(api_keys, func.coalesce(usage.c.tokens, 0), func.coalesce(usage.c.requests, 0))
                .select_from(api_keys.outerjoin(usage, (usage.c.key_id == api_keys.c.id) & (usage.c.day == today()))))

    @staticmethod
    def _info(row: Any) -> KeyInfo:
        m = row._mapping
        return KeyInfo(m["id"], m["name"], as_utc(m["created"]), as_utc(m["revoked"]), m["rpm"],  # type: ignore[arg-type]
                       m["tokens_per_day"], m["requests"], m["tokens"], as_utc(m["last_used"]), row[-2], row[-1])

    def list(self) -> list[KeyInfo]:
        """Every key, oldest first (revoked ones too)."""
        with self.db.begin() as conn:
            return [self._info(r) for r in conn.execute(self._query().order_by(api_keys.c.created))]

    def lookup(self, key_id: str) -> tuple[KeyInfo, str] | None:
        """(row, stored hash) of a key id, or None."""
        with self.db.begin() as conn:
            row = conn.execute(self._query().where(api_keys.c.id == key_id)).first()
        return None if row is None else (self._info(row), row._mapping["hash"])

    def has_keys(self) -> bool:
        with self.db.begin() as conn:
            return conn.execute(select(func.count()).select_from(api_keys)).scalar_one() > 0

    def revoke(self, key_id: str) -> KeyInfo:
        """Mark a key revoked (its row stays for the audit trail).

        Raises:
            TunelabError: unknown id, or already revoked.
        """
        found = self.lookup(key_id)
        if found is None:
            raise TunelabError(f"no key with id '{key_id}'", where="ID", fix="tunelab keys list shows the ids")
        info = found[0]
        if info.revoked is not None:
            raise TunelabError(f"key '{key_id}' ({info.name}) was already revoked on {info.revoked:%Y-%m-%d %H:%M} UTC",
                               where="ID")
        now = utc_now()
        with self.db.begin() as conn:
            conn.execute(update(api_keys).where(api_keys.c.id == key_id).values(revoked=now))
            conn.execute(audit_log.insert().values(at=now, kind="key_revoked", key_id=key_id, detail=f"name={info.name}"))
        info.revoked = now
        return info

    def charge(self, conn: Any, key_id: str, tokens: int) -> None:
        """Add one request and `tokens` to the key's counters and today's usage (inside `conn`'s transaction).

        The increments run in SQL (``tokens = tokens + n``), so replicas sharing a database never lose counts.
        """
        conn.execute(update(api_keys).where(api_keys.c.id == key_id).values(
            requests=api_keys.c.requests + 1, tokens=api_keys.c.tokens + tokens, last_used=utc_now()))
        if self.db.dialect == "postgresql":
            from sqlalchemy.dialects.postgresql import insert
        else:
            from sqlalchemy.dialects.sqlite import insert
        stmt = insert(key_usage).values(key_id=key_id, day=today(), requests=1, tokens=tokens)
        conn.execute(stmt.on_conflict_do_update(
            index_elements=[key_usage.c.key_id, key_usage.c.day],
            set_={"requests": key_usage.c.requests + 1, "tokens": key_usage.c.tokens + stmt.excluded.tokens}))


def _invalid() -> APIError:
    return APIError(401, "invalid API key", code="invalid_api_key")


class KeyStoreAuthenticator:
    """Bearer keys checked against the key store, optionally also one static key (`fallback`).

    The principal carries the key's limits for the rate limiter: ``rpm``, ``tokens_per_day`` and
    ``tokens_today``; ``metered`` marks keys whose usage is recorded in the database.

    Args:
        store: the key store.
        fallback: checks tokens that are not store keys (e.g. `StaticKeyAuthenticator`); None refuses them.
        cache_size: verified keys remembered (by SHA-256) so the hash is derived once per key.
    """

    def __init__(self, store: KeyStore, fallback: Authenticator | None = None, cache_size: int = 1024):
        self.store, self.fallback, self.cache_size = store, fallback, cache_size
        self._verified: OrderedDict[bytes, str] = OrderedDict()
        self._lock = threading.Lock()
        self._kdf_slots: asyncio.Semaphore | None = None

    async def authenticate(self, token: str | None) -> Principal:
        if token is None:
            raise APIError(401, "missing API key: send 'Authorization: Bearer KEY'", code="missing_api_key")
        parsed = parse_key(token)
        try:
            found = await asyncio.to_thread(self.store.lookup, parsed[0]) if parsed else None
        except SQLAlchemyError:
            log.exception("the key database cannot be read")
            raise APIError(503, "API keys cannot be checked right now (the key database is unavailable)",
                           code="auth_unavailable", headers={"Retry-After": "5"}) from None
        if found is None:
            # Not one of ours: the static key (if any) decides. Which key ids exist is not a secret.
            if self.fallback is None:
                raise _invalid()
            result = self.fallback.authenticate(token)
            return await result if asyncio.iscoroutine(result) else result  # type: ignore[return-value]
        info, stored = found
        if not await self._check(token, parsed[1], stored):  # type: ignore[index]
            raise _invalid()
        if info.revoked is not None:
            raise APIError(401, f"API key '{info.id}' was revoked", code="revoked_api_key")
        return Principal(info.id, {"name": info.name, "rpm": info.rpm, "tokens_per_day": info.tokens_per_day,
                                   "tokens_today": info.tokens_today, "metered": True})

    async def _check(self, token: str, secret: str, stored: str) -> bool:
        digest = hashlib.sha256(token.encode("utf-8")).digest()
        with self._lock:
            if self._verified.get(digest) == stored:
                self._verified.move_to_end(digest)
                return True
        if self._kdf_slots is None:
            self._kdf_slots = asyncio.Semaphore(2)  # bounds the CPU that wrong keys can make us spend
        async with self._kdf_slots:
            ok = await asyncio.to_thread(verify_secret, secret, stored)
        if ok:
            with self._lock:
                self._verified[digest] = stored
                while len(self._verified) > self.cache_size:
                    self._verified.popitem(last=False)
        return ok
