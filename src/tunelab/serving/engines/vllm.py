"""The vLLM engine (CUDA GPUs): the same API, vLLM's paged attention and continuous batching underneath.

Imported only when `serve.engine=vllm`; needs `pip install vllm` and a CUDA GPU. Adapters are served with
vLLM's multi-LoRA (`LoRARequest` per adapter id), so unlike the Transformers engine, requests for different
adapters share one batch. JSON mode uses vLLM's guided decoding (`json_object`). Prompts arrive as token
ids rendered by the same handlers, so chat templates and stop tokens are the training-time ones.
"""

from __future__ import annotations

import asyncio
import logging

from tunelab.config.specs import ServeSpec
from tunelab.errors import TunelabError
from tunelab.serving.catalog import ModelCatalog
from tunelab.serving.engines.base import (
    EngineOverloaded,
    EngineStats,
    Finish,
    GenerationRequest,
    GenerationStream,
    SamplingParams,
    TokenEvent,
)

__all__ = ["VLLMEngine", "require_vllm"]

log = logging.getLogger("tunelab.serving")


def require_vllm():
    """The vllm module, or a TunelabError naming what to install / which hardware is needed."""
    try:
        import vllm
    except ImportError as e:
        raise TunelabError("serve.engine=vllm needs the vllm package", where="serve.engine",
                           fix="pip install vllm (CUDA GPU required), or use serve.engine=transformers") from e
    import torch

    if not torch.cuda.is_available():
        raise TunelabError("serve.engine=vllm needs a CUDA GPU, and none is visible", where="serve.engine",
                           fix="use serve.engine=transformers on this machine")
    return vllm


def _vllm_sampling(vllm, p: SamplingParams):
    kwargs = dict(n=1, max_tokens=p.max_tokens, temperature=p.temperature, top_p=p.top_p if p.top_p > 0 else 1e-6,
                  seed=None if p.seed is None else p.seed % (1 << 63), presence_penalty=p.presence_penalty,
                  frequency_penalty=p.frequency_penalty, logit_bias=p.logit_bias or None,
                  logprobs=p.logprobs, stop_token_ids=p.stop_token_ids, ignore_eos=p.ignore_eos,
                  skip_special_tokens=True, detokenize=False)
    if p.json_object:
        from vllm.sampling_params import GuidedDecodingParams

        kwargs["guided_decoding"] = GuidedDecodingParams(json_object=True)
    return vllm.SamplingParams(**kwargs)


class VLLMEngine:
    """vLLM's AsyncLLMEngine behind the `Engine` Protocol (one base model, its adapters as LoRA requests)."""

    name = "vllm"

    def __init__(self, catalog: ModelCatalog, spec: ServeSpec):
        self.vllm = require_vllm()
        self.catalog, self.spec = catalog, spec
        bases = {m.weights for m in catalog.models.values() if m.kind == "chat"}
        if len(bases) != 1:
            raise TunelabError("the vLLM engine serves one base model (with any number of adapters)",
                               where="serve.model", fix="serve one model or run one server per base")
        self.base = bases.pop()
        self.loras = {m.id: i + 1 for i, m in enumerate(m for m in catalog.models.values() if m.adapter_dir)}
        self.engine = None
        self._waiting = 0
        self._running: dict[str, int] = {}
        self._counters = {"generated": 0, "finished": 0, "cancelled": 0}
        self._tasks: set[asyncio.Task] = set()

    async def start(self) -> None:
        from tunelab.models import resolve_model

        v = self.vllm
        args = v.AsyncEngineArgs(model=str(resolve_model(self.base).path), enable_lora=bool(self.loras),
                                 max_loras=max(len(self.loras), 1), max_num_seqs=self.spec.batch_size,
                                 dtype="auto" if self.spec.dtype == "auto" else {"bf16": "bfloat16",
                                                                                  "fp32": "float32"}[self.spec.dtype])
        self.engine = v.AsyncLLMEngine.from_engine_args(args)

    async def stop(self) -> None:
        for t in list(self._tasks):
            t.cancel()
        if self.engine is not None and hasattr(self.engine, "shutdown"):
            self.engine.shutdown()

    def ready(self) -> bool:
        return self.engine is not None

    def submit(self, request: GenerationRequest) -> GenerationStream:
        if self._waiting + len(self._running) >= self.spec.queue_size + self.spec.batch_size:
            raise EngineOverloaded(f"{self._waiting} requests are waiting")
        stream = GenerationStream(request)
        stream.on_cancel = lambda: asyncio.ensure_future(self.engine.abort(request.request_id))
        task = asyncio.ensure_future(self._run(stream))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        return stream

    def _lora(self, model_id: str):
        from vllm.lora.request import LoRARequest

        served = self.catalog.models[model_id]
        if served.adapter_dir is None:
            return None
        return LoRARequest(model_id, self.loras[model_id], str(served.adapter_dir))

    async def _run(self, stream: GenerationStream) -> None:
        req = stream.request
        prompt = self.vllm.TokensPrompt(prompt_token_ids=req.prompt_ids)
        self._waiting += 1
        seen = 0
        try:
            async for out in self.engine.generate(prompt, _vllm_sampling(self.vllm, req.params), req.request_id,
                                                  lora_request=self._lora(req.model)):
                if seen == 0:
                    self._waiting -= 1
                comp = out.outputs[0]
                for k in range(seen, len(comp.token_ids)):
                    stream.push(self._event(comp, k, req.params.logprobs))
                seen = len(comp.token_ids)
                self._running[req.request_id] = seen
                if out.finished:
                    reason = "length" if comp.finish_reason == "length" else "stop"
                    stream.push(Finish(reason))
                    self._counters["finished"] += 1
        except asyncio.CancelledError:
            stream.push(Finish("cancelled"))
            raise
        except Exception as e:  # noqa: BLE001 - reported to the client; the engine keeps serving others
            log.exception("vLLM request failed")
            stream.push(Finish("error", f"generation failed: {type(e).__name__}: {e}"))
        finally:
            if seen == 0:
                self._waiting -= 1
            self._counters["generated"] += seen
            self._running.pop(req.request_id, None)
            if stream.cancelled:
                self._counters["cancelled"] += 1

    @staticmethod
    def _event(comp, k: int, n_top: int | None) -> TokenEvent:
        token = comp.token_ids[k]
        if n_top is None or not comp.logprobs:
            return TokenEvent(token)
        lp = comp.logprobs[k]  # {token_id: Logprob}: the sampled token plus the n_top most likely
        top = sorted(((t, v.logprob) for t, v in lp.items()), key=lambda x: -x[1])[:n_top]
        return TokenEvent(token, lp[token].logprob if token in lp else None, top)

    def stats(self) -> EngineStats:
        c = self._counters
        return EngineStats(self.name, self._waiting, len(self._running), c["generated"], c["finished"],
                           c["cancelled"], 0, 0.0, dict(self._running), {"base": self.base})
