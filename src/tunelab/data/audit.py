"""Dataset EDA: one pass over a dataset that measures what matters before fine-tuning on it.

`audit_examples` turns the rows of a file (as `tunelab data <verb>` reads them: ``read_records`` →
``resolve_format`` → ``to_examples``) into a JSON-serialisable report: counts, lengths (characters per
role and chat-template tokens), turns, vocabulary, language mix, duplicates, PII, class balance,
refusals, degenerate turns, inconsistent answers, evaluation overlap, and `findings` — what to fix and
with which ``tunelab data`` verb. `write_audit` writes ``data_report.json`` and ``data_report.html``.

The report is deterministic for the same input: no timestamps, floats rounded, ties broken by name.

Finding thresholds (`THRESHOLDS`):

==========================  ==========================================  ========
finding                     condition                                   severity
==========================  ==========================================  ========
PII                         any match                                   high
evaluation overlap          any contaminated row                        high
duplicates                  removable duplicates > 1% of rows           medium
                            (any duplicate: low)
refusals                    > 2% of assistant answers (any: low)        medium
truncation                  > 5% of rows over max_length (any: low)     medium
class imbalance             max/min class count > 10                    medium
inconsistent answers        any prompt, or group of near-same prompts   medium
                            (char 5-gram Jaccard >= 0.8), with
                            different answers
degenerate turns            any                                         low
rejected at read            > 5% of rows rejected (any: info)           medium
==========================  ==========================================  ========
"""

from __future__ import annotations

import json
import os
from collections import Counter, defaultdict
from collections.abc import Iterable, Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from tunelab.data.curate import example_text
from tunelab.data.records import Example, Reject, reason_key

__all__ = ["THRESHOLDS", "audit_examples", "write_audit"]

THRESHOLDS: dict[str, float] = {
    "duplicates": 0.01,  # fraction of rows a dedup would remove
    "refusals": 0.02,  # fraction of assistant answers
    "truncation": 0.05,  # fraction of rows over max_length tokens
    "imbalance": 10.0,  # largest / smallest class count
    "rejects": 0.05,  # fraction of rows rejected at read
    "language_confidence": 0.5,  # below this a detection counts as "uncertain"
    "near_prompt_similarity": 0.8,  # estimated Jaccard of prompts' character 5-grams that makes them near-same
}
SEVERITIES = ("high", "medium", "low", "info")
_EXAMPLES = 5  # examples kept per section
_SNIPPET = 300  # characters kept per example text
_TOP = 20  # top words / n-grams
_BINS = 20  # histogram bins
_TOKEN_BATCH = 512
_LABEL_MAX_CLASSES, _LABEL_MAX_WORDS = 30, 4
_TEMPLATE_MIN_PROMPTS = 20  # with this many distinct prompts, a prefix/suffix they all share is a template
_ROLES = ("system", "user", "assistant")
_PUNCT = ".,!?;:…'\"()[]{}<>`*_#-–—“”‘’«»，。！？；：、（）【】《》"
_STOP_LIST = (
    "a an the and or but if of to in on at by for with from as is are was were be been being it its this that "
    "these those i you he she we they me him her us them my your his our their what which who whom how why when "
    "where there here not no so do does did done have has had can could will would should may might must shall "
    "than then also just only into out up down over about all any some such more most very s t"
)
_STOP_WORDS = frozenset(_STOP_LIST.split())


# ------------------------------------------------------------------------------------------------ helpers


def _r(x: float) -> float:
    """Round for a stable, readable JSON."""
    return round(float(x), 6)


def _cut(text: str) -> str:
    return text if len(text) <= _SNIPPET else text[:_SNIPPET] + "…"


def _ranked(counter: Counter, limit: int | None = None) -> dict[str, int]:
    """Counts sorted by count (descending) then key, as a plain dict."""
    items = sorted(counter.items(), key=lambda kv: (-kv[1], str(kv[0])))
    return {str(k): int(v) for k, v in items[:limit]}


def _track(items: Sequence[Any], what: str, progress: bool) -> Iterator[Any]:
    """Iterate `items`, with a rich progress bar when asked."""
    if not progress:
        yield from items
        return
    from tunelab.training.progress import task_progress

    with task_progress() as bar:
        task = bar.add_task(what, total=len(items))
        for item in items:
            yield item
            bar.advance(task)


