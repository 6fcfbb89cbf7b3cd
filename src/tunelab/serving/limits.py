"""Request size limits: total header bytes (431) and body bytes (413), each answered with the envelope.

`HeaderLimitMiddleware` runs before authentication and also refuses a declared Content-Length over the
body limit, so an oversized upload is refused before a byte of it is read. `BodyLimitMiddleware` runs after
authentication: it reads the body (chunked uploads included) up to the limit and replays it to the app;
later `receive` calls reach the server again, so routes still see the client disconnect.
"""

from __future__ import annotations

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from tunelab.serving.errors import APIError, error_response

__all__ = ["BodyLimitMiddleware", "HeaderLimitMiddleware"]


def _too_large(limit: int, size: str) -> APIError:
    return APIError(413, f"request body is {size} bytes; the limit is {limit}", code="request_too_large")


class HeaderLimitMiddleware:
    def __init__(self, app: ASGIApp, max_body_bytes: int, max_header_bytes: int):
        self.app, self.max_body, self.max_headers = app, max_body_bytes, max_header_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        err = self._check(scope) if scope["type"] == "http" else None
        if err is not None:
            await error_response(err)(scope, receive, send)
            return
        await self.app(scope, receive, send)

    def _check(self, scope: Scope) -> APIError | None:
        size = sum(len(k) + len(v) + 4 for k, v in scope["headers"])  # "name: value\r\n"
        if size > self.max_headers:
            return APIError(431, f"request headers are {size} bytes; the limit is {self.max_headers}",
                            code="headers_too_large")
        for k, v in scope["headers"]:
            if k.lower() == b"content-length":
                if not v.isdigit():
                    return APIError(400, "invalid Content-Length header", code="invalid_header")
                if int(v) > self.max_body:
                    return _too_large(self.max_body, v.decode())
        return None


class BodyLimitMiddleware:
    def __init__(self, app: ASGIApp, max_body_bytes: int):
        self.app, self.max_body = app, max_body_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        body, err = await self._read(receive)
        if err is not None:
            await error_response(err)(scope, receive, send)
            return
        replayed = False

        async def replay() -> Message:
            nonlocal replayed
            if not replayed:
                replayed = True
                return {"type": "http.request", "body": body, "more_body": False}
            return await receive()

        await self.app(scope, replay, send)

    async def _read(self, receive: Receive) -> tuple[bytes, APIError | None]:
        chunks, size = [], 0
        while True:
            message = await receive()
            if message["type"] == "http.disconnect":
                return b"", None  # the client left; the app will see the disconnect on its next receive
            chunk = message.get("body", b"")
            size += len(chunk)
            if size > self.max_body:
                return b"", _too_large(self.max_body, f"more than {self.max_body}")
            chunks.append(chunk)
            if not message.get("more_body", False):
                return b"".join(chunks), None
