"""Serving fixtures: an app on a scripted fake engine, and a lively tiny model with two LoRA adapter runs."""

from __future__ import annotations

from pathlib import Path

import pytest
from serving_helpers import (
    API_KEY,
    TEMPLATE_B,
    FakeEmbedder,
    FakeEngine,
    adapter_run,
    fake_catalog,
    lively_tiny,
)

from tunelab.config.specs import ServeSpec


@pytest.fixture()
def fake_app(tokenizer, tmp_path):
    """(TestClient, FakeEngine, settings) for a fresh app with the fake engine and embedder."""
    from fastapi.testclient import TestClient

    from tunelab.serving import create_app

    def make(**settings):
        spec = ServeSpec(state_dir=str(tmp_path / "state"), **settings)
        engine = FakeEngine(tokenizer)
        app = create_app(spec, engine=engine, catalog=fake_catalog(tokenizer), embedder=FakeEmbedder(),
                         api_key=API_KEY)
        return TestClient(app), engine, spec

    return make


@pytest.fixture(scope="session")
def serving_models(tmp_path_factory, tokenizer) -> dict[str, Path]:
    """base/ (lively tiny model), runs/ada (LoRA, base template), runs/adb (LoRA, its own template)."""
    root = tmp_path_factory.mktemp("serving-models")
    base = root / "tiny-base"
    lively_tiny(tokenizer).save_pretrained(base, safe_serialization=True)
    tokenizer.save_pretrained(base)
    return {"base": base, "ada": adapter_run(root / "runs", "ada", base, tokenizer, 1, None),
            "adb": adapter_run(root / "runs", "adb", base, tokenizer, 2, TEMPLATE_B)}