def _stats(values: Sequence[float]) -> dict[str, Any] | None:
    """min/mean/p50/p95/max and a histogram (``edges`` has one more value than ``counts``)."""
    if not values:
        return None
    a = np.asarray(values, dtype=np.float64)
    counts, edges = np.histogram(a, bins=min(_BINS, max(1, len(np.unique(a)))))
    return {"count": int(a.size), "min": _r(a.min()), "mean": _r(a.mean()), "p50": _r(np.percentile(a, 50)),
            "p95": _r(np.percentile(a, 95)), "max": _r(a.max()),
            "histogram": {"edges": [_r(e) for e in edges], "counts": counts.tolist()}}


def _role_texts(ex: Example, role: str) -> list[str]:
    return [m["content"] for m in ex.messages if m.get("role") == role]


def _final_prompt(ex: Example) -> str | None:
    users = _role_texts(Example(ex.prompt_messages, None, ex.where), "user")
    return users[-1] if users else None


def _answers(examples: list[Example]) -> list[tuple[int, str]]:
    """(index, final assistant answer) of the examples that have one."""
    return [(i, ex.reference) for i, ex in enumerate(examples) if ex.reference is not None]


def _norm(text: str) -> str:
    from tunelab.data.dedup import normalize_for_hash

    return normalize_for_hash(text)


# ------------------------------------------------------------------------------------------------ sections


def _counts(examples: list[Example], rejects: list[Reject], source: dict) -> dict[str, Any]:
    fmt = source.get("format") or ("text" if any(ex.text is not None for ex in examples) else "chat")
    return {"rows": len(examples) + len(rejects), "usable": len(examples), "rejected": len(rejects),
            "rejected_by_reason": _ranked(Counter(reason_key(r.reason) for r in rejects)), "format": fmt}


def _token_lengths(examples: list[Example], tokenizer, progress: bool) -> list[int]:
    """Tokens of each example's full chat-template rendering (the text itself for plain text)."""
    texts = [ex.text if ex.text is not None else tokenizer.apply_chat_template(ex.messages, tokenize=False)
             for ex in examples]
    batches = [texts[i:i + _TOKEN_BATCH] for i in range(0, len(texts), _TOKEN_BATCH)]
    out: list[int] = []
    for batch in _track(batches, "tokenizing", progress):
        out += [len(ids) for ids in tokenizer(batch, add_special_tokens=False)["input_ids"]]
    return out


def _lengths(examples: list[Example], tokenizer, max_length: int | None, progress: bool) -> dict[str, Any]:
    chars: dict[str, Any] = {}
    for role in (*_ROLES, "text"):
        if role == "text":
            values = [len(ex.text) for ex in examples if ex.text is not None]
        else:
            values = [len(c) for ex in examples for c in _role_texts(ex, role)]
        if values:
            chars[role] = _stats(values)
    tokens = _token_lengths(examples, tokenizer, progress) if tokenizer is not None and examples else None
    truncation = None
    if tokens is not None and max_length:
        over = sum(n > max_length for n in tokens)
        truncation = {"max_length": max_length, "count": over, "fraction": _r(over / len(tokens))}
    return {"chars": chars, "tokens": _stats(tokens) if tokens else None, "truncation": truncation}


def _turns(examples: list[Example]) -> dict[str, Any] | None:
    turns = [sum(m.get("role") in ("user", "assistant") for m in ex.messages) for ex in examples if ex.messages]
    if not turns:
        return None
    dist = Counter(turns)
    return {"distribution": {str(k): dist[k] for k in sorted(dist)}, "stats": _stats(turns),
            "with_system": sum(bool(_role_texts(ex, "system")) for ex in examples)}


def _words(text: str) -> list[str]:
    from tunelab.data.quality import words

    return [w for w in (t.strip(_PUNCT).lower() for t in words(text)) if any(c.isalpha() for c in w)]


def _top_ngrams(tokens: list[list[str]], n: int) -> dict[str, int]:
    grams = Counter(" ".join(g) for toks in tokens for g in zip(*(toks[i:] for i in range(n)), strict=False)
                    if not all(w in _STOP_WORDS for w in g))
    return _ranked(grams, _TOP)


