"""Verb handlers: each parses nothing itself, loads the config, and calls one stage function."""

from __future__ import annotations

import argparse
from pathlib import Path

from rich.table import Table

from tunelab.config.loading import dump_recipe, load_recipe
from tunelab.util.console import console

__all__ = ["cmd_chat", "cmd_compare", "cmd_data", "cmd_eval", "cmd_gate", "cmd_keys", "cmd_merge", "cmd_models", "cmd_review", "cmd_reward", "cmd_run", "cmd_runs", "cmd_serve", "cmd_sweep", "cmd_track", "cmd_train",
           "cmd_validate"]


def _recipe(args: argparse.Namespace):
    return load_recipe(args.recipe, args.overrides), Path(args.recipe).stem


def _launch_distributed(args: argparse.Namespace, recipe, name: str) -> tuple[int, str]:
    """Run `tunelab train` as args.nproc torchrun processes; returns (exit code, run folder name)."""
    from datetime import datetime

    from tunelab.training.distributed import launch

    run_name = recipe.output.name or f"{name}-{datetime.now().strftime('%Y%m%d-%H%M%S')}"
    argv = ["train", args.recipe, *args.overrides, f"output.name={run_name}"]
    if args.resume:  # last: a bare --resume before the overrides would take the first one as its RUN_DIR
        argv += ["--resume"] if args.resume is True else ["--resume", args.resume]
    return launch(args.nproc, argv), run_name


def _check_processes(args: argparse.Namespace, recipe) -> None:
    """Refuse what cannot run with ``--nproc`` before starting any process (one line, exit 2, rather than N
    workers failing under torchrun)."""
    if _is_distributed_child():
        return
    from tunelab.training.deepspeed import check_launch

    nproc = getattr(args, "nproc", 1)
    check_launch(recipe, nproc)
    if nproc < 2:
        return
    import inspect
    from types import SimpleNamespace

    from tunelab.recipes.objectives import recipe_class
    from tunelab.training import fsdp

    fsdp.preflight(recipe)
    cls = recipe_class(recipe)  # the objective's own preflight, as one process
    if len(inspect.signature(cls.preflight).parameters) > 1:  # the recipes that refuse --nproc say so here
        cls.preflight(recipe, SimpleNamespace(enabled=True, world=nproc), bool(getattr(args, "resume", False)))


def _is_distributed_child() -> bool:
    import os

    from tunelab.training.distributed import LAUNCHED_ENV

    return os.environ.get(LAUNCHED_ENV) == "1" or int(os.environ.get("WORLD_SIZE", "1")) > 1


def _is_main_rank() -> bool:
    import os

    return int(os.environ.get("RANK", "0")) == 0


def _print_estimate(est: dict, title: str, trials: int | None = None) -> None:
    from tunelab.training.dryrun import format_duration

    table = Table(title=title)
    table.add_column("")
    table.add_column("estimate", justify="right")
    rows = [("train rows", f"{est['train_rows']:,}"), ("optimizer steps", f"{est['steps']:,}"),
            ("tokens to process", f"{est['tokens_to_process']:,}"),
            ("measured real tok/s", f"{est['measured_tokens_per_s']:,.0f} ({est['device']}/{est['precision']})"),
            ("training time", format_duration(est["est_train_s"])),
            ("with validation", f"{format_duration(est['est_total_s'])} ({est['validations']} passes of "
                                f"{est['validation_pass_s']:.1f} s)"),
            ("peak memory (measured)", f"{est['peak_rss_mb']:,.0f} MB RSS"),
            ("trainable / total params", f"{est['trainable_params']:,} / {est['total_params']:,}")]
    if trials:
        rows += [("trials", str(trials)), ("study tokens (no pruning)", f"{est['tokens_to_process'] * trials:,}"),
                 ("study time (no pruning)", format_duration(est["est_total_s"] * trials))]
    for k, v in rows:
        table.add_row(k, v)
    console.print(table)


