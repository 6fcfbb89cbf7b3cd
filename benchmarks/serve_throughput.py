"""Serving throughput: `tunelab serve` versus sequential Transformers `generate`, side by side.

Same model, dtype, threads, prompts (real user instructions from ../shared/data when present), greedy
decoding and output budget for every contender. The baseline is the simplest honest server: one request at
a time through `model.generate` (KV cache, no batching) in its own process. The servers run at the same
time in their own processes (idle ones cost nothing) and are loaded by concurrent streaming clients (the
official `openai` async client): closed loop, every client sends its next request when its last one ends.
Each concurrency level visits every contender, the baseline included, in a rotating order, and a level's
"x base" divides by the baseline measured in that same round: the machine's background load (shared
cores) changes by 1.5x within minutes here, and this keeps the ratios to conditions that were alike. `--peer` adds `transformers serve` (the server that ships with Transformers) in both modes.

Reported per contender and level: output tokens/s (real generated tokens, from `usage`), p50/p95 time to
first token, p50/p95 request latency, errors, and the server process's peak RSS. `--soak S` then runs
tunelab serve at concurrency 16 for S seconds and reports errors and RSS over time (flat = no leak).

    python benchmarks/serve_throughput.py                          # levels 1,4,8,16 (~5 min on 2 cores)
    python benchmarks/serve_throughput.py --levels 1,8 --max-tokens 32      # quick look
    python benchmarks/serve_throughput.py --peer --soak 300 --out serve.json
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

SHARED = Path(__file__).resolve().parents[2] / "shared" / "data"
PROMPTS_FILE = SHARED / "self_instruct_user_oriented" / "user_oriented_instructions.jsonl"
FALLBACK_PROMPTS = [
    "Explain what a hash table is in two sentences.", "Write a haiku about autumn rain.",
    "Give three tips for writing a clear email.", "What causes the seasons on Earth?",
    "Summarise the plot of Romeo and Juliet in one paragraph.", "List five fruits that are high in vitamin C.",
    "How do I reverse a list in Python?", "Describe a sunset to someone who has never seen one.",
]
KEY = "bench-key"


def load_prompts(n: int) -> list[str]:
    """The first `n` instructions (with their first input) of the self-instruct user-oriented set."""
    if not PROMPTS_FILE.is_file():
        return [FALLBACK_PROMPTS[i % len(FALLBACK_PROMPTS)] for i in range(n)]
    out = []
    for line in PROMPTS_FILE.read_text(encoding="utf-8").splitlines():
        row = json.loads(line)
        inst = (row.get("instances") or [{}])[0].get("input", "")
        out.append(row["instruction"] + (f"\n\n{inst}" if inst else ""))
        if len(out) == n:
            break
    return out


def free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def pct(values: list[float], q: float) -> float:
    if not values:
        return float("nan")
    s = sorted(values)
    return s[min(len(s) - 1, max(0, round(q / 100 * (len(s) - 1))))]


# ------------------------------------------------------------------------------------------ baseline
def baseline_worker(model_name: str, dtype: str, max_tokens: int, threads: int | None) -> None:
    """Sequential `generate`, one request at a time. Reads `{"start", "n"}` lines on stdin, answers each
    with one JSON line (per-request tokens, latency, TTFT; tokens/s; peak RSS)."""
    import torch
    from transformers.generation.streamers import BaseStreamer

    from tunelab.evaluation.generate import render_prompt, stop_token_ids
    from tunelab.models import load_causal_lm, load_tokenizer

    if threads:
        torch.set_num_threads(threads)
    model = load_causal_lm(model_name, dtype=torch.bfloat16 if dtype == "bf16" else torch.float32)
    tok = load_tokenizer(model_name)
    prompts = load_prompts(64)

    class FirstToken(BaseStreamer):
        def __init__(self):
            self.calls, self.first = 0, None

        def put(self, value):
            self.calls += 1
            if self.calls == 2 and self.first is None:  # call 1 is the prompt, call 2 the first new token
                self.first = time.perf_counter()

        def end(self):
            pass

    def one(p: str) -> dict:
        ids = tok(render_prompt(tok, [{"role": "user", "content": p}]), return_tensors="pt", add_special_tokens=False)
        streamer = FirstToken()
        t0 = time.perf_counter()
        out = model.generate(**ids, max_new_tokens=max_tokens, do_sample=False, streamer=streamer,
                             eos_token_id=stop_token_ids(tok), pad_token_id=tok.pad_token_id)
        t1 = time.perf_counter()
        return {"tokens": int(out.shape[1] - ids["input_ids"].shape[1]), "latency": t1 - t0,
                "ttft": (streamer.first or t1) - t0}

    with torch.inference_mode():
        one(prompts[0])  # warm-up
        print(json.dumps({"ready": True}), flush=True)
        for line in sys.stdin:
            cmd = json.loads(line)
            rows = [one(prompts[(cmd["start"] + i) % len(prompts)]) for i in range(cmd["n"])]
            total_s = sum(r["latency"] for r in rows)
            print(json.dumps({"rows": rows, "tokens_per_s": sum(r["tokens"] for r in rows) / total_s,
                              "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}),
                  flush=True)


class Baseline:
    """The sequential-generate worker process, taking part in the rotation like the servers."""

    name = "sequential generate (baseline)"

    def __init__(self, args):
        cmd = [sys.executable, __file__, "--role", "baseline", "--model", args.model, "--dtype", args.dtype,
               "--max-tokens", str(args.max_tokens)]
        if args.threads:
            cmd += ["--threads", str(args.threads)]
        print(f"starting {self.name} ...", flush=True)
        self.proc = subprocess.Popen(cmd, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL,
                                     text=True)
        assert json.loads(self.proc.stdout.readline()).get("ready")
        self.results: dict = {"levels": {}}

    def level(self, c: int, args, prompts: list[str], tokenizer) -> None:
        self.proc.stdin.write(json.dumps({"start": 0, "n": args.baseline_requests}) + "\n")
        self.proc.stdin.flush()
        res = json.loads(self.proc.stdout.readline())
        rows = res["rows"]
        self.results["levels"][c] = {
            "tokens_per_s": res["tokens_per_s"], "ttft": [r["ttft"] for r in rows],
            "ttft_steady": [r["ttft"] for r in rows],  # one request at a time: no burst
            "latency": [r["latency"] for r in rows], "errors": 0, "peak_rss_mb": res["peak_rss_mb"],
            "tokens": sum(r["tokens"] for r in rows), "requests": len(rows)}
        print(f"  {self.name} (next to c={c}): {res['tokens_per_s']:.1f} tok/s", flush=True)

    def close(self) -> None:
        self.proc.stdin.close()
        self.proc.wait(timeout=60)


# ------------------------------------------------------------------------------------------ servers
class RssSampler:
    """Peak (and timeline of) resident memory of a process and its children, sampled in a thread."""

    def __init__(self, pid: int, every: float = 0.2):
        import psutil

        self.proc, self.every = psutil.Process(pid), every
        self.peak, self.timeline, self._stop = 0.0, [], threading.Event()
        self._t0 = time.monotonic()
        threading.Thread(target=self._run, daemon=True).start()

    def rss_mb(self) -> float:
        import psutil

        try:
            procs = [self.proc, *self.proc.children(recursive=True)]
            return sum(p.memory_info().rss for p in procs) / 2**20
        except psutil.Error:
            return 0.0

    def _run(self) -> None:
        while not self._stop.wait(self.every):
            mb = self.rss_mb()
            self.peak = max(self.peak, mb)
            self.timeline.append((time.monotonic() - self._t0, mb))

    def reset_peak(self) -> None:
        self.peak = self.rss_mb()

    def stop(self) -> None:
        self._stop.set()


def start(cmd: list[str], url: str, headers: dict[str, str], env: dict[str, str], log: Path,
          ready: str) -> subprocess.Popen:
    import httpx2 as httpx

    proc = subprocess.Popen(cmd, stdout=open(log, "w"), stderr=subprocess.STDOUT, env=env)  # noqa: SIM115
    end = time.monotonic() + 600
    while time.monotonic() < end:
        if proc.poll() is not None:
            raise RuntimeError(f"{cmd[0]} exited: {log.read_text()[-2000:]}")
        try:
            if httpx.get(url + ready, headers=headers, timeout=5).status_code == 200:
                return proc
        except httpx.HTTPError:
            pass
        time.sleep(1)
    proc.kill()
    raise TimeoutError(f"{url} not ready")


async def one_request(client, model: str, prompt: str, max_tokens: int, tokenizer) -> dict:
    t0 = time.perf_counter()
    first, text, usage = None, [], None
    stream = await client.chat.completions.create(
        model=model, messages=[{"role": "user", "content": prompt}], max_tokens=max_tokens, temperature=0,
        stream=True, stream_options={"include_usage": True})
    async for chunk in stream:
        if chunk.usage is not None:
            usage = chunk.usage.completion_tokens
        if chunk.choices and chunk.choices[0].delta.content:
            first = first or time.perf_counter()
            text.append(chunk.choices[0].delta.content)
    t1 = time.perf_counter()
    tokens = usage if usage is not None else len(tokenizer("".join(text), add_special_tokens=False)["input_ids"])
    return {"ttft": (first or t1) - t0, "latency": t1 - t0, "tokens": tokens}


async def closed_loop(url: str, model: str, prompts: list[str], concurrency: int, n_requests: int | None,
                      max_tokens: int, tokenizer, seconds: float | None = None) -> dict:
    """`concurrency` clients, each sending its next request when the last ends, until n requests or time."""
    import openai

    client = openai.AsyncOpenAI(base_url=url + "/v1", api_key=KEY, max_retries=0, timeout=900)
    rows, errors, counter = [], [], iter(range(10**9))
    deadline = time.perf_counter() + seconds if seconds else None

    async def worker() -> None:
        first = True  # a client's first request arrives with every other client's at t=0 (a cold burst)
        while True:
            i = next(counter)
            if (n_requests is not None and i >= n_requests) or (deadline and time.perf_counter() > deadline):
                return
            try:
                row = await one_request(client, model, prompts[i % len(prompts)], max_tokens, tokenizer)
                rows.append({**row, "burst": first})
                first = False
            except Exception as e:  # noqa: BLE001 - counted and reported: the benchmark demands zero
                errors.append(f"{type(e).__name__}: {e}")

    t0 = time.perf_counter()
    await asyncio.gather(*[worker() for _ in range(concurrency)])
    wall = time.perf_counter() - t0
    await client.close()
    return {"tokens_per_s": sum(r["tokens"] for r in rows) / wall, "ttft": [r["ttft"] for r in rows],
            "ttft_steady": [r["ttft"] for r in rows if not r["burst"]],
            "latency": [r["latency"] for r in rows], "errors": len(errors), "error_samples": errors[:3],
            "tokens": sum(r["tokens"] for r in rows), "requests": len(rows), "wall_s": wall}


def server_commands(args, port: int) -> dict[str, tuple[list[str], str, str, dict]]:
    """name -> (command, model id for requests, readiness path, headers)."""
    from tunelab.models import resolve_model

    auth = {"Authorization": f"Bearer {KEY}"}
    tunelab = [sys.executable, "-m", "tunelab.cli.main", "serve", args.model, "--port", str(port), "--api-key",
               KEY, f"dtype={args.dtype}", f"batch_size={args.batch_size}", "queue_size=256",
               f"state_dir={tempfile.mkdtemp()}", "--log-level", "warning"]
    out = {"tunelab serve": (tunelab, args.model, "/ready", auth)}
    if args.peer:
        path = str(resolve_model(args.model).path)
        dtype = "bfloat16" if args.dtype == "bf16" else "float32"
        peer = [str(Path(sys.executable).with_name("transformers")), "serve", path, "--port", str(port),
                "--device", "cpu", "--dtype", dtype]
        out["transformers serve"] = (peer, path, "/health", {})
        # Its continuous batching allocates a paged cache sized from memory by default (killed here by the
        # OOM killer on a 23 GB box); a cache of 512 x 32-token blocks holds 16 requests of 1,000 tokens.
        out["transformers serve --continuous-batching"] = (
            [*peer, "--continuous-batching", "--cb-num-blocks", "512", "--cb-block-size", "32",
             "--cb-max-batch-tokens", "2048"], path, "/health", {})
    return out


class Contender:
    """A running server: its process, URL, request model id and memory sampler."""

    def __init__(self, name: str, spec, args, port: int, workdir: Path):
        cmd, self.model, ready, headers = spec
        env = {**os.environ, "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"}
        if args.threads:
            env["OMP_NUM_THREADS"] = str(args.threads)
        self.name, self.url = name, f"http://127.0.0.1:{port}"
        print(f"starting {name} ...", flush=True)
        self.proc = start(cmd, self.url, headers, env, workdir / f"{name.replace(' ', '_')}.log", ready)
        self.rss = RssSampler(self.proc.pid)
        self.results: dict = {"levels": {}}

    def level(self, c: int, args, prompts: list[str], tokenizer) -> None:
        self.rss.reset_peak()
        n = max(args.requests_per_client * c, 4)
        res = asyncio.run(closed_loop(self.url, self.model, prompts, c, n, args.max_tokens, tokenizer))
        res["peak_rss_mb"] = self.rss.peak
        self.results["levels"][c] = res
        print(f"  {self.name} c={c}: {res['tokens_per_s']:.1f} tok/s, {res['errors']} errors", flush=True)

    def close(self) -> None:
        self.rss.stop()
        self.proc.terminate()
        try:
            self.proc.wait(timeout=60)
        except subprocess.TimeoutExpired:
            self.proc.kill()


def bench_servers(args, prompts: list[str], tokenizer, workdir: Path) -> dict[str, dict]:
    """All servers run at once (idle ones cost nothing); each level visits them in a rotating order, so a
    change in the machine's background load is spread over the contenders instead of hitting one."""
    contenders: list = []
    try:
        for name in server_commands(args, 0):
            port = free_port()
            contenders.append(Contender(name, server_commands(args, port)[name], args, port, workdir))
        for c in contenders:  # warm-up: first forward passes, lazy imports, caches
            asyncio.run(closed_loop(c.url, c.model, prompts, 1, 1, 8, tokenizer))
        contenders.append(Baseline(args))
        for k, level in enumerate(args.levels):
            for c in contenders[k % len(contenders):] + contenders[:k % len(contenders)]:
                c.level(level, args, prompts, tokenizer)
        if args.soak:  # contenders[0] is tunelab serve
            c = contenders[0]
            c.results["soak"] = soak(c.url, c.model, prompts, args, tokenizer, c.rss)
    finally:
        for c in contenders:
            c.close()
    return {c.name: c.results for c in contenders}


