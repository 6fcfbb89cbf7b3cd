"""prepare_data end to end: splits and encodings aligned, every row accounted for, cache, limits, files."""

from __future__ import annotations

import json
import sys
import types

import pytest

from tunelab.config.specs import DataSpec, SplitSpec
from tunelab.data import PreparedData, Reject, prepare_data, write_rejects
from tunelab.errors import TunelabError


@pytest.fixture(autouse=True)
def _own_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("TUNELAB_DATA_CACHE", str(tmp_path / "cache"))


def _jsonl(path, rows):
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def _rows(n, bad=()):
    return [{"prompt": f"question {i}?"} if i in bad else {"prompt": f"question {i}?", "completion": f"answer {i}"}
            for i in range(n)]


def _check_accounting(data: PreparedData):
    for name, s in data.summary["splits"].items():
        assert len(data.splits[name]) == len(data.encoded[name]) == s["kept"]
        assert s["rows_read"] == s["kept"] + sum(s["rejected"].values()) + s["not_used_limit"]
        assert s["tokens"] == sum(e["n_tokens"] for e in data.encoded[name])
    assert sum(s["rows_read"] for s in data.summary["splits"].values()) == data.summary["rows_read"]
    assert len(data.rejects) == sum(data.summary["rejected"].values())


def test_prepare_data_splits_encodes_and_counts(tmp_path, tokenizer):
    path = _jsonl(tmp_path / "d.jsonl", _rows(100, bad={3, 50, 77}))
    data = prepare_data(DataSpec(path=str(path), split=SplitSpec(validation=0.2, test=0.2)), tokenizer)
    _check_accounting(data)
    assert data.summary["rows_read"] == 100 and data.summary["kept"] == 97
    assert data.summary["rejected"] == {"missing field 'completion'": 3}
    assert {r.where for r in data.rejects} == {f"{path}:4", f"{path}:51", f"{path}:78"}
    assert all(len(data.splits[k]) > 5 for k in ("train", "validation", "test"))
    train = data.summary["splits"]["train"]
    assert train["format"] == "prompt_completion" and len(train["sha256"]) == 64
    assert train["max_len"] >= train["mean_len"] > 0 and 0 < train["loss_tokens"] < train["tokens"]
    for ex, enc in zip(data.splits["test"], data.encoded["test"], strict=True):
        assert ex.reference in tokenizer.decode(enc["input_ids"])
    assert len(data.fingerprint) == 64 and not data.from_cache


def test_cache_hit_returns_identical_results(tmp_path, tokenizer):
    path = _jsonl(tmp_path / "d.jsonl", _rows(40, bad={5}))
    spec = DataSpec(path=str(path))
    first = prepare_data(spec, tokenizer)
    assert list((tmp_path / "cache").glob("*.json"))
    second = prepare_data(spec, tokenizer)
    assert second.from_cache and second == first
    assert json.dumps(second.to_dict()) == json.dumps(first.to_dict())
    # Any change to the inputs or the spec is a different entry.
    assert prepare_data(spec.model_copy(update={"max_length": 256}), tokenizer).fingerprint != first.fingerprint
    _jsonl(path, _rows(41))
    assert prepare_data(spec, tokenizer).fingerprint != first.fingerprint


def test_overlength_drop_and_truncate_are_counted(tmp_path, tokenizer):
    rows = _rows(30) + [{"prompt": "long", "completion": "word " * 200}]
    path = _jsonl(tmp_path / "d.jsonl", rows)
    split = SplitSpec(validation=0.0, test=0.0)
    dropped = prepare_data(DataSpec(path=str(path), max_length=128, split=split), tokenizer)
    assert dropped.summary["splits"]["train"]["rejected"] == {"longer than max_length": 1}
    cut = prepare_data(DataSpec(path=str(path), max_length=128, overlength="truncate", split=split), tokenizer)
    assert cut.summary["splits"]["train"]["truncated"] == 1 and cut.summary["kept"] == 31
    assert cut.summary["splits"]["train"]["max_len"] == 128


