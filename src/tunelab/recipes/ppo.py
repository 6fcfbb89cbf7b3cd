"""PPO (``train.objective: ppo``): RLHF the way Ziegler et al. (2019) and Stiennon et al. (2020) did it, with a
value model, a per-token KL penalty against the reference and GAE. TRL 1.x has no ``PPOTrainer`` any more
(removed from its core, not in ``trl.experimental``), so this loop is tunelab's own; everything around it is
`OnlineRLRecipe`'s: the prompts and held-out prompts, the rewards of ``rl.rewards`` (rules, JSON schema, a
trained reward model, callables), the reference (PEFT base with the adapter disabled, or a frozen copy, or
``rl.reference_model``), the run folder, the reward plot and the summary. The math is in `tunelab.training.ppo`.

One PPO step:

1. rollout: ``train.batch_size x train.grad_accum`` prompts, one sampled completion each (``rl.temperature``,
   ``rl.top_p``, ``rl.top_k``, ``rl.max_completion_length``; KV cache), scored by the weighted rewards
   (minus ``rl.ppo.missing_eos_penalty`` when a completion does not end);
2. no-grad forwards: log-probs of the completion tokens under the policy (and its values) and the reference;
   per-token reward ``-kl_coef * (logp - ref_logp)`` plus the score at the last token; GAE
   (``rl.ppo.gamma``, ``rl.ppo.lam``); advantages whitened over the rollout;
3. ``rl.ppo.epochs`` passes over the rollout in minibatches of ``rl.ppo.minibatch_size``: clipped policy loss
   (``rl.epsilon``) + ``rl.ppo.vf_coef`` x clipped value loss (``rl.ppo.cliprange_value``), gradient clipping,
   one optimizer and scheduler step per minibatch;
4. the KL coefficient adapts when ``rl.ppo.kl_target`` is set.

The value model is a scalar head, ``Linear(hidden, 1)`` on the policy's last hidden state (after the final
norm), as TRL's ``AutoModelForCausalLMWithValueHead``: a shared backbone keeps one model in CPU memory instead
of a second, critic-sized one. The head is zero-initialised (values start at 0; it is not initialised from a
reward model) and trained in fp32 with the method's parameters; the run folder keeps it as
``value_head.safetensors``. Dropout is switched off in the policy (as TRL's PPO did), so the ratio of new to
old probabilities is exactly 1 before the first update.
"""

from __future__ import annotations

import math
import os
import time
from contextlib import nullcontext
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from tunelab.config.specs import Recipe
from tunelab.errors import TunelabError
from tunelab.methods import is_prompt_learning, preflight, saves_full_weights
from tunelab.models import autocast
from tunelab.recipes.common import prepare_training, refuse_unsupported, single_process_only
from tunelab.recipes.rl import OnlineRLRecipe, refuse_encoder_policy
from tunelab.rewards import PromptRow, weighted_total
from tunelab.training import ppo as P
from tunelab.training.progress import TrainProgress

__all__ = ["VALUE_HEAD_FILE", "PPORecipe", "PolicyAndValue", "Rollout", "ValueHead", "load_value_head"]

VALUE_HEAD_FILE = "value_head.safetensors"
_LAST_OF_WINDOW = ("tokens", "kl_coef")  # logged as their value at the last step of a window, not its mean


class ValueHead(nn.Module):
    """``Linear(hidden, 1)``, zero-initialised, run in fp32 (outside autocast) on the last hidden state."""

    def __init__(self, hidden_size: int):
        super().__init__()
        self.summary = nn.Linear(hidden_size, 1)
        nn.init.zeros_(self.summary.weight)
        nn.init.zeros_(self.summary.bias)

    def forward(self, hidden: torch.Tensor) -> torch.Tensor:
        """(B, T, hidden) -> (B, T) values."""
        with torch.autocast(hidden.device.type, enabled=False):
            return self.summary(hidden.float()).squeeze(-1)


class PolicyAndValue(nn.Module):
    """The policy and its value head as one module, so that one optimizer (with the method's parameter groups),
    one schedule and one gradient clip cover both."""

    def __init__(self, policy: nn.Module, value_head: ValueHead):
        super().__init__()
        self.policy, self.value_head = policy, value_head
        self.tunelab_method = getattr(policy, "tunelab_method", None)  # read by the optimizer's groups


def load_value_head(run_dir: str | Path) -> ValueHead:
    """The trained value head of a PPO run folder (safetensors)."""
    from safetensors.torch import load_file

    path = Path(run_dir) / VALUE_HEAD_FILE
    if not path.is_file():
        raise TunelabError(f"no {VALUE_HEAD_FILE} in {run_dir}", where=str(run_dir),
                           fix="pass the folder of a train.objective=ppo run")
    state = load_file(str(path))
    head = ValueHead(state["summary.weight"].shape[1])
    head.load_state_dict(state)
    return head


