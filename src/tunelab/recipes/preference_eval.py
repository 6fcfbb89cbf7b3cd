"""Preference data for a recipe (read → split → encode → summary) and the implicit-reward evaluation.

Both training and ``tunelab eval`` call `prepare_preference`, so the held-out pairs are the same rows in both:
the split is a hash of the seed and the prompt (`split_preference`), independent of row order.

Evaluation (``eval/metrics.json``, same shape as the SFT evaluation: ``base``/``tuned``/``delta``): on the
held-out pairs (test split, else validation), each answer's summed log-probability under the base model and
under the tuned model. The DPO implicit reward of an answer is ``beta * (log p_tuned - log p_base)``;
``reward_accuracy`` is the share of pairs whose chosen answer gets the higher reward (ties count one half).
Before training the policy *is* the reference, every reward is 0 and the accuracy is 0.5 by definition, so
``base`` also reports what the base model itself prefers: ``logp_accuracy`` (summed log-probability of
chosen > rejected) and ``avg_logp_accuracy`` (per-token mean, which removes the length effect). The same two
are reported for the tuned model, for every loss (reference-free ones included). For unpaired (KTO) held-out
rows, ``reward_accuracy`` is the share of rows whose reward has the label's sign.
"""

from __future__ import annotations

import hashlib
import json
import time
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from tunelab.config.specs import DataSpec, Recipe
from tunelab.data.preference import (
    PairExample,
    UnpairedExample,
    encode_pair,
    encode_unpaired,
    read_preference,
    split_preference,
)
from tunelab.data.records import Reject, reason_key
from tunelab.errors import TunelabError

__all__ = ["PreparedPreference", "evaluate_preference_run", "prepare_preference", "sequence_logps"]

_SPLITS = ("train", "validation", "test")


@dataclass
class PreparedPreference:
    """Kept rows per split (pairs, or unpaired rows for KTO), their encodings, rejects and the summary."""

    format: str
    splits: dict[str, list[PairExample | UnpairedExample]]
    encoded: dict[str, list[dict[str, Any]]]
    rejects: list[Reject]
    summary: dict[str, Any]
    fingerprint: str


def _read(path: str, spec: DataSpec, unpaired: bool) -> tuple[str, int, list, list[Reject]]:
    data = read_preference(path, spec)
    if not data.paired and not unpaired:
        raise TunelabError(f"{path} holds unpaired good/bad labels; this loss needs pairs (chosen vs rejected)",
                           where="data.path, preference.loss", fix="use preference.loss=kto, or a file of pairs")
    if unpaired and data.paired:  # KTO learns from single labelled answers: a pair gives one good and one bad
        items = [UnpairedExample(p.prompt, answer, label, p.where, p.raw)
                 for p in data.pairs for answer, label in ((p.chosen, True), (p.rejected, False))]
    else:
        items = data.unpaired if unpaired else data.pairs
    return data.format, data.rows_read, items, data.rejects


def _encode(items: list, tokenizer: Any, spec: DataSpec, limit: int | None) -> tuple[list, list, list[Reject]]:
    kept, encoded, rejects = [], [], []
    for item in items:
        if limit is not None and len(kept) >= limit:
            break
        enc = (encode_pair(item, tokenizer, spec.max_length, spec.overlength) if isinstance(item, PairExample)
               else encode_unpaired(item, tokenizer, spec.max_length, spec.overlength))
        if isinstance(enc, Reject):
            rejects.append(enc)
        else:
            kept.append(item)
            encoded.append(enc)
    return kept, encoded, rejects


def _fingerprint(spec: DataSpec, hashes: dict[str, str], unpaired: bool, tokenizer: Any) -> str:
    payload = json.dumps({"files": hashes, "spec": spec.model_dump(mode="json"), "unpaired": unpaired,
                          "vocab": len(tokenizer), "template": getattr(tokenizer, "chat_template", None)},
                         sort_keys=True, default=str)
    return hashlib.sha256(payload.encode()).hexdigest()


