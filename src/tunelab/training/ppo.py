"""The math of RLHF PPO (Ziegler et al. 2019; Stiennon et al. 2020; "The N implementation details of RLHF
with PPO", which TRL's old ``PPOTrainer`` followed): masked statistics, per-token rewards with a KL penalty,
generalised advantage estimation, the clipped policy and value losses, and the KL coefficient controllers.

Pure tensor functions, no model: `tunelab.recipes.ppo` runs the rollouts and the updates around them.
Shapes: ``(B, T)`` is a batch of B completions padded to T tokens; ``mask`` is 1 on completion tokens
(up to and including the end-of-sequence token) and 0 on padding.
"""

from __future__ import annotations

import math
from typing import NamedTuple

import torch

__all__ = [
    "AdaptiveKLController",
    "FixedKLController",
    "PolicyLoss",
    "ValueLoss",
    "clipped_policy_loss",
    "clipped_value_loss",
    "completion_mask",
    "gae",
    "kl_controller",
    "masked_mean",
    "masked_var",
    "masked_whiten",
    "token_logprobs",
    "token_rewards",
]


# ------------------------------------------------------------------------------------------------ masks


def masked_mean(x: torch.Tensor, mask: torch.Tensor, dim: int | None = None) -> torch.Tensor:
    """Mean of ``x`` where ``mask`` is 1 (over all elements, or along ``dim``)."""
    mask = mask.to(x.dtype)
    if dim is None:
        return (x * mask).sum() / mask.sum().clamp(min=1)
    return (x * mask).sum(dim) / mask.sum(dim).clamp(min=1)


def masked_var(x: torch.Tensor, mask: torch.Tensor, unbiased: bool = True) -> torch.Tensor:
    """Variance of ``x`` where ``mask`` is 1 (Bessel-corrected when ``unbiased``, as TRL)."""
    mean = masked_mean(x, mask)
    var = masked_mean((x - mean) ** 2, mask)
    if unbiased:
        n = mask.sum()
        if n < 2:  # one element has no spread; dividing by n - 1 = 0 would make it inf
            return torch.zeros_like(var)
        var = var * n / (n - 1)
    return var


def masked_whiten(x: torch.Tensor, mask: torch.Tensor, shift_mean: bool = True) -> torch.Tensor:
    """``(x - mean) / std`` over the masked elements (``shift_mean=False`` keeps the mean); padding stays 0."""
    mean, var = masked_mean(x, mask), masked_var(x, mask)
    out = (x - mean) * torch.rsqrt(var + 1e-8)
    if not shift_mean:
        out = out + mean
    return out * mask.to(x.dtype)


def completion_mask(completions: torch.Tensor, stop_ids: list[int]) -> torch.Tensor:
    """1 on each row's tokens up to and including its first stop token (all tokens when it has none).

    Args:
        completions: (B, T) generated token ids, padded after the end (the pad id may equal EOS).
        stop_ids: end-of-sequence ids (EOS and the end-of-turn token).
    """
    is_stop = torch.isin(completions, torch.tensor(stop_ids, device=completions.device))
    # Stops seen strictly before position t: a row is over after its first stop, which itself is kept.
    before = torch.cumsum(is_stop.long(), dim=1) - is_stop.long()
    return (before == 0).long()


# ------------------------------------------------------------------------------------------------ rewards


