"""Replay a recorded grid: how often does each search strategy reach the grid's best on a share of its tokens?

    .venv/bin/python benchmarks/sweep_efficiency.py --only-grid --keep /tmp/grid          # 33 min, once
    .venv/bin/python benchmarks/sweep_replay.py /tmp/grid/sweeps/grid [GRID ...] [--seeds 100] [--plot out.png]

One TPE + ASHA run with one sampler seed is a lottery ticket: whether it reaches the grid's best depends on which
configurations its seed proposes first. Training here is deterministic (fixed seed, CPU), so a configuration's
validation curve is the same whichever study runs it; this script replays tunelab's own sampler, pruner, token cap
and repeat handling (the functions `tunelab sweep` uses) against the grid's recorded curves, over many sampler
seeds and token budgets, in seconds instead of hours. Checked against real runs: replaying TPE + ASHA with seed 0
gives exactly the best value the real `sweep_efficiency.py` runs 3 and 4 found (0.4844 and 0.4769).

Baseline: the grid itself in a random order, cut at the same token cap (random search without repeats). Prints,
per strategy and budget, the share of seeds that end within 1% of the grid's best (the issue 8 target), the
median gap, and the ratio to the baseline.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "src"))


def load_grid(folder: Path) -> tuple[dict, dict, int, int, str]:
    """Curves {config key: (values per evaluation, tokens)}, choices per dimension, steps, eval_every, direction."""
    import optuna
    import yaml

    from tunelab.sweep.space import config_key

    url = f"sqlite:///{(folder / 'study.db').resolve()}"
    name = optuna.get_all_study_summaries(url)[0].study_name
    study = optuna.load_study(study_name=name, storage=url)
    curves, choices, steps = {}, {}, None
    for t in study.trials:
        if t.state.name != "COMPLETE" or t.user_attrs.get("duplicate_of") is not None:
            continue
        values = [t.intermediate_values[k] for k in sorted(t.intermediate_values)]
        curves[config_key(t.params)] = (values, int(t.user_attrs["tokens"]))
        for k, v in t.params.items():
            choices.setdefault(k, set()).add(v)
        cfg = Path(t.user_attrs.get("run_dir", "")) / "config.yaml"
        if steps is None and cfg.is_file():
            train = yaml.safe_load(cfg.read_text())["train"]
            steps, every = int(train["max_steps"]), int(train["eval_every"])
    if steps is None:
        raise SystemExit(f"no trial run folder with a config.yaml under {folder}/trials")
    return curves, {k: sorted(v) for k, v in choices.items()}, steps, every, study.direction.name.lower()


def replay(curves: dict, choices: dict, steps: int, every: int, direction: str, sweep: dict, cap: int,
           redirect: bool = True) -> tuple[float, int]:
    """One study against the recorded curves; returns (best value, tokens spent)."""
    import optuna

    from tunelab.config.specs import SweepSpec
    from tunelab.sweep import study as S
    from tunelab.sweep.space import config_key, grid_configs, sample

    optuna.logging.set_verbosity(optuna.logging.ERROR)
    spec = SweepSpec.model_validate({**sweep, "max_tokens": cap, "trials": None, "space": {
        k: {"type": "categorical", "choices": v} for k, v in choices.items()}})
    # a fixed name: Hyperband assigns trials to brackets by a hash of the study name and trial number
    study = optuna.create_study(study_name="replay", direction=direction, sampler=S._sampler(spec),
                                pruner=S._pruner(spec))
    configs = grid_configs(spec, {})
    if spec.strategy == "grid":  # the baseline: every configuration once, in an order drawn from the seed
        import random

        for params in random.Random(spec.seed).sample(configs, len(configs)):
            study.enqueue_trial(params)

    def objective(trial) -> float:
        params = sample(trial, spec, {})
        twin = S._twin(trial)
        if twin is not None:
            if redirect:
                S.queue_nearest_untried(trial, configs, spec)
            return S._reuse(trial, twin)
        values, tokens = curves[config_key(params)]
        per_step = tokens / steps
        for step in range(1, steps + 1):
            used = round(per_step * step)
            trial.set_user_attr("tokens", used)
            if S.over_budget(S._spent(study, trial.number) + used, round(per_step), step, steps, cap):
                S._stop_for_budget(trial, cap, used, f"at step {step}")
            if step % every == 0:
                trial.report(values[step // every - 1], step // every)
                if trial.should_prune():
                    raise optuna.TrialPruned()
        return values[-1]

    study.optimize(objective, n_trials=10 * len(configs),
                   callbacks=[S._budget_callback(spec, 0.0, len(configs))])
    done = [t.value for t in study.trials if t.state.name == "COMPLETE"]
    best = (min if direction == "minimize" else max)(done) if done else float("nan")
    return best, S._spent(study, -1)


def over_seeds(grid: tuple, sweep: dict, cap: int, seeds: int, within: float = 0.01, redirect: bool = True) -> dict:
    """`sweep` replayed with sampler seeds 0..seeds-1 on `grid` (load_grid's curves, choices, steps, every,
    direction): share of seeds within `within` of the grid's best, gaps, tokens (as a share of the grid's), seed 0."""
    curves, _, _, _, direction = grid
    finals = [v[-1] for v, _ in curves.values()]
    best = min(finals) if direction == "minimize" else max(finals)
    grid_tokens = sum(t for _, t in curves.values())
    runs = [replay(*grid, {**sweep, "seed": seed}, cap, redirect) for seed in range(seeds)]
    gaps = [abs(value - best) / abs(best) for value, _ in runs]
    return {"hit": sum(g <= within for g in gaps) / seeds, "median_gap": statistics.median(gaps),
            "mean_gap": statistics.mean(gaps), "tokens": statistics.mean(t / grid_tokens for _, t in runs),
            "seed0_gap": gaps[0], "seed0_value": runs[0][0]}


STRATEGIES = {  # name -> (sweep section, redirect repeats)
    "grid, random order (baseline)": ({"strategy": "grid", "pruner": "none"}, False),
    "random": ({"strategy": "random", "pruner": "none"}, True),
    "TPE": ({"strategy": "tpe", "pruner": "none"}, True),
    "random + ASHA (min 2)": ({"strategy": "random", "pruner": "asha", "min_resource": 2}, True),
    "TPE + ASHA (min 1)": ({"strategy": "tpe", "pruner": "asha", "min_resource": 1}, True),
    "TPE + ASHA (min 2), repeats reused only": ({"strategy": "tpe", "pruner": "asha", "min_resource": 2}, False),
    "TPE + ASHA (min 2)": ({"strategy": "tpe", "pruner": "asha", "min_resource": 2}, True),
    "TPE + Hyperband (min 1)": ({"strategy": "tpe", "pruner": "hyperband", "min_resource": 1}, True),
}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("grids", nargs="+", metavar="GRID",
                    help="kept grid study folders (sweep_efficiency.py --keep DIR: DIR/sweeps/grid)")
    ap.add_argument("--names", nargs="+", help="a label per grid (default: the folder names)")
    ap.add_argument("--seeds", type=int, default=100, help="sampler seeds per strategy and budget")
    ap.add_argument("--shares", type=float, nargs="+", default=[0.2, 1 / 3, 0.5],
                    help="token caps as shares of the grid's tokens")
    ap.add_argument("--within", type=float, default=0.01, help="a hit: within this relative gap of the grid's best")
    ap.add_argument("--plot", help="write hit rate vs budget (PNG, a panel per grid) here")
    ap.add_argument("--json", help="write every number here")
    args = ap.parse_args()
    folders = [Path(g) for g in args.grids]
    names = args.names or [f.parent.parent.name for f in folders]
    if len(names) != len(folders):
        print(f"--names: {len(names)} labels for {len(folders)} grids", file=sys.stderr)
        return 2
    for folder in folders:
        if not (folder / "study.db").is_file():
            print(f"no study.db in {folder} (keep a grid with sweep_efficiency.py --only-grid --keep DIR)",
                  file=sys.stderr)
            return 2
    import optuna

    from tunelab.util.console import console

    optuna.logging.set_verbosity(optuna.logging.ERROR)
    console.quiet = True  # thousands of studies: their per-trial lines are noise here
    results = {name: _replay_grid(folder, name, args) for name, folder in zip(names, folders, strict=True)}
    print(f"hit = share of seeds whose best is within {args.within:.0%} of the grid's best; tokens spent are "
          "within the cap in every cell (it is a hard cap)")
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=1))
    if args.plot:
        _plot(results, args, Path(args.plot))
        print(f"plot: {args.plot}")
    return 0


def _replay_grid(folder: Path, name: str, args) -> dict:
    curves, choices, steps, every, direction = load_grid(folder)
    grid_tokens = sum(t for _, t in curves.values())
    finals = [v[-1] for v, _ in curves.values()]
    best = min(finals) if direction == "minimize" else max(finals)
    print(f"{name}: {len(curves)} configurations, best {best:.4f}, {grid_tokens:,} tokens; {steps} steps, "
          f"evaluated every {every}; {args.seeds} sampler seeds per cell")
    table: dict[str, dict[float, dict]] = {}
    for strategy, (sweep, redirect) in STRATEGIES.items():
        table[strategy] = {share: over_seeds((curves, choices, steps, every, direction), sweep,
                                             int(grid_tokens * share), args.seeds, args.within, redirect)
                           for share in args.shares}
    base = table["grid, random order (baseline)"]
    head = "".join(f"{f'{s:.2f}x: hit / median gap / vs base':>36}" for s in args.shares)
    print(f"{'strategy':42}{head}")
    for strategy, row in table.items():
        cells = "".join(f"{r['hit']:>14.0%}{r['median_gap']:>+10.2%}{_ratio(r['hit'], base[s]['hit']):>12}"
                        for s, r in row.items())
        print(f"{strategy:42}{cells}")
    print()
    return {"best": best, "grid_tokens": grid_tokens, "seeds": args.seeds, "table": table}


def _ratio(hit: float, base: float) -> str:
    return f"{hit / base:.1f}x" if base else "-"


def _plot(results: dict, args, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(results), figsize=(5.5 * len(results), 5.2), sharey=True, squeeze=False)
    for ax, (name, result) in zip(axes[0], results.items(), strict=True):
        for strategy, row in result["table"].items():
            ax.plot(list(row), [r["hit"] for r in row.values()], marker="o", label=strategy,
                    linestyle="--" if "baseline" in strategy else "-")
        ax.set_title(f"{name}: {result['seeds']} seeds per point")
        ax.set_xlabel("token cap (share of the full grid's tokens)")
        ax.set_ylim(0, 1.02)
        ax.grid(alpha=0.3)
    axes[0][0].set_ylabel(f"share of seeds within {args.within:.0%} of the grid's best")
    handles, labels = axes[0][0].get_legend_handles_labels()
    fig.legend(handles, labels, loc="lower center", ncol=4, fontsize=8, frameon=False)
    fig.tight_layout(rect=(0, 0.12, 1, 1))
    fig.savefig(path, dpi=90)


if __name__ == "__main__":
    sys.exit(main())
