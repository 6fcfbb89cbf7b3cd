"""`tunelab` entry point: argument parsing and the one error policy (one line, exit 2, --debug for traces)."""

from __future__ import annotations

import argparse
import os
import sys
import textwrap
from collections.abc import Callable, Sequence

from tunelab.errors import TunelabError

__all__ = ["build_parser", "main"]

EXAMPLES = {
    "run": """
        examples:
          tunelab run examples/quickstart.yaml
          tunelab run examples/emotion.yaml data.path=../shared/data/emotion/train.txt train.max_steps=100
        Trains, evaluates base vs tuned on the held-out split and writes report.html in the run folder.
        Exit codes: 0 done; 2 bad input; 3 the recipe's gate blocked the run (eval/gate.json says why).""",
    "train": """
        examples:
          tunelab train examples/quickstart.yaml
          tunelab train examples/quickstart.yaml method.name=full train.lr=5e-5 output.name=full-ft
          tunelab train examples/quickstart.yaml train.save_every=50 output.name=qs   (Ctrl-C saves a checkpoint)
          tunelab train examples/quickstart.yaml output.name=qs --resume             (continues exactly)
          tunelab train examples/quickstart.yaml --nproc 2                           (data-parallel, 2 processes)
          tunelab train examples/quickstart.yaml --dry-run            (tokens, measured tok/s, time, memory)
        Writes a run folder: adapter/ (or model/), tokenizer/, config.yaml, manifest.json, metrics.jsonl,
        checkpoints/ (with train.save_every or after SIGINT/SIGTERM).""",
    "eval": """
        examples:
          tunelab eval runs/quickstart
          tunelab eval runs/dialogsum eval.bias.enabled=true eval.judge.judge.endpoint=http://127.0.0.1:8000/v1
        Evaluates the run's tuned model and its base model on the same held-out split; writes eval/ and
        refreshes report.html. Exits 3 when the recipe's gate blocks (2 is bad input). eval.* overrides
        apply to this evaluation only (config.yaml is not changed).""",
    "compare": """
        examples:
          tunelab compare runs/emotion runs/emotion-r8
          tunelab compare runs/a runs/b runs/c -o reports/abc
        One row per run and variant (base model, prompting baselines, fine-tuned): the headline metric with
        its 95% CI, the other task metrics, general-set perplexity changes, gate and training cost.
        Writes OUT/compare.csv, OUT/compare.html and OUT/plots/ (default OUT: compare).""",
    "gate": """
        examples:
          tunelab gate runs/emotion                              (the recipe's gate: rules)
          tunelab gate runs/emotion "tuned.macro_f1 >= 0.6" "general.worst.perplexity <= 5%"
        Decides a gate on the run's eval/metrics.json without running a model; writes eval/gate.json.
        Exit codes: 0 passed; 3 blocked; 2 bad input (unknown metric: the error lists the valid ones).""",
    "chat": """
        examples:
          tunelab chat runs/quickstart --prompt "Extract the ticket as JSON ... Ticket: my earbuds broke"
          tunelab chat smollm2-135m-instruct          (interactive; /reset clears history, /exit quits)""",
    "models": """
        examples:
          tunelab models
        Lists builtin aliases and models in the local Hugging Face cache, with parameter counts and
        estimated training memory (LoRA on a bf16 base / full fine-tuning, activations not included).""",
    "data": """
        examples:
          tunelab data report ../shared/data/codealpaca/code_alpaca_2k.json -o reports/codealpaca max_length=512
          tunelab data clean tickets.jsonl -o data/clean curate.clean.strip_html=true
          tunelab data pii tickets.jsonl -o data/redacted                  (curate.pii.action=drop drops rows)
          tunelab data filter chats.jsonl -o data/filtered curate.filter.languages=[en]
          tunelab data dedup ../shared/data/codealpaca/code_alpaca_2k.json -o data/dedup curate.dedup.threshold=0.7
          tunelab data decontam train.jsonl --eval test.jsonl -o data/decontam
          tunelab data curate examples/curated.yaml -o data/curated          (the recipe's data.curate.steps)
          tunelab data augment chats.jsonl -o data/eda curate.augment.copies=4   (EDA: synonym/insert/swap/delete)
          tunelab data augment chats.jsonl -o data/si curate.augment.ops=[self_instruct,paraphrase]
          tunelab data augment chats.jsonl -o data/bt curate.augment.ops=[back_translate] \\
              curate.augment.generator.endpoint=http://127.0.0.1:8000/v1 curate.augment.generator.model=NAME
          tunelab data score chats.jsonl -o data/best curate.score.keep_top=500      (LLM judge, default model)
          tunelab data score chats.jsonl -o data/good curate.score.min_score=3.5 curate.score.rubric_file=rubric.txt
          tunelab data split ../shared/data/emotion/train.txt -o data/emotion delimiter=';' split.test=0.2
          tunelab data report ../shared/data/llamafactory_dpo_en_demo/dpo_en_demo.json -o reports/dpo  (pairs too)
          tunelab data from-feedback feedback.jsonl -o data/prefs                 (--to kto: labelled rows)
        `report` writes data_report.html and data_report.json (findings with severity and the action to take).
        The others write a dataset folder: data.jsonl, rejects.jsonl (every removed row, its step and reason)
        and manifest.json (input hashes, steps with parameters and counts). Use the folder as data.path.
        `score` adds {"score": {"value", "judge", "rubric"}} to every row; `split` writes OUT/train,
        OUT/validation and OUT/test dataset folders (data.split.* settings), read rejects in OUT/rejects.jsonl.
        Overrides are keys of the recipe's data section (format=alpaca, columns={...}, curate.dedup.near=false).""",
    "sweep": """
        examples:
          tunelab sweep examples/emotion_sweep.yaml
          tunelab sweep examples/emotion_sweep.yaml --workers 2          (two processes share the SQLite study)
          tunelab sweep examples/emotion_sweep.yaml sweep.trials=40       (re-running continues the study)
        Writes runs/sweeps/<study>/: trials/ (normal run folders), leaderboard.csv/.html, best.yaml, plots/.""",
    "runs": """
        examples:
          tunelab runs list                       (every run folder under runs/, sweep trials included)
          tunelab runs show runs/quickstart
          tunelab runs compare runs/a runs/b      (config keys that differ, metrics side by side)""",
    "track": """
        examples:
          tunelab track ui                        (MLflow UI on http://127.0.0.1:5000 over runs/mlflow.db)
          tunelab track ui --dir runs --port 5001""",
    "validate": """
        examples:
          tunelab validate examples/quickstart.yaml
          tunelab validate examples/emotion.yaml data.path=../shared/data/emotion/train.txt
        Prints the resolved recipe (every default explicit) or the first problem with file:line.""",
    "merge": """
        examples:
          tunelab merge runs/quickstart -o models/quickstart-merged
          tunelab merge runs/emotion-ia3 -o models/emotion --dtype bf16 --overwrite
        Folds a LoRA/QLoRA/DoRA/IA3 adapter into the base model and writes a standard Transformers folder
        (safetensors, config, tokenizer with the chat template) that AutoModelForCausalLM loads alone; the
        merged logits are checked against the adapter's first. Prefix/prompt/P-tuning runs cannot merge
        (use the run folder itself: `tunelab chat RUN_DIR`).""",
    "reward": """
        examples:
          tunelab reward score runs/reward answers.jsonl -o scored.jsonl
          tunelab reward score runs/reward/model answers.jsonl -o scored.jsonl --on-error skip
        Rows are {prompt, response} (prompt: text or a message list; `completion` is read as the response),
        or {messages} ending with the assistant answer. Each row is written back with a `reward` field;
        with --on-error skip, bad rows go to OUT.rejects.jsonl with their reasons. Train a reward model with
        train.objective=reward (examples/reward.yaml).""",
    "serve": """
        examples:
          tunelab serve smollm2-135m-instruct
          tunelab serve runs/support --adapter billing=runs/billing --port 8080      (base + 2 adapters)
          tunelab serve models/quickstart-merged --embedding-model all-minilm-l6-v2
          tunelab serve runs/support batch_size=8 max_n=2 queue_size=32             (serve.* settings)
        OpenAI-compatible API on 127.0.0.1:8000: /v1/models, /v1/chat/completions, /v1/completions,
        /v1/embeddings, /v1/feedback, /health, /ready, /metrics. Every route but /health needs
        `Authorization: Bearer KEY` (--api-key or $TUNELAB_API_KEY; else a key is generated and printed).
        Prints curl and openai snippets; docs/serving.md has every field and limit.""",
    "keys": """
        examples:
          tunelab keys create support-bot --rpm 60 --tokens-per-day 200000
          tunelab keys list
          tunelab keys revoke 3f9a1c0b7d2e
          tunelab keys list --db postgresql+psycopg://tunelab@db/tunelab
        Keys live in the server database: --db URL, else $TUNELAB_DATABASE_URL, else serve-state/serve.db
        (the file `tunelab serve` reads by default). The key is printed once, at creation; only a salted
        hash is stored. Over --rpm or --tokens-per-day (UTC day) a request gets 429 with Retry-After.""",
    "review": """
        examples:
          tunelab review export runs/dialogsum                      (sheet in runs/dialogsum/review/sheet/)
          tunelab review export runs/dialogsum -o /tmp/sheet --seed 7 --max-items 40 --against 5_shot
          tunelab review import runs/dialogsum ratings.csv
        `export` writes a blind side-by-side sheet (review.html + ratings.csv): per item the input, the
        reference and two answers, A and B, in a seeded random order; the key (which system is A) stays in
        RUN/review/key.json, outside the sheet folder. `import` checks the filled CSV (preference A, B or tie;
        errors name the line), un-blinds it and puts win/tie/loss rates with 95% intervals into
        eval/metrics.json["human"] and the report.""",
}