def cmd_run(args: argparse.Namespace) -> int:
    from tunelab import pipeline
    from tunelab.evaluation.gate import gate_exit_code

    recipe, name = _recipe(args)
    if args.dry_run:
        from tunelab.training.dryrun import estimate_run

        _print_estimate(estimate_run(recipe), f"dry run: {name} (nothing was written)")
        return 0
    _check_processes(args, recipe)
    if getattr(args, "nproc", 1) > 1 and not _is_distributed_child():
        code, run_name = _launch_distributed(args, recipe, name)
        if code != 0:
            return code
        return gate_exit_code(pipeline.finish(Path(recipe.output.dir) / run_name, recipe))
    return gate_exit_code(pipeline.run(recipe, name, resume=args.resume or False))  # 3 when the gate blocks


def cmd_train(args: argparse.Namespace) -> int:
    from tunelab import pipeline

    recipe, name = _recipe(args)
    if args.dry_run:
        from tunelab.training.dryrun import estimate_run

        _print_estimate(estimate_run(recipe), f"dry run: {name} (nothing was written)")
        return 0
    _check_processes(args, recipe)
    if args.nproc > 1 and not _is_distributed_child():
        return _launch_distributed(args, recipe, name)[0]
    run_dir = pipeline.train(recipe, name, resume=args.resume or False)
    if _is_main_rank():
        pipeline.build_report(run_dir)
    return 0


def cmd_sweep(args: argparse.Namespace) -> int:
    from tunelab.sweep import optimize, run_sweep

    recipe, name = _recipe(args)
    if args.dry_run:
        from tunelab.sweep.study import planned_trials, validate_sweep
        from tunelab.training.dryrun import estimate_run

        validate_sweep(recipe)
        _print_estimate(estimate_run(recipe.model_copy(update={"sweep": None})),
                        f"dry run: sweep {name}, one trial at the base recipe's values", planned_trials(recipe))
        return 0
    if args.worker:  # started by --workers: run trials until the shared study's budget is spent
        optimize(recipe, name, n_trials=args.worker_trials)
        return 0
    folder = run_sweep(recipe, name, args.recipe, args.overrides, workers=args.workers)
    console.print(f"study: [bold]{folder}[/] (leaderboard.html, best.yaml, plots/)")
    return 0


def _fmt(v) -> str:
    if v is None:
        return "-"
    if isinstance(v, float):
        return f"{v:.4g}"
    return str(v)


def cmd_runs(args: argparse.Namespace) -> int:
    import json

    from tunelab.errors import TunelabError
    from tunelab.runs import compare_runs, find_runs, run_record

    if args.action == "list":
        records = find_runs(args.dir)
        table = Table(title=f"{len(records)} runs in {args.dir}")
        for col in ("run", "status", "objective", "method", "steps", "time s", "tok/s", "best val loss", "eval"):
            table.add_column(col)
        for r in records:
            ev = f"{r['eval_metric']} {_fmt(r['eval_base'])} → {_fmt(r['eval_tuned'])}" if r["eval_metric"] else "-"
            table.add_row(str(Path(r["path"]).relative_to(args.dir)), r["status"], r["objective"], str(r["method"]),
                          _fmt(r["steps"]), _fmt(r["train_time_s"]), _fmt(r["tokens_per_s"]),
                          _fmt(r["best_val_loss"]), ev)
        console.print(table)
        return 0
    if args.action == "show":
        if len(args.paths) != 1:
            raise TunelabError("runs show takes one run folder", fix="tunelab runs show runs/NAME")
        r = run_record(Path(args.paths[0]))
        console.print_json(json.dumps({k: v for k, v in r.items() if k != "config"}, default=str))
        return 0
    records, differ = compare_runs(args.paths)
    table = Table(title="runs compared")
    table.add_column("")
    for r in records:
        table.add_column(r["name"])
    for key in ("status", "steps", "train_time_s", "tokens_per_s", "best_val_loss", "eval_metric", "eval_base",
                "eval_tuned", "trainable_params", "data_fingerprint"):
        table.add_row(key, *(_fmt(r[key]) for r in records))
    for key, values in differ.items():
        table.add_row(f"[bold]{key}[/]", *(_fmt(v) for v in values))
    console.print(table)
    return 0