def _vocabulary(examples: list[Example]) -> dict[str, Any]:
    texts = [a for _, a in _answers(examples)] or [ex.text for ex in examples if ex.text is not None]
    tokens = [_words(t) for t in texts]
    counts = Counter(w for toks in tokens for w in toks)
    return {"of": "assistant" if any(ex.messages for ex in examples) else "text", "words": sum(counts.values()),
            "distinct_words": len(counts),
            "top_words": _ranked(Counter({w: c for w, c in counts.items() if w not in _STOP_WORDS}), _TOP),
            "top_bigrams": _top_ngrams(tokens, 2), "top_trigrams": _top_ngrams(tokens, 3)}


def _language(text: str) -> str:
    from tunelab.data.quality import detect_language

    code, prob = detect_language(text[:1000])
    return code if prob >= THRESHOLDS["language_confidence"] else "uncertain"


def _languages(examples: list[Example], progress: bool) -> dict[str, dict[str, int]]:
    """Language per row of its user turns and of its assistant turns (or of its text)."""
    mix: dict[str, Counter] = defaultdict(Counter)
    for ex in _track(examples, "detecting languages", progress):
        parts = {"text": [ex.text]} if ex.text is not None else {r: _role_texts(ex, r) for r in ("user", "assistant")}
        for role, texts in parts.items():
            if any(t.strip() for t in texts):
                mix[role][_language("\n".join(texts))] += 1
    return {role: _ranked(c) for role, c in sorted(mix.items())}


def _duplicates(examples: list[Example], texts: list[str], progress: bool) -> dict[str, Any]:
    from tunelab.data.dedup import dedup_plan

    plan = dedup_plan(texts, progress=progress)
    reasons = Counter(reason.split(" ", 1)[0] for _, reason in plan.dropped.values())
    largest = sorted(plan.clusters, key=lambda c: (-len(c), c[0]))[:_EXAMPLES]
    return {"exact": reasons.get("exact", 0), "near": reasons.get("near", 0), "removable": len(plan.dropped),
            "fraction": _r(len(plan.dropped) / len(texts)) if texts else 0.0, "clusters": len(plan.clusters),
            "rows_in_clusters": sum(len(c) for c in plan.clusters),
            "largest": [{"size": len(c), "examples": [{"where": examples[i].where, "text": _cut(texts[i])}
                                                      for i in c[:3]]} for c in largest]}


def _pii_context(text: str, first_type: str) -> str:
    """A window of the redacted text around its first placeholder (the raw value never appears)."""
    from tunelab.data.pii import redact

    red, _ = redact(text)
    at = max(0, red.find(f"<{first_type}>"))
    start = max(0, at - 80)
    return ("…" if start else "") + _cut(red[start:])


def _pii(examples: list[Example], progress: bool) -> dict[str, Any]:
    from tunelab.data.pii import find_pii

    counts: Counter = Counter()
    rows, shown = 0, []
    for ex in _track(examples, "scanning for PII", progress):
        hits = [(t, m) for t in ([ex.text] if ex.text is not None else [m["content"] for m in ex.messages])
                for m in find_pii(t)]
        rows += bool(hits)
        counts.update(m.type for _, m in hits)
        if hits and len(shown) < _EXAMPLES:
            text, first = hits[0]
            shown.append({"where": ex.where, "types": sorted({m.type for _, m in hits}),
                          "context": _pii_context(text, first.type)})
    return {"matches": sum(counts.values()), "by_type": _ranked(counts), "rows": rows, "examples": shown}


def _labels(examples: list[Example]) -> dict[str, Any] | None:
    """Class balance when the final answers look like labels: ≤ 30 distinct values, each ≤ 4 words, and
    each value used twice on average (so that a few short free-form answers are not taken for labels)."""
    answers = [a.strip() for _, a in _answers(examples) if a.strip()]
    counts = Counter(answers)
    if not answers or len(counts) > _LABEL_MAX_CLASSES or len(answers) < 2 * len(counts):
        return None
    if any(len(a.split()) > _LABEL_MAX_WORDS for a in counts):
        return None
    ranked = _ranked(counts)
    values = list(ranked.values())
    return {"classes": len(ranked), "counts": ranked,
            "fractions": {k: _r(v / len(answers)) for k, v in ranked.items()},
            "imbalance_ratio": _r(values[0] / values[-1])}


