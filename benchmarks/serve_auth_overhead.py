"""What the security and audit layers of `tunelab serve` cost per request, side by side in one process.

Three configurations of the same app on a scripted engine that answers at once (so only the layers are
timed), each called N times through the in-process ASGI test client:
  1. static key, no access log (the baseline: request id, limits, routing);
  2. static key with the access log (one JSON line per request);
  3. a database key in SQLite: key row read, rate limit and quota check, one transaction for the audit row
     and the usage counters.

    python benchmarks/serve_auth_overhead.py              # 300 requests per route and configuration
    python benchmarks/serve_auth_overhead.py -n 1000
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests" / "serving"))

CHAT = {"model": "fake-chat", "messages": [{"role": "user", "content": "Hi!"}], "max_tokens": 4}


def measure(client, method: str, path: str, headers: dict, n: int, **kw) -> list[float]:
    for _ in range(20):  # warm-up
        client.request(method, path, headers=headers, **kw)
    times = []
    for _ in range(n):
        t = time.perf_counter()
        r = client.request(method, path, headers=headers, **kw)
        times.append(time.perf_counter() - t)
        if r.status_code != 200:
            raise SystemExit(f"{method} {path}: {r.status_code} {r.text}")
    return times


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("-n", type=int, default=300, help="requests per route and configuration")
    args = parser.parse_args()
    from fastapi.testclient import TestClient
    from serving_helpers import API_KEY, FakeEmbedder, FakeEngine, fake_catalog

    from tunelab.config.specs import ServeSpec
    from tunelab.models import load_tokenizer
    from tunelab.serving import create_app
    from tunelab.serving.keystore import KeyStore
    from tunelab.serving.storage import Database

    tok = load_tokenizer("smollm2-135m-instruct")
    tmp = Path(tempfile.mkdtemp(prefix="tunelab-auth-bench-"))
    url = f"sqlite:///{tmp / 'serve.db'}"
    db = Database(url)
    key, _ = KeyStore(db).create("bench", rpm=10**6, tokens_per_day=10**12)
    db.close()
    static = {"Authorization": f"Bearer {API_KEY}"}
    configs = [("static key, no access log", {"access_log": False}, static),
               ("static key + access log", {}, static),
               ("database key (SQLite) + audit row", {"database": url, "access_log": False},
                {"Authorization": f"Bearer {key}"})]
    print(f"{'configuration':36s} {'route':28s} {'median ms':>9s} {'p95 ms':>8s}")
    for i, (label, settings, headers) in enumerate(configs):
        app = create_app(ServeSpec(state_dir=str(tmp / str(i)), **settings), engine=FakeEngine(tok),
                         catalog=fake_catalog(tok), embedder=FakeEmbedder(), api_key=API_KEY)
        with TestClient(app) as client:
            for method, path, kw in (("GET", "/v1/models", {}), ("POST", "/v1/chat/completions", {"json": CHAT})):
                t = sorted(measure(client, method, path, headers, args.n, **kw))
                print(f"{label:36s} {method + ' ' + path:28s} {statistics.median(t) * 1000:9.2f} "
                      f"{t[int(0.95 * len(t))] * 1000:8.2f}")


if __name__ == "__main__":
    main()
