"""Reward functions for online RL (``train.objective: grpo | rloo``): rules, reward models and user callables.

Each entry of ``rl.rewards`` becomes a `RewardFunction`: it scores a batch of completions, one float per
completion, and the recipe sums them with their ``weight``. Types:

- ``json_valid``: 1 when the completion (optionally inside one markdown code fence) is a JSON object, else 0;
- ``json_schema``: the completion checked against a JSON schema (inline or a ``.json`` file), with partial
  credit (the share of schema checks that pass) or 1/0; tunelab checks a documented subset of JSON Schema
  (`SCHEMA_KEYWORDS`) and refuses a schema that uses anything else, so nothing goes unchecked silently;
- ``json_fields``: the share of the reference JSON's top-level fields the completion gets right;
- ``exact_match``: 1 when the completion equals the reference after SQuAD normalisation;
- ``regex``: 1 when the pattern is found in the completion (``re.search``, DOTALL);
- ``length_penalty``: 0 up to ``target`` characters, then down linearly to -1 at twice the target;
- ``model``: a trained reward model (a ``train.objective: reward`` run folder or a sequence-classification
  model folder) scores prompt + completion;
- ``callable``: ``module:function`` or ``path/to/file.py:function``, called with any of the keyword arguments
  ``completions`` (list of str), ``prompts`` (list of message lists), ``references`` (list of str or None)
  and ``rows`` (the raw data records) that it declares, returning one number per completion.

Every score is checked: a function that raises, returns the wrong count, or a NaN/inf/non-number stops the
run with a `TunelabError` naming the reward and the data row.
"""

from __future__ import annotations

import importlib
import importlib.util
import inspect
import json
import math
import re
import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tunelab.errors import TunelabError

__all__ = [
    "CALLABLE_ARGS",
    "SCHEMA_KEYWORDS",
    "PromptRow",
    "RewardFunction",
    "build_reward",
    "build_rewards",
    "check_schema",
    "json_object",
    "load_callable",
    "schema_score",
    "weighted_total",
]

# Keyword arguments a `callable` reward may declare (it receives those it names, or all with **kwargs).
CALLABLE_ARGS = ("completions", "prompts", "references", "rows")
# The JSON Schema keywords tunelab validates (a subset of draft 2020-12); annotations are accepted and ignored.
SCHEMA_KEYWORDS = ("type", "enum", "const", "properties", "required", "additionalProperties", "items", "minItems",
                   "maxItems", "minLength", "maxLength", "pattern", "minimum", "maximum", "exclusiveMinimum",
                   "exclusiveMaximum", "anyOf")
_ANNOTATIONS = {"$schema", "$id", "$comment", "title", "description", "default", "examples", "format"}
_TYPES = {"object": dict, "array": list, "string": str, "boolean": bool, "null": type(None)}
# The value shape each keyword needs (a malformed schema is refused, not half-checked).
_SHAPES: dict[str, type | tuple[type, ...]] = {
    "properties": dict, "anyOf": list, "enum": list, "required": list, "type": (str, list), "pattern": str,
    "minItems": int, "maxItems": int, "minLength": int, "maxLength": int, "minimum": (int, float),
    "maximum": (int, float), "exclusiveMinimum": (int, float), "exclusiveMaximum": (int, float),
    "items": (dict, bool), "additionalProperties": (dict, bool)}
_FENCE = re.compile(r"^```[a-zA-Z0-9_-]*\s*\n?(.*?)\n?```\s*$", re.DOTALL)


@dataclass(frozen=True)
class PromptRow:
    """One prompt of the RL data: its chat turns, the source row's final answer, provenance and raw record."""

    messages: list[dict[str, str]]
    reference: str | None
    where: str
    raw: dict[str, Any] = field(default_factory=dict)

    @classmethod
    def from_example(cls, ex: Any) -> PromptRow:
        """From a `tunelab.data.records.Example` (the prompt is everything before its final assistant turn)."""
        return cls(ex.prompt_messages, ex.reference, ex.where, ex.raw)


# ------------------------------------------------------------------------------------------------ rules


def json_object(text: str) -> dict[str, Any] | None:
    """The completion as a JSON object when all of it is one (a surrounding markdown fence is allowed)."""
    text = text.strip()
    fence = _FENCE.match(text)
    if fence:
        text = fence.group(1).strip()
    try:
        value = json.loads(text)
    except (ValueError, RecursionError):
        return None
    return value if isinstance(value, dict) else None


