"""Curation steps over examples: clean → pii → filter → dedup → decontam → score (any subset, in recipe order).

Every step takes examples and returns the ones it keeps (possibly rewritten), a `Reject` for every row it
removes (with the step name and reason), and a `StepReport` whose counts add up:
``rows_in == kept + rejected``. The same functions serve `tunelab data <verb>` and a recipe's
``data.curate`` section.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable, Iterable
from dataclasses import asdict, dataclass, field, replace
from typing import Any

from tunelab.config.specs import CleanSpec, CurateSpec, DecontamSpec, DedupSpec, FilterSpec, PiiSpec
from tunelab.data.records import Example, Reject

__all__ = [
    "CurationResult", "RowStep", "StepReport", "clean_rows", "curate", "decontam_reject", "decontam_report",
    "dedup_params", "dedup_reject", "dedup_report", "example_text", "filter_rows", "pii_rows", "row_step",
]


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


@dataclass
class RowStep:
    """A curation step that looks at one row at a time (clean, pii, filter), with its running counts.

    ``step(ex)`` returns the kept (possibly rewritten) example or a `Reject`; ``step.report()`` is the
    `StepReport` of the rows seen so far. The list functions below and the streaming path
    (`tunelab.data.stream`) both use it, so a file gives the same rows and counts either way.

    Attributes:
        name: the step.
        params: the step's spec, as reported.
        fn: one row -> (kept example or Reject, whether the row counts as modified).
        details: the report's details so far.
    """

    name: str
    params: dict[str, Any]
    fn: Callable[[Example], tuple[Example | Reject, bool]]
    details: Callable[[], dict[str, Any]] = dict
    rows_in: int = 0
    kept: int = 0
    rejected: int = 0
    modified: int = 0

    def __call__(self, ex: Example) -> Example | Reject:
        out, modified = self.fn(ex)
        self.rows_in += 1
        self.modified += modified
        if isinstance(out, Reject):
            self.rejected += 1
        else:
            self.kept += 1
        return out

    def report(self) -> StepReport:
        return StepReport(self.name, self.params, self.rows_in, self.kept, self.rejected, self.modified,
                          self.details())


def _run_rows(step: RowStep, examples: Iterable[Example]) -> tuple[list[Example], list[Reject], StepReport]:
    kept, rejects = [], []
    for ex in examples:
        out = step(ex)
        (rejects if isinstance(out, Reject) else kept).append(out)
    return kept, rejects, step.report()


def clean_rows(spec: CleanSpec) -> RowStep:
    """The clean step, one row at a time (a row counts as modified when cleaning changed it, even if it is
    then rejected as empty)."""
    from tunelab.data.clean import CleanOptions, clean_text

    opts = CleanOptions(**spec.model_dump())

    def clean(ex: Example) -> tuple[Example | Reject, bool]:
        new = _map_contents(ex, lambda t: clean_text(t, opts))
        if not example_text(new).strip():
            return _reject(ex, "clean", "empty after cleaning"), new != ex
        return new, new != ex

    return RowStep("clean", spec.model_dump(), clean)


def pii_rows(spec: PiiSpec) -> RowStep:
    """The pii step, one row at a time; details count the matches by type over all rows."""
    from tunelab.data.pii import redact

    totals: Counter = Counter()

    def pii(ex: Example) -> tuple[Example | Reject, bool]:
        found: Counter = Counter()

        def _redact(text: str) -> str:
            new, counts = redact(text, types=spec.types)
            found.update(counts)
            return new

        new = _map_contents(ex, _redact)
        totals.update(found)
        if found and spec.action == "drop":
            kinds = ", ".join(f"{k} x{n}" for k, n in sorted(found.items()))
            return _reject(ex, "pii", f"contains personal data ({kinds})"), False
        return new, bool(found)

    return RowStep("pii", spec.model_dump(), pii, lambda: {"found_by_type": dict(totals.most_common())})


def filter_rows(spec: FilterSpec) -> RowStep:
    """The filter step, one row at a time; details count the rejects by reason."""
    th = _thresholds(spec)
    by_reason: Counter = Counter()

    def keep(ex: Example) -> tuple[Example | Reject, bool]:
        reasons = _filter_reasons(ex, spec, th)
        if not reasons:
            return ex, False
        by_reason[reasons[0].split(" (", 1)[0]] += 1
        return _reject(ex, "filter", reasons[0]), False

    return RowStep("filter", spec.model_dump(), keep, lambda: {"rejected_by_reason": dict(by_reason.most_common())})


def row_step(name: str, spec: CurateSpec) -> RowStep | None:
    """The `RowStep` for a step that works one row at a time, or None for a whole-dataset step."""
    makers = {"clean": clean_rows, "pii": pii_rows, "filter": filter_rows}
    return makers[name](getattr(spec, name)) if name in makers else None


def step_clean(examples: list[Example], spec: CleanSpec) -> tuple[list[Example], list[Reject], StepReport]:
    return _run_rows(clean_rows(spec), examples)


def step_pii(examples: list[Example], spec: PiiSpec) -> tuple[list[Example], list[Reject], StepReport]:
    return _run_rows(pii_rows(spec), examples)


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
    return _run_rows(filter_rows(spec), examples)


def dedup_params(spec: DedupSpec):
    """The `MinHashParams` of a dedup spec."""
    from tunelab.data.dedup import MinHashParams

    return MinHashParams(shingle=spec.shingle, num_perm=spec.num_perm, bands=spec.bands, threshold=spec.threshold)


def dedup_reject(ex: Example, why: str, kept_where: str) -> Reject:
    """The reject of a row that duplicates the kept row at ``kept_where`` (``why`` from `DedupPlan.dropped`)."""
    return _reject(ex, "dedup", f"{why.split(' of row')[0]} (of {kept_where}; {why})")


def dedup_report(spec: DedupSpec, rows_in: int, whys: Iterable[str]) -> StepReport:
    """The dedup StepReport from the reasons of the dropped rows."""
    dropped = exact = near = 0
    for why in whys:  # one pass: the streaming path gives a generator
        dropped, exact, near = dropped + 1, exact + ("exact" in why), near + ("near" in why)
    params = dedup_params(spec)
    details = {"exact": exact, "near": near, "p50_similarity": round(params.similarity_at(0.5), 3),
               "p95_similarity": round(params.similarity_at(0.95), 3)}
    return StepReport("dedup", spec.model_dump(), rows_in, rows_in - dropped, dropped, details=details)


def step_dedup(examples: list[Example], spec: DedupSpec) -> tuple[list[Example], list[Reject], StepReport]:
    from tunelab.data.dedup import dedup_plan

    plan = dedup_plan([example_text(ex) for ex in examples], dedup_params(spec), exact=spec.exact, near=spec.near)
    dropped = dict(plan.dropped)
    kept = [ex for i, ex in enumerate(examples) if i not in dropped]
    rejects = [dedup_reject(examples[i], why, examples[rep].where) for i, (rep, why) in sorted(dropped.items())]
    return kept, rejects, dedup_report(spec, len(examples), (why for _, why in dropped.values()))


def decontam_reject(ex: Example, hit, n: int) -> Reject:
    """The reject of a row with a `ContaminationHit`."""
    return _reject(ex, "decontam", f"overlaps evaluation data ({hit.overlap} shared {n}-grams with eval row "
                   f"{hit.eval_index}, {hit.fraction:.0%} of the row; e.g. '{hit.example_ngram}')")


def decontam_report(spec: DecontamSpec, rows_in: int, hits: int, eval_texts: int) -> StepReport:
    """The decontam StepReport: hit rows are rejected with action=drop, only counted otherwise."""
    rejected = hits if spec.action == "drop" else 0
    return StepReport("decontam", spec.model_dump(), rows_in, rows_in - rejected, rejected,
                      details={"contaminated_rows": hits, "eval_texts": eval_texts})


def step_decontam(examples: list[Example], spec: DecontamSpec, eval_texts: list[str]
                  ) -> tuple[list[Example], list[Reject], StepReport]:
    from tunelab.data.decontam import find_contamination

    hits = {h.train_index: h for h in find_contamination([example_text(ex) for ex in examples], eval_texts, n=spec.n)}
    rejects, kept = [], list(examples)
    if spec.action == "drop":
        rejects = [decontam_reject(examples[i], h, spec.n) for i, h in sorted(hits.items())]
        kept = [ex for i, ex in enumerate(examples) if i not in hits]
    return kept, rejects, decontam_report(spec, len(examples), len(hits), len(eval_texts))


# ---------------------------------------------------------------------------------------------- driver


def run_step(name: str, examples: list[Example], spec: CurateSpec, eval_texts: list[str] | None = None):
    """One named step with its section of the spec."""
    if name == "decontam":
        return step_decontam(examples, spec.decontam, eval_texts or [])
    if name == "augment":
        # The whole spec: new rows go through this recipe's filter and dedup settings.
        from tunelab.data.augment import step_augment

        return step_augment(examples, spec)
    if name == "score":
        from tunelab.data.score import step_score  # imports torch and the generators: only when asked for

        return step_score(examples, spec.score)
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
