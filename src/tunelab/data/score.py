"""LLM-as-judge quality scores: rate every row with a rubric, keep the best N or those above a threshold.

A small, high-quality set beats a large noisy one (LIMA, AlpaGasus, Deita): the judge shows a model the
rubric, the conversation's prompt and its answer, and asks for one digit from 1 to 5.

* ``mode: probs`` (default) asks for the judge's next-token probabilities of "1".."5" and takes the
  expected score ``sum(k * p(k))`` over them, renormalised (G-Eval, Liu et al. 2023). It is deterministic,
  needs no parsing, and turns a small model's hesitation into a graded score instead of a coin flip.
* ``mode: generate`` reads the first digit 1-5 of the judge's reply, for endpoints that return no logprobs.

A row the judge gives no usable answer for (no digit in the reply, no probability on any of "1".."5") gets
``value: null`` and is counted as unscored; it is never given a default score. With a keep rule it is
rejected with the reason.

Every scored row carries ``raw["score"] = {"value": 3.87, "judge": <generator name>, "rubric": <sha256[:12]>}``,
which `tunelab data` writes into ``data.jsonl``. Keep rules (either or both): ``min_score`` drops rows below
it, ``keep_top`` keeps the N best; ranks are by score, ties to the earlier row, so the choice is deterministic.
"""

from __future__ import annotations

import hashlib
import re
import statistics
from collections.abc import Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from tunelab.config.specs import ScoreSpec
from tunelab.data.records import Example, Reject
from tunelab.errors import TunelabError
from tunelab.generation import make_generator

__all__ = [
    "CHOICES",
    "DEFAULT_RUBRIC",
    "JudgeScore",
    "expected_score",
    "judge_messages",
    "load_rubric",
    "parse_score",
    "rubric_id",
    "score_examples",
    "step_score",
]

CHOICES = ("1", "2", "3", "4", "5")
DEFAULT_RUBRIC = """\
Judge the answer on four criteria:
- helpfulness: does it give the user what they need?
- correctness: are its facts, code and reasoning right?
- clarity: is it well organised and easy to follow?
- instruction following: does it do what the prompt asks, in the requested format and length?
Scores:
5 = excellent: helpful, correct, clear and follows every instruction; nothing to improve.
4 = good: correct and helpful, with small omissions or small problems of clarity or format.
3 = acceptable: partly correct or incomplete, or follows the instructions only in part.
2 = poor: mostly wrong, unhelpful or off-topic, or ignores the instructions.
1 = unusable: empty, gibberish, harmful, or an unjustified refusal."""
_SYSTEM = "You grade examples in a fine-tuning dataset. You reply with a single digit from 1 to 5."
_CHUNK = 64  # rows per judge call: a progress step, and enough rows for the local judge's length batching
_DIGIT = re.compile(r"(?<![\d.])([1-5])(?!\.?\d)")  # "4", "Score: 4/5", "4 out of 5."; not "10", "0.5", "3.5"
_WHERE = "data.curate.score"


@dataclass(frozen=True)
class JudgeScore:
    """The judge's verdict on one row.

    Attributes:
        value: the score in [1, 5] rounded to 2 decimals, or None when the judge gave no usable answer.
        why: for an unscored row, what the judge answered instead (else None).
    """

    value: float | None
    why: str | None = None


# ---------------------------------------------------------------------------------------------- rubric


def load_rubric(spec: ScoreSpec) -> str:
    """The rubric text: `rubric_file`'s content, else `rubric`, else `DEFAULT_RUBRIC`.

    Raises:
        TunelabError: the rubric file is missing or unreadable, or the rubric is empty.
    """
    if spec.rubric_file is not None:
        path = Path(spec.rubric_file).expanduser()
        if not path.is_file():
            raise TunelabError(f"rubric file not found: {path}", where=f"{_WHERE}.rubric_file",
                               fix="give the path of a text file with the rubric, or drop the key for the default")
        try:
            text = path.read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError) as e:
            raise TunelabError(f"cannot read the rubric file: {e}", where=f"{_WHERE}.rubric_file") from e
        where = f"{_WHERE}.rubric_file"
    else:
        text, where = (spec.rubric if spec.rubric is not None else DEFAULT_RUBRIC), f"{_WHERE}.rubric"
    if not text.strip():
        raise TunelabError("the rubric is empty", where=where, fix="write what each score from 1 to 5 means")
    return text.strip()


