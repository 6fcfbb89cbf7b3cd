"""Run the app with uvicorn: `serve(settings)` is what `tunelab serve` calls.

The catalog (ids, tokenizers, adapter compatibility) is built before the socket opens, so mistakes are
one-line errors with exit code 2; weights load in the background while /health already answers.
TLS: pass `ssl_keyfile`/`ssl_certfile` (uvicorn's options) — see docs/serving.md.
"""

from __future__ import annotations

import logging
import os

from tunelab.config.specs import ServeSpec
from tunelab.serving.app import API_KEY_ENV, create_app
from tunelab.serving.auth import generate_key
from tunelab.serving.catalog import build_catalog
from tunelab.serving.operations import database_has_keys
from tunelab.serving.snippets import client_snippets
from tunelab.serving.storage import DATABASE_ENV
from tunelab.util.console import console

__all__ = ["serve"]


def serve(settings: ServeSpec, api_key: str | None = None, ssl_keyfile: str | None = None,
          ssl_certfile: str | None = None, log_level: str = "info") -> None:
    """Serve until interrupted. Without `api_key` or $TUNELAB_API_KEY a random key is made and printed."""
    import uvicorn

    catalog = build_catalog(settings)
    key = api_key or os.environ.get(API_KEY_ENV)
    shown = f"${API_KEY_ENV}" if key else None
    db_keys = database_has_keys(settings)  # keys from `tunelab keys create`: no session key is made
    # With a database configured on purpose (containers set $TUNELAB_DATABASE_URL), keys are managed there:
    # no session key is printed into logs; without keys, create_app refuses to start (exit 2).
    if not key and not db_keys and not (settings.database or os.environ.get(DATABASE_ENV)):
        key = shown = generate_key()
    app = create_app(settings, catalog=catalog, api_key=key)
    scheme = "https" if ssl_certfile else "http"
    host = "127.0.0.1" if settings.host in ("0.0.0.0", "::", "") else settings.host
    base = f"{scheme}://{host}:{settings.port}"
    console.print(f"serving [bold]{', '.join(catalog.models)}[/] on {scheme}://{settings.host}:{settings.port} "
                  f"(engine {settings.engine}; models load in the background, GET /ready says when)")
    if db_keys:
        console.print(f"API keys: the server database's (tunelab keys list){' and $' + API_KEY_ENV if key else ''}")
        shown = f"${API_KEY_ENV}"
    elif shown != f"${API_KEY_ENV}":
        console.print(f"API key for this session (set {API_KEY_ENV} or --api-key to choose one): [bold]{key}[/]")
    console.print(client_snippets(base, catalog.default_chat, shown), markup=False, highlight=False)
    logging.basicConfig(level=log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    # h11 refuses header blocks over its own limit with a bare 400; keep it above ours so ours answers (431).
    uvicorn.run(app, host=settings.host, port=settings.port, log_level=log_level, ssl_keyfile=ssl_keyfile,
                ssl_certfile=ssl_certfile, h11_max_incomplete_event_size=max(65536, 4 * settings.max_header_bytes),
                timeout_graceful_shutdown=settings.shutdown_grace_s + 10)  # the app cancels at the grace
