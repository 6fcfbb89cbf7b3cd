"""Authentication: every path needs a key except an explicit allowlist (default: /health only).

The middleware runs before routing and body parsing, so an unauthenticated request costs nothing and
learns nothing (unknown paths answer 401 too). `Authenticator` is the seam for key stores: the default
`StaticKeyAuthenticator` compares one key in constant time; a database-backed one can replace it and
return a richer `Principal` (key id, limits) that handlers read from `scope["state"]["principal"]`.
"""

from __future__ import annotations

import hmac
import inspect
import secrets
from collections.abc import Awaitable
from dataclasses import dataclass, field
from typing import Any, Protocol

from starlette.types import ASGIApp, Receive, Scope, Send

from tunelab.serving.errors import APIError, error_response

__all__ = ["AuthMiddleware", "Authenticator", "Principal", "StaticKeyAuthenticator", "bearer_token",
           "generate_key"]


@dataclass
class Principal:
    """Who made a request: a key id (never the key itself) and whatever the key store attaches."""

    key_id: str
    attributes: dict[str, Any] = field(default_factory=dict)


class Authenticator(Protocol):
    def authenticate(self, token: str | None) -> Principal | Awaitable[Principal]:
        """The principal for a bearer token; raises `APIError(401)` for a missing or wrong one.

        May be a coroutine (a key store reads its database off the event loop)."""
        ...


def generate_key() -> str:
    """A random key for a session where none was configured (printed once at startup)."""
    return "tl-" + secrets.token_urlsafe(24)


class StaticKeyAuthenticator:
    """One shared key (`--api-key` or TUNELAB_API_KEY), compared in constant time."""

    def __init__(self, key: str):
        if not key:
            raise ValueError("empty API key")
        self._key = key.encode("utf-8")

    def authenticate(self, token: str | None) -> Principal:
        if token is None:
            raise APIError(401, "missing API key: send 'Authorization: Bearer KEY'", code="missing_api_key")
        if not hmac.compare_digest(token.encode("utf-8", "replace"), self._key):
            raise APIError(401, "invalid API key", code="invalid_api_key")
        return Principal("static")


def bearer_token(headers: list[tuple[bytes, bytes]]) -> str | None:
    for name, value in headers:
        if name.lower() == b"authorization":
            scheme, _, token = value.decode("latin-1").partition(" ")
            return token.strip() if scheme.lower() == "bearer" and token.strip() else ""
    return None


class AuthMiddleware:
    """ASGI middleware: 401 with the error envelope unless the path is public or the key is valid."""

    def __init__(self, app: ASGIApp, authenticator: Authenticator, public_paths: list[str]):
        self.app, self.authenticator, self.public = app, authenticator, set(public_paths)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["path"] in self.public:
            await self.app(scope, receive, send)
            return
        try:
            principal = self.authenticator.authenticate(bearer_token(scope["headers"]))
            if inspect.isawaitable(principal):
                principal = await principal
        except APIError as e:
            e.headers.setdefault("WWW-Authenticate", "Bearer")
            await error_response(e)(scope, receive, send)
            return
        scope.setdefault("state", {})["principal"] = principal
        await self.app(scope, receive, send)
