"""LLM-as-judge over evaluated answers: pairwise A/B with position swapping, and single-answer grades.

* **Pairwise** (MT-Bench style, Zheng et al. 2023). For every evaluated row the judge sees the prompt, the
  reference answer (``eval.judge.reference``) and two answers as "A" and "B", and answers A, B or C (a tie).
  Each pair is judged twice, the tuned answer first and then second. A verdict counts only when both orders
  agree (tuned wins twice, loses twice, or ties twice); a row where the order decided is *inconsistent*.
  Win/tie/loss rates are over the consistent rows, with 95% bootstrap intervals; the inconsistency rate
  and the share of verdicts that picked the first position show how much position bias there was. With
  ``scoring: probs`` a position-balanced preference is reported too: the judge's probability of the tuned
  answer minus the other's, summed over both orders, so a constant bonus for one position cancels.
* **Single** grades every system's answer on the rubric's scale (1-5 or 1-10). With ``scoring: probs`` the
  grade is the expected score under the judge's next-token probabilities of "1".."5" (G-Eval; the same
  `tunelab.data.score.expected_score` that curation uses); with ``scoring: generate`` the first number in
  its reply. A row without a usable grade is counted as unscored, never given a default.

The judge is any `tunelab.generation.TextGenerator`: a local model or an OpenAI-compatible endpoint. An
endpoint is pinged before anything runs (`prepare_judge`), so a server that is down stops the evaluation
with one clear error and nothing written.
"""

from __future__ import annotations

import json
import re
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from tunelab.errors import TunelabError

__all__ = [
    "DEFAULT_RUBRIC_10",
    "balanced_margins",
    "grade_messages",
    "judge_run",
    "judge_systems",
    "load_judge_rubric",
    "pair_messages",
    "pair_outcome",
    "parse_grade",
    "parse_verdict",
    "prepare_judge",
    "summarize_balanced",
    "summarize_grades",
    "summarize_pairwise",
    "system_outputs",
    "verdict_from_probs",
]

_WHERE = "eval.judge"
VERDICTS = ("A", "B", "C")
DEFAULT_RUBRIC_10 = """\
Judge the answer on helpfulness, correctness, clarity and instruction following.
Scores: 10 = excellent, nothing to improve; 7-9 = good, small omissions or problems of clarity or format;
4-6 = acceptable, partly correct or incomplete; 2-3 = poor, mostly wrong, unhelpful or off-topic;
1 = unusable: empty, gibberish, harmful, or an unjustified refusal."""
_GRADE_10 = re.compile(r"(?<![\d.])(10|[1-9])(?!\.?\d)")  # "7", "7/10", "Score: 10"; not "3.5", "0.7"
_BRACKETED = re.compile(r"\[\[([ABC])\]\]")
_LETTER = re.compile(r"(?<![A-Za-z])([ABC])(?![A-Za-z])")
_PAIR_SYSTEM = ("You are an impartial judge comparing two answers to the same prompt. Ignore the order in which "
                "the answers appear and their length; judge only their quality. Reply with one letter: A, B or C.")
# Rows per judge call: a progress step, and enough prompts for a local judge's length batching.
_CHUNK = 32
_SMALL_DEFAULT_JUDGE = "smollm2-135m-instruct"


# ---------------------------------------------------------------------------------------------- rubric


def load_judge_rubric(spec: Any) -> str:
    """The rubric: ``rubric_file``'s text, else ``rubric``, else the built-in rubric for the scale.

    Raises:
        TunelabError: the rubric file is missing or unreadable, or the rubric is empty.
    """
    from tunelab.data.score import DEFAULT_RUBRIC

    if spec.rubric_file is not None:
        path, where = Path(spec.rubric_file).expanduser(), f"{_WHERE}.rubric_file"
        if not path.is_file():
            raise TunelabError(f"rubric file not found: {path}", where=where,
                               fix="give the path of a text file with the rubric, or drop the key for the default")
        try:
            text = path.read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError) as e:
            raise TunelabError(f"cannot read the rubric file: {e}", where=where) from e
    else:
        where = f"{_WHERE}.rubric"
        text = spec.rubric if spec.rubric is not None else (DEFAULT_RUBRIC if spec.scale == 5 else DEFAULT_RUBRIC_10)
    if not text.strip():
        raise TunelabError("the rubric is empty", where=where, fix=f"write what each score from 1 to {spec.scale} means")
    return text.strip()


# --------------------------------------------------------------------------------------------- prompts


