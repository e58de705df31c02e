"""The type-I error of a study's headline t-test when its number of seeds is re-estimated from its first seeds' spread
(the extension rule of docs/study-extension-salsa-vs-ppo-cpu.md), by simulation.

Under the null (the per-seed differences are normal with mean 0 and sd `sigma`), the rule looks at the first
`--pilot` differences, sets n = min(cap, seeds_needed(sd / sqrt(2), max_mde, pilot)) from their sample sd alone
(benchmarks/study_design.py), adds n - pilot differences and runs the two-sided paired t-test on all n. Choosing n
from the data makes the final test's level differ from its nominal one; this prints the actual level at each
`--alpha` for several true sds, so that a final level can be chosen that keeps it at or below 0.05.

    .venv/bin/python benchmarks/study_extension_alpha.py [--runs 400000] [--alpha 0.05 0.04] [--sigma 0.05 0.069 0.1]
"""

from __future__ import annotations

import argparse
import math

import numpy as np
from scipy import stats
from study_design import contrast_mdes


def sd_thresholds(max_mde: float, pilot: int, cap: int) -> dict[int, float]:
    """n -> the largest pilot sd of the per-seed differences for which the rule picks at most n seeds: the rule's
    n is the smallest n >= pilot whose headline MDE, sqrt(2) (sd / sqrt(2)) k(n) = sd k(n), is at most max_mde."""
    return {n: max_mde / contrast_mdes(1 / math.sqrt(2), n)["headline"] for n in range(pilot, cap)}


def rule_seeds(pilot_sd: np.ndarray, max_mde: float, pilot: int, cap: int) -> np.ndarray:
    """The rule's number of seeds for each pilot sd (an array), capped at `cap`."""
    seeds = np.full(pilot_sd.shape, cap)
    for n, limit in sorted(sd_thresholds(max_mde, pilot, cap).items(), reverse=True):
        seeds[pilot_sd <= limit] = n
    return seeds


def type_one_error(sigma: float, alphas: list[float], runs: int, max_mde: float, pilot: int, cap: int,
                   seed: int = 0) -> dict[float, float]:  # fmt: skip
    """The share of null studies whose final two-sided t-test rejects at each level."""
    rng = np.random.default_rng(seed)
    diffs = rng.normal(0.0, sigma, size=(runs, cap))
    seeds = rule_seeds(diffs[:, :pilot].std(axis=1, ddof=1), max_mde, pilot, cap)
    rejected = {alpha: 0 for alpha in alphas}
    for n in np.unique(seeds):
        chosen = diffs[seeds == n, :n]
        t = chosen.mean(axis=1) / (chosen.std(axis=1, ddof=1) / math.sqrt(n))
        p = 2 * stats.t.sf(np.abs(t), n - 1)
        for alpha in alphas:
            rejected[alpha] += int((p < alpha).sum())
    return {alpha: count / runs for alpha, count in rejected.items()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--runs", type=int, default=400_000)
    parser.add_argument("--alpha", type=float, nargs="+", default=[0.05, 0.045, 0.04])
    parser.add_argument("--sigma", type=float, nargs="+", default=[0.04, 0.05, 0.06, 0.069, 0.08, 0.1, 0.12])
    parser.add_argument("--max-mde", type=float, default=0.07)
    parser.add_argument("--pilot", type=int, default=7)
    parser.add_argument("--cap", type=int, default=12)
    args = parser.parse_args()
    limits = ", ".join(f"n <= {n} at sd <= {limit:.4f}" for n, limit in sd_thresholds(args.max_mde, args.pilot,
                                                                                        args.cap).items())  # fmt: skip
    print(f"the rule: {limits}; else n = {args.cap}")
    for sigma in args.sigma:
        levels = type_one_error(sigma, args.alpha, args.runs, args.max_mde, args.pilot, args.cap)
        print(f"true sd {sigma}: " + ", ".join(f"at alpha {a}: {level:.4f}" for a, level in levels.items()))


if __name__ == "__main__":
    main()