@dataclass
class Rollout:
    """One PPO step's samples. Per-token tensors are (B, C): completions right-padded to C tokens."""

    rows: list[PromptRow]
    prompts: list[torch.Tensor]  # each row's prompt ids (no padding)
    completions: torch.Tensor  # (B, C) token ids, padded after the end
    mask: torch.Tensor  # (B, C) 1 up to and including the first stop token
    scores: torch.Tensor  # (B,) reward of each completion (after the missing-EOS penalty)
    totals: list[float]  # weighted reward totals (as GRPO logs them)
    per_reward: dict[str, list[float]]
    ended: torch.Tensor  # (B,) bool: the completion ended with a stop token
    logp: torch.Tensor | None = None
    ref_logp: torch.Tensor | None = None
    values: torch.Tensor | None = None
    entropy: torch.Tensor | None = None
    advantages: torch.Tensor | None = None
    returns: torch.Tensor | None = None
    kl: torch.Tensor | None = None  # (B, C) per-token KL to the reference (None without a reference)


class PPORecipe(OnlineRLRecipe):
    """setup → train → save → cleanup for PPO; `OnlineRLRecipe` with the TRL trainer replaced by our loop."""

    def __init__(self, recipe: Recipe, run_dir: Path, dist: Any = None, resume: bool = False):
        super().__init__(recipe, run_dir, dist, resume)
        self.logged: list[dict[str, Any]] = []
        self.tokens = 0

    @staticmethod
    def preflight(recipe: Recipe, dist: Any = None, resume: bool = False) -> None:
        """TunelabError naming the keys for what PPO does not do (checked before any work)."""
        t = recipe.train
        refuse_unsupported(t.objective, {
            **single_process_only(t, dist, resume),
            "early stopping (train.early_stopping_patience)": t.early_stopping_patience is not None,
            f"prompt-learning method '{recipe.method.name}' (the value head and log-probs read the completion "
            "positions, which virtual tokens would shift)": is_prompt_learning(recipe.method),
        }, fix="see docs/preferences.md (PPO)")
        refuse_encoder_policy(recipe)
        preflight(recipe)

    # ---- setup -------------------------------------------------------------------------------------
    def setup(self) -> None:
        r, ppo = self.recipe, self.recipe.rl.ppo
        self.rollout_size = r.train.batch_size * r.train.grad_accum
        self.minibatch = ppo.minibatch_size or self.rollout_size
        self.micro = min(r.train.batch_size, self.minibatch)
        super().setup()
        if self.reference is None and self._needs_reference() and saves_full_weights(r.method):
            # full/freeze change the weights themselves: the starting policy survives only as a frozen copy
            self.reference = self._load_reference(r.model.name)
        self.kl_ctl = P.kl_controller(r.rl.beta, ppo.kl_target, ppo.kl_horizon)
        self.gen = torch.Generator().manual_seed(r.train.seed)
        self.stop_ids = _stop_ids(self.tokenizer)

    def _needs_reference(self) -> bool:
        return self.recipe.rl.beta > 0

    def _build_model(self) -> nn.Module:
        model = super()._build_model()
        for module in model.modules():  # dropout off: the PPO ratio compares two passes of one policy
            if isinstance(module, nn.Dropout):
                module.p = 0.0
        if self.recipe.train.gradient_checkpointing:  # non-reentrant: works with frozen inputs (LoRA)
            base = model.get_base_model() if hasattr(model, "get_base_model") else model
            if hasattr(base, "activation_checkpointing_enable"):  # the transformers >= 5 name
                base.activation_checkpointing_enable(activation_checkpointing_kwargs={"use_reentrant": False})
            else:
                base.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
        self.value_head = ValueHead(model.config.hidden_size).to(self.device)
        self.both = PolicyAndValue(model, self.value_head)
        return model

    def _total_steps(self) -> int:
        t = self.recipe.train
        return t.max_steps or max(1, math.ceil(t.epochs * len(self.rows) / (t.batch_size * t.grad_accum)))

    def _optimizer(self) -> tuple[Any, Any]:
        """One optimizer over the policy's trainable parameters and the value head; the schedule counts
        optimizer updates (epochs x minibatches per PPO step)."""
        updates = self.total_steps * self.recipe.rl.ppo.epochs * (self.rollout_size // self.minibatch)
        self.trainable = [p for p in self.both.parameters() if p.requires_grad]
        return prepare_training(self.both, self.recipe, updates, self.run_dir)

    # ---- rollout -----------------------------------------------------------------------------------
    def _next_rows(self) -> list[PromptRow]:
        """The next ``rollout_size`` training prompts, in a seeded shuffle that restarts after each pass."""
        out = []
        while len(out) < self.rollout_size:
            if not getattr(self, "_order", None):
                self._order = torch.randperm(len(self.rows), generator=self.gen).tolist()
            out.append(self.rows[self._order.pop()])
        return out

    @torch.no_grad()
    def _sample(self, rows: list[PromptRow]) -> tuple[list[torch.Tensor], torch.Tensor]:
        """Prompt ids per row and sampled completions (B, C), generated ``self.micro`` at a time."""
        from tunelab.evaluation.generate import render_prompt

        rl, tok = self.recipe.rl, self.tokenizer
        side, tok.padding_side = tok.padding_side, "left"  # generation continues from every row's right edge
        prompts, completions = [], []
        try:
            for start in range(0, len(rows), self.micro):
                texts = [render_prompt(tok, r.messages) for r in rows[start:start + self.micro]]
                enc = tok(texts, return_tensors="pt", padding=True, add_special_tokens=False).to(self.device)
                with autocast(self.device, self.precision):
                    out = self.model.generate(
                        **enc, do_sample=True, temperature=rl.temperature, top_p=rl.top_p, top_k=rl.top_k,
                        max_new_tokens=rl.max_completion_length, eos_token_id=self.stop_ids,
                        pad_token_id=tok.pad_token_id, use_cache=True)  # (n, prompt + new)
                width = enc["input_ids"].shape[1]
                prompts += [ids[m.bool()] for ids, m in zip(enc["input_ids"], enc["attention_mask"], strict=True)]
                completions += list(out[:, width:])
        finally:
            tok.padding_side = side
        padded = torch.nn.utils.rnn.pad_sequence(completions, batch_first=True, padding_value=tok.pad_token_id)
        return prompts, padded

    def _score(self, rows: list[PromptRow], prompts: list[torch.Tensor], completions: torch.Tensor,
               mask: torch.Tensor) -> Rollout:
        """Decode and score the completions; a completion without a stop token may pay the missing-EOS penalty."""
        texts = [self.tokenizer.decode(c[m.bool()], skip_special_tokens=True)
                 for c, m in zip(completions, mask, strict=True)]
        totals, per = weighted_total(self.rewards, rows, texts)
        ended = (torch.isin(completions, torch.tensor(self.stop_ids, device=completions.device)) & mask.bool()).any(1)
        scores = torch.tensor(totals, dtype=torch.float32, device=completions.device)
        penalty = self.recipe.rl.ppo.missing_eos_penalty
        if penalty is not None:
            scores = scores - penalty * (~ended).float()
        return Rollout(rows, prompts, completions, mask, scores, totals, per, ended)

    def _collate(self, ro: Rollout, idx: list[int]) -> dict[str, Any]:
        """Left-padded prompts then right-padded completions of rows ``idx``: (n, L + C) with position ids."""
        pad = self.tokenizer.pad_token_id
        width = max(len(ro.prompts[i]) for i in idx)
        c = int(ro.mask[idx].sum(1).max())
        ids = torch.full((len(idx), width + c), pad, dtype=torch.long, device=self.device)
        att = torch.zeros_like(ids)
        for row, i in enumerate(idx):
            p = ro.prompts[i]
            ids[row, width - len(p):width], att[row, width - len(p):width] = p, 1
        ids[:, width:], att[:, width:] = ro.completions[idx, :c], ro.mask[idx, :c]
        # positions count real tokens only, as generate() numbered them (left padding does not shift them)
        pos = (att.cumsum(1) - 1).clamp(min=0)
        return {"input_ids": ids, "attention_mask": att, "position_ids": pos, "width": width, "c": c}

    def _forward(self, model: nn.Module, batch: dict[str, Any], with_values: bool
                 ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
        """(log-probs, entropies, values) of the completion tokens, each (n, C); logits only where needed."""
        width, c = batch["width"], batch["c"]
        with autocast(self.device, self.precision):
            out = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"],
                        position_ids=batch["position_ids"], logits_to_keep=c + 1,
                        output_hidden_states=with_values, use_cache=False)
        # logits at positions width-1 .. width+c-2 predict the completion tokens; tempered like the sampler's
        logits = out.logits[:, :-1] / self.recipe.rl.temperature  # (n, C, vocab)
        logp, entropy = P.token_logprobs(logits, batch["input_ids"][:, width:])
        values = None
        if with_values:  # the value of the state before each completion token
            values = self.value_head(out.hidden_states[-1][:, width - 1:width + c - 1])
        return logp, entropy, values

    def _reference(self) -> tuple[nn.Module, Any]:
        """The reference model and the context it runs in (the PEFT base: the adapter disabled)."""
        if self.reference is not None:
            return self.reference, nullcontext()
        return self.model, self.model.disable_adapter()

    @torch.no_grad()
    def _evaluate_rollout(self, ro: Rollout) -> None:
        """Old log-probs, values, entropies and reference log-probs of the rollout, ``self.micro`` rows at a time."""
        n, c = ro.completions.shape
        for name in ("logp", "values", "entropy"):
            setattr(ro, name, torch.zeros(n, c, device=self.device))
        ro.ref_logp = torch.zeros(n, c, device=self.device) if self._needs_reference() else None
        for start in range(0, n, self.micro):
            idx = list(range(start, min(start + self.micro, n)))
            batch = self._collate(ro, idx)
            w = batch["c"]
            ro.logp[idx, :w], ro.entropy[idx, :w], ro.values[idx, :w] = self._forward(self.model, batch, True)
            if ro.ref_logp is not None:
                model, ctx = self._reference()
                with ctx:
                    ro.ref_logp[idx, :w] = self._forward(model, batch, False)[0]

    def _rollout(self) -> Rollout:
        rows = self._next_rows()
        self.model.eval()
        prompts, completions = self._sample(rows)
        mask = P.completion_mask(completions, self.stop_ids)
        ro = self._score(rows, prompts, completions, mask)
        self._evaluate_rollout(ro)
        ppo = self.recipe.rl.ppo
        rewards, ro.kl = P.token_rewards(ro.logp, ro.ref_logp, mask, ro.scores, self.kl_ctl.value)
        if ro.ref_logp is None:
            ro.kl = None
        advantages, ro.returns = P.gae(rewards, ro.values, mask, ppo.gamma, ppo.lam)
        ro.advantages = P.masked_whiten(advantages, mask)
        self.tokens += sum(len(p) for p in prompts) + int(mask.sum())
        return ro

    # ---- update ------------------------------------------------------------------------------------
    def _micro_step(self, ro: Rollout, idx: list[int], denom: float) -> dict[str, float]:
        """Forward and backward of one micro-batch; losses are shares of the minibatch (``denom`` tokens)."""
        ppo, batch = self.recipe.rl.ppo, self._collate(ro, idx)
        c = batch["c"]
        logp, _, values = self._forward(self.model, batch, True)
        mask = ro.mask[idx, :c]
        pl = P.clipped_policy_loss(logp, ro.logp[idx, :c], ro.advantages[idx, :c], mask, self.recipe.rl.epsilon,
                                   denom)
        vl = P.clipped_value_loss(values, ro.values[idx, :c], ro.returns[idx, :c], mask, ppo.cliprange_value, denom)
        loss = pl.loss + ppo.vf_coef * vl.loss
        loss.backward()
        return {"loss": float(loss.detach()), "policy_loss": float(pl.loss.detach()),
                "value_loss": float(vl.loss.detach()), "clipfrac": float(pl.clipfrac),
                "approx_kl": float(pl.approx_kl), "vf_clipfrac": float(vl.clipfrac)}

    def _minibatch(self, ro: Rollout, idx: list[int], step: int) -> dict[str, float]:
        """One optimizer update on rows ``idx`` (micro-batches of ``self.micro`` rows)."""
        denom = float(ro.mask[idx].sum())
        stats: dict[str, float] = {}
        for start in range(0, len(idx), self.micro):
            for k, v in self._micro_step(ro, idx[start:start + self.micro], denom).items():
                stats[k] = stats.get(k, 0.0) + v
        if not math.isfinite(stats["loss"]):
            raise TunelabError(f"training diverged: loss is {stats['loss']} at step {step}; nothing was saved",
                               where="train.lr", fix="lower train.lr, or use model.precision=fp32")
        max_norm = self.recipe.train.max_grad_norm or math.inf  # inf: measure the norm, clip nothing
        stats["grad_norm"] = float(torch.nn.utils.clip_grad_norm_(self.trainable, max_norm))
        stats["lr"] = self.scheduler.get_last_lr()[0]
        self.optimizer.step()
        self.scheduler.step()
        self.optimizer.zero_grad(set_to_none=True)
        return stats

    def _update(self, ro: Rollout, step: int) -> dict[str, float]:
        """``rl.ppo.epochs`` passes over the rollout in shuffled minibatches; the mean of their statistics
        (the learning rate too: the schedule moves within a step)."""
        self.model.train()
        n, runs = len(ro.rows), []
        for _ in range(self.recipe.rl.ppo.epochs):
            order = torch.randperm(n, generator=self.gen).tolist()
            for start in range(0, n, self.minibatch):
                runs.append(self._minibatch(ro, order[start:start + self.minibatch], step))
        return {k: sum(r[k] for r in runs) / len(runs) for k in runs[0]}

    # ---- train -------------------------------------------------------------------------------------
    def _step_row(self, ro: Rollout, stats: dict[str, float], kl_coef: float) -> dict[str, float]:
        """The metrics of one PPO step (key names as GRPO's where they exist)."""
        scores = torch.tensor(ro.totals)
        lengths = ro.mask.sum(1).float()
        row = {"loss": stats["loss"], "policy_loss": stats["policy_loss"], "value_loss": stats["value_loss"],
               "reward_mean": float(scores.mean()), "reward_std": float(scores.std()) if len(scores) > 1 else 0.0,
               **{f"reward/{k}": sum(v) / len(v) for k, v in ro.per_reward.items()}}
        if self.recipe.rl.ppo.missing_eos_penalty is not None:  # the score trained on, after the penalty
            row["score_mean"] = float(ro.scores.mean())
        if ro.kl is not None:
            row["kl"] = float(ro.kl.sum(1).mean())  # per completion: summed over its tokens
        row |= {"kl_coef": kl_coef, "entropy": float(P.masked_mean(ro.entropy, ro.mask)),
                "clipfrac": stats["clipfrac"], "vf_clipfrac": stats["vf_clipfrac"], "approx_kl": stats["approx_kl"],
                "completion_len": float(lengths.mean()), "clipped_ratio": float((~ro.ended).float().mean()),
                "lr": stats["lr"], "grad_norm": stats["grad_norm"], "tokens": self.tokens}
        return row

    def _log(self, step: int, window: list[dict[str, float]]) -> dict[str, Any]:
        """One metrics.jsonl row for the steps since the last one (means; tokens and kl_coef: the last)."""
        row = {k: (window[-1][k] if k in _LAST_OF_WINDOW else sum(w[k] for w in window) / len(window))
               for k in window[-1]}
        row = {k: round(float(v), 6) if k != "tokens" else int(v) for k, v in row.items()}
        epoch = step * self.rollout_size / max(len(self.rows), 1)
        self.metrics.log(step=step, epoch=round(epoch, 4), **row)
        self.logged.append(row)
        return row

    def train(self) -> dict[str, Any]:
        self.held_out["before"] = self.held_out_reward("before")
        log_every, window = self.recipe.train.log_every, []
        with TrainProgress(self.total_steps) as progress:
            t0 = time.perf_counter()
            for step in range(1, self.total_steps + 1):
                kl_coef = self.kl_ctl.value
                ro = self._rollout()
                stats = self._update(ro, step)
                if ro.kl is not None:
                    self.kl_ctl.update(float(ro.kl.sum(1).mean()), len(ro.rows))
                window.append(self._step_row(ro, stats, kl_coef))
                if step % log_every == 0 or step == self.total_steps:
                    self._log(step, window)
                    window = []
                progress.update(step, stats["loss"], self.tokens / max(time.perf_counter() - t0, 1e-9))
            train_s = time.perf_counter() - t0
        self._step = self.total_steps
        self.model.eval()
        self.held_out["after"] = self.held_out_reward("after")
        summary = self.summary_of(self.logged, self.tokens, self.total_steps, train_s)
        summary["kl_coef_last"] = round(self.kl_ctl.value, 6)
        return summary

    # ---- save --------------------------------------------------------------------------------------
    def save(self, summary: dict[str, Any], timings: dict[str, float]) -> None:
        """The policy, tokenizer, manifest and plot as for GRPO, plus ``value_head.safetensors``."""
        super().save(summary, timings)
        from safetensors.torch import save_file

        path = self.run_dir / VALUE_HEAD_FILE
        tmp = path.with_name(f".{path.name}.tmp")
        state = {k: v.detach().float().contiguous().cpu() for k, v in self.value_head.state_dict().items()}
        save_file(state, str(tmp), metadata={"format": "tunelab-ppo-value-head", "input": "last hidden state",
                                             "hidden_size": str(state["summary.weight"].shape[1])})
        os.replace(tmp, path)

    def cleanup(self) -> None:
        super().cleanup()
        self.both = None


def _stop_ids(tokenizer: Any) -> list[int]:
    from tunelab.evaluation.generate import stop_token_ids

    return stop_token_ids(tokenizer)