def _cut(text: str | None, max_chars: int) -> str:
    text = text or ""
    return text if len(text) <= max_chars else f"{text[:max_chars]}\n[... cut: {len(text) - max_chars} more characters]"


def _prompt_text(messages: Sequence[dict[str, str]]) -> str:
    if len(messages) == 1:
        return messages[0]["content"]
    # Several turns (a system prompt, earlier exchanges): the judge needs to see who said what.
    return "\n\n".join(f"[{m['role']}]\n{m['content']}" for m in messages)


def _reference_block(reference: str | None, max_chars: int) -> str:
    if reference is None:
        return ""
    return f"REFERENCE ANSWER (a good answer; others may word it differently):\n{_cut(reference, max_chars)}\n\n"


def grade_messages(prompt: Sequence[dict[str, str]], reference: str | None, answer: str, rubric: str, scale: int,
                   max_chars: int = 2000) -> list[dict[str, str]]:
    """The chat a judge answers with one grade from 1 to ``scale``."""
    user = (f"Grade the ANSWER to the PROMPT with this rubric.\n\nRUBRIC:\n{rubric}\n\n"
            f"PROMPT:\n{_cut(_prompt_text(prompt), max_chars)}\n\n{_reference_block(reference, max_chars)}"
            f"ANSWER:\n{_cut(answer, max_chars)}\n\nReply with a single number from 1 to {scale}.")
    system = f"You grade answers. You reply with a single number from 1 to {scale}."
    return [{"role": "system", "content": system}, {"role": "user", "content": user}]


def pair_messages(prompt: Sequence[dict[str, str]], reference: str | None, answer_a: str, answer_b: str,
                  rubric: str, max_chars: int = 2000) -> list[dict[str, str]]:
    """The chat a judge answers with A (first answer better), B (second) or C (tie)."""
    user = (f"Which answer to the PROMPT is better? Judge by this rubric:\n{rubric}\n\n"
            f"PROMPT:\n{_cut(_prompt_text(prompt), max_chars)}\n\n{_reference_block(reference, max_chars)}"
            f"ANSWER A:\n{_cut(answer_a, max_chars)}\n\nANSWER B:\n{_cut(answer_b, max_chars)}\n\n"
            "Reply A if answer A is better, B if answer B is better, C if they are equally good.")
    return [{"role": "system", "content": _PAIR_SYSTEM}, {"role": "user", "content": user}]


# --------------------------------------------------------------------------------------------- parsing


def parse_grade(reply: str, scale: int) -> float | None:
    """The first standalone number 1..scale in a judge's reply, or None."""
    if scale == 5:
        from tunelab.data.score import parse_score

        return parse_score(reply).value
    m = _GRADE_10.search(reply)
    return float(m.group(1)) if m else None


def parse_verdict(reply: str) -> str | None:
    """"A", "B" or "C" from a judge's reply ("[[A]]", "B", "Answer A is better", "tie"), or None."""
    m = _BRACKETED.search(reply) or _LETTER.search(reply)
    if m:
        return m.group(1)
    return "C" if re.search(r"\btie\b|\bequal", reply, re.IGNORECASE) else None


def verdict_from_probs(probs: dict[str, float]) -> str | None:
    """The most likely of A/B/C, or None when no choice stands out (no mass, or an exact tie for the top)."""
    values = sorted((probs.get(v, 0.0) for v in VERDICTS), reverse=True)
    if not values[0] > 0 or values[0] - values[1] < 1e-9:
        return None
    return max(VERDICTS, key=lambda v: probs.get(v, 0.0))


def pair_outcome(tuned_first: str | None, tuned_second: str | None) -> str:
    """The tuned model's result from the two orders: win, tie, loss, inconsistent or no_verdict.

    Args:
        tuned_first: the verdict when the tuned answer was A.
        tuned_second: the verdict when the tuned answer was B.
    """
    if tuned_first is None or tuned_second is None:
        return "no_verdict"
    first = {"A": "win", "B": "loss", "C": "tie"}[tuned_first]
    second = {"B": "win", "A": "loss", "C": "tie"}[tuned_second]
    return first if first == second else "inconsistent"


# ------------------------------------------------------------------------------------------- summaries


def _rate(out: dict[str, Any], name: str, hits: Sequence[float]) -> None:
    from tunelab.evaluation.metrics import bootstrap_ci

    out[name] = round(sum(hits) / len(hits), 5) if hits else 0.0
    out[f"{name}_ci"] = [round(x, 5) for x in bootstrap_ci(hits)]


