"""Pure statistics of an evaluation: win / tie / loss rates, bootstrap intervals, curves read at a KL.

Scores are [S seeds, N prompts] matrices: every policy answered the same prompts with the same sampling seed,
so A's and B's scores pair up prompt by prompt. The bootstrap resamples seeds and prompts together.
"""

from __future__ import annotations

import numpy as np

from salsa.errors import DataError


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


def seed_pairs(seeds_a: int, seeds_b: int, names: tuple[str, str]) -> list[tuple[int, int]]:
    """Seed i of A against seed i of B; a single model (the SFT, say) against every seed of the other."""
    if seeds_a == seeds_b:
        return [(s, s) for s in range(seeds_a)]
    if seeds_a == 1 or seeds_b == 1:
        return [(0 if seeds_a == 1 else s, 0 if seeds_b == 1 else s) for s in range(max(seeds_a, seeds_b))]
    raise DataError(f"eval: {names[0]} has {seeds_a} seeds and {names[1]} {seeds_b}; give equal numbers")


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
    return _summarise_outcomes(results, scores_a - scores_b, num_samples, confidence, seed)


def compare_verdicts(verdicts: np.ndarray, num_samples: int = 2000, confidence: float = 0.95, seed: int = 0) -> dict:
    """Win / tie / loss from paired verdicts (+1 A, 0 tie, -1 B) of a pairwise judge; its `mean_difference` is
    the win rate minus the loss rate."""
    verdicts = np.atleast_2d(verdicts).astype(int)
    return _summarise_outcomes(verdicts, verdicts.astype(float), num_samples, confidence, seed)


def _summarise_outcomes(
    results: np.ndarray, difference: np.ndarray, num_samples: int, confidence: float, seed: int
) -> dict:
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


def within_prompt_interval(
    matrix: np.ndarray, num_samples: int = 2000, confidence: float = 0.95, seed: int = 0
) -> dict:
    """Mean of a [prompts, samples] matrix with a percentile bootstrap interval that redraws each prompt's samples
    from its own row (with replacement, as many as it has) and keeps every prompt: the uncertainty of the mean over
    this prompt set from sampling alone, about the mean plus or minus z * sqrt(sum_p var_p / K) / P (var_p: prompt
    p's sample variance, ddof 0; K samples, P prompts). Prompts whose samples agree add nothing: with one sample
    per prompt the interval has zero width.

    For points compared on the same prompts with the same seeds (the reward landscape), what the prompts add is
    shared by every point, so this is the interval that says whether two points differ; it does not say how the
    mean would change on other prompts.
    """
    matrix = np.asarray(matrix, dtype=float)
    rng = np.random.default_rng(seed)
    picks = rng.integers(0, matrix.shape[1], size=(num_samples, *matrix.shape))
    resampled = np.take_along_axis(matrix[None].repeat(num_samples, 0), picks, axis=2).mean((1, 2))
    return {"mean": float(matrix.mean()), "ci": percentile_interval(resampled, confidence)}


def centered_average(values, window: int = 3) -> np.ndarray:
    """Mean over a window centred on each point (shorter at the ends), to read a noisy curve without shifting it."""
    values = np.asarray(values, dtype=float)
    half = window // 2
    return np.array([values[max(0, i - half) : i + half + 1].mean() for i in range(len(values))])


def kl_overlap(ranges: list) -> tuple[float, float] | None:
    """The KL interval every run covered, [largest minimum, smallest maximum], or None when they do not overlap."""
    low, high = max(min(r) for r in ranges), min(max(r) for r in ranges)
    return (float(low), float(high)) if low <= high else None


def score_at_kl(kl, score, target: float) -> float:
    """Linear interpolation of a score-vs-KL curve at `target` KL, which must lie within the curve's KL range
    (a curve is never extended beyond where it was measured)."""
    kl, score = np.asarray(kl, dtype=float), np.asarray(score, dtype=float)
    if not kl.min() <= target <= kl.max():
        raise ValueError(f"KL {target} lies outside the curve's range [{kl.min()}, {kl.max()}]")
    order = np.argsort(kl)
    return float(np.interp(target, kl[order], score[order]))


