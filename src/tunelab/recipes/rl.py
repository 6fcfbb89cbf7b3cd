"""Online RL (``train.objective: grpo | rloo``): sample completions to prompts, score them, push the policy
towards the better ones, with a KL term against the reference policy. TRL's `GRPOTrainer`/`RLOOTrainer` are
the engines; this module is the glue: our data (prompts from the SFT data reader, the reference answer kept
for rewards that compare with it), our model loading and methods (LoRA by default), the rewards of
`tunelab.rewards`, and our run folder (metrics.jsonl, adapter/ or model/, tokenizer/, manifest.json).

- GRPO: advantage = (reward - group mean) / group std over ``rl.num_generations`` completions of one prompt;
  the loss adds ``rl.beta`` x KL(policy || reference) per token.
- RLOO: advantage = reward - mean of the other completions of the prompt (leave-one-out baseline);
  ``rl.beta`` x KL is subtracted from the reward.
- RLHF with a trained reward model is either of them with ``rl.rewards: [{type: model, model: RUN}]``, or
  PPO (``train.objective: ppo``, `tunelab.recipes.ppo`): TRL 1.x has no PPO trainer any more, so PPO is
  tunelab's own loop, a subclass of this recipe that replaces the TRL part.

With a LoRA-family method the reference is the PEFT base (adapter disabled, no second model in memory); with
``full``/``freeze`` TRL loads a frozen copy; ``rl.reference_model`` names another reference, whose tokenizer
must match the policy's.

Logged per step (metrics.jsonl): loss, reward_mean, reward_std, reward/<name>, kl, completion_len,
clipped_ratio, entropy, lr, grad_norm; before and after training, the mean reward of greedy answers to
``rl.eval_prompts`` held-out prompts (val_reward).
"""

from __future__ import annotations

import math
import shutil
import time
from pathlib import Path
from typing import Any

import torch
from transformers import TrainerCallback

from tunelab.config.specs import Recipe
from tunelab.errors import TunelabError
from tunelab.methods import (
    apply_method,
    artifact_dir,
    count_parameters,
    is_prompt_learning,
    load_base_model,
    preflight,
)
from tunelab.models import autocast, load_tokenizer, resolve_model
from tunelab.recipes.common import (
    data_identity,
    model_identity,
    peak_rss_mb,
    prepare_training,
    refuse_unsupported,
    save_policy,
    save_run_files,
    single_process_only,
    start_run,
    write_run_manifest,
)
from tunelab.rewards import PromptRow, RewardFunction, build_rewards, weighted_total
from tunelab.training.progress import TrainProgress
from tunelab.training.rundir import MetricsLog
from tunelab.util.console import console

__all__ = ["RL_KEYS", "OnlineRLRecipe", "TrlBridge", "check_same_tokenizer", "trl_common_args"]

# TRL log key -> metrics.jsonl key (TRL's "rewards/<name>/mean" become "reward/<name>").
RL_KEYS = {"loss": "loss", "reward": "reward_mean", "reward_std": "reward_std", "kl": "kl",
           "completions/mean_length": "completion_len", "completions/clipped_ratio": "clipped_ratio",
           "entropy": "entropy", "learning_rate": "lr", "grad_norm": "grad_norm",
           "frac_reward_zero_std": "zero_std_groups", "num_tokens": "tokens"}


# ------------------------------------------------------------------------------------------------ TRL glue