def _split_summary(encoded: list[dict], rejects: list[Reject], source: str) -> dict[str, Any]:
    tokens = [e["n_tokens"] for e in encoded]
    return {"source": source, "kept": len(encoded),
            "rejected": dict(Counter(reason_key(r.reason) for r in rejects).most_common()),
            "truncated": sum(e["truncated"] for e in encoded), "tokens": sum(tokens),
            "mean_len": round(sum(tokens) / len(tokens), 1) if tokens else 0.0, "max_len": max(tokens, default=0)}


def prepare_preference(spec: DataSpec, tokenizer: Any, unpaired: bool = False) -> PreparedPreference:
    """Read, split and encode the preference data of a recipe.

    Args:
        spec: the recipe's data section (path, validation_path, test_path, split, max_length, overlength, limits).
        tokenizer: the policy's tokenizer (chat template applied as in `encode_pair`).
        unpaired: KTO: unpaired rows (pairs become one good and one bad row).

    Raises:
        TunelabError: unreadable input, unpaired data for a paired loss, or no training row left.
    """
    from tunelab.data.pipeline import resolve_data_path
    from tunelab.data.readers import file_sha256

    files = {"train": spec.path, "validation": spec.validation_path, "test": spec.test_path}
    files = {role: p for role, p in files.items() if p}
    fmt, rows_read, items, rejects = _read(files["train"], spec, unpaired)
    split = spec.split.model_copy(update={"validation": 0.0 if "validation" in files else spec.split.validation,
                                          "test": 0.0 if "test" in files else spec.split.test})
    parts = split_preference(items, split)
    for role in ("validation", "test"):
        if role in files:
            _, n, parts[role], more = _read(files[role], spec, unpaired)
            rows_read, rejects = rows_read + n, rejects + more
    splits, encoded, summaries = {}, {}, {}
    for name in _SPLITS:
        limit = spec.limit if name == "train" else spec.eval_limit
        splits[name], encoded[name], enc_rejects = _encode(parts[name], tokenizer, spec, limit)
        rejects += enc_rejects
        summaries[name] = _split_summary(encoded[name], enc_rejects, files.get(name, files["train"]))
    hashes = {role: file_sha256(resolve_data_path(p)) for role, p in files.items()}
    summary = {"format": fmt, "kind": "unpaired" if unpaired else "pairs", "rows_read": rows_read,
               "files": {role: {"path": p, "sha256": hashes[role]} for role, p in files.items()},
               "splits": summaries, "kept": sum(s["kept"] for s in summaries.values()),
               "rejected": dict(Counter(reason_key(r.reason) for r in rejects).most_common()),
               "max_length": spec.max_length, "overlength": spec.overlength}
    if not encoded["train"]:
        top = ", ".join(f"'{k}' x{n}" for k, n in list(summary["rejected"].items())[:3]) or "none"
        raise TunelabError(f"no training pairs left: {rows_read} rows read, top reject reasons: {top}",
                           where=spec.path, fix="check data.format/data.columns, or raise data.max_length / use "
                           "data.overlength=truncate for long rows")
    return PreparedPreference(fmt, splits, encoded, rejects, summary, _fingerprint(spec, hashes, unpaired, tokenizer))


# ------------------------------------------------------------------------------------------- log-probs


def _sequences(encoded: list[dict[str, Any]]) -> list[tuple[list[int], int]]:
    """(token ids, completion start) per answer: chosen then rejected for pairs, the completion for rows."""
    out = []
    for e in encoded:
        for key in ("chosen_ids", "rejected_ids", "completion_ids"):
            if key in e:
                out.append((e["prompt_ids"] + e[key], len(e["prompt_ids"])))
    return out


def _completion_logits(model: torch.nn.Module, input_ids: torch.Tensor, attention: torch.Tensor,
                       keep: torch.Tensor) -> torch.Tensor:
    """Logits (N, V) at the positions that predict completion tokens (``keep``: (B, T-1) bool).

    The 49k-row head runs only at those positions; prompt-learning PEFT models (virtual tokens that only
    their own forward adds) take the full forward instead.
    """
    config = getattr(model, "active_peft_config", None)
    if getattr(config, "is_prompt_learning", False):
        logits = model(input_ids=input_ids, attention_mask=attention).logits[:, -input_ids.shape[1]:]  # (B, T, V)
        return logits[:, :-1][keep]
    inner = model.get_base_model() if hasattr(model, "get_base_model") else model
    hidden = inner.get_decoder()(input_ids=input_ids, attention_mask=attention, use_cache=False).last_hidden_state
    return inner.get_output_embeddings()(hidden[:, :-1][keep])  # (N, V)


