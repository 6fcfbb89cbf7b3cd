"""One error envelope for every failure: {"error": {"message", "type", "param", "code"}} (OpenAI's shape).

Validation errors (FastAPI's 422) become 400 with `param` naming the field; unknown routes 404; wrong
methods 405; anything unexpected 500 with a generic message (the traceback goes to the log only).
"""

from __future__ import annotations

import json
import logging
import re
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.responses import Response

__all__ = ["ERROR_TYPES", "APIError", "envelope", "error_response", "install_error_handlers"]

log = logging.getLogger("tunelab.serving")

ERROR_TYPES = {400: "invalid_request_error", 401: "authentication_error", 403: "permission_error",
          404: "not_found_error", 405: "invalid_request_error", 408: "timeout_error", 413: "invalid_request_error",
          415: "invalid_request_error", 429: "rate_limit_error", 431: "invalid_request_error",
          503: "service_unavailable_error", 504: "timeout_error"}


class APIError(Exception):
    """An error answered to the client with the envelope.

    Args:
        status: HTTP status.
        message: what went wrong and, where it helps, how to fix it.
        type: error family (defaults from the status).
        param: the request field at fault (dotted path), when there is one.
        code: a stable machine-readable code.
        headers: extra response headers (e.g. Retry-After).
    """

    def __init__(self, status: int, message: str, *, type: str | None = None, param: str | None = None,
                 code: str | None = None, headers: dict[str, str] | None = None):
        super().__init__(message)
        self.status, self.message, self.param, self.code = status, message, param, code
        self.type = type or ERROR_TYPES.get(status, "server_error" if status >= 500 else "invalid_request_error")
        self.headers = headers or {}


def _clean(s: str | None) -> str | None:
    # Messages may quote client input; lone surrogates there would make the JSON encoder fail.
    return None if s is None else s.encode("utf-8", "replace").decode("utf-8")


def envelope(message: str, type: str, param: str | None = None, code: str | None = None) -> dict[str, Any]:
    return {"error": {"message": _clean(message), "type": type, "param": _clean(param), "code": code}}


def error_response(err: APIError) -> Response:
    body = json.dumps(envelope(err.message, err.type, err.param, err.code), ensure_ascii=False)
    return Response(body, status_code=err.status, media_type="application/json", headers=err.headers)


_TYPE_TAGS = {"str", "int", "float", "bool", "list", "dict", "none"}
_FIELD = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")


def _param(loc: tuple[Any, ...]) -> str | None:
    # pydantic puts union members ('str', 'list[TextPart]', 'function-after[...]') in the location: not fields.
    parts = [str(p) for p in loc[1:] if isinstance(p, int) or (_FIELD.match(str(p)) and p not in _TYPE_TAGS)] \
        if loc[:1] == ("body",) else [str(p) for p in loc]
    return ".".join(parts) or None


def _validation_message(err: dict[str, Any]) -> tuple[str, str | None]:
    loc = tuple(err.get("loc") or ())
    param = _param(loc)
    kind = err.get("type", "")
    if kind == "json_invalid":
        return f"invalid JSON body: {err.get('ctx', {}).get('error', 'decode error')}", None
    if kind == "extra_forbidden":
        return f"unknown field '{param}'", param
    if kind == "missing":
        return f"missing required field '{param}'", param
    if kind == "string_unicode":
        return f"'{param}': not valid Unicode text (an unpaired surrogate?)", param
    msg = str(err.get("msg", "invalid value"))
    if msg.startswith("Value error, "):
        msg = msg[len("Value error, "):]
    return (f"'{param}': {msg}" if param else msg), param


async def _on_validation(request: Request, exc: RequestValidationError) -> Response:
    errors = list(exc.errors())
    first = next((e for e in errors if e.get("type") == "extra_forbidden"), errors[0] if errors else {})
    message, param = _validation_message(first)
    if len(errors) > 1:
        message += f" (and {len(errors) - 1} more problem{'s' if len(errors) > 2 else ''})"
    return error_response(APIError(400, message, param=param, code="invalid_value"))


async def _on_http(request: Request, exc: StarletteHTTPException) -> Response:
    codes = {404: "not_found", 405: "method_not_allowed", 400: "invalid_body"}
    if exc.status_code == 400 and exc.detail == "There was an error parsing the body":
        return error_response(APIError(400, "the body is not valid JSON text (UTF-8)", code="invalid_body"))
    message = {404: f"no route {request.method} {request.url.path}",
               405: f"method {request.method} is not allowed on {request.url.path}"}.get(exc.status_code, str(exc.detail))
    return error_response(APIError(exc.status_code, message, code=codes.get(exc.status_code),
                                   headers=dict(exc.headers or {})))


async def _on_api_error(request: Request, exc: APIError) -> Response:
    return error_response(exc)


async def _on_unexpected(request: Request, exc: Exception) -> Response:
    log.exception("unhandled error on %s %s", request.method, request.url.path)
    return error_response(APIError(500, "internal server error (see the server log)", type="server_error",
                                   code="internal_error"))


def install_error_handlers(app: FastAPI) -> None:
    app.add_exception_handler(APIError, _on_api_error)
    app.add_exception_handler(RequestValidationError, _on_validation)
    app.add_exception_handler(StarletteHTTPException, _on_http)
    app.add_exception_handler(Exception, _on_unexpected)