def rubric_id(rubric: str) -> str:
    """The first 12 hex digits of the rubric's SHA-256: which rubric produced a score."""
    return hashlib.sha256(rubric.encode("utf-8")).hexdigest()[:12]


# ---------------------------------------------------------------------------------------------- prompt


def _cut(text: str, max_chars: int) -> str:
    if len(text) <= max_chars:
        return text
    return f"{text[:max_chars]}\n[... cut: {len(text) - max_chars} more characters]"


def _render_prompt(ex: Example) -> str:
    turns = ex.prompt_messages if ex.reference is not None else []
    if not turns:
        return "(none: a plain-text document)"
    if len(turns) == 1:
        return turns[0]["content"]
    # Several turns (a system prompt, earlier exchanges): the judge needs to see who said what.
    return "\n\n".join(f"[{m['role']}]\n{m['content']}" for m in turns)


def judge_messages(ex: Example, rubric: str, max_chars: int = 2000) -> list[dict[str, str]]:
    """The chat the judge answers: the rubric, the row's prompt and its answer, and the request for a digit.

    Args:
        ex: the row; its final assistant turn is the answer (a plain-text row is judged as a document).
        rubric: what each score means.
        max_chars: characters shown of the prompt and of the answer, each.
    """
    answer = ex.reference if ex.reference is not None else (ex.text or "")
    user = (f"Grade the ANSWER to the PROMPT with this rubric.\n\nRUBRIC:\n{rubric}\n\n"
            f"PROMPT:\n{_cut(_render_prompt(ex), max_chars)}\n\nANSWER:\n{_cut(answer, max_chars)}\n\n"
            "Reply with a single digit from 1 to 5.")
    return [{"role": "system", "content": _SYSTEM}, {"role": "user", "content": user}]


# --------------------------------------------------------------------------------------------- scoring


def expected_score(probs: dict[str, float]) -> JudgeScore:
    """The probability-weighted score ``sum(k * p(k)) / sum(p)`` over the choices "1".."5".

    A distribution that puts no mass on the choices, or spreads it exactly evenly, carries no judgement
    (it is what a generator reports when none of "1".."5" was among the judge's answers) and gives None.
    """
    p = [max(0.0, float(probs.get(c, 0.0))) for c in CHOICES]
    total = sum(p)
    if not total > 0 or max(p) - min(p) < 1e-12:
        return JudgeScore(None, "no probability on the digits 1-5")
    return JudgeScore(round(sum(k * pk for k, pk in zip(range(1, 6), p, strict=True)) / total, 2))


def parse_score(reply: str) -> JudgeScore:
    """The first standalone digit 1-5 of a judge's reply ("4", "Score: 4/5"), or None with the reply."""
    m = _DIGIT.search(reply)
    if m:
        return JudgeScore(float(m.group(1)))
    shown = reply.strip().replace("\n", " ")
    return JudgeScore(None, f"judge reply has no digit 1-5: '{shown[:60]}'")


def _judge_chunk(generator, prompts: list, mode: str) -> list[JudgeScore]:
    if mode == "generate":
        return [parse_score(r) for r in generator.generate(prompts)]
    return [expected_score(p) for p in generator.choice_probs(prompts, list(CHOICES))]


def score_examples(examples: Sequence[Example], spec: ScoreSpec, generator, rubric: str | None = None,
                   progress: bool = True) -> list[JudgeScore]:
    """Ask the judge about every example, in chunks, with a progress bar.

    Args:
        examples: the rows.
        spec: the score settings (mode, max_chars).
        generator: a `tunelab.generation.TextGenerator` (``choice_probs`` or ``generate``).
        rubric: the rubric text (default: `load_rubric(spec)`).
        progress: show a progress bar.

    Returns:
        One `JudgeScore` per example, in input order.
    """
    from tunelab.training.progress import task_progress
    from tunelab.util.console import console

    rubric = load_rubric(spec) if rubric is None else rubric
    prompts = [judge_messages(ex, rubric, spec.max_chars) for ex in examples]
    out: list[JudgeScore] = []
    with task_progress() as bar:
        task = bar.add_task(f"scoring ({spec.mode}, {generator.name})", total=len(prompts), visible=progress)
        for start in range(0, len(prompts), _CHUNK):
            out += _judge_chunk(generator, prompts[start:start + _CHUNK], spec.mode)
            bar.advance(task, len(prompts[start:start + _CHUNK]))
            if progress and not console.is_terminal:  # logs and CI have no live bar: a line per chunk
                console.print(f"scored {len(out)}/{len(prompts)} rows")
    return out


