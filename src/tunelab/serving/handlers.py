"""Handlers: the API's logic, between routes (HTTP only) and the engine (generation only).

Each handler takes a validated request model and returns a response model, or an async iterator of
server-sent event bytes when streaming. Problems the client can fix raise `APIError` (4xx) before any
engine work; engine trouble becomes 5xx, overload 503 with Retry-After.
"""

from __future__ import annotations

import asyncio
import base64
import struct
import time
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

from tunelab.config.specs import ServeSpec
from tunelab.serving import protocol as P
from tunelab.serving.catalog import ModelCatalog, ServedModel
from tunelab.serving.engines.base import Engine, TokenEvent
from tunelab.serving.errors import APIError
from tunelab.serving.feedback import FeedbackStore, RecentResponse, ResponseLog, feedback_rows
from tunelab.serving.generation import (
    ChoiceResult,
    Job,
    check_counts,
    resolve_max_tokens,
    run_job,
    sampling_params,
    stream_job,
    submit_job,
)
from tunelab.serving.metrics import ServingMetrics

__all__ = ["Handlers", "ServerState"]


@dataclass
class ServerState:
    """Everything the handlers use; filled in by the app's lifespan (engine and catalog may load late)."""

    settings: ServeSpec
    feedback: FeedbackStore
    responses: ResponseLog
    catalog: ModelCatalog | None = None
    engine: Engine | None = None
    embedder: Any = None
    metrics: ServingMetrics | None = None
    load_error: str | None = None
    fingerprint: str = "tunelab"


def _messages(messages: list[P.ChatMessage]) -> list[dict[str, str]]:
    # Chat templates know system/user/assistant; OpenAI's newer 'developer' role means system.
    return [{"role": "system" if m.role == "developer" else m.role, "content": m.text()} for m in messages]