def _add_recipe_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("recipe", help="recipe YAML file")
    p.add_argument("overrides", nargs="*", metavar="key.sub=value", help="override recipe values")


def _sub(subs, name: str, help_text: str, handler: Callable) -> argparse.ArgumentParser:
    p = subs.add_parser(name, help=help_text, description=help_text,
                        epilog=textwrap.dedent(EXAMPLES[name]), formatter_class=argparse.RawDescriptionHelpFormatter)
    p.set_defaults(handler=handler)
    return p


def build_parser() -> argparse.ArgumentParser:
    from tunelab import __version__
    from tunelab.cli import commands as c

    parser = argparse.ArgumentParser(
        prog="tunelab", description="Adapt an open LLM to your task: data → train → eval → report.",
        epilog="example: tunelab run examples/quickstart.yaml", formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--version", action="version", version=f"tunelab {__version__}")
    parser.add_argument("--debug", action="store_true", help="show tracebacks for errors")
    subs = parser.add_subparsers(dest="command", metavar="COMMAND")
    for verb, text, handler in (("run", "train, evaluate and report, as the recipe says", c.cmd_run),
                                ("train", "fine-tune a model from a recipe", c.cmd_train)):
        p = _sub(subs, verb, text, handler)
        _add_recipe_args(p)
        p.add_argument("--resume", nargs="?", const=True, default=False, metavar="RUN_DIR",
                       help="continue the newest interrupted run of this recipe (or RUN_DIR) from its last checkpoint")
        p.add_argument("--nproc", type=int, default=1, metavar="N",
                       help="data-parallel processes on this machine (torchrun; gloo on CPU, NCCL on GPU)")
        p.add_argument("--dry-run", action="store_true",
                       help="print tokens to process, measured throughput, estimated time and memory; train nothing")
    _add_recipe_args(_sub(subs, "validate", "check a recipe and print it resolved", c.cmd_validate))
    sw = _sub(subs, "sweep", "search hyperparameters (grid/random/TPE/CMA-ES with pruning) on Optuna", c.cmd_sweep)
    _add_recipe_args(sw)
    sw.add_argument("--workers", type=int, default=1, metavar="N", help="trial processes sharing the study")
    sw.add_argument("--dry-run", action="store_true", help="estimate the study's cost (one trial measured); run nothing")
    sw.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)  # a process started by --workers
    sw.add_argument("--worker-trials", type=int, default=None, help=argparse.SUPPRESS)
    runs = _sub(subs, "runs", "list, show and compare run folders (works without MLflow)", c.cmd_runs)
    runs.add_argument("action", choices=["list", "show", "compare"])
    runs.add_argument("paths", nargs="*", metavar="RUN_DIR", help="run folders (show: one, compare: two or more)")
    runs.add_argument("--dir", default="runs", help="folder of run folders (list; default: runs)")
    track = _sub(subs, "track", "open the experiment tracker's UI (MLflow)", c.cmd_track)
    track.add_argument("action", choices=["ui"])
    track.add_argument("--dir", default="runs", help="output.dir holding mlflow.db (default: runs)")
    track.add_argument("--uri", default=None, help="tracking URI (default: SQLite in --dir)")
    track.add_argument("--port", type=int, default=5000)
    track.add_argument("--host", default="127.0.0.1")
    ev = _sub(subs, "eval", "evaluate a run folder (tuned vs base) on held-out data", c.cmd_eval)
    ev.add_argument("run_dir", help="run folder from `tunelab train`")
    ev.add_argument("overrides", nargs="*", metavar="eval.key=value", help="eval settings for this evaluation only")
    cmp = _sub(subs, "compare", "compare runs: base, prompting baselines and fine-tuned, with CIs", c.cmd_compare)
    cmp.add_argument("runs", nargs="+", metavar="RUN_DIR", help="evaluated run folders")
    cmp.add_argument("-o", "--out", default="compare", help="output folder (default: compare)")
    gate = _sub(subs, "gate", "decide a run's deployment gate from its evaluation (exit 3 when blocked)",
                c.cmd_gate)
    gate.add_argument("run_dir", help="evaluated run folder")
    gate.add_argument("rules", nargs="*", metavar="RULE", help="rules instead of the recipe's gate: (quote each)")
    chat = _sub(subs, "chat", "talk to a run folder's model or any model", c.cmd_chat)
    chat.add_argument("target", help="run folder, model alias, local model folder or cached hub id")
    chat.add_argument("--prompt", help="answer this one prompt and exit (default: interactive)")
    chat.add_argument("--system", help="system message")
    chat.add_argument("--max-new-tokens", type=int, default=256)
    _sub(subs, "models", "list available models with sizes and memory estimates", c.cmd_models)
    merge = _sub(subs, "merge", "merge a run's adapter into its base: a standard Transformers folder", c.cmd_merge)
    merge.add_argument("run_dir", help="run folder from `tunelab train`")
    merge.add_argument("-o", "--out", required=True, help="output model folder")
    merge.add_argument("--dtype", choices=["fp32", "bf16"], default="fp32", help="weights dtype (default fp32)")
    merge.add_argument("--overwrite", action="store_true", help="replace a non-empty output folder")
    _add_data_verbs(_sub(subs, "data", "curate a dataset: clean, pii, filter, dedup, decontam", c.cmd_data))
    _add_reward_verbs(_sub(subs, "reward", "use a trained reward model: score prompt/response rows", c.cmd_reward))
    _add_serve_args(_sub(subs, "serve", "serve a model, run or adapters over an OpenAI-compatible API", c.cmd_serve))
    _add_keys_args(_sub(subs, "keys", "create, list and revoke the API keys of `tunelab serve`", c.cmd_keys))
    _add_review_args(_sub(subs, "review", "blind side-by-side sheet for human raters; import their ratings",
                          c.cmd_review))
    return parser


