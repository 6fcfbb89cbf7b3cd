"""Curation wired into datasets: the steps, the counts, the dataset folder, the CLI and the recipe path."""

import json

import pytest

from tunelab.cli.main import main
from tunelab.config import load_recipe
from tunelab.data import prepare_data
from tunelab.data.curate import curate
from tunelab.data.records import Example

ANSWERS = [
    "Paris is the capital of France and its largest city by far.",
    "Water boils at one hundred degrees Celsius at sea level pressure.",
    "The mitochondria is the part of the cell that produces most of its energy.",
    "Photosynthesis turns light, water and carbon dioxide into sugar and oxygen.",
    "The Pacific is the largest and deepest of the five oceans on Earth.",
    "A haiku is a short poem with three lines of five, seven and five syllables.",
]


def _rows():
    rows = [{"prompt": f"Question {i}?", "completion": a} for i, a in enumerate(ANSWERS)]
    rows.append({"prompt": "Question 0?", "completion": ANSWERS[0]})  # exact duplicate
    rows.append({"prompt": "Question 1 again?", "completion": ANSWERS[1].replace("one hundred", "100")})
    rows.append({"prompt": "Contact?", "completion": "Write to jane.doe@example.com or call +1 415 555 0132."})
    rows.append({"prompt": "Help me.", "completion": "I'm sorry, but as an AI language model I cannot help with that."})
    rows.append({"prompt": "Spaces", "completion": "cafÃ©   is   nice"})
    return rows


@pytest.fixture()
def data_file(tmp_path):
    path = tmp_path / "d.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in _rows()))
    return path


def _examples():
    return [Example([{"role": "user", "content": r["prompt"]}, {"role": "assistant", "content": r["completion"]}],
                    None, f"d.jsonl:{i + 1}", r) for i, r in enumerate(_rows())]


def test_steps_remove_and_rewrite_with_counts_that_add_up():
    spec = load_recipe(None, ["data.path=x", "data.curate.steps=[clean, pii, filter, dedup]"]).data.curate
    result = curate(_examples(), spec)
    texts = [ex.messages[-1]["content"] for ex in result.examples]
    assert "café is nice" in texts
    assert any("<EMAIL>" in t and "<PHONE>" in t for t in texts)
    assert not any("as an AI language model" in t for t in texts)
    steps = {r.step: r for r in result.steps}
    for r in result.steps:
        assert r.rows_in == r.kept + r.rejected
    assert steps["pii"].details["found_by_type"] == {"EMAIL": 1, "PHONE": 1}
    assert steps["filter"].rejected == 1 and steps["dedup"].rejected >= 1
    assert {rej.step for rej in result.rejects} == {"filter", "dedup"}
    assert len(result.examples) + len(result.rejects) == len(_rows())


def test_decontam_drops_rows_that_overlap_evaluation_text():
    spec = load_recipe(None, ["data.path=x", "data.curate.steps=[decontam]", "data.curate.decontam.n=8"]).data.curate
    eval_text = "Some intro. " + ANSWERS[2] + " And more."
    result = curate(_examples(), spec, [eval_text])
    assert [r.where for r in result.rejects] == ["d.jsonl:3"]
    assert "overlaps evaluation data" in result.rejects[0].reason


def test_cli_dedup_writes_a_dataset_folder_and_a_recipe_can_train_on_it(data_file, tmp_path, tokenizer, capsys):
    out = tmp_path / "ds"
    assert main(["data", "dedup", str(data_file), "-o", str(out)]) == 0
    manifest = json.loads((out / "manifest.json").read_text())
    rows = (out / "data.jsonl").read_text().splitlines()
    rejects = [json.loads(x) for x in (out / "rejects.jsonl").read_text().splitlines()]
    assert manifest["rows_in"] == len(_rows()) == len(rows) + len(rejects)
    assert all(r["step"] == "dedup" for r in rejects) and manifest["fingerprint"]
    assert manifest["inputs"][0]["sha256"]
    # The folder is a valid data.path.
    data = prepare_data(load_recipe(None, [f"data.path={out}", "data.split.test=0", "data.split.validation=0"]).data,
                        tokenizer)
    assert len(data.splits["train"]) == len(rows)
    # Same input, same output (byte for byte).
    out2 = tmp_path / "ds2"
    assert main(["data", "dedup", str(data_file), "-o", str(out2)]) == 0
    assert (out2 / "data.jsonl").read_bytes() == (out / "data.jsonl").read_bytes()


