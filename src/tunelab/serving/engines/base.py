"""The engine Protocol: what handlers need from a generation backend, and the records they exchange.

Handlers render and tokenize prompts, then `submit` token ids with sampling parameters; the engine
streams back one `TokenEvent` per generated token and ends the stream with a finish reason. Text,
stop sequences and the HTTP shapes stay in the handlers, so every engine behaves the same at the API.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any, Literal, Protocol, runtime_checkable

__all__ = [
    "Engine", "EngineError", "EngineOverloaded", "EngineStats", "Finish", "GenerationRequest",
    "GenerationStream", "SamplingParams", "TokenEvent",
]

FinishReason = Literal["stop", "length", "cancelled", "timeout", "error"]


class EngineOverloaded(Exception):
    """The waiting queue is full: answer 503 with Retry-After."""


class EngineError(Exception):
    """The engine failed a request (e.g. out of memory); the message is safe to show."""


@dataclass
class SamplingParams:
    """Per-request decoding settings (OpenAI semantics).

    Attributes:
        max_tokens: generate at most this many tokens.
        temperature: 0 is greedy; otherwise logits are divided by it before sampling.
        top_p: nucleus sampling mass (1 keeps the whole distribution).
        seed: seeds this request's own generator; None draws a random seed.
        presence_penalty: subtracted once from the logit of every token already generated.
        frequency_penalty: subtracted per occurrence of a token already generated.
        logit_bias: token id -> value added to its logit.
        logprobs: None for none; k >= 0 returns the chosen token's log-probability and the top k.
        json_object: constrain the output to one JSON object (see `tunelab.serving.engines.jsonmode`).
        stop_token_ids: tokens that end generation (EOS and the template's end-of-turn token).
        ignore_eos: keep generating through stop tokens (benchmarks with a fixed output length).
    """

    max_tokens: int
    temperature: float = 1.0
    top_p: float = 1.0
    seed: int | None = None
    presence_penalty: float = 0.0
    frequency_penalty: float = 0.0
    logit_bias: dict[int, float] = field(default_factory=dict)
    logprobs: int | None = None
    json_object: bool = False
    stop_token_ids: list[int] = field(default_factory=list)
    ignore_eos: bool = False


@dataclass
class GenerationRequest:
    """One sequence to generate: a served model id, the prompt's token ids and its sampling settings."""

    request_id: str
    model: str
    prompt_ids: list[int]
    params: SamplingParams


@dataclass
class TokenEvent:
    """One generated token; logprobs are log-softmax of the model's raw logits (before temperature etc.)."""

    token_id: int
    logprob: float | None = None
    top_logprobs: list[tuple[int, float]] | None = None


@dataclass
class Finish:
    """The end of a stream: why it ended, and a message when it failed."""

    reason: FinishReason
    message: str | None = None


@dataclass
class EngineStats:
    """A snapshot for /stats and /metrics: queue depth, running rows, and per-request token counts."""

    engine: str
    waiting: int
    running: int
    generated_tokens: int
    finished_requests: int
    cancelled_requests: int
    decode_steps: int
    mean_batch_rows: float
    running_tokens: dict[str, int] = field(default_factory=dict)
    extra: dict[str, Any] = field(default_factory=dict)


class GenerationStream:
    """The consumer side of one request: iterate `TokenEvent`s; `finish` is set when the stream ends.

    The producer (an engine thread or task) calls `push`/`close` through the event loop; `cancel` tells the
    engine to stop work for this request at its next step.
    """

    def __init__(self, request: GenerationRequest, loop: asyncio.AbstractEventLoop | None = None):
        self.request = request
        self.loop = loop or asyncio.get_running_loop()
        self.queue: asyncio.Queue[TokenEvent | Finish] = asyncio.Queue()
        self.finish: Finish | None = None
        self.cancelled = False  # read by the engine thread; a bool store is atomic under the GIL
        self.on_cancel: Any = None  # optional engine callback (e.g. vLLM abort)

    # producer side (thread-safe) ------------------------------------------------------------------
    def push(self, item: TokenEvent | Finish) -> None:
        """Deliver an event from any thread; dropped silently when the loop has already closed."""
        with contextlib.suppress(RuntimeError):  # loop closed during shutdown: nobody listens any more
            self.loop.call_soon_threadsafe(self.queue.put_nowait, item)

    # consumer side --------------------------------------------------------------------------------
    def cancel(self) -> None:
        """Ask the engine to stop generating for this request (client gone, stop sequence, timeout)."""
        if not self.cancelled:
            self.cancelled = True
            if self.on_cancel is not None:
                self.on_cancel()

    async def __aiter__(self) -> AsyncIterator[TokenEvent]:
        while True:
            item = await self.queue.get()
            if isinstance(item, Finish):
                self.finish = item
                return
            yield item


@runtime_checkable
class Engine(Protocol):
    """A generation backend. Implementations: `TransformersEngine` (default), `VLLMEngine` (CUDA)."""

    name: str

    async def start(self) -> None:
        """Load weights and start background work; `ready()` is True afterwards."""
        ...

    async def stop(self) -> None:
        """Cancel everything in flight and release resources."""
        ...

    def ready(self) -> bool:
        """True once requests can be served."""
        ...

    def submit(self, request: GenerationRequest) -> GenerationStream:
        """Queue a request; raises `EngineOverloaded` when the waiting queue is full."""
        ...

    def stats(self) -> EngineStats:
        """Current counters (cheap; called by /metrics and /stats)."""
        ...
