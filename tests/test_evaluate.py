"""Win rates, bootstrap intervals and the matched-KL reading, against hand computations."""

import json

import numpy as np
import pytest
import torch

from salsa.evaluation.stats import (
    bootstrap_resamples,
    centered_average,
    compare,
    match_steps,
    matched_kl,
    mean_with_interval,
    outcomes,
    score_at_kl,
    win_tie_loss,
    within_prompt_interval,
)
from salsa.report import verdict
from salsa.rl.core import sequence_kl


def test_outcomes_and_rates_by_hand_with_ties():
    a = [0.9, 0.5, 0.2, 0.0, -0.3]
    b = [0.1, 0.5, 0.4, 0.0, -0.5]
    assert outcomes(a, b).tolist() == [1, 0, -1, 0, 1]
    # 2 wins, 2 ties, 1 loss of 5: win rate counts a tie as half a win.
    assert win_tie_loss(outcomes(a, b)) == pytest.approx({"win": 0.4, "tie": 0.4, "loss": 0.2, "win_rate": 0.6})
    # A margin turns the near-misses into ties: |0.2| and |0.2| <= 0.25.
    assert outcomes(a, b, tie_margin=0.25).tolist() == [1, 0, 0, 0, 0]


def test_bootstrap_of_a_constant_is_that_constant():
    result = compare(np.ones((1, 30)), np.zeros((1, 30)), num_samples=500)
    assert result["win"] == 1.0 and result["n"] == 30
    assert result["ci"]["win"] == (1.0, 1.0) and result["ci"]["win_rate"] == (1.0, 1.0)


def test_bootstrap_interval_matches_the_normal_approximation():
    rng = np.random.default_rng(0)
    wins = (rng.random(2000) < 0.6).astype(float)
    result = compare(wins[None], np.full((1, 2000), 0.5), num_samples=4000, seed=1)
    low, high = result["ci"]["win"]
    half_width = 1.96 * np.sqrt(result["win"] * (1 - result["win"]) / 2000)  # ~0.0215
    assert low == pytest.approx(result["win"] - half_width, abs=0.004)
    assert high == pytest.approx(result["win"] + half_width, abs=0.004)


def test_bootstrap_resamples_seeds_as_well_as_prompts():
    # Seed 0 always wins, seed 1 always loses: the seed-level resampling must widen the interval
    # far beyond what 100 prompts alone would give.
    a = np.array([[1.0] * 100, [0.0] * 100])
    b = np.full((2, 100), 0.5)
    result = compare(a, b, num_samples=2000)
    assert result["win_rate"] == 0.5
    low, high = result["ci"]["win_rate"]
    assert low == 0.0 and high == 1.0
    # Entry (seed, prompt) of arange(6).reshape(2, 3) is 3 * seed + prompt: each resampled entry says where it is from.
    resamples = bootstrap_resamples(np.arange(6).reshape(2, 3), num_samples=50, seed=0)
    assert resamples.shape == (50, 2, 3)
    seeds, prompts = resamples // 3, resamples % 3
    assert (seeds == seeds[:, :, :1]).all()  # a resampled row is one seed's row
    assert (prompts[:, 0] == prompts[:, 1]).all()  # both rows of a draw take the same prompts
    # And both axes are drawn with replacement: some draws repeat a seed, the prompt draws differ between draws.
    assert (seeds[:, 0, 0] == seeds[:, 1, 0]).any() and (seeds[:, 0, 0] != seeds[:, 1, 0]).any()
    assert len({tuple(p) for p in prompts[:, 0]}) > 10 and (prompts.min(-1) == prompts.max(-1)).any()


def test_mean_difference_is_paired_and_resampled_with_the_outcomes():
    a = np.array([[0.9, 0.2, 0.5, 0.1]])
    b = np.array([[0.1, 0.4, 0.5, 0.0]])
    result = compare(a, b, num_samples=1000, seed=3)
    # (0.8 - 0.2 + 0.0 + 0.1) / 4 = 0.175: A wins by much on one prompt, loses by a little on another.
    assert result["mean_difference"] == pytest.approx(0.175)
    low, high = result["ci"]["mean_difference"]
    assert -0.2 <= low < 0.175 < high <= 0.8
    # Each resample's difference comes from the same prompt draw as its win rate: by hand for the draws.
    draws = bootstrap_resamples(a - b, 1000, 3).reshape(1000, -1).mean(1)
    assert (low, high) == pytest.approx(tuple(np.percentile(draws, [2.5, 97.5])))


