"""Reward models (``train.objective: reward``): a scalar head trained on preference pairs, and scoring.

Training: the model gets a new sequence-classification head with one output (``AutoModelForSequenceClassification``,
``num_labels=1``): a decoder (SmolLM2) reads the reward at the last non-padding token, an encoder
(all-MiniLM-L6-v2) at its first ([CLS]) token. TRL's `RewardTrainer` minimises the Bradley-Terry loss
``-log sigmoid(r(chosen) - r(rejected))`` (plus ``reward_model.center_coefficient`` x (r_c + r_r)^2), on
pairs read, split and encoded by the preference data layer (`tunelab.recipes.preference_eval.prepare_preference`:
the split is by prompt, so no held-out prompt is trained on). Every method applies (LoRA by default, the new
head trains in full).

Input format: a decoder scores the conversation rendered with its chat template (``prompt + answer``,
ending with the end-of-turn token), exactly as a policy of the same family writes it; an encoder has no chat
template, so tunelab gives it a plain one (`PLAIN_TEMPLATE`: ``role: content`` lines) between [CLS] and [SEP].
``reward.json`` in the run folder records which.

Export: ``model/`` is a standard Transformers folder (the head merged with the base, safetensors, fp32,
tokenizer with its template) that ``AutoModelForSequenceClassification.from_pretrained`` loads alone; a
LoRA-family run also keeps ``adapter/``. Evaluation (``tunelab eval RUN`` / ``tunelab run``) scores the held-out
pairs with that exported model: pairwise accuracy (chosen scored above rejected) with a bootstrap CI, its
binomial p-value against chance (0.5), the mean margin, and the accuracy of "the longer answer wins" as the
length baseline. `RewardScorer` is what ``tunelab reward score`` and the RL reward ``type: model`` use.
"""

from __future__ import annotations

import json
import math
import shutil
import time
from pathlib import Path
from typing import Any

import torch

from tunelab.config.specs import Recipe
from tunelab.errors import TunelabError
from tunelab.methods import apply_method, base_dtype, count_parameters, is_prompt_learning, preflight
from tunelab.models import autocast, resolve_device, resolve_model, resolve_precision
from tunelab.recipes.common import (
    data_identity,
    model_identity,
    peak_rss_mb,
    prepare_training,
    refuse_unsupported,
    save_run_files,
    single_process_only,
    start_run,
    write_run_manifest,
)
from tunelab.recipes.rl import TrlBridge, quiet_trainer, trl_common_args
from tunelab.training.progress import TrainProgress, task_progress
from tunelab.training.rundir import MetricsLog
from tunelab.util.console import console
from tunelab.util.io import atomic_write_json, atomic_write_text

__all__ = ["PLAIN_TEMPLATE", "REWARD_KEYS", "RewardRecipe", "RewardScorer", "evaluate_reward_run", "pair_metrics",
           "score_file"]

# Chat template for encoders (they have none): one "role: content" line per turn.
PLAIN_TEMPLATE = ("{% for m in messages %}{{ m['role'] }}: {{ m['content'] }}\n{% endfor %}"
                  "{% if add_generation_prompt %}assistant: {% endif %}")
REWARD_KEYS = {"loss": "loss", "accuracy": "accuracy", "margin": "margin", "mean_reward": "reward_mean",
               "learning_rate": "lr", "grad_norm": "grad_norm", "num_tokens": "tokens", "eval_loss": "val_loss",
               "eval_accuracy": "val_accuracy", "eval_margin": "val_margin"}


def _plain(kind: str) -> bool:
    return kind == "encoder"


def _with_specials(ids: list[int], tokenizer: Any, plain: bool) -> list[int]:
    """Encoders read [CLS] first (the head pools it) and expect [SEP] last; decoders take the ids as they are."""
    if not plain:
        return ids
    return [tokenizer.cls_token_id, *ids, tokenizer.sep_token_id]


# ------------------------------------------------------------------------------------------------ scoring


