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
    resampled_means,
    score_at_kl,
    win_tie_loss,
    within_prompt_interval,
)
from salsa.policy import sequence_kl
from salsa.report import verdict


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
    resamples, weights = bootstrap_resamples(np.arange(6).reshape(2, 3), num_samples=50, seed=0)
    assert resamples.shape == (50, 2, 3) and (weights == 1).all()  # every prompt its own cluster: no padding
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
    draws = resampled_means(*bootstrap_resamples(a - b, 1000, 3))
    assert (low, high) == pytest.approx(tuple(np.percentile(draws, [2.5, 97.5])))


def test_outcomes_and_differences_are_resampled_by_one_draw(monkeypatch):
    # The interval of the win rate and that of the mean difference must come from the same resampled prompts
    # (and seeds); two draws, even with one seed each, would pair a resample's wins with another's differences.
    import salsa.evaluation.stats as stats

    calls = []
    real = stats.bootstrap_resamples

    def recording(matrix, num_samples, seed, clusters):
        calls.append(np.asarray(matrix).shape)
        return real(matrix, num_samples, seed, clusters)

    monkeypatch.setattr(stats, "bootstrap_resamples", recording)
    stats.compare(np.array([[0.9, 0.2, 0.5]]), np.array([[0.1, 0.4, 0.5]]), num_samples=200)
    assert calls == [(1, 3, 4)]  # once, with win, tie, loss and differences stacked


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


def test_the_verdict_sentence_is_the_rules_not_the_win_rates():
    # A win rate whose interval lies above 50% on a comparison the rule leaves unresolved: the sentence says
    # "unresolved" and why, and gives the win rate only as a description.
    comparison = {"a": "salsa", "b": "ppo", "split": "in_distribution", "judge": "gold", "n": 96, "win_rate": 0.7,
                  "ci": {"win_rate": (0.6, 0.8)}, "claim": "unresolved",
                  "claim_reason": "2 seeds, fewer than the 5"}  # fmt: skip
    sentence = verdict(comparison, 0.95)
    assert sentence.startswith("salsa beats ppo (in-distribution prompts, gold judge): **unresolved** by the rule")
    assert (
        "rule fixed in advance: 2 seeds, fewer than the 5. As a description: win rate 70.0%, 95% CI [60.0%, 80.0%]"
        in sentence
    )
    assert "beat ppo on this run" not in sentence


def test_generation_logprobs_equal_a_forward_pass(tokenizer, tiny_model_dir):
    from salsa.generation import generate
    from salsa.models import load_causal_lm
    from salsa.policy import response_forward

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
                rows.append({"member": member, "index": index, "prompt": f"p{index}", "sample": sample, "gold": gold,
                             **kls})  # fmt: skip
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
    # MDE: the noncentral t's answer for 2 degrees of freedom, 3.2640 sd (80% power of the two-sided 5% t-test at
    # 3 seeds; test_detectable_effect_is_the_noncentral_t_answer derives such values by hand).
    assert result["mde"] == pytest.approx(3.2640 * np.std([0.4, 0.2, 0.4], ddof=1), rel=1e-4)
    # Mixed signs: half of the flips are at least as extreme.
    mixed = seed_level_test(np.array([[1.0], [-1.0]]), np.zeros((2, 1)))
    assert mixed["permutation_p"] == 1.0 and mixed["mean"] == 0.0
    assert seed_level_test(np.ones((1, 4)), np.zeros((1, 4)))["t_p"] is None  # one seed: no test


@pytest.mark.parametrize(
    ("interval", "t_p", "mean", "expected", "reason"),
    [((0.01, 0.2), 0.01, 0.1, "supported", "p = 0.010 < 0.05, both above 0"),
     ((0.01, 0.2), 0.2, 0.1, "unresolved", "p = 0.200: p >= 0.05"),
     ((-0.05, 0.2), 0.01, 0.1, "unresolved", "the interval includes 0"),
     ((-0.05, 0.2), 0.2, 0.1, "unresolved", "the interval includes 0 and p >= 0.05"),
     ((-0.2, 0.05), 0.01, -0.1, "unresolved", "the interval includes 0"),
     ((0.01, 0.2), 0.01, -0.1, "unresolved", "point opposite ways"),
     ((-0.2, -0.01), 0.01, -0.1, "contradicted", "p = 0.010 < 0.05, both below 0")],
)  # fmt: skip
def test_claim_verdict_follows_the_rule(interval, t_p, mean, expected, reason):
    from salsa.evaluation.stats import claim_verdict

    verdict_, why = claim_verdict(interval, {"seeds": 5, "t_p": t_p, "mean": mean}, min_seeds=5)
    assert verdict_ == expected and why.endswith(reason) and "over 5 seeds" in why
    # Claimed the other way round, support and contradiction swap.
    mirrored = {"supported": "contradicted", "contradicted": "supported"}.get(expected, expected)
    assert claim_verdict(interval, {"seeds": 5, "t_p": t_p, "mean": mean}, 5, direction=-1)[0] == mirrored


