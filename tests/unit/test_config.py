from pathlib import Path

import pytest

from tunelab.config import dump_recipe, load_recipe
from tunelab.errors import TunelabError


def write(tmp_path: Path, text: str) -> Path:
    p = tmp_path / "r.yaml"
    p.write_text(text, encoding="utf-8")
    return p


def test_defaults_and_overrides(tmp_path):
    p = write(tmp_path, "data:\n  path: d.jsonl\ntrain:\n  lr: 0.001\n")
    r = load_recipe(p, ["train.batch_size=4", "method.lora.r=8", "data.columns={prompt: a, completion: b}"])
    assert r.train.lr == 0.001 and r.train.batch_size == 4 and r.method.lora.r == 8
    assert r.data.columns == {"prompt": "a", "completion": "b"}
    assert r.model.name == "smollm2-135m-instruct"


def test_unknown_key_has_line_and_did_you_mean(tmp_path):
    p = write(tmp_path, "data:\n  path: d.jsonl\ntrain:\n  epochs: 1\n  lrr: 0.1\n")
    with pytest.raises(TunelabError) as e:
        load_recipe(p)
    msg = str(e.value)
    assert f"{p}:5" in msg and "train.lrr" in msg and "did you mean 'train.lr'" in msg


def test_unknown_section(tmp_path):
    p = write(tmp_path, "data:\n  path: d.jsonl\ntrian:\n  lr: 1\n")
    with pytest.raises(TunelabError, match="did you mean 'train'"):
        load_recipe(p)


def test_wrong_type_names_key_and_value(tmp_path):
    p = write(tmp_path, "data:\n  path: d.jsonl\ntrain:\n  batch_size: big\n")
    with pytest.raises(TunelabError) as e:
        load_recipe(p)
    assert f"{p}:4" in str(e.value) and "train.batch_size" in str(e.value) and "'big'" in str(e.value)


def test_wrong_type_from_override():
    with pytest.raises(TunelabError, match="command line.*train.lr"):
        load_recipe(None, ["data.path=x", "train.lr=fast"])


def test_missing_data_path():
    with pytest.raises(TunelabError, match="missing required key 'data'"):
        load_recipe(None, ["train.lr=0.1"])


def test_missing_file_and_bad_yaml(tmp_path):
    with pytest.raises(TunelabError, match="recipe file not found"):
        load_recipe(tmp_path / "nope.yaml")
    with pytest.raises(TunelabError, match=r"r.yaml:\d+: invalid YAML"):
        load_recipe(write(tmp_path, "data:\n  path: x\n   bad: [1\n"))


def test_bad_override_syntax():
    with pytest.raises(TunelabError, match="key.sub=value"):
        load_recipe(None, ["data.path"])


@pytest.mark.parametrize("name", ["../evil", "a/b", ".."])
def test_output_name_cannot_traverse(name):
    with pytest.raises(TunelabError, match="output.name"):
        load_recipe(None, ["data.path=x", f"output.name={name}"])


def test_split_must_leave_training_rows():
    with pytest.raises(TunelabError, match="at least 10%"):
        load_recipe(None, ["data.path=x", "data.split.validation=0.5", "data.split.test=0.45"])


def test_dump_round_trips(tmp_path):
    r = load_recipe(None, ["data.path=x", "train.max_steps=3"])
    again = load_recipe(write(tmp_path, dump_recipe(r)))
    assert again == r


def test_docs_config_reference_is_up_to_date():
    from tunelab.config.reference import render_reference

    doc = Path(__file__).resolve().parents[2] / "docs" / "config.md"
    assert doc.read_text(encoding="utf-8") == render_reference(), "run: python -m tunelab.config.reference > docs/config.md"
