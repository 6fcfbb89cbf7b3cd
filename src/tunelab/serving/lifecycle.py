"""Graceful shutdown and slow-client timeouts.

On SIGTERM (or Ctrl+C) uvicorn closes the listening socket at once, so new connections are refused, then
waits for open connections. `Drain` starts at the same signal: requests that reach the app afterwards
(on a kept-alive connection) get 503 with Retry-After and ``Connection: close``, /ready turns 503 (so a
load balancer stops sending work), /health stays 200 (so nobody kills the process mid-drain), and after
`grace_s` the engine is stopped, which ends every request still generating with a clean error (503 for a
plain response, an error event for a stream) instead of a cut connection. The process then exits 0.

uvicorn owns the signal handlers, so the app chains its own in front of them during the lifespan (main
thread only; under a test client the drain is started by calling `Drain.begin`).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal
import threading
import time
from collections.abc import Awaitable, Callable

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from tunelab.serving.errors import APIError, error_response

__all__ = ["Drain", "DrainMiddleware", "ReadTimeoutMiddleware", "exit_zero_on_sigterm"]

log = logging.getLogger("tunelab.serving")
_SIGNALS = (signal.SIGTERM, signal.SIGINT)


class Drain:
    """The shutdown state: `begin()` once, then `on_deadline` runs after `grace_s` (unless closed first).

    Args:
        grace_s: how long requests in flight may run after the signal.
        on_deadline: what ends them (the app stops the engine).
    """

    def __init__(self, grace_s: float, on_deadline: Callable[[], Awaitable[None]]):
        self.grace_s, self.on_deadline = grace_s, on_deadline
        self.draining = False
        self.deadline: float | None = None
        self._task: asyncio.Task | None = None

    def begin(self) -> None:
        """Start draining (idempotent; call on the event loop)."""
        if self.draining:
            return
        self.draining, self.deadline = True, time.monotonic() + self.grace_s
        log.info("shutting down: refusing new requests, %g s for those in flight", self.grace_s)
        self._task = asyncio.get_running_loop().create_task(self._expire())

    async def _expire(self) -> None:
        await asyncio.sleep(self.grace_s)
        log.warning("grace period over: cancelling the requests still running")
        await self.on_deadline()

    async def close(self) -> None:
        if self._task is not None and not self._task.done():
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task

    def hook_signals(self, loop: asyncio.AbstractEventLoop) -> Callable[[], None]:
        """Chain `begin` in front of the current SIGTERM/SIGINT handlers; returns the undo function."""
        if threading.current_thread() is not threading.main_thread():
            return lambda: None
        installed: dict[int, tuple[object, object]] = {}
        for sig in _SIGNALS:
            previous = signal.getsignal(sig)
            if not callable(previous):  # default or ignored: no server loop to hand the signal on to
                continue

            def handler(signum, frame, previous=previous):
                loop.call_soon_threadsafe(self.begin)
                previous(signum, frame)

            signal.signal(sig, handler)
            installed[sig] = (handler, previous)

        def undo() -> None:
            for sig, (handler, previous) in installed.items():
                if signal.getsignal(sig) is handler:
                    signal.signal(sig, previous)  # type: ignore[arg-type]

        return undo


class DrainMiddleware:
    """503 + Retry-After + Connection: close for requests that arrive while draining (but /health)."""

    def __init__(self, app: ASGIApp, drain: Drain, live_paths: list[str]):
        self.app, self.drain, self.live = app, drain, set(live_paths)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http" and self.drain.draining and scope["path"] not in self.live:
            err = APIError(503, "the server is shutting down; retry on another replica", code="shutting_down",
                           headers={"Retry-After": "5", "Connection": "close"})
            await error_response(err)(scope, receive, send)
            return
        await self.app(scope, receive, send)


class _SlowBody(Exception):
    pass


class ReadTimeoutMiddleware:
    """408 when the request body has not fully arrived `timeout_s` after the request started.

    A client that trickles its body would otherwise hold a connection (and the body buffer) forever. After
    the body is complete, `receive` is left alone: routes wait on it to notice a client disconnect.
    """

    def __init__(self, app: ASGIApp, timeout_s: float):
        self.app, self.timeout_s = app, timeout_s

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        deadline, complete, started = time.monotonic() + self.timeout_s, False, False

        async def timed_receive() -> Message:
            nonlocal complete
            if complete:
                return await receive()
            try:
                message = await asyncio.wait_for(receive(), max(deadline - time.monotonic(), 0.0))
            except asyncio.TimeoutError:
                raise _SlowBody from None
            complete = message["type"] != "http.request" or not message.get("more_body", False)
            return message

        async def track_send(message: Message) -> None:
            nonlocal started
            started = started or message["type"] == "http.response.start"
            await send(message)

        try:
            await self.app(scope, timed_receive, track_send)
        except _SlowBody:
            if started:
                raise
            await error_response(APIError(408, f"the request body did not arrive within {self.timeout_s:g} s",
                                          code="body_timeout", headers={"Connection": "close"}))(scope, receive, send)


def exit_zero_on_sigterm() -> None:
    """Make SIGTERM end the process with status 0.

    uvicorn re-raises the signal it shut down for once it has restored the previous handler; with
    Python's default that kills the process (status -15), which orchestrators read as a crash.
    """
    def handler(signum, frame):
        raise SystemExit(0)

    signal.signal(signal.SIGTERM, handler)
