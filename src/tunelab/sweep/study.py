"""`tunelab sweep`: an Optuna study whose trials are normal tunelab runs.

Study folder ``<output.dir>/sweeps/<study>/``: ``study.db`` (SQLite, unless `sweep.storage` names a database),
``trials/trial-0007/`` (normal run folders), ``leaderboard.csv`` / ``leaderboard.html``, ``best.yaml`` (a ready
recipe), ``plots/`` and ``sweep.json``. A trial reports its validation metric after every evaluation; the pruner
may stop it there (it is recorded as pruned, its folder keeps what it wrote). A trial that raises is recorded as
failed with the error and the study goes on. Re-running the command continues the study: finished trials are
never repeated, and trials left running by a killed process are marked failed by Optuna's heartbeat.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from tunelab.config.specs import Recipe, SweepSpec
from tunelab.errors import TunelabError
from tunelab.sweep.space import check_space, config_key, grid_configs, grid_points, sample, trial_recipe
from tunelab.util.console import console

__all__ = ["direction_of", "open_study", "planned_trials", "run_sweep", "study_dir"]

_LOSS_METRICS = {"val_loss", "val_ppl"}
FINISHED = ("COMPLETE", "PRUNED", "FAIL")
WORKER_ENV = "TUNELAB_SWEEP_WORKER"  # 1, 2, ... in the worker processes of `tunelab sweep --workers N`


def direction_of(sweep: SweepSpec) -> str:
    if sweep.direction != "auto":
        return sweep.direction
    return "minimize" if sweep.metric in _LOSS_METRICS else "maximize"


def study_dir(recipe: Recipe, recipe_name: str) -> Path:
    return Path(recipe.output.dir) / "sweeps" / (recipe.sweep.study_name or recipe_name)


def _storage_url(recipe: Recipe, folder: Path) -> str:
    return recipe.sweep.storage or f"sqlite:///{(folder / 'study.db').resolve()}"


def _sampler(sweep: SweepSpec):
    import optuna

    if sweep.strategy == "tpe":
        return optuna.samplers.TPESampler(seed=sweep.seed, n_startup_trials=min(5, max(2, (sweep.trials or 10) // 4)))
    if sweep.strategy == "cmaes":
        if any(p.type == "categorical" for p in sweep.space.values()):
            raise TunelabError("cmaes searches continuous spaces only", where="sweep.strategy",
                               fix="use tpe for spaces with categorical dimensions")
        return optuna.samplers.CmaEsSampler(seed=sweep.seed)
    return optuna.samplers.RandomSampler(seed=sweep.seed)  # random, and grid (trials are enqueued)


def _pruner(sweep: SweepSpec):
    import optuna

    if sweep.pruner == "median":
        return optuna.pruners.MedianPruner(n_startup_trials=3, n_warmup_steps=sweep.min_resource - 1)
    if sweep.pruner == "asha":
        return optuna.pruners.SuccessiveHalvingPruner(min_resource=sweep.min_resource,
                                                      reduction_factor=sweep.reduction_factor)
    if sweep.pruner == "hyperband":
        return optuna.pruners.HyperbandPruner(min_resource=sweep.min_resource, reduction_factor=sweep.reduction_factor)
    return optuna.pruners.NopPruner()


def open_study(recipe: Recipe, name: str, folder: Path):
    """Create or load the study (same name, same storage); errors name the storage URL."""
    import optuna
    from optuna.storages import RDBStorage

    folder.mkdir(parents=True, exist_ok=True)
    url = _storage_url(recipe, folder)
    try:
        storage = RDBStorage(url, heartbeat_interval=5, grace_period=20,
                             engine_kwargs={"connect_args": {"timeout": 60}} if url.startswith("sqlite") else {})
        study = optuna.create_study(study_name=name, storage=storage, load_if_exists=True,
                                    direction=direction_of(recipe.sweep), sampler=_sampler(recipe.sweep),
                                    pruner=_pruner(recipe.sweep))
    except TunelabError:
        raise
    except Exception as e:  # sqlalchemy/optuna raise many kinds for a bad URL or a locked/corrupt file
        raise TunelabError(f"cannot open the study storage {url}: {e}", where="sweep.storage",
                           fix="check the database URL and that its driver is installed") from e
    # A seeded sampler replays the same proposals: a resumed study (and each worker process) starts its
    # sequence at its own offset, so it does not propose again what the study has already run. A fresh
    # single-process study keeps the plain seed (reproducible).
    offset = len(study.get_trials(deepcopy=False)) + 100_003 * int(os.environ.get(WORKER_ENV, "0") or 0)
    if offset and recipe.sweep.seed is not None:
        study.sampler = _sampler(recipe.sweep.model_copy(update={"seed": recipe.sweep.seed + offset}))
    return study


def _check_metric(recipe: Recipe) -> None:
    """The objective must be a metric this task's validation produces (checked before any trial)."""
    from tunelab.data.pipeline import read_examples, resolve_data_path
    from tunelab.evaluation.metrics import compute_task_metrics, infer_task

    metric = recipe.sweep.metric
    if metric in _LOSS_METRICS:
        return
    _, _, examples, _ = read_examples(resolve_data_path(recipe.data.path), recipe.data)
    refs = [ex.reference for ex in examples[:200] if ex.reference is not None]
    if not refs:
        raise TunelabError(f"sweep.metric '{metric}' needs answers to compare with; this data has none",
                           where="sweep.metric", fix="use val_loss or val_ppl")
    task = recipe.eval.task if recipe.eval.task != "auto" else infer_task(refs)
    produced = compute_task_metrics(task, refs, refs, recipe.eval.labels)
    numeric = sorted(k for k, v in produced.items() if isinstance(v, int | float) and not isinstance(v, bool)
                     and k != "n_examples")
    if metric not in numeric:
        raise TunelabError(f"sweep.metric '{metric}' is not produced by this {task} task", where="sweep.metric",
                           fix=f"use val_loss, val_ppl or one of: {', '.join(numeric)}")


