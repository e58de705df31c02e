"""Online RL for language models with a choice of KL reference: PPO, RLOO and GRPO in one loop.

Each iteration, in order (CleanRL style):
  1. rollout:   sample `samples_per_prompt` responses to `prompts_per_step` prompts (batched, KV cache);
  2. score:     the reward model once per response (normalised, clipped); the gold judge for logging;
  3. reference: log-probs of the responses under the frozen reference, once, under no_grad;
  4. advantages (see `advantages`):
       ppo   r_t = -beta KL_t, plus the score on the last token; GAE with the value head (InstructGPT);
       rloo  R = score - beta sum_t KL_t;  A = R - mean(R of the other samples of the prompt);
       grpo  A = (score - group mean) / group std;  beta * KL_k3 is added to the loss instead;
  5. update:    `ppo_epochs` passes of the clipped policy (and value) loss over minibatches. With one epoch
                and one minibatch the rollout forward pass is also the training forward pass;
  6. log, adapt beta, move an EMA reference, checkpoint, keep a snapshot of the trained weights.

Every random choice is seeded from (seed, step), so a run resumed from a checkpoint continues exactly.

Data parallel (under torchrun / accelerate launch): each process rolls out its share of the step's prompts;
advantage whitening, the minibatch token means and every logged statistic use sums over all processes, and
the gradients are averaged (or reduced by FSDP2), so the global update equals the one-process update of the
same global batch. Every process keeps the same policy and the same EMA reference.
"""

from __future__ import annotations

import random
import time
from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path

import torch

