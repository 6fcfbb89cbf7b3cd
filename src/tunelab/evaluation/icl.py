"""Prompting baselines: what the base model does with prompting alone, on the rows the fine-tune is scored on.

Three kinds of variant (``eval.baselines``):

- ``zero_shot``: the evaluation prompt as is.
- ``k_shot`` (one per k in ``few_shot``): k solved examples from the pool split (never the evaluated split)
  as earlier user/assistant turns of the chat, then the question. Shots are picked per evaluated row,
  either at random from a generator seeded by (seed, row prompt) — so a row gets the same shots whatever
  the order or subset of rows — or as the k nearest pool rows by cosine similarity of sentence embeddings
  (all-MiniLM-L6-v2, mean pooling, L2 norm), the most similar last, nearest the question.
- ``cot``: zero-shot chain-of-thought (Kojima et al. 2022): an instruction to reason step by step and end
  with ``Answer: X``; the answer is pulled out of the reasoning by answer extraction.

Every variant is scored by the task's own metrics (with bootstrap intervals), so it sits beside base and
tuned in metrics.json["baselines"]; per-row outputs go to eval/baselines.jsonl.
"""

from __future__ import annotations

import json
import os
import random
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from tunelab.errors import TunelabError

__all__ = ["build_cot_prompts", "build_few_shot_prompts", "few_shot_messages", "run_baselines",
           "select_random", "select_similar", "strip_shared_affixes", "variant_names"]

# Tasks with a prompt and an answer per row: generated answers, label likelihoods, multiple-choice options.
_TASKS = ("label", "json", "text", "choice")
# Context tokens kept free for the answer when shots are dropped to fit the model's context.
_MIN_ANSWER_ROOM = 16


def variant_names(spec: Any) -> list[str]:
    """Names of the variants a BaselinesSpec asks for, in report order: zero_shot, k_shot..., cot."""
    names = ["zero_shot"] if spec.zero_shot else []
    names += [f"{k}_shot" for k in spec.few_shot]
    return names + (["cot"] if spec.cot else [])


# ----------------------------------------------------------------------------------------- prompt building


def _prompt_key(example: Any) -> str:
    return json.dumps(example.prompt_messages, ensure_ascii=False, sort_keys=True)


def _solved_turns(example: Any) -> list[dict[str, str]]:
    """A pool example as demonstration turns: its user/assistant history and answer, without its system turn."""
    turns = [m for m in example.prompt_messages if m["role"] != "system"]
    return [*turns, {"role": "assistant", "content": example.reference}]


def few_shot_messages(example: Any, shots: Sequence[Any]) -> list[dict[str, str]]:
    """The example's chat with ``shots`` as earlier turns: [system] + (user, assistant) x k + question."""
    messages = example.prompt_messages
    system = [m for m in messages[:1] if m["role"] == "system"]
    demos = [turn for shot in shots for turn in _solved_turns(shot)]
    return [*system, *demos, *messages[len(system):]]


def _excluded(examples: Sequence[Any], pool: Sequence[Any]) -> list[set[int]]:
    """Per evaluated row, the pool rows with the same prompt (a duplicate must not answer itself)."""
    by_key: dict[str, set[int]] = {}
    for i, ex in enumerate(pool):
        by_key.setdefault(_prompt_key(ex), set()).add(i)
    return [by_key.get(_prompt_key(ex), set()) for ex in examples]


def select_random(examples: Sequence[Any], pool: Sequence[Any], k: int, seed: int) -> list[list[int]]:
    """k distinct pool indices per row, from a generator seeded by (seed, the row's prompt).

    Python seeds a generator from a string through SHA-512, so the choice is the same in every process
    (no PYTHONHASHSEED dependence), and a row's shots do not depend on which other rows are evaluated.
    """
    excluded = _excluded(examples, pool)
    out = []
    for ex, skip in zip(examples, excluded, strict=True):
        candidates = [i for i in range(len(pool)) if i not in skip]
        rng = random.Random(f"{seed}\0{_prompt_key(ex)}")
        out.append(rng.sample(candidates, min(k, len(candidates))))
    return out


