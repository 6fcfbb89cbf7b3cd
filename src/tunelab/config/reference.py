"""Generate the recipe reference (docs/config.md) from the specs, so docs never drift from the code.

    python -m tunelab.config.reference > docs/config.md
"""

from __future__ import annotations

import json
import typing
from typing import Any

from pydantic import BaseModel
from pydantic_core import PydanticUndefined

from tunelab.config.specs import Recipe

__all__ = ["render_reference"]


def _type_name(annotation: Any) -> str:
    args = typing.get_args(annotation)
    if typing.get_origin(annotation) is typing.Literal:
        return "one of " + ", ".join(f"`{a}`" for a in args)
    if args and type(None) in args:  # X | None
        return " or ".join(_type_name(a) for a in args if a is not type(None)) + " or null"
    if args:
        return str(annotation).replace("typing.", "").replace(" | ", " or ")
    return getattr(annotation, "__name__", str(annotation))


def _default(field) -> str:
    if field.default is PydanticUndefined and field.default_factory is None:
        return "**required**"
    value = field.default_factory() if field.default_factory is not None else field.default
    if isinstance(value, BaseModel):
        return "(section)"
    return f"`{json.dumps(value)}`"


def _section(model: type[BaseModel], prefix: str, out: list[str]) -> None:
    rows, subsections = [], []
    for name, field in model.model_fields.items():
        ann = field.annotation
        if isinstance(ann, type) and issubclass(ann, BaseModel):
            subsections.append((f"{prefix}{name}", ann, field.description or ""))
            continue
        desc = (field.description or "").replace("|", "\\|")
        rows.append(f"| `{prefix}{name}` | {_type_name(ann)} | {_default(field)} | {desc} |")
    if rows:
        out += ["| key | type | default | meaning |", "|---|---|---|---|", *rows, ""]
    for key, sub, desc in subsections:
        out += [f"### `{key}`", "", desc, ""] if desc else [f"### `{key}`", ""]
        _section(sub, f"{key}.", out)


def render_reference() -> str:
    out = [
        "# Recipe reference", "",
        "Generated from `src/tunelab/config/specs.py` by `python -m tunelab.config.reference`; do not edit.",
        "Any key can be overridden on the command line as `key.sub=value` (values are read as YAML).", "",
    ]
    _section(Recipe, "", out)
    return "\n".join(out).rstrip() + "\n"


if __name__ == "__main__":
    print(render_reference(), end="")