def _type_ok(value: Any, expected: str | list[str]) -> bool:
    names = [expected] if isinstance(expected, str) else list(expected)
    for name in names:
        if name == "integer":
            if isinstance(value, int) and not isinstance(value, bool) or isinstance(value, float) and value.is_integer():
                return True
        elif name == "number":
            if isinstance(value, int | float) and not isinstance(value, bool):
                return True
        elif isinstance(value, _TYPES[name]) and not (name != "boolean" and isinstance(value, bool)):
            return True
    return False


@dataclass
class _Tally:
    passed: int = 0
    total: int = 0

    def check(self, ok: bool) -> bool:
        self.total += 1
        self.passed += int(ok)
        return ok


def _check_scalar(schema: dict[str, Any], value: Any, tally: _Tally) -> None:
    if isinstance(value, str):
        if "minLength" in schema:
            tally.check(len(value) >= schema["minLength"])
        if "maxLength" in schema:
            tally.check(len(value) <= schema["maxLength"])
        if "pattern" in schema:
            tally.check(re.search(schema["pattern"], value) is not None)
    elif isinstance(value, int | float) and not isinstance(value, bool):
        for key, ok in (("minimum", lambda b: value >= b), ("maximum", lambda b: value <= b),
                        ("exclusiveMinimum", lambda b: value > b), ("exclusiveMaximum", lambda b: value < b)):
            if key in schema:
                tally.check(ok(schema[key]))


def _check_object(schema: dict[str, Any], value: dict[str, Any], tally: _Tally) -> None:
    for key in schema.get("required", []):
        tally.check(key in value)
    props = schema.get("properties", {})
    for key, sub in props.items():
        if key in value:
            _validate(sub, value[key], tally)
    extra = schema.get("additionalProperties", True)
    for key in (k for k in value if k not in props):
        if extra is False:
            tally.check(False)
        elif isinstance(extra, dict):
            _validate(extra, value[key], tally)


def _check_array(schema: dict[str, Any], value: list[Any], tally: _Tally) -> None:
    if "minItems" in schema:
        tally.check(len(value) >= schema["minItems"])
    if "maxItems" in schema:
        tally.check(len(value) <= schema["maxItems"])
    if isinstance(schema.get("items"), dict):
        for item in value:
            _validate(schema["items"], item, tally)


def _validate(schema: dict[str, Any] | bool, value: Any, tally: _Tally) -> None:
    """Count the schema checks ``value`` passes; a wrong type stops the checks below it (they cannot apply)."""
    if isinstance(schema, bool):
        tally.check(schema)
        return
    if "type" in schema and not tally.check(_type_ok(value, schema["type"])):
        return
    if "enum" in schema:
        tally.check(value in schema["enum"])
    if "const" in schema:
        tally.check(value == schema["const"])
    if "anyOf" in schema:
        tally.check(any(schema_score(sub, value) == 1.0 for sub in schema["anyOf"]))
    if isinstance(value, dict):
        _check_object(schema, value, tally)
    elif isinstance(value, list):
        _check_array(schema, value, tally)
    else:
        _check_scalar(schema, value, tally)


def schema_score(schema: dict[str, Any] | bool, value: Any) -> float:
    """Share of the schema's checks that ``value`` passes (1.0: valid against the supported subset)."""
    tally = _Tally()
    _validate(schema, value, tally)
    return tally.passed / tally.total if tally.total else 1.0


def check_schema(schema: Any, where: str, path: str = "#") -> None:
    """Refuse schemas tunelab would not fully check (unknown keywords, malformed values).

    Raises:
        TunelabError: naming the keyword and its JSON-pointer-like path.
    """
    if isinstance(schema, bool):
        return
    if not isinstance(schema, dict):
        raise TunelabError(f"JSON schema at {path} must be an object, got {type(schema).__name__}", where=where)
    for key, value in schema.items():
        if key in _ANNOTATIONS:
            continue
        if key not in SCHEMA_KEYWORDS:
            raise TunelabError(f"JSON-schema keyword '{key}' at {path} is not supported", where=where,
                               fix=f"tunelab checks: {', '.join(SCHEMA_KEYWORDS)} (see docs/preferences.md)")
        _check_keyword(key, value, where, path)