def soak(url: str, model: str, prompts: list[str], args, tokenizer, rss: RssSampler) -> dict:
    print(f"  soak: concurrency 16 for {args.soak:.0f} s ...", flush=True)
    start_t = rss.timeline[-1][0] if rss.timeline else 0.0
    res = asyncio.run(closed_loop(url, model, prompts, 16, None, args.max_tokens, tokenizer, seconds=args.soak))
    line = [(t - start_t, mb) for t, mb in rss.timeline if t >= start_t]
    half = [p for p in line if p[0] >= line[-1][0] / 2] if line else []
    slope = statistics.linear_regression([t for t, _ in half], [m for _, m in half]).slope * 60 if len(half) > 2 \
        else float("nan")
    return {"seconds": args.soak, "requests": res["requests"], "errors": res["errors"],
            "error_samples": res["error_samples"], "tokens_per_s": res["tokens_per_s"],
            "rss_start_mb": line[0][1] if line else None, "rss_end_mb": line[-1][1] if line else None,
            "rss_peak_mb": max(m for _, m in line) if line else None, "rss_slope_mb_per_min_2nd_half": slope,
            "p95_latency_s": pct(res["latency"], 95)}


# ------------------------------------------------------------------------------------------ report
def report(base: dict, servers: dict[str, dict], args) -> None:
    """One table; "x base" divides by the baseline measured in the same rotation as that level. "steady p95"
    leaves out each client's first request: those all arrive at once when a level starts (a cold burst of
    `conc` prompts prefilled together), the rest arrive one by one as in a sustained load."""
    print(f"\nmodel {args.model}, dtype {args.dtype}, {args.threads} torch thread(s) per process, greedy, "
          f"max_tokens {args.max_tokens}, {os.cpu_count()} CPUs, load average now {os.getloadavg()[0]:.1f}")
    print(f"{'contender':<42}{'conc':>5}{'tok/s':>9}{'x base':>8}{'TTFT p50':>10}{'p95':>8}{'steady p95':>11}"
          f"{'lat p50':>9}{'p95':>8}"
          f"{'errors':>8}{'peak RSS':>10}")
    for name, res in {"sequential generate (baseline)": base, **servers}.items():
        for c, r in res["levels"].items():
            ratio = r["tokens_per_s"] / base["levels"][c]["tokens_per_s"]
            print(f"{name:<42}{c:>5}{r['tokens_per_s']:>9.1f}{ratio:>7.2f}x"
                  f"{pct(r['ttft'], 50):>9.2f}s{pct(r['ttft'], 95):>7.2f}s{pct(r['ttft_steady'], 95):>10.2f}s"
                  f"{pct(r['latency'], 50):>8.2f}s"
                  f"{pct(r['latency'], 95):>7.2f}s{r['errors']:>8}{r['peak_rss_mb']:>8.0f}MB")
        if "soak" in res:
            s = res["soak"]
            print(f"soak {s['seconds']:.0f} s at concurrency 16: {s['requests']} requests, {s['errors']} errors, "
                  f"{s['tokens_per_s']:.1f} tok/s, RSS {s['rss_start_mb']:.0f} -> {s['rss_end_mb']:.0f} MB "
                  f"(peak {s['rss_peak_mb']:.0f}, slope {s['rss_slope_mb_per_min_2nd_half']:+.1f} MB/min in "
                  "the second half)")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--role", choices=["main", "baseline"], default="main", help=argparse.SUPPRESS)
    p.add_argument("--model", default="smollm2-135m-instruct")
    p.add_argument("--dtype", choices=["auto", "fp32", "bf16"], default="auto",
                   help="weights dtype for every contender (auto: bf16 where the CPU has native bf16)")
    p.add_argument("--levels", default="1,4,8,16", help="concurrency levels")
    p.add_argument("--max-tokens", type=int, default=64)
    p.add_argument("--requests-per-client", type=int, default=4, help="requests per level = this x concurrency")
    p.add_argument("--baseline-requests", type=int, default=8, help="baseline requests per level")
    p.add_argument("--batch-size", type=int, default=16, help="tunelab serve batch_size")
    p.add_argument("--threads", type=int, default=1, help="torch threads in every process (1 keeps a shared "
                   "box stable: 2 threads on 2 busy cores ran 5x slower here; raise it on a dedicated machine)")
    p.add_argument("--peer", action="store_true", help="also benchmark `transformers serve` (both modes)")
    p.add_argument("--soak", type=float, default=0.0, help="seconds of concurrency-16 soak after the levels")
    p.add_argument("--out", help="write all measurements as JSON here")
    args = p.parse_args()
    if args.role == "baseline":
        baseline_worker(args.model, args.dtype, args.max_tokens, args.threads)
        return
    args.levels = [int(x) for x in args.levels.split(",")]
    if args.dtype == "auto":
        from tunelab.models import resolve_precision

        args.dtype = resolve_precision("auto", "cpu")
    from tunelab.models import load_tokenizer

    tokenizer = load_tokenizer(args.model)
    prompts = load_prompts(64)
    with tempfile.TemporaryDirectory() as tmp:
        servers = bench_servers(args, prompts, tokenizer, Path(tmp))
    base = servers.pop(Baseline.name)
    report(base, servers, args)
    if args.out:
        Path(args.out).write_text(json.dumps({"args": vars(args), "baseline": base, "servers": servers}, indent=2))


if __name__ == "__main__":
    main()