def test_outcomes_and_differences_are_resampled_by_one_draw(monkeypatch):
    # The interval of the win rate and that of the mean difference must come from the same resampled prompts
    # (and seeds); two draws, even with one seed each, would pair a resample's wins with another's differences.
    import salsa.evaluation.stats as stats

    calls = []
    real = stats.bootstrap_resamples

    def recording(matrix, num_samples, seed):
        calls.append(np.asarray(matrix).shape)
        return real(matrix, num_samples, seed)

    monkeypatch.setattr(stats, "bootstrap_resamples", recording)
    stats.compare(np.array([[0.9, 0.2, 0.5]]), np.array([[0.1, 0.4, 0.5]]), num_samples=200)
    assert calls == [(1, 3, 2)]  # once, with outcomes and differences stacked


def test_mean_with_interval_is_the_bootstraps_percentiles_by_hand():
    # One seed, prompts 0, 1, 2, 3: a resample's sum of 4 draws is 0 or 1 with probability 5/256 (1.95%) and at most 2
    # with 15/256 (5.9%), so the 2.5th percentile of the resampled mean is 2 / 4 and, by symmetry, the 97.5th 10 / 4.
    result = mean_with_interval(np.array([[0.0, 1.0, 2.0, 3.0]]), num_samples=20000)
    assert result["mean"] == 1.5
    assert result["ci"] == pytest.approx((0.5, 2.5))
    # Seeds are resampled too: two seeds at 0 and 2 on every prompt give resampled means 0, 1, 2 with probabilities
    # 1/4, 1/2, 1/4, so the interval runs from 0 to 2 (over prompts alone it would have no width).
    seeds = mean_with_interval(np.array([[0.0, 0.0, 0.0], [2.0, 2.0, 2.0]]), num_samples=20000)
    assert seeds["mean"] == 1.0 and seeds["ci"] == pytest.approx((0.0, 2.0))


def test_within_prompt_interval_has_no_width_when_each_prompts_samples_agree():
    # The prompts differ (0 to 9) but each prompt's 4 samples agree: redrawing samples within a prompt changes
    # nothing, whatever the spread over prompts.
    result = within_prompt_interval(np.repeat(np.arange(10.0)[:, None], 4, axis=1), num_samples=500)
    assert result["mean"] == pytest.approx(4.5)
    assert result["ci"] == pytest.approx((4.5, 4.5), abs=1e-12)


def test_within_prompt_interval_matches_the_normal_approximation_of_the_within_prompt_error():
    rng = np.random.default_rng(0)
    prompts, samples = 40, 25
    # Prompt means far apart (sd 5: what resampling the prompts would add) and noise of another size per prompt.
    noise = rng.uniform(0.5, 2.0, size=(prompts, 1)) * rng.normal(size=(prompts, samples))
    matrix = rng.normal(0.0, 5.0, size=(prompts, 1)) + noise
    result = within_prompt_interval(matrix, num_samples=4000, seed=1)
    # Prompt p's mean of K redrawn samples has variance var_p / K (ddof 0), so the mean over P prompts has standard
    # error sqrt(sum_p var_p / K) / P (~0.04 here; resampling the prompts too would give ~0.8).
    error = np.sqrt(matrix.var(axis=1).sum() / samples) / prompts
    low, high = result["ci"]
    assert result["mean"] == pytest.approx(matrix.mean())
    assert high - low == pytest.approx(2 * 1.96 * error, rel=0.08)
    assert (low + high) / 2 == pytest.approx(matrix.mean(), abs=0.15 * error)


class _GoldJudge:
    names = ["gold"]


def _fake_sampler(gold, calls):
    """A stand-in for `sample_and_score` without models: `gold(i, s)` scores sample s of prompt i; `calls` records
    the sample numbers each call draws."""

    def sample_and_score(model, tokenizer, prompts, split, config, judges, kl_references, advance, samples):
        calls.append(samples)
        return [{"index": i, "sample": s, "gold": gold(i, s)} for i in range(len(prompts)) for s in samples]

    return sample_and_score


