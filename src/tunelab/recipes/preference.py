"""Preference objectives (``train.objective: preference``) on TRL, with our methods and our run folder.

``preference.loss`` picks the TRL trainer: sigmoid/ipo/hinge → ``DPOTrainer`` (``loss_type``), orpo →
``ORPOTrainer``, simpo/cpo → ``CPOTrainer`` (simpo: ``loss_type="simpo"``, ``cpo_alpha=0``), kto →
``KTOTrainer``. TRL is the engine; tunelab supplies what a run needs around it:

- the model comes from `tunelab.methods.load_base_model` + `apply_method` (every method; LoRA by default),
  the tokenizer from `tunelab.models.load_tokenizer` (offline, safetensors only);
- the optimizer and schedule are ours (`build_optimizer`/`build_scheduler`: AdamW/Adafactor/SGD, LoRA+
  groups, warmup), handed to TRL as ``optimizers=``;
- the data is ours (`prepare_preference`: formats, rejects with reasons, prompt-grouped split, length
  limits); TRL gets the already-rendered text (prompt with generation prompt; answers ending with EOS);
- the reference policy (``preference.reference``): 'peft' lets TRL score the reference with a frozen copy
  of the initial adapter (LoRA's default init is exactly the base model), so no second model is loaded;
  'precompute' scores every pair once before training (TRL ``precompute_ref_log_probs``) with the model
  itself; 'copy' loads a second frozen model (``reference_model`` or the base), whose tokenizer is checked;
- `_Bridge` (a ``TrainerCallback``) writes TRL's logs to metrics.jsonl with our keys (``loss``, ``lr``,
  ``rewards_chosen``, ``rewards_rejected``, ``reward_margin``, ``reward_accuracy``, ...; ``val_*`` for
  validation), drives our progress bar with real tokens/s, and stops on a NaN/inf loss before anything is
  saved.
"""

from __future__ import annotations

import contextlib
import math
import shutil
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import torch
from transformers import TrainerCallback

from tunelab.config.specs import REFERENCE_FREE_LOSSES, Recipe
from tunelab.errors import TunelabError
from tunelab.methods import (
    PROMPT_LEARNING,
    apply_method,
    artifact_dir,
    count_parameters,
    estimate_training_memory_mb,
    load_base_model,
    saves_full_weights,
)
from tunelab.methods import preflight as method_preflight
from tunelab.models import load_causal_lm, load_tokenizer, resolve_model
from tunelab.recipes.common import (
    data_identity,
    model_identity,
    optimizer_steps,
    peak_rss_mb,
    prepare_training,
    refuse_unsupported,
    save_policy,
    save_run_files,
    single_process_only,
    start_run,
    write_run_manifest,
)
from tunelab.recipes.preference_eval import prepare_preference
from tunelab.training.progress import TrainProgress
from tunelab.training.rundir import MetricsLog
from tunelab.util.console import console

__all__ = ["DPO_LOSSES", "PreferenceRecipe", "resolve_reference"]

DPO_LOSSES = ("sigmoid", "ipo", "hinge")
# TRL log keys -> metrics.jsonl keys (validation rows get a val_ prefix).
_KEYS = {"loss": "loss", "learning_rate": "lr", "grad_norm": "grad_norm", "rewards/chosen": "rewards_chosen",
         "rewards/rejected": "rewards_rejected", "rewards/margins": "reward_margin",
         "rewards/accuracies": "reward_accuracy", "logps/chosen": "logps_chosen", "logps/rejected": "logps_rejected",
         "kl": "kl", "nll_loss": "nll_loss", "log_odds_ratio": "log_odds_ratio"}
_TOKEN_KEYS = ("attention_mask", "chosen_attention_mask", "rejected_attention_mask", "completion_attention_mask",
               "KL_completion_attention_mask")


def resolve_reference(recipe: Recipe) -> str:
    """The reference policy actually used: 'none', 'peft', 'precompute' or 'copy' ('auto' resolved)."""
    p, method = recipe.preference, recipe.method
    if p.loss in REFERENCE_FREE_LOSSES:
        return "none"
    if p.reference != "auto":
        return p.reference
    # 'peft' disables a PEFT adapter; full weights, virtual tokens and tunelab's bottleneck adapters have none.
    no_peft_base = saves_full_weights(method) or method.name in PROMPT_LEARNING or method.name == "bottleneck"
    return "precompute" if no_peft_base else "peft"