def _check_keyword(key: str, value: Any, where: str, path: str) -> None:
    shape = _SHAPES.get(key, object)
    allowed = shape if isinstance(shape, tuple) else (shape,)
    if not isinstance(value, allowed) or isinstance(value, bool) and bool not in allowed:  # True is an int
        names = " or ".join(t.__name__ for t in allowed)
        raise TunelabError(f"'{key}' at {path} must be of type {names}, got {value!r}", where=where)
    if key == "type":
        names = [value] if isinstance(value, str) else value
        bad = [n for n in names if n not in (*_TYPES, "integer", "number")]
        if bad:
            raise TunelabError(f"unknown JSON type {bad[0]!r} at {path}/type", where=where)
    elif key == "pattern":
        try:
            re.compile(value)
        except (re.error, TypeError) as e:
            raise TunelabError(f"invalid pattern at {path}/pattern: {e}", where=where) from None
    elif key == "properties":
        for name, sub in value.items():
            check_schema(sub, where, f"{path}/properties/{name}")
    elif key in ("items", "additionalProperties") and not isinstance(value, bool):
        check_schema(value, where, f"{path}/{key}")
    elif key == "anyOf":
        for i, sub in enumerate(value):
            check_schema(sub, where, f"{path}/anyOf/{i}")


def _load_schema(value: dict[str, Any] | str, where: str) -> dict[str, Any]:
    if isinstance(value, dict):
        schema = value
    else:
        path = Path(value).expanduser()
        if not path.is_file():
            raise TunelabError(f"JSON schema file not found: {path}", where=where,
                               fix="give the schema inline as a mapping, or the path of a .json file")
        try:
            schema = json.loads(path.read_text(encoding="utf-8"))
        except (ValueError, OSError) as e:
            raise TunelabError(f"cannot read JSON schema {path}: {e}", where=where) from None
    check_schema(schema, where)
    return schema


def _exact(completion: str, reference: str) -> float:
    from tunelab.evaluation.metrics import normalize_answer

    return float(normalize_answer(completion) == normalize_answer(reference))


def _fields(completion: str, reference: str) -> float:
    from tunelab.evaluation.metrics import json_metrics

    return float(json_metrics([completion], [reference])["field_accuracy"])


# ------------------------------------------------------------------------------------------------ functions


class RewardFunction:
    """One configured reward: ``fn(rows, completions) -> list[float]``, every value checked.

    Args:
        name: the name used in logs (``reward/<name>`` in metrics.jsonl).
        where: the recipe key it came from (``rl.rewards[0]``), named in errors.
        score: the raw scorer, (rows, completions) -> values.
        weight: its weight in the total reward.
        needs: ``None``, ``"reference"`` (any text) or ``"json_reference"`` (a JSON object).
        column: raw column holding the reference (default: the row's final assistant answer).
    """

    def __init__(self, name: str, where: str, score: Callable[[list[PromptRow], list[str]], Sequence[Any]],
                 weight: float = 1.0, needs: str | None = None, column: str | None = None):
        self.name, self.where, self.weight = name, where, weight
        self._score, self.needs, self.column = score, needs, column

    def reference(self, row: PromptRow) -> str | None:
        """The reference this reward compares with: the raw ``column`` when set, else the final answer."""
        if self.column is None:
            return row.reference
        value = row.raw.get(self.column)
        if value is None or isinstance(value, str):
            return value
        return json.dumps(value, ensure_ascii=False)

    def check_rows(self, rows: Sequence[PromptRow]) -> None:
        """Fail before training when a row lacks what this reward compares with (naming the first such row)."""
        if self.needs is None:
            return
        for row in rows:
            ref = self.reference(row)
            bad = ref is None or not ref.strip()
            if not bad and self.needs == "json_reference":
                from tunelab.evaluation.metrics import parse_json_object

                bad = parse_json_object(ref) is None
            if bad:
                what = "a JSON-object reference" if self.needs == "json_reference" else "a reference answer"
                src = f"column '{self.column}'" if self.column else "the final assistant turn"
                raise TunelabError(f"reward '{self.name}' needs {what} ({src}), but row {row.where} has none",
                                   where=self.where, fix="give every row a reference, set "
                                   f"{self.where}.column to the column holding it, or use another reward type")

    def __call__(self, rows: Sequence[PromptRow], completions: Sequence[str]) -> list[float]:
        rows, completions = list(rows), list(completions)
        try:
            values = self._score(rows, completions)
        except TunelabError:
            raise
        except Exception as e:  # a user's function: any failure is named with the batch's first row
            first = rows[0].where if rows else "?"
            raise TunelabError(f"reward '{self.name}' raised {type(e).__name__}: {e} (batch starting at row {first})",
                               where=self.where, fix="fix the function (run it on these rows alone to debug)") from e
        return self._checked(values, rows)

    def _checked(self, values: Any, rows: list[PromptRow]) -> list[float]:
        try:
            values = list(values)
        except TypeError:
            raise TunelabError(f"reward '{self.name}' returned {type(values).__name__}, not a list of numbers",
                               where=self.where, fix="return one number per completion") from None
        if len(values) != len(rows):
            raise TunelabError(f"reward '{self.name}' returned {len(values)} values for {len(rows)} completions",
                               where=self.where, fix="return one number per completion, in order")
        out = []
        for row, v in zip(rows, values, strict=True):
            ok = isinstance(v, int | float) and not isinstance(v, bool) or _is_number_like(v)
            f = float(v) if ok else math.nan
            if not math.isfinite(f):
                raise TunelabError(f"reward '{self.name}' returned {v!r} for row {row.where}", where=self.where,
                                   fix="return a finite number for every completion (0.0 for 'no reward')")
            out.append(f)
        return out


