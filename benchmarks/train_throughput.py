"""SFT training throughput: tunelab versus a plain Hugging Face Trainer + PEFT baseline, side by side.

Same model (SmolLM2-135M-Instruct), same tokenized data (the demo support-ticket task, assistant-only
labels), same LoRA (r16, alpha 32, all linear layers), same optimizer steps and batch size. The baseline is
what most tutorials run: Trainer in fp32 with every batch padded to max_length. tunelab runs with its
defaults (bf16 autocast where the CPU has it, length-grouped batches, logits only at labelled positions).

Each contender runs in its own subprocess so that peak memory (max RSS) is its own. Prints real
(non-padding) tokens/s, peak RSS, final validation loss and MFU against a bf16 matmul peak measured here.

    python benchmarks/train_throughput.py                 # 40 steps each (~6 min on 2 cores)
    python benchmarks/train_throughput.py --steps 10      # quick look
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

STEPS, BATCH, LR, MAX_LEN, ROWS = 40, 8, 2e-4, 256, 2000


def measure_bf16_peak(n: int = 2048, reps: int = 10) -> float:
    """Best-of bf16 matmul throughput in FLOP/s (the denominator of MFU)."""
    a = torch.randn(n, n, dtype=torch.bfloat16)
    b = torch.randn(n, n, dtype=torch.bfloat16)
    a @ b  # warm-up
    best = 0.0
    for _ in range(reps):
        t = time.perf_counter()
        a @ b
        best = max(best, 2 * n**3 / (time.perf_counter() - t))
    return best


def _recipe(steps: int, out_dir: str):
    from tunelab.config import load_recipe

    return load_recipe(None, [
        "data.path=demo:support_tickets", f"data.max_length={MAX_LEN}", "data.split.validation=0.05",
        "data.split.test=0.05", "data.eval_limit=64", f"train.max_steps={steps}", f"train.batch_size={BATCH}",
        f"train.lr={LR}", "train.scheduler=cosine", "train.warmup_ratio=0.05", "train.log_every=1000",
        "method.name=lora", "method.lora.r=16", "method.lora.alpha=32", f"output.dir={out_dir}",
        "output.name=bench", "eval.enabled=false",
    ])


def run_tunelab(steps: int) -> dict:
    from tunelab.recipes.sft import SFTRecipe

    with tempfile.TemporaryDirectory() as tmp:
        recipe = _recipe(steps, tmp)
        run_dir = Path(tmp) / "bench"
        run_dir.mkdir()
        sft = SFTRecipe(recipe, run_dir)
        sft.setup()
        summary = sft.train()
        val = sft.validation_loss()
    return {"real_tokens": summary["real_tokens"], "train_s": summary["train_time_s"], "val_loss": val,
            "precision": summary["precision"], "params": summary["total_params"]}


class _PadToMax:
    """The tutorial collator: pad every row to max_length and count the real tokens it saw."""

    def __init__(self, pad_id: int):
        self.pad_id, self.real_tokens = pad_id, 0

    def __call__(self, rows):
        from tunelab.training.batching import collate

        self.real_tokens += sum(len(r["input_ids"]) for r in rows)
        return collate(rows, "padded", self.pad_id, MAX_LEN)


def run_hf_trainer(steps: int) -> dict:
    from peft import LoraConfig, get_peft_model
    from transformers import Trainer, TrainingArguments

    from tunelab.data import prepare_data
    from tunelab.models import load_causal_lm, load_tokenizer
    from tunelab.training.loss import mean_nll

    with tempfile.TemporaryDirectory() as tmp:
        recipe = _recipe(steps, tmp)
        tok = load_tokenizer(recipe.model.name)
        data = prepare_data(recipe.data, tok)
        model = load_causal_lm(recipe.model.name)  # fp32
        model = get_peft_model(model, LoraConfig(r=16, lora_alpha=32, target_modules="all-linear",
                                                 lora_dropout=0.0, task_type="CAUSAL_LM"))
        collator = _PadToMax(tok.pad_token_id)
        args = TrainingArguments(
            output_dir=tmp, per_device_train_batch_size=BATCH, max_steps=steps, learning_rate=LR,
            lr_scheduler_type="cosine", warmup_steps=round(0.05 * steps), logging_steps=1000, save_strategy="no",
            report_to=[], use_cpu=True, dataloader_num_workers=0, remove_unused_columns=False, seed=0,
            disable_tqdm=True,
        )
        trainer = Trainer(model=model, args=args, train_dataset=data.encoded["train"], data_collator=collator)
        out = trainer.train()
        val = mean_nll(model, data.encoded["validation"], 16, tok.pad_token_id, "cpu", "fp32")
        params = sum(p.numel() for p in model.parameters())
    return {"real_tokens": collator.real_tokens, "train_s": out.metrics["train_runtime"], "val_loss": val,
            "precision": "fp32", "params": params}


def worker(name: str, steps: int) -> None:
    torch.manual_seed(0)
    result = {"tunelab": run_tunelab, "hf_trainer": run_hf_trainer}[name](steps)
    result["peak_rss_mb"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print("RESULT " + json.dumps(result))


def _spawn(name: str, steps: int) -> dict:
    proc = subprocess.run([sys.executable, __file__, "--worker", name, "--steps", str(steps)],
                          capture_output=True, text=True, check=False)
    line = next((x for x in proc.stdout.splitlines() if x.startswith("RESULT ")), None)
    if proc.returncode or line is None:
        sys.exit(f"{name} failed:\n{proc.stderr[-3000:]}")
    return json.loads(line[len("RESULT "):])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--steps", type=int, default=STEPS)
    ap.add_argument("--worker", choices=["tunelab", "hf_trainer"])
    args = ap.parse_args()
    if args.worker:
        worker(args.worker, args.steps)
        return
    peak = measure_bf16_peak()
    results = {name: _spawn(name, args.steps) for name in ("hf_trainer", "tunelab")}
    print(f"\nSFT LoRA r16, {args.steps} steps x batch {BATCH}, max_length {MAX_LEN}, threads {torch.get_num_threads()}")
    print(f"bf16 matmul peak measured here: {peak / 1e9:,.0f} GFLOP/s (MFU uses 4*N FLOPs per token for LoRA)")
    print(f"{'':28}{'hf_trainer (fp32, pad max)':>28}{'tunelab':>14}{'ratio':>10}")
    rows = {}
    for name, r in results.items():
        r["tok_s"] = r["real_tokens"] / r["train_s"]
        r["mfu"] = r["tok_s"] * 4 * r["params"] / peak
        rows[name] = r
    b, t = rows["hf_trainer"], rows["tunelab"]
    print(f"{'real tokens/s':28}{b['tok_s']:>28,.1f}{t['tok_s']:>14,.1f}{t['tok_s'] / b['tok_s']:>9.2f}x")
    print(f"{'peak RSS (MB)':28}{b['peak_rss_mb']:>28,.0f}{t['peak_rss_mb']:>14,.0f}"
          f"{t['peak_rss_mb'] / b['peak_rss_mb']:>9.2f}x")
    print(f"{'train wall time (s)':28}{b['train_s']:>28,.1f}{t['train_s']:>14,.1f}{t['train_s'] / b['train_s']:>9.2f}x")
    print(f"{'final validation loss':28}{b['val_loss']:>28.4f}{t['val_loss']:>14.4f}{t['val_loss'] - b['val_loss']:>+10.4f}")
    print(f"{'MFU vs bf16 peak':28}{b['mfu']:>28.1%}{t['mfu']:>14.1%}")
    print(f"{'precision':28}{b['precision']:>28}{t['precision']:>14}")


if __name__ == "__main__":
    main()
