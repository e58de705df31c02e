"""The update of one online RL step (PPO, RLOO, GRPO): advantages, then clipped minibatch updates.

Given a rollout (responses, their scores and reference log-probs), in order:
  1. measure:    log pi_old and V_old of every response token under the weights that sampled them;
  2. KL:         KL_t = log pi_old(y_t) - log ref(y_t)  (k1, per token);
  3. advantages (`advantages`):
       ppo   r_t = -beta KL_t, plus the score on the last token; A = GAE(r, V_old) (InstructGPT), whitened;
       rloo  R = score - beta sum_t KL_t;  A = R - mean(R of the other samples of the prompt);
       grpo  A = (score - group mean) / group std;  beta * KL_k3 is added to the loss instead;
  4. update (`Minibatches.train`), `ppo_epochs` passes over minibatches of the rollout:
       policy  L_pi = -min(rho A, clip(rho, 1 - eps, 1 + eps) A),  rho = pi / pi_old  (eps: clip_range)
       value   L_V  = max((V - G)^2, (clip(V, V_old +- eps_V) - G)^2) / 2,  G: PPO's GAE returns (eps_V:
               value_clip_range)
       loss    L_pi [+ beta KL_k3 (grpo)] + vf_coef L_V; clip the policy's and the value function's gradients
               apart; an optimizer step unless a value is not finite.
With one epoch and one minibatch the rollout's measuring pass is also the training pass (rho = 1).

Data parallel: each process holds whole prompts of the step (RLOO and GRPO groups); whitening, the minibatch token
means and every statistic use sums over all processes, and the gradients are averaged (or reduced by FSDP2), so the
update equals the one-process update of the same global batch.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

from salsa import runtime
from salsa.config import RLConfig
from salsa.logs import FiniteGuard
from salsa.policy import sequence_kl
from salsa.rl.core import (
    advantage_diagnostics,
    aggregate,
    clipped_policy_loss,
    clipped_value_loss,
    explained_variance,
    gae,
    grpo_advantages,
    kl_k1,
    kl_k3,
    masked_whiten,
    rloo_advantages,
    token_rewards,
)
from salsa.rl.learner import Learner
from salsa.rl.rollout import Rollout, chunk_rows

STATISTICS = ("policy_loss", "value_loss", "clip_fraction", "approx_kl", "ratio_min", "ratio_max",
              "grad_norm_policy", "grad_norm_value")  # fmt: skip


def advantages(
    config: RLConfig,
    scores: torch.Tensor,
    kl: torch.Tensor,
    values: torch.Tensor | None,
    mask: torch.Tensor,
    beta: float,
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Per-token advantages (and PPO's value targets) of one rollout: step 3 of the module docstring.

    A process holds whole prompts (RLOO and GRPO groups); whitening uses the statistics of the global batch.
    """
    returns = None
    if config.algorithm == "ppo":
        rewards = token_rewards(scores, kl, mask, beta)
        adv, returns = gae(rewards, values, mask, config.gamma, config.lam)
    else:
        if config.algorithm == "rloo":
            sequence_adv = rloo_advantages(scores - beta * (kl * mask).sum(1), config.samples_per_prompt)
        else:
            sequence_adv = grpo_advantages(scores, config.samples_per_prompt)
        adv = sequence_adv[:, None] * mask
    whiten = config.whiten_advantages if config.whiten_advantages is not None else config.algorithm == "ppo"
    if whiten:
        adv = masked_whiten(adv, mask, total=runtime.all_sum) * mask
    return adv, returns


def global_mean(total: torch.Tensor, count: torch.Tensor | float) -> float:
    """A sum and a count of this process, as the mean over all processes (the count joins the sum's device)."""
    count = torch.as_tensor(count, dtype=torch.float32, device=total.device)
    sums = runtime.all_sum(torch.stack([total.detach().float(), count.detach()]))
    return float(sums[0] / sums[1].clamp(min=1))


