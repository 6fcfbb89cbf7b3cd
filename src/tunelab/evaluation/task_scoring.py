"""Task types of the eval stage: what is asked of a model on the held-out rows, and how it is scored.

- ``json`` / ``label`` / ``text``: a generated answer against the reference (the row's final assistant
  turn), after answer extraction when ``eval.extract`` is set;
- ``label`` with ``eval.label_scoring: loglik``: every label scored as the answer by log-likelihood, giving
  label probabilities (softmax over the labels' summed log-probabilities), the arg-max label and ROC-AUC;
- ``choice``: log-likelihood multiple choice over the row's ``options`` (or ``choices``); the gold option is
  the row's ``answer`` (0-based index, a letter ``A``.., or the option text), else its reference;
- ``perplexity``: sliding-window perplexity of each row's text (plain text, or the whole rendered chat).

:func:`check_task_inputs` refuses bad input (no rows, missing references, label sets that differ, malformed
options) before any model is loaded.
"""

from __future__ import annotations

import string
from collections.abc import Sequence
from typing import Any

import numpy as np

from tunelab.errors import TunelabError
from tunelab.evaluation.extract import extract_answer
from tunelab.evaluation.metrics import _canonical_refs, _normalize_label, compute_task_metrics, infer_task
from tunelab.evaluation.registry import METRICS, mean_metrics, perplexity_metrics

__all__ = ["check_task_inputs", "choice_metrics", "choice_row", "resolve_task", "score_task", "task_labels"]

_GENERATED = ("json", "label", "text")
_OPTION_KEYS = ("options", "choices")


def resolve_task(recipe: Any, examples: Sequence[Any]) -> str:
    """The task of this evaluation: ``eval.task``, or for ``auto`` perplexity on plain text / pretraining and
    otherwise the kind the references look like."""
    task = recipe.eval.task
    if task != "auto":
        return task
    if recipe.train.objective == "pretrain" or any(not ex.prompt_messages for ex in examples):
        return "perplexity"  # nothing to generate from: held-out text is scored as is
    return infer_task([ex.reference for ex in examples])


def task_labels(examples: Sequence[Any], spec: Any) -> list[str]:
    """``eval.labels``, or the distinct references of the evaluated rows, sorted."""
    return list(spec.labels) if spec.labels else sorted({ex.reference for ex in examples})


# --------------------------------------------------------------------------- input checks


def _answer_index(answer: Any, options: list[str]) -> int | None:
    if isinstance(answer, bool):
        return None
    if isinstance(answer, int):
        return answer if 0 <= answer < len(options) else None
    if not isinstance(answer, str):
        return None
    text = answer.strip()
    if text in options:
        return options.index(text)
    normed = [_normalize_label(o) for o in options]
    if _normalize_label(text) in normed:
        return normed.index(_normalize_label(text))
    if len(text) == 1 and text.upper() in string.ascii_uppercase[:len(options)]:
        return string.ascii_uppercase.index(text.upper())
    return int(text) if text.isdigit() and int(text) < len(options) else None


def choice_row(ex: Any) -> tuple[list[str], int]:
    """The options of a multiple-choice row and the index of the right one.

    Args:
        ex: An :class:`~tunelab.data.records.Example` whose raw record has ``options`` or ``choices``.

    Returns:
        ``(options, gold index)``.

    Raises:
        TunelabError: No option list, fewer than two options, or an answer that names none of them.
    """
    raw = ex.raw or {}
    options = next((raw[k] for k in _OPTION_KEYS if k in raw), None)
    if not isinstance(options, list) or len(options) < 2 or not all(isinstance(o, str) and o.strip() for o in options):
        raise TunelabError("a multiple-choice row needs 'options' (or 'choices'): a list of at least two non-empty "
                           "strings", where=ex.where, fix="add the options to every row (docs/evaluation.md, Task "
                           "types), or use another eval.task")
    answer = raw.get("answer", ex.reference)
    idx = _answer_index(answer, options)
    if idx is None:
        raise TunelabError(f"answer {answer!r} names none of the {len(options)} options", where=ex.where,
                           fix="give 'answer' as a 0-based index, a letter A.., or the text of one option")
    return options, idx


def _check_references(examples: Sequence[Any]) -> None:
    for ex in examples:
        if ex.reference is None or not str(ex.reference).strip():
            raise TunelabError("the row has no reference answer (a final assistant turn) to score against",
                               where=ex.where, fix="give every evaluated row its answer (e.g. a 'completion' "
                               "column), or set eval.task: perplexity to score the text itself")


