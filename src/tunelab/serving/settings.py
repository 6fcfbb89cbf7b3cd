"""`ServeSpec` from the command line: MODEL, `--adapter NAME=RUN_DIR`, options and `key=value` overrides.

When MODEL is a run folder, its recipe's `serve` section supplies the defaults (so `tunelab serve RUN_DIR`
needs no other flags); options and overrides take precedence.
"""

from __future__ import annotations

import difflib
from pathlib import Path
from typing import Any

from pydantic import ValidationError

from tunelab.config.loading import apply_overrides
from tunelab.config.specs import ServeSpec
from tunelab.errors import TunelabError

__all__ = ["parse_adapters", "serve_settings"]


def parse_adapters(items: list[str]) -> dict[str, str]:
    """`NAME=RUN_DIR` strings to a mapping; a bare RUN_DIR is named after its folder."""
    out: dict[str, str] = {}
    for item in items:
        name, sep, path = item.partition("=")
        if not sep:
            name, path = Path(item).resolve().name, item
        if not name or not path:
            raise TunelabError(f"--adapter '{item}' is not NAME=RUN_DIR", where="--adapter",
                               fix="e.g. --adapter support=runs/support-lora")
        if name in out:
            raise TunelabError(f"adapter name '{name}' is given twice", where="--adapter", fix="use distinct names")
        out[name] = path
    return out


def _defaults(model: str) -> dict[str, Any]:
    from tunelab.config.loading import load_recipe
    from tunelab.models import is_run_dir

    if is_run_dir(model):
        return load_recipe(Path(model) / "config.yaml").serve.model_dump()
    return {}


def _error(e: ValidationError) -> TunelabError:
    err = sorted(e.errors(), key=lambda x: x["type"] != "extra_forbidden")[0]
    key = ".".join(str(p) for p in err["loc"])
    if err["type"] == "extra_forbidden":
        close = difflib.get_close_matches(key, list(ServeSpec.model_fields), n=1, cutoff=0.5)
        fix = f"did you mean '{close[0]}'?" if close else f"known keys: {', '.join(ServeSpec.model_fields)}"
        return TunelabError(f"unknown serve setting '{key}'", where="command line", fix=fix)
    return TunelabError(f"serve setting '{key}': {err['msg'][:1].lower()}{err['msg'][1:]} (got {err.get('input')!r})",
                        where="command line")


def serve_settings(model: str, adapters: list[str], overrides: list[str], **options: Any) -> ServeSpec:
    """The validated settings; `options` (host, port, ...) that are None keep their defaults.

    Raises:
        TunelabError: malformed --adapter or override, unknown setting (with did-you-mean), bad value.
    """
    doc = _defaults(model)
    doc = apply_overrides(doc, [o[len("serve."):] if o.startswith("serve.") else o for o in overrides])
    doc.update({k: v for k, v in options.items() if v is not None})
    doc["model"] = model
    doc["adapters"] = {**(doc.get("adapters") or {}), **parse_adapters(adapters)}
    try:
        return ServeSpec.model_validate(doc)
    except ValidationError as e:
        raise _error(e) from None