def rl_update(
    learner: Learner,
    rollout: Rollout,
    config: RLConfig,
    optimizer: torch.optim.Optimizer,
    beta: float,
    generator: torch.Generator,
    guard: FiniteGuard,
    step: int,
    value_only: bool = False,
) -> dict:
    """Advantages, then `ppo_epochs` passes of clipped updates over minibatches; returns the step's statistics, with
    `optimizer_steps`, how many of its minibatch updates were applied.

    Each epoch draws a permutation of the step's global rows from `generator` (seeded alike on every process); a
    minibatch is a slice of it, and each process works on the rows of it that it rolled out. A minibatch whose
    loss or gradient is not finite is never applied (`guard` stops the run or skips it). `value_only` (the value
    warm-up) trains the value function alone.
    """
    n_local, n_global = len(rollout.rows), config.prompts_per_step * config.samples_per_prompt
    local_index = {row: i for i, row in enumerate(rollout.rows)}
    fused = config.ppo_epochs == 1 and config.minibatch_size >= n_global and not value_only
    dtype = runtime.compute_dtype(config.mixed_precision)
    with runtime.autocast(dtype):  # 1. measure
        if fused:  # the one minibatch is the whole rollout: this pass is also the training pass
            live_logp, live_values, entropy = learner.evaluate(rollout, torch.arange(n_local), with_entropy=True)
        else:
            live_logp, live_values, entropy = learner.measure(rollout, chunk_rows(config))
    old_logp = live_logp.detach()
    old_values = live_values.detach() if live_values is not None else None
    mask = rollout.mask
    # 2. KL, 3. advantages
    kl = kl_k1(old_logp, rollout.ref_logprobs) * mask if rollout.ref_logprobs is not None else torch.zeros_like(mask)
    kl_for_reward = kl if config.algorithm != "grpo" else torch.zeros_like(kl)
    adv, returns = advantages(config, rollout.scores, kl_for_reward, old_values, mask, beta)
    batch = Minibatches(
        learner=learner, rollout=rollout, config=config, optimizer=optimizer, beta=beta, guard=guard, step=step,
        old_logp=old_logp, old_values=old_values, advantages=adv, returns=returns,
    )  # fmt: skip
    for _ in range(config.ppo_epochs):  # 4. update
        epoch_order = torch.randperm(n_global, generator=generator)
        for start in range(0, n_global, config.minibatch_size):
            mine = [
                local_index[g] for g in epoch_order[start : start + config.minibatch_size].tolist() if g in local_index
            ]
            live = (live_logp, live_values) if fused else None  # the one minibatch is the rollout: reuse its pass
            batch.train(mine, live, value_only)
    result = {k: sum(v) / len(v) for k, v in batch.stats.items() if v and not k.startswith("ratio")}
    if batch.stats["ratio_max"]:
        result["ratio_min"], result["ratio_max"] = min(batch.stats["ratio_min"]), max(batch.stats["ratio_max"])
    result["kl_ref"] = global_mean(kl.sum(), n_local)
    if rollout.sft_logprobs is not None:
        result["kl_sft"] = global_mean(sequence_kl(old_logp, rollout.sft_logprobs, mask).sum(), n_local)
    result["entropy"] = global_mean((entropy * mask).sum(), mask.sum())
    result.update(advantage_diagnostics(adv, mask, total=runtime.all_sum))
    if old_values is not None:
        result["returns"] = global_mean((returns * mask).sum(), mask.sum())
        result["values"] = global_mean((old_values * mask).sum(), mask.sum())
        result["explained_variance"] = explained_variance(old_values, returns, mask, total=runtime.all_sum)
    result["optimizer_steps"] = batch.applied
    return result