def _is_number_like(v: Any) -> bool:
    # numpy/torch scalars: real numbers that are not Python floats
    return not isinstance(v, bool | str) and hasattr(v, "__float__") and getattr(v, "ndim", 0) == 0


def weighted_total(rewards: Sequence[RewardFunction], rows: Sequence[PromptRow],
                   completions: Sequence[str]) -> tuple[list[float], dict[str, list[float]]]:
    """(weighted sum per completion, each reward's values by name)."""
    per = {r.name: r(rows, completions) for r in rewards}
    total = [sum(r.weight * per[r.name][i] for r in rewards) for i in range(len(completions))]
    return total, per


def _per_row(fn: Callable[[str, str | None], float], reward: list[RewardFunction]):
    """Lift a (completion, reference) -> float rule to a batch scorer; the reference comes from the reward."""

    def score(rows: list[PromptRow], completions: list[str]) -> list[float]:
        return [fn(c, reward[0].reference(r)) for r, c in zip(rows, completions, strict=True)]

    return score


def _rule(spec: Any, where: str) -> tuple[Callable[[str, str | None], float], str | None]:
    """The per-completion function of a rule type and what it needs from each row."""
    kind = spec.type
    if kind == "json_valid":
        return (lambda c, _r: float(json_object(c) is not None)), None
    if kind == "json_schema":
        schema = _load_schema(spec.json_schema, f"{where}.json_schema")

        def score(c: str, _r: str | None) -> float:
            obj = json_object(c)
            if obj is None:
                return 0.0
            s = schema_score(schema, obj)
            return s if spec.partial else float(s == 1.0)

        return score, None
    if kind == "json_fields":
        return _fields, "json_reference"
    if kind == "exact_match":
        return _exact, "reference"
    if kind == "regex":
        try:
            pattern = re.compile(spec.pattern, re.DOTALL)
        except re.error as e:
            raise TunelabError(f"invalid regular expression: {e}", where=f"{where}.pattern") from None
        return (lambda c, _r: float(pattern.search(c) is not None)), None
    if kind == "length_penalty":
        target = spec.target
        return (lambda c, _r: -min(1.0, max(0, len(c) - target) / target)), None
    raise TunelabError(f"unknown reward type '{kind}'", where=f"{where}.type")  # specs validate this first


# ------------------------------------------------------------------------------------------------ callables


def _import_target(target: str, where: str) -> Any:
    module_name, _, attr = target.rpartition(":")
    if not module_name or not attr:
        raise TunelabError(f"'{target}' is not of the form module:function or path/to/file.py:function",
                           where=where, fix="e.g. my_rewards:score, or rewards.py:score")
    try:
        if module_name.endswith(".py"):
            path = Path(module_name).expanduser()
            if not path.is_file():
                raise TunelabError(f"reward file not found: {path}", where=where, fix="check the path")
            spec = importlib.util.spec_from_file_location(f"tunelab_reward_{path.stem}", path)
            module = importlib.util.module_from_spec(spec)
            sys.modules[spec.name] = module  # dataclasses and pickling look modules up by name
            spec.loader.exec_module(module)
        else:
            module = importlib.import_module(module_name)
    except TunelabError:
        raise
    except Exception as e:  # ImportError, SyntaxError, or whatever the module raises at import
        raise TunelabError(f"cannot import '{module_name}': {type(e).__name__}: {e}", where=where,
                           fix="make it importable (on PYTHONPATH, or give a .py file path) and runnable") from e
    if not hasattr(module, attr):
        raise TunelabError(f"'{module_name}' has no attribute '{attr}'", where=where, fix="check the function name")
    return getattr(module, attr)