def _add_review_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("action", choices=["export", "import"])
    p.add_argument("run_dir", help="an evaluated run folder")
    p.add_argument("ratings", nargs="?", help="import: the filled ratings CSV")
    p.add_argument("-o", "--out", help="export: the sheet folder (default RUN_DIR/review/sheet)")
    p.add_argument("--against", default="base", help="export: system shown beside the tuned model (base or a "
                   "baseline variant such as 5_shot; default base)")
    p.add_argument("--seed", type=int, default=0, help="export: seed of the A/B order (default 0)")
    p.add_argument("--max-items", type=int, help="export: only the first N evaluated rows")
    p.add_argument("--overwrite", action="store_true", help="export: replace the key of a different sheet")


DATA_VERBS = {
    "report": "audit a dataset: lengths, truncation, duplicates, PII, refusals, labels, languages, findings",
    "clean": "normalise text (Unicode NFKC, whitespace, control chars, mojibake; optional HTML and classic NLP)",
    "pii": "find personal data and secrets and redact them with <TYPE> placeholders (or drop the rows)",
    "filter": "drop low-quality rows (Gopher repetition/symbol rules, length, language, refusals, degenerate)",
    "dedup": "drop exact and near-duplicate rows (MinHash LSH), keeping the longest of each cluster",
    "decontam": "drop training rows that share 13-grams with evaluation data (--eval FILE)",
    "curate": "run a recipe's data.curate.steps over its data.path",
    "augment": "add synthetic rows (EDA, paraphrase, self-instruct, back-translation), filtered and deduplicated",
    "score": "rate rows with an LLM judge and a rubric (1-5); keep the best N or those above a threshold",
    "split": "write train/validation/test dataset folders (deterministic, stratified, near-duplicates grouped)",
    "from-feedback": "turn served-model feedback (ratings or comparisons) into a preference or KTO dataset",
}