def _check_labels(examples: Sequence[Any], spec: Any) -> None:
    if not spec.labels:
        return
    refs = _canonical_refs([ex.reference for ex in examples], spec.labels)
    unknown = sorted({r for r in refs if r not in spec.labels})
    if unknown:
        shown = ", ".join(repr(u) for u in unknown[:8]) + (" ..." if len(unknown) > 8 else "")
        raise TunelabError(f"{len(unknown)} label(s) in the evaluated data are not in eval.labels: {shown}",
                           where="eval.labels", fix=f"add them to eval.labels (now {list(spec.labels)}), or drop "
                           "eval.labels to take the label set from the data")


def _check_metric_families(spec: Any, task: str) -> None:
    if task in ("choice", "perplexity") and spec.metrics:
        raise TunelabError(f"eval.metrics {spec.metrics} apply to generated answers, not to task '{task}'",
                           where="eval.metrics", fix="remove eval.metrics, or use a json/label/text task")
    if "roc_auc" in spec.metrics and not (task == "label" and spec.label_scoring == "loglik"):
        raise TunelabError("roc_auc needs label probabilities", where="eval.metrics",
                           fix="set eval.task: label and eval.label_scoring: loglik")
    unknown = [m for m in spec.metrics if m not in METRICS]
    if unknown:
        raise TunelabError(f"unknown metric {unknown[0]!r}; valid: {', '.join(sorted(METRICS))}",
                           where="eval.metrics")


def check_task_inputs(examples: Sequence[Any], spec: Any, task: str, split: str = "test") -> None:
    """Refuse an evaluation that cannot be scored, before any model is loaded.

    Args:
        examples: The evaluated rows.
        spec: The recipe's ``EvalSpec``.
        task: The resolved task (:func:`resolve_task`).
        split: Name of the evaluated split (for the message).

    Raises:
        TunelabError: No rows; a row without a reference (json/label/text, or choice without ``answer``);
            references outside ``eval.labels``; a malformed multiple-choice row; an option that does not fit
            the task (``label_scoring: loglik`` on a non-label task, ``roc_auc`` without it, extra metrics on
            choice/perplexity); a row with no text to score for perplexity.
    """
    if not examples:
        raise TunelabError(f"the evaluation split is empty (no {split} or validation rows)", where="data.split",
                           fix="set data.split.test (or validation) above 0, give data.test_path, or set "
                           "eval.enabled: false")
    if spec.label_scoring == "loglik" and task != "label":
        raise TunelabError(f"label_scoring 'loglik' scores labels, but the task is '{task}'",
                           where="eval.label_scoring", fix="set eval.task: label, or label_scoring: generate")
    _check_metric_families(spec, task)
    if task in _GENERATED:
        _check_references(examples)
    if task == "label":
        _check_labels(examples, spec)
    if task == "choice":
        for ex in examples:
            choice_row(ex)
    if task == "perplexity" and not any(_text_of(ex, None) for ex in examples):
        raise TunelabError("no evaluated row has text to score", where="eval.task")


# --------------------------------------------------------------------------- scoring


def _text_of(ex: Any, tokenizer: Any) -> str:
    if ex.text is not None:
        return ex.text
    if tokenizer is None:
        return " ".join(m["content"] for m in ex.messages)
    return tokenizer.apply_chat_template(ex.messages, tokenize=False)


def _perplexity(model, tokenizer, examples, spec, device: str) -> tuple[dict[str, Any], list[str]]:
    from tunelab.evaluation.perplexity import sliding_window_perplexity

    texts = [_text_of(ex, tokenizer) for ex in examples]
    out = sliding_window_perplexity(model, tokenizer, texts, spec.perplexity.max_length, spec.perplexity.stride,
                                    device, batch_size=1)
    metrics = perplexity_metrics(out["text_nll"], out["text_tokens"], spec.bootstrap)
    metrics.update(max_length=spec.perplexity.max_length, stride=spec.perplexity.stride)
    return metrics, [""] * len(examples)


def _choice(model, tokenizer, examples, spec, device: str, label: str) -> tuple[dict[str, Any], list[str]]:
    from tunelab.evaluation.scoring import score_options

    rows = [choice_row(ex) for ex in examples]
    scores = score_options(model, tokenizer, [ex.prompt_messages for ex in examples], [o for o, _ in rows],
                           spec.batch_size, device, label=f"options ({label})")
    return choice_metrics(scores, rows, spec.bootstrap)