def load_callable(target: str, where: str) -> Callable[..., Any]:
    """Import ``module:function`` (or ``file.py:function``) and check that it can be called as a reward.

    Returns:
        A function taking (rows, completions) that calls the user's function with the keyword arguments it
        declares among `CALLABLE_ARGS`.

    Raises:
        TunelabError: import failure, missing attribute, not callable, or a signature that needs other arguments.
    """
    fn = _import_target(target, where)
    if not callable(fn):
        raise TunelabError(f"'{target}' is a {type(fn).__name__}, not a function", where=where)
    try:
        params = inspect.signature(fn).parameters.values()
    except (TypeError, ValueError):
        raise TunelabError(f"cannot read the signature of '{target}'", where=where) from None
    takes_all = any(p.kind is p.VAR_KEYWORD for p in params)
    names = [p.name for p in params if p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY)]
    required = [p.name for p in params if p.default is p.empty and p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY)
                and p.name not in CALLABLE_ARGS]
    if required or any(p.kind is p.POSITIONAL_ONLY for p in params):
        raise TunelabError(f"'{target}' has parameters tunelab cannot fill: {required or 'positional-only'}",
                           where=where, fix=f"accept keyword arguments among {', '.join(CALLABLE_ARGS)} "
                           "(or **kwargs), e.g. def score(completions, references, **kwargs)")
    wanted = CALLABLE_ARGS if takes_all else tuple(n for n in CALLABLE_ARGS if n in names)
    if not wanted:
        raise TunelabError(f"'{target}' takes none of {', '.join(CALLABLE_ARGS)}", where=where,
                           fix="accept at least `completions` (a list of strings)")

    def call(rows: list[PromptRow], completions: list[str]) -> Any:
        given = {"completions": completions, "prompts": [r.messages for r in rows],
                 "references": [r.reference for r in rows], "rows": [r.raw for r in rows]}
        return fn(**{k: given[k] for k in wanted})

    return call


# ------------------------------------------------------------------------------------------------ building


def build_reward(spec: Any, where: str, policy_tokenizer: Any = None, device: str = "cpu",
                 precision: str = "fp32") -> RewardFunction:
    """One `RewardFunction` from an ``rl.rewards[i]`` spec (`tunelab.config.specs.RewardSpec`).

    Args:
        spec: the reward's spec.
        where: its recipe key, e.g. ``rl.rewards[0]``.
        policy_tokenizer: the policy's tokenizer; a reward model's chat template is checked against it.
        device: where a reward model runs.
        precision: a reward model's compute precision ('bf16' or 'fp32').
    """
    if spec.type == "callable":
        score = load_callable(spec.function, f"{where}.function")
        return RewardFunction(spec.name or spec.function.rpartition(":")[2], where, score, spec.weight)
    if spec.type == "model":
        from tunelab.recipes.reward import RewardScorer

        scorer = RewardScorer.load(spec.model, device=device, precision=precision, where=f"{where}.model")
        if policy_tokenizer is not None:
            scorer.check_policy_template(policy_tokenizer, f"{where}.model")

        def score_model(rows: list[PromptRow], completions: list[str]) -> list[float]:
            return scorer.score([r.messages for r in rows], completions)

        return RewardFunction(spec.name or "reward_model", where, score_model, spec.weight)
    fn, needs = _rule(spec, where)
    holder: list[RewardFunction] = []
    reward = RewardFunction(spec.name or spec.type, where, _per_row(fn, holder), spec.weight, needs, spec.column)
    holder.append(reward)  # the rule reads its reference through the reward (column setting)
    return reward


def build_rewards(specs: Sequence[Any], policy_tokenizer: Any = None, device: str = "cpu",
                  precision: str = "fp32") -> list[RewardFunction]:
    """All rewards of ``rl.rewards``; duplicate names get a numeric suffix so that their logs stay apart."""
    rewards, seen = [], {}
    for i, spec in enumerate(specs):
        r = build_reward(spec, f"rl.rewards[{i}]", policy_tokenizer, device, precision)
        if r.name in seen:
            seen[r.name] += 1
            r.name = f"{r.name}_{seen[r.name]}"
        else:
            seen[r.name] = 0
        rewards.append(r)
    if not rewards:
        raise TunelabError("no reward: rl.rewards is empty", where="rl.rewards",
                           fix="add e.g. rl.rewards: [{type: json_valid}] (see docs/preferences.md)")
    return rewards