@dataclass(kw_only=True)
class Minibatches:
    """The clipped updates of one rollout, a minibatch at a time, and the statistics they log.

    Per response token of the rollout (rows as in `rollout.rows`): `old_logp` (log pi_old), `old_values` (V_old;
    None without a value function), `advantages` (A) and `returns` (G, PPO's value targets; else None).
    """

    learner: Learner
    rollout: Rollout
    config: RLConfig
    optimizer: torch.optim.Optimizer
    beta: float  # the KL coefficient of this step
    guard: FiniteGuard
    step: int
    old_logp: torch.Tensor
    old_values: torch.Tensor | None
    advantages: torch.Tensor
    returns: torch.Tensor | None
    stats: dict[str, list[float]] = field(default_factory=lambda: {name: [] for name in STATISTICS})
    applied: int = 0  # optimizer steps taken (a minibatch with a non-finite value is skipped)

    def _log(self, name: str, value: torch.Tensor) -> None:
        """The mean over processes of a statistic each process computed as its share of the global mean."""
        self.stats.setdefault(name, []).append(float(runtime.all_sum(value.detach())) / runtime.world_size())

    def train(self, mine: list[int], live: tuple | None, value_only: bool) -> None:
        """One optimizer step on this process's rows `mine` of a minibatch (its forward pass `live` if given)."""
        config, world, learner = self.config, runtime.world_size(), self.learner
        # A process with no row in this minibatch still takes part (its weight is 0), so that every
        # process runs the same collective operations (FSDP2 gathers weights in every forward pass).
        weight = 1.0 if mine else 0.0
        rows = torch.tensor(mine or [0])
        if live is not None:
            logp, values = live[0][rows], live[1][rows] if live[1] is not None else None
        else:
            with runtime.autocast(runtime.compute_dtype(config.mixed_precision)):
                logp, values, _ = learner.evaluate(self.rollout, rows, value_only=value_only)
        m = self.rollout.mask[rows] * weight
        # Each process divides its sums by its share of the global count (tokens, or responses; the count
        # over all processes / world), so the average of the processes' losses, and of their gradients, is the
        # mean over the global minibatch.
        tokens = runtime.all_sum(m.sum()) / world
        count = tokens if config.loss_aggregation == "token" else runtime.all_sum((m.sum(1) > 0).sum()) / world
        # L_pi: the clipped policy loss
        loss, clip_fraction, approx_kl = clipped_policy_loss(
            logp, self.old_logp[rows], self.advantages[rows], m, config.clip_range, count, config.loss_aggregation
        )
        self._log("policy_loss", loss)
        if config.algorithm == "grpo" and self.rollout.ref_logprobs is not None:  # GRPO: beta * k3 in the loss
            kl_loss = aggregate(kl_k3(logp, self.rollout.ref_logprobs[rows]), m, config.loss_aggregation, count)
            loss = loss + self.beta * kl_loss
            self._log("kl_loss", kl_loss)
        if value_only:
            loss = torch.zeros((), device=m.device)
        if values is not None:  # L_V: the clipped value loss
            value_loss = clipped_value_loss(
                values, self.old_values[rows], self.returns[rows], m, config.value_clip_range, count=tokens
            )
            loss = loss + config.vf_coef * value_loss
            self._log("value_loss", value_loss)
        loss.backward()
        if not runtime.is_sharded(learner.policy):
            runtime.average_gradients(learner.parameters())
        # The policy and the value function are clipped apart: the large early gradients of an untrained value
        # function must not shrink the policy's step.
        grad_norm = runtime.clip_gradients(learner.policy_parameters(), config.max_grad_norm)
        self.stats["grad_norm_policy"].append(grad_norm)
        if learner.value_head is not None:
            value_norm = runtime.clip_gradients(learner.value_parameters(), config.max_grad_norm)
            self.stats["grad_norm_value"].append(value_norm)
            grad_norm = (grad_norm**2 + value_norm**2) ** 0.5
        if self.guard.ok(self.step, loss=runtime.all_sum(loss.detach()), grad_norm=grad_norm):
            self.optimizer.step()
            self.applied += 1
        self.optimizer.zero_grad(set_to_none=True)
        self._log("clip_fraction", clip_fraction)
        self._log("approx_kl", approx_kl)
        # The range of pi_new / pi_old over the minibatch's tokens (every process joins the reduction).
        log_ratio = logp.detach() - self.old_logp[rows]
        outside = m == 0
        extremes = torch.stack(
            [log_ratio.masked_fill(outside, -torch.inf).max(), (-log_ratio).masked_fill(outside, -torch.inf).max()]
        )
        highest = runtime.all_max(extremes)
        self.stats["ratio_max"].append(float(highest[0].exp()))
        self.stats["ratio_min"].append(float((-highest[1]).exp()))
