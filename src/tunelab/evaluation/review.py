"""Human review: a blind side-by-side sheet for raters, and their ratings back into the run's metrics.

`export_review` writes, for the evaluated rows of a run, a sheet in which every item shows the input, the
reference and two answers labelled only "A" and "B" — the tuned model's and another system's (the base
model by default), in a seeded random order per item:

* ``SHEET/review.html``: one self-contained page; raters pick A, tie or B per item and download their
  ratings as CSV (nothing leaves the browser);
* ``SHEET/ratings.csv``: the same items as a spreadsheet with an empty ``preference`` column to fill in.

The key (which system is A for each item) goes to ``RUN/review/key.json``, never into the sheet folder,
so the sheet can be handed out as it is. `import_ratings` reads a filled CSV (columns ``id`` and
``preference``; optional ``rater`` and ``comment``), checks every row (unknown ids, values other than
A/B/tie, a rater rating an item twice: errors name the line), un-blinds the verdicts with the key, and
puts win/tie/loss rates with 95% bootstrap intervals into ``eval/metrics.json["human"]``. Intervals
resample items (all ratings of an item together), so several raters on one item are not counted as
independent evidence.
"""

from __future__ import annotations

import csv
import hashlib
import io
import json
import random
from collections.abc import Sequence
from datetime import datetime, timezone
from html import escape
from pathlib import Path
from types import SimpleNamespace
from typing import Any

from tunelab.errors import TunelabError
from tunelab.util.io import atomic_write_json, atomic_write_text

__all__ = ["PREFERENCES", "export_review", "import_ratings", "read_ratings", "summarize_human"]

PREFERENCES = {"a": "A", "b": "B", "tie": "tie"}
_SHEET_COLUMNS = ("id", "rater", "preference", "comment", "input", "reference", "answer_a", "answer_b")
_KEY = Path("review") / "key.json"
_MAX_SHOWN_ERRORS = 5


# ------------------------------------------------------------------------------------------------ export


def _read_jsonl(path: Path) -> list[dict[str, Any]]:
    rows = []
    for n, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
        if line.strip():
            try:
                rows.append(json.loads(line))
            except json.JSONDecodeError as e:
                raise TunelabError(f"not valid JSON: {e.msg}", where=f"{path}:{n}") from e
    return rows


def _samples(run: Path) -> list[dict[str, Any]]:
    path = run / "eval" / "samples.jsonl"
    if not path.is_file():
        raise TunelabError(f"'{run}' has no eval/samples.jsonl to review", where=str(run),
                           fix=f"evaluate the run first: tunelab eval {run}")
    rows = _read_jsonl(path)
    if not rows:
        raise TunelabError("eval/samples.jsonl has no rows: the run evaluated nothing", where=str(path),
                           fix="evaluate on a split with rows (data.split.test / data.test_path)")
    return rows


def _system_answers(run: Path, rows: list[dict[str, Any]], systems: Sequence[str]) -> dict[str, list[str]]:
    from tunelab.evaluation.judge import system_outputs

    examples = [SimpleNamespace(where=r.get("where")) for r in rows]
    base = [r.get("base") for r in rows]
    metrics = run / "eval" / "metrics.json"
    # Only baselines of this evaluation: an older eval/baselines.jsonl may outlive a re-run without them.
    with_baselines = metrics.is_file() and "baselines" in json.loads(metrics.read_text(encoding="utf-8"))
    outputs = system_outputs(run, examples, base if all(b is not None for b in base) else None,
                             [r.get("tuned") or "" for r in rows], baselines=with_baselines)
    missing = [s for s in systems if s not in outputs]
    if missing:
        raise TunelabError(f"no answers of {', '.join(map(repr, missing))} in this run; available: "
                           f"{', '.join(outputs)}", where="--against",
                           fix="name a system the evaluation produced (base needs eval.compare_base)")
    return {s: outputs[s] for s in systems}


def _items(rows: list[dict[str, Any]], answers: dict[str, list[str]], systems: Sequence[str], seed: int):
    rng = random.Random(seed)
    items, key = [], {}
    width = max(3, len(str(len(rows))))
    for i, row in enumerate(rows):
        item_id = f"item-{i + 1:0{width}d}"
        order = list(systems) if rng.random() < 0.5 else list(reversed(systems))
        key[item_id] = {"A": order[0], "B": order[1], "where": row.get("where")}
        items.append({"id": item_id, "input": row.get("input") or "", "reference": row.get("reference") or "",
                      "answer_a": answers[order[0]][i] or "", "answer_b": answers[order[1]][i] or ""})
    return items, key