class RewardScorer:
    """A trained reward model that scores (prompt messages, answer) pairs, batched by length.

    Args:
        model: a sequence-classification model with one output.
        tokenizer: its tokenizer, with the chat template it was trained with.
        info: ``reward.json`` of the run (``input_format`` 'chat' or 'plain', ``max_length``).
        device: where the model runs.
        precision: 'bf16' (autocast) or 'fp32'.
    """

    def __init__(self, model: torch.nn.Module, tokenizer: Any, info: dict[str, Any], device: str = "cpu",
                 precision: str = "fp32"):
        self.model, self.tokenizer, self.info = model.to(device).eval(), tokenizer, info
        self.device, self.precision = device, precision
        self.plain = info.get("input_format") == "plain"
        self.max_length = int(info.get("max_length") or 512)

    @classmethod
    def load(cls, target: str | Path, device: str = "cpu", precision: str = "fp32", where: str = "model") -> RewardScorer:
        """From a ``train.objective=reward`` run folder (its ``model/`` export) or a model folder with one output.

        Raises:
            TunelabError: no such folder, no safetensors weights, or a model that is not a one-output classifier.
        """
        from transformers import AutoConfig, AutoModelForSequenceClassification, AutoTokenizer

        folder, info = _reward_folder(Path(target).expanduser(), where)
        config = AutoConfig.from_pretrained(folder)
        if getattr(config, "num_labels", None) != 1:
            raise TunelabError(f"'{target}' is not a reward model (num_labels={getattr(config, 'num_labels', None)}, "
                               "need 1)", where=where, fix="train one with train.objective=reward")
        tokenizer = AutoTokenizer.from_pretrained(folder)
        if tokenizer.pad_token is None:
            tokenizer.pad_token = tokenizer.eos_token
        info.setdefault("input_format", "chat" if getattr(tokenizer, "chat_template", None) else "plain")
        if info["input_format"] == "plain" and not getattr(tokenizer, "chat_template", None):
            tokenizer.chat_template = PLAIN_TEMPLATE
        model = AutoModelForSequenceClassification.from_pretrained(folder, use_safetensors=True, dtype=torch.float32)
        model.config.pad_token_id = tokenizer.pad_token_id
        return cls(model, tokenizer, info, device, precision)

    def check_policy_template(self, policy_tokenizer: Any, where: str) -> None:
        """A chat-format reward model must share the policy's chat template (it scores the same conversation).

        Raises:
            TunelabError: the templates differ (e.g. another default system prompt or turn markers).
        """
        if self.plain:
            return  # rendered with its own plain template: no convention is shared with the policy
        mine, theirs = getattr(self.tokenizer, "chat_template", None), getattr(policy_tokenizer, "chat_template", None)
        if mine != theirs:
            raise TunelabError("the reward model's chat template differs from the policy's: it would score "
                               "conversations laid out differently from the ones the policy answers", where=where,
                               fix="train the reward model on the policy's base model (same tokenizer and "
                               "template), or use an encoder reward model (plain format)")

    def encode(self, prompt: list[dict[str, str]], answer: str, where: str = "") -> list[int]:
        """Token ids of prompt + answer as the reward model was trained (cut to its max_length, prompt first)."""
        from tunelab.data.preference import UnpairedExample, encode_unpaired
        from tunelab.data.records import Reject

        limit = self.max_length - (2 if self.plain else 0)
        enc = encode_unpaired(UnpairedExample(prompt, answer, True, where), self.tokenizer, limit, "truncate")
        if isinstance(enc, Reject):
            raise TunelabError(f"cannot render this row for the reward model: {enc.reason}", where=where or None)
        return _with_specials(enc["prompt_ids"] + enc["completion_ids"], self.tokenizer, self.plain)

    @torch.no_grad()
    def score_ids(self, sequences: list[list[int]], batch_size: int = 8, label: str | None = None) -> list[float]:
        """Rewards of token-id sequences, in input order (batches of similar length, right-padded)."""
        order = sorted(range(len(sequences)), key=lambda i: len(sequences[i]))
        out = [0.0] * len(sequences)
        pad = self.tokenizer.pad_token_id
        with task_progress() as bar:
            task = bar.add_task(label or "score", total=len(sequences), visible=label is not None)
            for start in range(0, len(order), batch_size):
                idx = order[start:start + batch_size]
                width = max(len(sequences[i]) for i in idx)
                ids = torch.full((len(idx), width), pad, dtype=torch.long)
                mask = torch.zeros((len(idx), width), dtype=torch.long)
                for row, i in enumerate(idx):
                    ids[row, :len(sequences[i])], mask[row, :len(sequences[i])] = torch.tensor(sequences[i]), 1
                with autocast(self.device, self.precision):
                    logits = self.model(input_ids=ids.to(self.device), attention_mask=mask.to(self.device)).logits
                for i, v in zip(idx, logits[:, 0].float().cpu().tolist(), strict=True):
                    out[i] = v
                bar.advance(task, len(idx))
        return out

    def score(self, prompts: list[list[dict[str, str]]], answers: list[str], batch_size: int = 8) -> list[float]:
        """Rewards of answers to prompts (message lists), in input order."""
        return self.score_ids([self.encode(p, a) for p, a in zip(prompts, answers, strict=True)], batch_size)


