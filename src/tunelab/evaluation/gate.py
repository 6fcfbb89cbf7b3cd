"""The deployment gate: rules over eval/metrics.json that decide whether a run may ship.

A recipe's top-level ``gate:`` is a list of rules (or one string); every rule must hold. A rule is::

    METRIC OP VALUE [and METRIC OP VALUE ...]

- ``METRIC`` is a dotted path to a number in ``eval/metrics.json``: ``tuned.macro_f1``, ``base.accuracy``,
  ``delta.accuracy``, ``baselines.5_shot.accuracy``, ``general.change.wikitext.perplexity``,
  ``general.worst.perplexity``, ... ``task.X`` is short for ``tuned.X``.
- ``OP`` is one of ``>= <= > < == !=`` (``≥`` and ``≤`` are accepted too).
- ``VALUE`` is a number, a percentage (``5%`` is 0.05) or another METRIC, optionally plus or minus a
  number (``baselines.5_shot.accuracy + 0.02``).

Example: ``"tuned.macro_f1 >= 0.8 and general.worst.perplexity <= 5%"`` — the task F1 reaches 0.8 and no
general set's perplexity rises by more than 5%.

The gate is evaluated last, after every other part of the evaluation; its result goes to
``metrics.json["gate"]`` and ``eval/gate.json``. ``tunelab run`` and ``tunelab eval`` exit with
:data:`GATE_BLOCKED_EXIT` (3) when it blocks; 2 stays reserved for bad input.
"""

from __future__ import annotations

import json
import math
import operator
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tunelab.errors import TunelabError

__all__ = ["GATE_BLOCKED_EXIT", "GATE_ROOTS", "Rule", "apply_gate", "check_recipe_gate", "decide_run_gate",
           "evaluate_gate",
           "gate_exit_code", "metric_names", "parse_gate", "referenced_metrics"]

GATE_BLOCKED_EXIT = 3
# Top-level keys of metrics.json that hold numbers a rule may read (see docs/evaluation.md).
GATE_ROOTS = ("tuned", "base", "delta", "baselines", "general", "bias", "judge", "human", "n")
_ALIASES = {"task": "tuned"}
_OPS = {">=": operator.ge, "<=": operator.le, ">": operator.gt, "<": operator.lt, "==": operator.eq,
        "!=": operator.ne}
_UNICODE_OPS = {"≥": ">=", "≤": "<=", "≠": "!="}
_NUMBER = r"[-+]?(?:\d+\.?\d*|\.\d+)(?:[eE][-+]?\d+)?%?"
_METRIC = r"[A-Za-z_][\w-]*(?:\.[\w-]+)+|n"
_RULE = re.compile(
    rf"^\s*(?P<metric>{_METRIC})\s*(?P<op>>=|<=|==|!=|>|<)\s*"
    rf"(?:(?P<number>{_NUMBER})|(?P<ref>{_METRIC})(?:\s*(?P<sign>[-+])\s*(?P<offset>{_NUMBER}))?)\s*$"
)
_AND = re.compile(r"\s+and\s+", re.IGNORECASE)


@dataclass(frozen=True)
class Rule:
    """One comparison: ``metric op threshold``, where the threshold is a number or ``ref + offset``."""

    text: str
    metric: str
    op: str
    number: float | None = None
    ref: str | None = None
    offset: float = 0.0


def _number(text: str) -> float:
    return float(text[:-1]) / 100 if text.endswith("%") else float(text)


def _canonical(metric: str) -> str:
    root, _, rest = metric.partition(".")
    return f"{_ALIASES[root]}.{rest}" if root in _ALIASES and rest else metric


def _parse_rule(text: str, where: str) -> Rule:
    for uni, ascii_op in _UNICODE_OPS.items():
        text = text.replace(uni, ascii_op)
    m = _RULE.match(text)
    if not m:
        raise TunelabError(f"cannot read gate rule '{text.strip()}'", where=where,
                           fix="write METRIC OP VALUE, e.g. 'tuned.macro_f1 >= 0.8' or "
                           "'general.worst.perplexity <= 5%' (docs/evaluation.md, Gate)")
    sign = -1.0 if m["sign"] == "-" else 1.0
    return Rule(text=text.strip(), metric=_canonical(m["metric"]), op=m["op"],
                number=_number(m["number"]) if m["number"] else None,
                ref=_canonical(m["ref"]) if m["ref"] else None,
                offset=sign * _number(m["offset"]) if m["offset"] else 0.0)