def _csv_text(items: list[dict[str, str]]) -> str:
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=list(_SHEET_COLUMNS), lineterminator="\n")
    writer.writeheader()
    for item in items:
        writer.writerow({**item, "rater": "", "preference": "", "comment": ""})
    return buf.getvalue()


def _check_out_dir(run: Path, out: Path) -> None:
    key_dir = (run / _KEY).parent.resolve()
    target = out.resolve()
    if target == key_dir or key_dir.is_relative_to(target):
        raise TunelabError(f"the sheet folder {out} would contain the key ({run / _KEY})", where="-o/--out",
                           fix=f"write the sheet elsewhere, e.g. -o {run / 'review' / 'sheet'}")


def _write_key(run: Path, key: dict[str, Any], overwrite: bool) -> None:
    path = run / _KEY
    if path.is_file() and not overwrite:
        old = json.loads(path.read_text(encoding="utf-8"))
        if old.get("items") != key["items"]:
            raise TunelabError(f"{path} already holds the key of a different sheet; ratings of that sheet could "
                               "no longer be un-blinded", where=str(path),
                               fix="import the old ratings first, or pass --overwrite to replace the key")
    atomic_write_json(path, key)


def export_review(run_dir: str | Path, out_dir: str | Path | None = None, against: str = "base", seed: int = 0,
                  max_items: int | None = None, overwrite: bool = False) -> dict[str, Path]:
    """Write the blind review sheet of a run and keep its key in the run folder.

    Args:
        run_dir: an evaluated run folder (``eval/samples.jsonl``).
        out_dir: the sheet folder (default ``RUN/review/sheet``); it must not contain ``RUN/review``.
        against: the system shown beside the tuned model: ``base`` or a baseline variant (``5_shot``).
        seed: seed of the per-item A/B order (same seed, same sheet).
        max_items: the first N evaluated rows only.
        overwrite: replace a key that belongs to a different sheet.

    Returns:
        ``{"html", "csv", "key"}`` paths.

    Raises:
        TunelabError: no evaluation in the run, unknown system, sheet folder holding the key, or an existing
            key of another sheet without ``overwrite``.
    """
    run = Path(run_dir)
    rows = _samples(run)[:max_items] if max_items else _samples(run)
    if against == "tuned":
        raise TunelabError("the tuned model cannot be compared with itself", where="--against",
                           fix="use base or a baseline variant")
    systems = ("tuned", against)
    answers = _system_answers(run, rows, systems)
    out = Path(out_dir) if out_dir is not None else run / "review" / "sheet"
    _check_out_dir(run, out)
    items, key_items = _items(rows, answers, systems, seed)
    csv_text = _csv_text(items)
    key = {"run": run.name, "systems": list(systems), "seed": seed, "n_items": len(items),
           "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
           "sheet_sha256": hashlib.sha256(csv_text.encode("utf-8")).hexdigest()[:16], "items": key_items}
    _write_key(run, key, overwrite)
    out.mkdir(parents=True, exist_ok=True)
    atomic_write_text(out / "ratings.csv", csv_text)
    atomic_write_text(out / "review.html", _html(items, run.name))
    return {"html": out / "review.html", "csv": out / "ratings.csv", "key": run / _KEY}


# -------------------------------------------------------------------------------------------------- html

_STYLE = """
body{font:15px/1.45 system-ui,sans-serif;margin:0;background:#f6f7f9;color:#1f2937}
main{max-width:1200px;margin:0 auto;padding:24px}
.item{background:#fff;border:1px solid #e5e7eb;border-radius:8px;padding:16px;margin:16px 0}
.pair{display:grid;grid-template-columns:1fr 1fr;gap:12px}
pre{white-space:pre-wrap;word-wrap:break-word;background:#f9fafb;border:1px solid #eef0f3;border-radius:6px;
padding:10px;margin:4px 0 10px;font:13px/1.4 ui-monospace,monospace}
h3{margin:0 0 8px}h4{margin:6px 0 0}.choice label{margin-right:18px}
.bar{position:sticky;top:0;background:#fff;border-bottom:1px solid #e5e7eb;padding:10px 24px;z-index:1}
input[type=text]{width:60%}button{font-size:15px;padding:6px 14px}
"""
_SCRIPT = """
function csvCell(v){v=String(v);return /[",\\n]/.test(v)?'"'+v.replace(/"/g,'""')+'"':v}
function download(){
  const rater=document.getElementById('rater').value.trim();
  const lines=['id,rater,preference,comment'];
  let done=0;
  document.querySelectorAll('.item').forEach(function(item){
    const id=item.dataset.id;
    const picked=item.querySelector('input[type=radio]:checked');
    const comment=item.querySelector('input.comment').value;
    if(picked){done++;}
    lines.push([id,rater,picked?picked.value:'',comment].map(csvCell).join(','));
  });
  const blob=new Blob([lines.join('\\n')+'\\n'],{type:'text/csv'});
  const a=document.createElement('a');
  a.href=URL.createObjectURL(blob);a.download='ratings.csv';a.click();
  document.getElementById('count').textContent=done+' of '+(lines.length-1)+' rated';
}
"""