def _reward_folder(path: Path, where: str) -> tuple[Path, dict[str, Any]]:
    """(model folder, reward.json contents) of a reward run folder, or of a plain model folder."""
    if (path / "reward.json").is_file() and (path / "model" / "config.json").is_file():
        return path / "model", json.loads((path / "reward.json").read_text(encoding="utf-8"))
    if (path / "config.yaml").is_file():
        raise TunelabError(f"'{path}' is a run folder but not a finished reward-model run (no reward.json and "
                           "model/)", where=where, fix="train one with train.objective=reward")
    if not (path / "config.json").is_file():
        raise TunelabError(f"reward model not found: {path}", where=where,
                           fix="pass a train.objective=reward run folder, or a sequence-classification model folder")
    if not any(path.glob("*.safetensors")):
        raise TunelabError(f"'{path}' has no .safetensors weights; tunelab does not load pickle checkpoints",
                           where=where, fix="save it with safe_serialization=True")
    return path, {}


# ------------------------------------------------------------------------------------------------ metrics


def _binomial_p(k: int, n: int) -> float:
    """Two-sided binomial test p-value of k successes in n trials against p = 0.5."""
    from scipy.stats import binomtest

    return float(binomtest(k, n, 0.5).pvalue) if n else 1.0


def pair_metrics(chosen: list[float], rejected: list[float], chosen_len: list[int] | None = None,
                 rejected_len: list[int] | None = None) -> dict[str, Any]:
    """Pairwise accuracy (ties count one half) with a bootstrap CI and p-value vs chance, margins, length baseline."""
    from tunelab.evaluation.metrics import bootstrap_ci

    n = len(chosen)
    if n == 0:
        return {"main": "pairwise_accuracy", "n_pairs": 0}
    margin = [c - r for c, r in zip(chosen, rejected, strict=True)]
    hits = [1.0 if m > 0 else 0.5 if m == 0 else 0.0 for m in margin]
    out = {"main": "pairwise_accuracy", "pairwise_accuracy": round(sum(hits) / n, 5),
           "pairwise_accuracy_ci": [round(x, 5) for x in bootstrap_ci(hits)],
           "p_value_vs_chance": _binomial_p(int(sum(h == 1.0 for h in hits)), int(sum(h != 0.5 for h in hits))),
           "mean_margin": round(sum(margin) / n, 5), "reward_chosen": round(sum(chosen) / n, 5),
           "reward_rejected": round(sum(rejected) / n, 5), "n_pairs": n, "chance": 0.5}
    if chosen_len and rejected_len:
        longer = [1.0 if c > r else 0.5 if c == r else 0.0 for c, r in zip(chosen_len, rejected_len, strict=True)]
        out["length_baseline_accuracy"] = round(sum(longer) / n, 5)
    return out


