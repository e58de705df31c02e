"""A rule-based reward for the tests that pass `--reward-model tests/rewards.py:length` on the command line."""


def length(prompts, responses):
    """Longer responses score higher."""
    return [len(r) / 10.0 for r in responses]


def first_only(prompts, responses):
    """A broken reward: one score for a whole batch."""
    return [1.0]
