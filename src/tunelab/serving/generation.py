"""Generation plumbing shared by chat and text completions: bounds, submission, collection, streaming.

A `Job` is a validated request: prompts as token ids, how many choices each, sampling parameters, stop
sequences. `run_job` waits for all choices; `stream_job` yields server-sent events as tokens arrive. Both
cancel the engine work of every choice they leave early (stop sequence, client gone, timeout, error).
"""

from __future__ import annotations

import asyncio
import json
import time
import uuid
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field, replace
from typing import Any

from tunelab.config.specs import ServeSpec
from tunelab.serving.catalog import ServedModel
from tunelab.serving.engines.base import (
    Engine,
    EngineOverloaded,
    GenerationRequest,
    GenerationStream,
    SamplingParams,
    TokenEvent,
)
from tunelab.serving.errors import APIError, envelope
from tunelab.serving.text import TextAssembler

__all__ = ["ChoiceResult", "Job", "check_counts", "collect", "resolve_max_tokens", "run_job", "sampling_params", "sse",
           "stream_job", "submit_job"]


@dataclass
class Job:
    """A validated generation request.

    Attributes:
        served: the model.
        prompts: token ids of each prompt (chat: one; text completions: one per prompt).
        n: choices per prompt.
        params: sampling parameters shared by every choice (seeds are offset per choice).
        stop: stop sequences.
        started: perf_counter() when the request arrived (for time to first token).
    """

    served: ServedModel
    prompts: list[list[int]]
    n: int
    params: SamplingParams
    stop: list[str]
    started: float = field(default_factory=time.perf_counter)

    @property
    def prompt_tokens(self) -> int:
        return sum(len(p) for p in self.prompts)


@dataclass
class ChoiceResult:
    index: int
    text: str
    finish_reason: str
    events: list[TokenEvent]
    first_token_at: float | None
    ended_at: float


def resolve_max_tokens(requested: int | None, prompt_tokens: int, served: ServedModel, spec: ServeSpec,
                       param: str) -> int:
    """`max_tokens` bounded by the context left after the prompt and by the server's cap (400 otherwise)."""
    room = served.context_length - prompt_tokens
    limit = spec.max_prompt_tokens or served.context_length - 1
    if prompt_tokens > limit or room < 1:
        raise APIError(400, f"the prompt has {prompt_tokens} tokens; this server takes at most {min(limit, served.context_length - 1)} "
                       f"for '{served.id}' (context {served.context_length})", param=param,
                       code="context_length_exceeded")
    if requested is None:
        return min(spec.default_max_tokens, room)
    if requested > room:
        raise APIError(400, f"max_tokens={requested} does not fit: the prompt has {prompt_tokens} tokens and "
                       f"the context is {served.context_length}, so at most {room} can be generated",
                       param="max_tokens", code="context_length_exceeded")
    if requested > spec.max_tokens:
        raise APIError(400, f"max_tokens={requested} exceeds this server's limit of {spec.max_tokens}",
                       param="max_tokens", code="invalid_value")
    return requested


def _logit_bias(raw: dict[str, float] | None, vocab: int) -> dict[int, float]:
    out: dict[int, float] = {}
    for key, value in (raw or {}).items():
        if not key.isdigit() or int(key) >= vocab:
            raise APIError(400, f"logit_bias key '{key}' is not a token id of this model (0..{vocab - 1})",
                           param="logit_bias", code="invalid_value")
        out[int(key)] = float(value)
    return out


def sampling_params(req: Any, served: ServedModel, max_tokens: int, logprobs: int | None,
                    json_object: bool) -> SamplingParams:
    """Engine parameters from an OpenAI request (defaults: temperature 1, top_p 1, no penalties)."""
    return SamplingParams(
        max_tokens=max_tokens, temperature=1.0 if req.temperature is None else req.temperature,
        top_p=1.0 if req.top_p is None else req.top_p, seed=req.seed,
        presence_penalty=req.presence_penalty or 0.0, frequency_penalty=req.frequency_penalty or 0.0,
        logit_bias=_logit_bias(req.logit_bias, len(served.tokenizer)), logprobs=logprobs, json_object=json_object,
        stop_token_ids=list(served.stop_token_ids),
    )


def check_counts(req: Any, prompts: int, spec: ServeSpec) -> tuple[int, list[str]]:
    """`n` and the stop sequences within the server's caps; returns (n, stop list)."""
    n = req.n or 1
    if n * prompts > spec.max_n:
        raise APIError(400, f"{n * prompts} choices requested (n={n} x {prompts} prompt(s)); this server "
                       f"allows {spec.max_n}", param="n", code="invalid_value")
    stop = [req.stop] if isinstance(req.stop, str) else list(req.stop or [])
    if len(stop) > spec.max_stop:
        raise APIError(400, f"{len(stop)} stop sequences; this server allows {spec.max_stop}", param="stop",
                       code="invalid_value")
    return n, stop


def submit_job(engine: Engine, job: Job) -> list[GenerationStream]:
    """Queue every choice (choice i gets seed + i); 503 with Retry-After when the queue is full."""
    streams: list[GenerationStream] = []
    try:
        for p_index, prompt in enumerate(job.prompts):
            for j in range(job.n):
                i = p_index * job.n + j
                seed = None if job.params.seed is None else job.params.seed + i
                req = GenerationRequest(f"{uuid.uuid4().hex}-{i}", job.served.id, prompt,
                                        replace(job.params, seed=seed))
                streams.append(engine.submit(req))
    except EngineOverloaded as e:
        for s in streams:
            s.cancel()
        raise APIError(503, f"the server is at capacity ({e}); retry shortly", code="overloaded",
                       headers={"Retry-After": "1"}) from None
    return streams