def _add_reward_verbs(p: argparse.ArgumentParser) -> None:
    rsubs = p.add_subparsers(dest="reward_verb", metavar="VERB")
    text = "add a `reward` field to every prompt/response row of a JSONL (or any data) file"
    v = rsubs.add_parser("score", help=text, description=text, epilog=textwrap.dedent(EXAMPLES["reward"]),
                         formatter_class=argparse.RawDescriptionHelpFormatter)
    v.add_argument("model", help="reward run folder (train.objective=reward) or a one-output classifier folder")
    v.add_argument("file", help="rows to score")
    v.add_argument("-o", "--out", required=True, help="output JSONL (the rows with `reward` added)")
    v.add_argument("--on-error", choices=["stop", "skip"], default="stop",
                   help="bad rows: stop with file:line (default) or skip them into OUT.rejects.jsonl")
    v.add_argument("--batch-size", type=int, default=8, help="rows scored at once")


def _add_serve_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("model", help="builtin alias, model folder (e.g. a merge export), run folder or cached hub id")
    p.add_argument("--adapter", action="append", default=[], metavar="NAME=RUN_DIR",
                   help="serve another LoRA-family adapter on the same base as model NAME (repeatable)")
    p.add_argument("--host", help="interface to bind (default 127.0.0.1)")
    p.add_argument("--port", type=int, help="TCP port (default 8000)")
    p.add_argument("--embedding-model", help="encoder for /v1/embeddings, e.g. all-minilm-l6-v2")
    p.add_argument("--engine", choices=["transformers", "vllm"], help="generation backend (default transformers)")
    p.add_argument("--api-key", help="the key clients must send (default: $TUNELAB_API_KEY, else generated)")
    p.add_argument("--ssl-keyfile", help="TLS private key (PEM) for https")
    p.add_argument("--ssl-certfile", help="TLS certificate (PEM) for https")
    p.add_argument("--log-level", default="info", choices=["debug", "info", "warning", "error"])
    p.add_argument("--db", help="database for API keys, audit log and feedback (SQLAlchemy URL; default: "
                   "$TUNELAB_DATABASE_URL, else serve-state/serve.db when it exists)")
    p.add_argument("overrides", nargs="*", metavar="key=value", help="serve settings (docs/config.md, serve.*)")


