"""Online RL for language models with a choice of KL reference: PPO, RLOO and GRPO in one loop.

Each iteration, in order (CleanRL style):
  1. rollout:   sample `samples_per_prompt` responses to `prompts_per_step` prompts (batched, KV cache);
  2. score:     the reward model once per response (normalised, clipped); the gold judge for logging;
  3. reference: log-probs of the responses under the frozen reference, once, under no_grad;
  4. update (`salsa.rl.update`): the advantages (ppo: GAE of the KL-shaped rewards; rloo: leave-one-out;
                grpo: group-normalised), then `ppo_epochs` passes of the clipped policy (and value) loss over
                minibatches;
  5. log, adapt beta, move a moving reference (only after a step that updated the policy, as in DPO: a step
     skipped for a non-finite value leaves it where it is), checkpoint, keep a snapshot of the trained weights.

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
from salsa.rl.core import AdaptiveKLController
from salsa.rl.learner import Learner
from salsa.rl.normalisation import per_run_normalisation
from salsa.rl.reference import Reference, load_reference, reference_dir
from salsa.rl.rollout import RewardFn, Rollout, collect_rollout
from salsa.rl.update import global_mean, rl_update
from salsa.scoring import gold_reward, reward_function
from salsa.seeding import batch_stream, derive_seed, generator
from salsa.snapshots import save_snapshot
from salsa.tasks import BUILTIN_TASKS


def train_rl(
    config: RLConfig, show_progress: bool = True, reward_fn: RewardFn | None = None, overwrite: bool = False
) -> Path:
    """Run RL as configured; returns the directory of the final policy (`output_dir/final`).

    `reward_fn(prompts, responses) -> scores` replaces the reward model (a rule-based reward, say); the run then
    records `reward_model: null`.
    """
    if reward_fn is not None:
        config = replace(config, reward_model=None)
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
    reference = load_reference(config, learner.policy, device, config.sharding)
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
            if reference is not None and stats.get("optimizer_steps"):  # a skipped step leaves the reference
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
        gold = global_mean(torch.tensor(rollout.gold, dtype=torch.float64).sum(), here)
    tokens = float(runtime.all_sum(rollout.attention_mask.sum().double()))
    record = {
        "step": step,
        "reward": global_mean(rollout.scores.nan_to_num().sum(), here),
        "gold": gold,
        **stats,
        "kl_coef": beta,
        "response_length": global_mean(rollout.mask.sum(), here),
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
    result = {"reward": global_mean(rollout.scores.nan_to_num().sum(), here)}
    if rollout.gold is not None:
        result["gold"] = global_mean(torch.tensor(rollout.gold, dtype=torch.float64).sum(), here)
    result["response_length"] = global_mean(mask.sum(), here)
    if rollout.ref_logprobs is not None:
        result["kl_ref"] = global_mean(sequence_kl(logp, rollout.ref_logprobs, mask).sum(), here)
    if rollout.sft_logprobs is not None:
        result["kl_sft"] = global_mean(sequence_kl(logp, rollout.sft_logprobs, mask).sum(), here)
    elif reference_is_sft and "kl_ref" in result:
        result["kl_sft"] = result["kl_ref"]
    return result
