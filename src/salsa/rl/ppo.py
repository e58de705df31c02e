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
from dataclasses import dataclass
from pathlib import Path

import torch
from accelerate import Accelerator
from torch.utils.tensorboard import SummaryWriter

from salsa.config import RLConfig, fingerprint, save_config
from salsa.data import load_prompts
from salsa.errors import ConfigError, SalsaError
from salsa.generation import eos_token_ids, generate
from salsa.io import (
    COMPLETE_MARKER,
    JsonlWriter,
    atomic_dir,
    atomic_file,
    is_complete,
    mark_complete,
    read_json,
    record_digests,
    truncate_jsonl,
)
from salsa.models import add_lora, load_causal_lm, load_tokenizer
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
from salsa.rl.reference import ema_update, load_reference
from salsa.rl.snapshots import save_snapshot

ONLINE = ("ppo", "rloo", "grpo")
CHECKPOINT = "state.pt"


def validate_rl_config(config: RLConfig) -> None:
    if config.algorithm not in (*ONLINE, "dpo"):
        raise ConfigError(f"rl.algorithm must be one of ppo, rloo, grpo, dpo; got '{config.algorithm}'")
    if config.algorithm in ("rloo", "grpo") and config.samples_per_prompt < 2:
        raise ConfigError(f"rl.samples_per_prompt must be >= 2 for {config.algorithm}, got {config.samples_per_prompt}")
    for name in ("steps", "prompts_per_step", "samples_per_prompt", "max_new_tokens", "ppo_epochs", "minibatch_size"):
        if getattr(config, name) <= 0:
            raise ConfigError(f"rl.{name} must be > 0, got {getattr(config, name)}")
    for name in ("save_steps", "snapshot_steps"):
        if getattr(config, name) < 0:
            raise ConfigError(f"rl.{name} must be >= 0 (0: never), got {getattr(config, name)}")
    if config.value_head not in ("shared", "separate"):
        raise ConfigError(f"rl.value_head must be shared or separate, got '{config.value_head}'")
    if config.temperature <= 0:
        raise ConfigError(f"rl.temperature must be > 0 for sampling, got {config.temperature}")


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

    def state_dict(self) -> dict:
        modules = {"policy": self.policy, "critic": self.critic, "value_head": self.value_head}
        return {k: {n: p.detach() for n, p in m.named_parameters() if p.requires_grad} for k, m in modules.items() if m}

    def load_state_dict(self, state: dict) -> None:
        for key, module in (("policy", self.policy), ("critic", self.critic), ("value_head", self.value_head)):
            if module is not None:
                params = dict(module.named_parameters())
                with torch.no_grad():
                    for name, value in state[key].items():
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


def rl_update(learner: Learner, rollout: Rollout, config: RLConfig, optimizer, beta: float, generator) -> dict:
    """Advantages, then `ppo_epochs` passes of clipped updates over minibatches; returns the step's stats."""
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
            torch.nn.utils.clip_grad_norm_(learner.parameters(), config.max_grad_norm)
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