@contextlib.contextmanager
def _score_answers_only() -> Iterator[None]:
    """Let TRL's fused head score only the answer tokens on a CPU, as it does on CUDA.

    TRL 1.x projects every position (prompt and padding too) onto the 49k vocabulary on devices without
    Triton, so that tile shapes stay fixed for Neuron's compiler; a CPU has no compiler to please, and the
    positions without a label only cost time and memory (the log-probabilities are the same; the head's
    share of a step drops with the prompt share of the sequence). Restored on exit; a TRL without this
    private switch is left alone.
    """
    import trl.trainer.utils as trl_utils

    original = getattr(trl_utils, "_use_triton", None)
    if original is None:
        yield
        return
    trl_utils._use_triton = lambda device: device.type == "cpu" or original(device)
    try:
        yield
    finally:
        trl_utils._use_triton = original


# ------------------------------------------------------------------------------------------- callback


class _CountTokens:
    """Wraps TRL's collator: counts the real (attention-mask) tokens of every batch it builds."""

    def __init__(self, collate: Any):
        self.collate, self.total = collate, 0

    def __call__(self, examples: list[dict[str, Any]]) -> dict[str, Any]:
        batch = self.collate(examples)
        self.total += sum(int(batch[k].sum()) for k in _TOKEN_KEYS if k in batch)
        return batch


class _Bridge(TrainerCallback):
    """TRL logs -> MetricsLog rows with our keys; progress bar; NaN/inf stop; train vs eval time and tokens.

    TRL logs every step (``logging_steps=1``) so that the bar shows each step's loss; rows are written every
    ``train.log_every`` steps with the mean of the steps since the last row.
    """

    def __init__(self, metrics: MetricsLog, total_steps: int, log_every: int, counter: _CountTokens):
        self.metrics, self.total_steps, self.log_every, self.counter = metrics, total_steps, log_every, counter
        self.progress: TrainProgress | None = None
        self.t0 = self.mark_t = 0.0
        self.eval_s, self.eval_tokens, self.mark_tokens = 0.0, 0, 0
        self.last_loss, self.best_val_loss = math.nan, math.inf
        self.pending: list[dict[str, float]] = []

    def train_tokens(self) -> int:
        return self.counter.total - self.eval_tokens

    def train_seconds(self) -> float:
        return time.perf_counter() - self.t0 - self.eval_s if self.t0 else 0.0

    def on_train_begin(self, args, state, control, **kw):
        self.progress = TrainProgress(self.total_steps).__enter__()
        self.t0 = self.mark_t = time.perf_counter()
        self.eval_tokens = self.mark_tokens = self.counter.total  # batches built before training were not training

    def on_evaluate(self, args, state, control, **kw):
        # Evaluation runs between a step's end and this call: its time and tokens are not training.
        if self.t0:
            self.eval_s += time.perf_counter() - self.mark_t
        self.eval_tokens += self.counter.total - self.mark_tokens
        self.mark_t, self.mark_tokens = time.perf_counter(), self.counter.total

    def on_train_end(self, args, state, control, **kw):
        if self.progress is not None:
            self.progress.__exit__(None, None, None)
            self.progress = None

    def on_log(self, args, state, control, logs=None, **kw):
        logs = logs or {}
        evaluating = "eval_loss" in logs
        if "loss" not in logs and not evaluating:
            return  # the end-of-training summary row (train_runtime, ...)
        loss = float(logs["eval_loss" if evaluating else "loss"])
        if not math.isfinite(loss):
            raise TunelabError(f"training diverged: {'validation ' if evaluating else ''}loss is {loss} at step "
                               f"{state.global_step}; nothing was saved", where="train.lr",
                               fix="lower train.lr or preference.beta, or use model.precision=fp32")
        if evaluating:
            row = {f"val_{_KEYS[k[5:]]}": round(float(v), 6) for k, v in logs.items() if k[5:] in _KEYS}
            self.best_val_loss = min(self.best_val_loss, loss)
            self.metrics.log(step=state.global_step, epoch=round(state.epoch or 0, 4), **row)
            return
        self.last_loss = loss
        self.pending.append({_KEYS[k]: float(v) for k, v in logs.items() if k in _KEYS})
        self._step_done(state)

    def _step_done(self, state) -> None:
        self.mark_t, self.mark_tokens = time.perf_counter(), self.counter.total
        tokens, seconds = self.train_tokens(), max(self.train_seconds(), 1e-9)
        if self.progress is not None:
            self.progress.update(state.global_step, self.last_loss, tokens / seconds)
        if state.global_step % self.log_every and state.global_step < self.total_steps:
            return
        keys = {k for row in self.pending for k in row}
        mean = {k: round(sum(r[k] for r in self.pending if k in r) / sum(k in r for r in self.pending), 6)
                for k in sorted(keys)}
        self.pending = []
        self.metrics.log(step=state.global_step, epoch=round(state.epoch or 0, 4), **mean, tokens=tokens,
                         tokens_per_s=round(tokens / seconds, 1))


