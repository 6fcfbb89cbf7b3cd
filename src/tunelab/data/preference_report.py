"""What a data report says about preference pairs: length bias, identical and empty sides.

`pair_stats` measures; `pair_findings` turns the measurements into findings in the shape of
`tunelab.data.audit` (severity, title, detail, action), which adds them to ``tunelab data report``.
"""

from __future__ import annotations

import json
from collections import Counter
from collections.abc import Sequence
from typing import Any

from tunelab.data.preference import PairExample
from tunelab.data.records import Reject, reason_key

__all__ = ["LENGTH_BIAS", "pair_findings", "pair_stats"]


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
