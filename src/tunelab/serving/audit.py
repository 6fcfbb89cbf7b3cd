"""The access and audit log: one structured record per request, and per-key usage for the quotas.

Each record has the request id, key id (never the key), method, path, status, error code, model, prompt
and completion tokens and latency. It goes to the ``tunelab.access`` logger as one JSON line, and to the
``audit_log`` table when the server has a database (where the key's usage is also charged).

Prompt and answer text are not recorded unless `serve.log_prompts` is on; then both are PII-redacted
(`tunelab.data.pii.redact`) before they are written anywhere.

Tokens are counted where they are made: `MeteredEngine` wraps the engine, and each stream a request
submits counts the tokens its handler consumes, so a streaming client that leaves early is still charged
for what it received. The request being served is found through a context variable that the middleware
sets (asyncio tasks copy it, so the handler's tasks see it).
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from collections.abc import AsyncIterator
from contextvars import ContextVar
from dataclasses import dataclass, field
from typing import Any

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from tunelab.serving.engines.base import Engine, EngineStats, GenerationRequest, GenerationStream, TokenEvent
from tunelab.serving.keystore import KeyStore
from tunelab.serving.storage import Database, audit_log, utc_now

__all__ = ["AccessRecord", "AuditLog", "AuditMiddleware", "MeteredEngine", "current_record", "redacted_texts"]

log = logging.getLogger("tunelab.serving")
access_log = logging.getLogger("tunelab.access")
current_record: ContextVar[AccessRecord | None] = ContextVar("tunelab_access_record", default=None)
# Column widths of audit_log (PostgreSQL refuses longer strings; client-chosen values are cut to fit).
_WIDTH = {"request_id": 128, "method": 10, "path": 300, "error": 64, "model": 200}


@dataclass
class AccessRecord:
    """What one request did; filled in by the middleware (status, key) and the metered engine (tokens)."""

    request_id: str
    method: str
    path: str
    started: float = field(default_factory=time.perf_counter)
    key_id: str | None = None
    metered: bool = False
    model: str | None = None
    prompt_tokens: int = 0
    completion_tokens: int = 0
    status: int = 500
    error: str | None = None
    latency_ms: float = 0.0
    keep_outputs: bool = False
    outputs: list[list[int]] = field(default_factory=list)  # token ids per choice (only with keep_outputs)
    _prompts: set[int] = field(default_factory=set)

    def submitted(self, request: GenerationRequest) -> list[int] | None:
        """Count a submitted choice's prompt; returns the list its output ids go to (or None)."""
        self.model = self.model or request.model
        # The n choices of one prompt share its id list: count it once, as the response's `usage` does.
        if id(request.prompt_ids) not in self._prompts:
            self._prompts.add(id(request.prompt_ids))
            self.prompt_tokens += len(request.prompt_ids)
        if not self.keep_outputs:
            return None
        self.outputs.append([])
        return self.outputs[-1]

    def row(self) -> dict[str, Any]:
        row = {"at": utc_now().isoformat(timespec="milliseconds"), "kind": "request", "request_id": self.request_id,
               "key_id": self.key_id, "method": self.method, "path": self.path, "status": self.status,
               "error": self.error, "model": self.model, "prompt_tokens": self.prompt_tokens,
               "completion_tokens": self.completion_tokens, "latency_ms": round(self.latency_ms, 2)}
        for name, width in _WIDTH.items():
            if isinstance(row[name], str):
                row[name] = row[name][:width]
        return row


class CountedStream:
    """A `GenerationStream` seen through: counts (and optionally keeps) the tokens its consumer reads."""

    def __init__(self, inner: GenerationStream, record: AccessRecord, ids: list[int] | None):
        self.inner, self.record, self.ids = inner, record, ids

    def __getattr__(self, name: str) -> Any:  # request, finish, cancelled, ...
        return getattr(self.inner, name)

    def cancel(self) -> None:
        self.inner.cancel()

    async def __aiter__(self) -> AsyncIterator[TokenEvent]:
        async for event in self.inner:
            self.record.completion_tokens += 1
            if self.ids is not None:
                self.ids.append(event.token_id)
            yield event


class MeteredEngine:
    """Wraps an engine so each request's tokens reach its `AccessRecord` (see the module docstring)."""

    def __init__(self, inner: Engine):
        self.inner = inner

    @property
    def name(self) -> str:  # type: ignore[override]
        return self.inner.name

    async def start(self) -> None:
        await self.inner.start()

    async def stop(self) -> None:
        await self.inner.stop()

    def ready(self) -> bool:
        return self.inner.ready()

    def stats(self) -> EngineStats:
        return self.inner.stats()

    def submit(self, request: GenerationRequest) -> GenerationStream:
        stream = self.inner.submit(request)
        record = current_record.get()
        if record is None:  # not inside an HTTP request (benchmarks driving the engine directly)
            return stream
        return CountedStream(stream, record, record.submitted(request))  # type: ignore[return-value]


def _request_texts(body: bytes) -> tuple[str | None, Any]:
    """(model, prompt part) of a JSON request body: messages, prompt or input, as sent."""
    try:
        doc = json.loads(body)
    except ValueError:
        return None, None
    if not isinstance(doc, dict):
        return None, None
    model = doc.get("model") if isinstance(doc.get("model"), str) else None
    prompt = next((doc[k] for k in ("messages", "prompt", "input") if k in doc), None)
    return model, prompt


