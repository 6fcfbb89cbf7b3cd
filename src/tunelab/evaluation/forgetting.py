"""Learning vs forgetting: base and tuned on general-capability sets, beside the task gain.

A fine-tune that wins on its task may lose what the base model could do. ``eval.general`` names the sets
that stand for "what it could do"; each is scored on both models the same way:

- ``kind: perplexity`` — sliding-window perplexity of plain text (one document per non-empty line), the
  Transformers perplexity recipe (:func:`tunelab.evaluation.perplexity.sliding_window_perplexity`).
- ``kind: instructions`` — perplexity of the reference answers of an instruction set under the chat
  template (teacher forcing, answer tokens only, as the training loss): does the model still find good
  general answers likely?

The check is opt-in (``eval.general`` is empty by default) because no general corpus ships with tunelab;
docs/evaluation.md suggests public sets. The result, ``metrics.json["general"]``::

    {"base": {SET: m}, "tuned": {SET: m}, "change": {SET: {metric: (tuned - base) / base}},
     "worst": {metric: the change of the set that lost most}}

``worst`` takes the largest increase for metrics where lower is better (perplexity, nll) and the largest
decrease otherwise, so ``general.worst.perplexity <= 5%`` is a gate on every set at once.
"""

from __future__ import annotations

import math
import time
from pathlib import Path
from typing import Any

from tunelab.errors import TunelabError

__all__ = ["evaluate_general", "load_instruction_set", "load_text_set", "relative_changes", "tradeoff_rows"]

_LOWER_IS_BETTER = ("perplexity", "nll", "loss")
# Context values are reported but are no capability: their change means nothing.
_NOT_COMPARED = ("tokens", "n_examples", "eval_time_s")


def load_text_set(path: str | Path, max_samples: int | None, encoding: str = "utf-8") -> list[str]:
    """The first ``max_samples`` non-empty lines of a text file (CRLF or LF), as documents."""
    p = Path(path).expanduser()
    if not p.is_file():
        raise TunelabError(f"general text file not found: {p}", where="eval.general.path",
                           fix="give an existing plain-text file (e.g. ../shared/data/wikitext2_raw/wiki.test.raw)")
    try:
        lines = p.read_text(encoding=encoding).splitlines()
    except UnicodeDecodeError as e:
        raise TunelabError(f"{p} is not {encoding} text ({e.reason} at byte {e.start})", where="eval.general.encoding",
                           fix="set the file's encoding, e.g. encoding: latin-1") from e
    docs = [line.strip() for line in lines if line.strip()]
    if not docs:
        raise TunelabError(f"general text file has no non-empty line: {p}", where="eval.general.path")
    return docs[:max_samples] if max_samples else docs


def _flatten_instances(records: list[tuple[str, dict[str, Any]]]) -> list[tuple[str, dict[str, Any]]]:
    """Self-instruct rows ({instruction, instances: [{input, output}]}) as alpaca rows (first instance)."""
    out = []
    for where, rec in records:
        instances = rec.get("instances")
        if isinstance(instances, list) and instances and isinstance(instances[0], dict) and "output" in instances[0]:
            first = instances[0]
            rec = {"instruction": rec.get("instruction", ""), "input": first.get("input", ""),
                   "output": first["output"]}
        out.append((where, rec))
    return out


def load_instruction_set(spec: Any) -> list[Any]:
    """The first ``max_samples`` answered examples of an instruction file (any format tunelab reads)."""
    from tunelab.config.specs import DataSpec
    from tunelab.data.formats import resolve_format, to_examples
    from tunelab.data.readers import read_records

    p = Path(spec.path).expanduser()
    if not p.is_file():
        raise TunelabError(f"general instruction file not found: {p}", where="eval.general.path",
                           fix="give an existing data file (e.g. ../shared/data/self_instruct_user_oriented/"
                           "user_oriented_instructions.jsonl)")
    records = _flatten_instances(read_records(p, encoding=spec.encoding))
    data_spec = DataSpec(path=str(p), columns=spec.columns, encoding=spec.encoding)
    examples, _ = to_examples(records, data_spec, fmt=resolve_format(records, data_spec))
    answered = [ex for ex in examples if ex.reference and ex.reference.strip()]
    if not answered:
        raise TunelabError(f"no instruction with an answer in {p}", where="eval.general.path",
                           fix="use rows with an answer (alpaca output, a final assistant message, ...)")
    return answered[:spec.max_samples] if spec.max_samples else answered


def _perplexity_settings(recipe: Any) -> tuple[int | None, int]:
    # eval.perplexity (max_length, stride) is shared with the task's own perplexity evaluation.
    ppl = getattr(recipe.eval, "perplexity", None)
    return getattr(ppl, "max_length", None), getattr(ppl, "stride", 512)


def _score_text(model: Any, tokenizer: Any, docs: list[str], recipe: Any, device: str) -> dict[str, Any]:
    from tunelab.evaluation.perplexity import sliding_window_perplexity

    max_length, stride = _perplexity_settings(recipe)
    out = sliding_window_perplexity(model, tokenizer, docs, max_length, stride, device)
    return {"perplexity": float(out["perplexity"]), "nll": float(out["nll"]), "tokens": int(out["tokens"]),
            "n_examples": len(docs)}


