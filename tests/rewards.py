"""Rule-based rewards for the tests that pass `--reward-model tests/rewards.py:length` (or another) as a reward."""


def length(prompts, responses):
    """Longer responses score higher."""
    return [len(r) / 10.0 for r in responses]


def first_only(prompts, responses):
    """A broken reward: one score for a whole batch."""
    return [1.0]


def turns(prompts, responses):
    """The number of turns in each prompt (one for a string): which prompt the reward was shown."""
    return [1.0 if isinstance(p, str) else float(len(p)) for p in prompts]
