"""Pure statistics of an evaluation: win / tie / loss rates, bootstrap intervals, curves read at a KL.

Scores are [S seeds, N prompts] matrices: every policy answered the same prompts with the same sampling seed,
so A's and B's scores pair up prompt by prompt. The bootstrap resamples seeds and clusters of prompts together: a
cluster is a group of prompts that are not independent draws (the built-in task's near-paraphrases of one subject);
without clusters every prompt is its own.
"""

from __future__ import annotations

import numpy as np
from scipy import optimize
from scipy import stats as scipy_stats

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


def cluster_draws(
    clusters, num_prompts: int, num_samples: int, rng: np.random.Generator
) -> tuple[np.ndarray, np.ndarray]:
    """Prompt indices [num_samples, L] of a bootstrap that draws whole clusters of prompts with replacement (as many
    draws as there are clusters), and each index's weight [num_samples, L]: 1, or 0 where a cluster smaller than the
    largest is padded (so that unequal clusters still give one array).

    `clusters` holds each of the `num_prompts` prompts' cluster label; None: every prompt its own cluster. Clusters
    are numbered in order of first appearance, so N distinct labels give N draws of `rng.integers(0, N)` read as
    prompt indices: the plain prompt bootstrap, draw for draw.
    """
    clusters = range(num_prompts) if clusters is None else list(clusters)
    if len(clusters) != num_prompts:
        raise ValueError(f"{len(clusters)} cluster labels for {num_prompts} prompts")
    numbers = {label: number for number, label in enumerate(dict.fromkeys(clusters))}
    members = [[] for _ in numbers]
    for prompt, label in enumerate(clusters):
        members[numbers[label]].append(prompt)
    width = max(len(m) for m in members)
    table = np.zeros((len(members), width), dtype=int)
    valid = np.zeros((len(members), width))
    for number, m in enumerate(members):
        table[number, : len(m)], valid[number, : len(m)] = m, 1.0
    drawn = rng.integers(0, len(members), size=(num_samples, len(members)))
    return table[drawn].reshape(num_samples, -1), valid[drawn].reshape(num_samples, -1)


def bootstrap_resamples(
    matrix: np.ndarray, num_samples: int, seed: int, clusters=None
) -> tuple[np.ndarray, np.ndarray]:
    """[num_samples, S, L, ...] resamples of a [S seeds, N prompts, ...] array and the [num_samples, L] weight of each
    resampled prompt (`cluster_draws`): seeds drawn with replacement, and the prompts' clusters (`clusters`: each
    prompt's label; None: every prompt its own). Trailing axes ride along, so stacked quantities share one draw.

    Prompts are shared by all seeds, so one draw of prompt indices is applied to every resampled seed.
    """
    matrix = np.atleast_2d(matrix)
    rng = np.random.default_rng(seed)
    rows = rng.integers(0, matrix.shape[0], size=(num_samples, matrix.shape[0]))
    cols, weights = cluster_draws(clusters, matrix.shape[1], num_samples, rng)
    return matrix[rows[:, :, None], cols[:, None, :]], weights


def resampled_means(resampled: np.ndarray, weights: np.ndarray, quantities: bool = False) -> np.ndarray:
    """Each resample's mean over seeds, prompts (each counted by its weight) and samples of `bootstrap_resamples`'
    output: [num_samples], or [num_samples, Q] keeping the last axis when it stacks Q quantities."""
    num_samples, seeds, prompts = resampled.shape[:3]
    values = resampled.reshape(num_samples, seeds, prompts, -1, resampled.shape[-1] if quantities else 1)
    per_prompt = values.mean((1, 3))  # [num_samples, L, Q]: every prompt has the same seeds and samples
    means = np.einsum("nl,nlq->nq", weights, per_prompt) / weights.sum(1)[:, None]
    return means if quantities else means[:, 0]


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
    clusters=None,
) -> dict:
    """Win / tie / loss of A against B on paired [S, N] scores, and the mean paired difference A - B.

    Each has a percentile bootstrap interval (seeds and clusters of prompts resampled, `bootstrap_resamples`); the
    difference is resampled with the same draws as the outcomes. A win rate says how often A is better, the
    difference by how much.
    """
    scores_a, scores_b = np.atleast_2d(scores_a).astype(float), np.atleast_2d(scores_b).astype(float)
    results = outcomes(scores_a, scores_b, tie_margin)
    return _summarise_outcomes(results, scores_a - scores_b, num_samples, confidence, seed, clusters)


