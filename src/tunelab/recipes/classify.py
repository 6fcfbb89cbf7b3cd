"""Sequence classification (``train.objective: classify``): a new head on an encoder or a decoder.

The model is loaded with ``AutoModelForSequenceClassification``: an encoder (BERT-style, e.g. the
``all-minilm-l6-v2`` builtin) pools its first token; a decoder (e.g. SmolLM2) reads the hidden state of the
last non-padding token, so its pad token id is set in the config. The head is new (random), so every method
must leave it trainable: PEFT methods get task type SEQ_CLS, which trains and saves the head as
``modules_to_save``; full and freeze tuning train it in fp32. Labels come from the data (see
`tunelab.data.tokenize.classification_input`); the label list is ``eval.labels`` or the sorted labels of the
training split, and is saved as ``labels.json`` in the run folder.

The loop is the SFT loop's shape built from the same leaf helpers (optimizer, scheduler, progress,
MetricsLog, manifest), with a cross-entropy over the classes instead of over the vocabulary.
"""

from __future__ import annotations

import math
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F

from tunelab.config.specs import Recipe
from tunelab.errors import TunelabError
from tunelab.methods import apply_method, base_dtype, count_parameters, estimate_training_memory_mb
from tunelab.models import autocast, resolve_model
from tunelab.recipes.common import (
    data_identity,
    model_identity,
    optimizer_steps,
    peak_rss_mb,
    prepare_training,
    refuse_unsupported,
    restore_best,
    save_run_files,
    single_process_only,
    start_run,
    track_best,
    write_run_manifest,
)
from tunelab.training.batching import PAD_MULTIPLE, plan_batches
from tunelab.training.progress import TrainProgress
from tunelab.training.rundir import MetricsLog
from tunelab.util.console import console
from tunelab.util.io import atomic_write_json

__all__ = ["IGNORE_LABEL", "ClassifyRecipe", "collate_classification", "head_module", "label_ids", "label_list",
           "load_classifier", "predict_logits"]

IGNORE_LABEL = -100  # a held-out row whose label the head does not know: always wrong, no loss
HEAD_NAMES = ("classifier", "score")  # the head's attribute in transformers' *ForSequenceClassification
_MAXIMIZED = ("accuracy", "macro_f1")  # early-stopping metrics where higher is better


# ------------------------------------------------------------------------------------------- labels & model


def label_list(train_rows: list[dict[str, Any]], given: list[str] | None) -> list[str]:
    """The classes, in head order: ``eval.labels`` when given (every training label must be in it), else sorted."""
    seen = sorted({row["label"] for row in train_rows})
    if given is None:
        if len(seen) < 2:
            raise TunelabError(f"classification needs at least 2 labels in the training split, found {seen}",
                               where="data.label_column", fix="check which column holds the labels")
        return seen
    unknown = [lab for lab in seen if lab not in given]
    if unknown:
        raise TunelabError(f"training labels {unknown[:5]} are not in eval.labels", where="eval.labels",
                           fix="add them to eval.labels, or remove eval.labels to use the labels of the data")
    return list(given)


def label_ids(rows: list[dict[str, Any]], labels: list[str]) -> list[int]:
    index = {lab: i for i, lab in enumerate(labels)}
    return [index.get(row["label"], IGNORE_LABEL) for row in rows]


def head_module(model: torch.nn.Module) -> tuple[str, torch.nn.Module]:
    """The classification head (name, module) of a transformers or PEFT-wrapped classifier."""
    inner = model.get_base_model() if hasattr(model, "get_base_model") else model
    for name in HEAD_NAMES:
        head = getattr(inner, name, None)
        if isinstance(head, torch.nn.Module):
            return name, head
    raise TunelabError(f"{type(inner).__name__} has no classification head named {' or '.join(HEAD_NAMES)}",
                       where="model.name", fix="use a BERT-style encoder or a decoder supported by transformers")


def load_classifier(name: str, labels: list[str], pad_token_id: int | None, dtype: torch.dtype = torch.float32,
                    trust_remote_code: bool = False) -> torch.nn.Module:
    """``AutoModelForSequenceClassification`` with a new head of ``len(labels)`` classes (safetensors only)."""
    from transformers import AutoModelForSequenceClassification

    resolved = resolve_model(name)
    try:
        model = AutoModelForSequenceClassification.from_pretrained(
            resolved.path, num_labels=len(labels), id2label=dict(enumerate(labels)),
            label2id={lab: i for i, lab in enumerate(labels)}, pad_token_id=pad_token_id, dtype=dtype,
            use_safetensors=True, trust_remote_code=trust_remote_code)
    except ValueError as e:  # transformers: no *ForSequenceClassification for this architecture
        raise TunelabError(f"model '{name}' cannot take a classification head: {e}", where="model.name",
                           fix="use an encoder (all-minilm-l6-v2) or a decoder such as smollm2-135m-instruct") from e
    # The head is new: its weights train in fp32 even on a bf16 base (bf16 would round small updates away).
    head_module(model)[1].float()
    model.eval()
    return model