class TrlBridge(TrainerCallback):
    """Feeds a TRL/HF Trainer's logs into our MetricsLog (renamed keys) and our progress bar.

    A non-finite loss stops training loudly (nothing is saved after it), as in every tunelab recipe.

    Args:
        metrics: the run's metrics log.
        progress: the progress bar (advanced every optimizer step).
        keys: TRL key -> our key; other keys are dropped, except ``rewards/<name>/mean``.
    """

    def __init__(self, metrics: MetricsLog, progress: TrainProgress, keys: dict[str, str]):
        self.metrics, self.progress, self.keys = metrics, progress, keys
        self.last_loss, self.tokens, self.t0 = math.nan, 0, time.perf_counter()
        self.rows: list[dict[str, Any]] = []

    def on_train_begin(self, args, state, control, **kw):
        self.t0 = time.perf_counter()

    def on_step_end(self, args, state, control, **kw):
        # The Trainer calls on_log after on_step_end: a step that is logged advances the bar there, with its own
        # loss instead of the previous step's.
        if not (args.logging_steps and state.global_step % args.logging_steps == 0):
            self._advance(state.global_step)

    def _advance(self, step: int) -> None:
        """Move the bar to ``step``; before the first logged loss there is no value to show, so it waits."""
        if math.isfinite(self.last_loss):
            elapsed = max(time.perf_counter() - self.t0, 1e-9)
            self.progress.update(step, self.last_loss, self.tokens / elapsed)

    def on_log(self, args, state, control, logs=None, **kw):
        logs = logs or {}
        if "train_runtime" in logs:  # the end-of-training summary, not a step
            return
        row: dict[str, Any] = {}
        for key, value in logs.items():
            name = self.keys.get(key)
            if name is None and key.startswith("rewards/") and key.endswith("/mean"):
                name = "reward/" + key[len("rewards/"):-len("/mean")]
            if name is not None and isinstance(value, int | float):
                row[name] = round(float(value), 6)
        loss = row.get("loss")
        if loss is not None and not math.isfinite(loss):
            raise TunelabError(f"training diverged: loss is {loss} at step {state.global_step}; nothing was saved",
                               where="train.lr", fix="lower train.lr, or use model.precision=fp32")
        if loss is not None:
            self.last_loss = loss
        self.tokens = int(row.get("tokens", self.tokens))
        self.metrics.log(step=state.global_step, epoch=round(float(state.epoch or 0.0), 4), **row)
        self.rows.append(row)
        if loss is not None:  # a training row (validation rows carry val_* keys only)
            self._advance(state.global_step)


def trl_common_args(recipe: Recipe, output_dir: Path, device: str, precision: str, total_steps: int,
                    ) -> dict[str, Any]:
    """TrainingArguments shared by our TRL recipes: our batch/steps/seed, no hub, no trackers, no checkpoints."""
    t = recipe.train
    return {
        "output_dir": str(output_dir), "per_device_train_batch_size": t.batch_size,
        "gradient_accumulation_steps": t.grad_accum, "max_steps": total_steps, "learning_rate": t.lr,
        "logging_steps": t.log_every, "save_strategy": "no", "report_to": "none", "use_cpu": device == "cpu",
        "bf16": precision == "bf16", "gradient_checkpointing": t.gradient_checkpointing, "seed": t.seed,
        "data_seed": t.seed, "disable_tqdm": True, "max_grad_norm": t.max_grad_norm or 0.0,
        "dataloader_num_workers": 0, "remove_unused_columns": False, "push_to_hub": False,
    }


def quiet_trainer(trainer: Any) -> None:
    """Drop the Trainer's own console printers: our progress bar and metrics.jsonl replace them."""
    from transformers.trainer_callback import PrinterCallback, ProgressCallback

    for cb in (PrinterCallback, ProgressCallback):
        trainer.remove_callback(cb)


def check_same_tokenizer(policy_tok: Any, other_tok: Any, other: str, where: str) -> None:
    """A second model that reads the policy's token ids (a reference policy) must share its vocabulary.

    Raises:
        TunelabError: naming both vocabulary sizes and the first token that differs.
    """
    a, b = policy_tok.get_vocab(), other_tok.get_vocab()
    if a == b and policy_tok.eos_token_id == other_tok.eos_token_id:
        return
    diff = next((tok for tok, i in sorted(a.items(), key=lambda kv: kv[1]) if b.get(tok) != i), None)
    detail = f"first difference: token {diff!r}" if diff is not None else "different EOS token"
    raise TunelabError(f"'{other}' has a different tokenizer than the policy ({len(b)} vs {len(a)} tokens; "
                       f"{detail}); its log-probabilities would be of other token ids", where=where,
                       fix="use a model of the same family as model.name (e.g. the SFT run the policy starts "
                       "from), or leave it null to use the policy's starting weights")