def test_two_seeds_are_never_supported_however_small_their_p():
    from salsa.evaluation.stats import claim_verdict, seed_level_test

    # Two seeds that agree closely: the t-test with one degree of freedom gives p < 0.05 and the bootstrap interval
    # excludes 0, which the rule alone would call supported; the design pre-registered 5 seeds.
    a = np.array([[0.50, 0.52, 0.48], [0.51, 0.53, 0.49]])
    b = np.array([[0.10, 0.11, 0.09], [0.10, 0.12, 0.09]])
    test = seed_level_test(a, b)
    result = compare(a, b, num_samples=500)
    assert test["t_p"] < 0.05 and result["ci"]["mean_difference"][0] > 0
    assert claim_verdict(result["ci"]["mean_difference"], test, min_seeds=2)[0] == "supported"
    verdict_, reason = claim_verdict(result["ci"]["mean_difference"], test, min_seeds=5)
    assert verdict_ == "unresolved"
    assert reason == "2 seeds, fewer than the 5 the design pre-registers (eval.verdict_min_seeds)"
    # The same for a contradiction, and for one seed.
    assert claim_verdict((-0.5, -0.3), {**test, "mean": -0.4}, 5)[0] == "unresolved"
    assert claim_verdict(*(compare(a[:1], b[:1])["ci"]["mean_difference"], seed_level_test(a[:1], b[:1])), 5) == (
        "unresolved", "1 seed, fewer than the 5 the design pre-registers (eval.verdict_min_seeds)")  # fmt: skip


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
    effects = factorial_effects(cells, min_seeds=3, num_samples=500)
    assert effects["reference"]["mean"] == pytest.approx(0.2, abs=0.01)
    assert effects["init"]["mean"] == pytest.approx(0.0, abs=0.01)
    assert effects["reference"]["ci"][0] > 0.15 and effects["init"]["ci"][0] < 0 < effects["init"]["ci"][1]
    assert effects["interaction"]["mean"] == pytest.approx(0.0, abs=0.02)
    assert effects["reference"]["label"] == "helped" and effects["init"]["label"] == "unresolved"
    # A cell with fewer seeds than pre-registered leaves every label unresolved, whatever the tests say.
    short = factorial_effects(cells, min_seeds=5, num_samples=500)
    assert short["reference"]["label"] == "unresolved" and short["reference"]["p_holm"] < 0.05
    assert short["reference"]["reason"].startswith("3 seeds in the smallest cell, fewer than the 5")