def _refusals(examples: list[Example]) -> dict[str, Any]:
    from tunelab.data.quality import is_refusal

    answers = _answers(examples)
    hits = [(i, a) for i, a in answers if is_refusal(a)]
    return {"answers": len(answers), "count": len(hits), "ratio": _r(len(hits) / len(answers)) if answers else 0.0,
            "examples": [{"where": examples[i].where, "prompt": _cut(_final_prompt(examples[i]) or ""),
                          "answer": _cut(a)} for i, a in hits[:_EXAMPLES]]}


def _degenerate(examples: list[Example]) -> dict[str, Any]:
    from tunelab.data.quality import is_degenerate

    by_reason: Counter = Counter()
    rows, shown = 0, []
    for ex in examples:
        turns = [("text", ex.text)] if ex.text is not None else [(m["role"], m["content"]) for m in ex.messages]
        found = [(role, text, why) for role, text in turns for why in [is_degenerate(text)] if why]
        rows += bool(found)
        by_reason.update(reason_key(why) for _, _, why in found)
        shown += [{"where": ex.where, "role": role, "reason": why, "text": _cut(text)}
                  for role, text, why in found][:max(0, _EXAMPLES - len(shown))]
    return {"turns": sum(by_reason.values()), "rows": rows, "by_reason": _ranked(by_reason), "examples": shown}


def _differ(examples: list[Example], rows: Iterable[int]) -> bool:
    return len({_norm(examples[i].reference) for i in rows}) > 1


def _inconsistent(examples: list[Example], progress: bool = False) -> dict[str, Any]:
    """Prompts (normalised final user turn) that appear more than once with different (normalised) answers,
    and groups of near-same prompts with different answers (``near``)."""
    groups: dict[str, list[int]] = defaultdict(list)
    for i, ex in enumerate(examples):
        prompt = _final_prompt(ex)
        if prompt is not None and ex.reference is not None and _norm(prompt):
            groups[_norm(prompt)].append(i)
    bad = [idx for idx in groups.values() if _differ(examples, idx)]
    shown = []
    for idx in bad[:_EXAMPLES]:
        answers = list(dict.fromkeys(examples[i].reference for i in idx))
        shown.append({"prompt": _cut(_final_prompt(examples[idx[0]])), "where": [examples[i].where for i in idx],
                      "answers": [_cut(a) for a in answers[:_EXAMPLES]]})
    return {"prompts": len(bad), "rows": sum(len(idx) for idx in bad), "examples": shown,
            "near": _near_inconsistent(examples, groups, progress)}


def _strip_template(keys: list[str]) -> list[str]:
    """The keys without the prefix and suffix that all of them share, once there are enough keys for that to be
    a prompt template: its shingles would otherwise make every pair of short inputs look near-same."""
    if len(keys) < _TEMPLATE_MIN_PROMPTS:
        return keys
    pre = len(os.path.commonprefix(keys))
    suf = len(os.path.commonprefix([k[::-1] for k in keys]))
    return [k[pre:max(pre, len(k) - suf)] for k in keys]


