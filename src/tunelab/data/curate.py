"""Curation steps over examples: clean → pii → filter → dedup → decontam (any subset, in recipe order).

Every step takes examples and returns the ones it keeps (possibly rewritten), a `Reject` for every row it
removes (with the step name and reason), and a `StepReport` whose counts add up:
``rows_in == kept + rejected``. The same functions serve `tunelab data <verb>` and a recipe's
``data.curate`` section.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import asdict, dataclass, field, replace
from typing import Any

from tunelab.config.specs import CleanSpec, CurateSpec, DecontamSpec, DedupSpec, FilterSpec, PiiSpec
from tunelab.data.records import Example, Reject

__all__ = ["CurationResult", "StepReport", "curate", "example_text"]


@dataclass
class StepReport:
    step: str
    params: dict[str, Any]
    rows_in: int
    kept: int
    rejected: int
    modified: int = 0
    details: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass
class CurationResult:
    examples: list[Example]
    rejects: list[Reject]
    steps: list[StepReport]


def example_text(ex: Example) -> str:
    """All the text of an example (turns joined by newlines), the unit of dedup and decontamination."""
    if ex.text is not None:
        return ex.text
    return "\n".join(m["content"] for m in ex.messages)


def _map_contents(ex: Example, fn) -> Example:
    """A copy of the example with `fn` applied to every turn's content (or to the text)."""
    if ex.text is not None:
        return replace(ex, text=fn(ex.text))
    return replace(ex, messages=[{**m, "content": fn(m["content"])} for m in ex.messages])


def _reject(ex: Example, step: str, reason: str) -> Reject:
    return Reject(where=ex.where, reason=reason, record=ex.raw or ex.content(), step=step)


# ------------------------------------------------------------------------------------------------- steps


def step_clean(examples: list[Example], spec: CleanSpec) -> tuple[list[Example], list[Reject], StepReport]:
    from tunelab.data.clean import CleanOptions, clean_text

    opts = CleanOptions(**spec.model_dump())
    kept, rejects, modified = [], [], 0
    for ex in examples:
        new = _map_contents(ex, lambda t: clean_text(t, opts))
        modified += new != ex
        if not example_text(new).strip():
            rejects.append(_reject(ex, "clean", "empty after cleaning"))
        else:
            kept.append(new)
    return kept, rejects, StepReport("clean", spec.model_dump(), len(examples), len(kept), len(rejects), modified)


def step_pii(examples: list[Example], spec: PiiSpec) -> tuple[list[Example], list[Reject], StepReport]:
    from tunelab.data.pii import redact

    kept, rejects, modified, totals = [], [], 0, Counter()
    for ex in examples:
        found: Counter = Counter()

        def _redact(text: str, found: Counter = found) -> str:
            new, counts = redact(text, types=spec.types)
            found.update(counts)
            return new

        new = _map_contents(ex, _redact)
        totals.update(found)
        if found and spec.action == "drop":
            kinds = ", ".join(f"{k} x{n}" for k, n in sorted(found.items()))
            rejects.append(_reject(ex, "pii", f"contains personal data ({kinds})"))
            continue
        modified += bool(found)
        kept.append(new)
    report = StepReport("pii", spec.model_dump(), len(examples), len(kept), len(rejects), modified,
                        {"found_by_type": dict(totals.most_common())})
    return kept, rejects, report


def _filter_reasons(ex: Example, spec: FilterSpec, th) -> list[str]:
    from tunelab.data.quality import check_text, is_degenerate

    turns = [("text", ex.text)] if ex.text is not None else [(m["role"], m["content"]) for m in ex.messages]
    reasons: list[str] = []
    for role, text in turns:
        if role not in spec.roles and role != "text":
            continue
        if spec.drop_degenerate and (why := is_degenerate(text)):
            reasons.append(f"degenerate {role} turn ({why})")
            continue
        reasons.extend(f"{r} ({role} turn)" if " (" not in r else r.replace(" (", f" ({role} turn: ", 1)
                       for r in check_text(text, th, role=role))
    return reasons