# ------------------------------------------------------------------------------------------------ recipe


def _check_positions(recipe: Recipe) -> None:
    """An encoder reads at most max_position_embeddings tokens: a longer data.max_length would fail mid-run."""
    from transformers import AutoConfig

    resolved = resolve_model(recipe.model.name)
    if not _plain(resolved.kind):
        return
    limit = getattr(AutoConfig.from_pretrained(resolved.path), "max_position_embeddings", None)
    if limit and recipe.data.max_length > limit:
        raise TunelabError(f"data.max_length={recipe.data.max_length} exceeds what {recipe.model.name} can read "
                           f"({limit} positions)", where="data.max_length", fix=f"set data.max_length <= {limit}")


class RewardRecipe:
    """setup → train → save → cleanup for a reward model (the same protocol as `SFTRecipe`)."""

    def __init__(self, recipe: Recipe, run_dir: Path, dist: Any = None, resume: bool = False):
        self.recipe, self.run_dir = recipe, run_dir
        self.preflight(recipe, dist, resume)
        self.metrics = MetricsLog(run_dir / "metrics.jsonl")

    @staticmethod
    def preflight(recipe: Recipe, dist: Any = None, resume: bool = False) -> None:
        """TunelabError naming the keys for what reward training does not do (checked before any work)."""
        t = recipe.train
        refuse_unsupported("reward", {
            **single_process_only(t, dist, resume),
            "early stopping (train.early_stopping_patience)": t.early_stopping_patience is not None,
            f"prompt-learning method '{recipe.method.name}' (the reward is read at the last real token)":
                is_prompt_learning(recipe.method),
            f"method '{recipe.method.name}' (4-bit bases are causal-LM only here)": recipe.method.name == "qlora",
        }, fix="see docs/preferences.md (Reward models)")
        preflight(recipe)
        _check_positions(recipe)

    # ---- setup -------------------------------------------------------------------------------------
    def setup(self) -> None:
        from tunelab.recipes.preference_eval import prepare_preference

        r = self.recipe
        self.device, self.precision, self.resolved, self.tokenizer = start_run(r)
        self.plain = _plain(self.resolved.kind)
        spec = r.data
        if self.plain:
            self.tokenizer.chat_template = PLAIN_TEMPLATE
            spec = spec.model_copy(update={"max_length": spec.max_length - 2})  # room for [CLS] and [SEP]
        self.data = prepare_preference(spec, self.tokenizer)
        self.model = self._build_model()
        self.total_steps = self._total_steps()
        self.optimizer, self.scheduler = prepare_training(self.model, r, self.total_steps, self.run_dir)

    def _build_model(self) -> torch.nn.Module:
        from tunelab.recipes.classify import head_module, load_classifier

        r = self.recipe
        dtype = base_dtype(r.method, self.precision)
        model = load_classifier(r.model.name, ["reward"], self.tokenizer.pad_token_id, dtype, r.model.trust_remote_code)
        model = apply_method(model, r.method, task_type="SEQ_CLS")
        name, head = head_module(model)
        if hasattr(model, "get_base_model"):
            if not any(p.requires_grad for n, p in model.named_parameters() if f".{name}." in f".{n}"):
                raise TunelabError(f"method '{r.method.name}' leaves the reward head frozen", where="method.name",
                                   fix="use method.name=lora or full")
        else:  # full / freeze: the new head is a plain module; it trains in fp32
            head.float().requires_grad_(True)
        model = model.to(self.device)
        model.train()
        self.params = count_parameters(model)
        console.print(
            f"reward model [bold]{r.model.name}[/] ({self.resolved.kind}, {'plain' if self.plain else 'chat'} "
            f"format) · method [bold]{r.method.name}[/] · trainable {self.params.trainable:,} / "
            f"{self.params.total:,} ({self.params.percent:.2f}%) · {self.device}/{self.precision} · "
            f"{len(self.data.encoded['train'])} training pairs"
        )
        return model

    def _total_steps(self) -> int:
        t = self.recipe.train
        per_step = t.batch_size * t.grad_accum
        return t.max_steps or max(1, math.ceil(t.epochs * len(self.data.encoded["train"]) / per_step))

    def _dataset(self, split: str) -> Any:
        from datasets import Dataset

        rows = [{"chosen_ids": _with_specials(e["prompt_ids"] + e["chosen_ids"], self.tokenizer, self.plain),
                 "rejected_ids": _with_specials(e["prompt_ids"] + e["rejected_ids"], self.tokenizer, self.plain)}
                for e in self.data.encoded[split]]
        return Dataset.from_list(rows) if rows else None

    def _trainer(self, callbacks: list[Any]) -> Any:
        from trl import RewardConfig, RewardTrainer

        r = self.recipe
        val = self._dataset("validation")
        every = r.train.eval_every or self.total_steps
        args = RewardConfig(
            **trl_common_args(r, self.run_dir / "trainer", self.device, self.precision, self.total_steps),
            max_length=None, center_rewards_coefficient=r.reward_model.center_coefficient,
            eval_strategy="steps" if val is not None else "no", eval_steps=every, eval_on_start=val is not None,
            per_device_eval_batch_size=r.eval.batch_size)
        trainer = RewardTrainer(model=self.model, args=args, train_dataset=self._dataset("train"), eval_dataset=val,
                                processing_class=self.tokenizer, callbacks=callbacks,
                                optimizers=(self.optimizer, self.scheduler))
        quiet_trainer(trainer)
        return trainer

    # ---- train -------------------------------------------------------------------------------------
    def train(self) -> dict[str, Any]:
        with TrainProgress(self.total_steps) as progress:
            self.bridge = TrlBridge(self.metrics, progress, REWARD_KEYS)
            self.trainer = self._trainer([self.bridge])
            t0 = time.perf_counter()
            self.trainer.train()
            train_s = time.perf_counter() - t0
        return self.summary(train_s)

    def summary(self, train_s: float) -> dict[str, Any]:
        val = [row for row in self.metrics.rows if "val_loss" in row]
        tokens = self.bridge.tokens
        return {
            "objective": "reward", "steps": self.trainer.state.global_step, "train_time_s": round(train_s, 2),
            "train_pairs": len(self.data.encoded["train"]), "real_tokens": tokens,
            "real_tokens_per_s": round(tokens / max(train_s, 1e-9), 1),
            "best_val_loss": min((row["val_loss"] for row in val), default=None),
            "val_accuracy_first": val[0].get("val_accuracy") if val else None,
            "val_accuracy_last": val[-1].get("val_accuracy") if val else None,
            "input_format": "plain" if self.plain else "chat", "precision": self.precision, "device": self.device,
            "trainable_params": self.params.trainable, "total_params": self.params.total,
            "peak_rss_mb": round(peak_rss_mb(), 1),
        }

    # ---- save --------------------------------------------------------------------------------------
    def save(self, summary: dict[str, Any], timings: dict[str, float]) -> None:
        r, d = self.recipe, self.run_dir
        peft = hasattr(self.model, "get_base_model")
        if peft:
            self.model.save_pretrained(d / "adapter", safe_serialization=True)
        self._export(d / "model")
        atomic_write_json(d / "reward.json", {
            "input_format": "plain" if self.plain else "chat", "max_length": r.data.max_length,
            "base_model": r.model.name, "model_kind": self.resolved.kind, "method": r.method.name,
            "head": "score (last non-padding token)" if not self.plain else "classifier ([CLS] token)"})
        save_run_files(d, self.tokenizer, self.data, summary)
        write_run_manifest(d, r, model_identity(r, self.resolved, with_kind=True), data_identity(self.data), timings,
                           objective="reward")
        shutil.rmtree(d / "trainer", ignore_errors=True)  # TRL's output_dir: nothing is saved there

    def _export(self, out: Path) -> None:
        """A standalone Transformers folder: head merged, fp32 weights (LoRA deltas survive), tokenizer included."""
        model = self.model
        if hasattr(model, "merge_and_unload"):
            model = model.merge_and_unload()  # PEFT: the trained head copy replaces the original head
        model = model.float()
        model.config.pad_token_id = self.tokenizer.pad_token_id
        model.save_pretrained(out, safe_serialization=True)
        self.tokenizer.save_pretrained(out)
        self.model = model

    def cleanup(self) -> None:
        self.optimizer.zero_grad(set_to_none=True)
        self.trainer = None


