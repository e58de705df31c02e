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
"""

from __future__ import annotations

import contextlib
import random
import shutil
import time
from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path

import torch

from salsa import runtime
from salsa.checkpoint import latest_checkpoint, load_checkpoint, save_checkpoint
from salsa.config import RLConfig
from salsa.engine import Stage, run_stage
from salsa.errors import SalsaError
from salsa.generation import check_prompt_lengths, eos_token_ids, generate
from salsa.logs import FiniteGuard, MetricsLog, check_finite_weights
from salsa.models import add_lora, load_causal_lm, load_tokenizer, save_model
from salsa.progress import console, training_progress
from salsa.reward import RewardModel
from salsa.rl.core import (
    AdaptiveKLController,
    clipped_policy_loss,
    clipped_value_loss,
    gae,
    grpo_advantages,
    kl_k3,
    masked_mean,
    masked_whiten,
    rloo_advantages,
    token_rewards,
)
from salsa.rl.policy import ValueHead, response_forward
from salsa.rl.reference import ema_update, load_reference, reference_weights, restore_reference
from salsa.rl.snapshots import save_snapshot
from salsa.seeding import batch_stream, derive_seed, generator


@dataclass
class Rollout:
    prompts: list[str]
    responses: list[str]
    sequences: torch.Tensor  # [N, P + R] left-padded prompt, then response
    attention_mask: torch.Tensor  # [N, P + R]
    prompt_length: int  # P
    mask: torch.Tensor  # [N, R] 1 on response tokens up to and including EOS
    scores: torch.Tensor  # [N] normalised, clipped reward-model scores (minus any missing-EOS penalty)
    gold: list[float] | None
    ref_logprobs: torch.Tensor | None  # [N, R]
    sft_logprobs: torch.Tensor | None  # [N, R]


class Learner:
    """The policy with its value function: a head on the policy trunk, or a separate critic model."""

    def __init__(self, config: RLConfig, device: torch.device):
        self.config = config
        policy = load_causal_lm(config.init)
        if config.use_lora:
            policy = add_lora(policy, config.lora_r, config.lora_alpha)
        self.policy = policy.to(device)
        self.critic = None
        self.value_head = None
        if config.algorithm == "ppo":
            if config.value_head == "separate":
                self.critic = load_causal_lm(config.init).to(device)
            self.value_head = ValueHead(self.policy.config.hidden_size).to(device)

    def parameters(self) -> list[torch.nn.Parameter]:
        modules = [self.policy, self.critic, self.value_head]
        return [p for m in modules if m is not None for p in m.parameters() if p.requires_grad]

    def evaluate(self, rollout: Rollout, rows: torch.Tensor, with_entropy: bool = False):
        """Log-probs, values and entropy of the rollout's responses `rows` under the current weights."""
        args = (rollout.sequences[rows], rollout.attention_mask[rows], rollout.prompt_length, self.config.temperature)
        out = response_forward(self.policy, *args, with_entropy=with_entropy)
        values = None
        if self.value_head is not None:
            hidden = out.hidden if self.critic is None else response_forward(self.critic, *args).hidden
            values = self.value_head(hidden)
        return out.logprobs, values, out.entropy

    def _modules(self) -> dict[str, torch.nn.Module]:
        modules = {"policy": self.policy, "critic": self.critic, "value_head": self.value_head}
        return {name: module for name, module in modules.items() if module is not None}

    def weights(self) -> dict[str, torch.Tensor]:
        """The trained tensors, as `policy.<name>`, `critic.<name>`, `value_head.<name>`."""
        return {
            f"{key}.{name}": p.detach()
            for key, module in self._modules().items()
            for name, p in module.named_parameters()
            if p.requires_grad
        }

    def load_weights(self, weights: dict[str, torch.Tensor]) -> None:
        params = {f"{key}.{n}": p for key, m in self._modules().items() for n, p in m.named_parameters()}
        with torch.no_grad():
            for name, value in weights.items():
                if not name.startswith("reference."):
                    params[name].copy_(value)


