"""The search space: dotted recipe keys, validated against the recipe, sampled through an Optuna trial.

Conditions (`when: "method.name == 'lora'"`) are parsed, never `eval`-ed: ``KEY OP VALUE`` with OP one of
``==``, ``!=``, ``in``, ``not in`` and VALUE a YAML literal. KEY is another swept key (sampled earlier in the
space's order) or any recipe key (its value in the base recipe).
"""

from __future__ import annotations

import itertools
import re
from typing import Any

import numpy as np
import yaml
from pydantic import ValidationError

from tunelab.config.specs import ParamSpec, Recipe, SweepSpec
from tunelab.errors import TunelabError

__all__ = ["apply_params", "check_space", "grid_configs", "grid_points", "sample", "trial_recipe"]

_COND = re.compile(r"^\s*([A-Za-z_][\w.]*)\s*(==|!=|not in|in)\s*(.+?)\s*$")


def _get(doc: dict[str, Any], dotted: str) -> Any:
    node: Any = doc
    for part in dotted.split("."):
        if not isinstance(node, dict) or part not in node:
            return None
        node = node[part]
    return node


def _set(doc: dict[str, Any], dotted: str, value: Any) -> None:
    parts = dotted.split(".")
    node = doc
    for part in parts[:-1]:
        if node.get(part) is None:
            node[part] = {}
        node = node[part]
    node[parts[-1]] = value


def apply_params(base: dict[str, Any], params: dict[str, Any]) -> dict[str, Any]:
    """A deep copy of the recipe document with the dotted keys set."""
    import copy

    doc = copy.deepcopy(base)
    for key, value in params.items():
        _set(doc, key, value)
    return doc


def _parse_condition(key: str, text: str) -> tuple[str, str, Any]:
    m = _COND.match(text)
    if not m:
        raise TunelabError(f"cannot parse condition '{text}'", where=f"sweep.space.{key}.when",
                           fix="write KEY == VALUE, KEY != VALUE, KEY in [A, B] or KEY not in [A, B]")
    return m.group(1), m.group(2), yaml.safe_load(m.group(3))


def condition_holds(key: str, when: str | None, params: dict[str, Any], base: dict[str, Any]) -> bool:
    if not when:
        return True
    ref, op, value = _parse_condition(key, when)
    current = params[ref] if ref in params else _get(base, ref)
    if op in ("in", "not in"):
        if not isinstance(value, list):
            raise TunelabError(f"'{op}' needs a list, got {value!r}", where=f"sweep.space.{key}.when")
        return (current in value) == (op == "in")
    return (current == value) == (op == "==")


def _sample_value(spec: ParamSpec) -> Any:
    if spec.type == "categorical":
        return spec.choices[0]
    return int(spec.low) if spec.type == "int" else float(spec.low)


def check_space(recipe: Recipe, sweep: SweepSpec) -> None:
    """Every key exists in the recipe (did-you-mean otherwise) and every value type is accepted."""
    from tunelab.config.loading import _validation_error

    base = recipe.model_dump(mode="json", exclude={"sweep"})
    for key, spec in sweep.space.items():
        if spec.when:
            ref, _, _ = _parse_condition(key, spec.when)
            if ref not in sweep.space and _get(base, ref) is None and ref.split(".")[0] not in base:
                raise TunelabError(f"condition names an unknown key '{ref}'", where=f"sweep.space.{key}.when")
        values = spec.choices if spec.type == "categorical" else [_sample_value(spec)]
        for value in values:
            try:
                Recipe.model_validate(apply_params(base, {key: value}))
            except ValidationError as e:
                err = _validation_error(e, "sweep.space", {})
                raise TunelabError(f"sweep.space key '{key}' = {value!r}: {err.what}", where="sweep.space",
                                   fix=err.fix) from None


def sample(trial, sweep: SweepSpec, base: dict[str, Any]) -> dict[str, Any]:
    """Suggest a value for every dimension whose condition holds, in the space's order."""
    params: dict[str, Any] = {}
    for key, spec in sweep.space.items():
        if not condition_holds(key, spec.when, params, base):
            continue
        if spec.type == "categorical":
            params[key] = trial.suggest_categorical(key, spec.choices)
        elif spec.type == "int":
            params[key] = trial.suggest_int(key, int(spec.low), int(spec.high), step=int(spec.step or 1))
        else:
            params[key] = trial.suggest_float(key, spec.low, spec.high, log=spec.type == "log_float",
                                              step=spec.step if spec.type == "float" else None)
    return params


def _grid_values(key: str, spec: ParamSpec) -> list[Any]:
    if spec.type == "categorical":
        return list(spec.choices)
    if spec.type == "int":
        return list(range(int(spec.low), int(spec.high) + 1, int(spec.step or 1)))
    if spec.step is None:
        raise TunelabError(f"the grid strategy needs a step for the {spec.type} dimension '{key}'",
                           where=f"sweep.space.{key}", fix="add step: (e.g. 0.5) or use categorical choices")
    if spec.type == "log_float":  # step is a factor on a log grid
        n = int(np.floor(np.log(spec.high / spec.low) / np.log(1 + spec.step) + 1e-9)) + 1
        return [min(float(spec.low * (1 + spec.step) ** i), spec.high) for i in range(n)]
    n = int(np.floor((spec.high - spec.low) / spec.step + 1e-9)) + 1
    return [min(float(spec.low + i * spec.step), spec.high) for i in range(n)]


def grid_points(sweep: SweepSpec) -> dict[str, list[Any]]:
    """Values per dimension for Optuna's GridSampler (conditional dimensions included)."""
    return {key: _grid_values(key, spec) for key, spec in sweep.space.items()}


def grid_configs(sweep: SweepSpec, base: dict[str, Any]) -> list[dict[str, Any]]:
    """The distinct configurations of the grid once conditions are applied, in a stable order."""
    points = grid_points(sweep)
    seen: dict[tuple, dict[str, Any]] = {}
    for combo in itertools.product(*points.values()):
        params: dict[str, Any] = {}
        for key, value in zip(points, combo, strict=True):
            if condition_holds(key, sweep.space[key].when, params, base):
                params[key] = value
        seen.setdefault(config_key(params), params)
    return list(seen.values())


def config_key(params: dict[str, Any]) -> tuple:
    """A hashable identity of a configuration (order-free; values by repr, so 8 and 8.0 differ as Optuna's do)."""
    return tuple(sorted((k, repr(v)) for k, v in params.items()))


def trial_recipe(base: dict[str, Any], params: dict[str, Any], out_dir: str, name: str, metric: str,
                 study: str | None = None) -> Recipe:
    """The recipe a trial runs: base + params, its own run folder, the objective as the validation metric.

    Its MLflow experiment is the study's name (unless the recipe names one), so a tracker shows the trials of
    one study side by side.
    """
    from tunelab.tracking import default_mlflow_uri

    doc = apply_params(base, params)
    out = doc.get("output", {})
    # Trials track to the project's store (beside every other run: `tunelab track ui` shows them), not to one
    # inside the study folder.
    doc["output"] = {**out, "dir": out_dir, "name": name, "overwrite": True,
                     "experiment": out.get("experiment") or study,
                     "mlflow_uri": out.get("mlflow_uri") or default_mlflow_uri(out.get("dir") or "runs")}
    doc["train"] = {**doc.get("train", {}), "early_stopping_metric": metric, "resume": "never"}
    doc.pop("sweep", None)
    return Recipe.model_validate(doc)
