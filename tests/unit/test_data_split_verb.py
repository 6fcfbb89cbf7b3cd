"""`tunelab data split FILE -o OUT`: train/validation/test dataset folders from the training split code."""

from __future__ import annotations

import json
import random
from collections import Counter
from pathlib import Path

import pytest

from tunelab.cli.main import main
from tunelab.config import load_recipe
from tunelab.data.pipeline import read_examples, resolve_data_path
from tunelab.data.readers import file_sha256

SPLITS = ("train", "validation", "test")
_WORDS = ("river", "mountain", "lamp", "violin", "pepper", "comet", "garden", "ladder", "orbit", "candle", "harbor",
          "meadow", "quartz", "saddle", "thunder", "velvet", "walnut", "yacht", "zebra", "anchor", "biscuit",
          "canyon", "dolphin", "ember", "falcon", "glacier", "hammock", "iris", "jungle", "kettle", "lantern",
          "marble", "nectar", "oyster", "pebble", "quiver", "raven", "summit", "tulip", "umbrella")
_STORY = ("the committee met on a rainy tuesday to review the harbor budget and after a long debate about "
          "repairs to the old pier they agreed to postpone the vote until the engineers had inspected every "
          "pillar and written a detailed report for the town council number {k}")


def _label_rows(n_per_class: dict[str, int]) -> list[dict]:
    rng = random.Random(7)
    rows = []
    for label, n in n_per_class.items():
        for _ in range(n):
            words = " ".join(rng.sample(_WORDS, 4))
            rows.append({"prompt": f"Classify: {words} #{len(rows)}", "completion": label})
    rng.shuffle(rows)
    return rows


def _write(path: Path, rows: list[dict], extra: str = "") -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows) + extra, encoding="utf-8")
    return path


def _read_split(out: Path, name: str) -> list[dict]:
    return [json.loads(x) for x in (out / name / "data.jsonl").read_text(encoding="utf-8").splitlines()]


def _split_of(out: Path) -> dict[str, str]:
    """user prompt -> the split it landed in."""
    return {r["messages"][0]["content"]: name for name in SPLITS for r in _read_split(out, name)}


def test_rerun_is_byte_identical_and_independent_of_row_order(tmp_path):
    rows = _label_rows({"pos": 30, "neg": 20})
    src = _write(tmp_path / "d.jsonl", rows)
    assert main(["data", "split", str(src), "-o", str(tmp_path / "a")]) == 0
    assert main(["data", "split", str(src), "-o", str(tmp_path / "b")]) == 0
    for name in SPLITS:
        assert (tmp_path / "a" / name / "data.jsonl").read_bytes() == (tmp_path / "b" / name / "data.jsonl").read_bytes()
        ma, mb = (json.loads((tmp_path / d / name / "manifest.json").read_text()) for d in "ab")
        assert {k: v for k, v in ma.items() if k != "created"} == {k: v for k, v in mb.items() if k != "created"}
    shuffled = _write(tmp_path / "shuffled.jsonl", list(reversed(rows)))
    assert main(["data", "split", str(shuffled), "-o", str(tmp_path / "c")]) == 0
    assert _split_of(tmp_path / "a") == _split_of(tmp_path / "c")


def test_stratification_keeps_each_class_share_in_every_split(tmp_path):
    counts = {"joy": 60, "anger": 30, "fear": 10}
    src = _write(tmp_path / "d.jsonl", _label_rows(counts))
    out = tmp_path / "out"
    assert main(["data", "split", str(src), "-o", str(out), "split.validation=0.2", "split.test=0.1"]) == 0
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["stratified"] is True
    shares = {"train": 0.7, "validation": 0.2, "test": 0.1}
    for name in SPLITS:
        got = Counter(r["messages"][-1]["content"] for r in _read_split(out, name))
        for label, n in counts.items():
            assert abs(got[label] - n * shares[name]) < 1 + 1e-9, (name, label, got)
        assert manifest["splits"][name]["labels"] == dict(sorted(got.items()))
    assert [manifest["splits"][s]["rows"] for s in SPLITS] == [70, 20, 10]