def choice_metrics(scores: Sequence[Sequence[float]], rows: Sequence[tuple[list[str], int]],
                   bootstrap: Any = None) -> tuple[dict[str, Any], list[str]]:
    """Multiple-choice accuracy from option log-likelihoods, as lm-eval's ``acc`` and ``acc_norm``.

    Args:
        scores: Summed log-likelihood of every option of every row (:func:`score_options`).
        rows: ``(options, gold index)`` per row (:func:`choice_row`).
        bootstrap: Bootstrap settings of the intervals.

    Returns:
        ``(metrics, chosen option per row)``; ``accuracy_norm`` picks by log-likelihood per character.
    """
    picks = [int(np.argmax(s)) for s in scores]
    picks_norm = [int(np.argmax(np.asarray(s) / [len(o) for o in opts]))
                  for s, (opts, _) in zip(scores, rows, strict=True)]
    metrics = mean_metrics({
        "accuracy": [float(p == g) for p, (_, g) in zip(picks, rows, strict=True)],
        "accuracy_norm": [float(p == g) for p, (_, g) in zip(picks_norm, rows, strict=True)],
    }, bootstrap)
    metrics.update(main="accuracy", task="choice", n_examples=len(rows))
    return metrics, [opts[p] for p, (opts, _) in zip(picks, rows, strict=True)]


def _softmax(scores: list[list[float]]) -> np.ndarray:
    x = np.asarray(scores, dtype=np.float64)  # (n, labels) summed log-probabilities
    x = x - x.max(axis=1, keepdims=True)
    p = np.exp(x)
    return p / p.sum(axis=1, keepdims=True)


def _label_loglik(model, tokenizer, examples, spec, device: str, label: str) -> tuple[dict[str, Any], list[str]]:
    from tunelab.evaluation.scoring import score_options

    labels = task_labels(examples, spec)
    scores = score_options(model, tokenizer, [ex.prompt_messages for ex in examples], [labels] * len(examples),
                           spec.batch_size, device, label=f"labels ({label})")
    probs = _softmax(scores)
    preds = [labels[int(i)] for i in probs.argmax(axis=1)]
    refs = [ex.reference for ex in examples]
    metrics = compute_task_metrics("label", preds, refs, labels, probs=probs, metrics=spec.metrics,
                                   bootstrap=spec.bootstrap)
    return metrics, preds


def _generated(model, tokenizer, examples, spec, task: str, device: str, label: str):
    from tunelab.evaluation.generate import generate_answers

    outputs = generate_answers(model, tokenizer, [ex.prompt_messages for ex in examples], spec.max_new_tokens,
                               spec.batch_size, device, label=f"generate ({label})")
    refs = [ex.reference for ex in examples]
    answers = outputs
    if spec.extract:
        labels = task_labels(examples, spec) if task == "label" else None
        pattern = None if spec.extract == "auto" else spec.extract
        answers = [extract_answer(o, task, labels, pattern) for o in outputs]
    metrics = compute_task_metrics(task, answers, refs, spec.labels, metrics=spec.metrics, bootstrap=spec.bootstrap)
    if spec.extract:
        metrics["extract_failed_rate"] = float(np.mean([a == "" for a in answers]))
    return metrics, outputs


def score_task(model, tokenizer, examples: Sequence[Any], spec: Any, task: str, device: str,
               label: str = "model") -> tuple[dict[str, Any], list[str]]:
    """Score one model on the evaluated rows.

    Args:
        model: A causal LM.
        tokenizer: Its tokenizer.
        examples: Rows that passed :func:`check_task_inputs`.
        spec: The recipe's ``EvalSpec``.
        task: The resolved task.
        device: Where the model lives.
        label: Name shown on progress bars (``"base"``, ``"tuned"``).

    Returns:
        ``(metrics, outputs)``: metrics with ``main``, ``task``, ``n_examples`` and ``<name>_ci`` intervals;
        one output per row (the generated text, the chosen option or label, or ``""`` for perplexity).
    """
    if task == "perplexity":
        metrics, outputs = _perplexity(model, tokenizer, examples, spec, device)
        metrics.update(main="perplexity", task=task, n_examples=len(examples))
        return metrics, outputs
    if task == "choice":
        return _choice(model, tokenizer, examples, spec, device, label)
    if task == "label" and spec.label_scoring == "loglik":
        return _label_loglik(model, tokenizer, examples, spec, device, label)
    if task == "auto":  # callers resolve the task first; kept for direct use
        task = infer_task([ex.reference for ex in examples])
    return _generated(model, tokenizer, examples, spec, task, device, label)