def parse_gate(rules: list[str] | str | None) -> list[Rule]:
    """Parse the recipe's ``gate:`` into rules (``a and b`` in one string gives two rules).

    Raises:
        TunelabError: a rule that does not follow the grammar, or a metric outside :data:`GATE_ROOTS`.
    """
    items = [rules] if isinstance(rules, str) else list(rules or [])
    parsed = []
    for i, item in enumerate(items):
        where = f"gate[{i}]"
        if not isinstance(item, str) or not item.strip():
            raise TunelabError(f"a gate rule must be a non-empty string, got {item!r}", where=where,
                               fix="e.g. gate: ['tuned.accuracy >= 0.8']")
        for part in _AND.split(item.strip()):
            rule = _parse_rule(part, where)
            for name in (rule.metric, rule.ref):
                root = (name or "").split(".")[0]
                if name and root not in GATE_ROOTS:
                    raise TunelabError(f"gate metric '{name}' starts with unknown '{root}'", where=where,
                                       fix=f"metrics start with one of: {', '.join(GATE_ROOTS)} (task.X = tuned.X)")
            parsed.append(rule)
    return parsed


def referenced_metrics(rules: list[Rule]) -> list[str]:
    """Every metric path the rules read, in order, without repeats."""
    names = [n for r in rules for n in (r.metric, r.ref) if n]
    return list(dict.fromkeys(names))


def _flatten(obj: Any, prefix: str, out: dict[str, float]) -> None:
    if isinstance(obj, dict):
        for k, v in obj.items():
            _flatten(v, f"{prefix}{k}.", out)
    elif isinstance(obj, (int, float)) and not isinstance(obj, bool):
        out[prefix[:-1]] = float(obj)


def metric_names(metrics: dict[str, Any]) -> dict[str, float]:
    """Every number in ``metrics`` (a metrics.json dict) a rule may read, by dotted path."""
    out: dict[str, float] = {}
    for root in GATE_ROOTS:
        value = metrics.get(root)
        if isinstance(value, dict):
            _flatten(value, f"{root}.", out)
        elif isinstance(value, (int, float)) and not isinstance(value, bool):
            out[root] = float(value)
    return out


def _lookup(name: str, values: dict[str, float], where: str) -> float:
    if name not in values:
        valid = ", ".join(sorted(values)) or "none (metrics.json holds no numbers)"
        raise TunelabError(f"unknown gate metric '{name}'", where=where, fix=f"use one of: {valid}")
    return values[name]


def _check_rule(rule: Rule, values: dict[str, float], where: str) -> dict[str, Any]:
    value = _lookup(rule.metric, values, where)
    threshold = _lookup(rule.ref, values, where) + rule.offset if rule.ref else float(rule.number)
    # A NaN comparison is False for every operator but !=; a missing number must never pass a gate.
    ok = math.isfinite(value) and math.isfinite(threshold) and _OPS[rule.op](value, threshold)
    row = {"rule": rule.text, "metric": rule.metric, "value": value, "op": rule.op, "threshold": threshold,
           "passed": bool(ok)}
    if rule.ref:
        row["threshold_metric"] = rule.ref
    return row


def evaluate_gate(rules: list[str] | str | None, metrics: dict[str, Any]) -> dict[str, Any]:
    """Decide the gate on a metrics.json dict.

    Args:
        rules: The recipe's ``gate:`` (strings; see the module docstring).
        metrics: The evaluation result (``tuned``, ``base``, ``baselines``, ``general``, ...).

    Returns:
        ``{"passed": bool, "rules": [{"rule", "metric", "value", "op", "threshold", "passed"}, ...]}``;
        ``passed`` is True only when every rule holds (an empty gate passes).

    Raises:
        TunelabError: a malformed rule, or a metric that the results do not hold (the error lists the
            valid names).
    """
    parsed = parse_gate(rules)
    values = metric_names(metrics)
    rows = [_check_rule(rule, values, "gate") for rule in parsed]
    return {"passed": all(r["passed"] for r in rows), "rules": rows}


def _produced(recipe: Any) -> dict[str, Any]:
    """What the recipe's evaluation will write, root by root: None = any key, else the allowed keys."""
    from tunelab.evaluation.icl import variant_names

    out: dict[str, Any] = {"tuned": None, "n": None, "bias": None, "judge": None, "human": None}
    if recipe.eval.compare_base:
        out.update(base=None, delta=None)
    if recipe.eval.baselines.enabled:
        out["baselines"] = variant_names(recipe.eval.baselines)
    if recipe.eval.general:
        sets = [g.name for g in recipe.eval.general]
        out["general"] = {"base": sets, "tuned": sets, "change": sets, "worst": None}
    return out


