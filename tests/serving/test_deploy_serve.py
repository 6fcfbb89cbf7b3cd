"""`tunelab run RECIPE deploy.serve=true`: once the gate passes, the run is served through the real server, an
official `openai` client gets answers from it, and SIGTERM ends the run with status 0."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import openai
from serving_helpers import API_KEY, free_port, stop_server, wait_ready


def test_a_passing_gate_serves_the_run(tmp_path, chat_jsonl, tiny_model_dir):
    recipe = tmp_path / "r.yaml"
    recipe.write_text("data: {path: x}\n")
    port = free_port()
    args = [str(recipe), f"data.path={chat_jsonl}", f"model.name={tiny_model_dir}", f"output.dir={tmp_path / 'runs'}",
            "output.name=s", "train.max_steps=2", "train.batch_size=4", "eval.max_new_tokens=2", "eval.max_samples=4",
            "data.split.test=0.2", "eval.compare_base=false", "model.precision=fp32", "gate=['tuned.accuracy >= 0.0']",
            "deploy.serve=true", f"serve.port={port}", f"serve.state_dir={tmp_path / 'state'}", "serve.dtype=fp32",
            "serve.default_max_tokens=8"]
    env = {**os.environ, "TOKENIZERS_PARALLELISM": "false", "OMP_NUM_THREADS": "1", "TUNELAB_API_KEY": API_KEY,
           "TUNELAB_TRACKING": "none"}
    with open(tmp_path / "run.log", "w") as log:
        proc = subprocess.Popen([sys.executable, "-m", "tunelab.cli.main", "run", *args], stdout=log,
                                stderr=subprocess.STDOUT, env=env, cwd=tmp_path)
        try:
            wait_ready(f"http://127.0.0.1:{port}", proc)
            client = openai.OpenAI(base_url=f"http://127.0.0.1:{port}/v1", api_key=API_KEY, max_retries=0,
                                   timeout=60)
            models = [m.id for m in client.models.list().data]
            reply = client.chat.completions.create(model=models[-1], messages=[{"role": "user", "content": "hi"}],
                                                   max_tokens=4, temperature=0)
            assert reply.usage.completion_tokens >= 1 and reply.choices[0].finish_reason in ("length", "stop")
        finally:
            stop_server(proc)  # SIGTERM: the server drains and the run ends
    assert proc.returncode == 0, (tmp_path / "run.log").read_text()[-2000:]
    run = tmp_path / "runs" / "s"
    record = json.loads((run / "deploy.json").read_text())
    assert record["gate"] == "passed" and record["steps"]["serve"]["status"] == "started"
    assert "| serve | pending |" in (run / "report.md").read_text()  # written before the server starts