def validate_sweep(recipe: Recipe) -> None:
    if recipe.sweep is None:
        raise TunelabError("the recipe has no sweep: section", fix="add sweep: {space: {train.lr: {...}}, ...}")
    check_space(recipe, recipe.sweep)
    _check_metric(recipe)


# ----------------------------------------------------------------------------------------------- trials


class _Objective:
    """One trial = one normal run, reporting its validation metric to the pruner after every evaluation."""

    def __init__(self, recipe: Recipe, folder: Path):
        self.recipe, self.folder = recipe, folder
        self.base = recipe.model_dump(mode="json", exclude={"sweep"})
        self.sweep = recipe.sweep
        self.key = self.sweep.metric if self.sweep.metric in _LOSS_METRICS else f"val_{self.sweep.metric}"
        self.sweep_name = folder.name
        self.interrupted: Exception | None = None  # SIGINT/SIGTERM inside a trial: stop the whole study
        self.configs = finite_configs(recipe)  # None for a continuous space: repeats are then all but impossible

    def __call__(self, trial) -> float:
        import optuna

        from tunelab import pipeline
        from tunelab.training.rundir import listen_metrics

        params = sample(trial, self.sweep, self.base)
        twin = _twin(trial)
        if twin is not None:
            return self._repeat(trial, twin)
        cap = self.sweep.max_tokens
        if cap is not None and _spent(trial.study, trial.number) >= cap:  # e.g. another worker spent the rest
            _stop_for_budget(trial, cap, 0, "before it started")
        name = f"trial-{trial.number:04d}"
        run_recipe = trial_recipe(self.base, params, str(self.folder / "trials"), name, self.sweep.metric,
                                  study=self.sweep_name)
        trial.set_user_attr("run_dir", str(self.folder / "trials" / name))
        values: list[float] = []

        seen = [0]  # tokens at the previous metrics row: the next row will add about as many again
        total = run_recipe.train.max_steps  # None for epoch-based runs: their last step is not known here

        def report(row: dict[str, Any]) -> None:
            if cap is not None and row.get("tokens"):
                tokens = int(row["tokens"])
                more, seen[0] = tokens - seen[0], tokens
                if over_budget(_spent(trial.study, trial.number) + tokens, more, row.get("step", 0), total, cap):
                    _stop_for_budget(trial, cap, tokens, f"at step {row.get('step')}")
            if self.key in row and row.get("step", 0) > 0:
                values.append(float(row[self.key]))
                trial.report(values[-1], len(values))
                trial.set_user_attr("tokens", int(row.get("tokens") or 0))
                if trial.should_prune():
                    raise optuna.TrialPruned(f"pruned after {len(values)} evaluations ({self.key}={values[-1]:.4g})")

        try:
            with listen_metrics(report):
                run_dir = pipeline.train(run_recipe, name, tags={"tunelab.sweep": self.sweep_name,
                                                                  "tunelab.trial": str(trial.number)})
        except optuna.TrialPruned:
            self._record_tokens(trial)
            raise
        except Exception as e:
            if getattr(e, "signum", None) is not None:  # TrainingInterrupted: the user stops the study, not a bad trial
                self.interrupted = e
                trial.set_user_attr("interrupted", True)  # not counted as finished; its config runs again on resume
                trial.study.enqueue_trial(dict(trial.params))
                trial.study.stop()
            trial.set_user_attr("error", str(e)[:500])
            self._record_tokens(trial)
            raise
        self._record_tokens(trial, run_dir)
        if not values:
            raise TunelabError(f"trial {trial.number} logged no {self.key}", where="sweep.metric",
                               fix="keep data.split.validation > 0 so trials are evaluated")
        summary = _read_json(run_dir / "train_summary.json")
        use_best = run_recipe.train.early_stopping_patience and summary.get("best_value") is not None
        return float(summary["best_value"]) if use_best else values[-1]

    def _repeat(self, trial, twin) -> float:
        """A proposal the study has run already: reuse its result, and explore its closest untried neighbour next."""
        if self.configs is not None:
            queue_nearest_untried(trial, self.configs, self.sweep)
        return _reuse(trial, twin)

    def _record_tokens(self, trial, run_dir: Path | None = None) -> None:
        rows = _read_jsonl(Path(trial.user_attrs.get("run_dir", "")) / "metrics.jsonl")
        tokens = max((int(r.get("tokens") or 0) for r in rows), default=0)
        trial.set_user_attr("tokens", tokens)