def train_rl(config: RLConfig, show_progress: bool = True, reward_fn: RewardFn | None = None) -> Path:
    """Run RL as configured; returns the directory of the final policy (`output_dir/final`).

    `reward_fn(prompts, responses) -> scores` replaces the reward model (a rule-based reward, say).
    """
    validate_rl_config(config)
    if config.algorithm == "dpo":
        from salsa.rl.dpo import train_dpo

        return train_dpo(config, show_progress)
    out = Path(config.output_dir)
    config_hash = fingerprint(config, output_dir="", save_steps=0)
    if is_complete(out):
        if read_json(out / COMPLETE_MARKER).get("fingerprint") != config_hash:
            raise SalsaError(f"{out} holds a run with a different config; remove it or choose another output_dir")
        console.print(f"[green]{out}[/] is complete; reusing it")
        return out / "final"
    accelerator = Accelerator()
    torch.manual_seed(config.seed)
    random.seed(config.seed)
    prompts = load_prompts(config.prompts)
    tokenizer = load_tokenizer(config.init)
    learner = Learner(config, accelerator.device)
    reference = load_reference(config)
    reference = reference.to(accelerator.device) if reference is not None else None
    same_as_reference = config.reference == "sft" and config.sft_model in (None, config.reference_model or config.init)
    sft_model = None
    if config.sft_model is not None and not same_as_reference:
        sft_model = load_causal_lm(config.sft_model).to(accelerator.device).eval().requires_grad_(False)
    reward = reward_fn or RewardModel.load(config.reward_model, accelerator.device).score
    gold_fn = None
    if config.task:
        from salsa.tasks import BUILTIN_TASKS

        gold_fn = BUILTIN_TASKS[config.task].gold_score
    optimizer = torch.optim.AdamW(learner.parameters(), lr=config.learning_rate)
    beta = 0.0 if reference is None else config.kl_coef
    controller = AdaptiveKLController(beta, config.target_kl, config.kl_horizon) if config.adaptive_kl else None

    out.mkdir(parents=True, exist_ok=True)
    save_config(config, out / "config.yaml", section="rl")
    checkpoint = out / "checkpoints" / CHECKPOINT
    step, first_length, collapsed = 0, None, False
    if checkpoint.is_file():
        state = torch.load(checkpoint, weights_only=False)
        learner.load_state_dict(state["learner"])
        optimizer.load_state_dict(state["optimizer"])
        step, beta, first_length = state["step"], state["beta"], state["first_length"]
        if controller is not None:
            controller.value = beta
        if reference is not None and "reference" in state:
            reference.load_state_dict(state["reference"])
        console.print(f"resuming {out} from step {step}")
    truncate_jsonl(out / "metrics.jsonl", step)
    metrics = JsonlWriter(out / "metrics.jsonl")
    tensorboard = SummaryWriter(str(out / "tensorboard"))

    with training_progress(disable=not show_progress) as progress:
        task = progress.add_task(
            f"{config.algorithm} ({config.reference} ref)", total=config.steps, completed=step, metrics=""
        )
        while step < config.steps:
            started = time.perf_counter()
            batch = _prompt_batch(prompts, config, step)
            rollout = collect_rollout(
                learner, tokenizer, batch, config, reward, reference, sft_model, gold_fn, config.seed * 1_000_003 + step
            )
            generator = torch.Generator().manual_seed(config.seed * 7_919 + step)
            stats = rl_update(learner, rollout, config, optimizer, beta, generator)
            step += 1
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
            }
            if "kl_sft" not in record and same_as_reference:
                record["kl_sft"] = record["kl_ref"]  # the reference is the SFT model
            if record["collapse"] and not collapsed:
                console.print(
                    f"[bold yellow]warning:[/] response length collapsed at step {step} ({length:.1f} tokens vs "
                    f"{first_length:.1f} at step 1); consider a different kl_coef"
                )
                collapsed = True
            metrics.write(record)
            for key, value in record.items():
                if key != "step" and value is not None:
                    tensorboard.add_scalar(f"rl/{key}", float(value), step)
            if controller is not None:
                controller.update(record["kl_ref"], len(rollout.prompts))
                beta = controller.value
            if config.reference == "ema" and reference is not None:
                ema_update(reference, learner.policy, config.ema_decay)
            gold = f"  gold {record['gold']:+.3f}" if record["gold"] is not None else ""
            progress.update(
                task, advance=1,
                metrics=f"reward {record['reward']:+.3f}{gold}  kl {record['kl_ref']:.2f}  len {length:.0f}  "
                f"{record['tokens_per_s']:.0f} tok/s",
            )  # fmt: skip
            if config.snapshot_steps and step % config.snapshot_steps == 0 and step < config.steps:
                save_snapshot(learner.policy, out, step)  # the final step is `final/`
            if config.save_steps and step % config.save_steps == 0 and step < config.steps:
                state = {"learner": learner.state_dict(), "optimizer": optimizer.state_dict(), "step": step,
                         "beta": beta, "first_length": first_length}  # fmt: skip
                if config.reference == "ema" and reference is not None:
                    state["reference"] = reference.state_dict()
                with atomic_file(checkpoint) as tmp:
                    torch.save(state, tmp)
    metrics.close()
    tensorboard.close()
    save_policy(learner.policy, tokenizer, out / "final")
    mark_complete(
        out, {"stage": "rl", "algorithm": config.algorithm, "reference": config.reference, "fingerprint": config_hash}
    )
    shutil.rmtree(out / "checkpoints", ignore_errors=True)
    return out / "final"


def _prompt_batch(prompts: list[str], config: RLConfig, step: int) -> list[str]:
    """Prompts of iteration `step`: epochs of seeded permutations, so the position is a function of step."""
    start = step * config.prompts_per_step
    epoch, offset = divmod(start, len(prompts))
    batch: list[str] = []
    while len(batch) < config.prompts_per_step:
        order = list(range(len(prompts)))
        random.Random(config.seed * 100_003 + epoch).shuffle(order)
        batch += [prompts[i] for i in order[offset:]]
        epoch, offset = epoch + 1, 0
    return batch[: config.prompts_per_step]


def save_policy(policy, tokenizer, out: Path) -> None:
    """The final policy as a standard model directory (LoRA merged)."""
    if hasattr(policy, "merge_and_unload"):
        policy = policy.merge_and_unload()
    with atomic_dir(out) as tmp:
        policy.save_pretrained(tmp)
        tokenizer.save_pretrained(tmp)
    record_digests(out)  # policies are soup ingredients too (e.g. a soup of RL runs)