# ------------------------------------------------------------------------------------------- selection


def _reasons(scores: Sequence[JudgeScore], spec: ScoreSpec) -> dict[int, str]:
    """Index -> reject reason for the rows the keep rules drop (none without a rule)."""
    if spec.min_score is None and spec.keep_top is None:
        return {}
    ranked = sorted((i for i, s in enumerate(scores) if s.value is not None), key=lambda i: (-scores[i].value, i))
    rank = {i: r for r, i in enumerate(ranked, start=1)}
    out: dict[int, str] = {}
    for i, s in enumerate(scores):
        if s.value is None:
            out[i] = f"no score ({s.why})"
        elif spec.min_score is not None and s.value < spec.min_score:
            out[i] = f"below min_score ({s.value:.2f} < {spec.min_score:.2f})"
        elif spec.keep_top is not None and rank[i] > spec.keep_top:
            out[i] = f"not in the best {spec.keep_top} (rank {rank[i]} > {spec.keep_top})"
    return out


def _details(scores: Sequence[JudgeScore], kept: Sequence[float | None], judge: str, rid: str,
             mode: str) -> dict[str, Any]:
    values = [s.value for s in scores if s.value is not None]
    # Buckets by the nearest integer score: "3" holds [2.5, 3.5); half-up, as a reader would round.
    buckets = [min(5, int(v + 0.5)) for v in values]
    kept_values = [v for v in kept if v is not None]
    return {
        "judge": judge, "rubric": rid, "mode": mode, "scored": len(values), "unscored": len(scores) - len(values),
        "mean": round(statistics.fmean(values), 3) if values else None,
        "median": round(statistics.median(values), 3) if values else None,
        "histogram": {c: buckets.count(int(c)) for c in CHOICES},
        "kept_min": min(kept_values) if kept_values else None,
    }


def step_score(examples: list[Example], spec: ScoreSpec, generator=None
               ) -> tuple[list[Example], list[Reject], Any]:
    """The ``score`` curation step: judge every row, annotate it, apply the keep rules.

    Args:
        examples: the rows.
        spec: the recipe's ``data.curate.score``.
        generator: the judge (default: `make_generator(spec.generator)`, built only when there are rows).

    Returns:
        ``(kept, rejects, StepReport)``; kept rows (and rejected records) carry ``raw["score"]``; the report's
        details hold the judge, rubric id, mean/median score and a histogram by nearest integer score.

    Raises:
        TunelabError: the rubric file is missing or empty, or the judge cannot be loaded or reached.
    """
    from tunelab.data.curate import StepReport

    rubric = load_rubric(spec)  # a bad rubric fails before a model is loaded
    rid = rubric_id(rubric)
    if generator is None and examples:
        generator = make_generator(spec.generator)
    judge = generator.name if generator is not None else spec.generator.model
    scores = score_examples(examples, spec, generator, rubric) if examples else []
    reasons = _reasons(scores, spec)
    kept, rejects = [], []
    for i, (ex, s) in enumerate(zip(examples, scores, strict=True)):
        record = {"value": s.value, "judge": judge, "rubric": rid, **({"error": s.why} if s.why else {})}
        if i in reasons:
            rejects.append(Reject(where=ex.where, reason=reasons[i], record={**(ex.raw or ex.content()),
                                                                              "score": record}, step="score"))
        else:
            kept.append(replace(ex, raw={**ex.raw, "score": record}))
    details = _details(scores, [ex.raw["score"]["value"] for ex in kept], judge, rid, spec.mode)
    report = StepReport("score", spec.model_dump(), len(examples), len(kept), len(rejects), details=details)
    return kept, rejects, report