def collate_classification(rows: list[dict[str, Any]], ids: list[int], pad_id: int,
                           width: int | None = None) -> dict[str, torch.Tensor]:
    """input_ids/attention_mask (B, T) padded on the right, labels (B,); T = ``width`` or the longest row,
    rounded up to PAD_MULTIPLE (fewer distinct shapes for oneDNN)."""
    longest = max(len(r["input_ids"]) for r in rows)
    width = width or -(-longest // PAD_MULTIPLE) * PAD_MULTIPLE
    input_ids = torch.full((len(rows), width), pad_id, dtype=torch.long)
    attention = torch.zeros((len(rows), width), dtype=torch.long)
    for i, row in enumerate(rows):
        n = len(row["input_ids"])
        input_ids[i, :n] = torch.tensor(row["input_ids"])
        attention[i, :n] = 1
    return {"input_ids": input_ids, "attention_mask": attention, "labels": torch.tensor(ids, dtype=torch.long)}


@torch.no_grad()
def predict_logits(model: torch.nn.Module, rows: list[dict[str, Any]], pad_id: int, batch_size: int,
                   device: str, precision: str) -> torch.Tensor:
    """Class logits (N, C) in row order, batched by similar length; the model's train/eval mode is restored."""
    was_training = model.training
    model.eval()
    out: list[tuple[list[int], torch.Tensor]] = []
    for idx in plan_batches([len(r["input_ids"]) for r in rows], batch_size, "length_grouped", 0, 0):
        batch = collate_classification([rows[i] for i in idx], [0] * len(idx), pad_id)
        with autocast(device, precision):
            logits = model(input_ids=batch["input_ids"].to(device),
                           attention_mask=batch["attention_mask"].to(device)).logits
        out.append((idx, logits.float().cpu()))
    model.train(was_training)
    result = torch.zeros((len(rows), out[0][1].shape[1]) if out else (0, 0))
    for idx, logits in out:
        result[idx] = logits
    return result


def classification_loss(logits: torch.Tensor, labels: torch.Tensor, smoothing: float = 0.0) -> tuple[torch.Tensor, int]:
    """Summed cross-entropy over rows with a known label, and their count."""
    n = int((labels != IGNORE_LABEL).sum())
    if n == 0:
        return logits.sum() * 0.0, 0
    loss = F.cross_entropy(logits.float(), labels, reduction="sum", ignore_index=IGNORE_LABEL,
                           label_smoothing=smoothing)
    return loss, n


# ------------------------------------------------------------------------------------------------ recipe


@dataclass
class _State:
    step: int = 0
    epoch: int = 0
    tokens: int = 0  # real (non-padding) tokens processed
    examples: int = 0
    train_time: float = 0.0
    best_val: float = math.inf  # the early-stopping metric, oriented so that lower is better
    best_val_loss: float = math.inf
    best_step: int = 0
    bad_evals: int = 0
    best_weights: dict[str, torch.Tensor] | None = field(default=None, repr=False)
    stopped_early: bool = False


class ClassifyRecipe:
    """setup → train → save → cleanup for a sequence classifier (same protocol as `SFTRecipe`)."""

    def __init__(self, recipe: Recipe, run_dir: Path, dist: Any = None, resume: bool = False):
        self.recipe, self.run_dir = recipe, run_dir
        self.preflight(recipe, dist, resume)
        self.state = _State()
        self.metrics = MetricsLog(run_dir / "metrics.jsonl")

    @staticmethod
    def preflight(recipe: Recipe, dist: Any = None, resume: bool = False) -> None:
        """TunelabError naming the keys for what this recipe does not do (checked before any work)."""
        t = recipe.train
        refuse_unsupported("classify", {
            "train.batching=packed": t.batching == "packed",
            **single_process_only(t, dist, resume),
            f"train.early_stopping_metric={t.early_stopping_metric}":
                t.early_stopping_metric not in ("val_loss", *_MAXIMIZED),
        }, fix="classification batches one row per example with padding; early stopping follows val_loss, "
           "accuracy or macro_f1; see docs/objectives.md")

    # ---- setup -------------------------------------------------------------------------------------
    def setup(self) -> None:
        from tunelab.data import prepare_data

        r = self.recipe
        self.device, self.precision, self.resolved, self.tokenizer = start_run(r)
        self.data = prepare_data(r.data, self.tokenizer, objective="classify")
        self.train_rows = self.data.encoded["train"]
        self.val_rows = self.data.encoded.get("validation") or []
        self.labels = label_list(self.train_rows, r.eval.labels)
        self.train_ids = label_ids(self.train_rows, self.labels)
        self.model = self._build_model()
        self.total_steps = self._total_steps()
        self.optimizer, self.scheduler = prepare_training(self.model, r, self.total_steps, self.run_dir)

    def _build_model(self) -> torch.nn.Module:
        r = self.recipe
        dtype = base_dtype(r.method, self.precision)
        model = load_classifier(r.model.name, self.labels, self.tokenizer.pad_token_id, dtype,
                                r.model.trust_remote_code)
        if r.train.gradient_checkpointing:
            model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
        model = apply_method(model, r.method, task_type="SEQ_CLS")
        self._ensure_head_trains(model)
        model = model.to(self.device)
        model.train()
        self.params = count_parameters(model)
        self.est_memory_mb = estimate_training_memory_mb(self.params.total, self.params.trainable,
                                                         2 if dtype == torch.bfloat16 else 4)
        console.print(
            f"classifier [bold]{r.model.name}[/] ({self.resolved.kind}) · {len(self.labels)} labels · method "
            f"[bold]{r.method.name}[/] · trainable {self.params.trainable:,} / {self.params.total:,} "
            f"({self.params.percent:.2f}%) · {self.device}/{self.precision}"
        )
        return model

    def _ensure_head_trains(self, model: torch.nn.Module) -> None:
        """The head is random: a method that would leave it frozen cannot produce a classifier."""
        r = self.recipe
        name, head = head_module(model)
        if r.method.name == "freeze" and not r.method.freeze.train_head:
            raise TunelabError("method.freeze.train_head=false would leave the new classification head random",
                               where="method.freeze.train_head, train.objective",
                               fix="set method.freeze.train_head=true for train.objective=classify")
        if hasattr(model, "get_base_model"):
            # PEFT: the head trains only as a module to save (SEQ_CLS); its copy is what PEFT saves.
            trainable = [n for n, p in model.named_parameters() if p.requires_grad and f".{name}." in f".{n}"]
            if not trainable:
                raise TunelabError(f"method '{r.method.name}' leaves the classification head ('{name}') frozen",
                                   where="method.name, train.objective", fix="use method.name=lora or full")
            return
        for p in head.parameters():  # full / freeze: the head is a plain module of the model
            p.data = p.data.float()
            p.requires_grad_(True)

    def _total_steps(self) -> int:
        t = self.recipe.train
        return optimizer_steps(t, len(self.train_rows), t.grad_accum)

    # ---- data --------------------------------------------------------------------------------------
    def _steps(self):
        """Yield (epoch, [micro-batch tensors]) per optimizer step, across epochs, forever."""
        t = self.recipe.train
        lengths = [len(row["input_ids"]) for row in self.train_rows]
        scores = [row.get("score") for row in self.train_rows]
        width = self.recipe.data.max_length if t.batching == "padded" else None
        epoch = 0
        while True:
            plan = plan_batches(lengths, t.batch_size, t.batching, t.seed, epoch, t.curriculum, scores)
            for i in range(0, len(plan), t.grad_accum):
                yield epoch, [collate_classification([self.train_rows[j] for j in idx],
                                                     [self.train_ids[j] for j in idx],
                                                     self.tokenizer.pad_token_id, width)
                              for idx in plan[i:i + t.grad_accum]]
            epoch += 1

    # ---- train -------------------------------------------------------------------------------------
    def _train_step(self, micro_batches: list[dict[str, torch.Tensor]]) -> tuple[float, float | None]:
        t = self.recipe.train
        n_total = sum(int((mb["labels"] != IGNORE_LABEL).sum()) for mb in micro_batches)
        loss_sum = 0.0
        for mb in micro_batches:
            mb = {k: v.to(self.device) for k, v in mb.items()}
            with autocast(self.device, self.precision):
                logits = self.model(input_ids=mb["input_ids"], attention_mask=mb["attention_mask"]).logits  # (B, C)
            loss, _ = classification_loss(logits, mb["labels"], t.label_smoothing)
            # Normalised by all rows of the step, so accumulation equals one big batch.
            (loss / max(n_total, 1)).backward()
            loss_sum += float(loss.detach())
            self.state.tokens += int(mb["attention_mask"].sum())
        self.state.examples += n_total
        step_loss = loss_sum / max(n_total, 1)
        if not math.isfinite(step_loss):
            raise TunelabError(f"training diverged: loss is {step_loss} at step {self.state.step + 1}; nothing "
                               "was saved", where="train.lr", fix="lower train.lr, or use model.precision=fp32")
        grad_norm = None
        if t.max_grad_norm:
            trainable = [p for p in self.model.parameters() if p.requires_grad]
            grad_norm = float(torch.nn.utils.clip_grad_norm_(trainable, t.max_grad_norm))
        self.optimizer.step()
        self.scheduler.step()
        self.optimizer.zero_grad(set_to_none=True)
        return step_loss, grad_norm

    def validate(self) -> dict[str, float] | None:
        """Validation loss, accuracy and macro-F1 (None without validation rows)."""
        from tunelab.recipes.classify_eval import classification_metrics

        if not self.val_rows:
            return None
        logits = predict_logits(self.model, self.val_rows, self.tokenizer.pad_token_id,
                                self.recipe.eval.batch_size, self.device, self.precision)
        m = classification_metrics(logits, [row["label"] for row in self.val_rows], self.labels, with_ci=False)
        return {"val_loss": m["loss"], "val_accuracy": round(m["accuracy"], 5), "val_macro_f1": round(m["macro_f1"], 5)}

    def _evaluate(self) -> bool:
        """Validation + early-stopping bookkeeping; returns True when training should stop."""
        s, t = self.state, self.recipe.train
        logged = self.validate()
        if logged is None:
            return False
        self.metrics.log(step=s.step, epoch=s.epoch, **logged)
        s.best_val_loss = min(s.best_val_loss, logged["val_loss"])
        name = t.early_stopping_metric
        value = logged["val_loss" if name == "val_loss" else f"val_{name}"]
        higher = t.early_stopping_mode == "max" or (t.early_stopping_mode == "auto" and name in _MAXIMIZED)
        return track_best(s, -value if higher else value, self.model, t.early_stopping_patience, min_delta=1e-6)

    def train(self) -> dict[str, Any]:
        s, t = self.state, self.recipe.train
        self._evaluate()  # step 0: the untrained head, for the curve
        t0 = time.perf_counter()
        with TrainProgress(self.total_steps) as progress:
            for epoch, micro_batches in self._steps():
                s.epoch = epoch
                loss, grad_norm = self._train_step(micro_batches)
                s.step += 1
                elapsed = time.perf_counter() - t0
                progress.update(s.step, loss, s.tokens / elapsed)
                if s.step % t.log_every == 0 or s.step == self.total_steps:
                    self.metrics.log(step=s.step, epoch=epoch, loss=round(loss, 5), lr=self.scheduler.get_last_lr()[0],
                                     grad_norm=grad_norm, tokens=s.tokens, tokens_per_s=round(s.tokens / elapsed, 1))
                at_end = s.step >= self.total_steps
                if (t.eval_every and s.step % t.eval_every == 0) or at_end:
                    t_eval = time.perf_counter()
                    stop = self._evaluate()
                    t0 += time.perf_counter() - t_eval  # throughput and train time exclude validation
                    if stop and not at_end:
                        s.stopped_early = True
                        console.print(f"early stopping at step {s.step} (best at step {s.best_step})")
                        break
                if at_end:
                    break
        s.train_time = time.perf_counter() - t0
        restore_best(self.model, s)
        return self.summary()

    def summary(self) -> dict[str, Any]:
        s = self.state
        return {
            "objective": "classify", "steps": s.step, "epochs_started": s.epoch + 1,
            "train_time_s": round(s.train_time, 2), "real_tokens": s.tokens, "examples": s.examples,
            "real_tokens_per_s": round(s.tokens / max(s.train_time, 1e-9), 1),
            "examples_per_s": round(s.examples / max(s.train_time, 1e-9), 2),
            "best_val_loss": None if math.isinf(s.best_val_loss) else round(s.best_val_loss, 5),
            "best_step": s.best_step, "stopped_early": s.stopped_early, "precision": self.precision,
            "device": self.device, "trainable_params": self.params.trainable, "total_params": self.params.total,
            "est_memory_mb": round(self.est_memory_mb, 1), "peak_rss_mb": round(peak_rss_mb(), 1),
        }

    # ---- save --------------------------------------------------------------------------------------
    def save(self, summary: dict[str, Any], timings: dict[str, float]) -> None:
        r, d = self.recipe, self.run_dir
        peft = hasattr(self.model, "get_base_model")
        self.model.save_pretrained(d / ("adapter" if peft else "model"), safe_serialization=True)
        counts = Counter(row["label"] for row in self.train_rows)
        atomic_write_json(d / "labels.json", {
            "labels": self.labels, "head": head_module(self.model)[0], "model_kind": self.resolved.kind,
            "label_column": r.data.label_column, "train_counts": {lab: counts.get(lab, 0) for lab in self.labels},
        })
        save_run_files(d, self.tokenizer, self.data, summary)
        write_run_manifest(d, r, model_identity(r, self.resolved, with_kind=True), data_identity(self.data), timings,
                           objective="classify")

    def cleanup(self) -> None:
        self.optimizer.zero_grad(set_to_none=True)
        self.state.best_weights = None
