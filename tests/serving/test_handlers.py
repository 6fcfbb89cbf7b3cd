"""Routes and handlers against a scripted fake engine: shapes, streaming, limits, auth, feedback, errors."""

from __future__ import annotations

import base64
import json
import struct
import time

import pytest
from serving_helpers import API_KEY, AUTH, REPLY

CHAT = {"model": "fake-chat", "messages": [{"role": "user", "content": "Hi!"}]}


def sse_events(text: str) -> list:
    out = []
    for block in text.strip().split("\n\n"):
        assert block.startswith("data: "), block
        body = block[len("data: "):]
        out.append(body if body == "[DONE]" else json.loads(body))
    return out


def assert_envelope(r, status: int, param: str | None = "any") -> dict:
    assert r.status_code == status, r.text
    err = r.json()["error"]
    assert set(err) == {"message", "type", "param", "code"} and err["message"]
    if param != "any":
        assert err["param"] == param
    return err


def test_models_and_health(fake_app):
    client, _, _ = fake_app()
    with client:
        assert client.get("/health").json() == {"status": "ok"}
        ids = [m["id"] for m in client.get("/v1/models", headers=AUTH).json()["data"]]
        assert ids == ["fake-chat", "fake-embed"]
        assert client.get("/v1/models/fake-chat", headers=AUTH).json()["kind"] == "chat"
        assert_envelope(client.get("/v1/models/nope", headers=AUTH), 404, None)
        assert client.get("/ready", headers=AUTH).json() == {"status": "ready", "models": ["fake-chat", "fake-embed"]}


def test_chat_completion_shape_and_usage(fake_app, tokenizer):
    client, engine, _ = fake_app()
    with client:
        body = client.post("/v1/chat/completions", headers=AUTH, json=CHAT).json()
    assert body["object"] == "chat.completion" and body["id"].startswith("chatcmpl-")
    choice = body["choices"][0]
    assert choice["message"] == {"role": "assistant", "content": REPLY} and choice["finish_reason"] == "stop"
    prompt = tokenizer.apply_chat_template(CHAT["messages"], tokenize=False, add_generation_prompt=True)
    n_prompt = len(tokenizer(prompt, add_special_tokens=False)["input_ids"])
    n_reply = len(tokenizer(REPLY, add_special_tokens=False)["input_ids"])
    assert body["usage"] == {"prompt_tokens": n_prompt, "completion_tokens": n_reply, "total_tokens": n_prompt + n_reply}
    assert engine.requests[0].prompt_ids == tokenizer(prompt, add_special_tokens=False)["input_ids"]
    assert engine.requests[0].params.stop_token_ids == [tokenizer.eos_token_id]


def test_sampling_fields_reach_the_engine(fake_app):
    client, engine, _ = fake_app()
    with client:
        r = client.post("/v1/chat/completions", headers=AUTH, json={
            **CHAT, "n": 3, "seed": 7, "temperature": 0.5, "top_p": 0.9, "presence_penalty": 0.5,
            "frequency_penalty": -0.5, "logit_bias": {"42": 5}, "max_completion_tokens": 4,
            "response_format": {"type": "json_object"}})
    assert len(r.json()["choices"]) == 3
    params = [q.params for q in engine.requests]
    assert [p.seed for p in params] == [7, 8, 9]  # one seed per choice, reproducible
    p = params[0]
    assert (p.temperature, p.top_p, p.presence_penalty, p.frequency_penalty, p.logit_bias, p.max_tokens,
            p.json_object) == (0.5, 0.9, 0.5, -0.5, {42: 5.0}, 4, True)
    assert all(c["finish_reason"] == "length" for c in r.json()["choices"])


def test_stop_sequence_cuts_text_and_cancels_engine(fake_app):
    client, engine, _ = fake_app()
    engine.delay = 0.01
    with client:
        body = client.post("/v1/chat/completions", headers=AUTH, json={**CHAT, "stop": ["friend", "zzz"]}).json()
        time.sleep(0.1)
    assert body["choices"][0]["message"]["content"] == "Hello there, "
    assert body["choices"][0]["finish_reason"] == "stop"
    assert engine.cancelled  # the engine stopped generating after the stop sequence