def summarize_pairwise(outcomes: Sequence[str], first_picks: Sequence[bool]) -> dict[str, Any]:
    """Win/tie/loss rates over consistent rows (with CIs), inconsistency, and position bias.

    Args:
        outcomes: `pair_outcome` per row.
        first_picks: per non-tie single verdict, whether it picked the answer shown first.
    """
    consistent = [o for o in outcomes if o in ("win", "tie", "loss")]
    out: dict[str, Any] = {"n": len(outcomes), "n_consistent": len(consistent)}
    for name in ("win", "tie", "loss"):
        if consistent:
            _rate(out, f"{name}_rate", [float(o == name) for o in consistent])
        else:  # no verdict counts: the rates are unknown, not zero
            out[f"{name}_rate"], out[f"{name}_rate_ci"] = None, None
    _rate(out, "inconsistent_rate", [float(o == "inconsistent") for o in outcomes])
    out["no_verdict"] = sum(o == "no_verdict" for o in outcomes)
    out["first_position_rate"] = round(sum(first_picks) / len(first_picks), 5) if first_picks else None
    return out


def balanced_margins(first: Sequence[dict[str, float]], second: Sequence[dict[str, float]]) -> list[float]:
    """Per row, the tuned answer's probability minus the other's, summed over both orders.

    Balanced position calibration (Wang et al. 2023, "Large Language Models are not Fair Evaluators"): a
    judge that always prefers the first answer adds the same bonus to both answers, so the sum cancels it.

    Args:
        first: the judge's A/B/C probabilities with the tuned answer as A.
        second: the same with the tuned answer as B.
    """
    return [(a.get("A", 0.0) + b.get("B", 0.0)) - (a.get("B", 0.0) + b.get("A", 0.0))
            for a, b in zip(first, second, strict=True)]


def summarize_balanced(margins: Sequence[float]) -> dict[str, Any]:
    """Share of rows whose position-balanced margin favours the tuned answer, and the mean margin, with CIs."""
    from tunelab.evaluation.metrics import bootstrap_ci

    out: dict[str, Any] = {"n": len(margins)}
    _rate(out, "win_rate", [float(m > 0) for m in margins])
    out["mean_margin"] = round(sum(margins) / len(margins), 5) if margins else None
    out["mean_margin_ci"] = [round(x, 5) for x in bootstrap_ci(margins)] if margins else None
    return out


def summarize_grades(grades: Sequence[float | None]) -> dict[str, Any]:
    """Mean grade with its 95% bootstrap interval, and how many answers got no usable grade."""
    from tunelab.evaluation.metrics import bootstrap_ci

    values = [g for g in grades if g is not None]
    return {"mean": round(sum(values) / len(values), 4) if values else None,
            "mean_ci": [round(x, 4) for x in bootstrap_ci(values)] if values else None,
            "scored": len(values), "unscored": len(grades) - len(values)}


def _paired_diff(tuned: Sequence[float | None], other: Sequence[float | None]) -> dict[str, Any]:
    from tunelab.evaluation.metrics import bootstrap_ci

    diffs = [t - o for t, o in zip(tuned, other, strict=True) if t is not None and o is not None]
    return {"mean_diff": round(sum(diffs) / len(diffs), 4) if diffs else None,
            "mean_diff_ci": [round(x, 4) for x in bootstrap_ci(diffs)] if diffs else None, "n": len(diffs)}


# ----------------------------------------------------------------------------------------------- judge


def prepare_judge(eval_spec: Any, generator=None):
    """Check the judge settings and build the judge; an endpoint must answer now, before anything else runs.

    Args:
        eval_spec: the recipe's ``eval`` section (`tunelab.config.specs.EvalSpec`); ``eval.judge`` is used.
        generator: a ready `TextGenerator` (tests); default `make_generator(eval.judge.judge)`.

    Raises:
        TunelabError: bad rubric, pairwise judging with nothing to compare against, a local judge that
            cannot be loaded, or an endpoint that does not answer.
    """
    from tunelab.generation import EndpointGenerator, make_generator

    spec = eval_spec.judge
    load_judge_rubric(spec)
    if spec.mode != "single" and not (eval_spec.compare_base or eval_spec.baselines.enabled):
        raise TunelabError("pairwise judging compares the tuned answers with another system, but neither the "
                           "base model nor prompting baselines are evaluated", where=f"{_WHERE}.mode",
                           fix="set eval.compare_base=true (or eval.baselines.enabled=true), or eval.judge.mode=single")
    generator = generator or make_generator(spec.judge)
    if isinstance(generator, EndpointGenerator):
        try:
            generator.generate([[{"role": "user", "content": "Reply with the letter A."}]], max_new_tokens=1)
        except TunelabError as e:
            raise TunelabError(f"the judge endpoint does not answer: {e.what}", where=f"{_WHERE}.judge.endpoint",
                               fix=e.fix or "start the judge server or correct the URL") from e
    return generator