def cmd_track(args: argparse.Namespace) -> int:
    import subprocess
    import sys

    from tunelab.tracking import default_mlflow_uri

    uri = args.uri or default_mlflow_uri(args.dir)
    console.print(f"MLflow UI on http://{args.host}:{args.port} over {uri} (Ctrl-C stops it)")
    return subprocess.call([sys.executable, "-m", "mlflow", "ui", "--backend-store-uri", uri, "--host", args.host,
                            "--port", str(args.port)])


def cmd_validate(args: argparse.Namespace) -> int:
    recipe, _ = _recipe(args)
    print(dump_recipe(recipe), end="")
    return 0


def cmd_merge(args: argparse.Namespace) -> int:
    from tunelab.methods.merge import merge_run

    record = merge_run(args.run_dir, args.out, dtype=args.dtype, overwrite=args.overwrite)
    diff = record["max_abs_logit_diff"]["merged_vs_adapter_fp32"]
    console.print(f"merged {record['method']} run into [bold]{args.out}[/] ({args.dtype}; max logit difference "
                  f"vs the adapter {diff:.2e}); load it with AutoModelForCausalLM.from_pretrained")
    return 0


def cmd_eval(args: argparse.Namespace) -> int:
    from tunelab import pipeline
    from tunelab.errors import TunelabError
    from tunelab.models import is_run_dir
    from tunelab.tracking import log_evaluation

    if not is_run_dir(args.run_dir):
        raise TunelabError(f"'{args.run_dir}' is not a finished tunelab run folder",
                           fix="pass a folder created by `tunelab train` or `tunelab run`")

    pipeline.evaluate(args.run_dir, args.overrides)
    html, _ = pipeline.build_report(args.run_dir)
    log_evaluation(args.run_dir)
    console.print(f"report: [bold]{html}[/]")
    from tunelab.evaluation.gate import gate_exit_code

    return gate_exit_code(args.run_dir)  # 3 when the recipe's gate blocks


def cmd_compare(args: argparse.Namespace) -> int:
    from tunelab.evaluation.compare import compare_runs_report

    out = compare_runs_report(args.runs, args.out)
    console.print(f"comparison: [bold]{out / 'compare.html'}[/] (compare.csv, plots/)")
    return 0


def cmd_gate(args: argparse.Namespace) -> int:
    from tunelab.evaluation.gate import GATE_BLOCKED_EXIT, decide_run_gate
    from tunelab.models import is_run_dir

    gate = decide_run_gate(args.run_dir, args.rules or None)
    if is_run_dir(args.run_dir):  # the report shows the decision that now stands
        from tunelab import pipeline

        pipeline.build_report(args.run_dir)
    return 0 if gate["passed"] else GATE_BLOCKED_EXIT


def cmd_models(args: argparse.Namespace) -> int:
    from tunelab.models.catalog import list_models

    table = Table(title="models (training memory: weights + grads + AdamW, excluding activations)")
    for col in ("name", "source", "status", "params", "LoRA train", "full train", "description"):
        table.add_column(col)
    for m in list_models():
        mem = m.memory_mb()
        table.add_row(m.name, m.source, m.status, f"{m.params / 1e6:,.1f} M" if m.params else "?",
                      f"{mem['lora']:,.0f} MB" if mem["lora"] else "?",
                      f"{mem['full']:,.0f} MB" if mem["full"] else "?", m.description)
    console.print(table)
    return 0