def _score_instructions(model: Any, tokenizer: Any, spec: Any, examples: list[Any], recipe: Any, device: str,
                        precision: str) -> dict[str, Any]:
    from tunelab.data.records import Reject
    from tunelab.data.tokenize import encode_example
    from tunelab.training.loss import mean_nll

    rows = [encode_example(ex, tokenizer, spec.max_length, "truncate") for ex in examples]
    rows = [r for r in rows if not isinstance(r, Reject)]  # prompts so long that no answer token is left
    if not rows:
        raise TunelabError(f"no answer of '{spec.name}' starts within {spec.max_length} tokens",
                           where="eval.general.max_length", fix="raise it")
    nll = mean_nll(model, rows, recipe.eval.batch_size, tokenizer.pad_token_id, device, precision)
    return {"perplexity": math.exp(min(nll, 50.0)), "nll": nll, "tokens": sum(r["n_loss"] for r in rows),
            "n_examples": len(rows)}


def _score_all(model: Any, tokenizer: Any, sets: list[tuple[Any, list]], recipe: Any, device: str,
               precision: str, label: str) -> dict[str, dict[str, Any]]:
    from tunelab.util.console import console

    out = {}
    for spec, data in sets:
        t0 = time.perf_counter()
        if spec.kind == "perplexity":
            scores = _score_text(model, tokenizer, data, recipe, device)
        else:
            scores = _score_instructions(model, tokenizer, spec, data, recipe, device, precision)
        scores["eval_time_s"] = round(time.perf_counter() - t0, 2)
        console.print(f"general '{spec.name}' ({label}): perplexity {scores['perplexity']:.3f} over "
                      f"{scores['tokens']:,} tokens")
        out[spec.name] = scores
    return out


def relative_changes(base: dict[str, dict[str, Any]], tuned: dict[str, dict[str, Any]]
                     ) -> tuple[dict[str, dict[str, float]], dict[str, float]]:
    """Per set, (tuned - base) / base for every compared metric; and the worst change per metric.

    Returns:
        ``(change, worst)``: ``change[set][metric]``, and ``worst[metric]`` = the largest increase for
        lower-is-better metrics (perplexity, nll), the largest decrease for the others.
    """
    change: dict[str, dict[str, float]] = {}
    for name, t in tuned.items():
        b = base.get(name, {})
        change[name] = {m: (v - b[m]) / abs(b[m]) for m, v in t.items()
                        if m not in _NOT_COMPARED and isinstance(v, (int, float)) and isinstance(b.get(m), (int, float))
                        and b[m] != 0 and math.isfinite(v) and math.isfinite(b[m])}
    worst: dict[str, float] = {}
    for per_set in change.values():
        for m, v in per_set.items():
            pick = max if any(s in m for s in _LOWER_IS_BETTER) else min
            worst[m] = pick(worst[m], v) if m in worst else v
    return change, worst


def tradeoff_rows(result: dict[str, Any]) -> list[dict[str, Any]]:
    """One row per general set: the task gain (headline metric, tuned - base) against that set's change.

    Used by the report's table and plot and by ``tunelab compare``.
    """
    tuned, base = result.get("tuned") or {}, result.get("base") or {}
    general = result.get("general") or {}
    main = tuned.get("main")
    gain = tuned[main] - base[main] if main and isinstance(base.get(main), (int, float)) else None
    rows = []
    for name, per_set in (general.get("change") or {}).items():
        rows.append({"set": name, "task_metric": main, "task_base": base.get(main), "task_tuned": tuned.get(main),
                     "task_gain": gain, "general_base": (general.get("base") or {}).get(name, {}).get("perplexity"),
                     "general_tuned": (general.get("tuned") or {}).get(name, {}).get("perplexity"),
                     "perplexity_change": per_set.get("perplexity")})
    return rows


def _load_sets(recipe: Any) -> list[tuple[Any, list]]:
    # Read every set before any model runs: a bad path fails in a second, not after the first model's pass.
    return [(s, load_text_set(s.path, s.max_samples, s.encoding) if s.kind == "perplexity"
             else load_instruction_set(s)) for s in recipe.eval.general]


def evaluate_general(run_dir: str | Path, recipe: Any, tuned: Any, tokenizer: Any, *, device: str,
                     precision: str, base: Any | None = None) -> dict[str, Any]:
    """Score ``recipe.eval.general`` on the tuned model and on the base model.

    Args:
        run_dir: The run folder (unused but kept for the shared evaluation-part signature).
        recipe: The resolved recipe.
        tuned: The fine-tuned model.
        tokenizer: Its tokenizer.
        device: Torch device.
        precision: 'bf16' or 'fp32' (autocast for the answer losses).
        base: The base model; loaded from ``model.name`` in the tuned model's dtype when not given.

    Returns:
        ``{"base", "tuned", "change", "worst"}`` (see the module docstring).
    """
    del run_dir
    sets = _load_sets(recipe)
    tuned_scores = _score_all(tuned, tokenizer, sets, recipe, device, precision, "tuned")
    if base is None:
        from tunelab.models import load_causal_lm

        dtype = next(tuned.parameters()).dtype
        base = load_causal_lm(recipe.model.name, recipe.model.trust_remote_code, dtype).to(device)
    base_scores = _score_all(base, tokenizer, sets, recipe, device, precision, "base")
    change, worst = relative_changes(base_scores, tuned_scores)
    return {"base": base_scores, "tuned": tuned_scores, "change": change, "worst": worst}
