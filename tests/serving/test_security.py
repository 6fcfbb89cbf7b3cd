"""Security: database API keys (CLI, hashing, constant-time check, revocation), per-key rate limits and
quotas, authentication on every route, CORS, the access/audit log (no prompt text unless enabled, then
PII-redacted) and the body read timeout."""

from __future__ import annotations

import asyncio
import json
import logging

import pytest
from serving_helpers import AUTH, REPLY
from sqlalchemy import select
from test_handlers import CHAT, assert_envelope, sse_events

from tunelab.cli.main import main
from tunelab.serving.keystore import KeyStore, parse_key, verify_secret
from tunelab.serving.storage import Database, api_keys, audit_log, key_usage

EMAIL = "jane.doe@example.com"


def cli(capsys, *args: str) -> tuple[int, str, str]:
    code = main(list(args))
    out = capsys.readouterr()
    return code, out.out, out.err


@pytest.fixture()
def db_url(tmp_path) -> str:
    return f"sqlite:///{tmp_path / 'keys.db'}"


def new_key(url: str, **limits) -> tuple[str, str]:
    db = Database(url)
    try:
        key, info = KeyStore(db).create("app", **limits)
    finally:
        db.close()
    return key, info.id


def rows(url: str, table, *where) -> list[dict]:
    db = Database(url)
    try:
        with db.begin() as conn:
            return [dict(r._mapping) for r in conn.execute(select(table).where(*where))]
    finally:
        db.close()