def _landscape_config(**settings):
    from salsa.config import EvalConfig

    return EvalConfig(policies={"a": ["unused"]}, bootstrap_samples=500, **settings)


PROMPTS = [f"Review {i}." for i in range(10)]


def test_a_landscape_point_without_a_target_draws_one_round_and_reuses_drawn_responses(monkeypatch):
    from salsa.evaluation import landscape

    calls, builds = [], []
    monkeypatch.setattr(landscape, "sample_and_score", _fake_sampler(lambda i, s: float(s % 2), calls))
    config = _landscape_config(samples_per_prompt=3)
    build = lambda: builds.append("model") or "model"  # noqa: E731
    rows = landscape.sample_point(config, build, None, PROMPTS, _GoldJudge(), [], lambda n: None)
    assert calls == [range(0, 3)] and builds == ["model"] and len(rows) == 30
    # An endpoint that is also a policy starts from that policy's responses: nothing more drawn, no model built.
    assert landscape.sample_point(config, build, None, PROMPTS, _GoldJudge(), rows, lambda n: None) == rows
    assert calls == [range(0, 3)] and builds == ["model"]


def test_a_landscape_point_samples_rounds_until_its_interval_is_narrow_enough(monkeypatch):
    from salsa.evaluation import landscape

    calls = []
    # Each prompt's samples alternate 0, 1 (variance 1/4): the half-width is about 1.96 * 0.5 / sqrt(10 n) with n
    # samples per prompt, at most 0.1 from n = 10.
    monkeypatch.setattr(landscape, "sample_and_score", _fake_sampler(lambda i, s: float((i + s) % 2), calls))
    config = _landscape_config(samples_per_prompt=2, landscape_half_width=0.1, landscape_max_samples_per_prompt=64)
    rows = landscape.sample_point(config, lambda: "model", None, PROMPTS, _GoldJudge(), [], lambda n: None)
    n = len(rows) // len(PROMPTS)
    assert calls == [range(s, s + 2) for s in range(0, n, 2)] and 8 <= n <= 14
    fewer = [r for r in rows if r["sample"] < n - 2]  # the point one round earlier
    assert landscape.half_width(rows, "gold", config) <= 0.1 < landscape.half_width(fewer, "gold", config)


def test_a_landscape_point_stops_at_its_cap_and_continues_drawn_responses(monkeypatch):
    from salsa.evaluation import landscape

    calls = []
    monkeypatch.setattr(landscape, "sample_and_score", _fake_sampler(lambda i, s: float(s % 2), calls))
    config = _landscape_config(samples_per_prompt=3, landscape_half_width=1e-6, landscape_max_samples_per_prompt=7)
    rows = landscape.sample_point(config, lambda: "model", None, PROMPTS, _GoldJudge(), [], lambda n: None)
    assert calls == [range(0, 3), range(3, 6), range(6, 7)]  # the last round is cut to the cap
    assert len(rows) == 7 * len(PROMPTS)
    # Starting from an endpoint policy's 2 responses per prompt, rounds go on from sample 2, the drawn rows first.
    calls.clear()
    drawn = [{"index": i, "sample": s, "gold": float(s)} for i in range(len(PROMPTS)) for s in range(2)]
    rows = landscape.sample_point(config, lambda: "model", None, PROMPTS, _GoldJudge(), drawn, lambda n: None)
    assert calls == [range(2, 5), range(5, 7)] and rows[: len(drawn)] == drawn and len(rows) == 7 * len(PROMPTS)


def test_centered_average_by_hand():
    assert centered_average([1, 2, 3, 4], 3).tolist() == [1.5, 2.0, 3.0, 3.5]
    assert centered_average([3, 6, 9], 1).tolist() == [3.0, 6.0, 9.0]


