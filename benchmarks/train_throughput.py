"""SFT training throughput: tunelab versus a plain Hugging Face Trainer + PEFT baseline, side by side.

Same model (SmolLM2-135M-Instruct), same tokenized data (the demo support-ticket task, assistant-only
labels), same LoRA (r16, alpha 32, all linear layers), same optimizer steps and batch size. The baseline is
what most tutorials run: Trainer in fp32 with every batch padded to max_length. tunelab runs with its
defaults (bf16 autocast where the CPU has it, length-grouped batches, logits only at labelled positions).

Each contender runs in its own subprocess so that peak memory (max RSS) is its own. Prints real
(non-padding) tokens/s, peak RSS, final validation loss and MFU against a bf16 matmul peak measured here.

    python benchmarks/train_throughput.py                 # 40 steps each (~6 min on 2 cores)
    python benchmarks/train_throughput.py --steps 10      # quick look
    python benchmarks/train_throughput.py --methods full,lora,prefix,prompt,ia3,bottleneck --steps 30

`--methods` compares fine-tuning methods instead (all tunelab, same data and steps, each in its own
process): trainable parameters, real tokens/s, peak RSS, train time and final validation loss side by side,
each method at its usual learning rate (METHOD_LR).
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
# Learning rates typical for each method (a full model moves with far smaller steps than an adapter).
METHOD_LR = {"full": 5e-5, "freeze": 1e-4, "lora": LR, "prefix": 1e-2, "prompt": 1e-2, "ptuning": 1e-2,
             "ia3": 1e-2, "bottleneck": 1e-3}


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


def _recipe(steps: int, out_dir: str, method: str = "lora"):
    from tunelab.config import load_recipe

    return load_recipe(None, [
        "data.path=demo:support_tickets", f"data.max_length={MAX_LEN}", "data.split.validation=0.05",
        "data.split.test=0.05", "data.eval_limit=64", f"train.max_steps={steps}", f"train.batch_size={BATCH}",
        f"train.lr={METHOD_LR[method]}", "train.scheduler=cosine", "train.warmup_ratio=0.05",
        "train.log_every=1000", f"method.name={method}", "method.lora.r=16", "method.lora.alpha=32",
        f"output.dir={out_dir}",
        "output.name=bench", "eval.enabled=false",
    ])


def run_tunelab(steps: int, method: str = "lora") -> dict:
    from tunelab.recipes.sft import SFTRecipe

    with tempfile.TemporaryDirectory() as tmp:
        recipe = _recipe(steps, tmp, method)
        run_dir = Path(tmp) / "bench"
        run_dir.mkdir()
        sft = SFTRecipe(recipe, run_dir)
        sft.setup()
        summary = sft.train()
        val = sft.validation_loss()
    return {"real_tokens": summary["real_tokens"], "train_s": summary["train_time_s"], "val_loss": val,
            "precision": summary["precision"], "params": summary["total_params"],
            "trainable": summary["trainable_params"]}


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
    if name.startswith("tunelab:"):  # one method of the --methods comparison
        result = run_tunelab(steps, name.split(":", 1)[1])
    else:
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
    ap.add_argument("--worker", help="internal: run one contender in this process")
    ap.add_argument("--methods", help="compare these tunelab methods instead, e.g. full,lora,prefix,prompt,ia3")
    args = ap.parse_args()
    if args.worker:
        worker(args.worker, args.steps)
        return
    if args.methods:
        compare_methods([m.strip() for m in args.methods.split(",") if m.strip()], args.steps)
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


def compare_methods(methods: list[str], steps: int) -> None:
    """Each method in its own process, same data and steps; a table with one column per method."""
    unknown = [m for m in methods if m not in METHOD_LR]
    if unknown:
        sys.exit(f"unknown method(s) {unknown}; choose from {', '.join(METHOD_LR)}")
    rows = {}
    for m in methods:
        rows[m] = r = _spawn(f"tunelab:{m}", steps)
        r["tok_s"] = r["real_tokens"] / r["train_s"]
        print(f"{m}: {r['tok_s']:.1f} real tok/s, peak RSS {r['peak_rss_mb']:,.0f} MB, "
              f"val loss {r['val_loss']:.4f}", file=sys.stderr, flush=True)
    print(f"\nSFT methods, {steps} steps x batch {BATCH}, max_length {MAX_LEN}, threads {torch.get_num_threads()}, "
          f"precision {next(iter(rows.values()))['precision']}")
    print(f"{'':24}" + "".join(f"{m:>14}" for m in methods))
    table = [
        ("learning rate", lambda m, r: f"{METHOD_LR[m]:g}"),
        ("trainable params", lambda m, r: f"{r['trainable']:,}"),
        ("trainable %", lambda m, r: f"{100 * r['trainable'] / r['params']:.3f}%"),
        ("real tokens/s", lambda m, r: f"{r['tok_s']:,.1f}"),
        ("peak RSS (MB)", lambda m, r: f"{r['peak_rss_mb']:,.0f}"),
        ("train wall time (s)", lambda m, r: f"{r['train_s']:,.1f}"),
        ("final validation loss", lambda m, r: f"{r['val_loss']:.4f}"),
    ]
    for label, cell in table:
        print(f"{label:24}" + "".join(f"{cell(m, r):>14}" for m, r in rows.items()))
    if "full" in rows and "lora" in rows:
        ratio = rows["lora"]["tok_s"] / rows["full"]["tok_s"]
        print(f"LoRA vs full fine-tuning at equal steps: {ratio:.2f}x the tokens/s "
              f"({'faster' if ratio > 1 else 'NOT faster'})")


if __name__ == "__main__":
    main()