def compare_verdicts(
    verdicts: np.ndarray, num_samples: int = 2000, confidence: float = 0.95, seed: int = 0, clusters=None
) -> dict:
    """Win / tie / loss from paired verdicts (+1 A, 0 tie, -1 B) of a pairwise judge; its `mean_difference` is
    the win rate minus the loss rate."""
    verdicts = np.atleast_2d(verdicts).astype(int)
    return _summarise_outcomes(verdicts, verdicts.astype(float), num_samples, confidence, seed, clusters)


def _summarise_outcomes(
    results: np.ndarray, difference: np.ndarray, num_samples: int, confidence: float, seed: int, clusters
) -> dict:
    point = win_tie_loss(results)
    stacked = np.stack([results == 1, results == 0, results == -1, difference], -1).astype(float)
    stacked = stacked.reshape(*stacked.shape[:2], -1, stacked.shape[-1]).mean(2)  # [S, N, 4]: means over samples
    means = resampled_means(*bootstrap_resamples(stacked, num_samples, seed, clusters), quantities=True)
    resampled = dict(zip(("win", "tie", "loss", "mean_difference"), means.T, strict=True))
    resampled["win_rate"] = resampled["win"] + resampled["tie"] / 2
    intervals = {key: percentile_interval(resampled[key], confidence) for key in (*point, "mean_difference")}
    return {**point, "mean_difference": float(difference.mean()), "ci": intervals, "n": int(results.size)}


def mean_with_interval(
    matrix: np.ndarray, num_samples: int = 2000, confidence: float = 0.95, seed: int = 0, clusters=None
) -> dict:
    matrix = np.atleast_2d(np.asarray(matrix, dtype=float))
    resampled = resampled_means(*bootstrap_resamples(matrix, num_samples, seed, clusters))
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


def two_level_interval(
    matrix: np.ndarray, num_samples: int = 2000, confidence: float = 0.95, seed: int = 0, clusters=None
) -> dict:
    """Mean of a [prompts, samples] matrix with a bootstrap interval that resamples the clusters of prompts
    (`clusters`; None: every prompt its own), then the samples of each drawn prompt: the uncertainty of the mean over
    the population the prompts come from."""
    matrix = np.asarray(matrix, dtype=float)
    rng = np.random.default_rng(seed)
    prompts, weights = cluster_draws(clusters, matrix.shape[0], num_samples, rng)
    picks = rng.integers(0, matrix.shape[1], size=(*prompts.shape, matrix.shape[1]))
    drawn = np.take_along_axis(matrix[prompts], picks, axis=2)[:, None]  # [num_samples, 1 seed, L, samples]
    return {"mean": float(matrix.mean()), "ci": percentile_interval(resampled_means(drawn, weights), confidence)}


def t_test_power(noncentrality: float, df: float, alpha: float = 0.05) -> float:
    """Exact power of a two-sided t-test of level `alpha` with `df` degrees of freedom when the true effect is
    `noncentrality` standard errors: P(|T| > t_{1 - alpha/2, df}) for T ~ noncentral t(df, noncentrality)."""
    critical = scipy_stats.t.ppf(1 - alpha / 2, df)
    # The lower tail as the upper tail of -T: scipy's nct.cdf far below 0 with a large noncentrality returns NaN.
    upper, lower = (scipy_stats.nct.sf(critical, df, sign * noncentrality) for sign in (1, -1))
    return float(upper + lower)


def detectable_effect(standard_error: float, df: float, alpha: float = 0.05, power: float = 0.8) -> float:
    """The minimum detectable effect: the true effect that a two-sided t-test of level `alpha` (`df` degrees of
    freedom, an estimate with this standard error) detects with probability `power`, solved from the exact power of
    the noncentral t (`t_test_power`). With few degrees of freedom it is larger than the normal approximation
    (z_{1-alpha/2} + z_power) * se: for 5 paired seeds (se = sd / sqrt(5), 4 degrees of freedom) 1.68 sd, against
    1.25 sd."""
    # Twice the approximate answer t_{1-alpha/2} + z_power: the power there is above `power`, a bracket for the root.
    high = 2 * (scipy_stats.t.ppf(1 - alpha / 2, df) + scipy_stats.norm.ppf(power))
    noncentrality = optimize.brentq(lambda x: t_test_power(x, df, alpha) - power, 0.0, high, xtol=1e-12)
    return float(noncentrality * standard_error)


