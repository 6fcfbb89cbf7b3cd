"""Routes: HTTP only. Parse (FastAPI does it from the protocol models), call a handler, shape the response.

Non-streaming generation runs while a watcher waits for the client to disconnect; if it does, the work is
cancelled (and with it the engine rows). Streaming responses are cancelled by Starlette on disconnect,
which closes the event generator and cancels the engine rows the same way.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable
from typing import Any

from fastapi import APIRouter, Request
from fastapi.responses import Response, StreamingResponse

from tunelab.serving import protocol as P
from tunelab.serving.handlers import Handlers

__all__ = ["ERROR_STATUSES", "build_router", "error_responses"]

ERROR_STATUSES = {
    400: "Invalid request (envelope names the field in `param`).",
    401: "Missing or invalid API key.",
    404: "Unknown model or response id.",
    413: "Request body too large.",
    431: "Request headers too large.",
    503: "Overloaded or still loading (see Retry-After).",
    504: "Generation timed out.",
}
# One server-sent event (schema per event, as OpenAPI 3.2 reads text/event-stream): `data` is a chunk as JSON
# (the response model's chunk shape, or an error envelope), and the last event's data is `[DONE]`.
_SSE = {"text/event-stream": {"schema": {
    "type": "object", "required": ["data"], "properties": {"data": {"type": "string"}, "event": {"type": "string"}},
    "description": "Server-sent events: `data: {chunk JSON}` per event, ending with `data: [DONE]`."}}}


def error_responses(*codes: int) -> dict[int | str, dict[str, Any]]:
    return {c: {"model": P.ErrorResponse, "description": ERROR_STATUSES[c]} for c in codes}


def _json(model: Any) -> Response:
    return Response(model.model_dump_json(), media_type="application/json")


async def _disconnected(request: Request) -> None:
    while (await request.receive())["type"] != "http.disconnect":
        pass


async def _unless_disconnected(request: Request, work: Awaitable[Any]) -> Any:
    """Run `work`; if the client disconnects first, cancel it and return None."""
    task = asyncio.ensure_future(work)
    watcher = asyncio.ensure_future(_disconnected(request))
    try:
        done, _ = await asyncio.wait({task, watcher}, return_when=asyncio.FIRST_COMPLETED)
    finally:
        watcher.cancel()
    if task in done:
        return task.result()
    task.cancel()
    return None


async def _generation(request: Request, work: Awaitable[Any]) -> Response:
    result = await _unless_disconnected(request, work)
    if result is None:
        return Response(status_code=499)  # client closed the request; nobody reads this
    if isinstance(result, AsyncIterator):
        return StreamingResponse(result, media_type="text/event-stream",
                                 headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"})
    return _json(result)


def build_router(h: Handlers) -> APIRouter:
    r = APIRouter()
    gen_errors = error_responses(400, 401, 404, 413, 431, 503, 504)

    @r.get("/health", response_model=P.Health, tags=["operations"], summary="Liveness (no key needed)",
           responses=error_responses(431))
    async def health() -> Response:
        return _json(P.Health())

    @r.get("/ready", response_model=P.Ready, tags=["operations"], responses=error_responses(401, 431, 503),
           summary="Readiness: 200 once the models are loaded")
    async def ready() -> Response:
        return _json(h.ready())

    @r.get("/metrics", tags=["operations"], summary="Prometheus metrics", response_class=Response,
           responses={200: {"content": {"text/plain": {"schema": {"type": "string"}}}},
                      **error_responses(401, 431)})
    async def metrics() -> Response:
        from prometheus_client import CONTENT_TYPE_LATEST

        return Response(h.s.metrics.render() if h.s.metrics else b"", media_type=CONTENT_TYPE_LATEST)

    @r.get("/stats", response_model=P.EngineStatsResponse, tags=["operations"],
           responses=error_responses(401, 431, 503), summary="Engine counters (queue, running rows, tokens)")
    async def stats() -> Response:
        return _json(h.stats())

    @r.get("/v1/models", response_model=P.ModelList, tags=["models"], responses=error_responses(401, 431, 503))
    async def list_models() -> Response:
        return _json(h.list_models())

    @r.get("/v1/models/{model_id:path}", response_model=P.ModelCard, tags=["models"],
           responses=error_responses(401, 404, 431, 503))
    async def get_model(model_id: str) -> Response:
        return _json(h.get_model(model_id))

    @r.post("/v1/chat/completions", response_model=P.ChatCompletion, tags=["generation"],
            responses={200: {"content": _SSE}, **gen_errors})
    async def chat(body: P.ChatCompletionRequest, request: Request) -> Response:
        return await _generation(request, h.chat(body))

    @r.post("/v1/completions", response_model=P.Completion, tags=["generation"],
            responses={200: {"content": _SSE}, **gen_errors})
    async def completions(body: P.CompletionRequest, request: Request) -> Response:
        return await _generation(request, h.completion(body))

    @r.post("/v1/embeddings", response_model=P.EmbeddingList, tags=["embeddings"],
            responses=error_responses(400, 401, 404, 413, 431, 503))
    async def embeddings(body: P.EmbeddingRequest) -> Response:
        return _json(await h.embeddings(body))

    @r.post("/v1/feedback", response_model=P.FeedbackAck, tags=["feedback"],
            responses=error_responses(400, 401, 404, 413, 431))
    async def feedback(body: P.FeedbackRequest) -> Response:
        return _json(await h.feedback(body))

    return r