def _near_duplicate_rows() -> tuple[list[dict], list[list[str]]]:
    """60 distinct long rows plus 10 clusters of 3 rows differing by one word; returns rows and clusters."""
    rows, clusters = [], []
    rng = random.Random(3)
    for i in range(60):
        rows.append({"prompt": " ".join(rng.sample(_WORDS, 12)) + f" {i}", "completion": "ok " + str(i)})
    for k in range(10):
        base = _STORY.format(k=k)
        members = [base, base.replace("rainy", "windy"), base.replace("detailed", "careful")]
        rows += [{"prompt": m, "completion": "noted"} for m in members]
        clusters.append(members)
    return rows, clusters


def test_near_duplicate_groups_never_straddle_splits(tmp_path):
    rows, clusters = _near_duplicate_rows()
    src = _write(tmp_path / "d.jsonl", rows)
    assert main(["data", "split", str(src), "-o", str(tmp_path / "grouped"), "split.validation=0.2",
                 "split.test=0.2"]) == 0
    where = _split_of(tmp_path / "grouped")
    assert all(len({where[m] for m in members}) == 1 for members in clusters)
    assert {where[m] for members in clusters for m in members} != {"train"}  # the test is not vacuous
    # Without grouping the same rows do straddle: the check above can fail.
    assert main(["data", "split", str(src), "-o", str(tmp_path / "plain"), "split.validation=0.2",
                 "split.test=0.2", "split.group_near_duplicates=false"]) == 0
    plain = _split_of(tmp_path / "plain")
    assert any(len({plain[m] for m in members}) > 1 for members in clusters)


def test_counts_add_up_and_each_split_is_a_dataset_folder(tmp_path):
    rows = _label_rows({"pos": 15, "neg": 15})
    src = _write(tmp_path / "d.jsonl", rows, extra="{not json\n")
    out = tmp_path / "out"
    assert main(["data", "split", str(src), "-o", str(out), "--on-error", "skip"]) == 0
    manifest = json.loads((out / "manifest.json").read_text())
    rejects = (out / "rejects.jsonl").read_text().splitlines()
    sizes = {name: len(_read_split(out, name)) for name in SPLITS}
    assert manifest["rows_in"] == 31 == sum(sizes.values()) + manifest["rejected"] == 30 + len(rejects)
    assert {name: manifest["splits"][name]["rows"] for name in SPLITS} == sizes
    assert manifest["inputs"][0]["sha256"] == file_sha256(src)
    spec = load_recipe(None, ["data.path=x"]).data
    for name in SPLITS:
        m = json.loads((out / name / "manifest.json").read_text())
        assert (m["split"], m["parent"]["sha256"], m["rows_out"]) == (name, file_sha256(src), sizes[name])
        assert m["fingerprint"] == file_sha256(out / name / "data.jsonl")
        path = resolve_data_path(str(out / name))  # a split folder is a usable data.path
        assert path == out / name / "data.jsonl" and len(read_examples(path, spec)[2]) == sizes[name]


@pytest.mark.parametrize(("args", "message"), [
    (["split.validaton=0.2"], "validaton"),
    (["split.validation=0.5", "split.test=0.5"], "at least 10% for training"),
])
def test_bad_settings_exit_2(tmp_path, capsys, args, message):
    src = _write(tmp_path / "d.jsonl", _label_rows({"a": 3}))
    assert main(["data", "split", str(src), "-o", str(tmp_path / "o"), *args]) == 2
    assert message in capsys.readouterr().err


def test_non_empty_output_needs_overwrite(tmp_path, capsys):
    src = _write(tmp_path / "d.jsonl", _label_rows({"a": 3, "b": 3}))
    out = tmp_path / "o"
    assert main(["data", "split", str(src), "-o", str(out)]) == 0
    assert main(["data", "split", str(src), "-o", str(out)]) == 2
    assert "not empty" in capsys.readouterr().err
    assert main(["data", "split", str(src), "-o", str(out), "--overwrite"]) == 0