def _batch_logps(model: torch.nn.Module, seqs: list[tuple[list[int], int]], pad_id: int,
                 device: str) -> tuple[list[float], list[int]]:
    width = max(len(ids) for ids, _ in seqs)
    input_ids = torch.full((len(seqs), width), pad_id, dtype=torch.long)
    attention = torch.zeros((len(seqs), width), dtype=torch.long)
    keep = torch.zeros((len(seqs), width - 1), dtype=torch.bool)  # position t predicts token t + 1
    for i, (ids, start) in enumerate(seqs):
        input_ids[i, :len(ids)], attention[i, :len(ids)] = torch.tensor(ids), 1
        keep[i, start - 1:len(ids) - 1] = True
    input_ids, attention, keep = input_ids.to(device), attention.to(device), keep.to(device)
    logits = _completion_logits(model, input_ids, attention, keep)
    targets = input_ids[:, 1:][keep]  # (N,)
    token_logps = torch.log_softmax(logits.float(), dim=-1).gather(-1, targets.unsqueeze(-1)).squeeze(-1)
    rows = keep.nonzero()[:, 0]
    sums = torch.zeros(len(seqs), device=device).index_add_(0, rows, token_logps)
    return sums.cpu().tolist(), keep.sum(dim=1).cpu().tolist()


@torch.no_grad()
def sequence_logps(model: torch.nn.Module, encoded: list[dict[str, Any]], batch_size: int, pad_id: int,
                   device: str, precision: str, label: str = "log-probs") -> tuple[list[float], list[int]]:
    """Summed completion log-probability and completion length of every answer (order of `_sequences`).

    Batches hold similar lengths (little padding); logits are computed one batch at a time.
    """
    from tunelab.models import autocast
    from tunelab.training.progress import task_progress

    seqs = _sequences(encoded)
    order = sorted(range(len(seqs)), key=lambda i: len(seqs[i][0]))
    sums, counts = [0.0] * len(seqs), [0] * len(seqs)
    model.eval()
    with task_progress() as bar:
        task = bar.add_task(label, total=len(seqs))
        for start in range(0, len(order), batch_size):
            idx = order[start:start + batch_size]
            with autocast(device, precision):
                s, c = _batch_logps(model, [seqs[i] for i in idx], pad_id, device)
            for i, si, ci in zip(idx, s, c, strict=True):
                sums[i], counts[i] = si, ci
            bar.advance(task, len(idx))
    return sums, counts


# ------------------------------------------------------------------------------------------ evaluation


def _held_out(prepared: PreparedPreference) -> tuple[str, list[dict[str, Any]]]:
    for name in ("test", "validation"):
        if prepared.encoded[name]:
            return name, prepared.encoded[name]
    return "none", []


def _pair_metrics(rewards: list[float], policy: list[float], counts: list[int]) -> dict[str, Any]:
    """Metrics over answers ordered (chosen, rejected) per pair."""
    from tunelab.evaluation.metrics import bootstrap_ci

    n = len(rewards) // 2
    margin = [rewards[2 * i] - rewards[2 * i + 1] for i in range(n)]
    hits = [1.0 if m > 0 else 0.5 if m == 0 else 0.0 for m in margin]
    logp = [1.0 if policy[2 * i] > policy[2 * i + 1] else 0.0 for i in range(n)]
    avg = [1.0 if policy[2 * i] / counts[2 * i] > policy[2 * i + 1] / counts[2 * i + 1] else 0.0 for i in range(n)]
    acc = sum(hits) / n
    return {"main": "reward_accuracy", "reward_accuracy": round(acc, 5),
            "reward_accuracy_ci": [round(x, 5) for x in bootstrap_ci(hits)],
            "reward_margin": round(sum(margin) / n, 5),
            "rewards_chosen": round(sum(rewards[0::2]) / n, 5), "rewards_rejected": round(sum(rewards[1::2]) / n, 5),
            "logp_accuracy": round(sum(logp) / n, 5), "avg_logp_accuracy": round(sum(avg) / n, 5),
            "logp_margin": round(sum(policy[2 * i] - policy[2 * i + 1] for i in range(n)) / n, 4), "n_examples": n}


