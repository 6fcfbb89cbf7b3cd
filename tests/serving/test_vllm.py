"""The vLLM engine behind the same API: a clear error where it cannot run, a real run on a CUDA GPU."""

from __future__ import annotations

import importlib.util
import time

import pytest
from serving_helpers import AUTH

from tunelab.config.specs import ServeSpec
from tunelab.errors import TunelabError


def _has_vllm_and_cuda() -> bool:
    if importlib.util.find_spec("vllm") is None:
        return False
    import torch

    return torch.cuda.is_available()


@pytest.mark.skipif(_has_vllm_and_cuda(), reason="vllm and a GPU are present: the gpu test covers it")
def test_vllm_engine_says_what_it_needs(tiny_model_dir):
    from tunelab.serving import build_catalog, make_engine

    catalog = build_catalog(ServeSpec(model=str(tiny_model_dir)))
    with pytest.raises(TunelabError, match="vllm|CUDA"):
        make_engine(catalog, ServeSpec(engine="vllm"))


@pytest.mark.gpu
@pytest.mark.skipif(not _has_vllm_and_cuda(), reason="needs vllm and a CUDA GPU (pip install vllm)")
def test_vllm_engine_serves_the_api(tmp_path):
    from fastapi.testclient import TestClient

    from tunelab.serving import create_app

    spec = ServeSpec(model="smollm2-135m-instruct", engine="vllm", state_dir=str(tmp_path))
    with TestClient(create_app(spec, api_key=AUTH["Authorization"].split()[1])) as client:
        for _ in range(600):
            if client.get("/ready", headers=AUTH).status_code == 200:
                break
            time.sleep(0.5)
        r = client.post("/v1/chat/completions", headers=AUTH, json={
            "model": "smollm2-135m-instruct", "temperature": 0, "max_tokens": 16,
            "messages": [{"role": "user", "content": "What is the capital of France? One word."}]})
        assert r.status_code == 200 and "Paris" in r.json()["choices"][0]["message"]["content"]
        streamed = client.post("/v1/chat/completions", headers=AUTH, json={
            "model": "smollm2-135m-instruct", "temperature": 0, "max_tokens": 16, "stream": True,
            "messages": [{"role": "user", "content": "Count to five."}]})
        assert streamed.text.rstrip().endswith("data: [DONE]")