def test_factorial_tests_are_pooled_variance_t_tests_holm_corrected_by_hand():
    from salsa.evaluation.stats import factorial_effects, holm

    # Per-seed means (one prompt each, so a seed's score is its mean): soup:soup, soup:sft, sft:soup, sft:sft.
    y = {("soup", "soup"): [0.9, 1.1, 1.0], ("soup", "sft"): [0.5, 0.7], ("sft", "soup"): [0.65, 0.55, 0.6],
         ("sft", "sft"): [0.3, 0.5]}  # fmt: skip
    cells = {key: np.array(values)[:, None] for key, values in y.items()}
    effects = factorial_effects(cells, min_seeds=2, num_samples=300)
    # By hand: cell means 1.0, 0.6, 0.6, 0.4; squared deviations 0.02 + 0.02 + 0.005 + 0.02 = 0.065 over
    # N - C = 10 - 4 = 6 degrees of freedom: s_p^2 = 0.065 / 6.
    sp2, df = 0.065 / 6, 6
    inverse_sizes = [1 / 3, 1 / 2, 1 / 3, 1 / 2]
    for name, weights, estimate in (("init", [0.5, 0.5, -0.5, -0.5], 0.3), ("reference", [0.5, -0.5, 0.5, -0.5], 0.3),
                                    ("interaction", [1, -1, -1, 1], 0.2)):  # fmt: skip
        se = np.sqrt(sp2 * sum(w**2 * k for w, k in zip(weights, inverse_sizes, strict=True)))
        assert effects[name]["mean"] == pytest.approx(estimate)
        assert effects[name]["df"] == df and effects[name]["t"] == pytest.approx(estimate / se)
    # init and reference: se = sqrt(0.065/6 * 0.25 * 5/3) = 0.06719, t = 4.4653; interaction: se = 0.1344, t = 1.4884.
    assert effects["init"]["t"] == pytest.approx(4.4653, abs=1e-3)
    assert effects["interaction"]["t"] == pytest.approx(1.4884, abs=1e-3)
    # Two-sided p from t(6): 0.004259 for t = 4.4653, 0.18721 for t = 1.4884. Holm over (0.004259, 0.004259, 0.18721):
    # 3 x 0.004259 = 0.01278, then max(that, 2 x 0.004259) = 0.01278, then max(that, 1 x 0.18721) = 0.18721.
    assert effects["init"]["p"] == pytest.approx(0.004259, rel=1e-3)
    assert effects["interaction"]["p"] == pytest.approx(0.18721, rel=1e-3)
    assert effects["init"]["p_holm"] == pytest.approx(0.012777, rel=1e-3)
    assert effects["reference"]["p_holm"] == pytest.approx(0.012777, rel=1e-3)
    assert effects["interaction"]["p_holm"] == pytest.approx(0.18721, rel=1e-3)
    assert [effects[k]["label"] for k in ("init", "reference", "interaction")] == ["helped", "helped", "unresolved"]
    assert effects["init"]["reason"] == "pooled t(6) = +4.47, Holm-adjusted p = 0.013 < 0.05"
    # Holm's step-down: sorted p 0.01, 0.02, 0.04 of 3 become 0.03, max(0.03, 0.04), max(0.04, 0.04); not monotone
    # input order, and capped at 1.
    assert holm([0.04, 0.01, 0.02]) == pytest.approx([0.04, 0.03, 0.04])
    assert holm([0.5, 0.6, 0.01]) == pytest.approx([1.0, 1.0, 0.03])
    # Two seeds per cell, each cell's pair 0.2 apart (s_p^2 = 0.08 / 4 = 0.02): init and reference +0.225 with
    # se = sqrt(0.02 * 0.25 * 4 / 2) = 0.1, t(4) = 2.25, p = 0.0876; interaction +0.35, se 0.2, t = 1.75, p = 0.155;
    # Holm: 3 x 0.0876 = 0.263 for all three. The bootstrap over 2 seeds per cell excludes 0 for every effect, but
    # the label is the corrected test's: unresolved.
    few = {key: np.array(values)[:, None] for key, values in {("soup", "soup"): [1.0, 1.2], ("soup", "sft"): [0.6, 0.8],
           ("sft", "soup"): [0.6, 0.8], ("sft", "sft"): [0.55, 0.75]}.items()}  # fmt: skip
    narrow = factorial_effects(few, min_seeds=2, num_samples=2000)
    assert narrow["init"]["t"] == pytest.approx(2.25) and narrow["interaction"]["t"] == pytest.approx(1.75)
    assert narrow["init"]["p_holm"] == pytest.approx(0.26294, rel=1e-3)
    assert all(e["ci"][0] > 0 and e["label"] == "unresolved" for e in narrow.values())
    # The sign of a significant effect: the soup as init hurting.
    flipped = {("soup" if i == "sft" else "sft", r): m for (i, r), m in cells.items()}
    hurt = factorial_effects(flipped, min_seeds=2, num_samples=300)
    assert hurt["init"]["label"] == "hurt" and hurt["reference"]["label"] == "helped"