def test_score_at_matched_kl_interpolates_each_curve_inside_its_range():
    curves = {
        "salsa": {"kl_sft": [0.5, 2.0, 4.0], "gold": [0.1, 0.4, 0.8]},
        "ppo": {"kl_sft": [0.0, 1.0, 3.0], "gold": [0.0, 0.5, 0.6]},
    }
    assert score_at_kl([0.0, 2.0], [1.0, 3.0], 1.5) == 2.5
    result = matched_kl(curves, ("gold",))
    # Both covered [0.5, 3.0]; its top is ppo's 3.0, where salsa lies half way between 0.4 and 0.8.
    assert result["kl_sft"] == 3.0 and result["ranges"] == {"salsa": [0.5, 4.0], "ppo": [0.0, 3.0]}
    assert result["scores"]["salsa"]["gold"] == pytest.approx(0.6)
    assert result["scores"]["ppo"]["gold"] == pytest.approx(0.6)
    with pytest.raises(ValueError, match="outside the curve's range"):
        score_at_kl([1.0, 2.0], [0.0, 1.0], 0.5)  # a curve is never read where it was not measured


def test_runs_whose_kl_ranges_do_not_overlap_have_no_matched_kl():
    # The demo's situation: SALSA starts at the soup, away from SFT-0, and stays above PPO's whole range.
    curves = {
        "salsa": {"kl_sft": [4, 4.5, 5], "gold": [0.1, 0.3, 0.5]},
        "ppo": {"kl_sft": [0, 1, 2], "gold": [0, 0.2, 0.4]},
    }
    result = matched_kl(curves, ("gold",))
    assert result["kl_sft"] is None and result["scores"] == {}
    assert result["ranges"] == {"salsa": [4.0, 5.0], "ppo": [0.0, 2.0]}
    assert match_steps({1: 4.0, 3: 5.0}, {1: 0.5, 3: 2.0}) is None


def test_match_steps_picks_saved_policies_inside_the_kl_range_both_runs_reached():
    salsa = {2: 0.5, 4: 1.0, 6: 1.6, 8: 2.0}  # step -> KL to SFT of the policy saved after that many updates
    ppo = {2: 0.4, 4: 0.9, 6: 1.1, 8: 1.5}
    # Both covered [0.5, 1.5]: ppo's final step 8 at 1.5; salsa's closest inside is step 4 (1.6 is outside).
    assert match_steps(salsa, ppo) == (4, 8, 1.5)
    # Ranges that overlap, but one run has no saved policy inside the common interval [1.2, 1.5].
    assert match_steps({1: 1.0, 2: 2.0}, {1: 1.2, 2: 1.5}) is None


def test_matched_kl_compares_the_saved_policies_at_the_kl_both_reached_on_the_evaluation_prompts(tmp_path):
    from salsa.config import EvalConfig
    from salsa.evaluation.matched import matched_kl_rows

    def run(name, steps):
        """An RL run of `steps` updates (its metrics.jsonl has one record per update)."""
        (tmp_path / name).mkdir()
        (tmp_path / name / "metrics.jsonl").write_text(
            "".join(json.dumps({"step": s + 1}) + "\n" for s in range(steps))
        )
        return str(tmp_path / name / "final")

    def rows(policy, kls, seed_index=0, snapshot=None):
        """One row per prompt with these KLs to SFT (on the evaluation prompts), a snapshot's if `snapshot`."""
        tag = {"snapshot": snapshot} if snapshot is not None else {}
        return [{"policy": policy, "seed_index": seed_index, "split": "in_distribution", "index": i, "sample": 0,
                 "kl_sft": kl, "gold": 0.5, **tag} for i, kl in enumerate(kls)]  # fmt: skip

    # salsa saved step 2 (KL 1.0 = mean of 0.5 and 1.5) and its final policy after 4 steps (KL 2.0); ppo saved steps
    # 1 (0.5) and 2 (1.0) and its final after 3 (1.25). Both covered [1.0, 1.25]: each run's saved policy closest to
    # 1.25 from below: salsa's step 2 (1.0) against ppo's final policy (step 3, 1.25).
    config = EvalConfig(policies={"salsa": [run("salsa", 4)], "ppo": [run("ppo", 3)]}, comparisons=["salsa:ppo"])
    finals = rows("salsa", [2.0, 2.0]) + rows("ppo", [1.0, 1.5])
    snapshots = rows("salsa", [0.5, 1.5], snapshot=2) + rows("ppo", [0.5, 0.5], snapshot=1) + rows(
        "ppo", [1.0, 1.0], snapshot=2
    )  # fmt: skip
    matched, unmatched = matched_kl_rows(config, finals, snapshots)
    assert unmatched == [] and {(r["policy"], r["step"]) for r in matched} == {("salsa", 2), ("ppo", 3)}
    picked = {r["policy"]: r for r in matched}
    assert picked["salsa"]["kl_eval"] == pytest.approx(1.0) and picked["ppo"]["kl_eval"] == pytest.approx(1.25)
    assert picked["salsa"]["target_kl"] == pytest.approx(1.25) and len(matched) == 4  # both prompts of each
    assert "snapshot" not in next(r for r in matched if r["policy"] == "ppo")  # the final policy's own rows
    # Saved policies whose KLs do not overlap: no comparison, and the reason.
    far = [{**r, "kl_sft": 3.0} for r in rows("salsa", [3.0, 3.0]) + rows("salsa", [3.0, 3.0], snapshot=2)]
    matched, unmatched = matched_kl_rows(config, far[:2] + finals[2:], far[2:] + snapshots[2:])
    assert matched == [] and "do not overlap" in unmatched[0] and "evaluation prompts" in unmatched[0]
    # A run without snapshots (or an SFT model) gives no matched-KL comparison.
    assert matched_kl_rows(config, finals, snapshots[2:]) == ([], [])
    # Two seeds, the second without snapshots: no comparison over only some of the seeds.
    two = EvalConfig(policies={"salsa": [*config.policies["salsa"], run("s1", 2)],
                               "ppo": [*config.policies["ppo"], run("p1", 2)]}, comparisons=["salsa:ppo"])  # fmt: skip
    more = rows("salsa", [1.0, 1.0], seed_index=1) + rows("ppo", [1.0, 1.0], seed_index=1)
    assert matched_kl_rows(two, finals + more, snapshots) == ([], [])