def seed_level_test(scores_a: np.ndarray, scores_b: np.ndarray, alpha: float = 0.05, power: float = 0.8) -> dict:
    """Tests over seeds of paired [S seeds, N prompts] scores (seed s of A against seed s of B): the per-seed mean
    differences d_s, a two-sided one-sample t-test of mean d = 0, the exact sign-flip permutation test, and the
    minimum detectable effect of S seeds: the true mean difference a t-test of level `alpha` detects with
    probability `power` at the observed seed-to-seed spread, from the noncentral t with S - 1 degrees of freedom
    and standard error sd(d) / sqrt(S) (`detectable_effect`).

    With S seeds the permutation test cannot go below p = 2 / 2^S (0.0625 for 5 seeds): few seeds cannot carry a
    claim on their own, whatever the bootstrap over prompts says.
    """
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
    result["mde"] = detectable_effect(spread / np.sqrt(seeds), seeds - 1, alpha, power)
    return result


# The rule every claim is judged by, fixed before the study ran (docs/design.md quotes it).
VERDICT_RULE = (
    "supported: at least as many seeds as the design pre-registers (eval.verdict_min_seeds), the 95% bootstrap "
    "interval of the mean difference (seeds and clusters of prompts resampled) excludes 0 in the claimed direction "
    "and the seed-level paired t-test gives p < 0.05 with the same sign; contradicted: the same in the opposite "
    "direction; unresolved: anything else"
)


def too_few_seeds(seeds: int, min_seeds: int, where: str = "") -> str | None:
    """Why a verdict from `seeds` seeds is unresolved whatever the tests say, or None when there are enough."""
    if seeds >= min_seeds:
        return None
    counted = f"{seeds} seed{'' if seeds == 1 else 's'}{where}"
    return f"{counted}, fewer than the {min_seeds} the design pre-registers (eval.verdict_min_seeds)"


def claim_verdict(
    interval: tuple[float, float], seed_test: dict, min_seeds: int, direction: int = 1, alpha: float = 0.05
) -> tuple[str, str]:
    """supported | contradicted | unresolved, by VERDICT_RULE, for a claim that A - B has sign `direction`, and the
    reason in words (what decided it)."""
    short = too_few_seeds(seed_test["seeds"], min_seeds)
    if short:
        return "unresolved", short
    if seed_test["t_p"] is None:
        return "unresolved", "no t-test over seeds: every seed's mean difference is the same"
    low, high = interval
    found = f"bootstrap interval [{low:+.3f}, {high:+.3f}], paired t-test over {seed_test['seeds']} seeds p = "
    found += f"{seed_test['t_p']:.3f}"
    significant = seed_test["t_p"] < alpha
    for verdict, sign in (("supported", direction), ("contradicted", -direction)):
        if significant and min(sign * low, sign * high) > 0 and sign * seed_test["mean"] > 0:
            return verdict, f"{found} < {alpha}, both {'above' if sign > 0 else 'below'} 0"
    failed = [text for fails, text in ((low <= 0 <= high, "the interval includes 0"),
                                       (not significant, f"p >= {alpha}")) if fails]  # fmt: skip
    return "unresolved", f"{found}: " + (" and ".join(failed) or "the interval and the seeds' mean point opposite ways")


def contrast_with_interval(
    cells: list[np.ndarray],
    coefficients: list[float],
    num_samples: int = 2000,
    confidence: float = 0.95,
    seed: int = 0,
    clusters=None,
) -> dict:
    """sum_c coefficient_c * mean(cell_c) over [S_c seeds, N prompts, ...] cells answering the same prompts, with a
    bootstrap interval that draws the clusters of prompts (`clusters`; None: every prompt its own) once for all
    cells and each cell's seeds on their own (the cells are independent runs; cells may have different numbers of
    seeds)."""
    rng = np.random.default_rng(seed)
    num_prompts = cells[0].shape[1]
    prompts, weights = cluster_draws(clusters, num_prompts, num_samples, rng)
    total, point = np.zeros(num_samples), 0.0
    for cell, coefficient in zip(cells, coefficients, strict=True):
        cell = np.asarray(cell, dtype=float).reshape(cell.shape[0], num_prompts, -1).mean(2)  # [S, N]
        seeds = rng.integers(0, cell.shape[0], size=(num_samples, cell.shape[0]))
        total += coefficient * resampled_means(cell[seeds[:, :, None], prompts[:, None, :]], weights)
        point += coefficient * cell.mean()
    return {"mean": float(point), "ci": percentile_interval(total, confidence)}