def _html_item(item: dict[str, str]) -> str:
    e = escape
    name = f"pref-{e(item['id'])}"
    radios = "".join(f'<label><input type="radio" name="{name}" value="{v}"> {label}</label>'
                     for v, label in (("A", "A is better"), ("tie", "equally good"), ("B", "B is better")))
    return (f'<section class="item" data-id="{e(item["id"])}"><h3>{e(item["id"])}</h3>'
            f'<h4>Input</h4><pre>{e(item["input"])}</pre>'
            f'<h4>Reference answer</h4><pre>{e(item["reference"])}</pre>'
            f'<div class="pair"><div><h4>Answer A</h4><pre>{e(item["answer_a"])}</pre></div>'
            f'<div><h4>Answer B</h4><pre>{e(item["answer_b"])}</pre></div></div>'
            f'<div class="choice">{radios}</div>'
            f'<p>Comment: <input type="text" class="comment"></p></section>')


def _html(items: list[dict[str, str]], run_name: str) -> str:
    body = "".join(_html_item(i) for i in items)
    return ('<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8">'
            '<meta name="viewport" content="width=device-width, initial-scale=1">'
            f"<title>Review sheet {escape(run_name)}</title><style>{_STYLE}</style></head><body>"
            '<div class="bar">Your name: <input type="text" id="rater" style="width:14em"> '
            '<button onclick="download()">Download ratings.csv</button> <span id="count"></span></div>'
            f"<main><h1>Side-by-side review ({len(items)} items)</h1>"
            "<p>Each item shows an input, a reference answer and two answers, A and B, from two systems in a "
            "random order. Pick the better answer (or 'equally good'), judging correctness, helpfulness and "
            "clarity; the reference is a guide, not the only right wording. Then download your ratings and "
            "send the file back. You can also fill in <code>ratings.csv</code> instead "
            "(preference: A, B or tie).</p>"
            f"{body}</main><script>{_SCRIPT}</script></body></html>\n")


# ------------------------------------------------------------------------------------------------ import


def _load_key(run: Path) -> dict[str, Any]:
    path = run / _KEY
    if not path.is_file():
        raise TunelabError(f"no review key at {path}", where=str(run),
                           fix=f"export a sheet first: tunelab review export {run}")
    return json.loads(path.read_text(encoding="utf-8"))


def _bad_rows(errors: list[tuple[str, str]]) -> TunelabError:
    where, what = errors[0]
    more = ""
    if len(errors) > 1:
        shown = ", ".join(w.rsplit(":", 1)[-1] for w, _ in errors[1:1 + _MAX_SHOWN_ERRORS])
        extra = "" if len(errors) - 1 <= _MAX_SHOWN_ERRORS else ", ..."
        more = f" (and {len(errors) - 1} more bad row{'s' if len(errors) > 2 else ''}: lines {shown}{extra})"
    return TunelabError(what + more, where=where, fix="ids come from the exported sheet; preference is A, B or tie "
                                                      "(empty: not rated)")


def _header(reader: csv.DictReader, path: Path) -> dict[str, str]:
    fields = {(f or "").strip().lower(): f for f in (reader.fieldnames or [])}
    missing = [c for c in ("id", "preference") if c not in fields]
    if missing:
        raise TunelabError(f"the ratings file has no {' and no '.join(repr(m) for m in missing)} column",
                           where=f"{path}:1", fix="keep the header of the exported ratings.csv (id, rater, "
                                                  "preference, comment, ...)")
    return fields


