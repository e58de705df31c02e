"""The RL reward's normalisation: its mean and std over samples of the starting policy, so that the first rollouts
score about 0 +- 1.

Either each run measures it on its own starting policy (`rl.reward_normalisation: initial_policy`, `per_run`), or
`salsa run` measures it once over the K SFT models (`run.reward_normalisation: shared`, the `normalisation` stage)
and every RL run reads it (`rl.reward_normalisation: fixed`): then one KL coefficient is one objective in every arm,
whatever the arm starts from. Both draw the same samples: `normalisation_samples` responses, `samples_per_prompt`
to each of a seeded selection of the training prompts, response s to prompt p seeded by (seed, p, s); shared
normalisation deals the prompts out to the K models in turn (prompt p to model p mod K), so with one model it is
the per-run measurement of that model.
"""

from __future__ import annotations

import math
from pathlib import Path

import torch

from salsa import runtime
from salsa.config import NormalisationConfig, RLConfig
from salsa.engine import run_stage
from salsa.generation import generate
from salsa.inputs import GOLD_REWARD
from salsa.io import NORMALISATION_FILE, atomic_write_json, read_json
from salsa.logs import NonFiniteError
from salsa.models import load_causal_lm, load_tokenizer
from salsa.progress import console
from salsa.rl.rollout import RewardFn
from salsa.scoring import gold_reward, reward_function
from salsa.seeding import batch_stream, derive_seed
from salsa.tasks import BUILTIN_TASKS


def _reward_sums(
    reward: RewardFn, policy, tokenizer, prompts: list, positions: list[int], num_prompts: int, *, seed: int,
    samples_per_prompt: int, max_new_tokens: int, temperature: float,
) -> torch.Tensor:  # fmt: skip
    """[sum, sum of squares, count] of `reward` over this process's share of `samples_per_prompt` responses of
    `policy` to each of the prompts at `positions` of the seeded selection of `num_prompts` training prompts."""
    order = next(batch_stream([1] * len(prompts), num_prompts, derive_seed(seed, "normalise")))
    mine = [(p, prompts[order[p % len(order)]]) for p in (positions[i] for i in runtime.my_share(len(positions)))]
    texts = [prompt for _, prompt in mine for _ in range(samples_per_prompt)]
    seeds = [derive_seed(seed, "normalise", p, s) for p, _ in mine for s in range(samples_per_prompt)]
    raw = torch.zeros(0, dtype=torch.float64)
    if texts:
        with torch.no_grad():
            sample = generate(policy, tokenizer, texts, max_new_tokens=max_new_tokens, temperature=temperature,
                              seeds=seeds)  # fmt: skip
        raw = torch.as_tensor(reward(texts, sample.responses), dtype=torch.float64)
    return torch.stack([raw.sum(), (raw * raw).sum(), raw.new_tensor(float(len(raw)))])


def _mean_std(sums: torch.Tensor, what: str) -> tuple[float, float, int]:
    """Mean, (population) std and count from this process's [sum, sum of squares, count], over all processes."""
    sums = runtime.all_sum(sums)
    mean = float(sums[0] / sums[2])
    std = float((sums[1] / sums[2] - mean**2).clamp(min=0).sqrt())
    if not (math.isfinite(mean) and std > 0):
        raise NonFiniteError(
            f"rl.reward_normalisation: the reward gives the {int(sums[2])} samples of {what} mean {mean} and std "
            f"{std}; a reward that does not vary cannot be normalised (set reward_normalisation: none)"
        )
    return mean, std, int(sums[2])


def _write(saved: Path, mean: float, std: float, samples: int, source: str | list[str]) -> None:
    if runtime.is_main_process():
        atomic_write_json(saved, {"mean": mean, "std": std, "samples": samples, "policy": source})
    console.print(f"reward normalised by mean {mean:+.4f}, std {std:.4f} over {samples} samples of {source}")


def per_run_normalisation(
    reward: RewardFn, policy, tokenizer, prompts: list, config: RLConfig, out: Path
) -> tuple[float, float]:
    """Mean and std of `reward` over `normalisation_samples` responses of the starting policy to seeded training
    prompts (over all processes), written to the run directory once; a resumed run reads them back."""
    saved = out / NORMALISATION_FILE
    if saved.is_file():
        recorded = read_json(saved)
        return recorded["mean"], recorded["std"]
    num_prompts = -(-config.normalisation_samples // config.samples_per_prompt)
    sums = _reward_sums(
        reward, policy, tokenizer, prompts, list(range(num_prompts)), num_prompts, seed=config.seed,
        samples_per_prompt=config.samples_per_prompt, max_new_tokens=config.max_new_tokens,
        temperature=config.temperature,
    )  # fmt: skip
    mean, std, count = _mean_std(sums, "the starting policy")
    _write(saved, mean, std, count, config.init)
    return mean, std


def shared_normalisation(config: NormalisationConfig, overwrite: bool = False) -> Path:
    """The `normalisation` stage of `salsa run`: the reward's mean and std over `samples` responses of the K SFT
    models (prompt p of the seeded selection answered by model p mod K), in `output_dir/reward_normalisation.json`;
    returns that file."""
    return run_stage(config, lambda stage: _measure_shared(config, stage), overwrite) / NORMALISATION_FILE


def _measure_shared(config: NormalisationConfig, stage) -> None:
    if config.reward_model == GOLD_REWARD:
        reward = gold_reward(BUILTIN_TASKS[config.task].gold_score)
    else:
        reward = reward_function(config.reward_model)
    prompts, device = stage.inputs["prompts"], runtime.accelerator().device
    num_prompts, k = -(-config.samples // config.samples_per_prompt), len(config.models)
    sums = torch.zeros(3, dtype=torch.float64)
    for i, model_dir in enumerate(config.models):
        # float32, as RL's policy starts (`trainable_model`): the samples the per-run measurement would draw.
        policy = load_causal_lm(model_dir).to(device).eval()
        positions = [p for p in range(num_prompts) if p % k == i]
        sums += _reward_sums(
            reward, policy, load_tokenizer(model_dir), prompts, positions, num_prompts, seed=config.seed,
            samples_per_prompt=config.samples_per_prompt, max_new_tokens=config.max_new_tokens,
            temperature=config.temperature,
        ).cpu()  # fmt: skip
        del policy
    mean, std, count = _mean_std(sums, f"the {k} SFT models")
    _write(stage.out / NORMALISATION_FILE, mean, std, count, list(config.models))
    stage.finish({"mean": mean, "std": std})
