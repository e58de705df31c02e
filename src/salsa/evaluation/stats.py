"""Pure statistics of an evaluation: win / tie / loss rates, bootstrap intervals, curves read at a KL.

Scores are [S seeds, N prompts] matrices: every policy answered the same prompts with the same sampling seed,
so A's and B's scores pair up prompt by prompt. The bootstrap resamples seeds and prompts together.
"""

from __future__ import annotations

import numpy as np


def outcomes(scores_a, scores_b, tie_margin: float = 0.0) -> np.ndarray:
    """+1 where A scores higher than B by more than `tie_margin`, -1 where lower, 0 for a tie."""
    diff = np.asarray(scores_a, dtype=float) - np.asarray(scores_b, dtype=float)
    return np.where(diff > tie_margin, 1, np.where(diff < -tie_margin, -1, 0))


def win_tie_loss(results: np.ndarray) -> dict[str, float]:
    """Rates of +1 / 0 / -1, and the win rate that counts a tie as half a win."""
    results = np.asarray(results)
    win, tie, loss = (float((results == v).mean()) for v in (1, 0, -1))
    return {"win": win, "tie": tie, "loss": loss, "win_rate": win + tie / 2}


def bootstrap_resamples(matrix: np.ndarray, num_samples: int, seed: int) -> np.ndarray:
    """[num_samples, S, N, ...] resamples of a [S seeds, N prompts, ...] array: seeds and prompts drawn with
    replacement (trailing axes ride along, so stacked quantities share one draw).

    Prompts are shared by all seeds, so one draw of prompt indices is applied to every resampled seed.
    """
    matrix = np.atleast_2d(matrix)
    rng = np.random.default_rng(seed)
    rows = rng.integers(0, matrix.shape[0], size=(num_samples, matrix.shape[0]))
    cols = rng.integers(0, matrix.shape[1], size=(num_samples, matrix.shape[1]))
    return matrix[rows[:, :, None], cols[:, None, :]]


def percentile_interval(values: np.ndarray, confidence: float = 0.95) -> tuple[float, float]:
    tail = (1 - confidence) / 2 * 100
    low, high = np.percentile(values, [tail, 100 - tail])
    return float(low), float(high)


def compare(
    scores_a: np.ndarray,
    scores_b: np.ndarray,
    tie_margin: float = 0.0,
    num_samples: int = 2000,
    confidence: float = 0.95,
    seed: int = 0,
) -> dict:
    """Win / tie / loss of A against B on paired [S, N] scores, and the mean paired difference A - B.

    Each has a percentile bootstrap interval; the difference is resampled with the same draws as the
    outcomes. A win rate says how often A is better, the difference by how much.
    """
    scores_a, scores_b = np.atleast_2d(scores_a).astype(float), np.atleast_2d(scores_b).astype(float)
    results = outcomes(scores_a, scores_b, tie_margin)
    difference = scores_a - scores_b
    point = win_tie_loss(results)
    drawn = bootstrap_resamples(np.stack([results, difference], -1), num_samples, seed).reshape(num_samples, -1, 2)
    flat = drawn[..., 0]
    resampled = {
        "win": (flat == 1).mean(1),
        "tie": (flat == 0).mean(1),
        "loss": (flat == -1).mean(1),
    }
    resampled["win_rate"] = resampled["win"] + resampled["tie"] / 2
    resampled["mean_difference"] = drawn[..., 1].mean(1)
    intervals = {key: percentile_interval(values, confidence) for key, values in resampled.items()}
    return {**point, "mean_difference": float(difference.mean()), "ci": intervals, "n": int(results.size)}


def mean_with_interval(matrix: np.ndarray, num_samples: int = 2000, confidence: float = 0.95, seed: int = 0) -> dict:
    matrix = np.atleast_2d(np.asarray(matrix, dtype=float))
    resampled = bootstrap_resamples(matrix, num_samples, seed).reshape(num_samples, -1).mean(1)
    return {"mean": float(matrix.mean()), "ci": percentile_interval(resampled, confidence)}


def moving_average(values, window: int) -> np.ndarray:
    """Trailing mean over `window` points (shorter at the start), to read a noisy training curve."""
    values = np.asarray(values, dtype=float)
    sums = np.cumsum(np.insert(values, 0, 0.0))
    counts = np.minimum(np.arange(1, len(values) + 1), window)
    return (sums[1:] - sums[np.arange(1, len(values) + 1) - counts]) / counts


def score_at_kl(kl, score, target: float) -> float:
    """Linear interpolation of a (smoothed) score-vs-KL curve at `target` KL."""
    kl, score = np.asarray(kl, dtype=float), np.asarray(score, dtype=float)
    order = np.argsort(kl)
    return float(np.interp(target, kl[order], score[order]))


def matched_kl(curves: dict[str, dict[str, list[float]]], keys: tuple[str, ...] = ("gold", "reward")) -> dict:
    """Each curve's scores at the largest KL every curve reached; curves map name -> {kl_sft: [...], key: [...]}."""
    target = min(max(c["kl_sft"]) for c in curves.values())
    scores = {
        name: {key: score_at_kl(c["kl_sft"], c[key], target) for key in keys if c.get(key)}
        for name, c in curves.items()
    }
    return {"kl_sft": float(target), "scores": scores}


def match_steps(kl_a: dict[int, float], kl_b: dict[int, float]) -> tuple[int, int, float]:
    """The step of each run whose KL to the SFT model lies closest to the largest KL both runs reached.

    `kl_a` / `kl_b` map the steps that have a saved policy to the (smoothed) training KL there.
    """
    target = min(max(kl_a.values()), max(kl_b.values()))
    closest = lambda kl: min(kl, key=lambda step: (abs(kl[step] - target), step))  # noqa: E731
    return closest(kl_a), closest(kl_b), float(target)
