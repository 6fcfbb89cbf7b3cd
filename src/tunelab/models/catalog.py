"""What `tunelab models` lists: builtin, converted and locally cached models with sizes and memory."""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path

from tunelab.methods import estimate_training_memory_mb
from tunelab.models.registry import BUILTINS, builtin_cache_dir, builtin_source

__all__ = ["ModelEntry", "list_models"]


@dataclass
class ModelEntry:
    name: str
    source: str
    status: str
    params: int | None
    description: str = ""

    def memory_mb(self) -> dict[str, float | None]:
        """Estimated training memory without activations: LoRA on a bf16 base, and full fine-tuning."""
        if not self.params:
            return {"lora": None, "full": None}
        lora_trainable = int(self.params * 0.035)  # r=16 on all linear layers is ~3.5% of a small LLaMA
        return {"lora": estimate_training_memory_mb(self.params, lora_trainable, base_bytes=2),
                "full": estimate_training_memory_mb(self.params, self.params)}


def _safetensors_params(folder: Path) -> int | None:
    from safetensors import safe_open

    total = 0
    files = list(folder.glob("*.safetensors"))
    if not files:
        return None
    for f in files:
        with safe_open(f, "pt") as st:
            for key in st.keys():  # noqa: SIM118 (safe_open is not a dict)
                n = 1
                for d in st.get_slice(key).get_shape():
                    n *= d
                total += n
    return total


def _gguf_params(path: Path) -> int | None:
    try:
        from gguf import GGUFReader

        return int(sum(int(t.n_elements) for t in GGUFReader(str(path)).tensors))
    except Exception:  # a damaged file still gets listed, just without a size
        return None


def _builtin_entries() -> list[ModelEntry]:
    out = []
    for b in BUILTINS.values():
        src = builtin_source(b)
        cache = builtin_cache_dir(b.alias)
        if src is None:
            out.append(ModelEntry(b.alias, "builtin", f"not installed ({b.pip})", None, b.description))
        elif src.is_dir():
            out.append(ModelEntry(b.alias, "builtin", "ready", _safetensors_params(src), b.description))
        elif (cache / "config.json").is_file():
            out.append(ModelEntry(b.alias, "builtin", "ready (cached)", _safetensors_params(cache), b.description))
        else:
            out.append(ModelEntry(b.alias, "builtin", "installed (converted on first use)", _gguf_params(src),
                                  b.description))
    return out


def _hub_cache_entries() -> list[ModelEntry]:
    hub = Path(os.environ.get("HF_HUB_CACHE", Path(os.environ.get("HF_HOME", Path.home() / ".cache" / "huggingface"))
                              / "hub"))
    out = []
    for repo in sorted(hub.glob("models--*")):
        snaps = sorted((repo / "snapshots").glob("*/config.json"))
        if not snaps:
            continue
        name = repo.name[len("models--"):].replace("--", "/")
        try:
            arch = ",".join(json.loads(snaps[-1].read_text()).get("architectures") or [])
        except (OSError, json.JSONDecodeError):
            arch = "?"
        out.append(ModelEntry(name, "hub-cache", "ready", _safetensors_params(snaps[-1].parent), arch))
    return out


def list_models() -> list[ModelEntry]:
    return _builtin_entries() + _hub_cache_entries()