def test_separate_validation_and_test_files(tmp_path, tokenizer):
    main = _jsonl(tmp_path / "train.jsonl", _rows(30))
    val = _jsonl(tmp_path / "val.jsonl", _rows(8, bad={0}))
    test = tmp_path / "test.csv"
    test.write_text("question,answer\nq1,a1\nq2,a2\n")
    spec = DataSpec(path=str(main), validation_path=str(val), test_path=str(test),
                    columns={"prompt": "question", "completion": "answer"})
    # columns map test.csv; train/val keep their canonical names, which mapping leaves alone.
    data = prepare_data(spec, tokenizer)
    _check_accounting(data)
    assert len(data.splits["train"]) == 30  # no share of the main file is held out
    assert len(data.splits["validation"]) == 7 and len(data.splits["test"]) == 2
    assert data.summary["splits"]["test"]["source"] == str(test)
    assert set(data.summary["files"]) == {"train", "validation", "test"}


def test_limits_take_the_first_kept_rows_of_each_split(tmp_path, tokenizer):
    path = _jsonl(tmp_path / "d.jsonl", _rows(200, bad={0, 1}))
    spec = DataSpec(path=str(path), limit=10, eval_limit=3)
    data = prepare_data(spec, tokenizer)
    _check_accounting(data)
    assert [len(data.splits[k]) for k in ("train", "validation", "test")] == [10, 3, 3]
    full = prepare_data(DataSpec(path=str(path)), tokenizer)
    assert data.splits["train"] == full.splits["train"][:10]
    assert data.summary["splits"]["train"]["not_used_limit"] > 0


def test_empty_training_split_explains_why(tmp_path, tokenizer):
    path = _jsonl(tmp_path / "d.jsonl", [{"prompt": "p", "completion": ""}] * 4 + [{"prompt": "p"}])
    with pytest.raises(TunelabError, match=r"5 rows read, 5 rejected .*'empty field 'completion'' x4") as e:
        prepare_data(DataSpec(path=str(path), format="prompt_completion"), tokenizer)
    assert e.value.where == str(path)


def test_missing_input_file(tmp_path, tokenizer):
    with pytest.raises(TunelabError, match="file not found"):
        prepare_data(DataSpec(path=str(tmp_path / "none.jsonl")), tokenizer)


def test_demo_path_is_materialized_by_the_demo_module(tmp_path, tokenizer, monkeypatch):
    path = _jsonl(tmp_path / "demo.jsonl", [{"messages": [{"role": "user", "content": f"q{i}"},
                                                          {"role": "assistant", "content": f"a{i}"}]}
                                            for i in range(20)])
    calls = []
    fake = types.ModuleType("tunelab.data.demo")
    fake.materialize = lambda name: calls.append(name) or path
    monkeypatch.setitem(sys.modules, "tunelab.data.demo", fake)
    data = prepare_data(DataSpec(path="demo:support_tickets"), tokenizer)
    assert calls == ["support_tickets"] and data.summary["files"]["train"]["format"] == "messages"


def test_write_rejects(tmp_path):
    rejects = [Reject("f:2", "missing field 'completion'", {"prompt": "p"}), Reject("f:9", "other", None)]
    out = write_rejects(rejects, tmp_path / "sub" / "rejects.jsonl")
    rows = [json.loads(line) for line in out.read_text().splitlines()]
    assert rows == [r.to_dict() for r in rejects]
    assert set(rows[0]) == {"where", "reason", "record", "step"}


@pytest.mark.shared_data
def test_emotion_pipeline(shared_data, tokenizer):
    spec = DataSpec(path=str(shared_data / "emotion" / "val.txt"), delimiter=";",
                    columns={"prompt": "text", "completion": "label_name"},
                    prompt_template="Classify the emotion of this text: {prompt}", limit=200, eval_limit=50)
    data = prepare_data(spec, tokenizer)
    _check_accounting(data)
    assert data.summary["rows_read"] == 2000 and data.summary["rejected"] == {}
    ex = data.splits["test"][0]
    assert ex.prompt_messages[-1]["content"].startswith("Classify the emotion of this text: ")
    assert ex.reference in {"anger", "fear", "joy", "love", "sadness", "surprise"}