def test_sequence_kl_sums_log_ratios_over_the_response():
    logprobs = torch.tensor([[-1.0, -2.0, -0.5]])
    ref = torch.tensor([[-1.5, -1.0, -9.0]])
    mask = torch.tensor([[1.0, 1.0, 0.0]])  # the third token is after EOS
    assert sequence_kl(logprobs, ref, mask).tolist() == [0.5 - 1.0]


@pytest.mark.parametrize(
    ("interval", "expected"),
    [((0.55, 0.7), "salsa beat ppo"), ((0.3, 0.45), "ppo won"), ((0.45, 0.6), "the interval includes 50%")],
)
def test_verdict_follows_the_interval(interval, expected):
    comparison = {"a": "salsa", "b": "ppo", "split": "in_distribution", "judge": "gold", "n": 48}
    comparison.update(win_rate=sum(interval) / 2, ci={"win_rate": interval})
    assert expected in verdict(comparison, 0.95)


def test_generation_logprobs_equal_a_forward_pass(tokenizer, tiny_model_dir):
    from salsa.generation import generate
    from salsa.models import load_causal_lm
    from salsa.rl.policy import response_forward

    model = load_causal_lm(str(tiny_model_dir)).eval()
    prompts = ["Say something.", "Write a one-sentence review of a cinema."]
    sample = generate(model, tokenizer, prompts, max_new_tokens=6, temperature=0.7, seeds=3, with_logprobs=True)
    with torch.no_grad():
        forward = response_forward(model, sample.sequences, sample.attention_mask, sample.prompt_length, 0.7)
    mask = sample.mask.bool()
    assert torch.allclose(sample.logprobs[mask], forward.logprobs[mask], atol=1e-4)


@pytest.mark.parametrize(
    ("interval", "expected"),
    [((0.02, 0.2), "ppo improved on the SFT model"), ((-0.2, -0.01), "ppo is worse than the SFT model"),
     ((-0.05, 0.1), "ppo did not measurably improve on the SFT model")],
)  # fmt: skip
def test_the_report_says_whether_rl_improved_on_sft_by_the_difference_interval(interval, expected):
    from salsa.report import against_sft

    def comparison(a, b, split="in_distribution", judge="gold"):
        return {"a": a, "b": b, "split": split, "judge": judge, "win_rate": 0.6, "mean_difference": 0.05, "n": 48,
                "ci": {"win_rate": (0.5, 0.7), "mean_difference": interval}}  # fmt: skip

    others = [comparison("ppo", "salsa"), comparison("ppo", "sft", split="out_of_distribution"),
              comparison("ppo", "sft", judge="reward")]  # fmt: skip
    sentences = against_sft({"judges": ["gold", "reward"], "comparisons": [*others, comparison("ppo", "sft")]})
    assert len(sentences) == 1 and sentences[0].startswith(expected)
    assert f"[{interval[0]:+.3f}, {interval[1]:+.3f}]" in sentences[0]


