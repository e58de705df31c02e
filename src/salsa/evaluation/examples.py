"""Paired example responses: what the numbers look like. A handful of prompts, and every policy's response to each,
drawn with the same sampling seed (the same sample number: common random numbers, so the responses differ only by
the weights) from each policy's first RL seed, with their scores.
"""

from __future__ import annotations

import numpy as np

from salsa.data import prompt_text

SCORES = ("gold", "reward", "length")  # what a response is shown with, where its row has it


def paired_examples(samples: list[dict], count: int = 4, seed: int = 0, split: str = "in_distribution") -> list[dict]:
    """`count` prompts of `split` and every policy's response to each (seed index 0, one sample number for all).

    The prompts are spread over the split: its prompt indices cut into `count` consecutive blocks of (nearly) equal
    size, one index drawn in each (the built-in task lists its prompts subject by subject, so the picks fall on
    different subjects); the sample number is drawn among those every policy answered. Both draws come from
    `numpy.random.default_rng(seed)`, so the same rows always give the same examples. Each example:
    {index, sample, split, prompt (as text), responses: {policy: {response, gold, reward, length}}}, policies in
    the rows' order, scores where the rows hold them.
    """
    rows = [r for r in samples if r["split"] == split and r["seed_index"] == 0]
    policies = list(dict.fromkeys(r["policy"] for r in rows))
    by_key = {(r["policy"], r["index"], r["sample"]): r for r in rows}
    indices = sorted({r["index"] for r in rows})
    if not indices:
        return []
    rng = np.random.default_rng(seed)
    examples = []
    for block in np.array_split(indices, min(count, len(indices))):
        index = int(rng.choice(block))
        shared = set.intersection(*({s for p, i, s in by_key if p == policy and i == index} for policy in policies))
        sample = int(rng.choice(sorted(shared)))
        answers = {policy: by_key[(policy, index, sample)] for policy in policies}
        examples.append({
            "index": index, "sample": sample, "split": split,
            "prompt": prompt_text(answers[policies[0]]["prompt"]),
            "responses": {policy: {"response": row["response"], **{k: row[k] for k in SCORES if k in row}}
                          for policy, row in answers.items()},
        })  # fmt: skip
    return examples