def bearer(key: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {key}"}


def test_keys_cli_create_list_revoke(capsys, db_url, tmp_path):
    code, out, err = cli(capsys, "keys", "create", "support-bot", "--rpm", "30", "--tokens-per-day", "5000",
                         "--db", db_url)
    key = out.strip()
    assert code == 0 and parse_key(key) is not None and "shown this once" in err
    key_id = parse_key(key)[0]
    code, out, err = cli(capsys, "keys", "list", "--db", db_url)
    assert code == 0 and key_id in err and "support-bot" in err and "5,000" in err
    assert key not in out + err  # the key is shown once, at creation
    assert cli(capsys, "keys", "revoke", key_id, "--db", db_url)[0] == 0
    (row,) = rows(db_url, api_keys)
    assert row["revoked"] is not None and row["rpm"] == 30 and row["tokens_per_day"] == 5000
    # the default database is STATE_DIR/serve.db, the file `tunelab serve` picks up
    assert cli(capsys, "keys", "create", "other", "--state-dir", str(tmp_path / "st"))[0] == 0
    assert (tmp_path / "st" / "serve.db").is_file()


@pytest.mark.parametrize(("args", "message"), [
    (["keys", "revoke", "0123456789ab"], "no key with id"),
    (["keys", "create"], "needs the key's name"),
    (["keys", "revoke"], "needs the key's id"),
    (["keys", "create", "x", "--rpm", "0"], "rpm must be at least 1"),
    (["keys", "list", "--rpm", "3"], "apply to create"),
    (["keys", "list", "--db", "mysql://u@h/db"], "not supported"),
    (["keys", "list", "--db", "not a url"], "not a database URL"),
    (["keys", "list", "--db", "sqlite://"], "in-memory"),
])
def test_keys_cli_bad_input_is_one_line_exit_2(capsys, db_url, args, message):
    args = args if "--db" in args else [*args, "--db", db_url]
    code, _, err = cli(capsys, *args)
    assert code == 2 and message in err and len(err.strip().splitlines()) == 1 and "Traceback" not in err


def test_revoking_twice_is_an_error(capsys, db_url):
    _, key_id = new_key(db_url)
    assert cli(capsys, "keys", "revoke", key_id, "--db", db_url)[0] == 0
    code, _, err = cli(capsys, "keys", "revoke", key_id, "--db", db_url)
    assert code == 2 and "already revoked" in err


def test_keys_are_hashed_at_rest(db_url, tmp_path):
    key, key_id = new_key(db_url)
    secret = parse_key(key)[1]
    raw = (tmp_path / "keys.db").read_bytes() + b"".join(p.read_bytes() for p in tmp_path.glob("keys.db-*"))
    assert secret.encode() not in raw and key.encode() not in raw
    (row,) = rows(db_url, api_keys)
    assert row["hash"].startswith("scrypt$") and secret not in row["hash"]
    assert verify_secret(secret, row["hash"]) and not verify_secret(secret[:-1] + "x", row["hash"])
    # salted: the same secret hashes differently each time
    from tunelab.serving.keystore import hash_secret

    assert hash_secret(secret) != hash_secret(secret)


def test_key_check_uses_constant_time_comparison(db_url, monkeypatch):
    import tunelab.serving.keystore as ks
    from tunelab.serving.errors import APIError

    calls = []
    real = ks.hmac.compare_digest

    def spy(a, b):
        calls.append((len(a), len(b)))
        return real(a, b)

    monkeypatch.setattr(ks.hmac, "compare_digest", spy)
    key, _ = new_key(db_url)
    db = Database(db_url)
    auth = ks.KeyStoreAuthenticator(KeyStore(db))
    try:
        assert asyncio.run(auth.authenticate(key)).key_id == parse_key(key)[0]
        with pytest.raises(APIError) as e:
            asyncio.run(auth.authenticate(key[:-4] + "AAAA"))
    finally:
        db.close()
    assert e.value.status == 401 and calls == [(32, 32), (32, 32)]


def test_database_keys_authenticate_and_revoked_key_gets_401(fake_app, db_url, capsys):
    key, key_id = new_key(db_url)
    other_id = new_key(db_url)[1]
    client, engine, _ = fake_app(database=db_url)
    with client:
        ok = client.post("/v1/chat/completions", headers=bearer(key), json=CHAT)
        static = client.get("/v1/models", headers=AUTH)  # the static key still works beside the database
        wrong_secret = client.get("/v1/models", headers=bearer(key[:-6] + "abcdef"))
        unknown_id = client.get("/v1/models", headers=bearer(f"tlk_{'0' * 12}_{'a' * 43}"))
        assert cli(capsys, "keys", "revoke", key_id, "--db", db_url)[0] == 0
        revoked = client.get("/v1/models", headers=bearer(key))
        other = client.get("/v1/models", headers=bearer(key.replace(key_id, other_id)))
    assert ok.status_code == 200 and ok.json()["choices"][0]["message"]["content"] == REPLY
    assert static.status_code == 200
    assert assert_envelope(wrong_secret, 401)["code"] == "invalid_api_key"
    assert assert_envelope(unknown_id, 401)["code"] == "invalid_api_key"
    assert assert_envelope(revoked, 401)["code"] == "revoked_api_key" and revoked.headers["www-authenticate"] == "Bearer"
    assert assert_envelope(other, 401)["code"] == "invalid_api_key"  # another key's id with this secret
    assert len(engine.requests) == 1


def test_database_alone_authenticates_without_a_static_key(tokenizer, db_url, tmp_path, monkeypatch):
    from fastapi.testclient import TestClient
    from serving_helpers import FakeEmbedder, FakeEngine, fake_catalog

    from tunelab.config.specs import ServeSpec
    from tunelab.errors import TunelabError
    from tunelab.serving import create_app

    monkeypatch.delenv("TUNELAB_API_KEY", raising=False)
    spec = ServeSpec(state_dir=str(tmp_path / "st"), database=db_url)
    with pytest.raises(TunelabError, match="tunelab keys create"):  # a database without keys: no way in
        create_app(spec, engine=FakeEngine(tokenizer), catalog=fake_catalog(tokenizer))
    key, _ = new_key(db_url)
    app = create_app(spec, engine=FakeEngine(tokenizer), catalog=fake_catalog(tokenizer), embedder=FakeEmbedder())
    with TestClient(app) as client:
        assert client.get("/v1/models", headers=bearer(key)).status_code == 200
        assert assert_envelope(client.get("/v1/models", headers=AUTH), 401)["code"] == "invalid_api_key"


def test_rate_limit_answers_429_with_retry_after(fake_app, db_url):
    key, _ = new_key(db_url, rpm=2)
    unlimited, _ = new_key(db_url)
    client, engine, _ = fake_app(database=db_url)
    with client:
        first = [client.post("/v1/chat/completions", headers=bearer(key), json=CHAT) for _ in range(2)]
        limited = client.post("/v1/chat/completions", headers=bearer(key), json=CHAT)
        others = [client.get("/v1/models", headers=bearer(unlimited)) for _ in range(5)]
    assert [r.status_code for r in first] == [200, 200]
    err = assert_envelope(limited, 429)
    assert err["code"] == "rate_limit_exceeded" and err["type"] == "rate_limit_error"
    assert 1 <= int(limited.headers["retry-after"]) <= 30  # one request per 30 s refills at rpm=2
    assert [r.status_code for r in others] == [200] * 5  # limits are per key
    assert len(engine.requests) == 2


def test_token_quota_is_charged_and_exhausted(fake_app, db_url):
    key, key_id = new_key(db_url, tokens_per_day=20)
    client, _, _ = fake_app(database=db_url)
    with client:
        first = client.post("/v1/chat/completions", headers=bearer(key), json=CHAT)
        over = client.post("/v1/chat/completions", headers=bearer(key), json=CHAT)
    used = first.json()["usage"]["total_tokens"]
    assert used > 20
    (usage,) = rows(db_url, key_usage, key_usage.c.key_id == key_id)
    assert usage["tokens"] == used and usage["requests"] == 2  # the refused request counts as a request
    err = assert_envelope(over, 429)
    assert err["code"] == "quota_exceeded" and f"{used} of its 20 tokens" in err["message"]
    assert 1 <= int(over.headers["retry-after"]) <= 86400  # seconds to 00:00 UTC


def test_streamed_tokens_are_charged(fake_app, db_url):
    key, key_id = new_key(db_url)
    client, _, _ = fake_app(database=db_url)
    with client:
        r = client.post("/v1/chat/completions", headers=bearer(key),
                        json={**CHAT, "stream": True, "stream_options": {"include_usage": True}})
    usage = sse_events(r.text)[-2]["usage"]
    (row,) = rows(db_url, audit_log, audit_log.c.kind == "request", audit_log.c.key_id == key_id)
    assert (row["prompt_tokens"], row["completion_tokens"]) == (usage["prompt_tokens"], usage["completion_tokens"])
    assert rows(db_url, api_keys)[0]["tokens"] == usage["total_tokens"]


def test_every_route_but_health_needs_a_key(fake_app):
    client, engine, _ = fake_app()
    documented = list(client.app.openapi()["paths"])
    paths = sorted({p.replace("{model_id}", "fake-chat") for p in documented} | {"/openapi.json", "/docs"})
    assert {"/health", "/ready", "/metrics", "/v1/chat/completions", "/openapi.json"} <= set(paths)
    with client:
        answers = {p: (client.get(p).status_code, client.post(p, json={}).status_code) for p in paths}
    assert answers.pop("/health")[0] == 200
    assert all(codes == (401, 401) for codes in answers.values()), answers
    assert engine.requests == []


def test_audit_rows_have_no_prompt_text_by_default(fake_app, db_url, caplog):
    key, key_id = new_key(db_url)
    client, _, _ = fake_app(database=db_url)
    body = {**CHAT, "messages": [{"role": "user", "content": f"Mail me at {EMAIL} please"}]}
    with caplog.at_level(logging.INFO, logger="tunelab.access"), client:
        ok = client.post("/v1/chat/completions", headers={**bearer(key), "X-Request-ID": "req-1"}, json=body)
        client.post("/v1/chat/completions", json=body)  # no key
        client.post("/v1/chat/completions", headers=bearer(key), json={**body, "model": "nope"})
    audit = {r["request_id"]: r for r in rows(db_url, audit_log, audit_log.c.kind == "request")}
    assert len(audit) == 3
    row = audit["req-1"]
    usage = ok.json()["usage"]
    assert (row["key_id"], row["model"], row["status"], row["method"], row["path"]) == (
        key_id, "fake-chat", 200, "POST", "/v1/chat/completions")
    assert (row["prompt_tokens"], row["completion_tokens"]) == (usage["prompt_tokens"], usage["completion_tokens"])
    assert row["latency_ms"] > 0 and row["prompt_text"] is None and row["response_text"] is None
    refused = next(r for r in audit.values() if r["status"] == 401)
    assert refused["key_id"] is None and refused["error"] == "missing_api_key"
    unknown = next(r for r in audit.values() if r["status"] == 404)
    assert unknown["error"] == "model_not_found" and unknown["model"] == "nope" and unknown["key_id"] == key_id
    lines = [json.loads(r.getMessage()) for r in caplog.records if r.name == "tunelab.access"]
    assert [ln["request_id"] for ln in lines][0] == "req-1" and len(lines) == 3
    assert EMAIL not in caplog.text and "Mail me" not in caplog.text
    assert rows(db_url, audit_log, audit_log.c.kind == "key_created")[0]["key_id"] == key_id


def test_logged_prompts_are_pii_redacted(fake_app, db_url, caplog):
    key, _ = new_key(db_url)
    client, _, _ = fake_app(database=db_url, log_prompts=True)
    body = {**CHAT, "messages": [{"role": "user", "content": f"Mail me at {EMAIL} please"}]}
    with caplog.at_level(logging.INFO, logger="tunelab.access"), client:
        client.post("/v1/chat/completions", headers={**bearer(key), "X-Request-ID": "req-2"}, json=body)
        client.post("/v1/completions", headers={**bearer(key), "X-Request-ID": "req-3"},
                    json={"model": "fake-chat", "prompt": f"to {EMAIL}:", "max_tokens": 3})
    audit = {r["request_id"]: r for r in rows(db_url, audit_log, audit_log.c.kind == "request")}
    chat, text = audit["req-2"], audit["req-3"]
    assert json.loads(chat["prompt_text"]) == [{"role": "user", "content": "Mail me at <EMAIL> please"}]
    assert json.loads(chat["response_text"]) == [REPLY]
    assert json.loads(text["prompt_text"]) == "to <EMAIL>:" and len(json.loads(text["response_text"])) == 1
    assert EMAIL not in caplog.text and "<EMAIL>" in caplog.text


def test_access_log_without_a_database(fake_app, caplog):
    client, _, _ = fake_app()
    with caplog.at_level(logging.INFO, logger="tunelab.access"), client:
        client.post("/v1/chat/completions", headers={**AUTH, "X-Request-ID": "solo"}, json=CHAT)
    (line,) = [json.loads(r.getMessage()) for r in caplog.records if r.name == "tunelab.access"]
    assert line["request_id"] == "solo" and line["key_id"] == "static" and line["status"] == 200
    assert line["completion_tokens"] > 0 and "prompt_text" not in line


def test_secure_defaults_and_cors(fake_app):
    from tunelab.config.specs import ServeSpec

    spec = ServeSpec()
    assert spec.host == "127.0.0.1" and spec.cors_origins == [] and spec.public_paths == ["/health"]
    assert spec.log_prompts is False
    preflight = {"Origin": "https://app.example.com", "Access-Control-Request-Method": "POST",
                 "Access-Control-Request-Headers": "authorization,content-type"}
    client, _, _ = fake_app()
    with client:
        off = client.options("/v1/chat/completions", headers=preflight)
        plain = client.get("/v1/models", headers={**AUTH, "Origin": "https://app.example.com"})
    assert off.status_code == 401 and "access-control-allow-origin" not in off.headers
    assert "access-control-allow-origin" not in plain.headers
    client, _, _ = fake_app(cors_origins=["https://app.example.com"])
    with client:
        on = client.options("/v1/chat/completions", headers=preflight)
        other = client.options("/v1/chat/completions", headers={**preflight, "Origin": "https://evil.example"})
        get = client.get("/v1/models", headers={**AUTH, "Origin": "https://app.example.com"})
        no_key = client.get("/v1/models", headers={"Origin": "https://app.example.com"})
    assert on.status_code == 200 and on.headers["access-control-allow-origin"] == "https://app.example.com"
    assert "authorization" in on.headers["access-control-allow-headers"].lower()
    assert other.status_code == 400 and "access-control-allow-origin" not in other.headers
    assert get.status_code == 200 and get.headers["access-control-allow-origin"] == "https://app.example.com"
    assert no_key.status_code == 401  # CORS lets a browser ask; the key still decides


def test_bad_security_settings_are_refused():
    from tunelab.errors import TunelabError
    from tunelab.serving.settings import serve_settings

    with pytest.raises(TunelabError, match="cors_origins"):
        serve_settings("m", [], ["cors_origins=[app.example.com]"])
    with pytest.raises(TunelabError, match="shutdown_grace_s"):
        serve_settings("m", [], ["shutdown_grace_s=0"])
    with pytest.raises(TunelabError, match="did you mean 'log_prompts'"):
        serve_settings("m", [], ["log_prompt=true"])


def test_slow_request_body_gets_408():
    from tunelab.serving.lifecycle import ReadTimeoutMiddleware

    async def app(scope, receive, send):
        while (await receive()).get("more_body"):
            pass
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": b"ok"})

    async def run(trickle: bool) -> list:
        sent, first = [], True

        async def receive():
            nonlocal first
            if first or not trickle:
                first = False
                return {"type": "http.request", "body": b"{", "more_body": trickle}
            await asyncio.sleep(3600)  # the rest of the body never comes

        async def send(message):
            sent.append(message)

        await ReadTimeoutMiddleware(app, timeout_s=0.2)({"type": "http", "path": "/", "headers": []}, receive, send)
        return sent

    slow, fast = asyncio.run(run(True)), asyncio.run(run(False))
    assert slow[0]["status"] == 408 and json.loads(slow[1]["body"])["error"]["code"] == "body_timeout"
    assert fast[0]["status"] == 200


def test_serve_with_a_database_and_no_key_refuses_to_start(capsys, tiny_model_dir, db_url, monkeypatch):
    # A configured database means keys are managed there: no session key is made (and printed into logs).
    monkeypatch.delenv("TUNELAB_API_KEY", raising=False)
    code, out, err = cli(capsys, "serve", str(tiny_model_dir), "--db", db_url, "--port", "1")
    assert code == 2 and "needs an API key" in err and "tunelab keys create" in err
    assert "tlk_" not in out + err and "tl-" not in out + err


def test_unreadable_key_database_answers_503_not_500(fake_app, db_url, tmp_path):
    key, _ = new_key(db_url)
    client, engine, _ = fake_app(database=db_url)
    with client:
        assert client.get("/v1/models", headers=bearer(key)).status_code == 200
        db = Database(db_url)
        with db.begin() as conn:  # the table vanishing stands for any database failure
            conn.exec_driver_sql("ALTER TABLE api_keys RENAME TO api_keys_gone")
        db.close()
        r = client.get("/v1/models", headers=bearer(key))
        static = client.get("/v1/models", headers=AUTH)  # a static key never reaches the database
    err = assert_envelope(r, 503)
    assert err["code"] == "auth_unavailable" and r.headers["retry-after"] == "5"
    assert static.status_code == 200
