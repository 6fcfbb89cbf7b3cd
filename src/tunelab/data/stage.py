"""`tunelab data <verb>`: run curation steps over a whole file and write a self-describing dataset folder.

The folder holds ``data.jsonl`` (canonical rows: ``{"messages": [...]}`` or ``{"text": ...}``),
``rejects.jsonl`` (every removed row with its step and reason) and ``manifest.json`` (input hashes, every
step with its parameters and counts in/out, and a content fingerprint). A recipe can use the folder as
``data.path``; the run's manifest then names the dataset's fingerprint.
"""

from __future__ import annotations

import json
import os
import tempfile
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from tunelab.config.specs import DataSpec
from tunelab.data.pipeline import eval_file_texts, read_examples, resolve_data_path, write_rejects
from tunelab.data.readers import file_sha256
from tunelab.data.records import Example
from tunelab.errors import TunelabError
from tunelab.util.io import atomic_write_json, atomic_write_text, sha256_file

__all__ = ["curate_file", "dataset_manifest", "report_file", "split_file"]


# Annotations that steps add to a row's raw record (judge scores, synthetic-row marks) travel into data.jsonl.
_CARRIED_KEYS = ("score", "synthetic")


def _row(ex: Example) -> dict[str, Any]:
    row: dict[str, Any] = {"text": ex.text} if ex.text is not None else {"messages": ex.messages}
    row.update((k, ex.raw[k]) for k in _CARRIED_KEYS if k in ex.raw)
    return row


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
                overwrite: bool = False, progress: bool = True) -> dict[str, Any]:
    """Read spec.path, run `steps` over all of its rows, write the dataset folder; returns the manifest.

    The file streams through the steps (`tunelab.data.stream`): memory holds a compact state per row, not
    the rows, so the file may be larger than memory. data.jsonl and rejects.jsonl are written as rows come,
    into a work folder beside ``out_dir``, and renamed into it at the end.
    """
    from tunelab.data.stream import StreamCuration, atomic_writer, work_folder

    out = Path(out_dir)
    if out.exists() and any(out.iterdir()) and not overwrite:
        raise TunelabError(f"output folder is not empty: {out}", fix="choose another --out or pass --overwrite")
    src = resolve_data_path(spec.path)
    src_sha = file_sha256(src)  # first: a missing or unreadable file is the first error, as before
    eval_texts = eval_file_texts((eval_files or []) + spec.curate.decontam.files, spec)
    if "decontam" in steps and not eval_texts:
        raise TunelabError("decontam needs evaluation data", fix="pass --eval FILE (repeatable)")
    with work_folder(out) as work:
        run = StreamCuration(spec, steps, eval_texts, Path(work), progress=progress)
        rows_out = 0
        try:
            with atomic_writer(Path(work) / "data.jsonl") as f:
                for ex in run.rows():
                    f.write(json.dumps(_row(ex), ensure_ascii=False) + "\n")
                    rows_out += 1
            with atomic_writer(Path(work) / "rejects.jsonl") as f:
                run.write_rejects(f)
        finally:
            run.close()
        out.mkdir(parents=True, exist_ok=True)
        for name in ("data.jsonl", "rejects.jsonl"):
            os.replace(Path(work) / name, out / name)
    data_path, source = out / "data.jsonl", run.source
    manifest = {
        "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "inputs": [{"path": str(src), "sha256": src_sha, "rows": source.rows_read, "format": source.fmt}]
        + [{"path": f, "sha256": file_sha256(resolve_data_path(f)), "role": "evaluation"}
           for f in (eval_files or []) + spec.curate.decontam.files],
        "steps": [{"step": "read", "rows_in": source.rows_read, "kept": source.usable, "rejected": run.read_rejected}]
        + [r.to_dict() for r in run.reports],
        "rows_in": source.rows_read, "rows_out": rows_out, "rejected": run.rejected,
        "fingerprint": sha256_file(data_path),
    }
    atomic_write_json(out / "manifest.json", manifest)
    return manifest