def _end_error(reason: str, message: str | None) -> APIError:
    if reason == "timeout":
        return APIError(503, message or "no batch slot became free in time", code="queue_timeout",
                        headers={"Retry-After": "1"})
    if reason == "cancelled":
        return APIError(503, message or "the request was cancelled", code="cancelled", headers={"Retry-After": "1"})
    return APIError(500, message or "generation failed", type="server_error", code="engine_error")


async def collect(index: int, stream: GenerationStream, assembler: TextAssembler,
                  on_token: Callable[[str, TokenEvent], None] | None = None) -> ChoiceResult:
    """Consume one choice's stream; stops the engine early when a stop sequence ends the text."""
    events: list[TokenEvent] = []
    first = None
    try:
        async for event in stream:
            first = first or time.perf_counter()
            delta = assembler.feed(event.token_id)
            events.append(event)
            if on_token is not None:
                on_token(delta, event)
            if assembler.stopped:
                break
    finally:
        if stream.finish is None:
            stream.cancel()  # stop sequence, client gone, timeout: the engine drops the row at its next step
    if assembler.stopped:
        reason = "stop"
    else:
        reason = stream.finish.reason if stream.finish else "cancelled"
        if reason not in ("stop", "length"):
            raise _end_error(reason, stream.finish.message if stream.finish else None)
    tail = assembler.flush()
    if on_token is not None and tail:
        on_token(tail, None)  # type: ignore[arg-type]
    return ChoiceResult(index, assembler.text, reason, events, first, time.perf_counter())


async def run_job(job: Job, streams: list[GenerationStream], timeout_s: float) -> list[ChoiceResult]:
    """All choices, complete; 504 after `timeout_s` (their engine work is cancelled)."""
    tasks = [asyncio.ensure_future(collect(i, s, TextAssembler(job.served.tokenizer, job.stop)))
             for i, s in enumerate(streams)]
    try:
        return list(await asyncio.wait_for(asyncio.gather(*tasks), timeout_s))
    except asyncio.TimeoutError:
        raise APIError(504, f"generation took longer than {timeout_s:g} s", code="timeout") from None
    finally:
        for t in tasks:
            t.cancel()
        for s in streams:
            s.cancel()


def sse(obj: dict[str, Any]) -> bytes:
    return b"data: " + json.dumps(obj, ensure_ascii=False).encode("utf-8") + b"\n\n"


async def _pump(job: Job, i: int, stream: GenerationStream, queue: asyncio.Queue) -> None:
    """Feed one choice's deltas into the shared queue, then its result (or its APIError)."""
    try:
        result = await collect(i, stream, TextAssembler(job.served.tokenizer, job.stop),
                               lambda delta, event: queue.put_nowait((i, delta, event)))
        queue.put_nowait((i, None, result))
    except APIError as e:
        queue.put_nowait((i, None, e))


async def stream_job(job: Job, streams: list[GenerationStream], timeout_s: float,
                     chunk: Callable[[int, str | None, TokenEvent | None, str | None], dict[str, Any] | None],
                     usage: Callable[[list[ChoiceResult]], dict[str, Any] | None],
                     done: Callable[[list[ChoiceResult]], None]) -> AsyncIterator[bytes]:
    """Server-sent events for every choice as tokens arrive, then the usage chunk (if any) and [DONE].

    `chunk(index, text, event, finish_reason)` builds one event body (None to skip it): (i, None, None,
    None) opens choice i, (i, text, event, None) carries a delta, (i, None, None, reason) closes it.
    `done(results)` runs once all choices finished (metrics, response log). An error ends the stream with
    an error event (the envelope) and no [DONE].
    """
    queue: asyncio.Queue[tuple[int, str | None, Any]] = asyncio.Queue()
    tasks = [asyncio.ensure_future(_pump(job, i, s, queue)) for i, s in enumerate(streams)]
    deadline = time.perf_counter() + timeout_s
    results: list[ChoiceResult] = []
    try:
        for body in (chunk(i, None, None, None) for i in range(len(streams))):
            if body is not None:
                yield sse(body)
        while len(results) < len(streams):
            try:
                i, delta, payload = await asyncio.wait_for(queue.get(), max(deadline - time.perf_counter(), 0))
            except asyncio.TimeoutError:
                payload = APIError(504, f"generation took longer than {timeout_s:g} s", code="timeout")
            if isinstance(payload, APIError):
                yield sse(envelope(payload.message, payload.type, payload.param, payload.code))
                return
            if delta is None:
                results.append(payload)
            body = chunk(i, delta, payload, None) if delta is not None else chunk(i, None, None, payload.finish_reason)
            if body is not None:
                yield sse(body)
        results.sort(key=lambda r: r.index)
        if (body := usage(results)) is not None:
            yield sse(body)
        done(results)
        yield b"data: [DONE]\n\n"
    finally:
        for t in tasks:
            t.cancel()
        for s in streams:
            s.cancel()