# ------------------------------------------------------------------------------------------------ evaluation


def evaluate_reward_run(run_dir: str | Path, recipe: Recipe | None = None) -> dict[str, Any]:
    """Pairwise accuracy of a reward run's exported model on its held-out pairs; writes eval/metrics.json.

    The held-out pairs are the test split (else validation) of `prepare_preference`, the same rows as in
    training (the split is a hash of the seed and the prompt).
    """
    from tunelab.config.loading import load_recipe
    from tunelab.recipes.preference_eval import prepare_preference

    run = Path(run_dir)
    recipe = recipe or load_recipe(run / "config.yaml")
    device = resolve_device(recipe.model.device)
    precision = resolve_precision(recipe.model.precision, device)
    scorer = RewardScorer.load(run, device=device, precision=precision, where=str(run))
    spec = recipe.data
    if scorer.plain:
        spec = spec.model_copy(update={"max_length": spec.max_length - 2})
    t0 = time.perf_counter()
    prepared = prepare_preference(spec, scorer.tokenizer)
    split = next((s for s in ("test", "validation") if prepared.encoded[s]), "none")
    encoded = prepared.encoded.get(split, [])[: recipe.eval.max_samples or None]
    seqs = [_with_specials(e["prompt_ids"] + e[side], scorer.tokenizer, scorer.plain)
            for e in encoded for side in ("chosen_ids", "rejected_ids")]
    scores = scorer.score_ids(seqs, recipe.eval.batch_size, label=f"score held-out pairs ({split})")
    tuned = pair_metrics(scores[0::2], scores[1::2], [len(e["chosen_ids"]) for e in encoded],
                         [len(e["rejected_ids"]) for e in encoded])
    result = {"split": split, "n": len(encoded), "task": "reward", "precision": precision, "base": None,
              "tuned": tuned, "delta": {}, "eval_time_s": round(time.perf_counter() - t0, 2)}
    out = run / "eval"
    out.mkdir(exist_ok=True)
    atomic_write_json(out / "metrics.json", result)
    pairs = prepared.splits.get(split, [])
    samples = [{"where": p.where, "prompt": p.prompt[-1]["content"][:500], "chosen": p.chosen[:500],
                "rejected": p.rejected[:500], "reward_chosen": round(c, 4), "reward_rejected": round(rj, 4)}
               for p, c, rj in zip(pairs[:50], scores[0::2], scores[1::2], strict=False)]
    atomic_write_text(out / "samples.jsonl", "".join(json.dumps(s, ensure_ascii=False) + "\n" for s in samples))
    return result