def test_streaming_chat_events(fake_app):
    client, _, _ = fake_app()
    with client:
        r = client.post("/v1/chat/completions", headers=AUTH,
                        json={**CHAT, "stream": True, "n": 2, "stream_options": {"include_usage": True}})
    assert r.headers["content-type"].startswith("text/event-stream")
    events = sse_events(r.text)
    assert events[-1] == "[DONE]"
    usage = events[-2]
    assert usage["choices"] == [] and usage["usage"]["completion_tokens"] > 0
    chunks = events[:-2]
    assert all(c["object"] == "chat.completion.chunk" for c in chunks)
    for i in (0, 1):
        mine = [c["choices"][0] for c in chunks if c["choices"][0]["index"] == i]
        assert mine[0]["delta"] == {"role": "assistant", "content": ""}
        assert "".join(c["delta"].get("content") or "" for c in mine) == REPLY
        assert mine[-1]["finish_reason"] == "stop" and all(c["finish_reason"] is None for c in mine[:-1])


def test_chat_logprobs(fake_app):
    client, engine, _ = fake_app()
    with client:
        body = client.post("/v1/chat/completions", headers=AUTH, json={**CHAT, "logprobs": True, "top_logprobs": 2,
                                                                      "max_tokens": 3}).json()
    content = body["choices"][0]["logprobs"]["content"]
    assert len(content) == 3 and engine.requests[0].params.logprobs == 2
    assert content[0]["logprob"] == -0.5 and len(content[0]["top_logprobs"]) == 2
    assert bytes(content[0]["bytes"]).decode() == content[0]["token"]


def test_text_completions(fake_app):
    client, engine, _ = fake_app()
    with client:
        body = client.post("/v1/completions", headers=AUTH, json={
            "model": "fake-chat", "prompt": ["One", "Two"], "n": 2, "echo": True, "max_tokens": 2}).json()
        streamed = client.post("/v1/completions", headers=AUTH, json={
            "model": "fake-chat", "prompt": "Go", "stream": True, "logprobs": 1}).text
    assert body["object"] == "text_completion" and len(body["choices"]) == 4
    first_two = "".join(tokenizer_piece for tokenizer_piece in [body["choices"][0]["text"]])
    assert first_two.startswith("One") and body["choices"][2]["text"].startswith("Two")
    assert all(c["finish_reason"] == "length" for c in body["choices"])
    events = sse_events(streamed)
    assert "".join(e["choices"][0]["text"] for e in events[:-1]) == REPLY
    assert events[0]["choices"][0]["logprobs"]["token_logprobs"] == [-0.5]


def test_embeddings(fake_app):
    client, _, _ = fake_app()
    with client:
        body = client.post("/v1/embeddings", headers=AUTH, json={"model": "fake-embed", "input": ["a b", "c"]}).json()
        b64 = client.post("/v1/embeddings", headers=AUTH, json={"model": "fake-embed", "input": "a b",
                                                                "encoding_format": "base64"}).json()
        wrong = client.post("/v1/embeddings", headers=AUTH, json={"model": "fake-chat", "input": "x"})
        chat_on_encoder = client.post("/v1/chat/completions", headers=AUTH, json={**CHAT, "model": "fake-embed"})
        too_long = client.post("/v1/embeddings", headers=AUTH, json={"model": "fake-embed", "input": "w " * 40})
    assert [d["index"] for d in body["data"]] == [0, 1] and body["usage"]["prompt_tokens"] == 4 + 3
    decoded = struct.unpack("<4f", base64.b64decode(b64["data"][0]["embedding"]))
    assert decoded == pytest.approx(body["data"][0]["embedding"], rel=1e-6)
    assert assert_envelope(wrong, 400, "model")["code"] == "wrong_model_kind"
    assert_envelope(chat_on_encoder, 400, "model")
    assert assert_envelope(too_long, 400, "input")["code"] == "context_length_exceeded"


