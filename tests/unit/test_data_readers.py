"""Readers: every file kind, and a clear error (what, where, fix) for every broken file."""

from __future__ import annotations

import json

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from tunelab.data import read_records
from tunelab.errors import TunelabError


def _write(path, text, encoding="utf-8"):
    path.write_bytes(text.encode(encoding))
    return path


def test_jsonl_skips_blank_lines_and_numbers_lines(tmp_path):
    p = _write(tmp_path / "d.jsonl", '{"a": 1}\n\n{"a": 2}\n')
    assert read_records(p) == [(f"{p}:1", {"a": 1}), (f"{p}:3", {"a": 2})]


def test_jsonl_malformed_line_names_file_line_and_json_error(tmp_path):
    p = _write(tmp_path / "d.jsonl", '{"a": 1}\n{"a": \n')
    with pytest.raises(TunelabError) as e:
        read_records(p)
    assert e.value.where == f"{p}:2"
    assert "malformed JSON" in e.value.what and "Expecting value" in e.value.what


def test_jsonl_record_that_is_not_an_object(tmp_path):
    p = _write(tmp_path / "d.jsonl", '{"a": 1}\n[1, 2]\n')
    with pytest.raises(TunelabError, match="not an object") as e:
        read_records(p)
    assert e.value.where == f"{p}:2"


def test_json_array_and_object_with_one_list_field(tmp_path):
    rows = [{"a": 1}, {"a": 2}]
    p1 = _write(tmp_path / "a.json", json.dumps(rows))
    p2 = _write(tmp_path / "b.json", json.dumps({"version": 1, "data": rows}))
    assert read_records(p1) == [(f"{p1}:#0", {"a": 1}), (f"{p1}:#1", {"a": 2})]
    assert [r for _, r in read_records(p2)] == rows


def test_json_wrong_shapes(tmp_path):
    with pytest.raises(TunelabError, match="one list field"):
        read_records(_write(tmp_path / "a.json", '{"x": 1}'))
    with pytest.raises(TunelabError, match="not an object") as e:
        read_records(_write(tmp_path / "b.json", '[{"a": 1}, "text"]'))
    assert e.value.where.endswith("b.json:#1")
    with pytest.raises(TunelabError, match="malformed JSON") as e:
        read_records(_write(tmp_path / "c.json", '[\n{"a": 1},\n{"a" 2}\n]'))
    assert e.value.where.endswith("c.json:3")


def test_csv_quoting_multiline_fields_and_row_start_lines(tmp_path):
    p = _write(tmp_path / "d.csv", 'prompt,completion\n"a, b",x\n"multi\nline",y\nplain,z\n')
    assert read_records(p) == [
        (f"{p}:2", {"prompt": "a, b", "completion": "x"}),
        (f"{p}:3", {"prompt": "multi\nline", "completion": "y"}),
        (f"{p}:5", {"prompt": "plain", "completion": "z"}),
    ]


def test_tsv_default_tab_and_literal_quotes(tmp_path):
    p = _write(tmp_path / "d.tsv", 'text\tlabel\nsays "hi\tpos\nnext\tneg\n')
    assert [r for _, r in read_records(p)] == [{"text": 'says "hi', "label": "pos"}, {"text": "next", "label": "neg"}]


def test_delimited_txt_splits_on_last_delimiter(tmp_path):
    p = _write(tmp_path / "d.txt", "text;label_name\ni feel; quite; sad;sadness\nfine;joy\n")
    assert [r for _, r in read_records(p, delimiter=";")] == [
        {"text": "i feel; quite; sad", "label_name": "sadness"},
        {"text": "fine", "label_name": "joy"},
    ]


def test_custom_delimiter_for_csv_and_short_rows_keep_present_columns(tmp_path):
    p = _write(tmp_path / "d.csv", "a|b|c\n1|2|3\n4|5\n")
    assert [r for _, r in read_records(p, delimiter="|")] == [{"a": "1", "b": "2", "c": "3"}, {"a": "4", "b": "5"}]


def test_delimited_header_must_be_unique_and_rows_present(tmp_path):
    with pytest.raises(TunelabError, match="header"):
        read_records(_write(tmp_path / "a.csv", "x,x\n1,2\n"))
    with pytest.raises(TunelabError, match="no records"):
        read_records(_write(tmp_path / "b.csv", "x,y\n"))


def test_plain_txt_one_record_per_nonempty_line_crlf(tmp_path):
    p = _write(tmp_path / "d.txt", "first line\r\n\r\nsecond line\r\n")
    assert read_records(p) == [(f"{p}:1", {"text": "first line"}), (f"{p}:3", {"text": "second line"})]


def test_parquet(tmp_path):
    p = tmp_path / "d.parquet"
    pq.write_table(pa.table({"prompt": ["a", "b"], "n": [1, 2]}), p)
    assert read_records(p) == [(f"{p}:#0", {"prompt": "a", "n": 1}), (f"{p}:#1", {"prompt": "b", "n": 2})]


def test_utf8_bom_is_dropped(tmp_path):
    p = _write(tmp_path / "d.csv", "\ufeffprompt,completion\na,b\n")
    assert read_records(p)[0][1] == {"prompt": "a", "completion": "b"}


@pytest.mark.parametrize(
    ("name", "content", "match"),
    [("nope.jsonl", None, "file not found"), ("e.jsonl", "", "file is empty"), ("w.jsonl", "\n \n", "empty"),
     ("d.xlsx", "x", "unsupported file type"), ("e.parquet", "", "file is empty")],
)
def test_file_level_errors(tmp_path, name, content, match):
    p = tmp_path / name
    if content is not None:
        p.write_text(content)
    with pytest.raises(TunelabError, match=match) as e:
        read_records(p)
    assert str(p) in e.value.where and e.value.fix


def test_folder_is_not_a_file(tmp_path):
    (tmp_path / "x.jsonl").mkdir()
    with pytest.raises(TunelabError, match="folder"):
        read_records(tmp_path / "x.jsonl")


def test_wrong_encoding_says_which_setting_to_change(tmp_path):
    p = _write(tmp_path / "d.txt", "ok line\ncaf\u00e9 au lait\n", encoding="latin-1")
    with pytest.raises(TunelabError, match="not valid utf-8") as e:
        read_records(p)
    assert e.value.where == f"{p}:2" and "data.encoding" in e.value.fix
    assert read_records(p, encoding="latin-1")[1][1] == {"text": "caf\u00e9 au lait"}
    with pytest.raises(TunelabError, match="unknown text encoding"):
        read_records(p, encoding="no-such-codec")


@pytest.mark.shared_data
def test_emotion_file(shared_data):
    records = read_records(shared_data / "emotion" / "val.txt", delimiter=";")
    assert len(records) == 2000
    assert all(set(r) == {"text", "label_name"} for _, r in records)
    assert {r["label_name"] for _, r in records} == {"anger", "fear", "joy", "love", "sadness", "surprise"}
    assert records[0][0].endswith("val.txt:2")
