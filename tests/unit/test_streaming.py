"""Streaming data stages: lazy readers, the two-pass dedup, decontam in batches, and the same outputs as the
in-memory path (`curate` over a list) for `tunelab data` verbs."""

from __future__ import annotations

import json
import random

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from tunelab.cli.main import main
from tunelab.config import load_recipe
from tunelab.data.curate import curate
from tunelab.data.decontam import find_contamination
from tunelab.data.dedup import MinHashParams, dedup_plan
from tunelab.data.pipeline import read_examples, resolve_data_path, write_rejects
from tunelab.data.readers import iter_records
from tunelab.data.records import Example, Reject
from tunelab.data.stream import ContaminationIndex, DedupIndex, Spill
from tunelab.errors import TunelabError

_WORDS = ["river", "stone", "lamp", "orbit", "velvet", "canyon", "maple", "signal", "harbor", "ember", "quartz",
          "meadow", "lantern", "copper", "tide", "falcon", "prism", "garden", "summit", "cedar"]


def _sentence(rng: random.Random, n: int) -> str:
    return " ".join(rng.choice(_WORDS) for _ in range(n))


def _texts(n: int = 400, seed: int = 0) -> list[str]:
    """Random texts with planted exact duplicates (case/punctuation edits) and near duplicates (one word)."""
    rng = random.Random(seed)
    texts = [_sentence(rng, rng.randint(20, 60)) for _ in range(n)]
    for _ in range(n // 8):
        src = rng.choice(texts)
        words = src.split()
        words[rng.randrange(len(words))] = "changed"
        texts.insert(rng.randrange(len(texts)), rng.choice([src.upper() + "!", " ".join(words)]))
    return texts


def _rows(n: int = 240, seed: int = 1) -> list[str]:
    """JSONL lines with duplicates, PII, a refusal, text to clean, and malformed lines."""
    rng = random.Random(seed)
    lines = []
    for i, text in enumerate(_texts(n, seed)):
        lines.append(json.dumps({"prompt": f"Question {i % 50}?", "completion": text}))
    lines[3] = json.dumps({"prompt": "Contact?", "completion": "Write to jane.doe@example.com or +1 415 555 0132."})
    lines[7] = json.dumps({"prompt": "Help", "completion": "I'm sorry, but as an AI language model I cannot help."})
    lines[9] = json.dumps({"prompt": "Spaces", "completion": "cafÃ©   is   nice and the view is lovely"})
    for bad in ("{broken", "[1, 2]", json.dumps({"prompt": "no answer"})):
        lines.insert(rng.randrange(len(lines)), bad)
    return lines


# ---------------------------------------------------------------------------------------------------- readers


def test_reader_is_lazy_and_reports_bytes(tmp_path):
    p = tmp_path / "big.jsonl"
    row = json.dumps({"text": "x" * 1000}) + "\n"
    with open(p, "w") as f:
        f.write(row * 6000)  # ~6 MB
        f.write("{not json\n")  # the last line is malformed: a reader that parses everything first fails
    seen: list[int] = []
    records = iter_records(p, on_bytes=seen.append)
    where, first = next(records)
    assert (where, first) == (f"{p}:1", {"text": "x" * 1000})
    assert sum(seen) < p.stat().st_size  # only the first lines were read
    with pytest.raises(TunelabError, match="malformed JSON") as e:
        for _ in records:
            pass
    assert e.value.where == f"{p}:6001"
    good = tmp_path / "good.jsonl"
    good.write_text(row * 3000)
    seen.clear()
    assert sum(1 for _ in iter_records(good, on_bytes=seen.append)) == 3000
    assert sum(seen) == good.stat().st_size  # every byte is reported, for a bar over bytes


def test_parquet_reads_one_batch_at_a_time(tmp_path):
    p = tmp_path / "d.parquet"
    pq.write_table(pa.table({"text": [f"row {i}" for i in range(12_000)]}), p, row_group_size=3000)
    seen: list[int] = []
    records = iter_records(p, on_bytes=seen.append)
    assert next(records) == (f"{p}:#0", {"text": "row 0"})
    assert sum(seen) < p.stat().st_size
    rest = list(records)
    assert len(rest) == 11_999 and rest[-1] == (f"{p}:#11999", {"text": "row 11999"})


def test_decode_error_streams_file_line_and_byte(tmp_path):
    p = tmp_path / "d.txt"
    p.write_bytes(b"fine\n" * 3000 + b"caf\xe9\n")
    records = iter_records(p)
    assert next(records)[1] == {"text": "fine"}
    with pytest.raises(TunelabError, match=r"not valid utf-8 text \(byte 15003") as e:
        list(records)
    assert e.value.where == f"{p}:3001" and "data.encoding" in e.value.fix


def test_jsonl_line_separators_inside_strings_are_text(tmp_path):
    # U+2028 is legal unescaped inside a JSON string, and json.dumps(ensure_ascii=False) writes it so.
    p = tmp_path / "d.jsonl"
    p.write_text(json.dumps({"text": "a\u2028b\x85c"}, ensure_ascii=False) + "\r\n" + '{"text": "d"}', encoding="utf-8")
    assert list(iter_records(p)) == [(f"{p}:1", {"text": "a\u2028b\x85c"}), (f"{p}:2", {"text": "d"})]


def test_skipped_rows_go_to_any_appendable_sink(tmp_path):
    p = tmp_path / "d.jsonl"
    p.write_text('{"a": 1}\n{bad\n"s"\n{"a": 2}\n')
    sink = Spill(tmp_path / "skipped.jsonl", "reject")
    assert [r for _, r in iter_records(p, skipped=sink)] == [{"a": 1}, {"a": 2}]
    assert [r.where for r in sink] == [f"{p}:2", f"{p}:3"]


# ------------------------------------------------------------------------------------------------ components


def test_spill_round_trip_in_order_and_by_index(tmp_path):
    examples = [Example([{"role": "user", "content": f"q{i}\u2028"}], None, f"f:{i}", {"k": [i, {"x": None}]})
                for i in range(50)]
    spill = Spill(tmp_path / "s.jsonl", "example", indexed=True)
    for ex in examples:
        spill.append(ex)
    assert list(spill) == examples and len(spill) == 50
    assert spill[37] == examples[37] and spill[0] == examples[0]
    spill.close()


@pytest.mark.parametrize(("exact", "near", "params"), [
    (True, True, MinHashParams()), (True, False, MinHashParams()), (False, True, MinHashParams()),
    (True, True, MinHashParams(bands=32, threshold=0.7, shingle=3)),
])
def test_dedup_index_decides_what_dedup_plan_decides(tmp_path, exact, near, params):
    texts = _texts()
    plan = dedup_plan(texts, params, exact=exact, near=near)
    index = DedupIndex(params, tmp_path, exact=exact, near=near)
    for t in texts:
        index.add(t)
    decision = index.plan()
    assert {i: (keep, why) for i, keep, why in decision.drops()} == plan.dropped
    assert plan.dropped  # the planted duplicates are found
    assert decision.clusters() == plan.clusters
    assert decision.clusters(largest=3) == sorted(plan.clusters, key=lambda c: (-len(c), c[0]))[:3]
    assert list(tmp_path.iterdir()) == []  # the signature file is removed


def test_contamination_index_matches_find_contamination_in_any_batching():
    texts = _texts(120, seed=3)
    eval_texts = [texts[5] + " and more words after it", texts[40][:200], "short unrelated text"]
    expected = find_contamination(texts, eval_texts)
    index = ContaminationIndex(eval_texts)
    got = index.hits(texts[:50], 0) + index.hits(texts[50:51], 50) + index.hits(texts[51:], 51)
    assert [h.__dict__ for h in got] == [h.__dict__ for h in expected] and expected


# ------------------------------------------------------------------------------------------- the data verbs


def _in_memory(spec, steps, eval_texts):
    """What `tunelab data <verb>` wrote before streaming: read all, curate the list, dump."""
    from tunelab.data.stage import _row

    rows, _, examples, format_rejects = read_examples(resolve_data_path(spec.path), spec)
    result = curate(examples, spec.curate, eval_texts, steps)
    data = "".join(json.dumps(_row(ex), ensure_ascii=False) + "\n" for ex in result.examples)
    return rows, data, format_rejects + result.rejects, result.steps


def test_curate_verb_streams_the_same_rows_rejects_and_counts(tmp_path):
    src = tmp_path / "d.jsonl"
    src.write_text("\n".join(_rows()) + "\n", encoding="utf-8")
    eval_file = tmp_path / "eval.jsonl"
    eval_text = json.loads(_rows()[20])["completion"]
    eval_file.write_text(json.dumps({"question": eval_text}) + "\n")
    recipe = tmp_path / "r.yaml"
    recipe.write_text(f"data:\n  path: {src}\n  on_error: skip\n  curate:\n"
                      f"    steps: [clean, pii, filter, dedup, decontam]\n    decontam:\n      files: [{eval_file}]\n")
    out = tmp_path / "out"
    assert main(["data", "curate", str(recipe), "-o", str(out)]) == 0

    spec = load_recipe(str(recipe), []).data
    rows, data, rejects, steps = _in_memory(spec, spec.curate.steps, [eval_text])
    assert (out / "data.jsonl").read_text(encoding="utf-8") == data
    write_rejects(rejects, tmp_path / "expected_rejects.jsonl")
    assert (out / "rejects.jsonl").read_bytes() == (tmp_path / "expected_rejects.jsonl").read_bytes()
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["steps"][1:] == [json.loads(json.dumps(s.to_dict())) for s in steps]
    assert manifest["rows_in"] == rows == manifest["rows_out"] + manifest["rejected"]
    by_step = {s["step"]: s for s in manifest["steps"]}
    assert by_step["read"]["rejected"] == 3 and by_step["dedup"]["rejected"] > 10
    assert by_step["decontam"]["rejected"] >= 1 and by_step["pii"]["modified"] == 1
    assert not [p for p in tmp_path.iterdir() if ".work-" in p.name]  # the work folder is gone


def test_a_failure_midway_leaves_no_output_and_no_work_folder(tmp_path, capsys):
    src = tmp_path / "d.jsonl"
    src.write_text("\n".join(_rows()) + "\n", encoding="utf-8")
    out = tmp_path / "out"
    assert main(["data", "dedup", str(src), "-o", str(out)]) == 2  # malformed lines, on_error=stop
    assert f"error: {src}:" in capsys.readouterr().err
    assert not out.exists()
    assert not [p for p in tmp_path.iterdir() if ".work-" in p.name]


def test_all_rows_malformed_with_skip_is_a_clear_error(tmp_path, capsys):
    src = tmp_path / "d.jsonl"
    src.write_text("{bad\n[1]\n")
    assert main(["data", "clean", str(src), "-o", str(tmp_path / "o"), "--on-error", "skip"]) == 2
    assert "no readable records (2 malformed rows skipped)" in capsys.readouterr().err


def test_rejects_are_kept_as_records(tmp_path):
    r = Reject("f:1", "why (details)", {"raw": "x"}, step="dedup")
    spill = Spill(tmp_path / "r.jsonl", "reject")
    spill.append(r)
    assert list(spill) == [r]


# ------------------------------------------------------------------------------------------------ the report


def test_report_streams_the_same_json_as_the_in_memory_audit(tmp_path, tokenizer):
    from tunelab.data.audit import audit_examples
    from tunelab.data.stage import report_file

    src = tmp_path / "d.jsonl"
    lines = _rows()
    lines += [json.dumps({"prompt": "Question 7?", "completion": "A different answer to an old question."}),
              json.dumps({"prompt": "Question 7 ?!", "completion": "Yet another answer."})]
    src.write_text("\n".join(lines) + "\n", encoding="utf-8")
    eval_file = tmp_path / "eval.jsonl"
    eval_file.write_text(json.dumps({"q": json.loads(lines[30])["completion"]}) + "\n")
    spec = load_recipe(None, [f"data.path={src}", "data.on_error=skip", "data.max_length=64"]).data
    report, html = report_file(spec, tmp_path / "rep", eval_files=[str(eval_file)], model="smollm2-135m-instruct",
                               progress=False)

    rows, fmt, examples, rejects = read_examples(src, spec)
    from tunelab.data.pipeline import eval_file_texts

    expected = audit_examples(examples, rejects, tokenizer=tokenizer, max_length=64, source=report["source"],
                              eval_texts=eval_file_texts([str(eval_file)], spec), progress=False)
    assert json.dumps(report) == json.dumps(expected)
    assert report["counts"]["rows"] == rows and report["counts"]["rejected"] == 3
    assert report["duplicates"]["removable"] > 10 and report["inconsistent"]["prompts"] > 0
    assert report["eval_overlap"]["count"] >= 1 and report["pii"]["rows"] == 1
    assert report["lengths"]["truncation"]["count"] > 0
    assert html.is_file()


def _numpy_stats(values):
    """The report's statistics as numpy computes them on the expanded values (the in-memory definition)."""
    import numpy as np

    a = np.asarray(values, dtype=np.float64)
    counts, edges = np.histogram(a, bins=min(20, max(1, len(np.unique(a)))))
    r = lambda x: round(float(x), 6)  # noqa: E731
    return {"count": int(a.size), "min": r(a.min()), "mean": r(a.mean()), "p50": r(np.percentile(a, 50)),
            "p95": r(np.percentile(a, 95)), "max": r(a.max()),
            "histogram": {"edges": [r(e) for e in edges], "counts": counts.tolist()}}


def test_length_statistics_from_counts_equal_numpy_on_the_expanded_values():
    from collections import Counter

    from tunelab.data.audit import _stats

    rng = random.Random(5)
    samples = [[7], [3, 3, 3], [1, 2], list(range(40))]
    samples += [[int(rng.paretovariate(1.3) * 50) for _ in range(rng.randint(1, 3000))] for _ in range(40)]
    for values in samples:
        assert _stats(Counter(values)) == _numpy_stats(values)


def test_top_counts_are_exact_past_the_string_budget(monkeypatch):
    from collections import Counter

    import tunelab.data.stream as stream

    rng = random.Random(2)
    keys = [rng.choice(["w", "灵", "up"]) + str(int(rng.paretovariate(1.1)) % 300) for _ in range(20_000)]
    expected = dict(sorted(((k, c) for k, c in Counter(keys).items() if k != "w1"), key=lambda kv: (-kv[1], kv[0]))[:20])
    recovered = 0
    for watch in (4096, 3):  # with 3 strings watched, the top needs the second pass
        monkeypatch.setattr(stream, "_TOP_WATCH", watch)
        counts = stream.TopCounts(keep_strings=50)
        for i in range(0, len(keys), 999):
            counts.add(keys[i:i + 999])
        top = counts.top(20, {"w1"})
        if top is None:
            recovered += 1
            counts.begin_recovery(20, {"w1"})
            for i in range(0, len(keys), 700):
                counts.recover(keys[i:i + 700])
            top = counts.top(20, {"w1"})
        assert top == expected and counts.total == len(keys) and counts.distinct == len(set(keys))
    assert recovered == 1
