"""tunelab's multiple-choice evaluation against EleutherAI's lm-evaluation-harness, on the same rows.

The shared task: emotion classification as log-likelihood multiple choice. Each row of the public emotion
test set (``../shared/data/emotion/test.txt``) becomes a chat prompt ("Which emotion ...? Text: ...") whose
options are the six emotion names; the gold option is the row's label. The rows are written to a local JSONL
file and described to lm-eval by a custom task YAML (``dataset_path: json``, ``output_type:
multiple_choice``, ``target_delimiter: ""``) whose context is the prompt rendered with the model's chat
template, exactly the text tunelab scores. No hub access is needed: lm-eval reads the local file and loads
the default model from its local folder (``tunelab.models`` resolves the alias).

Then both evaluate the default model (SmolLM2-135M-Instruct, fp32, CPU):

- lm-eval: ``simple_evaluate(model="hf", ...)`` -> ``acc``, ``acc_norm`` and their standard errors;
- tunelab: ``eval.task: choice`` through ``tunelab.evaluation.task_scoring.score_task`` -> ``accuracy``,
  ``accuracy_norm`` with bootstrap intervals.

It prints both, lm-eval's stderr, whether they agree within it, how many rows pick a different option and
the largest difference of a per-option log-likelihood.

    nice -n 10 python benchmarks/lm_eval_interop.py --rows 120      # ~10 min on 2 busy cores
    python benchmarks/lm_eval_interop.py --rows 20 --keep out/       # quick look; keep the task files

Needs ``pip install -e '.[interop]'`` (lm_eval) and ../shared/data.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
DEFAULT_DATA = ROOT.parent / "shared" / "data" / "emotion" / "test.txt"
LABELS = ["anger", "fear", "joy", "love", "sadness", "surprise"]
QUESTION = ("Which emotion does this text express? Answer with one word: anger, fear, joy, love, sadness or "
            "surprise.\n\nText: {text}")
TASK = "tunelab_emotion_mc"


def read_rows(path: Path, n: int) -> list[dict]:
    """The first ``n`` rows of the emotion file (``text;label`` with a header line)."""
    rows = []
    for line in path.read_text(encoding="utf-8").splitlines()[1:]:
        text, _, label = line.rpartition(";")
        if text and label in LABELS:
            rows.append({"text": text, "label": label})
        if len(rows) == n:
            break
    return rows


def write_task(rows: list[dict], tokenizer, folder: Path) -> None:
    """rows.jsonl (context = the chat-rendered prompt, options, answer index) and the lm-eval task YAML."""
    with (folder / "rows.jsonl").open("w", encoding="utf-8") as f:
        for r in rows:
            messages = [{"role": "user", "content": QUESTION.format(text=r["text"])}]
            ctx = tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
            f.write(json.dumps({"ctx": ctx, "prompt": messages[0]["content"], "options": LABELS,
                                "answer": LABELS.index(r["label"]), "completion": r["label"]}) + "\n")
    (folder / f"{TASK}.yaml").write_text(
        f"task: {TASK}\n"
        "dataset_path: json\n"
        f"dataset_kwargs:\n  data_files:\n    test: {folder / 'rows.jsonl'}\n"
        "test_split: test\n"
        "output_type: multiple_choice\n"
        "doc_to_text: ctx\n"  # a field name: the field's text as is (no template rendering)
        "doc_to_choice: options\n"
        "doc_to_target: answer\n"
        "target_delimiter: \"\"\n"
        "metric_list:\n  - metric: acc\n  - metric: acc_norm\n", encoding="utf-8")


def run_lm_eval(model_dir: Path, folder: Path, batch_size: int) -> tuple[dict, list[list[float]]]:
    """lm-eval's results for the task and its per-row option log-likelihoods (in row order)."""
    from lm_eval import simple_evaluate
    from lm_eval.tasks import TaskManager

    out = simple_evaluate(model="hf", model_args=f"pretrained={model_dir},dtype=float32", tasks=[TASK],
                          task_manager=TaskManager(include_path=str(folder)), batch_size=batch_size, device="cpu",
                          log_samples=True, bootstrap_iters=1000)
    samples = sorted(out["samples"][TASK], key=lambda s: s["doc_id"])
    lls = [[float(r[0]) for r in s["filtered_resps"]] for s in samples]
    return out["results"][TASK], lls