def strip_shared_affixes(texts: Sequence[str]) -> list[str]:
    """The texts without the prefix and suffix they all share (a prompt template's fixed wording).

    Embedding the fixed instruction would pull every text towards the same point; what distinguishes rows
    is the part the template wraps. A text left empty keeps its original form.
    """
    if len(texts) < 2:
        return list(texts)
    prefix = len(os.path.commonprefix(list(texts)))
    suffix = len(os.path.commonprefix([t[prefix:][::-1] for t in texts]))
    cut = [t[prefix:len(t) - suffix] for t in texts]
    return [c.strip() or t for c, t in zip(cut, texts, strict=True)]


def _last_user_text(example: Any) -> str:
    users = [m["content"] for m in example.prompt_messages if m["role"] == "user"]
    return users[-1] if users else ""


def select_similar(query_vecs: np.ndarray, pool_vecs: np.ndarray, k: int,
                   excluded: Sequence[set[int]]) -> list[list[int]]:
    """The k pool rows with the highest cosine similarity per query, least similar first.

    Args:
        query_vecs: (Q, H) L2-normalised embeddings of the evaluated rows.
        pool_vecs: (N, H) L2-normalised embeddings of the pool.
        k: Shots per row.
        excluded: Per query, pool indices that may not be picked.

    Returns:
        Per query, k indices ordered so the most similar comes last (closest to the question).
        Ties go to the earlier pool row, so the choice is deterministic.
    """
    sims = query_vecs @ pool_vecs.T  # (Q, N) cosine similarities
    out = []
    for q, skip in enumerate(excluded):
        row = sims[q].copy()
        row[list(skip)] = -np.inf
        order = np.lexsort((np.arange(len(row)), -row))  # by similarity desc, then index asc
        top = [int(i) for i in order[:k] if np.isfinite(row[i])]
        out.append(top[::-1])
    return out


def _embed(encoder: str, texts: list[str], label: str) -> np.ndarray:
    from tunelab.serving.embeddings import Embedder
    from tunelab.training.progress import task_progress

    embedder = Embedder(encoder)
    chunk, vecs = 256, []
    with task_progress() as progress:
        task = progress.add_task(label, total=len(texts))
        for start in range(0, len(texts), chunk):
            vecs += embedder.embed(texts[start:start + chunk])
            progress.advance(task, len(texts[start:start + chunk]))
    return np.asarray(vecs, dtype=np.float32).reshape(len(texts), -1)


def _shots(examples: Sequence[Any], pool: Sequence[Any], k: int, spec: Any,
           vectors: tuple[np.ndarray, np.ndarray] | None) -> list[list[int]]:
    if spec.selection == "random":
        return select_random(examples, pool, k, spec.seed)
    return select_similar(vectors[0], vectors[1], k, _excluded(examples, pool))


def build_few_shot_prompts(examples: Sequence[Any], pool: Sequence[Any], k: int, spec: Any,
                           vectors: tuple[np.ndarray, np.ndarray] | None = None
                           ) -> tuple[list[list[dict[str, str]]], list[list[int]]]:
    """k-shot chats for every evaluated row and the pool indices each one uses.

    Args:
        examples: The evaluated rows (tunelab Examples with prompt_messages and reference).
        pool: Solved rows to draw shots from (the training split).
        k: Shots per row.
        spec: ``eval.baselines`` (selection, seed).
        vectors: (query, pool) embeddings, needed for selection 'similar'.

    Returns:
        ``(messages per row, shot indices per row)``; the same inputs give byte-identical prompts.
    """
    if spec.selection == "similar" and vectors is None:
        vectors = _embeddings(examples, pool, spec.encoder)
    picked = _shots(examples, pool, k, spec, vectors)
    prompts = [few_shot_messages(ex, [pool[i] for i in idx]) for ex, idx in zip(examples, picked, strict=True)]
    return prompts, picked


def _embeddings(examples: Sequence[Any], pool: Sequence[Any], encoder: str) -> tuple[np.ndarray, np.ndarray]:
    texts = strip_shared_affixes([_last_user_text(ex) for ex in [*examples, *pool]])
    vecs = _embed(encoder, texts, f"embed {len(texts)} prompts ({encoder})")
    return vecs[:len(examples)], vecs[len(examples):]


