"""Storage: keys, usage, audit and feedback in SQLite by default, and in PostgreSQL shared by two server
replicas (a throwaway local PostgreSQL server is started when its binaries are installed)."""

from __future__ import annotations

import glob
import json
import os
import shutil
import signal
import subprocess
import tempfile
import threading
import time
from pathlib import Path

import pytest
from serving_helpers import API_KEY, FakeEmbedder, FakeEngine, fake_catalog, free_port
from sqlalchemy import select
from test_handlers import CHAT, assert_envelope

from tunelab.config.specs import ServeSpec
from tunelab.errors import TunelabError
from tunelab.serving.keystore import KeyStore
from tunelab.serving.storage import (
    DATABASE_ENV,
    Database,
    api_keys,
    audit_log,
    export_feedback,
    feedback,
    key_usage,
    resolve_database_url,
)


def table(db: Database, t) -> list[dict]:
    with db.begin() as conn:
        return [dict(r._mapping) for r in conn.execute(select(t))]


def bearer(key: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {key}"}


def make_client(tokenizer, state_dir: Path, **settings):
    from fastapi.testclient import TestClient

    from tunelab.serving import create_app

    spec = ServeSpec(state_dir=str(state_dir), **settings)
    app = create_app(spec, engine=FakeEngine(tokenizer), catalog=fake_catalog(tokenizer), embedder=FakeEmbedder())
    return TestClient(app)


def test_feedback_rows_are_stored_in_the_database_and_export_as_jsonl(fake_app, tmp_path):
    from tunelab.config.specs import DataSpec
    from tunelab.data.preference import read_preference

    url = f"sqlite:///{tmp_path / 'serve.db'}"
    client, _, spec = fake_app(database=url)
    with client:
        answer = client.post("/v1/chat/completions", headers={"Authorization": f"Bearer {API_KEY}"}, json=CHAT).json()
        auth = {"Authorization": f"Bearer {API_KEY}"}
        rated = client.post("/v1/feedback", headers=auth, json={"response_id": answer["id"], "rating": 1})
        pair = client.post("/v1/feedback", headers=auth, json={"response_id": answer["id"], "chosen": "Hi, Ann!"})
    assert rated.status_code == 200 and rated.json()["stored"] == ["sqlite:feedback/ratings"]
    assert pair.json()["stored"] == ["sqlite:feedback/pairs"]
    assert not Path(spec.state_dir).exists()  # nothing went to the JSONL files
    db = Database(url)
    try:
        rows = {r["kind"]: r for r in table(db, feedback)}
        assert rows["ratings"]["rating"] == 1 and rows["ratings"]["response_id"] == answer["id"]
        assert export_feedback(db, "ratings", tmp_path / "ratings.jsonl") == 1
        assert export_feedback(db, "pairs", tmp_path / "pairs.jsonl") == 1
        with pytest.raises(TunelabError, match="unknown feedback kind"):
            export_feedback(db, "likes", tmp_path / "x.jsonl")
    finally:
        db.close()
    # the exported files are the JSONL store's: training reads them as preference data directly
    reply = answer["choices"][0]["message"]["content"]
    pairs = read_preference(tmp_path / "pairs.jsonl", DataSpec(path=str(tmp_path / "pairs.jsonl")))
    assert pairs.pairs[0].chosen == "Hi, Ann!" and pairs.pairs[0].rejected == reply and not pairs.rejects
    ratings = read_preference(tmp_path / "ratings.jsonl", DataSpec(path=str(tmp_path / "ratings.jsonl")))
    assert [u.label for u in ratings.unpaired] == [True] and not ratings.rejects
    assert json.loads((tmp_path / "ratings.jsonl").read_text())["completion"] == reply


def test_the_default_database_is_used_when_keys_exist(tokenizer, tmp_path, monkeypatch):
    from tunelab.serving.operations import database_has_keys

    monkeypatch.delenv("TUNELAB_API_KEY", raising=False)
    monkeypatch.delenv(DATABASE_ENV, raising=False)
    state = tmp_path / "state"
    assert not database_has_keys(ServeSpec(state_dir=str(state)))
    assert not (state / "serve.db").exists()  # looking does not create the file
    db = Database(resolve_database_url(None, state, must_exist=False))
    key, _ = KeyStore(db).create("app")
    db.close()
    assert database_has_keys(ServeSpec(state_dir=str(state)))
    with make_client(tokenizer, state) as client:
        assert client.get("/v1/models", headers=bearer(key)).status_code == 200
    assert oct((state / "serve.db").stat().st_mode & 0o777) == "0o600"


def test_database_url_resolution(tmp_path, monkeypatch):
    monkeypatch.delenv(DATABASE_ENV, raising=False)
    assert resolve_database_url(None, tmp_path, must_exist=True) is None
    assert resolve_database_url(None, tmp_path, must_exist=False) == f"sqlite:///{tmp_path.resolve() / 'serve.db'}"
    monkeypatch.setenv(DATABASE_ENV, "postgresql+psycopg://u@h/db")
    assert resolve_database_url(None, tmp_path, must_exist=True) == "postgresql+psycopg://u@h/db"
    assert resolve_database_url("sqlite:///x.db", tmp_path, must_exist=True) == "sqlite:///x.db"


def test_unreachable_database_is_one_error_without_the_password():
    with pytest.raises(TunelabError) as e:
        Database(f"postgresql+psycopg://tl:s3cret-pw@127.0.0.1:{free_port()}/tunelab")
    assert "cannot open the database" in str(e.value) and "s3cret-pw" not in str(e.value)


def test_usage_counts_are_exact_with_concurrent_writers(tmp_path):
    url = f"sqlite:///{tmp_path / 'serve.db'}"
    replicas = [Database(url), Database(url)]  # two engines on one file, as two server processes would be
    _, info = KeyStore(replicas[0]).create("busy", tokens_per_day=10**9)

    def work(db: Database) -> None:
        store = KeyStore(db)
        for _ in range(25):
            with db.begin() as conn:
                store.charge(conn, info.id, 3)

    threads = [threading.Thread(target=work, args=(replicas[i % 2],)) for i in range(6)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    (usage,) = table(replicas[0], key_usage)
    assert (usage["requests"], usage["tokens"]) == (150, 450)
    looked_up = KeyStore(replicas[1]).lookup(info.id)[0]
    assert (looked_up.requests, looked_up.tokens, looked_up.tokens_today) == (150, 450, 450)
    for db in replicas:
        db.close()


# ------------------------------------------------------------------------------------------ PostgreSQL
def _pg_binary(name: str) -> str | None:
    return shutil.which(name) or next(iter(sorted(glob.glob(f"/usr/lib/postgresql/*/bin/{name}"))), None)


@pytest.fixture(scope="module")
def postgres_url():
    """A throwaway PostgreSQL server on a Unix socket (skipped when PostgreSQL or psycopg is missing)."""
    pytest.importorskip("psycopg", reason="PostgreSQL tests need psycopg (pip install 'psycopg[binary]')")
    initdb, postgres = _pg_binary("initdb"), _pg_binary("postgres")
    if not initdb or not postgres:
        pytest.skip("PostgreSQL server binaries (initdb, postgres) are not installed")
    user = None
    if os.geteuid() == 0:  # PostgreSQL refuses to run as root
        import pwd

        try:
            user = pwd.getpwnam("postgres")
        except KeyError:
            pytest.skip("running as root and there is no 'postgres' user to run PostgreSQL as")
    root = Path(tempfile.mkdtemp(prefix="tunelab-pg-"))
    if user is not None:
        os.chown(root, user.pw_uid, user.pw_gid)
    as_user = {"user": user.pw_uid, "group": user.pw_gid} if user is not None else {}
    subprocess.run([initdb, "-D", str(root / "data"), "-U", "tunelab", "--auth=trust", "-E", "UTF8",
                    "--no-sync"], check=True,
                   capture_output=True, **as_user)
    port = free_port()
    proc = subprocess.Popen([postgres, "-D", str(root / "data"), "-k", str(root), "-p", str(port),
                             "-c", "listen_addresses=", "-c", "fsync=off"], stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL, **as_user)
    url = f"postgresql+psycopg://tunelab@/postgres?host={root}&port={port}"
    try:
        deadline = time.monotonic() + 60
        while not (root / f".s.PGSQL.{port}").exists() and proc.poll() is None and time.monotonic() < deadline:
            time.sleep(0.2)
        Database(url).close()  # waits for the server to accept connections (or fails the fixture loudly)
        yield url
    finally:
        proc.send_signal(signal.SIGINT)  # PostgreSQL's "fast" shutdown: no waiting for idle clients
        proc.wait(timeout=30)
        shutil.rmtree(root, ignore_errors=True)


def test_postgresql_is_shared_by_two_replicas(postgres_url, tokenizer, tmp_path, capsys):
    from tunelab.cli.main import main

    assert main(["keys", "create", "shared", "--tokens-per-day", "20", "--db", postgres_url]) == 0
    key = capsys.readouterr().out.strip()
    assert main(["keys", "create", "feedback-ui", "--db", postgres_url]) == 0
    other = capsys.readouterr().out.strip()
    a = make_client(tokenizer, tmp_path / "a", database=postgres_url)
    b = make_client(tokenizer, tmp_path / "b", database=postgres_url)
    with a, b:
        first = a.post("/v1/chat/completions", headers=bearer(key), json=CHAT)
        over_on_b = b.post("/v1/chat/completions", headers=bearer(key), json=CHAT)  # the quota is shared
        rated = b.post("/v1/feedback", headers=bearer(other), json={
            "messages": CHAT["messages"], "response": "Hello!", "rating": -1})
        key_id = key.split("_")[1]
        assert main(["keys", "revoke", key_id, "--db", postgres_url]) == 0
        revoked = [c.get("/v1/models", headers=bearer(key)) for c in (a, b)]
    assert first.status_code == 200 and first.json()["usage"]["total_tokens"] > 20
    assert assert_envelope(over_on_b, 429)["code"] == "quota_exceeded"
    assert rated.json()["stored"] == ["postgresql:feedback/ratings"]
    assert [assert_envelope(r, 401)["code"] for r in revoked] == ["revoked_api_key"] * 2
    db = Database(postgres_url)
    try:
        statuses = sorted(r["status"] for r in table(db, audit_log) if r["kind"] == "request")
        assert statuses == [200, 200, 401, 401, 429]  # chat, feedback, revoked x2, over quota
        row = next(r for r in table(db, api_keys) if r["name"] == "shared")
        assert row["revoked"] is not None and row["tokens"] == first.json()["usage"]["total_tokens"]
        assert len(table(db, feedback)) == 1
    finally:
        db.close()