def _redact_value(value: Any) -> Any:
    from tunelab.data.pii import redact

    if isinstance(value, str):
        return redact(value)[0]
    if isinstance(value, list):
        return [_redact_value(v) for v in value]
    if isinstance(value, dict):
        return {k: _redact_value(v) for k, v in value.items()}
    return value


def redacted_texts(prompt: Any, outputs: list[str]) -> tuple[str | None, str | None]:
    """The prompt (as sent: messages, text or list) and the answers, PII-redacted, as JSON text."""
    p = None if prompt is None else json.dumps(_redact_value(prompt), ensure_ascii=False)
    r = json.dumps(_redact_value(outputs), ensure_ascii=False) if outputs else None
    return p, r


class AuditLog:
    """Writes access records to the log and (with a database) to ``audit_log``, charging metered keys.

    Args:
        db: the server database, or None (log lines only).
        keys: the key store whose usage is charged (with `db`).
        log_prompts: also record prompt and answer text (PII-redacted).
        tokenizer_of: model id -> tokenizer (or None), to turn kept output ids into text.
        to_log: also write each record as a JSON line to the ``tunelab.access`` logger.
    """

    def __init__(self, db: Database | None, keys: KeyStore | None, log_prompts: bool, tokenizer_of=None,
                 to_log: bool = True):
        self.db, self.keys, self.log_prompts, self.tokenizer_of = db, keys, log_prompts, tokenizer_of
        self.to_log = to_log

    def write(self, record: AccessRecord, body: bytes) -> dict[str, Any]:
        """Record one request (runs in a worker thread); returns the row written."""
        row = record.row()
        if body and (self.log_prompts or record.model is None):
            model, prompt = _request_texts(body)
            row["model"] = row["model"] or (model[:_WIDTH["model"]] if model else None)
            if self.log_prompts:
                row["prompt_text"], row["response_text"] = redacted_texts(prompt, self._outputs(record))
        if self.to_log:
            access_log.info(json.dumps(row, ensure_ascii=False))
        if self.db is not None:
            with self.db.begin() as conn:
                conn.execute(audit_log.insert().values(**{**row, "at": utc_now()}))
                if record.metered and record.key_id and self.keys is not None:
                    self.keys.charge(conn, record.key_id, record.prompt_tokens + record.completion_tokens)
        return row

    def _outputs(self, record: AccessRecord) -> list[str]:
        tok = self.tokenizer_of(record.model) if (self.tokenizer_of and record.model) else None
        if tok is None:
            return []
        return [tok.decode(ids, skip_special_tokens=True) for ids in record.outputs]


def _error_code(body: bytes) -> str | None:
    """The envelope's code in an error body or an SSE error event (None when there is none)."""
    text = body[6:] if body.startswith(b"data: ") else body
    if not text.lstrip().startswith(b'{"error"'):
        return None
    try:
        err = json.loads(text)["error"]
        return str(err.get("code") or err.get("type"))
    except (ValueError, KeyError, AttributeError):
        return None


class AuditMiddleware:
    """Outermost but for the request id: sees every request, including the refused ones (401, 413, 429).

    Args:
        app: the inner ASGI app.
        audit: where records go.
        max_body_bytes: request bytes kept for the record (model name, prompt text); more are not kept.
    """

    def __init__(self, app: ASGIApp, audit: AuditLog, max_body_bytes: int):
        self.app, self.audit, self.max_body = app, audit, max_body_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        state = scope.setdefault("state", {})
        record = AccessRecord(str(state.get("request_id", "")), scope["method"], scope["path"],
                              keep_outputs=self.audit.log_prompts)
        chunks: list[bytes] = []
        kept = 0

        async def tap_receive() -> Message:
            nonlocal kept
            message = await receive()
            body = message.get("body", b"") if message["type"] == "http.request" else b""
            if body and kept + len(body) <= self.max_body:
                chunks.append(body)
                kept += len(body)
            return message

        async def tap_send(message: Message) -> None:
            if message["type"] == "http.response.start":
                record.status = message["status"]
            elif message["type"] == "http.response.body" and record.error is None and (
                    record.status >= 400 or message.get("body", b"").startswith(b'data: {"error"')):
                record.error = _error_code(message.get("body", b""))
            await send(message)

        token = current_record.set(record)
        try:
            await self.app(scope, tap_receive, tap_send)
        finally:
            current_record.reset(token)
            await self._finish(record, state.get("principal"), b"".join(chunks))

    async def _finish(self, record: AccessRecord, principal: Any, body: bytes) -> None:
        record.latency_ms = (time.perf_counter() - record.started) * 1000
        if principal is not None:
            record.key_id, record.metered = principal.key_id, bool(principal.attributes.get("metered"))
        try:
            await asyncio.shield(asyncio.to_thread(self.audit.write, record, body))
        except asyncio.CancelledError:
            raise
        except Exception:  # noqa: BLE001 - the answer is already sent; a failed record must not fail the server
            log.exception("could not write the access record of request %s", record.request_id)
