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
import shutil
import time
from dataclasses import replace
from pathlib import Path

import torch

from salsa import runtime
from salsa.checkpoint import latest_checkpoint, load_checkpoint, save_checkpoint
from salsa.config import RLConfig
from salsa.engine import Stage, run_stage
from salsa.errors import ConfigError, SalsaError
from salsa.generation import check_prompt_lengths
from salsa.logs import FiniteGuard, MetricsLog, check_finite_weights
from salsa.models import add_lora, load_causal_lm, load_tokenizer, save_model
from salsa.progress import console, training_progress
from salsa.rl.core import (
    AdaptiveKLController,
    aggregate,
    clipped_policy_loss,
    clipped_value_loss,
    gae,
    grpo_advantages,
    kl_k3,
    masked_whiten,
    rloo_advantages,
    token_rewards,
)
from salsa.rl.learner import Learner
from salsa.rl.reference import ema_update, load_reference, reference_dir, reference_weights, restore_reference
from salsa.rl.rollout import RewardFn, Rollout, collect_rollout
from salsa.rl.snapshots import save_snapshot
from salsa.scoring import reward_function
from salsa.seeding import batch_stream, derive_seed, generator


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


def _global_mean(total: torch.Tensor, count: torch.Tensor) -> float:
    """A sum and a count of this process, as the mean over all processes."""
    sums = runtime.all_sum(torch.stack([total.detach().float(), count.detach().float()]))
    return float(sums[0] / sums[1].clamp(min=1))


def rl_update(
    learner: Learner,
    rollout: Rollout,
    config: RLConfig,
    optimizer,
    beta: float,
    generator: torch.Generator,
    guard: FiniteGuard,
    step: int,
) -> dict:
    """Advantages, then `ppo_epochs` passes of clipped updates over minibatches; returns the step's statistics.

    Each epoch draws a permutation of the step's global rows from `generator` (seeded alike on every process); a
    minibatch is a slice of it, and each process works on the rows of it that it rolled out. A minibatch whose
    loss or gradient is not finite is never applied (`guard` stops the run or skips it).
    """
    world = runtime.world_size()
    n_local, n_global = len(rollout.rows), config.prompts_per_step * config.samples_per_prompt
    local_index = {row: i for i, row in enumerate(rollout.rows)}
    fused = config.ppo_epochs == 1 and config.minibatch_size >= n_global
    dtype = runtime.compute_dtype(config.mixed_precision)
    with runtime.autocast(dtype), torch.enable_grad() if fused else torch.no_grad():
        live_logp, live_values, entropy = learner.evaluate(rollout, torch.arange(n_local), with_entropy=True)
    old_logp = live_logp.detach()
    old_values = live_values.detach() if live_values is not None else None
    mask = rollout.mask
    kl = (old_logp - rollout.ref_logprobs) * mask if rollout.ref_logprobs is not None else torch.zeros_like(old_logp)
    kl_for_reward = kl if config.algorithm != "grpo" else torch.zeros_like(kl)
    adv, returns = advantages(config, rollout.scores, kl_for_reward, old_values, mask, beta)

    stats: dict[str, list[float]] = {"policy_loss": [], "value_loss": [], "clip_fraction": [], "approx_kl": []}
    for _ in range(config.ppo_epochs):
        epoch_order = torch.randperm(n_global, generator=generator)
        for start in range(0, n_global, config.minibatch_size):
            minibatch = epoch_order[start : start + config.minibatch_size].tolist()
            mine = [local_index[g] for g in minibatch if g in local_index]
            # A process with no row in this minibatch still takes part (its weight is 0), so that every
            # process runs the same collective operations (FSDP2 gathers weights in every forward pass).
            weight = 1.0 if mine else 0.0
            rows = torch.tensor(mine or [0])
            if fused:  # the one minibatch is the whole rollout: reuse the rollout's forward pass
                logp, values = live_logp[rows], live_values[rows] if live_values is not None else None
            else:
                with runtime.autocast(dtype):
                    logp, values, _ = learner.evaluate(rollout, rows)
            m = mask[rows] * weight
            # Each process divides its sums by its share of the global count (tokens, or responses; the count
            # over all processes / world), so the average of the processes' losses, and of their gradients, is the
            # mean over the global minibatch.
            tokens = runtime.all_sum(m.sum()) / world
            count = tokens if config.loss_aggregation == "token" else runtime.all_sum((m.sum(1) > 0).sum()) / world
            loss, clip_fraction, approx_kl = clipped_policy_loss(
                logp, old_logp[rows], adv[rows], m, config.clip_range, count, config.loss_aggregation
            )
            stats["policy_loss"].append(float(runtime.all_sum(loss.detach())) / world)
            if config.algorithm == "grpo" and rollout.ref_logprobs is not None:  # GRPO: beta * k3 in the loss
                kl_loss = aggregate(kl_k3(logp, rollout.ref_logprobs[rows]), m, config.loss_aggregation, count)
                loss = loss + beta * kl_loss
                stats.setdefault("kl_loss", []).append(float(runtime.all_sum(kl_loss.detach())) / world)
            if values is not None:
                value_loss = clipped_value_loss(
                    values, old_values[rows], returns[rows], m, config.value_clip_range, count=tokens
                )
                loss = loss + config.vf_coef * value_loss
                stats["value_loss"].append(float(runtime.all_sum(value_loss.detach())) / world)
            loss.backward()
            if not runtime.is_sharded(learner.policy):
                runtime.average_gradients(learner.parameters())
            grad_norm = runtime.clip_gradients(learner.parameters(), config.max_grad_norm)
            if guard.ok(step, loss=runtime.all_sum(loss.detach()), grad_norm=grad_norm):
                optimizer.step()
            optimizer.zero_grad(set_to_none=True)
            stats["clip_fraction"].append(float(runtime.all_sum(clip_fraction.detach())) / world)
            stats["approx_kl"].append(float(runtime.all_sum(approx_kl.detach())) / world)
    result = {k: sum(v) / len(v) for k, v in stats.items() if v}
    rows_here = torch.tensor(float(n_local))
    result["kl_ref"] = _global_mean(kl.sum(), rows_here)
    if rollout.sft_logprobs is not None:
        result["kl_sft"] = _global_mean(((old_logp - rollout.sft_logprobs) * mask).sum(), rows_here)
    result["entropy"] = _global_mean((entropy * mask).sum(), mask.sum())
    return result


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


