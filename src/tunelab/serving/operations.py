"""Wiring of the security, storage and operations layers into the app (called by `create_app`).

Middleware order, outermost first: request id + metrics -> CORS (only when origins are configured) ->
access/audit log -> drain (503 while shutting down) -> header limit -> authentication -> per-key limits
(429) -> body read timeout (408) -> body limit (413) -> routes. The access log sits outside
authentication so that refused requests are recorded too.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from fastapi import FastAPI

from tunelab.config.specs import ServeSpec
from tunelab.errors import TunelabError
from tunelab.serving.audit import AuditLog, AuditMiddleware, MeteredEngine
from tunelab.serving.auth import Authenticator, StaticKeyAuthenticator
from tunelab.serving.engines.base import Engine
from tunelab.serving.feedback import FeedbackStore, JsonlFeedbackStore
from tunelab.serving.keystore import KeyStore, KeyStoreAuthenticator
from tunelab.serving.lifecycle import Drain, DrainMiddleware, ReadTimeoutMiddleware
from tunelab.serving.ratelimit import RateLimiter, RateLimitMiddleware
from tunelab.serving.storage import Database, SqlFeedbackStore, resolve_database_url

__all__ = ["Operations", "add_key_limits", "add_operations", "build_operations", "database_has_keys",
           "document_operational_errors", "metered"]

_ERRORS = {
    "408": "The request body did not arrive in time (serve.body_timeout_s).",
    "429": "The API key is over its requests per minute or tokens per day (see Retry-After).",
    "503": "Overloaded, still loading or shutting down (see Retry-After).",
}


@dataclass
class Operations:
    """What `create_app` needs from this layer: who may call, where feedback goes, the database."""

    authenticator: Authenticator
    feedback: FeedbackStore
    db: Database | None
    keys: KeyStore | None


def open_server_database(settings: ServeSpec) -> Database | None:
    """The configured database, or the default SQLite file when it exists; None for neither."""
    url = resolve_database_url(settings.database, settings.state_dir, must_exist=True)
    return Database(url) if url else None


def database_has_keys(settings: ServeSpec) -> bool:
    """Whether the server's database holds API keys (then no session key needs to be generated)."""
    db = open_server_database(settings)
    if db is None:
        return False
    try:
        return KeyStore(db).has_keys()
    finally:
        db.close()


def build_operations(settings: ServeSpec, authenticator: Authenticator | None, api_key: str | None,
                     feedback_store: FeedbackStore | None, key_env: str) -> Operations:
    """Authenticator (given, else database keys and/or the static key) and feedback store.

    Raises:
        TunelabError: no way to authenticate; an unusable database URL.
    """
    db = open_server_database(settings)
    keys = KeyStore(db) if db is not None else None
    feedback = feedback_store or (SqlFeedbackStore(db) if db is not None else JsonlFeedbackStore(Path(settings.state_dir)))
    if authenticator is not None:
        return Operations(authenticator, feedback, db, keys)
    key = api_key or os.environ.get(key_env)
    static = StaticKeyAuthenticator(key) if key else None
    if keys is not None and keys.has_keys():
        return Operations(KeyStoreAuthenticator(keys, fallback=static), feedback, db, keys)
    if static is None:
        if db is not None:
            db.close()
        raise TunelabError("the server needs an API key (every route but /health is authenticated)",
                           where="--api-key", fix=f"pass --api-key KEY, set {key_env}, or create keys with "
                           "`tunelab keys create NAME`")
    return Operations(static, feedback, db, keys)


def metered(engine: Engine | None) -> Engine | None:
    """The engine wrapped so the access log counts each request's tokens (None stays None)."""
    if engine is None or isinstance(engine, MeteredEngine):
        return engine
    return MeteredEngine(engine)  # type: ignore[return-value]


def add_key_limits(app: FastAPI, settings: ServeSpec) -> None:
    """Layers that run after authentication: per-key limits (429) and the body read timeout (408)."""
    app.add_middleware(ReadTimeoutMiddleware, timeout_s=settings.body_timeout_s)
    app.add_middleware(RateLimitMiddleware, limiter=RateLimiter())


def add_operations(app: FastAPI, settings: ServeSpec, ops: Operations, drain: Drain, tokenizer_of) -> None:
    """Layers that see every request: drain, access/audit log and (when configured) CORS."""
    from starlette.middleware.cors import CORSMiddleware

    app.add_middleware(DrainMiddleware, drain=drain, live_paths=["/health"])
    if settings.access_log or ops.db is not None:
        audit = AuditLog(ops.db, ops.keys, settings.log_prompts, tokenizer_of, to_log=settings.access_log)
        app.add_middleware(AuditMiddleware, audit=audit, max_body_bytes=settings.max_body_bytes)
    if settings.cors_origins:
        # Outside authentication: browsers send the preflight (OPTIONS) without the Authorization header.
        app.add_middleware(CORSMiddleware, allow_origins=settings.cors_origins, allow_methods=["GET", "POST"],
                           allow_headers=["Authorization", "Content-Type", "X-Request-ID"],
                           expose_headers=["X-Request-ID", "Retry-After"], max_age=600)


def document_operational_errors(schema: dict, public_paths: list[str]) -> None:
    """Add the answers of these layers to an OpenAPI document: 429 and 503 on authenticated operations,
    408 on those with a body (each with the error envelope)."""
    ref = {"content": {"application/json": {"schema": {"$ref": "#/components/schemas/ErrorResponse"}}}}
    for path, ops in schema.get("paths", {}).items():
        if path in public_paths:
            continue
        for method, op in ops.items():
            responses = op.setdefault("responses", {})
            for code in ("429", "503", "408") if method in ("post", "put", "patch") else ("429", "503"):
                responses.setdefault(code, {"description": _ERRORS[code], **ref})
