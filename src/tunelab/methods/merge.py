"""`tunelab merge`: fold a run's adapter into its base and write a standard Transformers folder.

The folder (safetensors, config, generation config, tokenizer with the chat template) loads with
`AutoModelForCausalLM.from_pretrained` alone. Before it is published, the merged model's logits are
compared in fp32 with the unmerged adapter's, and the saved folder's with the merged model's.
"""

from __future__ import annotations

import shutil
import tempfile
from pathlib import Path
from typing import Any

import torch

from tunelab.errors import TunelabError
from tunelab.methods.peft_methods import PROMPT_LEARNING
from tunelab.util.io import atomic_write_json

__all__ = ["merge_run"]

_DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16}
# The merge is checked in fp32, where folding the adapter in changes logits only by float rounding:
# allowed difference relative to the largest logit.
_TOLERANCE = 1e-4
# A bf16 folder is compared with the fp32 adapter too: bf16 keeps ~3 significant digits per weight.
_SAVED_SLACK = {"fp32": 1.0, "bf16": 500.0}


@torch.no_grad()
def _logits(model: torch.nn.Module, ids: torch.Tensor) -> torch.Tensor:
    return model(input_ids=ids).logits.float()  # (1, T, V)


def _probe(tokenizer) -> torch.Tensor:
    text = tokenizer.apply_chat_template([{"role": "user", "content": "Merge check: say hello."}],
                                         tokenize=False, add_generation_prompt=True)
    return tokenizer(text, return_tensors="pt", add_special_tokens=False)["input_ids"]


def _check_mergeable(run: Path) -> str:
    from tunelab.config.loading import load_recipe
    from tunelab.models import is_run_dir

    if not is_run_dir(run):
        raise TunelabError(f"'{run}' is not a finished tunelab run folder (needs config.yaml and adapter/ or model/)",
                           fix="pass a folder created by `tunelab train` or `tunelab run`")
    method = load_recipe(run / "config.yaml").method.name
    if method in PROMPT_LEARNING:
        raise TunelabError(
            f"method '{method}' cannot be merged: its virtual tokens are extra inputs, not changes to weights",
            where=f"{run / 'config.yaml'}: method.name",
            fix="use the run folder itself (`tunelab chat RUN_DIR` loads the adapter onto the base), "
            "or train with lora or ia3",
        )
    if method == "bottleneck":
        raise TunelabError(
            "method 'bottleneck' cannot be merged: up(act(down(x))) is not linear, so no change to the base "
            "weights reproduces it", where=f"{run / 'config.yaml'}: method.name",
            fix="use the run folder itself (`tunelab eval`/`tunelab chat RUN_DIR` attach the adapter to the "
            "base), or train with lora or ia3")
    return method


def _prepare_out(out: Path, overwrite: bool) -> None:
    if out.exists() and (not out.is_dir() or any(out.iterdir())) and not overwrite:
        raise TunelabError(f"output folder '{out}' exists and is not empty", where="-o/--out",
                           fix="choose another folder or pass --overwrite")
    out.parent.mkdir(parents=True, exist_ok=True)


def merge_run(run_dir: str | Path, out: str | Path, dtype: str = "fp32", overwrite: bool = False) -> dict[str, Any]:
    """Merge a run's adapter into its base model and save a standard Transformers folder at `out`.

    Args:
        run_dir: a run folder from `tunelab train` (LoRA, QLoRA, IA3, DoRA, PiSSA; full/freeze re-save as is).
        out: the folder to write (replaced atomically: written beside it, then renamed).
        dtype: 'fp32' or 'bf16' weights in the saved folder.
        overwrite: replace a non-empty `out`.

    Returns:
        The merge record written to `out/tunelab_merge.json` (method, dtype, parity differences).

    Raises:
        TunelabError: not a run folder, a prompt-learning method, a non-empty output, or a parity failure.
    """
    from transformers import AutoModelForCausalLM

    from tunelab.models import load_run_model

    run, out = Path(run_dir), Path(out)
    method = _check_mergeable(run)
    _prepare_out(out, overwrite)
    peft_model, tok = load_run_model(run, dtype=torch.float32, merge=False)
    ids = _probe(tok)
    reference = _logits(peft_model, ids)
    merged = peft_model.merge_and_unload() if hasattr(peft_model, "merge_and_unload") else peft_model
    merged.eval()
    merge_diff = float((_logits(merged, ids) - reference).abs().max())
    limit = _TOLERANCE * max(float(reference.abs().max()), 1.0)
    if merge_diff > limit:
        raise TunelabError(f"the merged model differs from the adapter (max logit difference {merge_diff:.4g})",
                           where=str(run), fix="use the run folder (unmerged) and report this")
    merged.to(_DTYPES[dtype])
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.", dir=out.parent))
    try:
        merged.save_pretrained(tmp, safe_serialization=True)
        tok.save_pretrained(tmp)
        reloaded = AutoModelForCausalLM.from_pretrained(tmp, dtype=_DTYPES[dtype], use_safetensors=True)
        saved_diff = float((_logits(reloaded, ids) - reference).abs().max())
        if saved_diff > limit * _SAVED_SLACK[dtype]:
            raise TunelabError(f"the saved folder does not reproduce the adapter's logits (max difference "
                               f"{saved_diff:.4g})", where=str(out), fix="use --dtype fp32, or the run folder")
        record = {"run": str(run.resolve()), "method": method, "dtype": dtype,
                  "max_abs_logit_diff": {"merged_vs_adapter_fp32": merge_diff, "saved_vs_adapter": saved_diff}}
        atomic_write_json(tmp / "tunelab_merge.json", record)
        if out.exists():
            shutil.rmtree(out)
        tmp.rename(out)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
    return record