def _row_metrics(rewards: list[float], labels: list[bool]) -> dict[str, Any]:
    from tunelab.evaluation.metrics import bootstrap_ci

    hits = [1.0 if (r > 0) == lab and r != 0 else 0.5 if r == 0 else 0.0 for r, lab in zip(rewards, labels, strict=True)]
    good = [r for r, lab in zip(rewards, labels, strict=True) if lab]
    bad = [r for r, lab in zip(rewards, labels, strict=True) if not lab]
    return {"main": "reward_accuracy", "reward_accuracy": round(sum(hits) / len(hits), 5),
            "reward_accuracy_ci": [round(x, 5) for x in bootstrap_ci(hits)],
            "rewards_good": round(sum(good) / max(len(good), 1), 5),
            "rewards_bad": round(sum(bad) / max(len(bad), 1), 5), "n_examples": len(hits)}


def _metrics(encoded: list[dict], base: list[float], policy: list[float], counts: list[int], beta: float) -> dict:
    rewards = [beta * (p - b) for p, b in zip(policy, base, strict=True)]
    if encoded and "label" in encoded[0]:
        return _row_metrics(rewards, [e["label"] for e in encoded])
    return _pair_metrics(rewards, policy, counts)


def evaluate_preference_run(run_dir: str | Path, recipe: Recipe | None = None) -> dict[str, Any]:
    """Implicit-reward accuracy of a preference run's model vs its base on the held-out pairs; writes eval/.

    The base model is scored first and freed before the tuned model is loaded (one model in memory at a time).
    """
    from tunelab.config.loading import load_recipe
    from tunelab.models import load_causal_lm, load_run_model, resolve_device, resolve_precision
    from tunelab.util.io import atomic_write_json

    run = Path(run_dir)
    recipe = recipe or load_recipe(run / "config.yaml")
    device = resolve_device(recipe.model.device)
    precision = resolve_precision(recipe.model.precision, device)
    dtype = torch.bfloat16 if precision == "bf16" else torch.float32
    t0 = time.perf_counter()
    tuned, tokenizer = load_run_model(run, dtype=dtype)
    prepared = prepare_preference(recipe.data, tokenizer, unpaired=recipe.preference.loss == "kto")
    split, encoded = _held_out(prepared)
    encoded = encoded[: recipe.eval.max_samples or len(encoded)]
    result: dict[str, Any] = {"split": split, "n": len(encoded), "task": "preference", "precision": precision,
                              "loss": recipe.preference.loss, "beta": recipe.preference.beta}
    if not encoded:
        result.update(base=None, tuned={}, delta={})
    else:
        args = (recipe.eval.batch_size, tokenizer.pad_token_id, device, precision)
        base_model = load_causal_lm(recipe.model.name, recipe.model.trust_remote_code, dtype).to(device)
        base, counts = sequence_logps(base_model, encoded, *args, label="score (base)")
        del base_model
        policy, _ = sequence_logps(tuned.to(device), encoded, *args, label="score (tuned)")
        result["base"] = _metrics(encoded, base, base, counts, recipe.preference.beta)
        result["tuned"] = _metrics(encoded, base, policy, counts, recipe.preference.beta)
        result["delta"] = {k: round(v - result["base"][k], 5) for k, v in result["tuned"].items()
                           if isinstance(v, float) and isinstance(result["base"].get(k), float)}
    result["eval_time_s"] = round(time.perf_counter() - t0, 2)
    (run / "eval").mkdir(exist_ok=True)
    atomic_write_json(run / "eval" / "metrics.json", result)
    return result