def build_cot_prompts(examples: Sequence[Any], instruction: str) -> list[list[dict[str, str]]]:
    """Each row's chat with the chain-of-thought instruction appended to its last user turn."""
    prompts = []
    for ex in examples:
        messages = [dict(m) for m in ex.prompt_messages]
        last = max(i for i, m in enumerate(messages) if m["role"] == "user")
        messages[last]["content"] = f"{messages[last]['content']}\n\n{instruction}"
        prompts.append(messages)
    return prompts


# ----------------------------------------------------------------------------------------- running


class _Context:
    """What every variant needs: the base model, tokenizer, rows, task and settings."""

    def __init__(self, recipe: Any, model: Any, tokenizer: Any, examples: Sequence[Any], task: str,
                 device: str):
        self.recipe, self.spec, self.model, self.tokenizer = recipe, recipe.eval.baselines, model, tokenizer
        self.examples, self.task, self.device = list(examples), task, device
        limit = getattr(model.config, "max_position_embeddings", None)
        self.context_limit = int(limit) if isinstance(limit, int) else None

    def n_tokens(self, messages: list[dict[str, str]]) -> int:
        from tunelab.evaluation.generate import render_prompt

        return len(self.tokenizer(render_prompt(self.tokenizer, messages), add_special_tokens=False)["input_ids"])

    def mean_tokens(self, prompts: list[list[dict[str, str]]]) -> float:
        return round(float(np.mean([self.n_tokens(p) for p in prompts])), 1) if prompts else 0.0

    def score(self, prompts: list[list[dict[str, str]]], label: str) -> tuple[dict[str, Any], list[str]]:
        """Score the rows asked with other prompts exactly as base and tuned are scored (task_scoring)."""
        from tunelab.data.records import Example
        from tunelab.evaluation.task_scoring import score_task

        # The same rows (reference, raw record with any options) with the variant's conversation before the answer.
        asked = [Example(messages=[*p, {"role": "assistant", "content": ex.reference}], text=None, where=ex.where,
                         raw=ex.raw) for p, ex in zip(prompts, self.examples, strict=True)]
        return score_task(self.model, self.tokenizer, asked, self.recipe.eval, self.task, self.device, label)


def _fit(ctx: _Context, example: Any, shots: list[Any], budget: int) -> tuple[list[dict[str, str]], int]:
    """The k-shot chat, dropping the least similar (first) shots until it fits the model's context."""
    while True:
        messages = few_shot_messages(example, shots)
        if ctx.context_limit is None or not shots or ctx.n_tokens(messages) + budget <= ctx.context_limit:
            return messages, len(shots)
        shots = shots[1:]


def _rows(variant: str, examples: Sequence[Any], outputs: list[str], answers: list[str] | None,
          shots: list[list[str]] | None) -> list[dict[str, Any]]:
    rows = []
    for i, ex in enumerate(examples):
        row = {"variant": variant, "where": ex.where, "reference": ex.reference, "output": outputs[i]}
        if answers is not None:
            row["answer"] = answers[i]
        if shots is not None:
            row["shots"] = shots[i]
        rows.append(row)
    return rows


# Values of the base model's evaluation that belong to its loss on the references, not to its answers.
_NOT_ANSWERS = ("loss", "perplexity", "loss_perplexity", "eval_time_s")


def _zero_shot(ctx: _Context, base: tuple[dict[str, Any], list[str]] | None
               ) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    t0 = time.perf_counter()
    prompts = [ex.prompt_messages for ex in ctx.examples]
    if base is not None and len(base[1]) == len(prompts):
        # The base model's evaluation is this very prompt: its scores and answers are not computed twice.
        metrics = {k: v for k, v in base[0].items() if k not in _NOT_ANSWERS}
        metrics["same_as"] = "base"
        outputs = list(base[1])
    else:
        metrics, outputs = ctx.score(prompts, "zero-shot (base)")
    metrics.update(k=0, prompt_tokens=ctx.mean_tokens(prompts), eval_time_s=round(time.perf_counter() - t0, 2))
    return metrics, _rows("zero_shot", ctx.examples, outputs, None, None)


