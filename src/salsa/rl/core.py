"""The math of RL from human feedback, as small pure functions over [batch, response_length] tensors.

Notation: `mask` is 1 on response tokens (up to and including EOS) and 0 after; log-probabilities are of
the sampled tokens. Every function is tested against a hand computation in tests/test_rl_core.py.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F


def masked_mean(
    x: torch.Tensor, mask: torch.Tensor, dim: int | None = None, count: torch.Tensor | None = None
) -> torch.Tensor:
    """Mean of x over the masked entries. `count` replaces the number of entries in the denominator: a data-parallel
    process passes its share of the global count, so the mean is its part of the mean over the global batch."""
    if dim is None:
        return (x * mask).sum() / (mask.sum() if count is None else count).clamp(min=1)
    return (x * mask).sum(dim) / mask.sum(dim).clamp(min=1)


def masked_whiten(
    x: torch.Tensor,
    mask: torch.Tensor,
    shift_mean: bool = True,
    total: Callable[[torch.Tensor], torch.Tensor] = lambda t: t,
) -> torch.Tensor:
    """(x - mean) / std over the masked entries (unbiased variance, as in Ziegler et al.).

    `total` sums a tensor over the data-parallel processes, so the statistics are those of the global batch.
    """
    sums = total(torch.stack([(x * mask).sum(), mask.sum()]))
    mean = sums[0] / sums[1].clamp(min=1)
    squares = total(((x - mean) ** 2 * mask).sum())
    variance = squares / (sums[1] - 1).clamp(min=1)
    whitened = (x - mean) * torch.rsqrt(variance + 1e-8)
    return whitened if shift_mean else whitened + mean


def explained_variance(
    values: torch.Tensor,
    returns: torch.Tensor,
    mask: torch.Tensor,
    total: Callable[[torch.Tensor], torch.Tensor] = lambda t: t,
) -> float:
    """1 - Var[R - V] / Var[R] over the masked tokens: 1 when the value function predicts the returns, 0 when it
    does no better than their mean, below 0 when worse. `total` sums over data-parallel processes."""
    error = returns - values
    sums = total(torch.stack([mask.sum(), (returns * mask).sum(), (returns**2 * mask).sum(),
                              (error * mask).sum(), (error**2 * mask).sum()]).double())  # fmt: skip
    n = sums[0].clamp(min=1)
    variance_returns = sums[2] / n - (sums[1] / n) ** 2
    variance_error = sums[4] / n - (sums[3] / n) ** 2
    return float(1 - variance_error / variance_returns) if variance_returns > 0 else float("nan")


def advantage_diagnostics(
    advantages: torch.Tensor,
    mask: torch.Tensor,
    buckets: int = 4,
    total: Callable[[torch.Tensor], torch.Tensor] = lambda t: t,
) -> dict[str, float]:
    """The mean advantage of the tokens in each of `buckets` equal parts of their response (first quarter, ...).

    A critic that predicts nothing gives late tokens positive and early tokens negative advantages whatever the
    response's quality (GAE of a final-token reward, then whitening): these means show it.
    """
    lengths = mask.sum(1, keepdim=True).clamp(min=1)
    position = torch.arange(mask.shape[1], device=mask.device)[None]
    part = (position * buckets / lengths).long().clamp(max=buckets - 1)
    sums = torch.stack([torch.stack([(advantages * mask * (part == b)).sum(), (mask * (part == b)).sum()])
                        for b in range(buckets)])  # fmt: skip
    sums = total(sums.double())
    return {f"advantage_q{b + 1}": float(sums[b, 0] / sums[b, 1].clamp(min=1)) for b in range(buckets)}


def kl_k1(logp: torch.Tensor, ref_logp: torch.Tensor) -> torch.Tensor:
    """k1 = log p(y) - log q(y): unbiased per-sample estimate of KL(p || q) for y ~ p (Schulman 2020)."""
    return logp - ref_logp


def kl_k3(logp: torch.Tensor, ref_logp: torch.Tensor) -> torch.Tensor:
    """k3 = (r - 1) - log r with r = q(y) / p(y): unbiased and always >= 0 for y ~ p (Schulman 2020)."""
    log_ratio = ref_logp - logp
    return torch.expm1(log_ratio) - log_ratio


def token_rewards(score: torch.Tensor, kl: torch.Tensor, mask: torch.Tensor, kl_coef: float) -> torch.Tensor:
    """InstructGPT per-token reward: r_t = -beta * KL_t on every token, plus the sequence score on the last one."""
    rewards = -kl_coef * kl * mask
    last = (mask.sum(1).long() - 1).clamp(min=0)
    rewards[torch.arange(len(score)), last] += score
    return rewards


def gae(
    rewards: torch.Tensor, values: torch.Tensor, mask: torch.Tensor, gamma: float = 1.0, lam: float = 0.95
) -> tuple[torch.Tensor, torch.Tensor]:
    """Generalised advantage estimation (Schulman et al. 2016) over each response; returns (advantages, returns).

    delta_t = r_t + gamma * V_{t+1} - V_t          (V after the last token is 0)
    A_t     = delta_t + gamma * lam * A_{t+1}
    R_t     = A_t + V_t
    """
    values, rewards = values * mask, rewards * mask
    advantages = torch.zeros_like(rewards)
    next_value = torch.zeros(rewards.shape[0], dtype=rewards.dtype, device=rewards.device)
    next_advantage = torch.zeros_like(next_value)
    for t in reversed(range(rewards.shape[1])):
        delta = rewards[:, t] + gamma * next_value - values[:, t]
        next_advantage = (delta + gamma * lam * next_advantage) * mask[:, t]
        advantages[:, t] = next_advantage
        next_value = values[:, t]
    return advantages, advantages + values


def discounted_returns(rewards: torch.Tensor, mask: torch.Tensor, gamma: float = 1.0) -> torch.Tensor:
    """G_t = sum_{k >= t} gamma^(k - t) r_k within each response."""
    returns = torch.zeros_like(rewards)
    running = torch.zeros(rewards.shape[0], dtype=rewards.dtype, device=rewards.device)
    for t in reversed(range(rewards.shape[1])):
        running = (rewards[:, t] + gamma * running) * mask[:, t]
        returns[:, t] = running
    return returns


def rloo_advantages(scores: torch.Tensor, k: int) -> torch.Tensor:
    """REINFORCE leave-one-out (Ahmadian et al. 2024): A_i = s_i - mean of the other k-1 samples of the prompt.

    `scores` is [num_prompts * k], grouped so that samples of one prompt are adjacent.
    """
    grouped = scores.view(-1, k)
    baseline = (grouped.sum(1, keepdim=True) - grouped) / (k - 1)
    return (grouped - baseline).view(-1)


def grpo_advantages(scores: torch.Tensor, k: int, eps: float = 1e-4) -> torch.Tensor:
    """GRPO (Shao et al. 2024): A_i = (s_i - mean of the group) / (std of the group + eps)."""
    grouped = scores.view(-1, k)
    return ((grouped - grouped.mean(1, keepdim=True)) / (grouped.std(1, keepdim=True) + eps)).view(-1)


def aggregate(
    x: torch.Tensor, mask: torch.Tensor, aggregation: str = "token", count: torch.Tensor | None = None
) -> torch.Tensor:
    """A loss term's mean over a minibatch of responses [B, R].

    token:    sum of x over every response token / number of tokens (DAPO; long responses weigh more);
    sequence: mean of x over each response's tokens, then over responses (the GRPO paper).
    `count` replaces the denominator (tokens, or responses), as in `masked_mean`.
    """
    if aggregation == "token":
        return masked_mean(x, mask, count=count)
    per_response = (x * mask).sum(1) / mask.sum(1).clamp(min=1)
    present = (mask.sum(1) > 0).float()
    return (per_response * present).sum() / (present.sum() if count is None else count).clamp(min=1)


def clipped_policy_loss(
    logp: torch.Tensor,
    old_logp: torch.Tensor,
    advantages: torch.Tensor,
    mask: torch.Tensor,
    clip: float,
    count: torch.Tensor | None = None,
    aggregation: str = "token",
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """PPO-clip: L = E[max(-A ratio, -A clip(ratio, 1 - eps, 1 + eps))], ratio = pi_new / pi_old; returns
    (loss, clip fraction, approx KL). The approximate KL is (ratio - 1) - log ratio on the rollout's tokens: an
    unbiased, never negative estimate of KL(pi_old || pi_new) (Schulman's k3), for logging.
    """
    log_ratio = logp - old_logp
    ratio = torch.exp(log_ratio)
    unclipped = -advantages * ratio
    clipped = -advantages * torch.clamp(ratio, 1.0 - clip, 1.0 + clip)
    loss = aggregate(torch.maximum(unclipped, clipped), mask, aggregation, count)
    clip_fraction = aggregate((clipped > unclipped).float(), mask, aggregation, count)
    approx_kl = aggregate(((ratio - 1) - log_ratio).detach(), mask, aggregation, count)
    return loss, clip_fraction, approx_kl


def clipped_value_loss(
    values: torch.Tensor,
    old_values: torch.Tensor,
    returns: torch.Tensor,
    mask: torch.Tensor,
    clip: float,
    count: torch.Tensor | None = None,
) -> torch.Tensor:
    """0.5 * E[max((V - R)^2, (clip(V, V_old - eps, V_old + eps) - R)^2)]; `count` as in `masked_mean`."""
    clipped = old_values + torch.clamp(values - old_values, -clip, clip)
    return 0.5 * masked_mean(torch.maximum((values - returns) ** 2, (clipped - returns) ** 2), mask, count=count)


def dpo_loss(
    policy_chosen: torch.Tensor,
    policy_rejected: torch.Tensor,
    ref_chosen: torch.Tensor,
    ref_rejected: torch.Tensor,
    beta: float,
    reduction: str = "mean",
) -> torch.Tensor:
    """DPO (Rafailov et al. 2023): -log sigmoid(beta * ((pi_c - ref_c) - (pi_r - ref_r))) over sequence log-probs;
    the mean over pairs, or each pair's loss with reduction 'none'."""
    margin = (policy_chosen - ref_chosen) - (policy_rejected - ref_rejected)
    losses = -F.logsigmoid(beta * margin)
    return losses.mean() if reduction == "mean" else losses


class AdaptiveKLController:
    """Ziegler et al. (2019): beta <- beta * (1 + clip(KL / target - 1, -0.2, 0.2) * n / horizon)."""

    def __init__(self, init_kl_coef: float, target: float, horizon: int):
        self.value, self.target, self.horizon = init_kl_coef, target, horizon

    def update(self, current_kl: float, num_samples: int) -> None:
        proportional_error = min(max(current_kl / self.target - 1.0, -0.2), 0.2)
        self.value *= 1.0 + proportional_error * num_samples / self.horizon