def test_over_optimisation_begins_where_gold_falls_from_its_peak_while_the_reward_does_not():
    from salsa.evaluation.matched import over_optimisation, over_optimisation_by_policy
    from salsa.report import over_optimisation_text

    kl = [0.0, 1.0, 2.0, 3.0, 4.0]
    rising = {"kl_sft": kl, "gold": [0.4, 0.5, 0.6, 0.55, 0.52], "reward": [0.0, 0.1, 0.2, 0.3, 0.35]}
    found = over_optimisation(rising)
    # By hand: gold peaks after update 2 (0.6, at 2 nats) and ends 0.08 below it (> 0.05) while the reward rose.
    assert found["step"] == 2 and found["kl_sft"] == 2.0 and found["gold_peak"] == 0.6 and found["began"]
    assert found["gold_end"] == 0.52 and found["reward_peak"] == 0.2 and found["reward_end"] == 0.35
    # The reward fell with gold (the proxy did not mislead): not over-optimisation; nor a dip within 0.05.
    assert not over_optimisation({**rising, "reward": [0.0, 0.1, 0.2, 0.15, 0.1]})["began"]
    assert not over_optimisation({**rising, "gold": [0.4, 0.5, 0.6, 0.58, 0.56]})["began"]
    assert over_optimisation({"kl_sft": kl, "reward": rising["reward"]}) is None
    # A run trained on the gold judge has no proxy to over-optimise.
    by_policy = over_optimisation_by_policy({"ppo": rising, "control": rising}, {"ppo": "rm", "control": "gold judge"})
    assert set(by_policy) == {"ppo"}
    text = over_optimisation_text({"over_optimisation": by_policy})
    assert "ppo: gold peaked at 0.600 after update 2 (2.00 nats from SFT) and ended at 0.520" in text
    assert "over-optimisation began there" in text and over_optimisation_text({"over_optimisation": {}}) is None


def _health_rows(kl_between: float) -> list[dict]:
    """Two ingredients and the soup on 3 prompts x 2 samples; ingredient-0 scores 0.2 above the soup everywhere."""
    from salsa.evaluation.soup_health import member_names

    names = member_names(2)
    rows = []
    for member in names:
        for index in range(3):
            for sample in range(2):
                kls = {f"kl_{other}": (kl_between if "soup" not in (member, other) else kl_between / 4)
                       for other in names if other != member}  # fmt: skip
                gold = 0.5 + 0.1 * index + (0.2 if member == "ingredient-0" else 0.0)
                rows.append({"member": member, "index": index, "sample": sample, "gold": gold, **kls})
    return rows


@pytest.mark.parametrize(("kl_between", "distinct"), [(0.3, False), (1.5, True)])
def test_soup_health_says_whether_the_ingredients_differ(kl_between, distinct):
    from salsa.config import EvalConfig
    from salsa.evaluation.soup_health import soup_health_text, summarise_soup_health

    config = EvalConfig(policies={"a": ["x"]})
    health = summarise_soup_health(_health_rows(kl_between), ["gold"], config, {"num_samples": 200})
    assert health["members"] == ["ingredient-0", "ingredient-1", "soup"]
    assert health["kl"]["ingredient-0||ingredient-1"]["mean"] == pytest.approx(kl_between)
    assert health["kl"]["soup||ingredient-1"]["mean"] == pytest.approx(kl_between / 4)
    assert health["closest_ingredients_kl"] == pytest.approx(kl_between) and health["distinct"] is distinct
    soup_vs_first = next(c for c in health["comparisons"] if c["b"] == "ingredient-0")
    assert soup_vs_first["mean_difference"] == pytest.approx(-0.2) and soup_vs_first["win_rate"] == 0.0
    text = soup_health_text(health)
    assert ("effectively one of them" in text) is not distinct