# ------------------------------------------------------------------------------------------------ recipe


def refuse_encoder_policy(recipe: Recipe) -> None:
    """Online RL samples completions from the policy: an encoder cannot write any."""
    if resolve_model(recipe.model.name).kind == "encoder":
        raise TunelabError(f"model '{recipe.model.name}' is an encoder and cannot generate completions",
                           where="model.name", fix="use a decoder such as smollm2-135m-instruct")


class OnlineRLRecipe:
    """setup → train → save → cleanup for GRPO or RLOO (the same protocol as `SFTRecipe`)."""

    def __init__(self, recipe: Recipe, run_dir: Path, dist: Any = None, resume: bool = False):
        self.recipe, self.run_dir = recipe, run_dir
        self.preflight(recipe, dist, resume)
        self.metrics = MetricsLog(run_dir / "metrics.jsonl")
        self.reference: torch.nn.Module | None = None
        self.held_out: dict[str, float | None] = {"before": None, "after": None}
        self._step = 0  # the optimizer step the held-out rows are logged at

    @staticmethod
    def preflight(recipe: Recipe, dist: Any = None, resume: bool = False) -> None:
        """TunelabError naming the keys for what online RL does not do (checked before any work)."""
        t = recipe.train
        refuse_unsupported(t.objective, {
            **single_process_only(t, dist, resume),
            "early stopping (train.early_stopping_patience)": t.early_stopping_patience is not None,
            f"prompt-learning method '{recipe.method.name}' (TRL computes log-probs without virtual tokens)":
                is_prompt_learning(recipe.method),
        }, fix="see docs/preferences.md (Online RL)")
        refuse_encoder_policy(recipe)
        preflight(recipe)

    # ---- setup -------------------------------------------------------------------------------------
    def setup(self) -> None:
        from tunelab.data import prepare_data

        r = self.recipe
        self.device, self.precision, self.resolved, self.tokenizer = start_run(r)
        self.data = prepare_data(r.data, self.tokenizer)
        self.rows = [PromptRow.from_example(ex) for ex in self.data.splits["train"]]
        held = self.data.splits.get("validation") or self.data.splits.get("test") or []
        self.eval_rows = [PromptRow.from_example(ex) for ex in held[: r.rl.eval_prompts]]
        self.rewards = build_rewards(r.rl.rewards, self.tokenizer, self.device, self.precision)
        for reward in self.rewards:
            reward.check_rows(self.rows + self.eval_rows)
        self.model = self._build_model()
        if r.rl.reference_model:
            self.reference = self._load_reference(r.rl.reference_model)
        self.total_steps = self._total_steps()
        self.optimizer, self.scheduler = self._optimizer()

    def _optimizer(self) -> tuple[Any, Any]:
        """The optimizer and schedule (PPO adds its value head and counts several updates per step)."""
        return prepare_training(self.model, self.recipe, self.total_steps, self.run_dir)

    def _build_model(self) -> torch.nn.Module:
        r = self.recipe
        model = apply_method(load_base_model(r.model, r.method, self.precision), r.method).to(self.device)
        model.train()
        self.params = count_parameters(model)
        console.print(
            f"policy [bold]{r.model.name}[/] · {r.train.objective} · method [bold]{r.method.name}[/] · trainable "
            f"{self.params.trainable:,} / {self.params.total:,} ({self.params.percent:.2f}%) · "
            f"{self.device}/{self.precision} · rewards {', '.join(f'{x.name} x{x.weight:g}' for x in self.rewards)}"
        )
        return model

    def _load_reference(self, name: str) -> torch.nn.Module:
        from tunelab.models import is_run_dir, load_causal_lm, load_run_model

        where = "rl.reference_model"
        dtype = torch.bfloat16 if self.precision == "bf16" else torch.float32
        if is_run_dir(name):
            model, tok = load_run_model(name, dtype=dtype)
            check_same_tokenizer(self.tokenizer, tok, name, where)
        else:  # the tokenizer first: a mismatch is reported before the weights are read
            check_same_tokenizer(self.tokenizer, load_tokenizer(name, self.recipe.model.trust_remote_code), name,
                                 where)
            model = load_causal_lm(name, self.recipe.model.trust_remote_code, dtype=dtype)
        model.requires_grad_(False)
        return model.to(self.device).eval()

    def _total_steps(self) -> int:
        t, rl = self.recipe.train, self.recipe.rl
        prompts_per_step = t.batch_size * t.grad_accum // rl.num_generations
        return t.max_steps or max(1, math.ceil(t.epochs * len(self.rows) / prompts_per_step))

    # ---- TRL ---------------------------------------------------------------------------------------
    def _reward_funcs(self) -> list[Any]:
        """Our rewards in TRL's calling convention; the dataset's ``row`` column indexes `self.rows`."""

        def wrap(reward: RewardFunction) -> Any:
            def fn(prompts, completions, row, **_):
                texts = [c[-1]["content"] if isinstance(c, list) else c for c in completions]
                return reward([self.rows[i] for i in row], texts)

            fn.__name__ = reward.name  # TRL logs rewards/<__name__>/mean
            return fn

        return [wrap(x) for x in self.rewards]

    def _trainer(self, callbacks: list[Any]) -> Any:
        from datasets import Dataset

        r, rl = self.recipe, self.recipe.rl
        if r.train.objective == "grpo":
            from trl import GRPOConfig as Config
            from trl import GRPOTrainer as Trainer
            extra = {"loss_type": rl.loss_type}
        else:
            from trl import RLOOConfig as Config
            from trl import RLOOTrainer as Trainer
            extra = {}
        args = Config(
            **trl_common_args(r, self.run_dir / "trainer", self.device, self.precision, self.total_steps),
            num_generations=rl.num_generations, max_completion_length=rl.max_completion_length,
            temperature=rl.temperature, top_p=rl.top_p, top_k=rl.top_k, beta=rl.beta, epsilon=rl.epsilon,
            num_iterations=rl.num_iterations, reward_weights=[x.weight for x in self.rewards],
            shuffle_dataset=True, log_completions=False, **extra)
        dataset = Dataset.from_list([{"prompt": row.messages, "row": i} for i, row in enumerate(self.rows)])
        trainer = Trainer(model=self.model, reward_funcs=self._reward_funcs(), args=args, train_dataset=dataset,
                          processing_class=self.tokenizer, callbacks=callbacks,
                          optimizers=(self.optimizer, self.scheduler))
        quiet_trainer(trainer)
        if self.reference is not None:
            trainer.ref_model = self.reference  # takes precedence over the PEFT base in TRL's KL term
        return trainer

    # ---- train -------------------------------------------------------------------------------------
    def held_out_reward(self, label: str) -> float | None:
        """Mean total reward of greedy answers to the held-out prompts (None without held-out prompts)."""
        from tunelab.evaluation.generate import generate_answers

        if not self.eval_rows:
            return None
        was_training = self.model.training
        self.model.eval()
        with autocast(self.device, self.precision):
            answers = generate_answers(self.model, self.tokenizer, [row.messages for row in self.eval_rows],
                                       self.recipe.rl.max_completion_length, self.recipe.eval.batch_size,
                                       self.device, label=f"held-out prompts ({label})")
        self.model.train(was_training)
        total, per = weighted_total(self.rewards, self.eval_rows, answers)
        value = sum(total) / len(total)
        self.metrics.log(step=self._step, val_reward=round(value, 5),
                         **{f"val_reward/{k}": round(sum(v) / len(v), 5) for k, v in per.items()})
        return value

    def train(self) -> dict[str, Any]:
        self.held_out["before"] = self.held_out_reward("before")
        with TrainProgress(self.total_steps) as progress:
            bridge = TrlBridge(self.metrics, progress, RL_KEYS)
            self.trainer = self._trainer([bridge])
            t0 = time.perf_counter()
            self.trainer.train()
            train_s = time.perf_counter() - t0
        self._step = self.trainer.state.global_step
        self.held_out["after"] = self.held_out_reward("after")
        return self.summary(bridge, train_s)

    def summary(self, bridge: TrlBridge, train_s: float) -> dict[str, Any]:
        return self.summary_of(bridge.rows, bridge.tokens, self.trainer.state.global_step, train_s)

    def summary_of(self, logged: list[dict[str, Any]], tokens: int, steps: int, train_s: float) -> dict[str, Any]:
        """train_summary.json from the logged step rows (shared with PPO, which has no TRL bridge)."""
        rows = [row for row in logged if "reward_mean" in row]
        rewards = [row["reward_mean"] for row in rows]
        k = max(1, min(10, len(rewards) // 2))
        kls = [row["kl"] for row in rows if "kl" in row]
        return {
            "objective": self.recipe.train.objective, "steps": steps,
            "train_time_s": round(train_s, 2), "real_tokens": tokens,
            "real_tokens_per_s": round(tokens / max(train_s, 1e-9), 1),
            "reward_first": round(sum(rewards[:k]) / k, 5) if rewards else None,
            "reward_last": round(sum(rewards[-k:]) / k, 5) if rewards else None, "reward_window": k,
            "kl_max": round(max(kls), 6) if kls else None, "kl_last": kls[-1] if kls else None,
            "held_out_reward": dict(self.held_out), "held_out_prompts": len(self.eval_rows),
            "best_val_loss": None, "precision": self.precision, "device": self.device,
            "trainable_params": self.params.trainable, "total_params": self.params.total,
            "peak_rss_mb": round(peak_rss_mb(), 1),
        }

    # ---- save --------------------------------------------------------------------------------------
    def save(self, summary: dict[str, Any], timings: dict[str, float]) -> None:
        r, d = self.recipe, self.run_dir
        save_policy(self.model, d / artifact_dir(r.method))  # without TRL's 'ref' adapter (the KL reference)
        save_run_files(d, self.tokenizer, self.data, summary)
        write_run_manifest(d, r, model_identity(r, self.resolved), data_identity(self.data), timings,
                           objective=r.train.objective,
                           rewards=[{"name": x.name, "where": x.where, "weight": x.weight} for x in self.rewards])
        _write_reward_plot(self.metrics.rows, d / "plots" / "reward.png")
        shutil.rmtree(d / "trainer", ignore_errors=True)  # TRL's output_dir: empty (no checkpoints, no hub)

    def cleanup(self) -> None:
        self.optimizer.zero_grad(set_to_none=True)
        self.trainer = None
        self.reference = None


def _write_reward_plot(rows: list[dict[str, Any]], path: Path) -> None:
    """Mean training reward per logged step (and KL on a second axis) as a PNG."""
    from matplotlib.figure import Figure

    pts = [(r["step"], r["reward_mean"], r.get("kl")) for r in rows if "reward_mean" in r]
    if not pts:
        return
    fig = Figure(figsize=(6.4, 3.6))
    ax = fig.add_subplot()
    ax.plot([p[0] for p in pts], [p[1] for p in pts], color="#2563eb", marker="o", ms=3, label="mean reward")
    ax.set_xlabel("step")
    ax.set_ylabel("mean reward (sampled completions)")
    kl = [(p[0], p[2]) for p in pts if p[2] is not None]
    handles = ax.get_lines()
    if kl:
        ax2 = ax.twinx()
        ax2.plot([p[0] for p in kl], [p[1] for p in kl], color="#ea580c", lw=1, label="KL to reference")
        ax2.set_ylabel("KL to reference")
        handles = [*handles, *ax2.get_lines()]
    ax.legend(handles=handles, loc="upper left", fontsize=8, frameon=False)
    ax.set_title("online RL: reward per step", loc="left", fontsize=11, fontweight="bold")
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    fig.savefig(tmp, format="png", dpi=110, bbox_inches="tight")
    tmp.replace(path)