def test_detectable_effect_is_the_noncentral_t_answer():
    from scipy import integrate
    from scipy import stats as scipy_stats

    from salsa.evaluation.stats import detectable_effect

    def power_by_hand(noncentrality, df, alpha=0.05):
        # T = (Z + delta) / sqrt(V / df), V ~ chi2(df): P(|T| > c) = E_V[P(Z > c sqrt(V/df) - delta) +
        # P(Z < -c sqrt(V/df) - delta)], integrated over V's density (no noncentral-t code involved).
        c = scipy_stats.t.ppf(1 - alpha / 2, df)

        def integrand(v):
            scale = c * np.sqrt(v / df)
            tails = scipy_stats.norm.sf(scale - noncentrality) + scipy_stats.norm.cdf(-scale - noncentrality)
            return tails * scipy_stats.chi2.pdf(v, df)

        return integrate.quad(integrand, 0, np.inf, limit=200)[0]

    for seeds in (2, 3, 5, 10):
        sd = 0.035  # the measured seed-to-seed spread of gold gains
        mde = detectable_effect(sd / np.sqrt(seeds), seeds - 1)
        assert power_by_hand(mde / (sd / np.sqrt(seeds)), seeds - 1) == pytest.approx(0.8, abs=1e-6)
        normal = (scipy_stats.norm.ppf(0.975) + scipy_stats.norm.ppf(0.8)) * sd / np.sqrt(seeds)
        assert mde > normal  # few seeds: the t's heavier tails need a larger effect
    # In sd units (se = sd / sqrt(S)): 5 paired seeds 1.682 sd, against the normal approximation's 1.253 sd;
    # 10 seeds 0.996 sd.
    assert detectable_effect(1 / np.sqrt(5), 4) == pytest.approx(1.6820, abs=2e-4)
    assert detectable_effect(1 / np.sqrt(10), 9) == pytest.approx(0.9960, abs=2e-4)
    # One degree of freedom (2 seeds): 11.55 sd, where scipy's lower-tail cdf alone would return NaN.
    assert detectable_effect(1 / np.sqrt(2), 1) == pytest.approx(11.5499, abs=1e-3)


def _old_prompt_bootstrap(matrix, num_samples, seed):
    """The bootstrap before clusters: seeds and single prompts drawn with replacement (each resample's mean)."""
    rng = np.random.default_rng(seed)
    rows = rng.integers(0, matrix.shape[0], size=(num_samples, matrix.shape[0]))
    cols = rng.integers(0, matrix.shape[1], size=(num_samples, matrix.shape[1]))
    return matrix[rows[:, :, None], cols[:, None, :]].reshape(num_samples, -1).mean(1)


def _subject_scores(rng, seeds=3, subjects=8, per_subject=6):
    """[seeds, prompts] scores whose prompts come in subjects of near-paraphrases: a subject's prompts share most
    of their score (subject means 0..7), so they are one observation, not six."""
    subject_means = np.repeat(np.arange(subjects, dtype=float), per_subject)
    scores = subject_means + rng.normal(0, 0.1, size=(seeds, subjects * per_subject))
    labels = [f"subject {i // per_subject}" for i in range(subjects * per_subject)]
    return scores, labels


def test_the_cluster_bootstrap_widens_the_interval_when_a_subjects_prompts_agree():
    from salsa.evaluation.stats import two_level_interval

    rng = np.random.default_rng(0)
    a, labels = _subject_scores(rng)
    b = np.zeros_like(a)
    prompts = compare(a, b, num_samples=2000, seed=1)["ci"]["mean_difference"]
    subjects = compare(a, b, num_samples=2000, seed=1, clusters=labels)["ci"]["mean_difference"]
    # 48 prompts or 8 subjects with the same spread of means: the interval is about sqrt(48 / 8) = 2.45 times wider.
    ratio = (subjects[1] - subjects[0]) / (prompts[1] - prompts[0])
    assert 2.0 < ratio < 3.0
    # By hand: the subject means' sd (ddof 0) is sqrt(5.25) = 2.29, so the interval is about +-1.96 * 2.29 / sqrt(8).
    assert (subjects[1] - subjects[0]) / 2 == pytest.approx(1.96 * np.sqrt(5.25) / np.sqrt(8), rel=0.15)
    # The landscape's two-level interval (prompts, then each drawn prompt's samples) widens the same way.
    matrix = a.T  # [prompts, samples]
    wide, narrow = (two_level_interval(matrix, 2000, seed=1, clusters=c)["ci"] for c in (labels, None))
    assert 2.0 < (wide[1] - wide[0]) / (narrow[1] - narrow[0]) < 3.0