def _near_inconsistent(examples: list[Example], groups: dict[str, list[int]], progress: bool) -> dict[str, Any]:
    """Clusters of distinct near-same prompts whose rows do not all have the same (normalised) answer.

    A prompt enters MinHash as one unspaced string, so `tunelab.data.dedup` shingles it in character 5-grams:
    a changed word form or a typo in a short prompt keeps most of them, where it would change every word
    5-gram. 32 bands of 4 rows make pairs from Jaccard ~0.6 up candidates; the threshold confirms them.
    """
    from tunelab.data.dedup import MinHashParams, jaccard, near_duplicate_clusters

    keys = list(groups)
    texts = [k.replace(" ", "") for k in _strip_template(keys)]
    idx = [j for j, t in enumerate(texts) if t]
    params = MinHashParams(bands=32, threshold=THRESHOLDS["near_prompt_similarity"])
    found = []
    for cluster in near_duplicate_clusters([texts[j] for j in idx], params, progress=progress):
        members = [idx[c] for c in cluster]
        rows = sorted(i for j in members for i in groups[keys[j]])
        if _differ(examples, rows):
            found.append((members, rows))
    shown = []
    for members, rows in found[:_EXAMPLES]:
        first = texts[members[0]]
        sim = {i: jaccard(first, texts[j], params) for j in members for i in groups[keys[j]]}
        shown.append([{"where": examples[i].where, "prompt": _cut(_final_prompt(examples[i])),
                       "answer": _cut(examples[i].reference), "similarity": _r(sim[i])} for i in rows[:_EXAMPLES]])
    return {"groups": len(found), "rows": sum(len(rows) for _, rows in found), "examples": shown}


def _eval_overlap(examples: list[Example], texts: list[str], eval_texts: list[str] | None) -> dict[str, Any] | None:
    if eval_texts is None:
        return None
    from tunelab.data.decontam import find_contamination

    hits = find_contamination(texts, eval_texts) if texts and eval_texts else []
    return {"eval_rows": len(eval_texts), "count": len(hits), "fraction": _r(len(hits) / len(texts)) if texts else 0.0,
            "examples": [{"where": examples[h.train_index].where, "eval_index": h.eval_index, "overlap": h.overlap,
                          "ngram": _cut(h.example_ngram)} for h in hits[:_EXAMPLES]]}


# ------------------------------------------------------------------------------------------------ findings


def _finding(severity: str, title: str, detail: str, action: str) -> dict[str, str]:
    return {"severity": severity, "title": title, "detail": detail, "action": action}


def _pct(x: float) -> str:
    return f"{100 * x:.1f}%"


def _data_findings(r: dict[str, Any]) -> Iterable[dict[str, str]]:
    c, pii, dup = r["counts"], r["pii"], r["duplicates"]
    if c["rejected"]:
        frac = c["rejected"] / c["rows"]
        top = ", ".join(f"{k} ({v})" for k, v in list(c["rejected_by_reason"].items())[:3])
        yield _finding("medium" if frac > THRESHOLDS["rejects"] else "info", "Rows rejected at read",
                       f"{c['rejected']} of {c['rows']} rows ({_pct(frac)}): {top}.",
                       "check the file's format and columns (data.format, data.columns)")
    if pii["matches"]:
        types = ", ".join(f"{k} {v}" for k, v in pii["by_type"].items())
        yield _finding("high", "Personal data or secrets", f"{pii['rows']} rows contain PII: {types}.",
                       "redact with `tunelab data pii`")
    if dup["removable"]:
        yield _finding("medium" if dup["fraction"] > THRESHOLDS["duplicates"] else "low", "Duplicates",
                       f"{dup['removable']} rows ({_pct(dup['fraction'])}) duplicate another: {dup['exact']} exact, "
                       f"{dup['near']} near, in {dup['clusters']} clusters.", "remove with `tunelab data dedup`")
    overlap = r["eval_overlap"]
    if overlap and overlap["count"]:
        yield _finding("high", "Overlap with evaluation data",
                       f"{overlap['count']} rows share 13-grams with the evaluation set.",
                       "remove with `tunelab data decontam`")


