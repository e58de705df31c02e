"""One RL rollout: sample responses, score them, and anchor them to the reference, every model once.

Under several processes each process rolls out its share of the step's prompts (every sample of a prompt on the
same process, so RLOO and GRPO groups stay whole). A response's random draws are seeded by its place in the
step's global batch, so the global rollout is the same whatever the number of processes.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch

from salsa.config import RLConfig
from salsa.data import Prompt, prompt_text
from salsa.generation import eos_token_ids, generate
from salsa.policy import response_forward
from salsa.rl.learner import Learner
from salsa.rl.reference import Reference
from salsa.seeding import derive_seed

RewardFn = Callable[[list[Prompt], list[str]], torch.Tensor]


@dataclass
class Rollout:
    prompts: list[Prompt]
    responses: list[str]
    rows: list[int]  # each response's index in the step's global batch (prompt position * k + sample)
    sequences: torch.Tensor  # [N, P + R] left-padded prompt, then response
    attention_mask: torch.Tensor  # [N, P + R]
    prompt_length: int  # P
    mask: torch.Tensor  # [N, R] 1 on response tokens up to and including EOS
    scores: torch.Tensor  # [N] normalised, clipped reward-model scores (minus any missing-EOS penalty)
    gold: list[float] | None
    ref_logprobs: torch.Tensor | None  # [N, R]
    sft_logprobs: torch.Tensor | None  # [N, R]


@torch.no_grad()
def collect_rollout(
    learner: Learner,
    tokenizer,
    prompts: list[Prompt],
    positions: list[int],
    config: RLConfig,
    step: int,
    reward: RewardFn,
    reference: Reference | None,
    sft_model,
    gold_fn,
) -> Rollout:
    """Sample, score and anchor the responses to `prompts` (at `positions` of the step's global batch)."""
    k = config.samples_per_prompt
    texts = [p for p in prompts for _ in range(k)]
    rows = [position * k + s for position in positions for s in range(k)]
    sample = generate(
        learner.policy, tokenizer, texts, max_new_tokens=config.max_new_tokens, temperature=config.temperature,
        seeds=[derive_seed(config.seed, "sample", step, row) for row in rows],
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
    # The frozen models score the responses a minibatch of whole prompts at a time (bounded memory).
    chunk = chunk_rows(config)
    ref_logprobs = _in_chunks(reference.logprobs, sample, config, chunk) if reference is not None else None
    sft_logprobs = None
    if sft_model is not None:
        sft_logprobs = _in_chunks(lambda *a: response_forward(sft_model, *a).logprobs, sample, config, chunk)
    gold = [gold_fn(prompt_text(p), r) for p, r in zip(texts, sample.responses, strict=True)] if gold_fn else None
    return Rollout(
        texts, sample.responses, rows, sample.sequences, sample.attention_mask, sample.prompt_length, sample.mask,
        scores, gold, ref_logprobs, sft_logprobs,
    )  # fmt: skip


def chunk_rows(config: RLConfig) -> int:
    """Rows per forward pass without gradients: a minibatch, rounded up to whole prompts (their samples share the
    prompt's pass)."""
    k = config.samples_per_prompt
    return max(k, -(-config.minibatch_size // k) * k)


def _in_chunks(logprobs, sample, config: RLConfig, chunk: int) -> torch.Tensor:
    """`logprobs(sequences, attention_mask, prompt_length, temperature)` of the sample's rows, a chunk at a time."""
    return torch.cat([
        logprobs(sample.sequences[i : i + chunk], sample.attention_mask[i : i + chunk], sample.prompt_length,
                 config.temperature)
        for i in range(0, len(sample.sequences), chunk)
    ])  # fmt: skip