def test_cli_and_recipe_paths_give_the_same_rows(data_file, tmp_path, tokenizer):
    out = tmp_path / "c"
    assert main(["data", "pii", str(data_file), "-o", str(out)]) == 0
    cli_rows = [json.loads(x)["messages"] for x in (out / "data.jsonl").read_text().splitlines()]
    spec = load_recipe(None, [f"data.path={data_file}", "data.curate.steps=[pii]", "data.split.test=0",
                              "data.split.validation=0"]).data
    data = prepare_data(spec, tokenizer)
    recipe_rows = sorted(json.dumps(ex.messages) for ex in data.splits["train"])
    assert recipe_rows == sorted(json.dumps(m) for m in cli_rows)
    assert data.summary["curation"][-1]["step"] == "pii"


def test_cli_data_errors(tmp_path, capsys):
    assert main(["data", "dedup", str(tmp_path / "missing.jsonl"), "-o", str(tmp_path / "o")]) == 2
    assert "missing.jsonl" in capsys.readouterr().err
    f = tmp_path / "d.jsonl"
    f.write_text(json.dumps({"prompt": "a", "completion": "b"}) + "\n")
    assert main(["data", "decontam", str(f), "-o", str(tmp_path / "o")]) == 2
    assert "--eval" in capsys.readouterr().err
    assert main(["data", "dedup", str(f), "-o", str(tmp_path / "o2"), "curate.dedup.treshold=0.5"]) == 2
    assert "did you mean 'data.curate.dedup.threshold'" in capsys.readouterr().err


def test_cli_data_report_writes_json_and_html(data_file, tmp_path, capsys):
    out = tmp_path / "rep"
    assert main(["data", "report", str(data_file), "-o", str(out)]) == 0
    report = json.loads((out / "data_report.json").read_text())
    assert report["counts"]["rows"] == len(_rows())
    assert report["pii"]["by_type"] == {"EMAIL": 1, "PHONE": 1}
    assert report["duplicates"]["exact"] >= 1
    assert any(f["severity"] == "high" for f in report["findings"])
    html = (out / "data_report.html").read_text()
    assert "<html" in html.lower() and "jane.doe@example.com" not in html


def test_on_error_skip_keeps_malformed_rows_as_rejects(tmp_path, tokenizer, capsys):
    f = tmp_path / "bad.jsonl"
    good = [json.dumps({"prompt": f"q{i}", "completion": f"answer number {i}"}) for i in range(5)]
    f.write_text("\n".join([good[0], "{broken", good[1], "[1, 2]", *good[2:]]) + "\n")
    assert main(["data", "clean", str(f), "-o", str(tmp_path / "stop")]) == 2
    assert f"{f}:2" in capsys.readouterr().err
    out = tmp_path / "skip"
    assert main(["data", "clean", str(f), "-o", str(out), "--on-error", "skip"]) == 0
    manifest = json.loads((out / "manifest.json").read_text())
    rejects = [json.loads(x) for x in (out / "rejects.jsonl").read_text().splitlines()]
    assert manifest["rows_in"] == 7 and manifest["rows_out"] == 5
    assert [r["where"] for r in rejects] == [f"{f}:2", f"{f}:4"]
    assert rejects[0]["reason"].startswith("malformed JSON") and rejects[0]["record"] == {"raw": "{broken"}
    # The recipe path counts them too.
    spec = load_recipe(None, [f"data.path={f}", "data.on_error=skip", "data.split.test=0",
                              "data.split.validation=0"]).data
    data = prepare_data(spec, tokenizer)
    assert data.summary["rows_read"] == 7 and len(data.splits["train"]) == 5
    assert sum(data.summary["rejected"].values()) == 2