# ---------------------------------------------------------------------------------------------- recipe


class PreferenceRecipe:
    """setup → train → save → cleanup for a preference objective (same protocol as `SFTRecipe`)."""

    def __init__(self, recipe: Recipe, run_dir: Path, dist: Any = None, resume: bool = False):
        self.recipe, self.run_dir = recipe, run_dir
        self.preflight(recipe, dist, resume)
        self.metrics = MetricsLog(run_dir / "metrics.jsonl")
        self.reference = resolve_reference(recipe)

    @staticmethod
    def preflight(recipe: Recipe, dist: Any = None, resume: bool = False) -> None:
        """TunelabError naming the keys for combinations this recipe does not do (before any work)."""
        t, m = recipe.train, recipe.method
        if resolve_model(recipe.model.name).kind != "causal-lm":
            raise TunelabError(f"model '{recipe.model.name}' is not a causal language model", where="model.name",
                               fix="preference training needs a decoder such as smollm2-135m-instruct")
        refuse_unsupported("preference", {
            **single_process_only(t, dist, resume),
            "train.batching=packed": t.batching == "packed",
            f"train.curriculum={t.curriculum}": t.curriculum != "none",
            "train.early_stopping_patience": t.early_stopping_patience is not None,
            "train.label_smoothing (a token loss setting)": t.label_smoothing > 0,
            "train.dropout (TRL disables dropout for preference losses)": t.dropout is not None,
        }, fix="remove the setting; see docs/preferences.md")
        ref = resolve_reference(recipe)
        if ref == "peft" and (saves_full_weights(m) or m.name in PROMPT_LEARNING):
            raise TunelabError(f"preference.reference=peft needs a LoRA/IA3 adapter, but method.name={m.name}",
                               where="preference.reference, method.name",
                               fix="use preference.reference=precompute (no second model) or copy")
        if recipe.preference.loss == "kto" and t.batch_size < 2:
            raise TunelabError("KTO estimates its KL term from mismatched rows of a batch; batch_size=1 has none",
                               where="train.batch_size", fix="use train.batch_size >= 2")
        method_preflight(recipe)  # the method against the model (qlora without CUDA, unknown target modules, ...)

    # ---- setup -------------------------------------------------------------------------------------
    def setup(self) -> None:
        r = self.recipe
        self.device, self.precision, self.resolved, self.tokenizer = start_run(r)
        self.data = prepare_preference(r.data, self.tokenizer, unpaired=r.preference.loss == "kto")
        self.ref_model = self._load_reference() if self.reference == "copy" else None
        self.model = self._build_model()
        self.total_steps = self._total_steps()
        self.optimizer, self.scheduler = prepare_training(self.model, r, self.total_steps, self.run_dir)

    def _build_model(self) -> torch.nn.Module:
        r = self.recipe
        model = load_base_model(r.model, r.method, self.precision)
        if r.train.gradient_checkpointing:
            model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
        model = apply_method(model, r.method).to(self.device)
        model.train()
        self.params = count_parameters(model)
        dtype_bytes = 2 if next(model.parameters()).dtype == torch.bfloat16 else 4
        self.est_memory_mb = estimate_training_memory_mb(self.params.total, self.params.trainable, dtype_bytes)
        console.print(
            f"model [bold]{r.model.name}[/] · method [bold]{r.method.name}[/] · preference loss "
            f"[bold]{r.preference.loss}[/] (beta {r.preference.beta}, reference {self.reference}) · trainable "
            f"{self.params.trainable:,} / {self.params.total:,} ({self.params.percent:.2f}%) · "
            f"{self.device}/{self.precision}"
        )
        return model

    def _load_reference(self) -> torch.nn.Module:
        """A second frozen model; its tokenizer must give the same token ids as the policy's."""
        r = self.recipe
        name = r.preference.reference_model or r.model.name
        ref_tok = load_tokenizer(name, r.model.trust_remote_code)
        if ref_tok.get_vocab() != self.tokenizer.get_vocab():
            raise TunelabError(f"the reference model '{name}' has a different tokenizer than '{r.model.name}' "
                               "(the same token ids would mean different text)", where="preference.reference_model",
                               fix="use a reference from the same model family, or preference.reference=precompute")
        dtype = torch.bfloat16 if self.precision == "bf16" else torch.float32
        ref = load_causal_lm(name, r.model.trust_remote_code, dtype).to(self.device)
        ref.requires_grad_(False)
        return ref

    def _total_steps(self) -> int:
        t = self.recipe.train
        return optimizer_steps(t, len(self.data.encoded["train"]), t.grad_accum)

    # ---- TRL ---------------------------------------------------------------------------------------
    def _datasets(self) -> tuple[Any, Any]:
        """TRL rows as text: the prompt as rendered with the generation prompt, answers ending with EOS."""
        from datasets import Dataset

        def rows(split: str) -> list[dict[str, Any]]:
            dec = self.tokenizer.decode
            out = []
            for e in self.data.encoded[split]:
                row = {"prompt": dec(e["prompt_ids"])}
                if "label" in e:
                    row.update(completion=dec(e["completion_ids"]), label=e["label"])
                else:
                    row.update(chosen=dec(e["chosen_ids"]), rejected=dec(e["rejected_ids"]))
                out.append(row)
            return out

        val = rows("validation")
        return Dataset.from_list(rows("train")), (Dataset.from_list(val) if val else None)

    def _trl_args(self, config_cls: type, has_eval: bool, **extra: Any) -> Any:
        r, t = self.recipe, self.recipe.train
        return config_cls(
            output_dir=str(self.run_dir / ".trl"), max_steps=self.total_steps, per_device_train_batch_size=t.batch_size,
            per_device_eval_batch_size=t.batch_size, gradient_accumulation_steps=t.grad_accum, learning_rate=t.lr,
            max_grad_norm=t.max_grad_norm or 0.0, logging_steps=1, seed=t.seed, data_seed=t.seed,
            eval_strategy="steps" if has_eval and t.eval_every else "no", eval_steps=t.eval_every,
            save_strategy="no", report_to="none", disable_tqdm=True, use_cpu=self.device == "cpu",
            bf16=self.precision == "bf16", gradient_checkpointing=t.gradient_checkpointing,
            dataloader_num_workers=0, beta=r.preference.beta, max_length=r.data.max_length, **extra)

    def _trainer(self, callbacks: list[Any]) -> Any:
        from datasets.utils.logging import disable_progress_bar

        disable_progress_bar()  # TRL's dataset maps are quick here; our bar shows the training
        p = self.recipe.preference
        train_ds, eval_ds = self._datasets()
        common = {"model": self.model, "train_dataset": train_ds, "eval_dataset": eval_ds,
                  "processing_class": self.tokenizer, "optimizers": (self.optimizer, self.scheduler),
                  "callbacks": callbacks}
        precompute = self.reference == "precompute"
        if p.loss in DPO_LOSSES:
            from trl import DPOConfig, DPOTrainer

            args = self._trl_args(DPOConfig, eval_ds is not None, loss_type=[p.loss], precompute_ref_log_probs=precompute)
            return DPOTrainer(ref_model=self.ref_model, args=args, **common)
        if p.loss == "kto":
            from trl import KTOConfig, KTOTrainer

            args = self._trl_args(KTOConfig, eval_ds is not None, precompute_ref_log_probs=precompute,
                                  desirable_weight=p.desirable_weight, undesirable_weight=p.undesirable_weight)
            return KTOTrainer(ref_model=self.ref_model, args=args, **common)
        if p.loss == "orpo":
            from trl.experimental.orpo import ORPOConfig, ORPOTrainer

            return ORPOTrainer(args=self._trl_args(ORPOConfig, eval_ds is not None), **common)
        from trl.experimental.cpo import CPOConfig, CPOTrainer

        extra = ({"loss_type": "simpo", "cpo_alpha": 0.0, "simpo_gamma": p.simpo_gamma} if p.loss == "simpo"
                 else {"loss_type": "sigmoid", "cpo_alpha": p.cpo_alpha})
        return CPOTrainer(args=self._trl_args(CPOConfig, eval_ds is not None, **extra), **common)

    # ---- train -------------------------------------------------------------------------------------
    def train(self) -> dict[str, Any]:
        with _score_answers_only():  # also while TRL precomputes reference log-probs in its constructor
            self.trainer = self._build_trainer()
            if self.trainer.eval_dataset is not None:
                self.trainer.evaluate()  # step 0: the untrained policy, for the curve
            self.trainer.train()
            train_s = self.bridge.train_seconds()
            every = self.recipe.train.eval_every
            if self.trainer.eval_dataset is not None and not (every and self.total_steps % every == 0):
                self.trainer.evaluate()  # the end of training, unless the schedule just did
        return self.summary(train_s)

    def _build_trainer(self) -> Any:
        from transformers import PrinterCallback, ProgressCallback

        counter = _CountTokens(None)
        self.bridge = _Bridge(self.metrics, self.total_steps, self.recipe.train.log_every, counter)
        trainer = self._trainer([self.bridge])
        for cb in (PrinterCallback, ProgressCallback):  # our bar and metrics.jsonl replace TRL's printing
            trainer.remove_callback(cb)
        counter.collate = trainer.data_collator
        trainer.data_collator = counter
        return trainer

    def summary(self, train_s: float) -> dict[str, Any]:
        b, r = self.bridge, self.recipe
        tokens = b.train_tokens()
        n_train = len(self.data.encoded["train"])
        return {
            "objective": "preference", "loss": r.preference.loss, "beta": r.preference.beta,
            "reference": self.reference, "steps": self.trainer.state.global_step,
            "train_time_s": round(train_s, 2), "real_tokens": tokens,
            "real_tokens_per_s": round(tokens / max(train_s, 1e-9), 1),
            "train_rows": n_train, "epochs": round(self.trainer.state.epoch or 0, 3),
            "final_loss": None if math.isnan(b.last_loss) else round(b.last_loss, 5),
            "best_val_loss": None if math.isinf(b.best_val_loss) else round(b.best_val_loss, 5),
            "precision": self.precision, "device": self.device, "trainable_params": self.params.trainable,
            "total_params": self.params.total, "est_memory_mb": round(self.est_memory_mb, 1),
            "peak_rss_mb": round(peak_rss_mb(), 1),
        }

    # ---- save --------------------------------------------------------------------------------------
    def save(self, summary: dict[str, Any], timings: dict[str, float]) -> None:
        from tunelab.data.preference_report import pair_stats

        r, d = self.recipe, self.run_dir
        save_policy(self.model, d / artifact_dir(r.method))  # without TRL's 'ref' adapter (the reference)
        summary_data = dict(self.data.summary)
        if summary_data["kind"] == "pairs":
            summary_data["pairs"] = pair_stats(self.data.splits["train"])  # length bias etc. of what was trained
        save_run_files(d, self.tokenizer, self.data, summary, data_summary=summary_data)
        write_run_manifest(d, r, model_identity(r, self.resolved), data_identity(self.data), timings,
                           objective="preference",
                           preference={"loss": r.preference.loss, "beta": r.preference.beta,
                                       "reference": self.reference, "reference_model": r.preference.reference_model})

    def cleanup(self) -> None:
        shutil.rmtree(self.run_dir / ".trl", ignore_errors=True)  # TRL's output_dir; nothing is saved there
        self.ref_model = None
        self.optimizer.zero_grad(set_to_none=True)