def report_file(spec: DataSpec, out_dir: str | Path, eval_files: list[str] | None = None,
                model: str | None = "smollm2-135m-instruct", progress: bool = True) -> tuple[dict[str, Any], Path]:
    """`tunelab data report`: audit spec.path (lengths in `model`'s tokens) and write data_report.{json,html}.

    The file streams: the first pass reads it (a bar over bytes) and spills the examples to a temporary
    file, which later passes and example look-ups read (`tunelab.data.stream.SpooledExamples`), so memory
    holds the audit's counters and per-row hashes, not the rows.
    """
    from tunelab.data.audit import audit_examples, write_audit
    from tunelab.data.stream import Bars, ExampleSource, Spill, SpooledExamples

    src = resolve_data_path(spec.path)
    source = {"path": str(src), "sha256": file_sha256(src), "format": None, "model": model}
    tokenizer = None
    if model:
        from tunelab.models import load_tokenizer

        tokenizer = load_tokenizer(model)
    eval_texts = eval_file_texts(eval_files, spec) if eval_files else None
    with tempfile.TemporaryDirectory(prefix="tunelab-report-") as work, Bars(progress) as bars:
        rejects = Spill(Path(work) / "rejects.jsonl", "reject")
        reader = ExampleSource(src, spec, rejects, rejects, bars.bytes(src, f"reading {src.name}"))
        source["format"] = reader.detect_format()
        examples = SpooledExamples(reader, Spill(Path(work) / "rows.jsonl", "example", indexed=True), bars)
        try:
            # The bars above are the only live display: rich allows one at a time.
            report = audit_examples(examples, rejects, tokenizer=tokenizer, max_length=spec.max_length,
                                    eval_texts=eval_texts, source=source, progress=False, workdir=work)
        finally:
            examples.spill.close()
            rejects.close()
    _, html = write_audit(report, Path(out_dir))
    return report, html


def _write_split(folder: Path, name: str, examples: list[Example], parent: dict[str, Any], spec: DataSpec,
                 created: str) -> dict[str, Any]:
    """One split's dataset folder (data.jsonl + manifest.json naming the split and its parent input)."""
    from collections import Counter

    from tunelab.data.split import example_label

    data_path = folder / "data.jsonl"
    atomic_write_text(data_path, "".join(json.dumps(_row(ex), ensure_ascii=False) + "\n" for ex in examples))
    info = {"rows": len(examples), "fingerprint": sha256_file(data_path),
            "labels": dict(sorted(Counter(example_label(ex) or "" for ex in examples).items()))}
    atomic_write_json(folder / "manifest.json", {
        "created": created, "split": name, "parent": parent, "split_spec": spec.split.model_dump(),
        "steps": [{"step": "split", "split": name, "rows_in": parent["usable"], "rows_out": len(examples)}],
        "rows_out": len(examples), "fingerprint": info["fingerprint"],
    })
    return info


def split_file(spec: DataSpec, out_dir: str | Path, overwrite: bool = False) -> dict[str, Any]:
    """`tunelab data split`: write OUT/train, OUT/validation and OUT/test dataset folders from spec.path.

    The split is `tunelab.data.split.split_examples` under ``spec.split`` (the one training uses): deterministic,
    stratified for label tasks, near-duplicates grouped. Each split folder is a normal dataset folder
    (usable as ``data.path``); rows rejected at read go to OUT/rejects.jsonl, and OUT/manifest.json holds the
    input, the split settings and the rows (and label counts) of every split. Returns that manifest.
    """
    from tunelab.data.split import SPLITS, example_label, looks_like_labels, split_examples

    out = Path(out_dir)
    if out.exists() and any(out.iterdir()) and not overwrite:
        raise TunelabError(f"output folder is not empty: {out}", fix="choose another --out or pass --overwrite")
    src, rows_read, fmt, examples, rejects = _read_examples(spec)
    parts = split_examples(examples, spec.split)
    labels = [example_label(ex) for ex in examples]
    stratified = spec.split.stratify == "label" or (spec.split.stratify == "auto" and looks_like_labels(labels))
    parent = {"path": str(src), "sha256": file_sha256(src), "rows": rows_read, "usable": len(examples),
              "format": fmt}
    created = datetime.now(timezone.utc).isoformat(timespec="seconds")
    splits = {name: _write_split(out / name, name, parts[name], parent, spec, created) for name in SPLITS}
    if not stratified:
        for info in splits.values():
            info.pop("labels")
    write_rejects(rejects, out / "rejects.jsonl")
    manifest = {
        "created": created, "inputs": [parent], "split_spec": spec.split.model_dump(), "stratified": stratified,
        "splits": splits,
        "steps": [{"step": "read", "rows_in": rows_read, "kept": len(examples), "rejected": len(rejects)},
                  {"step": "split", "rows_in": len(examples), "kept": len(examples), "rejected": 0,
                   "details": {name: info["rows"] for name, info in splits.items()} | {"stratified": stratified}}],
        "rows_in": rows_read, "rows_out": len(examples), "rejected": len(rejects),
    }
    atomic_write_json(out / "manifest.json", manifest)
    return manifest