@torch.no_grad()
def collect_rollout(
    learner: Learner,
    tokenizer,
    prompts: list[str],
    config: RLConfig,
    reward: RewardFn,
    reference,
    sft_model,
    gold_fn,
    seed: int,
) -> Rollout:
    """Sample, score and anchor one batch of responses: every model runs once on it."""
    texts = [p for p in prompts for _ in range(config.samples_per_prompt)]
    sample = generate(
        learner.policy, tokenizer, texts,
        max_new_tokens=config.max_new_tokens, temperature=config.temperature, seed=seed,
    )  # fmt: skip
    device = sample.sequences.device
    scores = (
        torch.as_tensor(reward(texts, sample.responses), dtype=torch.float32)
        .to(device)
        .clamp(-config.reward_clip, config.reward_clip)
    )
    if config.missing_eos_penalty is not None:
        eos = torch.tensor(sorted(eos_token_ids(learner.policy, tokenizer)), device=device)
        ended = torch.isin(sample.sequences[:, sample.prompt_length :], eos).any(1)
        scores = scores - config.missing_eos_penalty * (~ended).float()
    args = (sample.sequences, sample.attention_mask, sample.prompt_length, config.temperature)
    ref_logprobs = response_forward(reference, *args).logprobs if reference is not None else None
    sft_logprobs = response_forward(sft_model, *args).logprobs if sft_model is not None else None
    gold = [gold_fn(p, r) for p, r in zip(texts, sample.responses, strict=True)] if gold_fn else None
    return Rollout(
        texts, sample.responses, sample.sequences, sample.attention_mask, sample.prompt_length, sample.mask, scores,
        gold, ref_logprobs, sft_logprobs,
    )  # fmt: skip


