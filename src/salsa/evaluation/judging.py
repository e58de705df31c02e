"""Sampling every policy on the same prompts with the same seeds, and scoring the answers with the judges
(the task's gold judge and the reward model) and, on request, the KL to reference models."""

from __future__ import annotations

import itertools
from collections.abc import Callable

import torch

from salsa import runtime
from salsa.config import EvalConfig
from salsa.generation import Generation, generate
from salsa.models import load_causal_lm
from salsa.rl.core import kl_k1
from salsa.rl.policy import response_forward
from salsa.seeding import derive_seed


def sequence_kl(logprobs: torch.Tensor, ref_logprobs: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """KL(policy || reference) of whole responses, estimated on the policy's own samples (k1 summed)."""
    return (kl_k1(logprobs, ref_logprobs) * mask).sum(1)


def comparison_pairs(config: EvalConfig) -> list[tuple[str, str]]:
    """The (A, B) pairs to compare: the configured ones (checked by EvalConfig.check), else every pair."""
    if config.comparisons is None:
        return list(itertools.combinations(config.policies, 2))
    return [tuple(item.split(":", 1)) for item in config.comparisons]


class Judges:
    """The gold judge and the reward model, both optional, scoring (prompt, response) pairs."""

    def __init__(self, task: str | None, reward_model: str | None, device: torch.device):
        self.gold_fn: Callable[[str, str], float] | None = None
        if task:
            from salsa.tasks import BUILTIN_TASKS

            self.gold_fn = BUILTIN_TASKS[task].gold_score
        self.reward = None
        if reward_model:
            from salsa.reward import RewardModel

            self.reward = RewardModel.load(reward_model, device)

    @property
    def names(self) -> list[str]:
        return [name for name, judge in (("gold", self.gold_fn), ("reward", self.reward)) if judge is not None]

    def score(self, prompts: list[str], responses: list[str]) -> dict[str, list[float]]:
        scores = {}
        if self.gold_fn is not None:
            scores["gold"] = [self.gold_fn(p, r) for p, r in zip(prompts, responses, strict=True)]
        if self.reward is not None:
            scores["reward"] = self.reward.score(prompts, responses).tolist()
        return scores


@torch.no_grad()
def sample_and_score(
    model: torch.nn.Module,
    tokenizer,
    prompts: list[str],
    split: str,
    config: EvalConfig,
    judges: Judges,
    kl_references: dict[str, torch.nn.Module] | None = None,
    on_batch: Callable[[int], None] | None = None,
) -> list[dict]:
    """One response per prompt, in prompt order, with its judges' scores and, given references, its KL to each.

    Prompt i of `split` is answered with seed (seed, split, i) by every policy (common random numbers). Under
    several processes each answers its share of the prompts and every process receives all rows.
    """
    rows: dict[int, dict] = {}
    for indices in runtime.my_batches(list(range(len(prompts))), config.batch_size):
        batch = [prompts[i] for i in indices]
        sample: Generation = generate(
            model, tokenizer, batch, max_new_tokens=config.max_new_tokens, temperature=config.temperature,
            seeds=[derive_seed(config.seed, "eval", split, i) for i in indices], with_logprobs=bool(kl_references),
        )  # fmt: skip
        scores = judges.score(batch, sample.responses)
        kls = {}
        if kl_references:
            args = (sample.sequences, sample.attention_mask, sample.prompt_length, config.temperature)
            for name, reference in kl_references.items():
                if reference is model:
                    kls[f"kl_{name}"] = [0.0] * len(batch)
                else:
                    ref_logprobs = response_forward(reference, *args).logprobs
                    kls[f"kl_{name}"] = sequence_kl(sample.logprobs, ref_logprobs, sample.mask).tolist()
        lengths = sample.mask.sum(1).tolist()
        for j, (i, prompt, response) in enumerate(zip(indices, batch, sample.responses, strict=True)):
            rows[i] = {"prompt": prompt, "response": response, "length": lengths[j]}
            rows[i].update({key: values[j] for key, values in {**scores, **kls}.items()})
        if on_batch:
            on_batch(len(batch) * runtime.world_size())
    everything = runtime.gather_dict(rows)
    return [everything[i] for i in range(len(prompts))]


def frozen(path: str, device: torch.device) -> torch.nn.Module:
    """A model for scoring only: on `device`, in eval mode, without gradients."""
    return load_causal_lm(path).to(device).eval().requires_grad_(False)