def _add_keys_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("action", choices=["create", "list", "revoke"])
    p.add_argument("target", nargs="?", metavar="NAME|ID", help="create: the key's name; revoke: its id")
    p.add_argument("--rpm", type=int, help="create: requests per minute allowed (default: no limit)")
    p.add_argument("--tokens-per-day", type=int, help="create: prompt + completion tokens per UTC day (default: no limit)")
    p.add_argument("--db", help="database URL (default: $TUNELAB_DATABASE_URL, else sqlite:///STATE_DIR/serve.db)")
    p.add_argument("--state-dir", default="serve-state", help="the server's state_dir (default serve-state)")


def _add_data_verbs(p: argparse.ArgumentParser) -> None:
    dsubs = p.add_subparsers(dest="data_verb", metavar="VERB")
    for verb, help_text in DATA_VERBS.items():
        v = dsubs.add_parser(verb, help=help_text, description=help_text, epilog=textwrap.dedent(EXAMPLES["data"]),
                             formatter_class=argparse.RawDescriptionHelpFormatter)
        v.add_argument("recipe" if verb == "curate" else "file", help="recipe YAML" if verb == "curate" else "data file")
        v.add_argument("-o", "--out", required=True, help="output dataset folder")
        v.add_argument("--eval", action="append", default=[], metavar="FILE", help="evaluation data (decontam)")
        v.add_argument("--overwrite", action="store_true", help="replace a non-empty output folder")
        v.add_argument("--on-error", choices=["stop", "skip"], default=None,
                       help="malformed rows: stop with file:line (default) or skip them into rejects.jsonl")
        if verb == "report":
            v.add_argument("--model", default="smollm2-135m-instruct",
                           help="tokenizer for token lengths and truncation (default: the default model)")
        if verb == "from-feedback":
            v.add_argument("--to", choices=["pairs", "kto"], default="pairs",
                           help="pairs (good vs bad answer to one prompt) or kto (labelled rows)")
            v.add_argument("--scale", choices=["auto", "thumbs", "stars"], default="auto",
                           help="ratings are thumbs (1/-1) or stars (1-5); auto: stars when some rating is 2-5")
            v.add_argument("--max-pairs-per-prompt", type=int, default=4, metavar="N", help="cap per prompt")
        v.add_argument("overrides", nargs="*", metavar="key.sub=value",
                       help="recipe overrides" if verb == "curate" else "data-section overrides")


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    # Overrides may also follow options (`data dedup f.jsonl -o out key=value`), which argparse alone rejects.
    args, extra = parser.parse_known_args(argv)
    if extra:
        if hasattr(args, "overrides") and all("=" in e and not e.startswith("-") for e in extra):
            args.overrides = [*args.overrides, *extra]
        else:
            parser.error(f"unrecognized arguments: {' '.join(extra)}")
    if not getattr(args, "handler", None):
        parser.print_help()
        return 2
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    if not args.debug:
        from tunelab.util.quiet import quiet_libraries

        quiet_libraries()
    try:
        return int(args.handler(args) or 0)
    except TunelabError as e:
        if args.debug:
            raise
        signum = getattr(e, "signum", None)  # TrainingInterrupted: a checkpoint was saved
        print(f"{'interrupted' if signum else 'error'}: {e.one_line()}", file=sys.stderr)
        return 128 + signum if signum else 2
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
