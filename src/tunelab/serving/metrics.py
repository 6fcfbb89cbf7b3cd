"""Prometheus metrics (GET /metrics) and the request-id / access middleware that feeds them.

Series: requests by route, method and status; request latency; time to first token; generated and prompt
tokens; per-request decode speed (tokens/s); errors by envelope type; queue depth and running requests
(read from the engine when scraped). Each app has its own registry, so tests can build many apps.
"""

from __future__ import annotations

import re
import time
import uuid
from collections.abc import Callable

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from tunelab.serving.engines.base import EngineStats
from tunelab.serving.errors import ERROR_TYPES

__all__ = ["RequestContextMiddleware", "ServingMetrics"]

_LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300)
_TPS_BUCKETS = (1, 2, 5, 10, 20, 50, 100, 200, 500, 1000, 2000)
_REQUEST_ID = re.compile(r"^[A-Za-z0-9._:-]{1,128}$")


class ServingMetrics:
    """The server's Prometheus series on a private registry."""

    def __init__(self, engine_stats: Callable[[], EngineStats | None]):
        r = self.registry = CollectorRegistry()
        self.requests = Counter("tunelab_requests", "HTTP requests answered", ["route", "method", "status"],
                                registry=r)
        self.latency = Histogram("tunelab_request_latency_seconds", "Time to the end of the response", ["route"],
                                 buckets=_LATENCY_BUCKETS, registry=r)
        self.ttft = Histogram("tunelab_time_to_first_token_seconds", "Request start to its first output token",
                              ["model"], buckets=_LATENCY_BUCKETS, registry=r)
        self.generated = Counter("tunelab_generated_tokens", "Output tokens", ["model"], registry=r)
        self.prompt = Counter("tunelab_prompt_tokens", "Prompt tokens", ["model"], registry=r)
        self.tps = Histogram("tunelab_request_tokens_per_second", "Output tokens/s of a request after its first "
                             "token", ["model"], buckets=_TPS_BUCKETS, registry=r)
        self.errors = Counter("tunelab_errors", "Error responses by envelope type", ["type"], registry=r)
        self._stats = engine_stats
        Gauge("tunelab_queue_depth", "Requests waiting for a batch slot", registry=r).set_function(
            lambda: self._read("waiting"))
        Gauge("tunelab_running_requests", "Requests being generated", registry=r).set_function(
            lambda: self._read("running"))

    def _read(self, field: str) -> float:
        stats = self._stats()
        return float(getattr(stats, field)) if stats is not None else 0.0

    def render(self) -> bytes:
        return generate_latest(self.registry)

    def observe_generation(self, model: str, prompt_tokens: int, completion_tokens: int,
                           ttft_s: float | None, decode_s: float | None) -> None:
        self.prompt.labels(model).inc(prompt_tokens)
        self.generated.labels(model).inc(completion_tokens)
        if ttft_s is not None:
            self.ttft.labels(model).observe(ttft_s)
        if decode_s and completion_tokens > 1:
            self.tps.labels(model).observe((completion_tokens - 1) / decode_s)


class RequestContextMiddleware:
    """Gives each request an id (`X-Request-ID`, the client's when well-formed) and records its metrics."""

    def __init__(self, app: ASGIApp, metrics: ServingMetrics):
        self.app, self.metrics = app, metrics

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        given = next((v.decode("latin-1") for k, v in scope["headers"] if k.lower() == b"x-request-id"), "")
        request_id = given if _REQUEST_ID.match(given) else uuid.uuid4().hex
        scope.setdefault("state", {})["request_id"] = request_id
        start, status = time.perf_counter(), 500

        async def send_with_id(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
                message.setdefault("headers", [])
                message["headers"] = [*message["headers"], (b"x-request-id", request_id.encode())]
            await send(message)

        try:
            await self.app(scope, receive, send_with_id)
        finally:
            route = getattr(scope.get("route"), "path", None) or "unmatched"
            self.metrics.requests.labels(route, scope["method"], str(status)).inc()
            self.metrics.latency.labels(route).observe(time.perf_counter() - start)
            if status >= 400:
                self.metrics.errors.labels(ERROR_TYPES.get(status, "server_error")).inc()