def token_logprobs(logits: torch.Tensor, tokens: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Log-probability of each token and the entropy of each distribution.

    Args:
        logits: (B, T, V) next-token logits at the positions predicting ``tokens``.
        tokens: (B, T) the tokens.

    Returns:
        (logp (B, T), entropy (B, T)), in fp32.
    """
    logp_all = torch.log_softmax(logits.float(), dim=-1)  # (B, T, V)
    logp = logp_all.gather(-1, tokens.unsqueeze(-1)).squeeze(-1)
    entropy = -(logp_all.exp() * logp_all).sum(-1)
    return logp, entropy


def token_rewards(logp: torch.Tensor, ref_logp: torch.Tensor | None, mask: torch.Tensor, scores: torch.Tensor,
                  kl_coef: float) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-token rewards: ``-kl_coef * (logp - ref_logp)`` at every completion token, plus the sequence's
    score at its last token.

    Args:
        logp: (B, T) log-probabilities of the sampling policy.
        ref_logp: (B, T) those of the reference (None: no KL term).
        mask: (B, T) completion mask; every row has at least one token.
        scores: (B,) the reward of each whole completion.
        kl_coef: the KL coefficient.

    Returns:
        (rewards (B, T), per-token KL (B, T)), both 0 on padding.
    """
    m = mask.to(logp.dtype)
    kl = (logp - ref_logp) * m if ref_logp is not None else torch.zeros_like(logp)
    rewards = -kl_coef * kl
    last = (mask.long().sum(1) - 1).clamp(min=0)  # (B,) index of each row's last token
    rewards[torch.arange(len(scores)), last] += scores.to(rewards.dtype)
    return rewards * m, kl


def gae(rewards: torch.Tensor, values: torch.Tensor, mask: torch.Tensor, gamma: float,
        lam: float) -> tuple[torch.Tensor, torch.Tensor]:
    """Generalised advantage estimation over completion tokens (Schulman et al. 2016).

    ``delta_t = r_t + gamma * V_{t+1} - V_t``, ``A_t = delta_t + gamma * lam * A_{t+1}``; after a row's last
    token the episode is over (V = 0, A = 0).

    Args:
        rewards: (B, T) per-token rewards (0 on padding).
        values: (B, T) value estimates of the state before each token.
        mask: (B, T) completion mask.
        gamma: discount.
        lam: GAE lambda (1: Monte Carlo returns minus the value; 0: one-step TD).

    Returns:
        (advantages (B, T), returns = advantages + values (B, T)), 0 on padding.
    """
    m = mask.to(values.dtype)
    values = values * m
    advantages = torch.zeros_like(values)
    last = torch.zeros_like(values[:, 0])
    for t in reversed(range(values.shape[1])):
        next_value = values[:, t + 1] if t + 1 < values.shape[1] else torch.zeros_like(last)
        delta = rewards[:, t] + gamma * next_value - values[:, t]
        last = (delta + gamma * lam * last) * m[:, t]
        advantages[:, t] = last
    return advantages, (advantages + values) * m


# ------------------------------------------------------------------------------------------------ losses


class PolicyLoss(NamedTuple):
    """The clipped surrogate loss and its diagnostics (tensors; the loss carries the gradient)."""

    loss: torch.Tensor
    clipfrac: torch.Tensor  # share of tokens where the clipped term was the larger one
    approx_kl: torch.Tensor  # 0.5 * mean(log ratio ^ 2): how far the update moved from the rollout policy


class ValueLoss(NamedTuple):
    """The clipped value loss and the share of tokens where clipping bound."""

    loss: torch.Tensor
    clipfrac: torch.Tensor


def _reduce(x: torch.Tensor, mask: torch.Tensor, denom: float | None) -> torch.Tensor:
    """Masked sum divided by ``denom`` (default: the masked count), so micro-batches add up to a minibatch."""
    total = (x * mask.to(x.dtype)).sum()
    return total / (denom if denom is not None else mask.sum().clamp(min=1))


def clipped_policy_loss(logp: torch.Tensor, old_logp: torch.Tensor, advantages: torch.Tensor, mask: torch.Tensor,
                        clip: float, denom: float | None = None) -> PolicyLoss:
    """PPO's clipped surrogate: ``mean(max(-A * r, -A * clip(r, 1 - clip, 1 + clip)))``, r = pi / pi_old.

    Args:
        logp: (B, T) log-probabilities under the policy being updated (with gradient).
        old_logp: (B, T) those of the rollout policy.
        advantages: (B, T) whitened advantages.
        mask: (B, T) completion mask.
        clip: the clipping range (rl.epsilon).
        denom: tokens to divide by (the whole minibatch's when this is one micro-batch of it).
    """
    log_ratio = (logp - old_logp) * mask.to(logp.dtype)
    ratio = torch.exp(log_ratio)
    unclipped = -advantages * ratio
    clipped = -advantages * torch.clamp(ratio, 1.0 - clip, 1.0 + clip)
    loss = _reduce(torch.maximum(unclipped, clipped), mask, denom)
    clipfrac = _reduce((clipped > unclipped).float(), mask, denom)
    approx_kl = _reduce(0.5 * log_ratio.detach() ** 2, mask, denom)
    return PolicyLoss(loss, clipfrac.detach(), approx_kl)


def clipped_value_loss(values: torch.Tensor, old_values: torch.Tensor, returns: torch.Tensor, mask: torch.Tensor,
                       clip: float, denom: float | None = None) -> ValueLoss:
    """``0.5 * mean(max((V - R)^2, (clip(V, V_old - c, V_old + c) - R)^2))``: the value moves at most ``clip``
    from its rollout estimate per update.

    Args:
        values: (B, T) predictions being trained (with gradient).
        old_values: (B, T) predictions at rollout time.
        returns: (B, T) GAE returns (the targets).
        mask: (B, T) completion mask.
        clip: rl.ppo.cliprange_value.
        denom: tokens to divide by (see `clipped_policy_loss`).
    """
    clipped_values = old_values + torch.clamp(values - old_values, -clip, clip)
    unclipped = (values - returns) ** 2
    clipped = (clipped_values - returns) ** 2
    loss = 0.5 * _reduce(torch.maximum(unclipped, clipped), mask, denom)
    return ValueLoss(loss, _reduce((clipped > unclipped).float(), mask, denom).detach())


# ------------------------------------------------------------------------------------------------ KL control


class FixedKLController:
    """A constant KL coefficient."""

    def __init__(self, kl_coef: float):
        self.value = kl_coef

    def update(self, current_kl: float, n_steps: int) -> None:
        """Nothing to adapt."""


class AdaptiveKLController:
    """Ziegler et al. (2019), section 2.2: move the KL coefficient so that the KL approaches ``target``.

    ``e = clip(KL / target - 1, -0.2, 0.2)``; ``coef *= 1 + e * n_steps / horizon``.

    Args:
        kl_coef: the starting coefficient (rl.beta).
        target: the KL per completion to aim at (rl.ppo.kl_target).
        horizon: how many samples the correction is spread over (rl.ppo.kl_horizon).
    """

    def __init__(self, kl_coef: float, target: float, horizon: int):
        self.value, self.target, self.horizon = kl_coef, target, horizon

    def update(self, current_kl: float, n_steps: int) -> None:
        """Adapt after a rollout of ``n_steps`` completions whose mean sequence KL was ``current_kl``."""
        if not math.isfinite(current_kl):
            return
        error = min(max(current_kl / self.target - 1.0, -0.2), 0.2)
        self.value *= 1.0 + error * n_steps / self.horizon


def kl_controller(kl_coef: float, target: float | None, horizon: int) -> FixedKLController | AdaptiveKLController:
    """`AdaptiveKLController` when a target is set, else `FixedKLController`."""
    if target is None:
        return FixedKLController(kl_coef)
    return AdaptiveKLController(kl_coef, target, horizon)