def test_with_a_cluster_per_prompt_the_bootstrap_is_the_prompt_bootstrap_draw_for_draw():
    from salsa.evaluation.stats import contrast_with_interval, percentile_interval, two_level_interval

    rng = np.random.default_rng(3)
    a, b = rng.normal(size=(3, 20)), rng.normal(size=(3, 20))
    singletons = [f"prompt {i}" for i in range(20)]  # labels in any order: the clusters are numbered as they come
    old = percentile_interval(_old_prompt_bootstrap(a - b, 500, 7))
    for clusters in (None, singletons):
        assert compare(a, b, num_samples=500, seed=7, clusters=clusters)["ci"]["mean_difference"] == pytest.approx(old)
        assert mean_with_interval(a, 500, seed=7, clusters=clusters)["ci"] == pytest.approx(
            percentile_interval(_old_prompt_bootstrap(a, 500, 7))
        )
    # The two-level interval and the 2 x 2's contrast, against their own code before clusters.
    old_rng = np.random.default_rng(5)
    matrix = a.T  # [20 prompts, 3 samples]
    picked = old_rng.integers(0, 20, size=(400, 20))
    picks = old_rng.integers(0, 3, size=(400, 20, 3))
    old_two = percentile_interval(np.take_along_axis(matrix[picked], picks, axis=2).mean((1, 2)))
    assert two_level_interval(matrix, 400, seed=5, clusters=singletons)["ci"] == pytest.approx(old_two)
    cells, weights = [a, b, a[:2]], [1.0, -0.5, -0.5]
    old_rng = np.random.default_rng(9)
    prompts, total = old_rng.integers(0, 20, size=(400, 20)), np.zeros(400)
    for cell, weight in zip(cells, weights, strict=True):
        seeds = old_rng.integers(0, len(cell), size=(400, len(cell)))
        total += weight * cell[seeds[:, :, None], prompts[:, None, :]].mean((1, 2))
    contrast = contrast_with_interval(cells, weights, 400, seed=9, clusters=singletons)["ci"]
    assert contrast == pytest.approx(percentile_interval(total))


def test_unequal_clusters_are_drawn_whole_and_weighted_by_their_prompts():
    from salsa.evaluation.stats import cluster_draws

    # Cluster "x" holds prompts 0 and 1 (score 0), cluster "y" prompt 2 (score 3). Two clusters drawn: {x, x} has
    # mean 0, {y, y} 3, {x, y} (0 + 0 + 3) / 3 = 1; the padding of y's second slot counts for nothing.
    indices, weights = cluster_draws(["x", "x", "y"], 3, 400, np.random.default_rng(0))
    assert indices.shape == weights.shape == (400, 4)
    means = resampled_means(*bootstrap_resamples(np.array([[0.0, 0.0, 3.0]]), 400, 0, clusters=["x", "x", "y"]))
    assert set(np.round(means, 12)) == {0.0, 1.0, 3.0}
    assert (np.round(means, 12) == 1.0).mean() == pytest.approx(0.5, abs=0.08)  # {x, y} or {y, x}: half the draws
    with pytest.raises(ValueError, match="2 cluster labels for 3 prompts"):
        cluster_draws(["x", "y"], 3, 10, np.random.default_rng(0))


def test_prompt_clusters_are_the_built_in_subjects_or_single_prompts():
    from salsa.evaluation.summary import prompt_clusters
    from salsa.tasks.reviews import prompts

    rows = [{"index": i, "prompt": p["prompt"]} for i, p in enumerate(prompts("eval"))]
    clusters = prompt_clusters(rows, "reviews")
    assert len(clusters) == 48 and len(set(clusters)) == 8
    assert clusters[:6] == ["a pair of headphones"] * 6  # both sentiments, all three paraphrases
    # A user's own prompts: each its own cluster, with or without the task's gold judge.
    own = [{"index": 1, "prompt": "Tell me a joke."}, {"index": 0, "prompt": "Write a poem."}]
    assert prompt_clusters(own, "reviews") == ["#0", "#1"] == prompt_clusters(own, None)
    assert len(set(prompt_clusters(rows, None))) == 48


