import json
import subprocess
import sys

import pytest

from tunelab.cli.main import main

VERBS = ["run", "train", "eval", "chat", "models", "validate"]


@pytest.mark.parametrize("verb", VERBS)
def test_every_verb_help_shows_an_example(verb, capsys):
    with pytest.raises(SystemExit) as e:
        main([verb, "--help"])
    assert e.value.code == 0
    out = capsys.readouterr().out
    assert "example" in out and "tunelab " in out


def test_console_script_entry_point():
    proc = subprocess.run([sys.executable, "-m", "tunelab.cli.main", "--help"], capture_output=True, text=True)
    assert proc.returncode == 0 and "tunelab run examples/quickstart.yaml" in proc.stdout


def test_no_verb_prints_help_and_exits_2(capsys):
    assert main([]) == 2


def _err(capsys) -> str:
    err = capsys.readouterr().err
    assert "Traceback" not in err
    return err


def test_missing_recipe_file(capsys):
    assert main(["train", "no/such/recipe.yaml"]) == 2
    assert "recipe file not found" in _err(capsys)


def test_unknown_config_key(tmp_path, capsys):
    p = tmp_path / "r.yaml"
    p.write_text("data:\n  path: x.jsonl\n  formatt: alpaca\n")
    assert main(["validate", str(p)]) == 2
    err = _err(capsys)
    assert f"{p}:3" in err and "did you mean 'data.format'" in err


def test_wrong_type_override(tmp_path, capsys):
    p = tmp_path / "r.yaml"
    p.write_text("data:\n  path: x.jsonl\n")
    assert main(["validate", str(p), "train.epochs=many"]) == 2
    assert "train.epochs" in _err(capsys)


def test_unknown_model(capsys):
    assert main(["chat", "gpt-17-ultra", "--prompt", "hi"]) == 2
    assert "unknown model 'gpt-17-ultra'" in _err(capsys)


def _recipe(tmp_path, data_path, model_dir, *extra):
    p = tmp_path / "r.yaml"
    p.write_text(f"data:\n  path: {data_path}\nmodel:\n  name: {model_dir}\n")
    return [str(p), f"output.dir={tmp_path / 'runs'}", *extra]


def test_missing_data_file(tmp_path, tiny_model_dir, capsys):
    assert main(["train", *_recipe(tmp_path, tmp_path / "nope.jsonl", tiny_model_dir)]) == 2
    assert "nope.jsonl" in _err(capsys)


def test_malformed_json_line_names_file_and_line(tmp_path, tiny_model_dir, capsys):
    data = tmp_path / "bad.jsonl"
    good = json.dumps({"prompt": "a", "completion": "b"})
    data.write_text(f"{good}\n{good}\n{{not json\n")
    assert main(["train", *_recipe(tmp_path, data, tiny_model_dir)]) == 2
    assert f"{data}:3" in _err(capsys)


def test_empty_after_filtering(tmp_path, tiny_model_dir, capsys):
    data = tmp_path / "long.jsonl"
    rows = [{"prompt": "word " * 200, "completion": "x"} for _ in range(5)]
    data.write_text("".join(json.dumps(r) + "\n" for r in rows))
    assert main(["train", *_recipe(tmp_path, data, tiny_model_dir, "data.max_length=32")]) == 2
    err = _err(capsys)
    assert "longer than max_length" in err


def test_eval_on_a_folder_that_is_not_a_run(tmp_path, capsys):
    assert main(["eval", str(tmp_path)]) == 2
    assert "not a finished tunelab run folder" in _err(capsys)


def test_debug_shows_the_traceback(capsys):
    with pytest.raises(Exception, match="recipe file not found"):
        main(["--debug", "train", "no/such/recipe.yaml"])


def test_models_lists_the_default(capsys):
    assert main(["models"]) == 0
    assert "smollm2-135m-instruct" in capsys.readouterr().err


def test_nproc_refusals_come_before_any_worker_starts(tmp_path, chat_jsonl, tiny_model_dir, capsys, monkeypatch):
    import tunelab.training.distributed as distributed

    def no_launch(*a, **k):
        raise AssertionError("no process may start for a refused recipe")

    monkeypatch.setattr(distributed, "launch", no_launch)
    recipe = tmp_path / "r.yaml"
    recipe.write_text("data: {path: x}\n")
    common = [str(recipe), f"data.path={chat_jsonl}", f"model.name={tiny_model_dir}", f"output.dir={tmp_path}"]
    grpo = ["train.objective=grpo", "rl.rewards=[{type: length_penalty, target: 20}]"]
    assert main(["train", *common, *grpo, "--nproc", "2"]) == 2
    assert "does not support data-parallel training (--nproc)" in capsys.readouterr().err
    assert main(["run", *common, "train.objective=preference", "train.sharding=fsdp", "--nproc", "2"]) == 2
    assert "train.sharding=fsdp is not supported with train.objective=preference" in capsys.readouterr().err