def _twin(trial) -> Any:
    """A finished trial of this study with exactly these parameters (the first), or None.

    TPE and random search over categorical dimensions propose configurations they have already tried; with a
    fixed seed a run is deterministic, so training it again would spend its tokens to learn the same number.
    """
    for t in trial.study.get_trials(deepcopy=False):
        if (t.number != trial.number and t.state.name in ("COMPLETE", "PRUNED") and t.params == trial.params
                and not t.user_attrs.get("interrupted") and "duplicate_of" not in t.user_attrs):
            return t
    return None


def finite_configs(recipe: Recipe) -> list[dict[str, Any]] | None:
    """Every configuration of a finite space (categorical, int and stepped dimensions), or None."""
    import math

    try:
        if math.prod(len(v) for v in grid_points(recipe.sweep).values()) > 10_000:
            return None  # too large to be exhausted; not worth enumerating
        return grid_configs(recipe.sweep, recipe.model_dump(mode="json", exclude={"sweep"}))
    except TunelabError:
        return None


def nearest_untried(params: dict[str, Any], configs: list[dict[str, Any]], tried: set[tuple], sweep: SweepSpec,
                    rng) -> dict[str, Any] | None:
    """The untried configuration closest to `params`: fewest changed dimensions, then the nearest values along
    numeric dimensions (in sorted order); ties are drawn with `rng`. None once every configuration was tried."""
    order: dict[str, dict[str, int] | None] = {}  # value -> rank along a numeric dimension; None: unordered
    for key, values in grid_points(sweep).items():
        numeric = all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in values)
        order[key] = {repr(v): i for i, v in enumerate(sorted(values))} if numeric else None

    def distance(config: dict[str, Any]) -> tuple[int, int]:
        changed = steps = 0
        for key in set(config) | set(params):
            a, b = config.get(key), params.get(key)
            if key not in config or key not in params:
                changed, steps = changed + 1, steps + 1
            elif repr(a) != repr(b):
                ranks = order.get(key)
                changed += 1
                steps += abs(ranks[repr(a)] - ranks[repr(b)]) if ranks and repr(b) in ranks else 1
        return changed, steps

    scored = [(distance(c), c) for c in configs if config_key(c) not in tried]
    if not scored:
        return None
    best = min(d for d, _ in scored)
    closest = [c for d, c in scored if d == best]
    return closest[rng.randrange(len(closest))]