def test_a_standard_sets_prompts_are_never_clustered_by_the_tasks_subjects():
    """With the built-in task's prompts in-distribution and a standard set out of distribution (or MT-Bench's
    turns), the set's prompts are each their own cluster: a task keyword inside one is no subject."""
    from salsa.config import EvalConfig
    from salsa.evaluation.summary import cluster_task

    config = EvalConfig(policies={"a": ["a"]}, task="reviews", prompts="prompts_eval.jsonl", ood_prompts="ifeval")
    assert cluster_task(config, "in_distribution") == "reviews"
    assert cluster_task(config, "out_of_distribution") is None
    config = EvalConfig(
        policies={"a": ["a"]}, task="reviews", prompts="mt-bench", ood_prompts="prompts_ood.jsonl", mt_bench_turns=2
    )
    assert [cluster_task(config, s) for s in ("in_distribution", "in_distribution_turn_2")] == [None, None]
    assert cluster_task(config, "out_of_distribution") == "reviews"
    # In the summary: IFEval-like prompts that happen to hold a subject's keyword are still one cluster each.
    from salsa.evaluation.summary import summarise

    config = EvalConfig(policies={"a": ["a"], "b": ["b"]}, task="reviews", ood_prompts="ifeval", bootstrap_samples=50)
    prompts = {"in_distribution": ["Write a one-sentence positive review of a pair of headphones."] * 2,
               "out_of_distribution": ["Is a budget hotel worth it?", "Name a budget hotel chain."]}  # fmt: skip
    samples = [{"policy": p, "seed_index": 0, "split": split, "index": i, "sample": 0, "prompt": prompt,
                "response": "ok", "reward": float(i), "length": 2}
               for p in ("a", "b") for split, texts in prompts.items() for i, prompt in enumerate(texts)]  # fmt: skip
    summary = summarise(config, samples, [], ["reward"], list(prompts))
    assert summary["settings"]["bootstrap_clusters"] == {"in_distribution": 1, "out_of_distribution": 2}