def matched_kl(curves: dict[str, dict[str, list[float]]], keys: tuple[str, ...] = ("gold", "reward")) -> dict:
    """Each curve's scores at the largest KL that every curve reached, read inside every curve's measured range.

    `curves` maps name -> {kl_sft: [...], key: [...]}. When the KL ranges do not overlap there is no matched KL:
    the result holds `kl_sft: None` and each curve's range, and says why.
    """
    ranges = {name: [float(min(c["kl_sft"])), float(max(c["kl_sft"]))] for name, c in curves.items()}
    overlap = kl_overlap(list(ranges.values()))
    if overlap is None:
        return {"kl_sft": None, "ranges": ranges, "scores": {}}
    target = overlap[1]
    scores = {
        name: {key: score_at_kl(c["kl_sft"], c[key], target) for key in keys if c.get(key)}
        for name, c in curves.items()
    }
    return {"kl_sft": target, "ranges": ranges, "scores": scores}


def match_steps(kl_a: dict[int, float], kl_b: dict[int, float]) -> tuple[int, int, float] | None:
    """One saved policy of each run at matched KL to the SFT model, or None when there is none.

    `kl_a` / `kl_b` map each step that has a saved policy to the KL of that policy. Only policies inside the KL
    interval both runs' saved policies cover are eligible; each run contributes the one closest to the top of that
    interval (the largest KL both reached). None when the intervals do not overlap or a run has no saved policy
    inside the common one.
    """
    overlap = kl_overlap([list(kl_a.values()), list(kl_b.values())])
    if overlap is None:
        return None
    low, target = overlap
    steps = []
    for kl in (kl_a, kl_b):
        inside = [step for step, value in kl.items() if low <= value <= target]
        if not inside:
            return None
        steps.append(min(inside, key=lambda step: (target - kl[step], step)))
    return steps[0], steps[1], target


def two_level_interval(matrix: np.ndarray, num_samples: int = 2000, confidence: float = 0.95, seed: int = 0) -> dict:
    """Mean of a [prompts, samples] matrix with a bootstrap interval that resamples the prompts, then the samples
    of each drawn prompt: the uncertainty of the mean over the population the prompts come from."""
    matrix = np.asarray(matrix, dtype=float)
    rng = np.random.default_rng(seed)
    prompts = rng.integers(0, matrix.shape[0], size=(num_samples, matrix.shape[0]))
    picks = rng.integers(0, matrix.shape[1], size=(num_samples, *matrix.shape))
    resampled = np.take_along_axis(matrix[prompts], picks, axis=2).mean((1, 2))
    return {"mean": float(matrix.mean()), "ci": percentile_interval(resampled, confidence)}


def seed_level_test(scores_a: np.ndarray, scores_b: np.ndarray, alpha: float = 0.05, power: float = 0.8) -> dict:
    """Tests over seeds of paired [S seeds, N prompts] scores (seed s of A against seed s of B): the per-seed mean
    differences d_s, a two-sided one-sample t-test of mean d = 0, the exact sign-flip permutation test, and the
    minimum detectable effect of S seeds (the true mean difference a t-test of level `alpha` detects with
    probability `power`, at the observed seed-to-seed spread):

        MDE = (t_{1 - alpha/2, S-1} + t_{power, S-1}) * sd(d) / sqrt(S)

    With S seeds the permutation test cannot go below p = 2 / 2^S (0.0625 for 5 seeds): few seeds cannot carry a
    claim on their own, whatever the bootstrap over prompts says.
    """
    from scipy import stats as scipy_stats

    difference = np.atleast_2d(scores_a).astype(float) - np.atleast_2d(scores_b).astype(float)
    differences = difference.reshape(len(difference), -1).mean(1)  # one mean per seed, over prompts (and samples)
    seeds = len(differences)
    result: dict = {"seeds": seeds, "per_seed": differences.tolist(), "mean": float(differences.mean())}
    if seeds < 2 or np.all(differences == differences[0]):
        return {**result, "t_p": None, "permutation_p": None, "min_permutation_p": None, "mde": None}
    spread = float(differences.std(ddof=1))
    result["t_p"] = float(scipy_stats.ttest_1samp(differences, 0.0).pvalue)
    signs = np.array(np.meshgrid(*[[1.0, -1.0]] * seeds)).reshape(seeds, -1).T  # every sign flip: [2^S, S]
    flipped = np.abs((signs * differences).mean(1))
    result["permutation_p"] = float((flipped >= abs(differences.mean()) - 1e-12).mean())
    result["min_permutation_p"] = 2 / 2**seeds
    quantiles = scipy_stats.t.ppf(1 - alpha / 2, seeds - 1) + scipy_stats.t.ppf(power, seeds - 1)
    result["mde"] = float(quantiles * spread / np.sqrt(seeds))
    return result