# ------------------------------------------------------------------------------------------------ reward score


_ROLES = {"user": "user", "human": "user", "assistant": "assistant", "gpt": "assistant", "system": "system"}


def _turns(value: Any) -> list[dict[str, str]] | None:
    """Message list ({role|from, content|value}) or text (one user turn); None when it is neither."""
    if isinstance(value, str):
        return [{"role": "user", "content": value}]
    if not isinstance(value, list):
        return None
    turns = []
    for m in value:
        role = m.get("role", m.get("from")) if isinstance(m, dict) else None
        content = m.get("content", m.get("value")) if isinstance(m, dict) else None
        if role not in _ROLES or not isinstance(content, str):
            return None
        turns.append({"role": _ROLES[role], "content": content})
    return turns


def _score_row(where: str, raw: dict[str, Any]) -> tuple[list[dict[str, str]], str]:
    """(prompt messages, response) of a row: prompt/response, prompt/completion, or messages ending with the answer.

    Raises:
        TunelabError: naming the row and what is missing or malformed.
    """
    fix = "rows need {prompt, response} (prompt: text or messages), or {messages} ending with the assistant answer"
    if "messages" in raw and not ({"response", "completion"} & raw.keys()):
        turns = _turns(raw["messages"])
        if not turns or turns[-1]["role"] != "assistant":
            raise TunelabError("'messages' must be a message list ending with the assistant answer", where=where,
                               fix=fix)
        prompt, answer = turns[:-1], turns[-1]["content"]
    else:
        key = "response" if "response" in raw else "completion"
        if "prompt" not in raw or key not in raw:
            raise TunelabError("missing field (need prompt and response, or messages)", where=where, fix=fix)
        prompt, answer = _turns(raw["prompt"]), raw[key]
        if isinstance(answer, list) and len(answer) == 1:
            answer = answer[0]
        if isinstance(answer, dict):
            answer = answer.get("content", answer.get("value"))
        if prompt is None or not isinstance(answer, str):
            raise TunelabError(f"wrong type for 'prompt' or '{key}' (text or messages expected)", where=where, fix=fix)
    if not prompt or prompt[-1]["role"] != "user" or not prompt[-1]["content"].strip():
        raise TunelabError("empty prompt, or a prompt that does not end with a user message", where=where, fix=fix)
    return prompt, answer