def _few_shot(ctx: _Context, pool: Sequence[Any], k: int,
              vectors: tuple[np.ndarray, np.ndarray] | None) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    t0 = time.perf_counter()
    picked = _shots(ctx.examples, pool, k, ctx.spec, vectors)
    budget = max(ctx.recipe.eval.max_new_tokens, _MIN_ANSWER_ROOM)
    fitted = [_fit(ctx, ex, [pool[i] for i in idx], budget) for ex, idx in zip(ctx.examples, picked, strict=True)]
    prompts = [m for m, _ in fitted]
    metrics, outputs = ctx.score(prompts, f"{k}-shot (base)")
    used = [[pool[i].where for i in idx[len(idx) - n:]] for (_, n), idx in zip(fitted, picked, strict=True)]
    metrics.update(k=k, selection=ctx.spec.selection, shots_used=round(float(np.mean([n for _, n in fitted])), 2),
                   prompt_tokens=ctx.mean_tokens(prompts), eval_time_s=round(time.perf_counter() - t0, 2))
    return metrics, _rows(f"{k}_shot", ctx.examples, outputs, None, used)


def _choice_metrics(ctx: _Context, answers: list[str]) -> dict[str, Any]:
    from tunelab.evaluation.registry import mean_metrics
    from tunelab.evaluation.task_scoring import choice_row

    rows = [choice_row(ex) for ex in ctx.examples]
    right = [float(a != "" and a == opts[gold]) for a, (opts, gold) in zip(answers, rows, strict=True)]
    metrics = mean_metrics({"accuracy": right}, ctx.recipe.eval.bootstrap)
    metrics.update(main="accuracy", task="choice", n_examples=len(answers))
    return metrics


def _extracted(ctx: _Context, outputs: list[str]) -> list[str]:
    from tunelab.evaluation.extract import extract_answer
    from tunelab.evaluation.task_scoring import choice_row, task_labels

    # Chain-of-thought always extracts: a regex in eval.extract is used, otherwise the automatic rules.
    pattern = getattr(ctx.recipe.eval, "extract", None)
    pattern = None if pattern in (None, "auto") else pattern
    if ctx.task == "choice":
        return [extract_answer(o, "choice", choice_row(ex)[0], pattern) for o, ex in zip(outputs, ctx.examples,
                                                                                          strict=True)]
    labels = task_labels(ctx.examples, ctx.recipe.eval) if ctx.task == "label" else None
    return [extract_answer(o, ctx.task, labels, pattern) for o in outputs]


def _cot(ctx: _Context) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    from tunelab.evaluation.generate import generate_answers
    from tunelab.evaluation.metrics import compute_task_metrics

    t0 = time.perf_counter()
    e = ctx.recipe.eval
    prompts = build_cot_prompts(ctx.examples, ctx.spec.cot_instruction)
    outputs = generate_answers(ctx.model, ctx.tokenizer, prompts, ctx.spec.cot_max_new_tokens, e.batch_size,
                               ctx.device, label="chain-of-thought (base)")
    answers = _extracted(ctx, outputs)
    if ctx.task == "choice":
        metrics = _choice_metrics(ctx, answers)
    else:
        metrics = compute_task_metrics(ctx.task, answers, [ex.reference for ex in ctx.examples], e.labels,
                                       metrics=e.metrics, bootstrap=e.bootstrap)
    metrics.update(k=0, extract_failed_rate=float(np.mean([a == "" for a in answers])) if answers else 0.0,
                   prompt_tokens=ctx.mean_tokens(prompts), eval_time_s=round(time.perf_counter() - t0, 2))
    return metrics, _rows("cot", ctx.examples, outputs, answers, None)