def test_seed_level_test_by_hand():
    from scipy import stats as scipy_stats

    from salsa.evaluation.stats import seed_level_test

    # Three seeds, each a mean difference of one sign: the sign-flip test cannot go below 2/8 = 0.25.
    a = np.array([[0.3, 0.5], [0.2, 0.2], [0.5, 0.3]])
    b = np.zeros((3, 2))
    result = seed_level_test(a, b)
    assert result["per_seed"] == pytest.approx([0.4, 0.2, 0.4]) and result["seeds"] == 3
    assert result["permutation_p"] == pytest.approx(0.25) and result["min_permutation_p"] == pytest.approx(0.25)
    assert result["t_p"] == pytest.approx(scipy_stats.ttest_1samp([0.4, 0.2, 0.4], 0).pvalue)
    # MDE = (t_0.975,2 + t_0.8,2) * sd / sqrt(3) = (4.303 + 1.061) * 0.11547 / 1.732
    assert result["mde"] == pytest.approx((4.3027 + 1.0607) * np.std([0.4, 0.2, 0.4], ddof=1) / np.sqrt(3), rel=1e-3)
    # Mixed signs: half of the flips are at least as extreme.
    mixed = seed_level_test(np.array([[1.0], [-1.0]]), np.zeros((2, 1)))
    assert mixed["permutation_p"] == 1.0 and mixed["mean"] == 0.0
    assert seed_level_test(np.ones((1, 4)), np.zeros((1, 4)))["t_p"] is None  # one seed: no test


@pytest.mark.parametrize(
    ("interval", "t_p", "mean", "expected"),
    [((0.01, 0.2), 0.01, 0.1, "supported"), ((0.01, 0.2), 0.2, 0.1, "unresolved"),
     ((-0.05, 0.2), 0.01, 0.1, "unresolved"), ((-0.2, -0.01), 0.01, -0.1, "contradicted")],
)  # fmt: skip
def test_claim_verdict_follows_the_rule(interval, t_p, mean, expected):
    from salsa.evaluation.stats import claim_verdict

    assert claim_verdict(interval, {"t_p": t_p, "mean": mean}) == expected


def test_two_level_interval_resamples_prompts_and_is_wider_than_fixed_prompts():
    from salsa.evaluation.stats import two_level_interval, within_prompt_interval

    rng = np.random.default_rng(0)
    prompt_means = rng.normal(0, 1, size=(40, 1))  # prompts differ much more than samples of one prompt
    matrix = prompt_means + rng.normal(0, 0.1, size=(40, 8))
    two = two_level_interval(matrix, 2000, seed=1)["ci"]
    fixed = within_prompt_interval(matrix, 2000, seed=1)["ci"]
    # Resampling prompts: about 1.96 * sd(prompt means) / sqrt(40) on each side; fixed prompts: far narrower.
    expected = 1.96 * matrix.mean(1).std() / np.sqrt(40)
    assert (two[1] - two[0]) / 2 == pytest.approx(expected, rel=0.15)
    assert (fixed[1] - fixed[0]) < (two[1] - two[0]) / 5


def test_factorial_effects_by_hand():
    from salsa.evaluation.stats import factorial_effects

    rng = np.random.default_rng(0)
    noise = lambda seeds: rng.normal(0, 0.01, size=(seeds, 30))  # noqa: E731
    # The soup as reference adds 0.2, the soup as init nothing; no interaction. Cells have 3 or 5 seeds.
    cells = {("soup", "soup"): 0.7 + noise(5), ("soup", "sft"): 0.5 + noise(3),
             ("sft", "soup"): 0.7 + noise(3), ("sft", "sft"): 0.5 + noise(5)}  # fmt: skip
    effects = factorial_effects(cells, num_samples=500)
    assert effects["reference"]["mean"] == pytest.approx(0.2, abs=0.01)
    assert effects["init"]["mean"] == pytest.approx(0.0, abs=0.01)
    assert effects["reference"]["ci"][0] > 0.15 and effects["init"]["ci"][0] < 0 < effects["init"]["ci"][1]
    assert effects["interaction"]["mean"] == pytest.approx(0.0, abs=0.02)