def queue_nearest_untried(trial, configs: list[dict[str, Any]], sweep: SweepSpec) -> dict[str, Any] | None:
    """A repeated proposal in a finite space: queue the closest configuration nobody has run, nor queued, next.

    TPE over categorical dimensions keeps proposing what it has already tried once it likes it (the repeat costs
    no tokens, its result is reused, but it explores nothing); the closest untried neighbour keeps the sampler's
    direction and tries something new. Deterministic for a given sampler seed.
    """
    import random

    tried = set()
    for t in trial.study.get_trials(deepcopy=False):
        if t.state.name == "WAITING":
            tried.add(config_key(t.system_attrs.get("fixed_params") or {}))
        elif t.state.name in ("COMPLETE", "PRUNED", "RUNNING"):
            tried.add(config_key(t.params))
    nxt = nearest_untried(trial.params, configs, tried, sweep, random.Random(f"{sweep.seed}:{trial.number}"))
    if nxt is not None:
        trial.study.enqueue_trial(nxt)
        trial.set_user_attr("queued_next", nxt)
        console.print(f"trial {trial.number} repeats a finished configuration; the closest untried one is "
                      f"queued next: {nxt}")
    return nxt


def over_budget(spent: int, step_tokens: int, step: int, total_steps: int | None, cap: int) -> bool:
    """Stop now? Yes once `spent` passes the cap, or when one more step like the last would pass it.

    The look-ahead keeps a study under its cap instead of one step over; it is skipped at a run's last step
    (no further step comes, only the final evaluation, which costs no training tokens) and when the last step
    is unknown (epoch-based runs), where the study may end up to one step over the cap.
    """
    if spent > cap:
        return True
    return total_steps is not None and step < total_steps and spent + step_tokens > cap


def _spent(study, exclude: int) -> int:
    """Training tokens the other trials of the study have spent, running ones (other workers) included."""
    return sum(int(t.user_attrs.get("tokens") or 0) for t in study.get_trials(deepcopy=False)
               if t.number != exclude)


def _stop_for_budget(trial, cap: int, tokens: int, when: str) -> None:
    """`sweep.max_tokens` is a cap, not a hint: the trial that reaches it stops there (pruned) and so does the study."""
    import optuna

    trial.set_user_attr("tokens", tokens)
    trial.set_user_attr("stopped", f"token budget ({cap:,}) reached {when}")
    trial.study.stop()
    console.print(f"trial {trial.number}: token budget ({cap:,}) reached {when}; no new trials")
    raise optuna.TrialPruned(f"token budget ({cap:,}) reached {when}")


def _reuse(trial, twin) -> float:
    """Give `trial` the result of its twin without training: same value (or pruned), no tokens spent."""
    import optuna

    trial.set_user_attr("duplicate_of", twin.number)
    trial.set_user_attr("run_dir", twin.user_attrs.get("run_dir"))
    trial.set_user_attr("tokens", 0)
    console.print(f"trial {trial.number}: same parameters as trial {twin.number}; its result is reused")
    if twin.state.name == "PRUNED":
        raise optuna.TrialPruned(f"same parameters as trial {twin.number}, which was pruned")
    return float(twin.value)


def _read_json(path: Path) -> dict[str, Any]:
    import json

    return json.loads(path.read_text(encoding="utf-8")) if path.is_file() else {}


def _read_jsonl(path: Path) -> list[dict[str, Any]]:
    import json

    if not path.is_file():
        return []
    return [json.loads(x) for x in path.read_text(encoding="utf-8").splitlines() if x.strip()]


def _finished(study) -> list:
    return [t for t in study.get_trials(deepcopy=False)
            if t.state.name in FINISHED and not t.user_attrs.get("interrupted")]


def _budget_callback(sweep: SweepSpec, t_start: float, size: int | None = None):
    def callback(study, _trial) -> None:
        done = _finished(study)
        if sweep.trials is not None and len(done) >= sweep.trials:
            study.stop()
        elif size is not None and len({config_key(t.params) for t in done}) >= size:
            console.print(f"every configuration of the space ({size}) has been tried: no new trials")
            study.stop()
        elif sweep.max_tokens is not None and sum(t.user_attrs.get("tokens", 0) for t in done) >= sweep.max_tokens:
            console.print(f"token budget reached ({sweep.max_tokens:,}): no new trials")
            study.stop()
        elif sweep.max_time_s is not None and time.monotonic() - t_start >= sweep.max_time_s:
            study.stop()

    return callback