def _run(config: RLConfig, stage: Stage, reward_fn: RewardFn | None, show_progress: bool) -> None:
    out, device = stage.out, runtime.accelerator().device
    world, main = runtime.world_size(), runtime.is_main_process()
    if config.prompts_per_step < world:
        raise ConfigError(f"rl.prompts_per_step ({config.prompts_per_step}) must be at least the {world} processes")
    torch.manual_seed(config.seed)
    random.seed(config.seed)
    prompts = stage.inputs["prompts"]
    tokenizer = load_tokenizer(config.init)
    learner = Learner(config, device)
    check_prompt_lengths(tokenizer, prompts, config.max_new_tokens, learner.policy, f"rl.prompts ({config.prompts})")
    reference = load_reference(config, learner.policy, device)
    same_as_reference = config.reference == "sft" and config.sft_model in (None, reference_dir(config))
    sft_model = None
    if config.sft_model is not None and not same_as_reference:
        sft_model = load_causal_lm(config.sft_model, runtime.forward_dtype(config.mixed_precision))
        sft_model = sft_model.eval().requires_grad_(False)
        sft_model = runtime.place(sft_model, device, config.sharding)
    reward = reward_fn or reward_function(config.reward_model, device)
    if config.normalise_reward:
        reward = _normalised(reward, sft_model or learner.policy, tokenizer, prompts, config)
    gold_fn = None
    if config.task:
        from salsa.tasks import BUILTIN_TASKS

        gold_fn = BUILTIN_TASKS[config.task].gold_score
    trained = learner.trained
    optimizer = torch.optim.AdamW(learner.parameters(), lr=config.learning_rate)
    beta = 0.0 if reference is None else config.kl_coef
    controller = AdaptiveKLController(beta, config.target_kl, config.kl_horizon) if config.adaptive_kl else None
    ema = reference.model if reference is not None and config.reference == "ema" else None

    checkpoints = out / "checkpoints"
    step, first_length, collapsed = 0, None, False
    resume_from = latest_checkpoint(checkpoints)
    if resume_from is not None:
        saved = load_checkpoint(resume_from, rank=runtime.process_state().process_index)
        if saved.counters.get("world_size", 1) != world:
            raise SalsaError(
                f"{resume_from} was saved by a run on {saved.counters.get('world_size', 1)} processes, this one has "
                f"{world}; resume it as it was launched, or pass --overwrite to start over"
            )
        learner.load_weights(saved.weights)
        runtime.load_optimizer_state(trained, optimizer, saved.optimizer_state)
        if ema is not None:
            restore_reference(ema, saved.weights)
        step, beta, first_length = saved.counters["step"], saved.counters["beta"], saved.counters["first_length"]
        if controller is not None:
            controller.value = beta
        console.print(f"resuming {out} from step {step}")
    guard = FiniteGuard("rl", config.on_nonfinite)
    batches = batch_stream([1] * len(prompts), config.prompts_per_step, derive_seed(config.seed, "prompts"), step)
    positions = runtime.my_share(config.prompts_per_step)  # this process's prompts of every step's batch
    n_global = config.prompts_per_step * config.samples_per_prompt
    dtype = runtime.compute_dtype(config.mixed_precision)

    progress_bar = training_progress(disable=not show_progress or not main)
    with MetricsLog(out, "rl", resume_step=step, enabled=main) as log, progress_bar as progress:
        task = progress.add_task(
            f"{config.algorithm} ({config.reference} ref)", total=config.steps, completed=step, metrics=""
        )
        while step < config.steps:
            started = time.perf_counter()
            batch = next(batches)
            with runtime.autocast(dtype):
                rollout = collect_rollout(
                    learner, tokenizer, [prompts[batch[p]] for p in positions], positions, config, step, reward,
                    reference, sft_model, gold_fn,
                )  # fmt: skip
            step += 1
            stats = {}
            if guard.ok(step, reward=rollout.scores):
                order = generator(config.seed, "minibatch", step)
                stats = rl_update(learner, rollout, config, optimizer, beta, order, guard, step)
            here = torch.tensor(float(len(rollout.rows)))
            length = _global_mean(rollout.mask.sum(), here)
            first_length = first_length or length
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
                "response_length": length,
                "tokens_per_s": tokens / (time.perf_counter() - started),
                "collapse": length < config.collapse_fraction * first_length,
                "skipped": guard.skipped,
            }
            if "kl_sft" not in record and same_as_reference and "kl_ref" in record:
                record["kl_sft"] = record["kl_ref"]  # the reference is the SFT model
            if record["collapse"] and not collapsed and main:
                console.print(
                    f"[bold yellow]warning:[/] response length collapsed at step {step} ({length:.1f} tokens vs "
                    f"{first_length:.1f} at step 1); consider a different kl_coef"
                )
                collapsed = True
            log.write(record)
            if controller is not None and "kl_ref" in record:
                controller.update(record["kl_ref"], n_global)
                beta = controller.value
            if ema is not None:
                ema_update(ema, learner.policy, config.ema_decay)
            gold_text = f"  gold {record['gold']:+.3f}" if record["gold"] is not None else ""
            progress.update(
                task, advance=1,
                metrics=f"reward {record['reward']:+.3f}{gold_text}  kl {record.get('kl_ref', float('nan')):.2f}  "
                f"len {length:.0f}  {record['tokens_per_s']:.0f} tok/s",
            )  # fmt: skip
            if config.snapshot_steps and step % config.snapshot_steps == 0 and step < config.steps:
                weights = runtime.trainable_state(learner.policy)  # every process takes part in gathering
                if main:
                    save_snapshot(weights, out, step)  # the final step is `final/`
            if config.save_steps and step % config.save_steps == 0 and step < config.steps:
                weights = learner.weights()
                if ema is not None:
                    weights.update(reference_weights(ema))
                check_finite_weights(weights, str(checkpoints))
                counters = {"step": step, "beta": beta, "first_length": first_length, "world_size": world}
                optimizer_state = runtime.optimizer_state(trained, optimizer)
                save_checkpoint(checkpoints / f"step-{step:07d}", weights, optimizer_state, counters=counters)
    # Record s of the log was sampled by the policy before update s: one more rollout measures the final policy
    # (its KL to SFT and its scores), so every saved policy has a measurement of its own.
    with runtime.autocast(dtype):
        batch = next(batches)
        rollout = collect_rollout(
            learner, tokenizer, [prompts[batch[p]] for p in positions], positions, config, step, reward, reference,
            sft_model, gold_fn,
        )  # fmt: skip
    final_policy = _measure(learner, rollout, config, dtype, same_as_reference)
    runtime.check_replicas_agree(learner.trained, *([ema] if ema is not None else []), what="policy and reference")
    policy = runtime.full_model(learner.policy, lambda: _fresh_policy(config))
    if main:
        save_model(policy, tokenizer, out / "final")
    info = {"algorithm": config.algorithm, "reference": config.reference, "skipped_steps": guard.skipped}
    stage.finish({**info, "final_policy": final_policy})
    if main:
        shutil.rmtree(checkpoints, ignore_errors=True)