def pooled_contrast_test(
    seed_means: list[np.ndarray], coefficients: list[float], alpha: float = 0.05, power: float = 0.8
) -> dict:
    """A contrast L = sum_c w_c mean_c of independent cells tested with each cell's seeds as the units (y_cs: seed
    s's mean score in cell c; n_c seeds, N in all, C cells):

        s_p^2 = sum_c sum_s (y_cs - mean_c)^2 / (N - C)     se = s_p sqrt(sum_c w_c^2 / n_c)     t = L / se

    with N - C degrees of freedom, a two-sided p, and the minimum detectable effect of a test of level `alpha`
    with this se (`detectable_effect`). No test (t, p and mde None) when the cells have no spread to pool."""
    means = [np.asarray(m, dtype=float) for m in seed_means]
    df = sum(len(m) for m in means) - len(means)
    squares = sum(float(((m - m.mean()) ** 2).sum()) for m in means)
    if df < 1 or squares == 0:
        return {"t": None, "df": df, "p": None, "mde": None}
    se = float(np.sqrt(squares / df * sum(w**2 / len(m) for w, m in zip(coefficients, means, strict=True))))
    t = sum(w * m.mean() for w, m in zip(coefficients, means, strict=True)) / se
    p = float(2 * scipy_stats.t.sf(abs(t), df))
    return {"t": float(t), "df": df, "p": p, "mde": detectable_effect(se, df, alpha, power)}


def holm(p_values: list[float]) -> list[float]:
    """Holm's step-down adjusted p-values: the k-th smallest of m (k = 1..m) becomes the largest of
    min(1, (m - j + 1) p_(j)) over j <= k, so comparing each with alpha controls the family-wise error."""
    adjusted, running = [0.0] * len(p_values), 0.0
    for rank, index in enumerate(np.argsort(p_values, kind="stable")):
        running = max(running, min(1.0, (len(p_values) - rank) * p_values[index]))
        adjusted[index] = running
    return adjusted


FACTORIAL_CONTRASTS = {  # over the cells (init, reference) soup:soup, soup:sft, sft:soup, sft:sft
    "init": [0.5, 0.5, -0.5, -0.5],
    "reference": [0.5, -0.5, 0.5, -0.5],
    "interaction": [1.0, -1.0, -1.0, 1.0],
}


def factorial_effects(
    cells: dict[tuple[str, str], np.ndarray], min_seeds: int, alpha: float = 0.05, power: float = 0.8, **stats
) -> dict:
    """The 2 x 2 of policy init x KL reference, each in {sft, soup}: the main effect of each factor (the soup's
    average gain over SFT across the other factor's levels) and their interaction. Each has its bootstrap interval
    (`contrast_with_interval`, `stats` its settings) and the pooled-variance t-test on per-seed means
    (`pooled_contrast_test`, its mde at level alpha / 3, Holm's first step), Holm-corrected over the three; the
    label, helped | hurt | unresolved, comes from the corrected test, and is unresolved with a cell of fewer than
    `min_seeds` seeds."""
    order = [("soup", "soup"), ("soup", "sft"), ("sft", "soup"), ("sft", "sft")]
    matrices = [np.asarray(cells[key], dtype=float) for key in order]
    seed_means = [m.reshape(len(m), -1).mean(1) for m in matrices]
    effects = {
        name: {**contrast_with_interval(matrices, weights, **stats),
               **pooled_contrast_test(seed_means, weights, alpha / len(FACTORIAL_CONTRASTS), power)}
        for name, weights in FACTORIAL_CONTRASTS.items()
    }  # fmt: skip
    tested = all(e["p"] is not None for e in effects.values())
    adjusted = holm([e["p"] for e in effects.values()]) if tested else [None] * len(effects)
    short = too_few_seeds(min(len(m) for m in seed_means), min_seeds, " in the smallest cell")
    for effect, p_holm in zip(effects.values(), adjusted, strict=True):
        effect["p_holm"] = p_holm
        if short:
            effect["label"], effect["reason"] = "unresolved", short
        elif p_holm is None:
            effect["label"], effect["reason"] = "unresolved", "no t-test: no seed-to-seed spread within the cells"
        else:
            found = f"pooled t({effect['df']}) = {effect['t']:+.2f}, Holm-adjusted p = {p_holm:.3f}"
            significant = p_holm < alpha
            effect["label"] = ("helped" if effect["t"] > 0 else "hurt") if significant else "unresolved"
            effect["reason"] = f"{found} {'<' if significant else '>='} {alpha}"
    return effects