from salsa import runtime
from salsa.checkpoint import Checkpointer
from salsa.config import RLConfig
from salsa.data import prompt_text
from salsa.engine import Stage, run_stage
from salsa.errors import ConfigError, SalsaError
from salsa.generation import check_prompt_lengths
from salsa.inputs import GOLD_REWARD, check_normalisation_file
from salsa.logs import FiniteGuard, MetricsLog
from salsa.models import load_causal_lm, load_tokenizer, save_model
from salsa.policy import fresh_policy, sequence_kl
from salsa.progress import console, training_progress
from salsa.rl.core import (
    AdaptiveKLController,
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
from salsa.rl.normalisation import per_run_normalisation
from salsa.rl.reference import Reference, load_reference, reference_dir
from salsa.rl.rollout import RewardFn, Rollout, chunk_rows, collect_rollout
from salsa.scoring import gold_reward, reward_function
from salsa.seeding import batch_stream, derive_seed, generator
from salsa.snapshots import save_snapshot
from salsa.tasks import BUILTIN_TASKS


def advantages(
    config: RLConfig,
    scores: torch.Tensor,
    kl: torch.Tensor,
    values: torch.Tensor | None,
    mask: torch.Tensor,
    beta: float,
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Per-token advantages (and PPO's value targets) of one rollout; see the module docstring.

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


def _global_mean(total: torch.Tensor, count: torch.Tensor | float) -> float:
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
    """Advantages, then `ppo_epochs` passes of clipped updates over minibatches; returns the step's statistics.

    Each epoch draws a permutation of the step's global rows from `generator` (seeded alike on every process); a
    minibatch is a slice of it, and each process works on the rows of it that it rolled out. A minibatch whose
    loss or gradient is not finite is never applied (`guard` stops the run or skips it). `value_only` (the value
    warm-up) trains the value function alone.
    """
    n_local, n_global = len(rollout.rows), config.prompts_per_step * config.samples_per_prompt
    local_index = {row: i for i, row in enumerate(rollout.rows)}
    fused = config.ppo_epochs == 1 and config.minibatch_size >= n_global and not value_only
    dtype = runtime.compute_dtype(config.mixed_precision)
    with runtime.autocast(dtype):
        if fused:  # the one minibatch is the whole rollout: this pass is also the training pass
            live_logp, live_values, entropy = learner.evaluate(rollout, torch.arange(n_local), with_entropy=True)
        else:
            live_logp, live_values, entropy = learner.measure(rollout, chunk_rows(config))
    old_logp = live_logp.detach()
    old_values = live_values.detach() if live_values is not None else None
    mask = rollout.mask
    kl = kl_k1(old_logp, rollout.ref_logprobs) * mask if rollout.ref_logprobs is not None else torch.zeros_like(mask)
    kl_for_reward = kl if config.algorithm != "grpo" else torch.zeros_like(kl)
    adv, returns = advantages(config, rollout.scores, kl_for_reward, old_values, mask, beta)
    batch = Minibatches(learner, rollout, config, optimizer, beta, guard, step, old_logp, old_values, adv, returns)
    for _ in range(config.ppo_epochs):
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
    result["kl_ref"] = _global_mean(kl.sum(), n_local)
    if rollout.sft_logprobs is not None:
        result["kl_sft"] = _global_mean(sequence_kl(old_logp, rollout.sft_logprobs, mask).sum(), n_local)
    result["entropy"] = _global_mean((entropy * mask).sum(), mask.sum())
    result.update(advantage_diagnostics(adv, mask, total=runtime.all_sum))
    if old_values is not None:
        result["returns"] = _global_mean((returns * mask).sum(), mask.sum())
        result["values"] = _global_mean((old_values * mask).sum(), mask.sum())
        result["explained_variance"] = explained_variance(old_values, returns, mask, total=runtime.all_sum)
    return result


class Minibatches:
    """The clipped updates of one rollout, a minibatch at a time, and the statistics they log."""

    def __init__(self, learner, rollout, config, optimizer, beta, guard, step, old_logp, old_values, adv, returns):
        self.learner, self.rollout, self.config, self.optimizer = learner, rollout, config, optimizer
        self.beta, self.guard, self.step = beta, guard, step
        self.old_logp, self.old_values, self.adv, self.returns = old_logp, old_values, adv, returns
        names = ("policy_loss", "value_loss", "clip_fraction", "approx_kl", "ratio_min", "ratio_max",
                 "grad_norm_policy", "grad_norm_value")  # fmt: skip
        self.stats: dict[str, list[float]] = {name: [] for name in names}

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
        loss, clip_fraction, approx_kl = clipped_policy_loss(
            logp, self.old_logp[rows], self.adv[rows], m, config.clip_range, count, config.loss_aggregation
        )
        self._log("policy_loss", loss)
        if config.algorithm == "grpo" and self.rollout.ref_logprobs is not None:  # GRPO: beta * k3 in the loss
            kl_loss = aggregate(kl_k3(logp, self.rollout.ref_logprobs[rows]), m, config.loss_aggregation, count)
            loss = loss + self.beta * kl_loss
            self._log("kl_loss", kl_loss)
        if value_only:
            loss = torch.zeros((), device=m.device)
        if values is not None:
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


def train_rl(
    config: RLConfig, show_progress: bool = True, reward_fn: RewardFn | None = None, overwrite: bool = False
) -> Path:
    """Run RL as configured; returns the directory of the final policy (`output_dir/final`).

    `reward_fn(prompts, responses) -> scores` replaces the reward model (a rule-based reward, say); the run then
    records `reward_model: null`.
    """
    if reward_fn is not None:
        config = replace(config, reward_model=None)
    if config.algorithm == "dpo":
        from salsa.rl.dpo import train_dpo

        return train_dpo(config, show_progress, overwrite)
    if reward_fn is None and config.reward_model is None:
        raise SalsaError("rl.reward_model is null: give a reward model directory (or reward_fn in Python)")
    return run_stage(config, lambda stage: _run(config, stage, reward_fn, show_progress), overwrite) / "final"


@dataclass
class Models:
    """Everything an online RL run computes with: the learner, the KL reference, the SFT model KL is logged
    against (None when it is the reference), the reward and the gold judge."""

    learner: Learner
    tokenizer: object
    reference: Reference | None
    sft_model: torch.nn.Module | None
    reward: RewardFn
    gold_fn: Callable[[str, str], float] | None
    reference_is_sft: bool  # KL to the reference is KL to the SFT model

    def rollout(self, config: RLConfig, prompts: list, positions: list[int], step: int) -> Rollout:
        """Sample, score and anchor this process's share of one step's prompts."""
        with runtime.autocast(runtime.compute_dtype(config.mixed_precision)):
            return collect_rollout(
                self.learner, self.tokenizer, prompts, positions, config, step, self.reward, self.reference,
                self.sft_model, self.gold_fn,
            )  # fmt: skip


def _load_models(config: RLConfig, stage: Stage, reward_fn: RewardFn | None) -> Models:
    device, prompts = runtime.accelerator().device, stage.inputs["prompts"]
    tokenizer = load_tokenizer(config.init)
    learner = Learner(config, device)
    check_prompt_lengths(tokenizer, prompts, config.max_new_tokens, learner.policy, f"rl.prompts ({config.prompts})")
    reference = load_reference(config, learner.policy, device)
    fixed_sft = config.reference == "sft" and not reference.moving
    reference_is_sft = fixed_sft and config.sft_model in (None, reference_dir(config))
    sft_model = None
    if config.sft_model is not None and not reference_is_sft:
        sft_model = load_causal_lm(config.sft_model, runtime.forward_dtype(config.mixed_precision))
        sft_model = runtime.place(sft_model.eval().requires_grad_(False), device, config.sharding)
    gold_fn = BUILTIN_TASKS[config.task].gold_score if config.task else None
    if reward_fn is None:
        reward_fn = gold_reward(gold_fn) if config.reward_model == GOLD_REWARD else reward_function(config.reward_model)
    reward = reward_fn
    if config.reward_normalisation != "none":
        if config.reward_normalisation == "fixed":  # one for every run of a study, measured once (`salsa run`)
            mean, std = check_normalisation_file(config.normalisation_file, "rl.normalisation_file")
        else:
            mean, std = per_run_normalisation(reward_fn, learner.policy, tokenizer, prompts, config, stage.out)
        learner.calibrate_value(mean, std)
        reward = lambda p, r: (torch.as_tensor(reward_fn(p, r), dtype=torch.float32) - mean) / std  # noqa: E731
    return Models(learner, tokenizer, reference, sft_model, reward, gold_fn, reference_is_sft)


def _run(config: RLConfig, stage: Stage, reward_fn: RewardFn | None, show_progress: bool) -> None:
    out, world, main = stage.out, runtime.world_size(), runtime.is_main_process()
    if config.prompts_per_step < world:
        raise ConfigError(f"rl.prompts_per_step ({config.prompts_per_step}) must be at least the {world} processes")
    torch.manual_seed(config.seed)
    random.seed(config.seed)
    prompts = stage.inputs["prompts"]
    models = _load_models(config, stage, reward_fn)
    learner, reference = models.learner, models.reference
    optimizer = learner.optimizer()
    checkpoints = Checkpointer(
        out / "checkpoints", learner.trained, optimizer, every=config.save_steps, identity={"world_size": world},
        extra=reference,
    )  # fmt: skip
    beta = 0.0 if reference is None else config.kl_coef
    counters = checkpoints.resume() or {"step": 0, "beta": beta, "first_length": None}
    step, beta, first_length = counters["step"], counters["beta"], counters["first_length"]
    controller = AdaptiveKLController(beta, config.target_kl, config.kl_horizon) if config.adaptive_kl else None
    guard, collapsed = FiniteGuard("rl", config.on_nonfinite), False
    batches = batch_stream([1] * len(prompts), config.prompts_per_step, derive_seed(config.seed, "prompts"), step)
    positions = runtime.my_share(config.prompts_per_step)  # this process's prompts of every step's batch
    progress_bar = training_progress(disable=not show_progress or not main)
    with MetricsLog(out, "rl", config, resume_step=step, enabled=main) as log, progress_bar as progress:
        task = progress.add_task(
            f"{config.algorithm} ({config.reference} ref)", total=config.steps, completed=step, metrics=""
        )
        began = time.perf_counter() - counters.get("elapsed_s", 0.0)
        while step < config.steps and not _out_of_time(config, began, step):
            started = time.perf_counter()
            batch = next(batches)
            rollout = models.rollout(config, [prompts[batch[p]] for p in positions], positions, step)
            step += 1
            stats = {}
            if guard.ok(step, reward=rollout.scores):
                order = generator(config.seed, "minibatch", step)
                value_only = step <= config.warmup_steps
                stats = rl_update(learner, rollout, config, optimizer, beta, order, guard, step, value_only)
            record = _record(step, rollout, stats, beta, started, models.reference_is_sft, guard.skipped)
            record["elapsed_s"] = time.perf_counter() - began
            first_length = first_length or record["response_length"]
            record["collapse"] = record["response_length"] < config.collapse_fraction * first_length
            if record["collapse"] and not collapsed and main:
                console.print(
                    f"[bold yellow]warning:[/] response length collapsed at step {step} "
                    f"({record['response_length']:.1f} tokens vs {first_length:.1f} at step 1); consider a different "
                    "kl_coef"
                )
                collapsed = True
            log.write(record)
            if config.log_completions_steps and step % config.log_completions_steps == 0:
                log.table("completions", step, _completions(rollout))
            if controller is not None and "kl_ref" in record:
                controller.update(record["kl_ref"], config.prompts_per_step * config.samples_per_prompt)
                beta = controller.value
            if reference is not None:
                reference.update(learner.policy, step)
            progress.update(task, advance=1, metrics=_progress_text(record))
            if config.snapshot_steps and step % config.snapshot_steps == 0 and step < config.steps:
                weights = runtime.trainable_state(learner.policy)  # every process takes part in gathering
                if main:
                    save_snapshot(weights, out, step)  # the final step is `final/`
            state = {"beta": beta, "first_length": first_length, "elapsed_s": record["elapsed_s"]}
            checkpoints.save_if_due(step, config.steps, state)
    _finish(config, stage, models, next(batches), positions, step, guard.skipped)
    checkpoints.clear()


def _out_of_time(config: RLConfig, began: float, step: int) -> bool:
    """Whether `max_minutes` of training have passed (the main process decides, so every process stops alike)."""
    if config.max_minutes is None:
        return False
    over = runtime.broadcast(time.perf_counter() - began > 60 * config.max_minutes)
    if over and runtime.is_main_process():
        console.print(f"rl.max_minutes ({config.max_minutes}) reached after {step} of {config.steps} steps; stopping")
    return over


def _record(
    step: int, rollout: Rollout, stats: dict, beta: float, started: float, reference_is_sft: bool, skipped: int
) -> dict:
    """One line of metrics.jsonl: the rollout's scores and length, the update's statistics, throughput."""
    here = len(rollout.rows)
    gold = None
    if rollout.gold is not None:
        gold = _global_mean(torch.tensor(rollout.gold, dtype=torch.float64).sum(), here)
    tokens = float(runtime.all_sum(rollout.attention_mask.sum().double()))
    record = {
        "step": step,
        "reward": _global_mean(rollout.scores.nan_to_num().sum(), here),
        "gold": gold,
        **stats,
        "kl_coef": beta,
        "response_length": _global_mean(rollout.mask.sum(), here),
        "tokens_per_s": tokens / (time.perf_counter() - started),
        "skipped": skipped,
    }
    if "kl_sft" not in record and reference_is_sft and "kl_ref" in record:
        record["kl_sft"] = record["kl_ref"]  # the reference is the SFT model
    return record


def _completions(rollout: Rollout) -> list[dict]:
    """The step's samples as table rows (prompt, response, reward, and gold when a task judges them), gathered from
    every process in the order of the step's global batch."""
    scores = rollout.scores.tolist()
    mine = {}
    for i, row in enumerate(rollout.rows):
        mine[row] = {"prompt": prompt_text(rollout.prompts[i]), "response": rollout.responses[i], "reward": scores[i]}
        if rollout.gold is not None:
            mine[row]["gold"] = rollout.gold[i]
    every = runtime.gather_dict(mine)
    return [every[row] for row in sorted(every)]


def _progress_text(record: dict) -> str:
    gold = f"  gold {record['gold']:+.3f}" if record["gold"] is not None else ""
    return (
        f"reward {record['reward']:+.3f}{gold}  kl {record.get('kl_ref', float('nan')):.2f}  "
        f"len {record['response_length']:.0f}  {record['tokens_per_s']:.0f} tok/s"
    )


def _finish(
    config: RLConfig, stage: Stage, models: Models, batch: list[int], positions: list[int], step: int, skipped: int
) -> None:
    """Measure the final policy on one more rollout, save it to `final/` and mark the stage complete.

    Record s of the log was sampled by the policy before update s: the extra rollout measures the final policy (its
    KL to SFT and its scores), so every saved policy has a measurement of its own.
    """
    prompts = stage.inputs["prompts"]
    rollout = models.rollout(config, [prompts[batch[p]] for p in positions], positions, step)
    final_policy = _measure(models.learner, rollout, config, models.reference_is_sft)
    moving = [models.reference.model] if models.reference is not None and models.reference.moving else []
    runtime.check_replicas_agree(models.learner.trained, *moving, what="policy and reference")
    policy = runtime.full_model(models.learner.policy, lambda: fresh_policy(config))
    if runtime.is_main_process():
        save_model(policy, models.tokenizer, stage.out / "final")
    reward = "gold judge of the task" if config.reward_model == GOLD_REWARD else config.reward_model
    gold_version = BUILTIN_TASKS[config.task].GOLD_JUDGE_VERSION if config.task else None  # what logged "gold"
    info = {"algorithm": config.algorithm, "reference": config.reference, "reward": reward, "steps": step,
            "skipped_steps": skipped, "gold_judge_version": gold_version}  # fmt: skip
    stage.finish({**info, "final_policy": final_policy})


@torch.no_grad()
def _measure(learner: Learner, rollout: Rollout, config: RLConfig, reference_is_sft: bool) -> dict:
    """Reward, gold score, length and KL (to the reference and to SFT) of a rollout, over all processes."""
    with runtime.autocast(runtime.compute_dtype(config.mixed_precision)):
        logp, _, _ = learner.evaluate(rollout, torch.arange(len(rollout.rows)))
    here, mask = len(rollout.rows), rollout.mask
    result = {"reward": _global_mean(rollout.scores.nan_to_num().sum(), here)}
    if rollout.gold is not None:
        result["gold"] = _global_mean(torch.tensor(rollout.gold, dtype=torch.float64).sum(), here)
    result["response_length"] = _global_mean(mask.sum(), here)
    if rollout.ref_logprobs is not None:
        result["kl_ref"] = _global_mean(sequence_kl(logp, rollout.ref_logprobs, mask).sum(), here)
    if rollout.sft_logprobs is not None:
        result["kl_sft"] = _global_mean(sequence_kl(logp, rollout.sft_logprobs, mask).sum(), here)
    elif reference_is_sft and "kl_ref" in result:
        result["kl_sft"] = result["kl_ref"]
    return result
