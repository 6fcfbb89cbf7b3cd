"""Operations: graceful shutdown under load on a real `tunelab serve` process, overload answered 503 with
Retry-After by the real engine, and the drain state (503 + Connection: close, /ready down, /health up)."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import socket
import threading
import time

import httpx2 as httpx
from serving_helpers import AUTH, start_server
from test_handlers import CHAT, assert_envelope

SHUTTING_DOWN = "the server is shutting down"


def stream_until_end(url: str, body: dict, started: threading.Event, out: dict, name: str) -> None:
    """Stream a chat completion; record the last event (or the transport error)."""
    events = []
    try:
        with httpx.stream("POST", f"{url}/v1/chat/completions", headers=AUTH, json={**body, "stream": True},
                          timeout=120) as r:
            for line in r.iter_lines():
                if line.startswith("data: "):
                    events.append(line[6:])
                    if len(events) >= 3:
                        started.set()
        out[name] = ("stream", r.status_code, events[-1] if events else None, len(events))
    except httpx.HTTPError as e:  # a cut connection: exactly what a graceful shutdown must not do
        out[name] = ("transport", repr(e))
    finally:
        started.set()


def plain_request(url: str, body: dict, out: dict, name: str) -> None:
    try:
        r = httpx.post(f"{url}/v1/chat/completions", headers=AUTH, json=body, timeout=120)
        out[name] = ("plain", r.status_code, r.json(), r.headers.get("retry-after"))
    except httpx.HTTPError as e:
        out[name] = ("transport", repr(e))


def running_rows(url: str) -> int:
    return httpx.get(f"{url}/stats", headers=AUTH, timeout=10).json()["running"]


def wait_for(predicate, what: str, timeout: float = 120.0) -> None:
    """Poll until `predicate()`; the timeout only guards against a hang (it is not a performance bound)."""
    end = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > end:
            raise AssertionError(f"gave up waiting for {what}")
        time.sleep(0.05)


def refuses_connections(url: str) -> bool:
    host, port = url.rsplit("/", 1)[-1].split(":")
    with socket.socket() as s:
        s.settimeout(2)
        return s.connect_ex((host, int(port))) != 0


def clean_end(outcome: tuple) -> str:
    """'finished' or 'cancelled' for a clean ending; fails on anything else."""
    assert outcome[0] != "transport", outcome
    if outcome[0] == "stream":
        _, status, last, count = outcome
        assert status == 200 and count >= 3, outcome
        if last == "[DONE]":
            return "finished"
        err = json.loads(last)["error"]
        assert err["code"] == "cancelled" and err["message"] == SHUTTING_DOWN, outcome
        return "cancelled"
    _, status, body, retry_after = outcome
    if status == 200:
        return "finished"
    assert status == 503 and body["error"]["code"] == "cancelled" and retry_after, outcome
    return "cancelled"


def test_graceful_shutdown_under_load(tiny_model_dir, tmp_path):
    proc, url = start_server([str(tiny_model_dir), "batch_size=4", "queue_size=0", "max_tokens=1000",
                              "shutdown_grace_s=0.5", "dtype=fp32"], tmp_path)
    try:
        model = httpx.get(f"{url}/v1/models", headers=AUTH, timeout=10).json()["data"][0]["id"]
        # Each request could run ~990 more tokens: far more than the 0.5 s grace period allows.
        body = {"model": model, "messages": CHAT["messages"], "max_tokens": 990, "temperature": 1.0}
        out: dict = {}
        events = [threading.Event() for _ in range(3)]
        threads = [threading.Thread(target=stream_until_end, args=(url, body, e, out, f"s{i}"))
                   for i, e in enumerate(events)]
        threads.append(threading.Thread(target=plain_request, args=(url, body, out, "plain")))
        for t in threads:
            t.start()
        wait_for(lambda: all(e.is_set() for e in events) and running_rows(url) == 4, "4 requests generating")
        busy = httpx.post(f"{url}/v1/chat/completions", headers=AUTH, json=body, timeout=30)
        proc.send_signal(signal.SIGTERM)
        wait_for(lambda: refuses_connections(url), "the listening socket to close")
        for t in threads:
            t.join(timeout=120)
        code = proc.wait(timeout=120)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert assert_envelope(busy, 503)["code"] == "overloaded" and busy.headers["retry-after"] == "1"
    assert busy.headers["x-request-id"]
    ends = [clean_end(out[name]) for name in ("s0", "s1", "s2", "plain")]
    assert "cancelled" in ends  # the grace period ended them, with an error event or a 503, not a cut
    assert code == 0, (tmp_path / "state", proc.log_path.read_text()[-2000:])  # type: ignore[attr-defined]
    log = proc.log_path.read_text()  # type: ignore[attr-defined]
    assert "grace period over" in log and "Traceback" not in log


def test_draining_refuses_new_work_but_stays_alive(fake_app):
    client, engine, _ = fake_app()
    with client:
        assert client.get("/ready", headers=AUTH).status_code == 200
        client.portal.call(client.app.state.drain.begin)  # what SIGTERM does under uvicorn
        chat = client.post("/v1/chat/completions", headers=AUTH, json=CHAT)
        ready = client.get("/ready", headers=AUTH)
        health = client.get("/health")
    err = assert_envelope(chat, 503)
    assert err["code"] == "shutting_down" and chat.headers["retry-after"] == "5"
    assert chat.headers["connection"] == "close"
    assert assert_envelope(ready, 503)["code"] == "shutting_down"  # load balancers stop sending work
    assert health.status_code == 200  # liveness holds: the process is not stuck, just leaving
    assert engine.requests == []


def test_drain_deadline_and_signal_chain():
    from tunelab.serving.lifecycle import Drain

    calls: list[str] = []

    async def on_deadline() -> None:
        calls.append("deadline")

    def previous(signum, frame) -> None:  # stands for uvicorn's own handler
        calls.append(f"previous {signum}")

    async def scenario() -> Drain:
        drain = Drain(0.01, on_deadline)
        undo = drain.hook_signals(asyncio.get_running_loop())
        os.kill(os.getpid(), signal.SIGTERM)
        for _ in range(100):
            await asyncio.sleep(0)
            if drain.draining:
                break
        drain.begin()  # a second signal changes nothing
        await drain._task  # type: ignore[misc]
        undo()
        assert signal.getsignal(signal.SIGTERM) is previous
        return drain

    original = signal.signal(signal.SIGTERM, previous)
    try:
        drain = asyncio.run(scenario())
    finally:
        signal.signal(signal.SIGTERM, original)
    assert drain.draining and calls == [f"previous {int(signal.SIGTERM)}", "deadline"]


def test_drain_closed_before_the_deadline_cancels_nothing():
    from tunelab.serving.lifecycle import Drain

    calls = []

    async def on_deadline() -> None:
        calls.append("deadline")

    async def scenario() -> None:
        drain = Drain(3600, on_deadline)
        drain.begin()
        await drain.close()  # everything finished early: the lifespan ends the timer

    asyncio.run(scenario())
    assert calls == []