def _normalised(reward: RewardFn, model, tokenizer, prompts: list, config: RLConfig) -> RewardFn:
    """`reward` centred and scaled by its mean and std on one seeded batch of `model`'s samples (over all processes)."""
    from salsa.generation import generate

    order = next(batch_stream([1] * len(prompts), config.prompts_per_step, derive_seed(config.seed, "normalise")))
    mine = [prompts[order[p]] for p in runtime.my_share(config.prompts_per_step)]
    texts = [p for p in mine for _ in range(config.samples_per_prompt)]
    seeds = [derive_seed(config.seed, "normalise", i) for i in range(len(texts))]
    with torch.no_grad():
        sample = generate(model, tokenizer, texts, max_new_tokens=config.max_new_tokens,
                          temperature=config.temperature, seeds=seeds)  # fmt: skip
    raw = torch.as_tensor(reward(texts, sample.responses), dtype=torch.float64)
    sums = runtime.all_sum(torch.stack([raw.sum(), (raw * raw).sum(), torch.tensor(float(len(raw)))]))
    mean = float(sums[0] / sums[2])
    std = float((sums[1] / sums[2] - mean**2).clamp(min=0).sqrt())
    if not std > 0:
        raise SalsaError(f"rl.normalise_reward: the reward gives every sample of the SFT model the same score ({mean})")
    console.print(f"reward normalised by mean {mean:+.4f}, std {std:.4f} on {int(sums[2])} SFT samples")
    return lambda p, r: (torch.as_tensor(reward(p, r), dtype=torch.float32) - mean) / std


