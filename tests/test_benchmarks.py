"""The benchmark scripts' own arithmetic (their runs are measured, not tested: docs/benchmarks.md)."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import pytest

REPO = Path(__file__).parent.parent


def load_script(name: str):
    spec = importlib.util.spec_from_file_location(name, REPO / "benchmarks" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def write_evaluation(folder: Path, gold: dict[str, list[list[float]]]) -> Path:
    """An eval/samples.jsonl as `salsa eval` writes it: per policy, per prompt, the gold of each response."""
    rows = [
        {"policy": policy, "seed_index": 0, "split": "in_distribution", "index": index, "sample": sample, "gold": score}
        for policy, prompts in gold.items()
        for index, scores in enumerate(prompts)
        for sample, score in enumerate(scores)
    ]
    (folder / "eval").mkdir(parents=True)
    (folder / "eval/samples.jsonl").write_text("".join(json.dumps(row) + "\n" for row in rows))
    return folder


def test_pooled_gold_gain_is_over_sft_or_over_the_runs_it_is_paired_against(tmp_path):
    rl_defaults = load_script("rl_defaults")
    # Two seeds, two prompts, two responses each; per-prompt means: rl .6/.8 and .7/.9, sft .5/.5, other rl .6/.6.
    runs = [
        write_evaluation(tmp_path / "a0", {"rl": [[0.5, 0.7], [0.8, 0.8]], "sft": [[0.4, 0.6], [0.5, 0.5]]}),
        write_evaluation(tmp_path / "a1", {"rl": [[0.7, 0.7], [1.0, 0.8]], "sft": [[0.5, 0.5], [0.5, 0.5]]}),
    ]
    others = [
        write_evaluation(tmp_path / "b0", {"rl": [[0.6, 0.6], [0.6, 0.6]], "sft": [[0.0, 0.0], [0.0, 0.0]]}),
        write_evaluation(tmp_path / "b1", {"rl": [[0.6, 0.6], [0.6, 0.6]], "sft": [[0.0, 0.0], [0.0, 0.0]]}),
    ]
    over_sft = rl_defaults.pooled(runs)
    assert over_sft["gold_difference"] == pytest.approx(0.25)  # mean of (.1, .3, .2, .4)
    assert over_sft["per_seed"] == pytest.approx([0.2, 0.3])
    assert over_sft["seeds"] == 2 and over_sft["prompts"] == 2

    over_others = rl_defaults.pooled(runs, against=others)
    assert over_others["gold_difference"] == pytest.approx(0.15)  # mean of (0, .2, .1, .3)
    assert over_others["per_seed"] == pytest.approx([0.1, 0.2])


def test_the_study_files_power_and_design_are_its_scripts_numbers_and_a_balanced_two_by_two():
    import re
    import statistics

    import yaml

    from salsa.pipeline import plan_run

    design = load_script("study_design")
    path = REPO / "examples" / "study_salsa_ppo_cpu.yaml"
    text = path.read_text()
    header = " ".join(line.lstrip("# ") for line in text.splitlines() if line.startswith("#"))
    config = yaml.safe_load(text)
    seeds = config["run"]["seeds"]
    sd = statistics.stdev(design.MEASURED_GAINS)
    assert f"+0.102, +0.132, +0.171, sd {sd:.4f}" in header
    # The fewest seeds, at least 5, whose headline MDE is at most 0.07 gold, and every verdict needs them all.
    assert seeds == design.seeds_needed(sd, 0.07) == config["eval"]["verdict_min_seeds"] >= 5
    mdes = design.contrast_mdes(sd, seeds)
    assert mdes["headline"] <= 0.07 < design.contrast_mdes(sd, seeds - 1)["headline"]
    stated = (
        f"Minimum detectable effects in gold with {seeds} seeds per cell: headline {mdes['headline']:.3f}, "
        f"init {mdes['init']:.3f}, reference {mdes['reference']:.3f}, interaction {mdes['interaction']:.3f}"
    )
    assert stated in header
    assert f"{seeds - 1} seeds would give a headline MDE of {design.contrast_mdes(sd, seeds - 1)['headline']:.4f}" in (
        header
    )
    assert f"5 gave {design.contrast_mdes(sd, 5)['headline']:.3f}" in header
    assert f"MDE {mdes['paired_in_sd']:.3f} sd of its per-seed differences" in header
    assert f"{4 * seeds} RL jobs (4 cells x {seeds} seeds)" in header
    assert re.search(rf"until all {4 * seeds + 1} jobs are in", header)
    # The balanced 2 x 2 at one KL coefficient, with one reward normalisation for every run.
    plan = plan_run(path)
    starts = {}
    for name, rl in plan.rl.items():
        kinds = ("soup" if rl.init.endswith("soup") else "sft", rl.reference)
        starts.setdefault(kinds, []).append(name)
    assert sorted(starts) == [("sft", "sft"), ("sft", "soup"), ("soup", "sft"), ("soup", "soup")]
    assert all(len(runs) == seeds for runs in starts.values())
    assert {rl.kl_coef for rl in plan.rl.values()} == {0.05} and plan.run.kl_coefs is None
    assert {rl.reward_normalisation for rl in plan.rl.values()} == {"fixed"} and plan.normalisation is not None
    assert {(rl.snapshot_steps, rl.save_steps) for rl in plan.rl.values()} == {(2, 2)}
    assert plan.eval.comparisons[0] == "salsa:ppo"


def test_the_middle_third_of_a_run_and_its_mean_by_hand():
    rl_defaults = load_script("rl_defaults")
    # T = 10: less the first and last 3 steps, steps 3-6 (four of them, not three).
    assert list(rl_defaults.middle_third(10)) == [3, 4, 5, 6]
    explained = [0.0, 0.0, 0.05, 0.1, 0.2, 0.1, 0.3, 0.2, 0.25, 0.3]
    assert rl_defaults.middle_third_mean(explained) == pytest.approx((0.1 + 0.2 + 0.1 + 0.3) / 4)  # 0.175
    # T = 11: steps 3-7; T = 24: steps 8-15; a run too short to trim is its own middle.
    assert list(rl_defaults.middle_third(11)) == [3, 4, 5, 6, 7]
    assert rl_defaults.middle_third_mean([float(i) for i in range(11)]) == pytest.approx(5.0)
    assert list(rl_defaults.middle_third(24)) == list(range(8, 16))
    assert rl_defaults.middle_third_mean([0.4, 0.6]) == pytest.approx(0.5)