def test_feedback_rows_read_back_as_preference_data(fake_app, tmp_path):
    from tunelab.config.specs import DataSpec
    from tunelab.data.preference import read_preference

    client, _, spec = fake_app()
    with client:
        rid = client.post("/v1/chat/completions", headers=AUTH, json=CHAT).json()["id"]
        a = client.post("/v1/feedback", headers=AUTH, json={"response_id": rid, "rating": 1})
        b = client.post("/v1/feedback", headers=AUTH, json={"response_id": rid, "chosen": "Hi, how can I help?"})
        c = client.post("/v1/feedback", headers=AUTH, json={"messages": CHAT["messages"], "response": "meh",
                                                            "rating": -1, "comment": "off topic"})
        unknown = client.post("/v1/feedback", headers=AUTH, json={"response_id": "chatcmpl-nope", "rating": 1})
        no_kind = client.post("/v1/feedback", headers=AUTH, json={"response_id": rid})
        bad_choice = client.post("/v1/feedback", headers=AUTH, json={"response_id": rid, "rating": 1,
                                                                     "choice_index": 3})
    assert a.status_code == b.status_code == c.status_code == 200, (a.text, b.text, c.text)
    assert_envelope(unknown, 404, "response_id")
    assert_envelope(no_kind, 400)
    assert_envelope(bad_choice, 400, "choice_index")
    state = tmp_path / "state"
    ratings = [json.loads(x) for x in (state / "feedback_ratings.jsonl").read_text().splitlines()]
    assert [r["label"] for r in ratings] == ["good", "bad"] and ratings[0]["completion"] == REPLY
    assert ratings[0]["model"] == "fake-chat" and ratings[0]["response_id"] == rid
    pairs = [json.loads(x) for x in (state / "feedback_pairs.jsonl").read_text().splitlines()]
    assert pairs[0]["rejected"] == REPLY and pairs[0]["prompt"] == CHAT["messages"]
    spec = DataSpec(path=str(state / "feedback_pairs.jsonl"))
    data = read_preference(state / "feedback_pairs.jsonl", spec)
    assert data.paired and data.pairs[0].chosen == "Hi, how can I help?" and not data.rejects
    unpaired = read_preference(state / "feedback_ratings.jsonl", DataSpec(path=str(state / "feedback_ratings.jsonl")))
    assert [u.label for u in unpaired.unpaired] == [True, False] and not unpaired.rejects


def test_auth(fake_app):
    client, engine, _ = fake_app()
    with client:
        missing = client.post("/v1/chat/completions", json=CHAT)
        wrong = client.post("/v1/chat/completions", json=CHAT, headers={"Authorization": "Bearer nope"})
        basic = client.get("/v1/models", headers={"Authorization": f"Basic {API_KEY}"})
        unknown_path = client.get("/admin")
        unknown_path_authed = client.get("/admin", headers=AUTH)
        openapi = client.get("/openapi.json")
    assert assert_envelope(missing, 401)["code"] == "missing_api_key"
    assert missing.headers["www-authenticate"] == "Bearer"
    assert assert_envelope(wrong, 401)["code"] == "invalid_api_key"
    assert_envelope(basic, 401)
    assert_envelope(unknown_path, 401)  # no key: nothing is revealed, not even which paths exist
    assert_envelope(unknown_path_authed, 404)
    assert_envelope(openapi, 401)
    assert engine.requests == []


def test_create_app_refuses_to_run_without_a_key(tokenizer, monkeypatch):
    from tunelab.config.specs import ServeSpec
    from tunelab.errors import TunelabError
    from tunelab.serving import create_app

    monkeypatch.delenv("TUNELAB_API_KEY", raising=False)
    with pytest.raises(TunelabError, match="API key"):
        create_app(ServeSpec())


def test_overload_and_engine_errors(fake_app):
    client, engine, _ = fake_app()
    with client:
        engine.overloaded = True
        busy = client.post("/v1/chat/completions", headers=AUTH, json=CHAT)
        engine.overloaded, engine.fail = False, "out of memory"
        failed = client.post("/v1/chat/completions", headers=AUTH, json=CHAT)
        streamed = client.post("/v1/chat/completions", headers=AUTH, json={**CHAT, "stream": True})
    assert assert_envelope(busy, 503)["code"] == "overloaded" and busy.headers["retry-after"] == "1"
    err = assert_envelope(failed, 500)
    assert err["type"] == "server_error" and "out of memory" in err["message"]
    events = sse_events(streamed.text)
    assert events[-1]["error"]["code"] == "engine_error" and "[DONE]" not in events


def test_not_ready_answers_503(fake_app):
    client, engine, _ = fake_app()
    with client:
        client.app.state.tunelab.load_error = "weights missing"
        r = client.post("/v1/chat/completions", headers=AUTH, json=CHAT)
        ready = client.get("/ready", headers=AUTH)
    assert assert_envelope(r, 503)["code"] == "load_failed"
    assert "weights missing" in assert_envelope(ready, 503)["message"]