def cmd_reward(args: argparse.Namespace) -> int:
    from tunelab.errors import TunelabError
    from tunelab.recipes.reward import score_file

    if getattr(args, "reward_verb", None) != "score":
        raise TunelabError("missing reward verb", fix="tunelab reward score RUN_OR_MODEL FILE -o OUT.jsonl")
    if args.batch_size < 1:
        raise TunelabError(f"--batch-size must be at least 1, got {args.batch_size}", where="--batch-size")
    res = score_file(args.model, args.file, args.out, on_error=args.on_error, batch_size=args.batch_size)
    spread = f"mean {res['mean']:.4f}, std {res['std']:.4f}" if res["scored"] else "nothing scored"
    console.print(f"scored {res['scored']} of {res['rows']} rows ({spread}); {res['rejected']} rejected → "
                  f"[bold]{res['out']}[/]")
    return 0


def cmd_review(args: argparse.Namespace) -> int:
    from tunelab import pipeline
    from tunelab.errors import TunelabError
    from tunelab.evaluation.review import export_review, import_ratings

    if args.action == "export":
        if args.max_items is not None and args.max_items < 1:
            raise TunelabError(f"--max-items must be at least 1, got {args.max_items}", where="--max-items")
        paths = export_review(args.run_dir, args.out, args.against, args.seed, args.max_items, args.overwrite)
        console.print(f"sheet: [bold]{paths['html']}[/] and {paths['csv']} (hand these out); key: {paths['key']} "
                      "(keep it)")
        return 0
    if not args.ratings:
        raise TunelabError("missing the ratings file", fix=f"tunelab review import {args.run_dir} ratings.csv")
    human = import_ratings(args.run_dir, args.ratings)
    html, _ = pipeline.build_report(args.run_dir)
    a, b = human["systems"]
    console.print(f"{human['n_ratings']} ratings of {human['n_items']} items ({human['unrated']} unrated): {a} vs {b} "
                  f"win {human['win_rate']:.1%} · tie {human['tie_rate']:.1%} · loss {human['loss_rate']:.1%}; "
                  f"report: [bold]{html}[/]")
    return 0


def cmd_chat(args: argparse.Namespace) -> int:
    from tunelab.cli.chat import chat

    return chat(args.target, args.prompt, args.system, args.max_new_tokens)


def cmd_serve(args: argparse.Namespace) -> int:
    from tunelab.serving import serve
    from tunelab.serving.lifecycle import exit_zero_on_sigterm
    from tunelab.serving.settings import serve_settings

    spec = serve_settings(args.model, args.adapter, args.overrides, host=args.host, port=args.port,
                          embedding_model=args.embedding_model, engine=args.engine, database=args.db)
    exit_zero_on_sigterm()  # a graceful stop on SIGTERM (orchestrators) is a success
    serve(spec, api_key=args.api_key, ssl_keyfile=args.ssl_keyfile, ssl_certfile=args.ssl_certfile,
          log_level=args.log_level)
    return 0


def cmd_keys(args: argparse.Namespace) -> int:
    from tunelab.serving.keyadmin import keys_command

    return keys_command(args.action, args.target, rpm=args.rpm, tokens_per_day=args.tokens_per_day,
                        db_url=args.db, state_dir=args.state_dir)


