"""What a data report says about preference pairs: length bias, identical and empty sides.

`pair_stats` measures; `pair_findings` turns the measurements into findings in the shape of
`tunelab.data.audit` (severity, title, detail, action), which adds them to ``tunelab data report``.
"""

from __future__ import annotations

import json
from collections import Counter
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from tunelab.config.specs import DataSpec
from tunelab.data.preference import PairExample
from tunelab.data.records import Reject, reason_key

__all__ = ["LENGTH_BIAS", "pair_findings", "pair_stats", "report_preference_file"]


def pair_stats(pairs: Sequence[PairExample], rejects: Sequence[Reject] = ()) -> dict[str, Any]:
    """What a data report says about pairs: length bias, identical and empty sides (rejected at read).

    ``chosen_longer`` is the share of pairs whose chosen answer has more characters than the rejected one;
    a share far from 0.5 means a model can win by length alone (DPO then learns verbosity).
    """
    reasons = Counter(reason_key(r.reason) for r in rejects)
    ratios = [len(p.chosen) / max(len(p.rejected), 1) for p in pairs]
    longer = sum(len(p.chosen) > len(p.rejected) for p in pairs)
    shorter = sum(len(p.chosen) < len(p.rejected) for p in pairs)
    prompts = Counter(json.dumps(p.prompt, sort_keys=True) for p in pairs)
    return {
        "pairs": len(pairs), "distinct_prompts": len(prompts),
        "chosen_longer": round(longer / len(pairs), 4) if pairs else None,
        "chosen_shorter": round(shorter / len(pairs), 4) if pairs else None,
        "mean_length_ratio": round(sum(ratios) / len(ratios), 4) if ratios else None,
        "mean_chosen_chars": round(sum(len(p.chosen) for p in pairs) / len(pairs), 1) if pairs else None,
        "mean_rejected_chars": round(sum(len(p.rejected) for p in pairs) / len(pairs), 1) if pairs else None,
        "identical_sides": reasons.get("identical sides", 0),
        "empty_sides": reasons.get("empty chosen", 0) + reasons.get("empty rejected", 0),
        "empty_prompts": reasons.get("empty prompt", 0),
    }


LENGTH_BIAS = 0.65  # chosen longer (or shorter) in more than this share of pairs: a length shortcut


def pair_findings(stats: dict[str, Any]) -> list[dict[str, str]]:
    """Findings (severity, title, detail, action) for `pair_stats`, in the data report's shape."""
    found = []
    bad = stats["identical_sides"] + stats["empty_sides"] + stats["empty_prompts"]
    if bad:
        found.append({"severity": "medium", "title": "Unusable pairs",
                      "detail": f"{stats['identical_sides']} identical chosen/rejected, {stats['empty_sides']} with "
                      f"an empty side, {stats['empty_prompts']} with an empty prompt (rejected).",
                      "action": "fix or drop these rows; they carry no preference"})
    for key, word in (("chosen_longer", "longer"), ("chosen_shorter", "shorter")):
        share = stats[key]
        if share is not None and stats["pairs"] >= 20 and share > LENGTH_BIAS:
            found.append({"severity": "medium", "title": "Length bias",
                          "detail": f"the chosen answer is {word} in {100 * share:.1f}% of pairs (mean length ratio "
                          f"{stats['mean_length_ratio']:g}); a model can win by length alone.",
                          "action": "balance lengths, or use preference.loss=simpo/ipo (length-normalised) and "
                          "watch answer length after training"})
    return found


def report_preference_file(spec: DataSpec, out_dir: str | Path, eval_files: list[str] | None = None,
                           model: str | None = "smollm2-135m-instruct") -> tuple[dict[str, Any], Path] | None:
    """`tunelab data report` for preference data; None when spec.path is not preference data.

    The general sections (lengths, duplicates, PII, languages, ...) measure each pair's chosen conversation
    (prompt + chosen answer; a pair's two answers would otherwise count as inconsistent answers); ``pairs``
    adds the pair statistics and their findings. Unpaired rows are measured as their conversations.
    """
    from tunelab.data.audit import add_pair_stats, audit_examples, write_audit
    from tunelab.data.pipeline import eval_file_texts, resolve_data_path
    from tunelab.data.preference import looks_like_preference, read_preference
    from tunelab.data.readers import file_sha256, read_records
    from tunelab.data.records import Example

    src = resolve_data_path(spec.path)
    head = read_records(src, delimiter=spec.delimiter, encoding=spec.encoding, skipped=[])[:20]
    if not looks_like_preference(head, spec):
        return None
    data = read_preference(src, spec)
    rows = data.pairs or data.unpaired
    examples = [Example(messages=[*r.prompt, {"role": "assistant", "content": getattr(r, "chosen", None)
                                              or r.completion}], text=None, where=r.where, raw=r.raw) for r in rows]
    tokenizer = None
    if model:
        from tunelab.models import load_tokenizer

        tokenizer = load_tokenizer(model)
    source = {"path": str(src), "sha256": file_sha256(src), "format": data.format, "model": model}
    report = audit_examples(examples, data.rejects, tokenizer=tokenizer, max_length=spec.max_length,
                            eval_texts=eval_file_texts(eval_files, spec) if eval_files else None, source=source)
    if data.paired:
        add_pair_stats(report, pair_stats(data.pairs, data.rejects))
    _, html = write_audit(report, Path(out_dir))
    return report, html
