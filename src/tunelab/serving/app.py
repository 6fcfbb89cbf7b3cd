"""The app factory: `create_app(settings, engine=...)` wires routes, handlers, engine, auth and limits.

Layers, outermost first: request id + metrics -> header size limit -> authentication -> body size limit ->
FastAPI (validation, routes -> handlers -> engine). The lifespan loads the models in the background, so
/health answers at once and /ready turns 200 when generation can start; on shutdown the engine stops.
"""

from __future__ import annotations

import asyncio
import logging
from contextlib import asynccontextmanager
from typing import Any

from fastapi import FastAPI
from fastapi.openapi.utils import get_openapi

from tunelab.config.specs import ServeSpec
from tunelab.errors import TunelabError
from tunelab.serving.auth import Authenticator, AuthMiddleware
from tunelab.serving.catalog import ModelCatalog, build_catalog
from tunelab.serving.engines.base import Engine
from tunelab.serving.errors import install_error_handlers
from tunelab.serving.feedback import FeedbackStore, ResponseLog
from tunelab.serving.handlers import Handlers, ServerState
from tunelab.serving.lifecycle import Drain
from tunelab.serving.limits import BodyLimitMiddleware, HeaderLimitMiddleware
from tunelab.serving.metrics import RequestContextMiddleware, ServingMetrics
from tunelab.serving.operations import (
    add_key_limits,
    add_operations,
    build_operations,
    document_operational_errors,
    metered,
)
from tunelab.serving.routes import build_router

__all__ = ["API_KEY_ENV", "create_app", "make_engine"]

log = logging.getLogger("tunelab.serving")
API_KEY_ENV = "TUNELAB_API_KEY"


def make_engine(catalog: ModelCatalog, settings: ServeSpec) -> Engine:
    """The engine `settings.engine` names (vLLM is imported only when asked for)."""
    if settings.engine == "vllm":
        from tunelab.serving.engines.vllm import VLLMEngine

        return VLLMEngine(catalog, settings)
    from tunelab.serving.engines.transformers import TransformersEngine

    return TransformersEngine(catalog, settings)


async def _load(state: ServerState) -> None:
    """Build what was not given (catalog, engine, embedder) and start the engine; errors go to /ready."""
    try:
        if state.catalog is None:
            state.catalog = await asyncio.to_thread(build_catalog, state.settings)
        if state.embedder is None and state.catalog.embedding_ids():
            from tunelab.serving.embeddings import Embedder

            state.embedder = await asyncio.to_thread(Embedder, state.catalog.models[state.catalog.embedding_ids()[0]].weights)
        if state.engine is None:
            state.engine = metered(make_engine(state.catalog, state.settings))
        await state.engine.start()
        log.info("ready: %s", ", ".join(state.catalog.models))
    except asyncio.CancelledError:
        raise
    except Exception as e:  # noqa: BLE001 - reported by /ready and the log; /health stays up
        state.load_error = e.one_line() if isinstance(e, TunelabError) else f"{type(e).__name__}: {e}"
        log.exception("loading the models failed")


def _tokenizer(state: ServerState, model: str) -> Any:
    served = state.catalog.get(model) if state.catalog is not None else None
    return served.tokenizer if served is not None else None


def _openapi(app: FastAPI, public_paths: list[str]):
    """FastAPI's document, corrected to what the server does: 400 (not 422) and bearer auth."""

    def build() -> dict[str, Any]:
        if app.openapi_schema:
            return app.openapi_schema
        schema = get_openapi(title=app.title, version=app.version, description=app.description, routes=app.routes)
        schema.setdefault("components", {})["securitySchemes"] = {"bearer": {"type": "http", "scheme": "bearer"}}
        schema["security"] = [{"bearer": []}]
        for path, ops in schema.get("paths", {}).items():
            for op in ops.values():
                op.get("responses", {}).pop("422", None)
                if path in public_paths:
                    op["security"] = []
        document_operational_errors(schema, public_paths)  # 429 per-key limits, 408 slow body, 503 draining
        for unused in ("HTTPValidationError", "ValidationError"):
            schema["components"].get("schemas", {}).pop(unused, None)
        app.openapi_schema = schema
        return schema

    return build


def create_app(settings: ServeSpec, engine: Engine | None = None, catalog: ModelCatalog | None = None, *,
               embedder: Any = None, authenticator: Authenticator | None = None, api_key: str | None = None,
               feedback_store: FeedbackStore | None = None) -> FastAPI:
    """The OpenAI-compatible app.

    Args:
        settings: server settings (`ServeSpec`); `settings.model` etc. are loaded when no catalog is given.
        engine: a ready-made engine (tests pass a fake); built from the catalog when None.
        catalog: the served models; built from `settings` in the background when None.
        embedder: an `Embedder` for /v1/embeddings; built when the catalog has an embedding model.
        authenticator: who may call; default the keys in the server's database (`tunelab keys`) and/or a
            static key from `api_key` or $TUNELAB_API_KEY.
        api_key: the static key.
        feedback_store: where /v1/feedback rows go; default the database when there is one, else JSONL files
            in `settings.state_dir`.

    Raises:
        TunelabError: no way to authenticate (no authenticator, database keys, key or $TUNELAB_API_KEY).
    """
    from tunelab import __version__

    ops = build_operations(settings, authenticator, api_key, feedback_store, API_KEY_ENV)
    state = ServerState(settings, ops.feedback, ResponseLog(settings.recent_responses), catalog, metered(engine),
                        embedder)
    state.metrics = ServingMetrics(lambda: state.engine.stats() if state.engine and state.engine.ready() else None)

    async def stop_engine() -> None:
        if state.engine is not None:
            await state.engine.stop()

    drain = Drain(settings.shutdown_grace_s, stop_engine)

    @asynccontextmanager
    async def lifespan(app: FastAPI):
        task = asyncio.create_task(_load(state))
        unhook = drain.hook_signals(asyncio.get_running_loop())
        try:
            yield
        finally:
            unhook()
            task.cancel()
            await drain.close()
            await stop_engine()
            if ops.db is not None:
                ops.db.close()

    app = FastAPI(title="tunelab", version=__version__, lifespan=lifespan, docs_url=None, redoc_url=None,
                  description="OpenAI-compatible API for models and adapters trained with tunelab.")
    app.state.tunelab, app.state.drain = state, drain
    state.fingerprint = f"tunelab-{__version__}"
    install_error_handlers(app)
    app.include_router(build_router(Handlers(state)))
    # add_middleware puts each new layer outside the previous ones: innermost first.
    app.add_middleware(BodyLimitMiddleware, max_body_bytes=settings.max_body_bytes)
    add_key_limits(app, settings)  # per-key rate limits and quotas (429), body read timeout (408)
    app.add_middleware(AuthMiddleware, authenticator=ops.authenticator, public_paths=settings.public_paths)
    app.add_middleware(HeaderLimitMiddleware, max_body_bytes=settings.max_body_bytes,
                       max_header_bytes=settings.max_header_bytes)
    add_operations(app, settings, ops, drain, lambda model: _tokenizer(state, model))  # drain, audit, CORS
    app.add_middleware(RequestContextMiddleware, metrics=state.metrics)
    app.openapi = _openapi(app, settings.public_paths)  # type: ignore[method-assign]
    return app