def cmd_data(args: argparse.Namespace) -> int:
    from tunelab.data.stage import curate_file
    from tunelab.errors import TunelabError

    if not getattr(args, "data_verb", None):
        raise TunelabError("missing data verb", fix="tunelab data --help lists them (clean, pii, filter, ...)")
    if args.on_error:
        args.overrides = [*args.overrides, f"{'data.' if args.data_verb == 'curate' else ''}on_error={args.on_error}"]
    if args.data_verb == "report":
        from tunelab.data.preference import PREFERENCE_FORMATS
        from tunelab.data.preference_report import report_preference_file
        from tunelab.data.stage import report_file

        overrides = [f"data.path={args.file}", *(f"data.{o}" for o in args.overrides)]
        if any(o.replace(" ", "") in {f"format={f}" for f in PREFERENCE_FORMATS} for o in args.overrides):
            overrides.append("train.objective=preference")  # a recipe allows preference formats only with it
        spec = load_recipe(None, overrides).data
        report, html = (report_preference_file(spec, args.out, args.eval, args.model)
                        or report_file(spec, args.out, args.eval, args.model))
        _print_findings(report, html)
        return 0
    if args.data_verb == "from-feedback":
        from tunelab.data.feedback import feedback_to_dataset

        extra = [o for o in args.overrides if not o.startswith("on_error=")]
        if extra:
            raise TunelabError(f"from-feedback takes no data overrides (got {' '.join(extra)})",
                               fix="use --to, --scale and --max-pairs-per-prompt; see docs/preferences.md")
        manifest = feedback_to_dataset(args.file, args.out, to=args.to, scale=args.scale,
                                       max_pairs_per_prompt=args.max_pairs_per_prompt,
                                       on_error=args.on_error or "stop", overwrite=args.overwrite)
        _print_steps(manifest, args.out)
        return 0
    if args.data_verb == "split":
        from tunelab.data.stage import split_file

        spec = load_recipe(None, [f"data.path={args.file}", *(f"data.{o}" for o in args.overrides)]).data
        _print_split(split_file(spec, args.out, overwrite=args.overwrite), args.out)
        return 0
    if args.data_verb == "curate":
        spec = load_recipe(args.recipe, args.overrides).data
        steps = list(spec.curate.steps)
        if not steps:
            raise TunelabError("the recipe has no data.curate.steps", where=args.recipe,
                               fix="add e.g. data.curate.steps: [clean, pii, filter, dedup, decontam]")
    else:
        spec = load_recipe(None, [f"data.path={args.file}", *(f"data.{o}" for o in args.overrides)]).data
        steps = [args.data_verb]
    manifest = curate_file(spec, steps, args.out, args.eval, overwrite=args.overwrite)
    _print_steps(manifest, args.out)
    return 0


def _print_split(manifest: dict, out: str) -> None:
    usable = manifest["rows_out"]
    table = Table(title=f"{manifest['rows_in']} rows in → {usable} split, {manifest['rejected']} rejected at read"
                  + (" (stratified by label)" if manifest["stratified"] else ""))
    for col in ("split", "rows", "share", "labels"):
        table.add_column(col)
    for name, info in manifest["splits"].items():
        labels = ", ".join(f"{k} {v}" for k, v in info.get("labels", {}).items())
        table.add_row(name, str(info["rows"]), f"{info['rows'] / max(usable, 1):.1%}", labels)
    console.print(table)
    console.print(f"datasets: [bold]{out}[/]/train, /validation, /test (data.jsonl, manifest.json); "
                  "read rejects in rejects.jsonl")


def _print_steps(manifest: dict, out: str) -> None:
    table = Table(title=f"{manifest['rows_in']} rows in → {manifest['rows_out']} kept, {manifest['rejected']} rejected")
    for col in ("step", "in", "kept", "rejected", "modified", "details"):
        table.add_column(col)
    for s in manifest["steps"]:
        details = ", ".join(f"{k}: {v}" for k, v in (s.get("details") or {}).items())
        table.add_row(s["step"], str(s["rows_in"]), str(s["kept"]), str(s["rejected"]), str(s.get("modified", "")),
                      details)
    console.print(table)
    console.print(f"dataset: [bold]{out}[/] (data.jsonl, rejects.jsonl, manifest.json)")


def _print_findings(report: dict, html) -> None:
    colors = {"high": "red", "medium": "yellow", "low": "cyan", "info": "dim"}
    c = report["counts"]
    table = Table(title=f"{c['rows']} rows, {c['usable']} usable, {c['rejected']} rejected at read")
    for col in ("severity", "finding", "action"):
        table.add_column(col)
    for f in report["findings"]:
        sev = f["severity"]
        table.add_row(f"[{colors.get(sev, 'white')}]{sev}[/]", f"{f['title']}: {f['detail']}", f.get("action") or "")
    console.print(table)
    console.print(f"report: [bold]{html}[/]")