def read_ratings(path: str | Path, key: dict[str, Any]) -> tuple[list[dict[str, Any]], int]:
    """Validated ratings from a CSV: ``([{"id", "rater", "preference", "comment", "line"}], unrated rows)``.

    Raises:
        TunelabError: missing file or columns, unknown ids, bad preference values, an item rated twice by
            one rater (the message names the first bad line and counts the others).
    """
    path = Path(path)
    if not path.is_file():
        raise TunelabError(f"ratings file not found: {path}", fix="pass the CSV the raters filled in")
    try:
        text = path.read_text(encoding="utf-8-sig")  # spreadsheets often save UTF-8 with a BOM
    except (OSError, UnicodeDecodeError) as e:
        raise TunelabError(f"cannot read the ratings file: {e}", where=str(path), fix="save it as UTF-8 CSV") from e
    reader = csv.DictReader(io.StringIO(text))
    cols = _header(reader, path)
    ratings, errors, unrated, seen = [], [], 0, set()
    for row in reader:
        where = f"{path}:{reader.line_num}"
        item_id = (row.get(cols["id"]) or "").strip()
        pref = (row.get(cols["preference"]) or "").strip()
        rater = (row.get(cols["rater"]) or "").strip() if "rater" in cols else ""
        if item_id not in key["items"]:
            errors.append((where, f"unknown id '{item_id}'"))
        elif not pref:
            unrated += 1
        elif pref.lower() not in PREFERENCES:
            errors.append((where, f"preference '{pref}' is not A, B or tie"))
        elif (item_id, rater) in seen:
            errors.append((where, f"'{item_id}' rated twice by {repr(rater) if rater else 'the same rater'}"))
        else:
            seen.add((item_id, rater))
            comment = (row.get(cols["comment"]) or "").strip() if "comment" in cols else ""
            ratings.append({"id": item_id, "rater": rater, "preference": PREFERENCES[pref.lower()],
                            "comment": comment, "line": reader.line_num})
    if errors:
        raise _bad_rows(errors)
    return ratings, unrated


def _outcome(rating: dict[str, Any], key: dict[str, Any]) -> str:
    if rating["preference"] == "tie":
        return "tie"
    winner = key["items"][rating["id"]][rating["preference"]]
    return "win" if winner == key["systems"][0] else "loss"


def _agreement(by_item: dict[str, list[str]]) -> float | None:
    agree = total = 0
    for outcomes in by_item.values():
        for i in range(len(outcomes)):
            for j in range(i + 1, len(outcomes)):
                total += 1
                agree += outcomes[i] == outcomes[j]
    return round(agree / total, 4) if total else None


def summarize_human(outcomes_by_item: dict[str, list[str]]) -> dict[str, Any]:
    """Win/tie/loss rates over ratings, with 95% intervals that resample items; rater agreement.

    Args:
        outcomes_by_item: item id -> the un-blinded outcome ("win", "tie", "loss") of each of its ratings,
            from the point of view of the first system (the tuned model).
    """
    from tunelab.evaluation.metrics import bootstrap_ci

    items = [o for o in outcomes_by_item.values() if o]
    weights = [len(o) for o in items]
    out: dict[str, Any] = {"n_ratings": sum(weights), "n_items": len(items)}
    for name in ("win", "tie", "loss"):
        per_item = [sum(x == name for x in o) / len(o) for o in items]
        total = sum(p * w for p, w in zip(per_item, weights, strict=True))
        out[f"{name}_rate"] = round(total / out["n_ratings"], 5) if items else 0.0
        out[f"{name}_rate_ci"] = [round(x, 5) for x in bootstrap_ci(per_item, weights=weights)] if items else [0.0, 0.0]
    out["agreement"] = _agreement(outcomes_by_item)
    return out


def import_ratings(run_dir: str | Path, ratings_file: str | Path) -> dict[str, Any]:
    """Un-blind a filled ratings CSV and store the result in ``eval/metrics.json["human"]``.

    Also writes ``eval/human.jsonl`` (every rating with the systems behind A and B). Nothing is written when
    any row is bad.

    Returns:
        The ``human`` part: ``{"systems", "n_ratings", "n_items", "unrated", "raters", "win_rate",
        "win_rate_ci", "tie_rate", ..., "loss_rate", ..., "agreement", "seed", "file"}``.
    """
    run = Path(run_dir)
    metrics_path = run / "eval" / "metrics.json"
    if not metrics_path.is_file():
        raise TunelabError(f"'{run}' has no eval/metrics.json", where=str(run), fix=f"run tunelab eval {run} first")
    key = _load_key(run)
    ratings, unrated = read_ratings(ratings_file, key)
    if not ratings:
        raise TunelabError("the ratings file rates no item (every preference is empty)", where=str(ratings_file),
                           fix="fill in the preference column with A, B or tie")
    by_item: dict[str, list[str]] = {}
    rows = []
    for r in ratings:
        outcome = _outcome(r, key)
        by_item.setdefault(r["id"], []).append(outcome)
        item = key["items"][r["id"]]
        rows.append({**r, "outcome": outcome, "A": item["A"], "B": item["B"], "where": item.get("where")})
    human = {"systems": key["systems"], **summarize_human(by_item), "unrated": unrated,
             "raters": sorted({r["rater"] for r in ratings if r["rater"]}), "seed": key["seed"],
             "file": Path(ratings_file).name}
    result = json.loads(metrics_path.read_text(encoding="utf-8"))
    result["human"] = human
    atomic_write_text(run / "eval" / "human.jsonl", "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows))
    atomic_write_json(metrics_path, result)
    return human