def _ask(generator, prompts: list[list[dict[str, str]]], spec: Any, kind: str, bar, task) -> list[Any]:
    """Per prompt: (verdict, probs) for pairs, (grade, probs) for grades; chunked with progress."""
    from tunelab.data.score import CHOICES, expected_score

    out: list[Any] = []
    for start in range(0, len(prompts), _CHUNK):
        chunk = prompts[start:start + _CHUNK]
        if spec.scoring == "generate":
            replies = generator.generate(chunk)
            out += [((parse_verdict(r) if kind == "pair" else parse_grade(r, spec.scale)), r) for r in replies]
        elif kind == "pair":
            out += [(verdict_from_probs(p), p) for p in generator.choice_probs(chunk, list(VERDICTS))]
        else:
            out += [(expected_score(p).value, p) for p in generator.choice_probs(chunk, list(CHOICES))]
        bar.advance(task, len(chunk))
    return out


def _round_probs(raw: Any) -> Any:
    return {k: round(v, 4) for k, v in raw.items()} if isinstance(raw, dict) else raw


def _pairwise(generator, spec, rubric, prompts, refs, outputs, other: str, bar, task):
    tuned = outputs["tuned"]
    asks = [pair_messages(p, r, t, o, rubric, spec.max_chars) for p, r, t, o in zip(prompts, refs, tuned, outputs[other],
                                                                                    strict=True)]
    asks += [pair_messages(p, r, o, t, rubric, spec.max_chars) for p, r, t, o in zip(prompts, refs, tuned,
                                                                                     outputs[other], strict=True)]
    answers = _ask(generator, asks, spec, "pair", bar, task)
    n = len(prompts)
    first, second = answers[:n], answers[n:]
    outcomes = [pair_outcome(a[0], b[0]) for a, b in zip(first, second, strict=True)]
    picks = [v == "A" for v, _ in answers if v in ("A", "B")]
    rows = [{"tuned_first": a[0], "tuned_second": b[0], "outcome": o, "raw": [_round_probs(a[1]), _round_probs(b[1])]}
            for a, b, o in zip(first, second, outcomes, strict=True)]
    summary = summarize_pairwise(outcomes, picks)
    if spec.scoring == "probs":  # probabilities of both orders: a position-balanced preference as well
        summary["balanced"] = summarize_balanced(balanced_margins([a[1] for a in first], [b[1] for b in second]))
    return summary, rows


def _grades(generator, spec, rubric, prompts, refs, answers, bar, task) -> list[float | None]:
    asks = [grade_messages(p, r, a, rubric, spec.scale, spec.max_chars) for p, r, a in zip(prompts, refs, answers,
                                                                                            strict=True)]
    return [g for g, _ in _ask(generator, asks, spec, "grade", bar, task)]


def _others(spec: Any, outputs: dict[str, list[str]]) -> list[str]:
    available = [s for s in outputs if s != "tuned"]
    if spec.against is None:
        return available
    unknown = [s for s in spec.against if s not in available]
    if unknown:
        raise TunelabError(f"no answers of {', '.join(map(repr, unknown))} to judge; evaluated: "
                           f"{', '.join(available) or 'none besides tuned'}", where=f"{_WHERE}.against",
                           fix="name systems this evaluation produced (base needs eval.compare_base, baselines "
                               "eval.baselines.enabled)")
    return list(spec.against)