def _two_seed_rows(gain: float) -> list[dict]:
    """salsa and ppo, 2 RL seeds each, on the built-in task's 48 evaluation prompts: salsa scores `gain` above ppo,
    plus 0.03 per subject (0 to 7: the gain differs by subject) and 0.01 more with seed 1 (per-seed mean differences
    `gain` + 0.105 and + 0.115: t(1) = 62, p = 0.01)."""
    from salsa.tasks.reviews import prompts

    rows = []
    for index, entry in enumerate(prompts("eval")):
        for seed in (0, 1):
            for policy, level in (("salsa", 0.3 + gain), ("ppo", 0.3)):
                own = 0.01 * seed + 0.03 * (index // 6) if policy == "salsa" else 0.0  # by seed and subject
                gold = level + own + 0.02 * (index % 5)
                rows.append({"policy": policy, "seed_index": seed, "split": "in_distribution", "index": index,
                             "sample": 0, "prompt": entry["prompt"], "gold": gold})  # fmt: skip
    return rows


def test_a_two_seed_run_is_unresolved_by_the_rule_and_its_reason_says_why():
    from salsa.config import EvalConfig
    from salsa.evaluation.summary import _comparisons, prompt_clusters

    rows = _two_seed_rows(0.2)
    stats = {"num_samples": 300, "confidence": 0.95, "seed": 0}
    config = EvalConfig(policies={"salsa": ["s0", "s1"], "ppo": ["p0", "p1"]}, comparisons=["salsa:ppo"])
    (comparison,) = _comparisons(config, rows, ["gold"], ["in_distribution"], stats)
    # The seeds agree: a t-test with 1 degree of freedom gives p < 0.05 and the interval lies above 0, but the design
    # pre-registered 5 seeds (the default of eval.verdict_min_seeds).
    assert comparison["seed_test"]["t_p"] < 0.05 and comparison["ci"]["mean_difference"][0] > 0
    assert comparison["claim"] == "unresolved"
    assert comparison["claim_reason"] == "2 seeds, fewer than the 5 the design pre-registers (eval.verdict_min_seeds)"
    # Pre-registering 2 seeds lets the same numbers decide.
    config.verdict_min_seeds = 2
    (decided,) = _comparisons(config, rows, ["gold"], ["in_distribution"], stats)
    assert decided["claim"] == "supported" and "paired t-test over 2 seeds" in decided["claim_reason"]
    # The interval drew the 8 subjects, not the 48 prompts.
    salsa = np.array([[r["gold"] for r in rows if (r["policy"], r["seed_index"]) == ("salsa", s)] for s in (0, 1)])
    ppo = np.array([[r["gold"] for r in rows if (r["policy"], r["seed_index"]) == ("ppo", s)] for s in (0, 1)])
    clusters = prompt_clusters([r for r in rows if r["policy"] == "salsa" and r["seed_index"] == 0], "reviews")
    expected = compare(salsa, ppo, num_samples=300, seed=0, clusters=clusters)["ci"]["mean_difference"]
    assert comparison["ci"]["mean_difference"] == pytest.approx(expected)
    by_prompt = compare(salsa, ppo, num_samples=300, seed=0)["ci"]["mean_difference"]
    assert expected[1] - expected[0] > 1.5 * (by_prompt[1] - by_prompt[0])


def test_the_report_labels_each_effect_of_the_two_by_two_by_its_corrected_test():
    from salsa.report import factorial_text

    effect = {"mean": 0.12, "ci": (0.02, 0.22), "mde": 0.09, "label": "unresolved",
              "reason": "pooled t(16) = +2.10, Holm-adjusted p = 0.104 >= 0.05"}  # fmt: skip
    helped = {**effect, "label": "helped", "reason": "pooled t(16) = +4.00, Holm-adjusted p = 0.003 < 0.05"}
    entry = {"kl_coef": 0.05, "effects": {"gold": {"init": effect, "reference": helped, "interaction": effect}}}
    text = factorial_text(entry, "gold")
    # An interval above 0 does not make "helped": the corrected test decides.
    assert "starting from the soup: +0.120 [+0.020, +0.220], MDE 0.090 (unresolved: pooled t(16) = +2.10" in text
    assert "anchoring to the soup: +0.120 [+0.020, +0.220], MDE 0.090 (helped: pooled t(16) = +4.00" in text
    assert "Holm-corrected over the three" in text


def test_only_an_rl_runs_config_makes_a_policy_an_arm_of_the_two_by_two(tmp_path):
    """The SFT models' folder holds a config.yaml too (the sft stage's): read as an RL config it is RL's defaults, an
    sft:sft arm at the default KL coefficient, which took the 2 x 2's sft:sft cell from PPO."""
    from salsa.evaluation.summary import _arm_of

    (tmp_path / "sft" / "sft-0").mkdir(parents=True)
    (tmp_path / "sft" / "config.yaml").write_text("sft:\n  num_models: 2\n")
    (tmp_path / "sft" / "salsa_complete.json").write_text(json.dumps({"stage": "sft"}))
    assert _arm_of([str(tmp_path / "sft" / "sft-0")]) is None
    run = tmp_path / "rl" / "ppo" / "seed-0"
    run.mkdir(parents=True)
    (run / "config.yaml").write_text(f"rl:\n  init: {tmp_path / 'sft' / 'sft-0'}\n  reference: sft\n  kl_coef: 0.1\n")
    (run / "salsa_complete.json").write_text(json.dumps({"stage": "rl"}))
    assert _arm_of([str(run / "final")]) == ("sft", "sft", 0.1)


@pytest.mark.parametrize("kept", [True, False])
def test_a_reference_reads_each_prompt_batch_once_for_every_model_measured_against_it(
    tokenizer, tiny_model_dir, tmp_path, monkeypatch, kept
):
    """A job measures its policy's and its snapshots' KL to the SFT model on the same prompts: the SFT model reads
    each batch of prompts once (kept within its budget, read again past it), and every KL is what a fresh read
    gives (the kept keys and values are not extended by the first model's responses)."""
    from salsa.config import EvalConfig
    from salsa.evaluation import judging
    from salsa.models import load_causal_lm, save_tiny_model

    reference = load_causal_lm(str(tiny_model_dir)).eval()
    models = [load_causal_lm(str(save_tiny_model(tmp_path / f"m{s}", tokenizer, seed=s))).eval() for s in (1, 2)]
    config = EvalConfig(policies={"a": ["a"]}, reward_model=None, max_new_tokens=5, batch_size=3)
    judges = judging.Judges(None, None, torch.device("cpu"))
    answers = [judging.draw_answers(m, tokenizer, PROMPTS[:5], "in_distribution", config, judges) for m in models]
    fresh = [judging.kl_to(a, reference, config) for a in answers]
    reads, real = [], judging.prefill
    monkeypatch.setattr(judging, "prefill", lambda *a, **k: reads.append(1) or real(*a, **k))
    if not kept:  # past the budget (the reference's own size): read every time
        monkeypatch.setattr(judging, "_bytes", lambda state: 1 << 60)
    states = judging.PromptStates()
    measured = [judging.kl_to(a, reference, config, states) for a in answers]
    assert len(reads) == (2 if kept else 4)  # 5 prompts in batches of 3: 2 batches, for each of 2 models
    for got, want in zip(measured, fresh, strict=True):
        np.testing.assert_allclose(got, want, atol=1e-4)
    assert len(set(fresh[0]) | set(fresh[1])) > 2  # the two models' answers differ, so a stale cache would show


def test_a_model_that_several_units_read_answers_once_and_each_kl_is_computed_once(
    tokenizer, tiny_model_dir, tmp_path, monkeypatch
):
    """The SFT policy, the landscape's endpoints and the soup's health read the same models (a study's base job
    draws all three): each model directory answers each split once and each KL is computed once, and every unit's
    rows are those it draws in a process of its own."""
    import dataclasses

    from salsa.config import EvalConfig
    from salsa.evaluate import draw_units, plan_units
    from salsa.evaluation import judging
    from salsa.models import save_tiny_model
    from salsa.soup import build_soup

    sft1 = save_tiny_model(tmp_path / "sft-1", tokenizer, seed=1)
    soup = build_soup([tiny_model_dir, sft1], tmp_path / "soup")
    config = EvalConfig(
        policies={"sft": [str(tiny_model_dir)]}, reward_model=None, sft_model=str(tiny_model_dir),
        soup_model=str(soup), landscape_models=[str(tiny_model_dir), str(sft1)], landscape_alphas=[0.0, 0.5, 1.0],
        max_new_tokens=4, batch_size=16,
    )  # fmt: skip
    inputs = {"prompts": PROMPTS, "ood_prompts": PROMPTS[:4]}
    units = plan_units(config)
    assert [u.kind for u in units] == ["policy", "landscape", "health"]
    counts = {"generate": 0, "response_forward": 0}
    for name in counts:
        real = getattr(judging, name)

        def counted(*args, _name=name, _real=real, **kwargs):
            counts[_name] += 1
            return _real(*args, **kwargs)

        monkeypatch.setattr(judging, name, counted)
    rows = draw_units(config, inputs, units, show_progress=False)
    # Answers: SFT-0 on both splits, SFT-1 (the landscape's alpha = 1 and the second ingredient), the soup (alpha =
    # 0.5: the soup of the two, which the in-memory merge reproduces bit for bit, and the third member); each split
    # one batch. KL: SFT-0 to the soup (its policy row and its health row), and between every other ordered pair of
    # the soup's members.
    assert counts == {"generate": 4, "response_forward": 6}
    alone = [row for unit in units for row in draw_units(config, inputs, [unit], show_progress=False)]
    assert rows == alone
    health = {m: [r for r in rows if r.get("member") == m] for m in ("ingredient-0", "ingredient-1", "soup")}
    sft_rows = [r for r in rows if r.get("policy") == "sft" and r["split"] == "in_distribution"]
    assert [r["response"] for r in health["ingredient-0"]] == [r["response"] for r in sft_rows]
    assert [r["kl_soup"] for r in health["ingredient-0"]] == [r["kl_soup"] for r in sft_rows]
    for member, alpha in (("ingredient-1", 1.0), ("soup", 0.5)):
        assert [r["response"] for r in health[member]] == [r["response"] for r in rows if r.get("alpha") == alpha]
    # Without the soup on disk the landscape builds the alpha = 0.5 point in memory: the same answers.
    merged = draw_units(dataclasses.replace(config, soup_model=None), inputs, [units[1]], show_progress=False)
    assert [r for r in merged if r["alpha"] == 0.5] == [r for r in rows if r.get("alpha") == 0.5]
    assert all(r["kl_ingredient-1"] == 0.0 for r in health["ingredient-1"])  # to itself
    assert np.mean([r["kl_ingredient-0"] for r in health["ingredient-1"]]) > 0  # k1 per response may be negative
