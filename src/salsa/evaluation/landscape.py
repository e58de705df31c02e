"""The reward landscape: the mean score of the models on the line (1 - alpha) * SFT-1 + alpha * SFT-2.

Each point is sampled in rounds of `samples_per_prompt` responses per prompt (the same prompts and seeds at
every alpha: common random numbers) until the `confidence` interval (95% by default) of its mean score is at most
`landscape_half_width` on each side, or it holds `landscape_max_samples_per_prompt` responses per prompt (the last
round cut short to that number). The interval resamples the responses of each prompt and keeps the prompts
(`within_prompt_interval`): every point answers the same prompts, so what the prompt set contributes is shared and
more samples resolve the curve's shape. It measures sampling noise only: with one response per prompt it has zero
width, so a point is then resolved after its first round whatever the target. An endpoint that is also an
evaluated policy starts from that policy's responses (and draws nothing more when they resolve it).
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
    """Half the width of the `within_prompt_interval` of the mean `key` of `rows` (each prompt's responses
    resampled, the prompts kept); every prompt must have the same number of rows."""
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
    """Every response of one landscape point: `drawn` (an endpoint policy's, possibly none), then rounds of
    `samples_per_prompt` more per prompt, numbered on from the drawn ones, until resolved or at the cap. `build()`
    makes the point's model, only if a round is needed."""
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