def _content_findings(r: dict[str, Any]) -> Iterable[dict[str, str]]:
    ref, trunc, labels = r["refusals"], r["lengths"]["truncation"], r["labels"]
    if ref["count"]:
        yield _finding("medium" if ref["ratio"] > THRESHOLDS["refusals"] else "low", "Refusals",
                       f"{ref['count']} of {ref['answers']} answers ({_pct(ref['ratio'])}) are refusals or AI "
                       "boilerplate.", "drop with `tunelab data filter`")
    if trunc and trunc["count"]:
        yield _finding("medium" if trunc["fraction"] > THRESHOLDS["truncation"] else "low", "Truncation",
                       f"{trunc['count']} rows ({_pct(trunc['fraction'])}) are longer than {trunc['max_length']} "
                       "tokens.", "raise data.max_length or set data.overlength")
    if labels and labels["imbalance_ratio"] > THRESHOLDS["imbalance"]:
        yield _finding("medium", "Class imbalance",
                       f"{labels['classes']} classes; largest/smallest = {labels['imbalance_ratio']:g}.",
                       "rebalance the classes (oversample the rare ones or collect more)")
    inc, near = r["inconsistent"], r["inconsistent"]["near"]
    if inc["prompts"] or near["groups"]:
        parts = [f"{inc['prompts']} prompts appear with different answers ({inc['rows']} rows)"] * bool(inc["prompts"])
        one = near["groups"] == 1
        parts += [f"{near['groups']} group{'' if one else 's'} of near-same prompts {'has' if one else 'have'} "
                  f"different answers ({near['rows']} rows)"] * bool(near["groups"])
        yield _finding("medium", "Inconsistent answers", "; ".join(parts) + ".",
                       "keep one answer per prompt (fix the labels or deduplicate)")
    deg = r["degenerate"]
    if deg["turns"]:
        yield _finding("low", "Degenerate turns", f"{deg['turns']} turns in {deg['rows']} rows: "
                       + ", ".join(f"{k} {v}" for k, v in deg["by_reason"].items()) + ".",
                       "drop with `tunelab data filter`")


def _findings(report: dict[str, Any]) -> list[dict[str, str]]:
    found = [*_data_findings(report), *_content_findings(report)]
    return sorted(found, key=lambda f: SEVERITIES.index(f["severity"]))  # stable: ties keep their order


# ------------------------------------------------------------------------------------------------ public


def audit_examples(examples: list[Example], rejects: list[Reject], *, tokenizer=None, max_length: int | None = None,
                   eval_texts: list[str] | None = None, source: dict | None = None,
                   progress: bool = True) -> dict[str, Any]:
    """Measure a dataset: counts, lengths, duplicates, PII, refusals, labels, … and derive findings.

    Args:
        examples: the usable rows (e.g. from ``to_examples``).
        rejects: the rows rejected while reading them.
        tokenizer: a Hugging Face tokenizer with a chat template; token lengths are skipped without one.
        max_length: the training max_length; with a tokenizer, the share of rows longer than it.
        eval_texts: evaluation texts to check for overlap (None: not checked).
        source: what was read, shown in the report header, e.g. ``{"path", "sha256", "format"}``.
        progress: show progress bars for the slow loops.

    Returns:
        The report, JSON-serialisable and deterministic for the same input; keys: ``source``, ``counts``,
        ``lengths``, ``turns``, ``vocabulary``, ``languages``, ``duplicates``, ``pii``, ``labels``,
        ``refusals``, ``degenerate``, ``inconsistent``, ``eval_overlap``, ``thresholds``, ``findings``.
    """
    source = dict(source or {})
    texts = [example_text(ex) for ex in examples]
    report: dict[str, Any] = {
        "source": source, "counts": _counts(examples, rejects, source),
        "lengths": _lengths(examples, tokenizer, max_length, progress), "turns": _turns(examples),
        "vocabulary": _vocabulary(examples), "languages": _languages(examples, progress),
        "duplicates": _duplicates(examples, texts, progress), "pii": _pii(examples, progress),
        "labels": _labels(examples), "refusals": _refusals(examples), "degenerate": _degenerate(examples),
        "inconsistent": _inconsistent(examples, progress), "eval_overlap": _eval_overlap(examples, texts, eval_texts),
        "thresholds": dict(THRESHOLDS),
    }
    report["findings"] = _findings(report)
    return report


def write_audit(report: dict[str, Any], out_dir: Path) -> tuple[Path, Path]:
    """Write ``data_report.json`` and ``data_report.html`` into `out_dir` (created if needed).

    Args:
        report: from `audit_examples`.
        out_dir: the folder.

    Returns:
        The paths of the JSON and the HTML files.
    """
    from tunelab.data.audit_html import render_audit_html
    from tunelab.util.io import atomic_write_text

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    json_path, html_path = out / "data_report.json", out / "data_report.html"
    atomic_write_text(json_path, json.dumps(report, ensure_ascii=False, indent=2) + "\n")
    atomic_write_text(html_path, render_audit_html(report))
    return json_path, html_path

