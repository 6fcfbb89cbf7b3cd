"""Verb handlers: each parses nothing itself, loads the config, and calls one stage function."""

from __future__ import annotations

import argparse
from pathlib import Path

from rich.table import Table

from tunelab.config.loading import dump_recipe, load_recipe
from tunelab.util.console import console

__all__ = ["cmd_chat", "cmd_data", "cmd_eval", "cmd_models", "cmd_run", "cmd_train", "cmd_validate"]


def _recipe(args: argparse.Namespace):
    return load_recipe(args.recipe, args.overrides), Path(args.recipe).stem


def cmd_run(args: argparse.Namespace) -> int:
    from tunelab import pipeline

    recipe, name = _recipe(args)
    pipeline.run(recipe, name)
    return 0


def cmd_train(args: argparse.Namespace) -> int:
    from tunelab import pipeline

    recipe, name = _recipe(args)
    run_dir = pipeline.train(recipe, name)
    pipeline.build_report(run_dir)
    return 0


def cmd_validate(args: argparse.Namespace) -> int:
    recipe, _ = _recipe(args)
    print(dump_recipe(recipe), end="")
    return 0


def cmd_eval(args: argparse.Namespace) -> int:
    from tunelab import pipeline
    from tunelab.errors import TunelabError
    from tunelab.models import is_run_dir

    if not is_run_dir(args.run_dir):
        raise TunelabError(f"'{args.run_dir}' is not a finished tunelab run folder",
                           fix="pass a folder created by `tunelab train` or `tunelab run`")
    pipeline.evaluate(args.run_dir)
    html, _ = pipeline.build_report(args.run_dir)
    console.print(f"report: [bold]{html}[/]")
    return 0


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


def cmd_chat(args: argparse.Namespace) -> int:
    from tunelab.cli.chat import chat

    return chat(args.target, args.prompt, args.system, args.max_new_tokens)


def cmd_data(args: argparse.Namespace) -> int:
    from tunelab.data.stage import curate_file
    from tunelab.errors import TunelabError

    if not getattr(args, "data_verb", None):
        raise TunelabError("missing data verb", fix="tunelab data --help lists them (clean, pii, filter, ...)")
    if args.on_error:
        args.overrides = [*args.overrides, f"{'data.' if args.data_verb == 'curate' else ''}on_error={args.on_error}"]
    if args.data_verb == "report":
        from tunelab.data.stage import report_file

        spec = load_recipe(None, [f"data.path={args.file}", *(f"data.{o}" for o in args.overrides)]).data
        report, html = report_file(spec, args.out, args.eval, args.model)
        _print_findings(report, html)
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