def score_file(target: str, path: str, out: str, on_error: str = "stop", batch_size: int = 8,
               device: str = "auto", precision: str = "auto") -> dict[str, Any]:
    """``tunelab reward score``: add ``reward`` to every prompt/response row of a data file; write OUT atomically.

    Returns:
        ``{"rows", "scored", "rejected", "mean", "std", "out"}``; rejected rows (with ``on_error='skip'``) are
        written next to OUT as ``<OUT>.rejects.jsonl`` with their reasons.

    Raises:
        TunelabError: unreadable file, a bad row (with on_error='stop'), or no reward model at ``target``.
    """
    from tunelab.data.readers import read_records

    dev = resolve_device(device)
    scorer = RewardScorer.load(target, device=dev, precision=resolve_precision(precision, dev), where=target)
    skipped: list[Any] | None = [] if on_error == "skip" else None
    records = read_records(Path(path), skipped=skipped)
    rows, seqs, rejects = [], [], list(skipped or [])
    for where, raw in records:
        try:
            prompt, answer = _score_row(where, raw)
            seqs.append(scorer.encode(prompt, answer, where))
            rows.append(raw)
        except TunelabError as e:
            if on_error != "skip":
                raise
            rejects.append({"where": where, "reason": e.what, "record": raw})
    scores = scorer.score_ids(seqs, batch_size, label="score")
    atomic_write_text(out, "".join(json.dumps({**raw, "reward": round(s, 6)}, ensure_ascii=False) + "\n"
                                   for raw, s in zip(rows, scores, strict=True)))
    if rejects:
        reject_rows = [r if isinstance(r, dict) else r.to_dict() for r in rejects]
        atomic_write_text(f"{out}.rejects.jsonl", "".join(json.dumps(r, ensure_ascii=False, default=str) + "\n"
                                                          for r in reject_rows))
    mean = sum(scores) / len(scores) if scores else None
    std = math.sqrt(sum((s - mean) ** 2 for s in scores) / len(scores)) if scores else None
    return {"rows": len(records) + len(skipped or []), "scored": len(scores), "rejected": len(rejects),
            "mean": mean, "std": std, "out": out}