# The rule every claim is judged by, fixed before the study ran (docs/results/README.md quotes it).
VERDICT_RULE = (
    "supported: the 95% bootstrap interval of the mean difference (seeds and prompts resampled) excludes 0 in the "
    "claimed direction and the seed-level paired t-test gives p < 0.05 with the same sign; contradicted: the same "
    "in the opposite direction; unresolved: anything else"
)


def claim_verdict(interval: tuple[float, float], seed_test: dict, direction: int = 1, alpha: float = 0.05) -> str:
    """supported | contradicted | unresolved, by VERDICT_RULE, for a claim that A - B has sign `direction`."""
    low, high = interval
    significant = seed_test.get("t_p") is not None and seed_test["t_p"] < alpha
    if significant and direction * low > 0 and direction * seed_test["mean"] > 0:
        return "supported"
    if significant and direction * high < 0 and direction * seed_test["mean"] < 0:
        return "contradicted"
    return "unresolved"


def contrast_with_interval(
    cells: list[np.ndarray],
    coefficients: list[float],
    num_samples: int = 2000,
    confidence: float = 0.95,
    seed: int = 0,
) -> dict:
    """sum_c coefficient_c * mean(cell_c) over [S_c seeds, N prompts, ...] cells answering the same prompts, with a
    bootstrap interval that draws the prompts once for all cells and each cell's seeds on their own (the cells are
    independent runs; cells may have different numbers of seeds)."""
    rng = np.random.default_rng(seed)
    num_prompts = cells[0].shape[1]
    prompts = rng.integers(0, num_prompts, size=(num_samples, num_prompts))
    total, point = np.zeros(num_samples), 0.0
    for cell, coefficient in zip(cells, coefficients, strict=True):
        cell = np.asarray(cell, dtype=float).reshape(cell.shape[0], num_prompts, -1).mean(2)  # [S, N]
        seeds = rng.integers(0, cell.shape[0], size=(num_samples, cell.shape[0]))
        total += coefficient * cell[seeds[:, :, None], prompts[:, None, :]].mean((1, 2))
        point += coefficient * cell.mean()
    return {"mean": float(point), "ci": percentile_interval(total, confidence)}


def factorial_effects(cells: dict[tuple[str, str], np.ndarray], **stats) -> dict:
    """The 2 x 2 of policy init x KL reference, each in {sft, soup}: the main effect of each factor (the soup's
    average gain over SFT across the other factor's levels) and their interaction, with intervals."""
    order = [("soup", "soup"), ("soup", "sft"), ("sft", "soup"), ("sft", "sft")]
    matrices = [cells[key] for key in order]
    return {
        "init": contrast_with_interval(matrices, [0.5, 0.5, -0.5, -0.5], **stats),
        "reference": contrast_with_interval(matrices, [0.5, -0.5, 0.5, -0.5], **stats),
        "interaction": contrast_with_interval(matrices, [1.0, -1.0, -1.0, 1.0], **stats),
    }