def judge_systems(prompts: Sequence[list[dict[str, str]]], references: Sequence[str | None],
                  outputs: dict[str, list[str]], spec: Any, generator) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    """Judge the tuned answers against the others (pairwise) and/or grade every system (single).

    Args:
        prompts: the evaluated chat prompts.
        references: the reference answers (shown when ``spec.reference``).
        outputs: system name -> one answer per prompt; must hold ``"tuned"``.
        spec: ``eval.judge``.
        generator: the judge.

    Returns:
        ``(summary, per-row records)``; the summary holds ``pairwise: {other: {...}}`` and/or
        ``single: {system: {...}}`` with ``single_diff: {other: tuned minus other}``.
    """
    from tunelab.data.score import rubric_id
    from tunelab.training.progress import task_progress

    rubric = load_judge_rubric(spec)
    refs = [r if spec.reference else None for r in references]
    others = _others(spec, outputs)
    summary: dict[str, Any] = {"judge": generator.name, "mode": spec.mode, "scoring": spec.scoring,
                               "rubric": rubric_id(rubric), "n": len(prompts)}
    rows: list[dict[str, Any]] = [{} for _ in prompts]
    pairwise = spec.mode in ("pairwise", "both")
    single = spec.mode in ("single", "both")
    calls = len(prompts) * (2 * len(others) * pairwise + (1 + len(others)) * single)
    with task_progress() as bar:
        task = bar.add_task(f"judge ({generator.name})", total=calls)
        if pairwise:
            summary["pairwise"] = {}
            for other in others:
                summary["pairwise"][other], per = _pairwise(generator, spec, rubric, prompts, refs, outputs, other,
                                                            bar, task)
                for row, rec in zip(rows, per, strict=True):
                    row.setdefault("pairwise", {})[other] = rec
        if single:
            grades = {s: _grades(generator, spec, rubric, prompts, refs, outputs[s], bar, task)
                      for s in ["tuned", *others]}
            summary["single"] = {s: {**summarize_grades(g), "scale": spec.scale} for s, g in grades.items()}
            summary["single_diff"] = {o: _paired_diff(grades["tuned"], grades[o]) for o in others}
            for i, row in enumerate(rows):
                row["grades"] = {s: g[i] for s, g in grades.items()}
    if spec.judge.endpoint is None and spec.judge.model == _SMALL_DEFAULT_JUDGE:
        summary["note"] = ("judged by the default 135M model: a weak judge (strong position bias, little "
                           "sense of quality); use a bigger model or an endpoint for decisions")
    return summary, rows


def system_outputs(run_dir: str | Path, examples: Sequence[Any], base: list[str] | None, tuned: list[str],
                   baselines: bool) -> dict[str, list[str]]:
    """Every system's answers to the evaluated rows: tuned, base, and the prompting baselines.

    Baseline answers come from ``eval/baselines.jsonl`` (matched to the rows by ``where``); a baseline that
    did not answer every row, or whose answers are the base model's (zero-shot), is left out.
    """
    outputs = {"tuned": list(tuned)}
    if base is not None:
        outputs["base"] = list(base)
    path = Path(run_dir) / "eval" / "baselines.jsonl"
    if not (baselines and path.is_file()):
        return outputs
    by_variant: dict[str, dict[str, str]] = {}
    for line in path.read_text(encoding="utf-8").splitlines():
        if line.strip():
            row = json.loads(line)
            by_variant.setdefault(row["variant"], {})[row["where"]] = row.get("output") or ""
    for variant, answers in by_variant.items():
        mine = [answers.get(ex.where) for ex in examples]
        if all(a is not None for a in mine) and mine != outputs.get("base"):
            outputs[variant] = mine
    return outputs


def judge_run(run_dir: str | Path, recipe: Any, examples: Sequence[Any], outputs: dict[str, list[str]],
              generator) -> dict[str, Any]:
    """The ``judge`` part of ``eval/metrics.json``; per-row verdicts and grades go to ``eval/judge.jsonl``.

    Args:
        run_dir: the run folder.
        recipe: the resolved recipe (``eval.judge``).
        examples: the evaluated rows.
        outputs: system -> answers, aligned with ``examples`` (see `system_outputs`).
        generator: the judge from `prepare_judge`.
    """
    from tunelab.util.io import atomic_write_text

    spec = recipe.eval.judge
    n = min(len(examples), spec.max_samples or len(examples))
    examples = list(examples)[:n]
    outputs = {k: v[:n] for k, v in outputs.items()}
    summary, rows = judge_systems([ex.prompt_messages for ex in examples], [ex.reference for ex in examples],
                                  outputs, spec, generator)
    lines = []
    for i, (ex, row) in enumerate(zip(examples, rows, strict=True)):
        rec = {"where": ex.where, **row, "answers": {k: v[i] for k, v in outputs.items()}}
        lines.append(json.dumps(rec, ensure_ascii=False) + "\n")
    out = Path(run_dir) / "eval"
    out.mkdir(parents=True, exist_ok=True)
    atomic_write_text(out / "judge.jsonl", "".join(lines))
    return summary
