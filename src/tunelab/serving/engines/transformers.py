"""The default engine: Transformers models on this machine, continuous batching with a KV cache.

One scheduler thread owns every model. Each step it

1. fails requests that waited longer than the queue timeout and drops cancelled ones;
2. admits waiting requests (oldest first) while fewer than `batch_size` rows run, prefills them together
   per model (left padding, one forward pass, chunked to bound memory) and merges them into that model's
   running batch (see `kvcache`);
3. runs one decode step for each model's batch (all its rows at once, KV cache reused), picks every row's
   next token with its own sampler, and streams it to the request's asyncio queue;
4. removes finished and cancelled rows from the batch at once.

So requests join and leave between any two decode steps (continuous batching), and a request whose client
went away stops costing compute at the next step. Requests for different adapters of one base run in
separate batches (one per served id, stepped in turn): mixing LoRA weights inside one matmul needs
kernels that Transformers/PEFT do not have on CPU.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import deque
from contextlib import AbstractContextManager, nullcontext
from dataclasses import dataclass, field

import torch

from tunelab.config.specs import ServeSpec
from tunelab.serving.catalog import ModelCatalog, ServedModel
from tunelab.serving.engines.base import (
    EngineOverloaded,
    EngineStats,
    Finish,
    GenerationRequest,
    GenerationStream,
    TokenEvent,
)
from tunelab.serving.engines.kvcache import check_cache, merge_rows, select_rows
from tunelab.serving.engines.sampling import RowSampler

__all__ = ["TransformersEngine", "load_modules"]

log = logging.getLogger("tunelab.serving")


def _glibc():
    """glibc, for malloc_trim; None elsewhere (musl, macOS, Windows)."""
    import ctypes
    import ctypes.util

    name = ctypes.util.find_library("c")
    try:
        libc = ctypes.CDLL(name) if name else None
    except OSError:
        return None
    return libc if libc is not None and hasattr(libc, "malloc_trim") else None

_PREFILL_TOKENS = 8192  # padded prompt tokens per prefill forward pass (bounds activation memory)
_TRIM_EVERY_S = 30.0
_LIBC = _glibc()
_PAD_SLACK = 1.3  # a prefill chunk computes at most 30% padding (prompts of very different lengths split)


@dataclass
class _Loaded:
    """One set of weights in memory and the adapters stacked on it (PEFT names = served ids)."""

    model: torch.nn.Module
    adapters: set[str] = field(default_factory=set)
    vocab_size: int = 0

    def context(self, adapter: str | None) -> AbstractContextManager:
        """Selects what the next forward pass runs: one adapter, or the bare base weights."""
        if not self.adapters:
            return nullcontext()
        if adapter is None:
            return self.model.disable_adapter()
        self.model.set_adapter(adapter)
        return nullcontext()


@dataclass
class _Row:
    stream: GenerationStream
    sampler: RowSampler
    prompt_len: int
    generated: int = 0


@dataclass
class _Waiting:
    stream: GenerationStream
    since: float


@dataclass
class _Batch:
    """The running rows of one served id: tokens right-aligned in a shared KV cache."""

    served: ServedModel
    rows: list[_Row]
    cache: object
    mask: torch.Tensor  # (B, T) 1 for real tokens
    next_ids: torch.Tensor  # (B, 1) the token each row feeds next
    positions: torch.Tensor  # (B, 1) its position in that row's own sequence


def resolve_dtype(spec: ServeSpec, device: str) -> torch.dtype:
    from tunelab.models import resolve_precision

    precision = spec.dtype if spec.dtype != "auto" else resolve_precision("auto", device)
    return torch.bfloat16 if precision == "bf16" else torch.float32


def _bottleneck_model(base: torch.nn.Module, adapters: list[ServedModel]) -> torch.nn.Module | None:
    """The base with its one bottleneck adapter (tunelab's own format) attached; None when none is a bottleneck.

    The adapter hooks into the base's blocks; `BottleneckModel` offers PEFT's `set_adapter`/`disable_adapter`,
    so base and adapter rows share it, but it cannot sit beside other adapters of the same base.
    """
    from tunelab.errors import TunelabError
    from tunelab.methods.bottleneck import is_bottleneck_dir, load_bottleneck

    bottleneck = [a for a in adapters if is_bottleneck_dir(a.adapter_dir)]
    if not bottleneck:
        return None
    a = bottleneck[0]
    if len(adapters) > 1:
        raise TunelabError(f"adapter '{a.id}' uses method 'bottleneck', which is served only as the one adapter "
                           "on its base (its hooks cannot be switched per request between adapters)",
                           where=f"--adapter {a.id}={a.adapter_dir.parent}",
                           fix=f"serve it alone (`tunelab serve {a.adapter_dir.parent}`), or train LoRA-family adapters")
    model = load_bottleneck(base, a.adapter_dir)
    model.adapter_name = a.id
    return model


def load_modules(catalog: ModelCatalog, dtype: torch.dtype, device: str) -> dict[str, _Loaded]:
    """Load each distinct set of weights once and stack the adapters on it. Keys are `ServedModel.weights`.

    Raises:
        TunelabError: a bottleneck adapter beside other adapters of the same base.
    """
    from tunelab.models import load_causal_lm

    loaded: dict[str, _Loaded] = {}
    for m in catalog.models.values():
        if m.kind != "chat" or m.weights in loaded:
            continue
        base = load_causal_lm(m.weights, m.trust_remote_code, dtype).to(device)
        adapters = [a for a in catalog.models.values() if a.weights == m.weights and a.adapter_dir is not None]
        bottleneck = _bottleneck_model(base, adapters) if adapters else None
        if bottleneck is not None:
            base = bottleneck
        elif adapters:
            from peft import PeftModel

            base = PeftModel.from_pretrained(base, adapters[0].adapter_dir, adapter_name=adapters[0].id)
            for a in adapters[1:]:
                base.load_adapter(a.adapter_dir, adapter_name=a.id)
            base.eval()
        vocab = base.get_output_embeddings().weight.shape[0]
        loaded[m.weights] = _Loaded(base, {a.id for a in adapters}, vocab)
    return loaded


class TransformersEngine:
    """Continuous batching over Transformers models (CPU by default, CUDA when present).

    Args:
        catalog: the served models.
        spec: server settings (batch_size, queue_size, queue_timeout_s, dtype, threads).
        modules: already loaded weights (tests); loaded in `start()` when None.
    """

    name = "transformers"

    def __init__(self, catalog: ModelCatalog, spec: ServeSpec, modules: dict[str, _Loaded] | None = None):
        from tunelab.models import resolve_device

        self.catalog, self.spec = catalog, spec
        self.device = resolve_device("auto")
        self.modules = modules
        self._waiting: deque[_Waiting] = deque()
        self._batches: dict[str, _Batch] = {}
        self._cv = threading.Condition()
        self._thread: threading.Thread | None = None
        self._stopping = False
        self._running_rows = 0
        self._trimmed = time.monotonic()
        self._counters = {"generated": 0, "finished": 0, "cancelled": 0, "steps": 0, "step_rows": 0}

    # ------------------------------------------------------------------------------ lifecycle (loop side)
    async def start(self) -> None:
        import asyncio

        if self.modules is None:
            self.modules = await asyncio.to_thread(self._load)
        self._thread = threading.Thread(target=self._loop, name="tunelab-engine", daemon=True)
        self._thread.start()

    def _load(self) -> dict[str, _Loaded]:
        if self.spec.threads:
            torch.set_num_threads(self.spec.threads)
        return load_modules(self.catalog, resolve_dtype(self.spec, self.device), self.device)

    async def stop(self) -> None:
        import asyncio

        with self._cv:
            self._stopping = True
            self._cv.notify_all()
        if self._thread is not None:
            await asyncio.to_thread(self._thread.join, 30)

    def ready(self) -> bool:
        return self._thread is not None and self._thread.is_alive() and not self._stopping

    def submit(self, request: GenerationRequest) -> GenerationStream:
        stream = GenerationStream(request)
        with self._cv:
            free = self.spec.batch_size - self._running_rows
            if self._stopping or len(self._waiting) >= self.spec.queue_size + max(free, 0):
                raise EngineOverloaded(f"{len(self._waiting)} requests are waiting")
            self._waiting.append(_Waiting(stream, time.monotonic()))
            self._cv.notify()
        return stream

    def stats(self) -> EngineStats:
        c = self._counters
        running = {r.stream.request.request_id: r.generated for b in list(self._batches.values())
                   for r in list(b.rows)}
        return EngineStats(self.name, len(self._waiting), len(running), c["generated"], c["finished"],
                           c["cancelled"], c["steps"], c["step_rows"] / max(c["steps"], 1), running,
                           {"device": self.device, "batch_size": self.spec.batch_size,
                            "batches": {k: len(b.rows) for k, b in list(self._batches.items())}})

    # ------------------------------------------------------------------------------ scheduler thread
    def _loop(self) -> None:
        if self.spec.threads:  # OpenMP thread counts are per calling thread: set it where the forwards run
            torch.set_num_threads(self.spec.threads)
        with torch.inference_mode():
            while True:
                with self._cv:
                    if self._stopping:
                        break
                    if not self._waiting and not self._batches:
                        self._cv.wait(timeout=0.5)
                        continue
                admitted = self._take_waiting()
                self._prefill_all(admitted)
                for key in list(self._batches):
                    self._guarded(key, self._decode)
                self._running_rows = sum(len(b.rows) for b in self._batches.values())
                self._trim_memory()
        self._fail_everything()

    def _trim_memory(self) -> None:
        # KV caches of ever-changing shapes fragment glibc's heap, and freed pages stay in the process:
        # handing them back every 30 s kept RSS ~100 MB lower in a concurrency-16 run on the default model.
        now = time.monotonic()
        if _LIBC is not None and now - self._trimmed > _TRIM_EVERY_S:
            _LIBC.malloc_trim(0)
            self._trimmed = now

    def _fail_everything(self) -> None:
        for b in self._batches.values():
            for r in b.rows:
                r.stream.push(Finish("cancelled", "the server is shutting down"))
        with self._cv:
            for w in self._waiting:
                w.stream.push(Finish("cancelled", "the server is shutting down"))
            self._waiting.clear()

    def _take_waiting(self) -> list[GenerationStream]:
        """Pop admissible requests (oldest first); finish expired and cancelled ones on the way."""
        now, out = time.monotonic(), []
        with self._cv:
            free = self.spec.batch_size - sum(len(b.rows) for b in self._batches.values())
            kept: deque[_Waiting] = deque()
            for w in self._waiting:
                if w.stream.cancelled:
                    self._counters["cancelled"] += 1
                    w.stream.push(Finish("cancelled"))
                elif len(out) < free:
                    out.append(w.stream)
                elif now - w.since > self.spec.queue_timeout_s:
                    w.stream.push(Finish("timeout", f"no batch slot within {self.spec.queue_timeout_s:g} s"))
                else:
                    kept.append(w)
            self._waiting = kept
        return out

    def _guarded(self, key: str, fn, *args) -> None:
        """Run one batch operation; an exception fails that batch's requests, never the engine."""
        try:
            fn(key, *args)
        except Exception as e:  # noqa: BLE001 - reported to each affected client, logged with its traceback
            log.exception("engine step failed for %s", key)
            batch = self._batches.pop(key, None)
            for r in batch.rows if batch else []:
                r.stream.push(Finish("error", f"generation failed: {type(e).__name__}: {e}"))

    def _prefill_all(self, streams: list[GenerationStream]) -> None:
        by_model: dict[str, list[GenerationStream]] = {}
        for s in streams:
            by_model.setdefault(s.request.model, []).append(s)
        for key, group in by_model.items():
            group.sort(key=lambda s: len(s.request.prompt_ids))  # similar lengths pad less
            for chunk in _chunks(group, _PREFILL_TOKENS):
                try:
                    self._prefill(key, chunk)
                except Exception as e:  # noqa: BLE001 - fail these requests, keep the engine alive
                    log.exception("prefill failed for %s", key)
                    for s in chunk:
                        s.push(Finish("error", f"generation failed: {type(e).__name__}: {e}"))

    def _forward(self, served: ServedModel, **inputs) -> torch.Tensor:
        loaded = self.modules[served.weights]
        with loaded.context(served.id if served.adapter_dir is not None else None):
            out = loaded.model(**inputs, use_cache=True, logits_to_keep=1)
        return out.logits[:, -1, :].float()  # (B, V)

    def _prefill(self, key: str, streams: list[GenerationStream]) -> None:
        from transformers import DynamicCache

        served = self.catalog.models[key]
        width = max(len(s.request.prompt_ids) for s in streams)
        ids = torch.zeros(len(streams), width, dtype=torch.long)
        mask = torch.zeros(len(streams), width, dtype=torch.long)
        for i, s in enumerate(streams):
            p = s.request.prompt_ids
            ids[i, width - len(p):] = torch.tensor(p)
            mask[i, width - len(p):] = 1
        ids, mask = ids.to(self.device), mask.to(self.device)
        cache = DynamicCache()
        logits = self._forward(served, input_ids=ids, attention_mask=mask,
                               position_ids=(mask.cumsum(-1) - 1).clamp(min=0), past_key_values=cache)
        check_cache(cache)
        vocab = self.modules[served.weights].vocab_size
        rows = [_Row(s, RowSampler(s.request.params, vocab, served.json_vocab(vocab) if
                                   s.request.params.json_object else None), len(s.request.prompt_ids))
                for s in streams]
        # Each row's first generated token sits at position len(prompt) of its own sequence.
        positions = torch.tensor([[r.prompt_len] for r in rows], device=self.device)
        new = _Batch(served, rows, cache, mask, ids[:, -1:], positions)
        if not self._step_rows(new, logits):
            return
        old = self._batches.get(key)
        if old is None:
            self._batches[key] = new
            return
        old.mask = merge_rows(old.cache, old.mask, new.cache, new.mask)
        old.rows += new.rows
        old.next_ids = torch.cat([old.next_ids, new.next_ids])
        old.positions = torch.cat([old.positions, new.positions])

    def _decode(self, key: str) -> None:
        b = self._batches[key]
        gone = [i for i, r in enumerate(b.rows) if r.stream.cancelled]
        if gone:
            for i in gone:
                b.rows[i].stream.push(Finish("cancelled"))
            self._counters["cancelled"] += len(gone)
            keep = [i for i in range(len(b.rows)) if i not in set(gone)]
            if not keep:
                del self._batches[key]
                return
            b.next_ids = b.next_ids[keep]
            _select(b, keep)
        b.mask = torch.cat([b.mask, torch.ones(len(b.rows), 1, dtype=b.mask.dtype, device=b.mask.device)], 1)
        logits = self._forward(b.served, input_ids=b.next_ids, attention_mask=b.mask, position_ids=b.positions,
                               past_key_values=b.cache)
        b.positions = b.positions + 1
        self._counters["steps"] += 1
        self._counters["step_rows"] += len(b.rows)
        if not self._step_rows(b, logits):
            del self._batches[key]

    def _step_rows(self, b: _Batch, logits: torch.Tensor) -> bool:
        """Choose, stream and record each row's next token; drop finished rows. False when none is left."""
        greedy = logits.argmax(dim=-1).tolist()  # (B,) shared by all plain-greedy rows
        keep, next_ids = [], []
        for i, row in enumerate(b.rows):
            token = self._advance(row, row.sampler.choose(logits[i], greedy[i]))
            if token is not None:
                keep.append(i)
                next_ids.append(token)
        if not keep:
            return False
        b.next_ids = torch.tensor(next_ids, dtype=torch.long, device=logits.device).view(-1, 1)
        if len(keep) < len(b.rows):
            _select(b, keep)
        return True

    def _advance(self, row: _Row, event: TokenEvent | None) -> int | None:
        """Stream one token (or the finish); returns the token to feed next, or None when the row ended."""
        p = row.sampler.params
        finish = None
        if event is None:
            finish = Finish("error", "no token can continue the JSON object")
        elif event.token_id in row.sampler.stop_ids and not p.ignore_eos:
            finish = Finish("stop")  # the stop token itself is not part of the answer
        else:
            row.stream.push(event)
            row.generated += 1
            self._counters["generated"] += 1
            if row.sampler.json is not None and row.sampler.json.done:
                finish = Finish("stop")
            elif row.generated >= p.max_tokens:
                finish = Finish("length")
        if finish is None:
            return event.token_id  # type: ignore[union-attr]
        row.stream.push(finish)
        self._counters["finished"] += 1
        return None


def _select(b: _Batch, keep: list[int]) -> None:
    """Keep rows `keep` of a batch (cache, mask, rows, positions; next_ids is the caller's)."""
    b.mask = select_rows(b.cache, b.mask, keep)
    b.rows = [b.rows[i] for i in keep]
    b.positions = b.positions[keep]


def _chunks(streams: list[GenerationStream], budget: int) -> list[list[GenerationStream]]:
    """Consecutive groups of similar length: padded size (rows x longest prompt) within `budget` tokens and
    at most `_PAD_SLACK` times the real tokens, so a long prompt does not make short ones compute padding."""
    out: list[list[GenerationStream]] = []
    cur: list[GenerationStream] = []
    real = 0
    for s in streams:  # sorted by length, so the newest one is the longest
        n = len(s.request.prompt_ids)
        padded = (len(cur) + 1) * n
        if cur and (padded > budget or padded > _PAD_SLACK * (real + n)):
            out.append(cur)
            cur, real = [], 0
        cur.append(s)
        real += n
    return [*out, cur] if cur else out
