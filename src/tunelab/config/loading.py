"""Recipe loading: YAML file < `a.b=c` overrides, validated into typed specs with precise errors."""

from __future__ import annotations

import difflib
from pathlib import Path
from typing import Any

import yaml
from pydantic import BaseModel, ValidationError

from tunelab.config.specs import Recipe
from tunelab.errors import TunelabError

__all__ = ["apply_overrides", "dump_recipe", "load_recipe", "parse_override"]


def _key_lines(text: str) -> dict[tuple[str, ...], int]:
    """Map each key path in a YAML document to its 1-based line, for error messages."""
    lines: dict[tuple[str, ...], int] = {}

    def walk(node: yaml.Node, prefix: tuple[str, ...]) -> None:
        if isinstance(node, yaml.MappingNode):
            for key_node, value_node in node.value:
                path = (*prefix, str(key_node.value))
                lines[path] = key_node.start_mark.line + 1
                walk(value_node, path)

    try:
        root = yaml.compose(text, Loader=yaml.SafeLoader)
    except yaml.YAMLError:
        return lines
    if root is not None:
        walk(root, ())
    return lines


def parse_override(item: str) -> tuple[list[str], Any]:
    """Parse `a.b.c=value`; the value is read as YAML so numbers, booleans and lists keep their type."""
    if "=" not in item:
        raise TunelabError(f"override '{item}' is not of the form key.sub=value", where="command line")
    key, raw = item.split("=", 1)
    parts = [p for p in key.strip().split(".")]
    if not all(parts):
        raise TunelabError(f"override key '{key}' has an empty part", where="command line")
    try:
        value = yaml.safe_load(raw) if raw.strip() else ""
    except yaml.YAMLError:
        value = raw
    return parts, value


def apply_overrides(doc: dict[str, Any], overrides: list[str]) -> dict[str, Any]:
    """Set each dotted override in a nested dict (creating sections as needed)."""
    for item in overrides:
        parts, value = parse_override(item)
        node = doc
        for p in parts[:-1]:
            child = node.get(p)
            if not isinstance(child, dict):
                child = {}
                node[p] = child
            node = child
        node[parts[-1]] = value
    return doc


def _model_at(loc: tuple[Any, ...]) -> type[BaseModel] | None:
    """The pydantic model class that owns the field at `loc[-1]` (for did-you-mean suggestions)."""
    model: type[BaseModel] = Recipe
    for part in loc[:-1]:
        field = model.model_fields.get(str(part))
        ann = getattr(field, "annotation", None)
        if not (isinstance(ann, type) and issubclass(ann, BaseModel)):
            return None
        model = ann
    return model


def _describe(err: dict[str, Any]) -> tuple[str, str | None]:
    loc = tuple(str(p) for p in err["loc"])
    key = ".".join(loc) or "(top level)"
    if err["type"] == "extra_forbidden":
        owner = _model_at(loc)
        names = list(owner.model_fields) if owner else []
        close = difflib.get_close_matches(loc[-1], names, n=1, cutoff=0.5)
        fix = f"did you mean '{'.'.join((*loc[:-1], close[0]))}'?" if close else f"known keys: {', '.join(names)}"
        return f"unknown key '{key}'", fix
    if err["type"] == "missing":
        return f"missing required key '{key}'", "add it to the recipe or pass it as an override"
    got = err.get("input")
    got_s = repr(got) if not isinstance(got, dict) else "a mapping"
    msg = err["msg"]
    msg = msg[:1].lower() + msg[1:]
    return f"'{key}': {msg} (got {got_s})", None


def _validation_error(e: ValidationError, source: str, lines: dict[tuple[str, ...], int]) -> TunelabError:
    # Unknown keys first: they usually explain the type errors that follow (a misspelt section).
    errors = sorted(e.errors(), key=lambda x: x["type"] != "extra_forbidden")
    err = errors[0]
    what, fix = _describe(err)
    loc = tuple(str(p) for p in err["loc"])
    line = None
    for n in range(len(loc), 0, -1):
        line = lines.get(loc[:n])
        if line:
            break
    where = f"{source}:{line}" if line else source
    more = len(errors) - 1
    if more:
        what += f" (and {more} more problem{'s' if more > 1 else ''})"
    return TunelabError(what, where=where, fix=fix)


def load_recipe(path: str | Path | None, overrides: list[str] | None = None) -> Recipe:
    """Load a recipe YAML (or only overrides when path is None) into a validated `Recipe`.

    Raises:
        TunelabError: missing/unreadable file, YAML syntax error, unknown key, wrong type.
    """
    text, source = "", "command line"
    if path is not None:
        p = Path(path)
        source = str(p)
        if not p.is_file():
            raise TunelabError(f"recipe file not found: {p}", fix="check the path (examples/ has shipped recipes)")
        try:
            text = p.read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError) as e:
            raise TunelabError(f"cannot read recipe: {e}", where=source) from e
    try:
        doc = yaml.safe_load(text) if text.strip() else {}
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        where = f"{source}:{mark.line + 1}" if mark else source
        raise TunelabError(f"invalid YAML: {getattr(e, 'problem', e)}", where=where) from e
    if not isinstance(doc, dict):
        raise TunelabError("a recipe must be a mapping of sections (data, model, method, train, eval, output)",
                           where=source)
    doc = apply_overrides(doc, overrides or [])
    try:
        return Recipe.model_validate(doc)
    except ValidationError as e:
        raise _validation_error(e, source, _key_lines(text)) from None


def dump_recipe(recipe: Recipe) -> str:
    """The resolved recipe as YAML (every default made explicit)."""
    return yaml.safe_dump(recipe.model_dump(mode="json"), sort_keys=False, allow_unicode=True)