def run_tunelab(folder: Path, batch_size: int) -> tuple[dict, list[list[float]]]:
    """tunelab's choice evaluation of the same rows (``eval.task: choice``), and its option log-likelihoods."""
    from tunelab.config import load_recipe
    from tunelab.data.formats import to_examples
    from tunelab.evaluation.scoring import score_options
    from tunelab.evaluation.task_scoring import check_task_inputs, choice_metrics, choice_row
    from tunelab.models import load_causal_lm, load_tokenizer

    path = folder / "rows.jsonl"
    recipe = load_recipe(None, [f"data.path={path}", "eval.task=choice", f"eval.batch_size={batch_size}"])
    rows = [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()]
    records = [(f"{path}:{i + 1}", {k: r[k] for k in ("prompt", "completion", "options", "answer")})
               for i, r in enumerate(rows)]
    examples, rejects = to_examples(records, recipe.data)
    assert not rejects, rejects[:3]
    check_task_inputs(examples, recipe.eval, "choice")
    tokenizer = load_tokenizer("smollm2-135m-instruct")
    model = load_causal_lm("smollm2-135m-instruct", dtype=torch.float32).eval()
    # What score_task does for eval.task 'choice', with the per-option scores kept for the comparison.
    choice_rows = [choice_row(ex) for ex in examples]
    lls = score_options(model, tokenizer, [ex.prompt_messages for ex in examples], [o for o, _ in choice_rows],
                        batch_size, "cpu")
    metrics, _ = choice_metrics(lls, choice_rows, recipe.eval.bootstrap)
    return metrics, lls


def compare(theirs: dict, ours: dict, lls_theirs: list[list[float]], lls_ours: list[list[float]]) -> bool:
    """Print the two results side by side; True when every metric agrees within lm-eval's stderr."""
    ok = True
    print(f"{'metric':<16}{'lm-eval':>10}{'stderr':>10}{'tunelab':>10}{'tunelab 95% CI':>20}{'|diff|':>10}  agree")
    for name, ours_name in (("acc", "accuracy"), ("acc_norm", "accuracy_norm")):
        a, se, b = theirs[f"{name},none"], theirs[f"{name}_stderr,none"], ours[ours_name]
        lo, hi = ours[f"{ours_name}_ci"]
        agree = abs(a - b) <= se
        ok &= agree
        print(f"{name:<16}{a:>10.4f}{se:>10.4f}{b:>10.4f}{f'[{lo:.4f}, {hi:.4f}]':>20}{abs(a - b):>10.4f}  "
              f"{'yes' if agree else 'NO'}")
    picks = sum(max(range(6), key=t.__getitem__) != max(range(6), key=o.__getitem__)
                for t, o in zip(lls_theirs, lls_ours, strict=True))
    diff = max(abs(x - y) for t, o in zip(lls_theirs, lls_ours, strict=True) for x, y in zip(t, o, strict=True))
    print(f"rows: {len(lls_ours)} · rows whose arg-max option differs: {picks} · "
          f"max |log-likelihood difference| per option: {diff:.2e} nats")
    return ok


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rows", type=int, default=120, help="emotion test rows (default 120)")
    parser.add_argument("--data", type=Path, default=DEFAULT_DATA, help="emotion test.txt")
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--keep", type=Path, help="write the task files here instead of a temporary folder")
    args = parser.parse_args()
    if not args.data.is_file():
        print(f"emotion data not found at {args.data} (pass --data)", file=sys.stderr)
        return 2
    os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    from tunelab.models import load_tokenizer
    from tunelab.models.registry import resolve_model

    model_dir = resolve_model("smollm2-135m-instruct").path
    with tempfile.TemporaryDirectory() as tmp:
        folder = args.keep or Path(tmp)
        folder.mkdir(parents=True, exist_ok=True)
        write_task(read_rows(args.data, args.rows), load_tokenizer("smollm2-135m-instruct"), folder)
        t0 = time.perf_counter()
        theirs, lls_theirs = run_lm_eval(model_dir, folder, args.batch_size)
        t1 = time.perf_counter()
        ours, lls_ours = run_tunelab(folder, args.batch_size)
        t2 = time.perf_counter()
    print(f"\nemotion as 6-way multiple choice · SmolLM2-135M-Instruct fp32 · threads {torch.get_num_threads()} · "
          f"lm-eval {t1 - t0:.0f} s, tunelab {t2 - t1:.0f} s (each including its model load)")
    return 0 if compare(theirs, ours, lls_theirs, lls_ours) else 1


if __name__ == "__main__":
    sys.exit(main())