class Handlers:
    def __init__(self, state: ServerState):
        self.s = state

    # ------------------------------------------------------------------------------------------ models
    def _ready_catalog(self) -> ModelCatalog:
        if self.s.load_error:
            raise APIError(503, f"the models failed to load: {self.s.load_error}", code="load_failed")
        if self.s.catalog is None or self.s.engine is None or not self.s.engine.ready():
            raise APIError(503, "the models are still loading; retry shortly", code="not_ready",
                           headers={"Retry-After": "5"})
        return self.s.catalog

    def ready(self) -> P.Ready:
        return P.Ready(models=list(self._ready_catalog().models))

    def _card(self, m: ServedModel) -> P.ModelCard:
        return P.ModelCard(id=m.id, created=m.created, kind=m.kind, source=m.source, context_length=m.context_length)

    def list_models(self) -> P.ModelList:
        return P.ModelList(data=[self._card(m) for m in self._ready_catalog().models.values()])

    def get_model(self, model_id: str) -> P.ModelCard:
        return self._card(self._model(model_id, kind=None, param=None))

    def _model(self, model_id: str, kind: str | None = "chat", param: str | None = "model") -> ServedModel:
        catalog = self._ready_catalog()
        served = catalog.get(model_id)
        if served is None:
            raise APIError(404, f"model '{model_id}' is not served here; served: {', '.join(catalog.models)}",
                           param=param, code="model_not_found")
        if kind is not None and served.kind != kind:
            other = "/v1/embeddings" if served.kind == "embedding" else "/v1/chat/completions or /v1/completions"
            raise APIError(400, f"model '{model_id}' is a {served.kind} model; use {other}", param=param,
                           code="wrong_model_kind")
        return served

    def stats(self) -> P.EngineStatsResponse:
        self._ready_catalog()
        return P.EngineStatsResponse(**self.s.engine.stats().__dict__)  # type: ignore[union-attr]

    # ------------------------------------------------------------------------------------------ chat
    async def chat(self, req: P.ChatCompletionRequest) -> P.ChatCompletion | AsyncIterator[bytes]:
        served = self._model(req.model)
        spec = self.s.settings
        n, stop = check_counts(req, 1, spec)
        messages = _messages(req.messages)
        ids = self._render(served, messages)
        max_tokens = resolve_max_tokens(req.max_tokens or req.max_completion_tokens, len(ids), served, spec,
                                        "messages")
        logprobs = (req.top_logprobs or 0) if req.logprobs else None
        json_mode = req.response_format is not None and req.response_format.type == "json_object"
        job = Job(served, [ids], n, sampling_params(req, served, max_tokens, logprobs, json_mode), stop)
        streams = submit_job(self.s.engine, job)  # type: ignore[arg-type]
        rid, created = f"chatcmpl-{uuid.uuid4().hex}", int(time.time())

        def finish(results: list[ChoiceResult]) -> None:
            self._record(rid, job, [messages] * len(results), results)

        if req.stream:
            return stream_job(job, streams, spec.request_timeout_s, self._chat_chunk(rid, created, served, req),
                              self._stream_usage(rid, created, served, job, req, "chat.completion.chunk"), finish)
        results = await run_job(job, streams, spec.request_timeout_s)
        finish(results)
        choices = [P.ChatChoice(index=r.index, message=P.AssistantMessage(content=r.text),
                                logprobs=self._chat_logprobs(served, r.events) if logprobs is not None else None,
                                finish_reason=r.finish_reason) for r in results]
        return P.ChatCompletion(id=rid, created=created, model=served.id, system_fingerprint=self.s.fingerprint,
                                choices=choices, usage=self._usage(job, results))

    def _render(self, served: ServedModel, messages: list[dict[str, str]]) -> list[int]:
        from tunelab.evaluation.generate import render_prompt

        try:
            text = render_prompt(served.tokenizer, messages)
        except Exception as e:  # noqa: BLE001 - jinja raise_exception() in templates (e.g. role order rules)
            raise APIError(400, f"the chat template rejected these messages: {e}", param="messages",
                           code="invalid_messages") from None
        return served.tokenizer(text, add_special_tokens=False)["input_ids"]

    def _chat_chunk(self, rid: str, created: int, served: ServedModel, req: P.ChatCompletionRequest):
        def build(i: int, text: str | None, event: TokenEvent | None, finish: str | None) -> dict[str, Any] | None:
            if text is None and finish is None:
                delta: dict[str, Any] = {"role": "assistant", "content": ""}
            elif finish is not None:
                delta = {}
            else:
                if not text and (event is None or not req.logprobs):
                    return None
                delta = {"content": text}
            lp = None
            if req.logprobs and event is not None:
                lp = {"content": [self._token_logprob(served, event).model_dump()]}
            return {"id": rid, "object": "chat.completion.chunk", "created": created, "model": served.id,
                    "system_fingerprint": self.s.fingerprint,
                    "choices": [{"index": i, "delta": delta, "logprobs": lp, "finish_reason": finish}]}
        return build

    def _stream_usage(self, rid: str, created: int, served: ServedModel, job: Job, req: Any, obj: str):
        def build(results: list[ChoiceResult]) -> dict[str, Any] | None:
            if not (req.stream_options and req.stream_options.include_usage):
                return None
            return {"id": rid, "object": obj, "created": created, "model": served.id,
                    "system_fingerprint": self.s.fingerprint, "choices": [],
                    "usage": self._usage(job, results).model_dump()}
        return build

    # ------------------------------------------------------------------------------------------ completions
    async def completion(self, req: P.CompletionRequest) -> P.Completion | AsyncIterator[bytes]:
        served = self._model(req.model)
        spec = self.s.settings
        texts = [req.prompt] if isinstance(req.prompt, str) else list(req.prompt)
        n, stop = check_counts(req, len(texts), spec)
        prompts = [served.tokenizer(t, add_special_tokens=True)["input_ids"] for t in texts]
        longest = max(range(len(prompts)), key=lambda i: len(prompts[i]))
        max_tokens = resolve_max_tokens(req.max_tokens, len(prompts[longest]), served, spec,
                                        "prompt" if isinstance(req.prompt, str) else f"prompt.{longest}")
        job = Job(served, prompts, n, sampling_params(req, served, max_tokens, req.logprobs, False), stop)
        streams = submit_job(self.s.engine, job)  # type: ignore[arg-type]
        rid, created = f"cmpl-{uuid.uuid4().hex}", int(time.time())
        prompt_of = [texts[i // n] for i in range(len(streams))]

        def finish(results: list[ChoiceResult]) -> None:
            self._record(rid, job, prompt_of, results)

        if req.stream:
            return stream_job(job, streams, spec.request_timeout_s,
                              self._completion_chunk(rid, created, served, req, prompt_of),
                              self._stream_usage(rid, created, served, job, req, "text_completion"), finish)
        results = await run_job(job, streams, spec.request_timeout_s)
        finish(results)
        choices = []
        for r in results:
            head = prompt_of[r.index] if req.echo else ""
            lp = self._completion_logprobs(served, r.events, len(head)) if req.logprobs is not None else None
            choices.append(P.CompletionChoice(index=r.index, text=head + r.text, logprobs=lp,
                                              finish_reason=r.finish_reason))
        return P.Completion(id=rid, created=created, model=served.id, system_fingerprint=self.s.fingerprint,
                            choices=choices, usage=self._usage(job, results))

    def _completion_chunk(self, rid: str, created: int, served: ServedModel, req: P.CompletionRequest,
                          prompt_of: list[str]):
        def build(i: int, text: str | None, event: TokenEvent | None, finish: str | None) -> dict[str, Any] | None:
            if text is None and finish is None:
                if not req.echo:
                    return None
                text = prompt_of[i]
            elif finish is None and not text and (event is None or req.logprobs is None):
                return None
            lp = None
            if req.logprobs is not None and event is not None:
                lp = self._completion_logprobs(served, [event], 0).model_dump()
            return {"id": rid, "object": "text_completion", "created": created, "model": served.id,
                    "system_fingerprint": self.s.fingerprint,
                    "choices": [{"index": i, "text": text or "", "logprobs": lp, "finish_reason": finish}]}
        return build

    # ------------------------------------------------------------------------------------------ shared
    def _usage(self, job: Job, results: list[ChoiceResult]) -> P.Usage:
        completion = sum(len(r.events) for r in results)
        return P.Usage(prompt_tokens=job.prompt_tokens, completion_tokens=completion,
                       total_tokens=job.prompt_tokens + completion)

    def _record(self, rid: str, job: Job, prompts: list[Any], results: list[ChoiceResult]) -> None:
        self.s.responses.add(rid, RecentResponse(job.served.id, prompts, [r.text for r in results]))
        if self.s.metrics is None:
            return
        for r in results:
            ttft = r.first_token_at - job.started if r.first_token_at else None
            decode = r.ended_at - r.first_token_at if r.first_token_at else None
            self.s.metrics.observe_generation(job.served.id, 0, len(r.events), ttft, decode)
        self.s.metrics.observe_generation(job.served.id, job.prompt_tokens, 0, None, None)

    def _piece(self, served: ServedModel, token_id: int) -> str:
        return served.tokenizer.decode([token_id], skip_special_tokens=False, clean_up_tokenization_spaces=False)

    def _token_logprob(self, served: ServedModel, e: TokenEvent) -> P.TokenLogprob:
        tok = self._piece(served, e.token_id)
        tops = [P.TopLogprob(token=(t := self._piece(served, i)), logprob=lp, bytes=list(t.encode("utf-8")))
                for i, lp in (e.top_logprobs or [])]
        return P.TokenLogprob(token=tok, logprob=e.logprob if e.logprob is not None else 0.0,
                              bytes=list(tok.encode("utf-8")), top_logprobs=tops)

    def _chat_logprobs(self, served: ServedModel, events: list[TokenEvent]) -> P.ChoiceLogprobs:
        return P.ChoiceLogprobs(content=[self._token_logprob(served, e) for e in events])

    def _completion_logprobs(self, served: ServedModel, events: list[TokenEvent], offset: int) -> P.CompletionLogprobs:
        tokens, offsets = [], []
        for e in events:
            tokens.append(self._piece(served, e.token_id))
            offsets.append(offset)
            offset += len(tokens[-1])
        tops = [{self._piece(served, i): lp for i, lp in (e.top_logprobs or [])} for e in events]
        return P.CompletionLogprobs(tokens=tokens, token_logprobs=[e.logprob or 0.0 for e in events],
                                    top_logprobs=tops, text_offset=offsets)

    # ------------------------------------------------------------------------------------------ embeddings
    async def embeddings(self, req: P.EmbeddingRequest) -> P.EmbeddingList:
        catalog = self._ready_catalog()
        if not catalog.embedding_ids():
            raise APIError(400, "this server has no embedding model", param="model", code="no_embedding_model")
        served = self._model(req.model, kind="embedding")
        texts = [req.input] if isinstance(req.input, str) else list(req.input)
        if len(texts) > self.s.settings.max_embedding_inputs:
            raise APIError(400, f"{len(texts)} inputs; this server embeds at most "
                           f"{self.s.settings.max_embedding_inputs} per request", param="input", code="invalid_value")
        counts = self.s.embedder.count_tokens(texts)
        for i, c in enumerate(counts):
            if c > self.s.embedder.max_length:
                raise APIError(400, f"input {i} has {c} tokens; '{served.id}' takes at most "
                               f"{self.s.embedder.max_length}", param="input" if len(texts) == 1 else f"input.{i}",
                               code="context_length_exceeded")
        vectors = await asyncio.to_thread(self.s.embedder.embed, texts)
        data = [P.EmbeddingItem(index=i, embedding=v if req.encoding_format == "float" else
                                base64.b64encode(struct.pack(f"<{len(v)}f", *v)).decode("ascii"))
                for i, v in enumerate(vectors)]
        total = sum(counts)
        return P.EmbeddingList(data=data, model=served.id, usage=P.Usage(prompt_tokens=total, total_tokens=total))

    # ------------------------------------------------------------------------------------------ feedback
    async def feedback(self, req: P.FeedbackRequest) -> P.FeedbackAck:
        prompt: Any = _messages(req.messages) if req.messages else None
        response, model = req.response, req.model
        if req.response_id is not None:
            rec = self.s.responses.get(req.response_id)
            if rec is None and req.messages is None:
                raise APIError(404, f"response '{req.response_id}' is not known to this server (it remembers the "
                               f"last {self.s.settings.recent_responses})", param="response_id",
                               code="response_not_found")
            if rec is not None:
                if req.choice_index >= len(rec.choices):
                    raise APIError(400, f"response '{req.response_id}' has {len(rec.choices)} choice(s)",
                                   param="choice_index", code="invalid_value")
                prompt, response, model = rec.prompts[req.choice_index], rec.choices[req.choice_index], rec.model
        if req.rating is not None and response is None:
            raise APIError(400, "a rating needs the response it rates", param="response", code="invalid_value")
        fid = f"fb-{uuid.uuid4().hex}"
        rows = feedback_rows(fid, prompt=prompt, response=response, model=model, response_id=req.response_id,
                             choice_index=req.choice_index, rating=req.rating, chosen=req.chosen,
                             rejected=req.rejected, comment=req.comment)
        if "pairs" in rows and not rows["pairs"]["rejected"]:
            raise APIError(400, "a chosen answer needs the rejected one (or a known response)", param="rejected",
                           code="invalid_value")
        stored = await asyncio.to_thread(self.s.feedback.add, rows)
        return P.FeedbackAck(id=fid, created=int(time.time()), stored=stored)
