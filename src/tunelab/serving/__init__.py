"""`tunelab serve`: an OpenAI-compatible server for base models, merged exports and LoRA adapters.

Three layers (routes -> handlers -> engine) built by `create_app`; `serve` runs it with uvicorn.
See docs/serving.md for routes, fields, guarantees and measured throughput.
"""

from tunelab.serving.app import API_KEY_ENV, create_app, make_engine
from tunelab.serving.catalog import ModelCatalog, ServedModel, build_catalog
from tunelab.serving.server import serve

__all__ = ["API_KEY_ENV", "ModelCatalog", "ServedModel", "build_catalog", "create_app", "make_engine", "serve"]
