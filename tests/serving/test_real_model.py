"""One short end-to-end check on the real default model and the real encoder (integration)."""

from __future__ import annotations

import json
import math

import openai
import pytest
from serving_helpers import API_KEY, start_server, stop_server

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def real_server(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("real-server")
    proc, url = start_server(["smollm2-135m-instruct", "--embedding-model", "all-minilm-l6-v2"], tmp)
    yield url
    stop_server(proc)


def test_real_model_answers_streams_json_and_embeds(real_server):
    client = openai.OpenAI(base_url=f"{real_server}/v1", api_key=API_KEY, max_retries=0, timeout=300)
    assert [m.id for m in client.models.list().data] == ["smollm2-135m-instruct", "all-minilm-l6-v2"]
    ask = [{"role": "user", "content": "What is the capital of France? Answer with one word."}]
    r = client.chat.completions.create(model="smollm2-135m-instruct", messages=ask, temperature=0, max_tokens=16)
    assert "Paris" in r.choices[0].message.content and r.choices[0].finish_reason == "stop"
    streamed = "".join(c.choices[0].delta.content or "" for c in client.chat.completions.create(
        model="smollm2-135m-instruct", messages=ask, temperature=0, max_tokens=16, stream=True) if c.choices)
    assert streamed == r.choices[0].message.content
    js = client.chat.completions.create(
        model="smollm2-135m-instruct", temperature=0, max_tokens=120, response_format={"type": "json_object"},
        messages=[{"role": "user", "content": 'Reply with a JSON object with one key, "city", whose value is the '
                   "capital of France."}])
    assert js.choices[0].finish_reason == "stop", js.choices[0].message.content
    assert isinstance(json.loads(js.choices[0].message.content), dict)
    emb = client.embeddings.create(model="all-minilm-l6-v2", input=[
        "A cat sits on the mat.", "A kitten is lying on the rug.", "Stock markets fell sharply today."])
    v = [d.embedding for d in emb.data]
    assert len(v[0]) == 384 and math.isclose(sum(x * x for x in v[0]), 1.0, rel_tol=1e-4)

    def cos(a, b):
        return sum(x * y for x, y in zip(a, b, strict=True))

    assert cos(v[0], v[1]) > cos(v[0], v[2]) + 0.2