def _why_missing(root: str) -> str:
    return {"base": "set eval.compare_base=true", "delta": "set eval.compare_base=true",
            "baselines": "set eval.baselines.enabled=true",
            "general": "add eval.general sets (docs/evaluation.md, Learning and forgetting)"}.get(root, "")


def _check_produced(name: str, produced: dict[str, Any]) -> None:
    parts = name.split(".")
    if parts[0] not in produced:
        raise TunelabError(f"gate reads '{name}', but this recipe's evaluation writes no '{parts[0]}' results",
                           where="gate", fix=_why_missing(parts[0]) or "remove the rule")
    allowed = produced[parts[0]]
    for depth, part in enumerate(parts[1:3], start=1):
        if allowed is None:
            return
        if part not in allowed:
            where = ".".join(parts[:depth])
            raise TunelabError(f"gate reads '{name}', but '{where}' has no '{part}'", where="gate",
                               fix=f"'{where}' holds: {', '.join(allowed)}")
        allowed = allowed.get(part) if isinstance(allowed, dict) else None


def check_recipe_gate(recipe: Any) -> None:
    """Check a recipe's gate before anything runs: grammar, and that each metric's section will exist.

    Metric names inside a section (``tuned.macro_f1``) depend on the task and are checked when the gate is
    decided, against the numbers metrics.json actually holds.

    Raises:
        TunelabError: a malformed rule, a gate with evaluation off, or a rule reading a part of the
            evaluation the recipe does not turn on.
    """
    rules = parse_gate(recipe.gate)
    if rules and not recipe.eval.enabled:
        raise TunelabError("the gate reads evaluation results, but eval.enabled is false", where="gate",
                           fix="set eval.enabled=true, or remove the gate")
    produced = _produced(recipe)
    for name in referenced_metrics(rules):
        _check_produced(name, produced)


def apply_gate(run_dir: str | Path, rules: list[str] | str | None, result: dict[str, Any]) -> dict[str, Any]:
    """Decide the gate on ``result``, store it in result["gate"], eval/metrics.json and eval/gate.json.

    With no rules nothing is decided and a gate.json left by an earlier evaluation is removed, so that
    :func:`gate_exit_code` never reads a stale decision.
    """
    from tunelab.util.io import atomic_write_json

    out = Path(run_dir) / "eval"
    if not parse_gate(rules):
        result.pop("gate", None)
        (out / "gate.json").unlink(missing_ok=True)
        return result
    result["gate"] = evaluate_gate(rules, result)
    atomic_write_json(out / "gate.json", result["gate"])
    atomic_write_json(out / "metrics.json", result)
    return result


def decide_run_gate(run_dir: str | Path, rules: list[str] | None = None) -> dict[str, Any]:
    """Decide a gate on an evaluated run folder without running a model (``tunelab gate``).

    Args:
        run_dir: A run folder with eval/metrics.json.
        rules: Rules to use instead of the recipe's ``gate:``.

    Returns:
        The gate result, also written to eval/gate.json and metrics.json["gate"], and printed.

    Raises:
        TunelabError: no evaluation in the folder, no rules, a malformed rule or an unknown metric.
    """
    import yaml

    from tunelab.evaluation.compare import print_gate

    run = Path(run_dir)
    path = run / "eval" / "metrics.json"
    if not path.is_file():
        raise TunelabError(f"'{run}' has no eval/metrics.json", fix=f"evaluate it first: tunelab eval {run}")
    result = json.loads(path.read_text(encoding="utf-8"))
    if rules is None:
        config = yaml.safe_load((run / "config.yaml").read_text(encoding="utf-8")) if (run / "config.yaml").is_file() else {}
        rules = (config or {}).get("gate") or []
    if not parse_gate(rules):
        raise TunelabError(f"no gate rules: the recipe of '{run}' has no gate:", where="RULE",
                           fix="pass rules, e.g. tunelab gate RUN 'tuned.accuracy >= 0.8'")
    result = apply_gate(run, rules, result)
    print_gate(result["gate"])
    return result["gate"]


def gate_exit_code(run_dir: str | Path) -> int:
    """0 when the run's gate passed or it has none, :data:`GATE_BLOCKED_EXIT` when it blocked."""
    path = Path(run_dir) / "eval" / "gate.json"
    if not path.is_file():
        return 0
    gate = json.loads(path.read_text(encoding="utf-8"))
    return 0 if gate.get("passed") else GATE_BLOCKED_EXIT