def _enqueue_grid(study, recipe: Recipe) -> int:
    """Grid search = every distinct configuration enqueued once (on a fresh study); returns the grid size."""
    configs = grid_configs(recipe.sweep, recipe.model_dump(mode="json", exclude={"sweep"}))
    if not study.get_trials(deepcopy=False):
        for params in configs:
            study.enqueue_trial(params, skip_if_exists=True)
    return len(configs)


def _target(study, recipe: Recipe) -> int | None:
    """Finished trials the study should end with (grid: at most its size)."""
    target = recipe.sweep.trials
    if recipe.sweep.strategy == "grid":
        size = _enqueue_grid(study, recipe)
        target = min(target, size) if target else size
    return target


def optimize(recipe: Recipe, recipe_name: str, n_trials: int | None = None) -> Any:
    """Run trials of the study until its budget is spent, or `n_trials` of them (this process's share)."""
    import optuna

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    folder = study_dir(recipe, recipe_name)
    study = open_study(recipe, recipe.sweep.study_name or recipe_name, folder)
    sweep = recipe.sweep
    target = _target(study, recipe)
    remaining = None if target is None else max(0, target - len(_finished(study)))
    if n_trials is not None:
        remaining = n_trials if remaining is None else min(n_trials, remaining)
    if remaining == 0:
        return study
    objective = _Objective(recipe, folder)
    size = None if objective.configs is None else len(objective.configs)
    budget = _budget_callback(sweep.model_copy(update={"trials": target}), time.monotonic(), size)
    study.optimize(objective, n_trials=remaining, timeout=sweep.max_time_s,
                   catch=(Exception,), callbacks=[budget], gc_after_trial=True)
    if objective.interrupted is not None:  # the CLI exits 128 + signal; `tunelab sweep` again resumes the study
        raise objective.interrupted
    return study


def _spawn_workers(recipe_path: str, overrides: list[str], shares: list[int | None]) -> list[subprocess.Popen]:
    threads = str(max(1, (os.cpu_count() or 1) // (len(shares) + 1)))
    env = {**os.environ, "OMP_NUM_THREADS": threads}
    procs = []
    for i, share in enumerate(shares, start=1):
        extra = ["--worker-trials", str(share)] if share is not None else []
        cmd = [sys.executable, "-m", "tunelab.cli.main", "sweep", recipe_path, "--worker", *extra, *overrides]
        procs.append(subprocess.Popen(cmd, env={**env, WORKER_ENV: str(i)}))
    return procs


def _shares(remaining: int | None, workers: int) -> list[int | None]:
    """Trials per process so that concurrent workers never overshoot the budget."""
    if remaining is None:
        return [None] * workers
    return [remaining // workers + (i < remaining % workers) for i in range(workers)]


def planned_trials(recipe: Recipe) -> int | None:
    """Trials the study will run in all (grid: its distinct configurations, capped by sweep.trials)."""
    if recipe.sweep.strategy == "grid":
        size = len(grid_configs(recipe.sweep, recipe.model_dump(mode="json", exclude={"sweep"})))
        return min(size, recipe.sweep.trials) if recipe.sweep.trials else size
    return recipe.sweep.trials


def run_sweep(recipe: Recipe, recipe_name: str, recipe_path: str | None = None, overrides: list[str] | None = None,
              workers: int = 1) -> Path:
    """Validate, run the study (with `workers` processes in all), write leaderboard, best recipe and plots."""
    from tunelab.sweep.report import write_study_report

    validate_sweep(recipe)
    folder = study_dir(recipe, recipe_name)
    study = open_study(recipe, recipe.sweep.study_name or recipe_name, folder)  # before the workers attach
    target = _target(study, recipe)
    remaining = None if target is None else max(0, target - len(_finished(study)))
    workers = max(1, min(workers, remaining)) if remaining is not None else workers
    shares = _shares(remaining, workers)
    procs = _spawn_workers(recipe_path, overrides or [], shares[1:]) if workers > 1 and recipe_path else []
    if workers > 1:
        import torch

        torch.set_num_threads(max(1, (os.cpu_count() or 1) // workers))
    try:
        study = optimize(recipe, recipe_name, n_trials=shares[0])
    finally:
        for p in procs:
            p.wait()
    bad = [p.returncode for p in procs if p.returncode]
    if bad:
        console.print(f"[yellow]warning:[/] {len(bad)} worker process(es) exited with errors")
    write_study_report(study, recipe, folder)
    return folder