def _thresholds(spec: FilterSpec):
    from tunelab.data.quality import QualityThresholds

    return QualityThresholds(
        min_chars=spec.min_chars, max_chars=spec.max_chars, max_dup_line_frac=spec.max_dup_line_frac,
        max_dup_para_frac=spec.max_dup_para_frac, max_symbol_word_ratio=spec.max_symbol_word_ratio,
        min_alpha_word_frac=spec.min_alpha_word_frac,
        languages=tuple(spec.languages) if spec.languages else None,
        min_language_confidence=spec.min_language_confidence, drop_refusals=spec.drop_refusals,
    )


def step_filter(examples: list[Example], spec: FilterSpec) -> tuple[list[Example], list[Reject], StepReport]:
    th = _thresholds(spec)
    kept, rejects = [], []
    for ex in examples:
        reasons = _filter_reasons(ex, spec, th)
        if reasons:
            rejects.append(_reject(ex, "filter", reasons[0]))
        else:
            kept.append(ex)
    by_reason = Counter(r.reason.split(" (", 1)[0] for r in rejects)
    return kept, rejects, StepReport("filter", spec.model_dump(), len(examples), len(kept), len(rejects),
                                     details={"rejected_by_reason": dict(by_reason.most_common())})


def step_dedup(examples: list[Example], spec: DedupSpec) -> tuple[list[Example], list[Reject], StepReport]:
    from tunelab.data.dedup import MinHashParams, dedup_plan

    params = MinHashParams(shingle=spec.shingle, num_perm=spec.num_perm, bands=spec.bands, threshold=spec.threshold)
    plan = dedup_plan([example_text(ex) for ex in examples], params, exact=spec.exact, near=spec.near)
    dropped = dict(plan.dropped)
    kept = [ex for i, ex in enumerate(examples) if i not in dropped]
    rejects = []
    for i, (rep, why) in sorted(dropped.items()):
        rejects.append(_reject(examples[i], "dedup", f"{why.split(' of row')[0]} (of {examples[rep].where}; {why})"))
    details = {"exact": sum("exact" in w for _, w in dropped.values()),
               "near": sum("near" in w for _, w in dropped.values()),
               "p50_similarity": round(params.similarity_at(0.5), 3),
               "p95_similarity": round(params.similarity_at(0.95), 3)}
    return kept, rejects, StepReport("dedup", spec.model_dump(), len(examples), len(kept), len(rejects), details=details)


def step_decontam(examples: list[Example], spec: DecontamSpec, eval_texts: list[str]
                  ) -> tuple[list[Example], list[Reject], StepReport]:
    from tunelab.data.decontam import find_contamination

    hits = {h.train_index: h for h in find_contamination([example_text(ex) for ex in examples], eval_texts, n=spec.n)}
    rejects = []
    if spec.action == "drop":
        for i, h in sorted(hits.items()):
            rejects.append(_reject(examples[i], "decontam",
                                   f"overlaps evaluation data ({h.overlap} shared {spec.n}-grams with eval row "
                                   f"{h.eval_index}, {h.fraction:.0%} of the row; e.g. '{h.example_ngram}')"))
        kept = [ex for i, ex in enumerate(examples) if i not in hits]
    else:
        kept = list(examples)
    details = {"contaminated_rows": len(hits), "eval_texts": len(eval_texts)}
    return kept, rejects, StepReport("decontam", spec.model_dump(), len(examples), len(kept), len(rejects),
                                     details=details)


# ---------------------------------------------------------------------------------------------- driver


def run_step(name: str, examples: list[Example], spec: CurateSpec, eval_texts: list[str] | None = None):
    """One named step with its section of the spec."""
    if name == "decontam":
        return step_decontam(examples, spec.decontam, eval_texts or [])
    fn = {"clean": step_clean, "pii": step_pii, "filter": step_filter, "dedup": step_dedup}[name]
    return fn(examples, getattr(spec, name))


def curate(examples: list[Example], spec: CurateSpec, eval_texts: list[str] | None = None,
           steps: list[str] | None = None) -> CurationResult:
    """Run the curation steps (default: spec.steps) in order; every removed row is a Reject with its step."""
    rejects: list[Reject] = []
    reports: list[StepReport] = []
    for name in steps if steps is not None else spec.steps:
        examples, step_rejects, report = run_step(name, examples, spec, eval_texts)
        rejects.extend(step_rejects)
        reports.append(report)
    return CurationResult(examples, rejects, reports)
