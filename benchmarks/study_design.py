"""The power of a study's design, before it runs: how many RL seeds per cell of the 2 x 2 (init x reference) the
headline needs, and each contrast's minimum detectable effect (MDE) at that number, from the exact noncentral t
(`salsa.evaluation.stats.detectable_effect`), assuming a seed-to-seed sd of a run's held-out gold gain measured
before (the sample sd of per-seed gains of the default run with the learned reward model).

- headline, SALSA - PPO (and every paired comparison of two arms: matched KL, OOD, the reward model's score, under
  the same sd): a paired t-test over the S per-seed differences of two independent runs, sd(d) = sqrt(2) sd,
  se = sd(d) / sqrt(S), S - 1 degrees of freedom, two-sided 5%;
- a main effect of the 2 x 2 (weights +-1/2 on the four cells): the pooled-variance t on per-seed means, se = sd
  sqrt(sum_c w_c^2 / S) = sd / sqrt(S), 4 S - 4 degrees of freedom, at level 0.05 / 3 (Holm's strictest step, as
  `factorial_effects` states it);
- the interaction (weights +-1): se = 2 sd / sqrt(S), the same test.

examples/study_salsa_ppo_cpu.yaml states these numbers in its header; tests/test_benchmarks.py checks that they
are this script's.

    .venv/bin/python benchmarks/study_design.py [--gains 0.102 0.132 0.171] [--max-mde 0.07] [--min-seeds 5]
"""

from __future__ import annotations

import argparse
import math
import statistics

from salsa.evaluation.stats import FACTORIAL_CONTRASTS, detectable_effect

# Per-seed held-out gold gains of the default run (learned reward model, 3 seeds): docs/design.md, commit 1753b3f.
MEASURED_GAINS = (0.102, 0.132, 0.171)
ALPHA, POWER = 0.05, 0.8


def contrast_mdes(sd: float, seeds: int) -> dict[str, float]:
    """The MDE of each pre-registered contrast with `seeds` RL seeds in every cell of the balanced 2 x 2."""
    paired = detectable_effect(math.sqrt(2) * sd / math.sqrt(seeds), seeds - 1, ALPHA, POWER)
    # The paired test in units of the sd of the per-seed differences: for a score of other units (the reward model's).
    mdes = {"headline": paired, "paired_in_sd": detectable_effect(1 / math.sqrt(seeds), seeds - 1, ALPHA, POWER)}
    for name, weights in FACTORIAL_CONTRASTS.items():
        se = sd * math.sqrt(sum(w**2 for w in weights) / seeds)
        mdes[name] = detectable_effect(se, 4 * seeds - 4, ALPHA / len(FACTORIAL_CONTRASTS), POWER)
    return mdes


def seeds_needed(sd: float, max_mde: float, min_seeds: int = 5) -> int:
    """The fewest seeds per cell, at least `min_seeds`, whose headline MDE is at most `max_mde`."""
    seeds = min_seeds
    while contrast_mdes(sd, seeds)["headline"] > max_mde:
        seeds += 1
    return seeds


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--gains", type=float, nargs="+", default=list(MEASURED_GAINS))
    parser.add_argument("--max-mde", type=float, default=0.07)
    parser.add_argument("--min-seeds", type=int, default=5)
    args = parser.parse_args()
    sd = statistics.stdev(args.gains)
    seeds = seeds_needed(sd, args.max_mde, args.min_seeds)
    print(f"seed-to-seed sd {sd:.4f}; {seeds} seeds per cell")
    for s in range(args.min_seeds, seeds + 1):
        mdes = ", ".join(f"{name} {value:.3f}" for name, value in contrast_mdes(sd, s).items())
        print(f"  {s} seeds: {mdes}")


if __name__ == "__main__":
    main()