def advantages(
    config: RLConfig,
    scores: torch.Tensor,
    kl: torch.Tensor,
    values: torch.Tensor | None,
    mask: torch.Tensor,
    beta: float,
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Per-token advantages (and PPO's value targets) of one rollout; see the module docstring."""
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
    if config.whiten_advantages:
        adv = masked_whiten(adv, mask) * mask
    return adv, returns


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
    """Advantages, then `ppo_epochs` passes of clipped updates over minibatches; returns the step's stats.

    A minibatch whose loss or gradient is not finite is never applied (`guard` stops the run or skips it).
    """
    n = len(rollout.prompts)
    everything = torch.arange(n)
    fused = config.ppo_epochs == 1 and config.minibatch_size >= n
    with contextlib.nullcontext() if fused else torch.no_grad():
        live_logp, live_values, entropy = learner.evaluate(rollout, everything, with_entropy=True)
    old_logp = live_logp.detach()
    old_values = live_values.detach() if live_values is not None else None
    mask = rollout.mask
    kl = (old_logp - rollout.ref_logprobs) * mask if rollout.ref_logprobs is not None else torch.zeros_like(old_logp)
    kl_for_reward = kl if config.algorithm != "grpo" else torch.zeros_like(kl)
    adv, returns = advantages(config, rollout.scores, kl_for_reward, old_values, mask, beta)

    stats: dict[str, list[float]] = {"policy_loss": [], "value_loss": [], "clip_fraction": [], "approx_kl": []}
    for _ in range(config.ppo_epochs):
        order = torch.randperm(n, generator=generator)
        for start in range(0, n, config.minibatch_size):
            rows = order[start : start + config.minibatch_size]
            if fused:  # the one minibatch is the whole rollout, in `order`'s row order like everything below
                logp, values = live_logp[rows], live_values[rows] if live_values is not None else None
            else:
                logp, values, _ = learner.evaluate(rollout, rows)
            m = mask[rows]
            loss, clip_fraction, approx_kl = clipped_policy_loss(logp, old_logp[rows], adv[rows], m, config.clip_range)
            stats["policy_loss"].append(loss.item())
            if config.algorithm == "grpo" and rollout.ref_logprobs is not None:
                loss = loss + beta * masked_mean(kl_k3(logp, rollout.ref_logprobs[rows]), m)
            if values is not None:
                value_loss = clipped_value_loss(values, old_values[rows], returns[rows], m, config.value_clip_range)
                loss = loss + config.vf_coef * value_loss
                stats["value_loss"].append(value_loss.item())
            loss.backward()
            grad_norm = torch.nn.utils.clip_grad_norm_(learner.parameters(), config.max_grad_norm)
            if guard.ok(step, loss=loss, grad_norm=grad_norm):
                optimizer.step()
            optimizer.zero_grad(set_to_none=True)
            stats["clip_fraction"].append(clip_fraction.item())
            stats["approx_kl"].append(approx_kl.item())
    result = {k: sum(v) / len(v) for k, v in stats.items() if v}
    result["kl_ref"] = float(kl.sum(1).mean())
    if rollout.sft_logprobs is not None:
        result["kl_sft"] = float(((old_logp - rollout.sft_logprobs) * mask).sum(1).mean())
    result["entropy"] = float(masked_mean(entropy, mask))
    return result


RewardFn = Callable[[list[str], list[str]], torch.Tensor]


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
    torch.manual_seed(config.seed)
    random.seed(config.seed)
    prompts = stage.inputs["prompts"]
    tokenizer = load_tokenizer(config.init)
    learner = Learner(config, device)
    check_prompt_lengths(tokenizer, prompts, config.max_new_tokens, learner.policy, f"rl.prompts ({config.prompts})")
    reference = load_reference(config)
    reference = reference.to(device) if reference is not None else None
    same_as_reference = config.reference == "sft" and config.sft_model in (None, config.reference_model or config.init)
    sft_model = None
    if config.sft_model is not None and not same_as_reference:
        sft_model = load_causal_lm(config.sft_model).to(device).eval().requires_grad_(False)
    reward = reward_fn or RewardModel.load(config.reward_model, device).score
    gold_fn = None
    if config.task:
        from salsa.tasks import BUILTIN_TASKS

        gold_fn = BUILTIN_TASKS[config.task].gold_score
    optimizer = torch.optim.AdamW(learner.parameters(), lr=config.learning_rate)
    beta = 0.0 if reference is None else config.kl_coef
    controller = AdaptiveKLController(beta, config.target_kl, config.kl_horizon) if config.adaptive_kl else None

    checkpoints = out / "checkpoints"
    step, first_length, collapsed = 0, None, False
    resume_from = latest_checkpoint(checkpoints)
    if resume_from is not None:
        weights, counters = load_checkpoint(resume_from, optimizer)
        learner.load_weights(weights)
        if config.reference == "ema":
            restore_reference(reference, weights)
        step, beta, first_length = counters["step"], counters["beta"], counters["first_length"]
        if controller is not None:
            controller.value = beta
        console.print(f"resuming {out} from step {step}")
    guard = FiniteGuard("rl", config.on_nonfinite)
    batches = batch_stream([1] * len(prompts), config.prompts_per_step, derive_seed(config.seed, "prompts"), step)

    with MetricsLog(out, "rl", resume_step=step) as log, training_progress(disable=not show_progress) as progress:
        task = progress.add_task(
            f"{config.algorithm} ({config.reference} ref)", total=config.steps, completed=step, metrics=""
        )
        while step < config.steps:
            started = time.perf_counter()
            batch = [prompts[i] for i in next(batches)]
            rollout = collect_rollout(
                learner, tokenizer, batch, config, reward, reference, sft_model, gold_fn,
                derive_seed(config.seed, "sample", step),
            )  # fmt: skip
            step += 1
            stats = {}
            if guard.ok(step, reward=rollout.scores):
                stats = rl_update(learner, rollout, config, optimizer, beta, generator(config.seed, "minibatch", step),
                                  guard, step)  # fmt: skip
            length = float(rollout.mask.sum(1).mean())
            first_length = first_length or length
            record = {
                "step": step,
                "reward": float(rollout.scores.mean()),
                "gold": sum(rollout.gold) / len(rollout.gold) if rollout.gold else None,
                **stats,
                "kl_coef": beta,
                "response_length": length,
                "tokens_per_s": float(rollout.attention_mask.sum()) / (time.perf_counter() - started),
                "collapse": length < config.collapse_fraction * first_length,
                "skipped": guard.skipped,
            }
            if "kl_sft" not in record and same_as_reference and "kl_ref" in record:
                record["kl_sft"] = record["kl_ref"]  # the reference is the SFT model
            if record["collapse"] and not collapsed:
                console.print(
                    f"[bold yellow]warning:[/] response length collapsed at step {step} ({length:.1f} tokens vs "
                    f"{first_length:.1f} at step 1); consider a different kl_coef"
                )
                collapsed = True
            log.write(record)
            if controller is not None and "kl_ref" in record:
                controller.update(record["kl_ref"], len(rollout.prompts))
                beta = controller.value
            if config.reference == "ema" and reference is not None:
                ema_update(reference, learner.policy, config.ema_decay)
            gold = f"  gold {record['gold']:+.3f}" if record["gold"] is not None else ""
            progress.update(
                task, advance=1,
                metrics=f"reward {record['reward']:+.3f}{gold}  kl {record.get('kl_ref', float('nan')):.2f}  "
                f"len {length:.0f}  {record['tokens_per_s']:.0f} tok/s",
            )  # fmt: skip
            if config.snapshot_steps and step % config.snapshot_steps == 0 and step < config.steps:
                save_snapshot(learner.policy, out, step)  # the final step is `final/`
            if config.save_steps and step % config.save_steps == 0 and step < config.steps:
                weights = learner.weights()
                if config.reference == "ema" and reference is not None:
                    weights.update(reference_weights(reference))
                check_finite_weights(weights, str(checkpoints))
                counters = {"step": step, "beta": beta, "first_length": first_length, "seed": config.seed}
                save_checkpoint(checkpoints / f"step-{step:07d}", weights, optimizer, counters=counters)
    save_model(learner.policy, tokenizer, out / "final")
    stage.finish({"algorithm": config.algorithm, "reference": config.reference, "skipped_steps": guard.skipped})
    shutil.rmtree(checkpoints, ignore_errors=True)
