"""Serving test helpers: a scripted fake engine, a lively tiny model, adapter run folders, server processes."""

from __future__ import annotations

import asyncio
import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import torch

from tunelab.serving.catalog import ModelCatalog, ServedModel
from tunelab.serving.engines.base import (
    EngineOverloaded,
    EngineStats,
    Finish,
    GenerationRequest,
    GenerationStream,
    TokenEvent,
)

API_KEY = "test-key-123"
AUTH = {"Authorization": f"Bearer {API_KEY}"}
REPLY = "Hello there, friend. The answer is 42."


class FakeEngine:
    """Answers every request with the tokens of `reply`, one event per loop tick (or `delay` seconds)."""

    name = "fake"

    def __init__(self, tokenizer, reply: str = REPLY, delay: float = 0.0):
        self.tokenizer, self.reply, self.delay = tokenizer, reply, delay
        self.requests: list[GenerationRequest] = []
        self.overloaded = False
        self.fail: str | None = None
        self.cancelled: list[str] = []
        self.running: dict[str, int] = {}
        self.started = False

    async def start(self) -> None:
        self.started = True

    async def stop(self) -> None:
        self.started = False

    def ready(self) -> bool:
        return self.started

    def submit(self, request: GenerationRequest) -> GenerationStream:
        if self.overloaded:
            raise EngineOverloaded("0 requests are waiting")
        self.requests.append(request)
        stream = GenerationStream(request)
        asyncio.ensure_future(self._run(stream))
        return stream

    async def _run(self, stream: GenerationStream) -> None:
        req = stream.request
        ids = self.tokenizer(self.reply, add_special_tokens=False)["input_ids"]
        self.running[req.request_id] = 0
        try:
            for k, tid in enumerate(ids):
                await asyncio.sleep(self.delay)
                if stream.cancelled:
                    self.cancelled.append(req.request_id)
                    stream.push(Finish("cancelled"))
                    return
                if self.fail:
                    stream.push(Finish("error", self.fail))
                    return
                lp = None if req.params.logprobs is None else -0.5
                top = [(tid, -0.5), (tid + 1, -1.5)][: req.params.logprobs] if req.params.logprobs else None
                stream.push(TokenEvent(tid, lp, top))
                self.running[req.request_id] = k + 1
                if k + 1 >= req.params.max_tokens:
                    stream.push(Finish("length"))
                    return
            stream.push(Finish("stop"))
        finally:
            self.running.pop(req.request_id, None)

    def stats(self) -> EngineStats:
        return EngineStats("fake", 0, len(self.running), 0, 0, len(self.cancelled), 0, 0.0, dict(self.running))


class FakeEmbedder:
    """Deterministic 4-d unit vectors; token count = words + 2."""

    max_length = 16

    def count_tokens(self, texts: list[str]) -> list[int]:
        return [len(t.split()) + 2 for t in texts]

    def embed(self, texts: list[str]) -> list[list[float]]:
        out = []
        for t in texts:
            v = torch.tensor([len(t), t.count(" "), 1.0, 2.0])
            out.append((v / v.norm()).tolist())
        return out


def fake_catalog(tokenizer, context: int = 256) -> ModelCatalog:
    chat = ServedModel("fake-chat", "chat", "fake", tokenizer, context, stop_token_ids=[tokenizer.eos_token_id],
                       source="fake")
    emb = ServedModel("fake-embed", "embedding", "fake-e", tokenizer, 16, source="fake encoder")
    return ModelCatalog({m.id: m for m in (chat, emb)})


# ------------------------------------------------------------------------------------------ real models
def lively_tiny(tokenizer, seed: int = 0):
    """The shared tiny LLaMA shape (2 layers, hidden 64) with larger random weights, so greedy outputs vary
    from token to token (the default init repeats one token forever, which would hide batching bugs)."""
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(seed)
    cfg = LlamaConfig(
        vocab_size=len(tokenizer), hidden_size=64, intermediate_size=128, num_hidden_layers=2,
        num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=1024, tie_word_embeddings=True,
        bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id,
    )
    model = LlamaForCausalLM(cfg)
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():
            if p.dim() == 2:
                p.normal_(0.0, 0.15, generator=g)
    return model.eval()


def adapter_run(root: Path, name: str, base_dir: Path, tokenizer, seed: int, template: str | None) -> Path:
    """A run folder as `tunelab train` writes it, holding a LoRA adapter with random (non-zero) weights."""
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    from tunelab.config.loading import dump_recipe, load_recipe

    run = root / name
    base = AutoModelForCausalLM.from_pretrained(base_dir)
    peft = get_peft_model(base, LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj", "down_proj"]))
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for n, p in peft.named_parameters():
            if "lora_" in n:
                p.normal_(0.0, 0.3, generator=g)
    peft.save_pretrained(run / "adapter")
    tok = type(tokenizer).from_pretrained(base_dir)
    if template is not None:
        tok.chat_template = template
    tok.save_pretrained(run / "tokenizer")
    recipe = load_recipe(None, ["data.path=train.jsonl", f"model.name={base_dir}", "method.name=lora"])
    (run / "config.yaml").write_text(dump_recipe(recipe), encoding="utf-8")
    return run


# A different (but ChatML-shaped) template: proves each adapter renders with the tokenizer it trained with.
TEMPLATE_B = ("{% for m in messages %}<|im_start|>{{ m['role'] }}\nB-adapter says: {{ m['content'] }}<|im_end|>\n"
              "{% endfor %}{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_ready(url: str, proc: subprocess.Popen, timeout: float = 240.0) -> None:
    import httpx2 as httpx

    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if proc.poll() is not None:
            raise RuntimeError(f"server exited with {proc.returncode}: {proc.stdout.read() if proc.stdout else ''}")
        try:
            if httpx.get(f"{url}/ready", headers=AUTH, timeout=2).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.3)
    raise TimeoutError(f"{url} not ready after {timeout} s")


def start_server(args: list[str], tmp: Path, env_extra: dict[str, str] | None = None):
    """`tunelab serve ARGS` in a subprocess on a free port; returns (process, base url)."""
    port = free_port()
    env = {**os.environ, "TOKENIZERS_PARALLELISM": "false", "OMP_NUM_THREADS": "1", **(env_extra or {})}
    log = open(tmp / f"server-{port}.log", "w")  # noqa: SIM115 - closed with the process by the caller
    proc = subprocess.Popen([sys.executable, "-m", "tunelab.cli.main", "serve", *args, "--port", str(port),
                             "--api-key", API_KEY, f"state_dir={tmp / 'state'}", "--log-level", "warning"],
                            stdout=log, stderr=subprocess.STDOUT, env=env, cwd=tmp)
    proc.log_path = tmp / f"server-{port}.log"  # type: ignore[attr-defined]
    url = f"http://127.0.0.1:{port}"
    try:
        wait_ready(url, proc)
    except Exception:
        proc.kill()
        raise RuntimeError(Path(proc.log_path).read_text()[-3000:]) from None  # type: ignore[attr-defined]
    return proc, url


def stop_server(proc: subprocess.Popen) -> None:
    proc.terminate()
    try:
        proc.wait(timeout=30)
    except subprocess.TimeoutExpired:
        proc.kill()
