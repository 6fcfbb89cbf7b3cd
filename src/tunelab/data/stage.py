"""`tunelab data <verb>`: run curation steps over a whole file and write a self-describing dataset folder.

The folder holds ``data.jsonl`` (canonical rows: ``{"messages": [...]}`` or ``{"text": ...}``),
``rejects.jsonl`` (every removed row with its step and reason) and ``manifest.json`` (input hashes, every
step with its parameters and counts in/out, and a content fingerprint). A recipe can use the folder as
``data.path``; the run's manifest then names the dataset's fingerprint.
"""

from __future__ import annotations

import json
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from tunelab.config.specs import DataSpec
from tunelab.data.curate import curate
from tunelab.data.pipeline import eval_file_texts, read_examples, resolve_data_path, write_rejects
from tunelab.data.readers import file_sha256
from tunelab.data.records import Example
from tunelab.errors import TunelabError
from tunelab.util.io import atomic_write_json, atomic_write_text, sha256_file

__all__ = ["curate_file", "dataset_manifest", "report_file"]


def _row(ex: Example) -> dict[str, Any]:
    return {"text": ex.text} if ex.text is not None else {"messages": ex.messages}


def _read_examples(spec: DataSpec) -> tuple[Path, int, str, list[Example], list]:
    """(source path, rows read, format, examples, rejects) of spec.path, read as a recipe would."""
    src = resolve_data_path(spec.path)
    rows, fmt, examples, rejects = read_examples(src, spec)
    return src, rows, fmt, examples, rejects


def dataset_manifest(path: Path) -> dict[str, Any] | None:
    """The manifest of a dataset folder that `data_path` points into, or None for a plain file."""
    folder = path.parent if path.name == "data.jsonl" else path
    m = folder / "manifest.json"
    return json.loads(m.read_text(encoding="utf-8")) if m.is_file() else None


def curate_file(spec: DataSpec, steps: list[str], out_dir: str | Path, eval_files: list[str] | None = None,
                overwrite: bool = False) -> dict[str, Any]:
    """Read spec.path, run `steps` over all of its rows, write the dataset folder; returns the manifest."""
    out = Path(out_dir)
    if out.exists() and any(out.iterdir()) and not overwrite:
        raise TunelabError(f"output folder is not empty: {out}", fix="choose another --out or pass --overwrite")
    src, rows_read, fmt, examples, format_rejects = _read_examples(spec)
    eval_texts = eval_file_texts((eval_files or []) + spec.curate.decontam.files, spec)
    if "decontam" in steps and not eval_texts:
        raise TunelabError("decontam needs evaluation data", fix="pass --eval FILE (repeatable)")
    result = curate(examples, spec.curate, eval_texts, steps)
    out.mkdir(parents=True, exist_ok=True)
    data_path = out / "data.jsonl"
    atomic_write_text(data_path, "".join(json.dumps(_row(ex), ensure_ascii=False) + "\n" for ex in result.examples))
    write_rejects(format_rejects + result.rejects, out / "rejects.jsonl")
    manifest = {
        "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "inputs": [{"path": str(src), "sha256": file_sha256(src), "rows": rows_read, "format": fmt}]
        + [{"path": f, "sha256": file_sha256(resolve_data_path(f)), "role": "evaluation"}
           for f in (eval_files or []) + spec.curate.decontam.files],
        "steps": [{"step": "read", "rows_in": rows_read, "kept": len(examples), "rejected": len(format_rejects)}]
        + [r.to_dict() for r in result.steps],
        "rows_in": rows_read, "rows_out": len(result.examples),
        "rejected": len(format_rejects) + len(result.rejects),
        "fingerprint": sha256_file(data_path),
    }
    atomic_write_json(out / "manifest.json", manifest)
    return manifest


def report_file(spec: DataSpec, out_dir: str | Path, eval_files: list[str] | None = None,
                model: str | None = "smollm2-135m-instruct") -> tuple[dict[str, Any], Path]:
    """`tunelab data report`: audit spec.path (lengths in `model`'s tokens) and write data_report.{json,html}."""
    from tunelab.data.audit import audit_examples, write_audit

    src, _, fmt, examples, rejects = _read_examples(spec)
    tokenizer = None
    if model:
        from tunelab.models import load_tokenizer

        tokenizer = load_tokenizer(model)
    eval_texts = eval_file_texts(eval_files, spec) if eval_files else None
    source = {"path": str(src), "sha256": file_sha256(src), "format": fmt, "model": model}
    report = audit_examples(examples, rejects, tokenizer=tokenizer, max_length=spec.max_length,
                            eval_texts=eval_texts, source=source)
    _, html = write_audit(report, Path(out_dir))
    return report, html