def test_size_limits(fake_app):
    client, engine, _ = fake_app(max_body_bytes=2048, max_header_bytes=2048)
    with client:
        big = client.post("/v1/chat/completions", headers=AUTH,
                          json={**CHAT, "messages": [{"role": "user", "content": "x" * 5000}]})

        def chunks():
            for _ in range(10):
                yield b" " * 500

        chunked = client.post("/v1/chat/completions", headers={**AUTH, "Content-Type": "application/json"},
                              content=chunks())
        headers = client.get("/v1/models", headers={**AUTH, "X-Big": "y" * 3000})
    assert assert_envelope(big, 413)["code"] == "request_too_large"
    assert assert_envelope(chunked, 413)["code"] == "request_too_large"
    assert assert_envelope(headers, 431)["code"] == "headers_too_large"
    assert engine.requests == []


def test_server_caps(fake_app):
    client, engine, _ = fake_app(max_n=2, max_stop=2, max_tokens=50, default_max_tokens=20, max_prompt_tokens=40)
    with client:
        n = client.post("/v1/chat/completions", headers=AUTH, json={**CHAT, "n": 3})
        stops = client.post("/v1/chat/completions", headers=AUTH, json={**CHAT, "stop": ["a", "b", "c"]})
        cap = client.post("/v1/chat/completions", headers=AUTH, json={**CHAT, "max_tokens": 51})
        prompt = client.post("/v1/chat/completions", headers=AUTH,
                             json={**CHAT, "messages": [{"role": "user", "content": "word " * 60}]})
        context = client.post("/v1/completions", headers=AUTH, json={"model": "fake-chat", "prompt": "hi",
                                                                    "max_tokens": 300})
        prompts = client.post("/v1/completions", headers=AUTH, json={"model": "fake-chat", "prompt": ["a", "b", "c"]})
    assert_envelope(n, 400, "n")
    assert_envelope(stops, 400, "stop")
    assert_envelope(cap, 400, "max_tokens")
    assert assert_envelope(prompt, 400, "messages")["code"] == "context_length_exceeded"
    assert assert_envelope(context, 400, "max_tokens")["code"] == "context_length_exceeded"
    assert_envelope(prompts, 400, "n")
    assert engine.requests == []


def test_request_id_and_metrics(fake_app):
    client, _, _ = fake_app()
    with client:
        r = client.post("/v1/chat/completions", headers={**AUTH, "X-Request-ID": "abc-123"}, json=CHAT)
        client.post("/v1/chat/completions", headers=AUTH, json={**CHAT, "model": "nope"})
        text = client.get("/metrics", headers=AUTH).text
    assert r.headers["x-request-id"] == "abc-123"
    for series in ("tunelab_requests_total", "tunelab_request_latency_seconds_bucket",
                   "tunelab_time_to_first_token_seconds_bucket", "tunelab_generated_tokens_total",
                   "tunelab_request_tokens_per_second_bucket", "tunelab_queue_depth", "tunelab_running_requests"):
        assert series in text
    assert 'tunelab_errors_total{type="not_found_error"} 1.0' in text
    assert 'route="/v1/chat/completions",status="200"' in text


def test_openapi_matches_the_error_policy(fake_app):
    client, _, _ = fake_app()
    with client:
        doc = client.get("/openapi.json", headers=AUTH).json()
    ops = {(path, m): op for path, item in doc["paths"].items() for m, op in item.items()}
    assert ("/v1/chat/completions", "post") in ops and ("/v1/feedback", "post") in ops
    for (path, _), op in ops.items():
        assert "422" not in op["responses"]
        if path != "/health":
            assert "401" in op["responses"]
    assert ops[("/health", "get")]["security"] == []
    assert "text/event-stream" in ops[("/v1/chat/completions", "post")]["responses"]["200"]["content"]
    assert doc["components"]["securitySchemes"]["bearer"]["scheme"] == "bearer"


