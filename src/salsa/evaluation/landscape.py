"""The reward landscape: the mean score of the models on the line (1 - alpha) * SFT-1 + alpha * SFT-2.

Each point is sampled in rounds of `samples_per_prompt` responses per prompt (the same prompts and seeds at
every alpha: common random numbers) until the 95% interval of its mean score is at most `landscape_half_width`
on each side, or `landscape_max_samples_per_prompt` is reached. The interval resamples the responses of each
prompt and keeps the prompts (`within_prompt_interval`): every point answers the same prompts, so what the
prompt set contributes is shared and more samples resolve the curve's shape. An endpoint that is also an
evaluated policy starts from that policy's responses.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import torch

from salsa.config import EvalConfig
from salsa.data import Prompt
from salsa.evaluation.judging import Judges, sample_and_score
from salsa.evaluation.stats import within_prompt_interval


def half_width(rows: list[dict], key: str, config: EvalConfig) -> float:
    """Half the width of the bootstrap interval of the mean `key` over prompts (samples of a prompt together)."""
    by_prompt: dict[int, list[float]] = {}
    for row in rows:
        by_prompt.setdefault(row["index"], []).append(row[key])
    matrix = np.array([by_prompt[i] for i in sorted(by_prompt)])  # [prompts, samples]
    low, high = within_prompt_interval(matrix, config.bootstrap_samples, config.confidence, config.seed)["ci"]
    return (high - low) / 2


def sample_point(
    config: EvalConfig,
    build: Callable[[], torch.nn.Module],
    tokenizer,
    prompts: list[Prompt],
    judges: Judges,
    drawn: list[dict],
    advance: Callable[[int], None],
) -> list[dict]:
    """Every response of one landscape point: `drawn` (an endpoint policy's), then rounds until resolved."""
    key = judges.names[0]  # gold when the task has a judge, else the reward model
    rows, model = list(drawn), None
    rounds = config.samples_per_prompt
    while True:
        per_prompt = len(rows) // len(prompts)
        resolved = per_prompt > 0 and (
            config.landscape_half_width is None or half_width(rows, key, config) <= config.landscape_half_width
        )
        if resolved or per_prompt >= config.landscape_max_samples_per_prompt:
            return rows
        if model is None:
            model = build()
        more = range(per_prompt, min(per_prompt + rounds, config.landscape_max_samples_per_prompt))
        rows += sample_and_score(model, tokenizer, prompts, "in_distribution", config, judges, None, advance, more)
