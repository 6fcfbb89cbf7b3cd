"""Full grid vs TPE + ASHA pruning on the same space, same task, same job: best validation loss and tokens spent.

    .venv/bin/python benchmarks/sweep_efficiency.py [--data ../shared/data/emotion] [--steps 30]

Space (defaults): learning rate (2.5e-4, 5e-4, 1e-3, 2e-3) x LoRA rank (4, 8, 16) x batch size (4, 8) = 24
configurations on the emotion task with the default model. The grid runs all 24; TPE + ASHA then gets a third of
the tokens the grid spent as a hard cap (`sweep.max_tokens`: the trial that reaches it stops there) and prunes by
intermediate validation loss; --tpe-trials N gives it N trials instead (the earlier runs: 8). --lrs/--ranks/
--batch-sizes change the space (the first, 16-point run was --ranks 4 16).
Target (issue 8): TPE + pruning within 1% (relative) of the grid's best while spending at most a third of its
training tokens. Prints both and the ratios.
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "src"))

LRS = [2.5e-4, 5e-4, 1e-3, 2e-3]


TREC_TYPES = {"ABBR": "abbreviation", "DESC": "description", "ENTY": "entity", "HUM": "person",
              "LOC": "location", "NUM": "number"}


def _task_data(task: str, data: Path, tmp: Path) -> dict:
    """The `data:` section for a task; TREC is converted to JSONL in the temporary folder (never in the repo)."""
    if task == "emotion":
        return {"path": str(data / "train.txt"), "validation_path": str(data / "val.txt"), "delimiter": ";",
                "columns": {"prompt": "text", "completion": "label_name"},
                "prompt_template": "Classify the emotion of this text as one of: sadness, joy, love, anger, fear, "
                                   "surprise.\nText: {prompt}\nEmotion:"}
    import random

    for name, out in (("TREC.train", "trec_train.jsonl"), ("TREC.test", "trec_val.jsonl")):
        rows = []
        for line in (data / name).read_text(encoding="latin-1").splitlines():
            label, _, text = line.partition(" ")
            rows.append({"text": text.strip(), "label_name": TREC_TYPES[label.split(":")[0]]})
        random.Random(0).shuffle(rows)  # the files are not in random order; data.limit takes the first rows
        (tmp / out).write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    return {"path": str(tmp / "trec_train.jsonl"), "validation_path": str(tmp / "trec_val.jsonl"),
            "columns": {"prompt": "text", "completion": "label_name"},
            "prompt_template": "Classify the question by the kind of answer it asks for: abbreviation, description, "
                               "entity, person, location, number.\nQuestion: {prompt}\nAnswer type:"}


def _recipe(data: dict, out: Path, steps: int, sweep: dict, threads: int | None = None, evaluations: int = 5) -> dict:
    return {
        "data": {**data, "max_length": 96, "limit": 400, "eval_limit": 100, "split": {"test": 0.0}},
        "model": {"name": "smollm2-135m-instruct", "threads": threads},
        "method": {"name": "lora", "lora": {"r": 8, "alpha": 16}},
        "train": {"max_steps": steps, "batch_size": 8, "lr": 1e-3, "eval_every": max(1, steps // evaluations),
                  "log_every": 1},  # every step: the token cap is checked where a row is logged
        "eval": {"enabled": False},
        "output": {"dir": str(out), "tracking": []},
        "sweep": sweep,
    }


def _run(doc: dict, name: str) -> dict:
    from tunelab.config.specs import Recipe
    from tunelab.sweep import run_sweep

    t0 = time.perf_counter()
    folder = run_sweep(Recipe.model_validate(doc), name)
    summary = json.loads((folder / "sweep.json").read_text())
    with (folder / "leaderboard.csv").open() as f:  # every finished trial's params and value
        rows = list(csv.DictReader(f))
    values = [({k[6:]: _num(v) for k, v in r.items() if k.startswith("param:") and v}, float(r["value"]))
              for r in rows if r["state"] == "complete" and r["value"] and not r["duplicate_of"]]
    return {"best": (summary["best"] or {}).get("value", float("nan")), "tokens": summary["tokens"], "trials": summary["trials"],
            "states": summary["states"], "wall_s": round(time.perf_counter() - t0, 1),
            "best_params": summary.get("best_params"), "values": values,
            "reused": sum(1 for r in rows if r["duplicate_of"])}


def _num(text: str) -> float | int:
    return int(text) if text.lstrip("-").isdigit() else float(text)


def _short(params: dict) -> str:
    return "lr {:g} r{} bs{}".format(params.get("train.lr"), params.get("method.lora.r"), params.get("train.batch_size"))


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--task", choices=["emotion", "trec"], default="emotion",
                    help="emotion (6 labels, ../shared/data/emotion) or TREC question types (6, ../shared/data/trec)")
    ap.add_argument("--data", help="the task's folder (default: ../shared/data/TASK)")
    ap.add_argument("--steps", type=int, default=30)
    ap.add_argument("--evaluations", type=int, default=5, help="validations per trial (every steps/N steps)")
    ap.add_argument("--tpe-trials", type=int, help="a trial budget instead of the token cap")
    ap.add_argument("--tpe-share", type=float, default=1 / 3, help="token cap as a share of the grid's tokens")
    ap.add_argument("--lrs", type=float, nargs="+", default=LRS)
    ap.add_argument("--ranks", type=int, nargs="+", default=[4, 8, 16])
    ap.add_argument("--batch-sizes", type=int, nargs="+", default=[4, 8])
    ap.add_argument("--threads", type=int, help="torch threads per trial (1 on a machine shared with other jobs)")
    ap.add_argument("--min-resource", type=int, default=2, help="ASHA: evaluations before a trial can be pruned "
                    "(default 2, as sweep.min_resource)")
    ap.add_argument("--only-tpe", action="store_true", help="skip the grid (diagnostics; needs --tpe-trials or "
                    "--tpe-tokens)")
    ap.add_argument("--tpe-tokens", type=int, help="token cap for TPE instead of a share of the grid's tokens")
    ap.add_argument("--only-grid", action="store_true", help="run the grid alone (e.g. to --keep it for "
                    "benchmarks/sweep_replay.py)")
    ap.add_argument("--replay-seeds", type=int, default=100, help="after both studies, replay TPE + ASHA on the "
                    "grid's curves over this many sampler seeds (0: skip)")
    ap.add_argument("--keep", help="keep the study folders (leaderboards, plots, trial runs) here")
    args = ap.parse_args()
    data = Path(args.data or REPO.parent / "shared" / "data" / args.task)
    needed = data / ("train.txt" if args.task == "emotion" else "TREC.train")
    if not needed.is_file():
        print(f"{args.task} data not found: {needed}", file=sys.stderr)
        return 2
    os.environ["TUNELAB_TRACKING"] = "none"
    space = {"train.lr": {"type": "categorical", "choices": args.lrs},
             "method.lora.r": {"type": "categorical", "choices": args.ranks},
             "train.batch_size": {"type": "categorical", "choices": args.batch_sizes}}
    with tempfile.TemporaryDirectory(prefix="tunelab-sweep-bench-") as tmp:
        out = Path(args.keep or tmp)
        data_doc = _task_data(args.task, data, Path(tmp))
        tpe_sweep = {"strategy": "tpe", "pruner": "asha", "trials": args.tpe_trials,
                     "min_resource": args.min_resource, "seed": 0, "space": space}
        if args.only_tpe:
            tpe = _run(_recipe(data_doc, out, args.steps, {**tpe_sweep, "max_tokens": args.tpe_tokens}, args.threads,
                               args.evaluations),
                       "tpe_asha")
            print(json.dumps({k: v for k, v in tpe.items() if k != "values"}, indent=1))
            return 0
        grid = _run(_recipe(data_doc, out, args.steps, {"strategy": "grid", "pruner": "none", "trials": None,
                                                        "space": space}, args.threads, args.evaluations), "grid")
        if args.only_grid:
            print(json.dumps({k: v for k, v in grid.items() if k != "values"}, indent=1))
            return 0
        cap = args.tpe_tokens or (None if args.tpe_trials else int(grid["tokens"] * args.tpe_share))
        tpe = _run(_recipe(data_doc, out, args.steps, {**tpe_sweep, "max_tokens": cap}, args.threads,
                           args.evaluations), "tpe_asha")
        replayed = _replay(out / "sweeps" / "grid", tpe_sweep, cap, args.replay_seeds) if cap else None
    gap = (tpe["best"] - grid["best"]) / grid["best"]
    share = tpe["tokens"] / grid["tokens"]
    print(f"\n{'':24}{'grid':>14}{'TPE + ASHA':>14}")
    print(f"{'trials':24}{grid['trials']:>14}{tpe['trials']:>14}   ({tpe['reused']} repeated proposals reused, "
          f"0 tokens)")
    if cap:
        print(f"{'TPE token cap':24}{'':>14}{cap:>14,}   ({args.tpe_share:.2f} of the grid's)")
    print(f"{'states':24}{str(grid['states']):>14}  {tpe['states']}")
    print(f"{'best val_loss':24}{grid['best']:>14.4f}{tpe['best']:>14.4f}")
    print(f"{'training tokens':24}{grid['tokens']:>14,}{tpe['tokens']:>14,}")
    print(f"{'wall time (s)':24}{grid['wall_s']:>14}{tpe['wall_s']:>14}")
    print(f"ASHA: reduction factor 3, a trial can be pruned after {args.min_resource} of "
          f"{args.steps // max(1, args.steps // args.evaluations)} evaluations")
    print(f"\nTPE+ASHA vs grid: best val_loss {gap:+.2%} (target within +1%), tokens {share:.2f}x (target <= 0.33x)")
    print(f"grid best params: {grid['best_params']}\nTPE best params:  {tpe['best_params']}")
    ranked = sorted(grid["values"], key=lambda kv: kv[1])
    where = next((i for i, (p, _) in enumerate(ranked, 1) if p == tpe["best_params"]), None)
    print(f"TPE's best config is number {where} of {len(ranked)} in the grid's ranking" if where else
          "TPE's best config is not in the grid")
    print("grid, best first: " + "; ".join(f"{_short(p)} {v:.4f}" for p, v in ranked[:8]) + " ...")
    if replayed:
        hits, median, seed0 = replayed
        print(f"\nOne seed is one draw. The same TPE + ASHA replayed on the grid's recorded curves "
              f"(benchmarks/sweep_replay.py) over {args.replay_seeds} sampler seeds: within 1% of the grid's best in "
              f"{hits:.0%} of them, median gap {median:+.2%}; seed 0 replayed gives {seed0:.4f} "
              f"({'the same as' if abs(seed0 - tpe['best']) < 1e-6 else 'NOT the same as'} the real run above)")
    return 0


def _replay(grid_dir: Path, sweep: dict, cap: int, seeds: int) -> tuple[float, float, float] | None:
    """Hit rate and median gap of `sweep` over `seeds` sampler seeds, replayed on the grid's curves; seed 0's best."""
    if seeds <= 0:
        return None
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    from sweep_replay import load_grid, over_seeds

    from tunelab.util.console import console

    quiet, console.quiet = console.quiet, True
    try:
        r = over_seeds(load_grid(grid_dir), sweep, cap, seeds)
    finally:
        console.quiet = quiet
    return r["hit"], r["median_gap"], r["seed0_value"]


if __name__ == "__main__":
    sys.exit(main())