# At least 24 kinds of malformed requests: each is a 4xx with the envelope, and none reaches the engine.
M = "fake-chat"
U = [{"role": "user", "content": "hi"}]
MALFORMED = {
    "invalid json": ("/v1/chat/completions", b'{"model": '),
    "not an object": ("/v1/chat/completions", b"[1, 2]"),
    "invalid utf-8": ("/v1/chat/completions", b'{"model": "fake-chat", "messages": [{"role": "user", "content": "\xff"}]}'),
    "unpaired surrogate": ("/v1/chat/completions", b'{"model": "fake-chat", "messages": [{"role": "user", "content": "a\\ud800"}]}'),
    "missing messages": ("/v1/chat/completions", {"model": M}),
    "missing model": ("/v1/chat/completions", {"messages": U}),
    "empty messages": ("/v1/chat/completions", {"model": M, "messages": []}),
    "unknown role": ("/v1/chat/completions", {"model": M, "messages": [{"role": "wizard", "content": "x"}]}),
    "content wrong type": ("/v1/chat/completions", {"model": M, "messages": [{"role": "user", "content": 5}]}),
    "image content part": ("/v1/chat/completions", {"model": M, "messages": [{"role": "user", "content": [
        {"type": "image_url", "image_url": {"url": "http://x"}}]}]}),
    "unknown field": ("/v1/chat/completions", {"model": M, "messages": U, "tools": []}),
    "model wrong type": ("/v1/chat/completions", {"model": 3, "messages": U}),
    "unknown model": ("/v1/chat/completions", {"model": "gpt-9", "messages": U}),
    "negative max_tokens": ("/v1/chat/completions", {"model": M, "messages": U, "max_tokens": -1}),
    "huge max_tokens": ("/v1/chat/completions", {"model": M, "messages": U, "max_tokens": 10**30}),
    "zero n": ("/v1/chat/completions", {"model": M, "messages": U, "n": 0}),
    "huge n": ("/v1/chat/completions", {"model": M, "messages": U, "n": 10**6}),
    "negative temperature": ("/v1/chat/completions", {"model": M, "messages": U, "temperature": -0.1}),
    "huge temperature": ("/v1/chat/completions", {"model": M, "messages": U, "temperature": 1e9}),
    "nan temperature": ("/v1/chat/completions", b'{"model": "fake-chat", "messages": [{"role": "user", "content": "x"}], "temperature": NaN}'),
    "top_p above 1": ("/v1/chat/completions", {"model": M, "messages": U, "top_p": 1.5}),
    "string as bool": ("/v1/chat/completions", {"model": M, "messages": U, "stream": "yes"}),
    "too many stops": ("/v1/chat/completions", {"model": M, "messages": U, "stop": ["a", "b", "c", "d", "e"]}),
    "empty stop": ("/v1/chat/completions", {"model": M, "messages": U, "stop": ""}),
    "top_logprobs without logprobs": ("/v1/chat/completions", {"model": M, "messages": U, "top_logprobs": 2}),
    "top_logprobs too many": ("/v1/chat/completions", {"model": M, "messages": U, "logprobs": True, "top_logprobs": 99}),
    "logit_bias not a token": ("/v1/chat/completions", {"model": M, "messages": U, "logit_bias": {"abc": 1}}),
    "logit_bias out of range": ("/v1/chat/completions", {"model": M, "messages": U, "logit_bias": {"1": 1000}}),
    "json_schema format": ("/v1/chat/completions", {"model": M, "messages": U, "response_format": {"type": "json_schema"}}),
    "prompt over context": ("/v1/chat/completions", {"model": M, "messages": [{"role": "user", "content": "go " * 1500}]}),
    "empty prompt": ("/v1/completions", {"model": M, "prompt": ""}),
    "prompt wrong type": ("/v1/completions", {"model": M, "prompt": {"a": 1}}),
    "echo with logprobs": ("/v1/completions", {"model": M, "prompt": "x", "echo": True, "logprobs": 1}),
    "embedding empty input": ("/v1/embeddings", {"model": "fake-embed", "input": []}),
    "feedback without rating or chosen": ("/v1/feedback", {"response_id": "x"}),
    "feedback bad rating": ("/v1/feedback", {"response_id": "x", "rating": 5}),
    "text/plain body": ("/v1/chat/completions", ("text/plain", b"hello")),
    "bad content-length": ("/v1/chat/completions", ("bad-length", b"{}")),
}


@pytest.mark.parametrize("kind", list(MALFORMED))
def test_malformed_requests_are_4xx_with_envelope(fake_app, kind):
    assert len(MALFORMED) >= 24
    client, engine, _ = fake_app()
    path, body = MALFORMED[kind]
    headers = {**AUTH, "Content-Type": "application/json"}
    with client:
        if isinstance(body, tuple) and body[0] == "text/plain":
            r = client.post(path, headers={**AUTH, "Content-Type": "text/plain"}, content=body[1])
        elif isinstance(body, tuple):
            r = client.post(path, headers={**headers, "Content-Length": "abc"}, content=body[1])
        elif isinstance(body, bytes):
            r = client.post(path, headers=headers, content=body)
        else:
            r = client.post(path, headers=headers, content=json.dumps(body))
    assert 400 <= r.status_code < 500, (kind, r.status_code, r.text)
    assert set(r.json()["error"]) == {"message", "type", "param", "code"}
    assert engine.requests == []
