import pytest

from tunelab.errors import TunelabError
from tunelab.models import resolve_model, resolve_precision
from tunelab.models.catalog import list_models


def test_unknown_alias_suggests_builtin():
    with pytest.raises(TunelabError, match="did you mean 'smollm2-135m-instruct'"):
        resolve_model("smollm2-135m")


@pytest.mark.parametrize("name", ["../../no-such-model-dir", "./nope", "/no/such/folder"])
def test_missing_or_traversing_paths(name):
    with pytest.raises(TunelabError, match="not found"):
        resolve_model(name)


def test_folder_without_config_or_safetensors(tmp_path):
    with pytest.raises(TunelabError, match="no config.json"):
        resolve_model(str(tmp_path))
    (tmp_path / "config.json").write_text("{}")
    (tmp_path / "pytorch_model.bin").write_bytes(b"\0")
    with pytest.raises(TunelabError, match="pickle"):
        resolve_model(str(tmp_path))


def test_hub_id_not_cached_says_what_to_do(tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(TunelabError, match="not in the local Hugging Face cache"):
        resolve_model("someorg/some-model")


def test_local_folder_resolves(tiny_model_dir):
    r = resolve_model(str(tiny_model_dir))
    assert r.source == "local" and r.kind == "causal-lm"


def test_builtin_resolves_to_cached_safetensors():
    r = resolve_model("smollm2-135m-instruct")
    assert r.source == "builtin" and (r.path / "model.safetensors").is_file()
    assert (r.path / "tokenizer.json").is_file()


def test_precision_policy(monkeypatch):
    import tunelab.models.precision as prec

    assert resolve_precision("fp32", "cpu") == "fp32"
    monkeypatch.setattr(prec, "cpu_has_fast_bf16", lambda: False)
    assert prec.resolve_precision("auto", "cpu") == "fp32"
    monkeypatch.setattr(prec, "cpu_has_fast_bf16", lambda: True)
    assert prec.resolve_precision("auto", "cpu") == "bf16"


def test_catalog_lists_builtins_with_sizes():
    entries = {e.name: e for e in list_models()}
    smol = entries["smollm2-135m-instruct"]
    assert 130e6 < smol.params < 140e6
    mem = smol.memory_mb()
    assert mem["lora"] < mem["full"]


def test_missing_folder_under_an_existing_directory_is_not_taken_for_a_hub_id(tmp_path, monkeypatch):
    (tmp_path / "runs").mkdir()
    monkeypatch.chdir(tmp_path)
    with pytest.raises(TunelabError, match="model folder not found: runs/quickstart"):
        resolve_model("runs/quickstart")