def _check_pool(spec: Any, split: str, pool: Sequence[Any]) -> None:
    if spec.pool == split:
        raise TunelabError(f"the shots would come from the evaluated split ('{split}')",
                           where="eval.baselines.pool", fix="use eval.baselines.pool=train")
    if spec.few_shot and not pool:
        raise TunelabError(f"the '{spec.pool}' split has no rows to take shots from", where="eval.baselines.pool",
                           fix="use a split with rows, or eval.baselines.few_shot=[]")
    if any(ex.reference is None for ex in pool):
        raise TunelabError("shots need answered rows, but some pool rows have no final assistant turn",
                           where="eval.baselines.pool", fix="use chat/instruction data with answers")


def _load_base(recipe: Any, device: str, dtype: Any) -> Any:
    import torch

    from tunelab.models import load_causal_lm

    return load_causal_lm(recipe.model.name, recipe.model.trust_remote_code, dtype or torch.float32).to(device)


def run_baselines(run_dir: str | Path, recipe: Any, *, examples: Sequence[Any], pool: Sequence[Any],
                  tokenizer: Any, task: str, split: str, device: str, model: Any | None = None,
                  dtype: Any = None, base_preds: list[str] | None = None,
                  base_metrics: dict[str, Any] | None = None) -> dict[str, dict[str, Any]]:
    """Score the prompting baselines of ``recipe.eval.baselines`` with the base model.

    Zero- and k-shot rows are scored exactly as base and tuned (:func:`tunelab.evaluation.task_scoring.score_task`:
    generation or label likelihood, ``eval.extract``, ``eval.metrics``, ``eval.bootstrap``); chain-of-thought
    generates with ``cot_max_new_tokens`` and always extracts the answer.

    Args:
        run_dir: The run folder; per-row outputs go to ``eval/baselines.jsonl``.
        recipe: The resolved recipe.
        examples: The evaluated rows (the same as base and tuned).
        pool: The split shots come from (``eval.baselines.pool``).
        tokenizer: The model's tokenizer (chat template).
        task: The evaluation task (label, json, text, choice).
        split: Name of the evaluated split (the pool must differ).
        device: Torch device.
        model: The base model; loaded from ``model.name`` in ``dtype`` when not given.
        dtype: Weights dtype of a base model loaded here (default float32).
        base_preds: The base model's outputs for the plain prompts; with ``base_metrics``, reused as zero-shot.
        base_metrics: The base model's scores on the plain prompts.

    Returns:
        ``{variant: metrics}`` with each variant's task metrics (bootstrap CIs included) plus ``k``,
        ``prompt_tokens`` (mean prompt length), ``eval_time_s``; k-shot adds ``selection`` and ``shots_used``,
        chain-of-thought ``extract_failed_rate``.

    Raises:
        TunelabError: a task without prompts and answers (perplexity), or an unusable pool.
    """
    from tunelab.util.io import atomic_write_text

    spec = recipe.eval.baselines
    if task not in _TASKS:
        raise TunelabError(f"prompting baselines score answers to prompts (tasks {', '.join(_TASKS)}); this run's "
                           f"evaluation task is '{task}'", where="eval.baselines.enabled",
                           fix="set eval.baselines.enabled=false")
    pool = list(pool)[:spec.pool_size] if spec.pool_size else list(pool)
    _check_pool(spec, split, pool)
    examples = list(examples)[:spec.max_samples] if spec.max_samples else list(examples)
    base = (base_metrics, base_preds[:len(examples)]) if base_metrics and base_preds is not None and \
        len(base_preds) >= len(examples) and base_metrics.get("n_examples") == len(examples) else None
    ctx = _Context(recipe, model if model is not None else _load_base(recipe, device, dtype), tokenizer, examples,
                   task, device)
    vectors = _embeddings(examples, pool, spec.encoder) if spec.few_shot and spec.selection == "similar" else None
    results, rows = {}, []
    for name in variant_names(spec):
        if name == "zero_shot":
            metrics, part = _zero_shot(ctx, base)
        elif name == "cot":
            metrics, part = _cot(ctx)
        else:
            metrics, part = _few_shot(ctx, pool, int(name.split("_")[0]), vectors)
        results[name], rows = metrics, rows + part
    lines = "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows)
    atomic_write_text(Path(run_dir) / "eval" / "baselines.jsonl", lines)
    return results