@torch.no_grad()
def _measure(learner: Learner, rollout: Rollout, config: RLConfig, dtype, same_as_reference: bool) -> dict:
    """Reward, gold score, length and KL (to the reference and to SFT) of a rollout, over all processes."""
    with runtime.autocast(dtype):
        logp, _, _ = learner.evaluate(rollout, torch.arange(len(rollout.rows)))
    here, mask = torch.tensor(float(len(rollout.rows))), rollout.mask
    result = {"reward": _global_mean(rollout.scores.nan_to_num().sum(), here)}
    if rollout.gold is not None:
        result["gold"] = _global_mean(torch.tensor(rollout.gold, dtype=torch.float64).sum(), here)
    result["response_length"] = _global_mean(mask.sum(), here)
    if rollout.ref_logprobs is not None:
        result["kl_ref"] = _global_mean(((logp - rollout.ref_logprobs) * mask).sum(), here)
    if rollout.sft_logprobs is not None:
        result["kl_sft"] = _global_mean(((logp - rollout.sft_logprobs) * mask).sum(), here)
    elif same_as_reference and "kl_ref" in result:
        result["kl_sft"] = result["kl_ref"]
    return result


def _fresh_policy(config: RLConfig):
    """An unsharded policy of the run's architecture, to gather the trained weights of a sharded one into."""
    policy = load_causal_lm(config.init)
    return add_lora(policy, config.lora_r, config.lora_alpha) if config.use_lora else policy
