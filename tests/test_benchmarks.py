"""The benchmark scripts' own arithmetic (their runs are measured, not tested: docs/benchmarks.md)."""

from __future__ import annotations

import gzip
import hashlib
import importlib.util
import json
import shutil
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).parent.parent


def load_script(name: str):
    spec = importlib.util.spec_from_file_location(name, REPO / "benchmarks" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module  # a dataclass looks its module up there
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


def test_the_extension_rules_seeds_and_the_level_its_test_needs_are_its_scripts_numbers():
    import math

    import numpy as np

    design = load_script("study_design")
    extension = load_script("study_extension_alpha")
    limits = extension.sd_thresholds(0.07, 7, 12)
    for n, limit in limits.items():  # where the rule's n steps past n, as seeds_needed has it
        assert design.seeds_needed(0.999 * limit / math.sqrt(2), 0.07, 7) <= n
        assert design.seeds_needed(1.001 * limit / math.sqrt(2), 0.07, 7) > n
    assert list(extension.rule_seeds(np.array([0.05, 0.0692, 0.2]), 0.07, 7, 12)) == [7, 10, 12]  # 0.0692: the study's
    # Under the null, at the study's spread: the plain t-test is above its 0.05; at 0.04 it is not (MC se 0.0012).
    levels = extension.type_one_error(0.069, [0.05, 0.04], 40_000, 0.07, 7, 12)
    assert levels[0.05] > 0.054 and levels[0.04] < 0.051, levels
    doc = (REPO / "docs" / "study-extension-salsa-vs-ppo-cpu.md").read_text()
    assert f"at sd_7 {limits[7]:.3f} or less" in doc and f"above {limits[11]:.4f}, n is capped at 12" in doc


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


def slowly_prepared(trainer, seconds: float):
    """A trainer that prepares `seconds` longer (inside its budget: the clock runs from before the call)."""
    import time

    def slow(*args, **kwargs):
        time.sleep(seconds)
        return trainer(*args, **kwargs)

    return slow


def flattened(tree, path: str = "") -> dict:
    """A JSON tree as {path: leaf}, so that pytest.approx compares its numbers within float rounding."""
    if isinstance(tree, dict):
        return {k: v for key, value in tree.items() for k, v in flattened(value, f"{path}/{key}").items()}
    if isinstance(tree, list):
        return {k: v for i, value in enumerate(tree) for k, v in flattened(value, f"{path}/{i}").items()}
    return {path: tree}


def test_the_trl_comparison_in_the_docs_is_what_its_committed_archive_computes(tmp_path):
    """docs/benchmarks.md's TRL tables are the report of benchmarks/results/rl-quality, whose tables are recomputed
    here from its archived sample rows alone (no model)."""
    import argparse

    rl_quality = load_script("rl_quality")
    archive = tmp_path / "archive"
    shutil.copytree(REPO / "benchmarks/results/rl-quality", archive)
    grid = json.loads((archive / "lr-grid.json").read_text())
    args = argparse.Namespace(
        run=None, out=tmp_path / "no-policies", archive=archive, trainers=list(grid["chosen"]), grid=grid["grid"],
        grid_minutes=grid["minutes"], reward="gold",
    )  # fmt: skip
    assert flattened(rl_quality.lr_grid(args)) == pytest.approx(flattened(grid))
    for reward in ("gold", "learned"):
        if (archive / f"seeds-{reward}.json").exists():
            summary = json.loads((archive / f"seeds-{reward}.json").read_text())
            seeds = max(len(row["seed"]) for row in summary["trainers"].values())
            args.reward, args.seeds, args.minutes = reward, seeds, summary["minutes"]
            assert flattened(rl_quality.seeds_phase(args)) == pytest.approx(flattened(summary))
    assert not args.out.exists()  # nothing trained or sampled
    assert rl_quality.report(archive) in (REPO / "docs/benchmarks.md").read_text()


def test_rl_quality_picks_each_rate_on_dev_trains_seeds_within_budget_and_tests_them_as_by_hand(
    tmp_path, tokenizer, monkeypatch
):
    import itertools

    import numpy as np
    import torch
    from safetensors.torch import load_file
    from scipy import stats

    from salsa.models import save_tiny_model
    from salsa.tasks import reviews

    rl_quality = load_script("rl_quality")
    # The scale of a test on a busy CPU: 4-token responses, 4 responses a step, 4 to measure salsa's normalisation.
    small = {"prompts_per_step": 2, "samples_per_prompt": 2, "minibatch_size": 4, "normalisation_samples": 4}
    monkeypatch.setattr(rl_quality, "SALSA_SHAPES", {"ppo": {**small, "value_warmup_steps": 0}, "grpo": small})
    monkeypatch.setattr(rl_quality, "TRL_SHAPE", {"num_generations": 2, "per_device_train_batch_size": 4})
    monkeypatch.setattr(rl_quality, "RESPONSE_TOKENS", 4)
    # A tiny random model's 4 tokens are all the same to the real gold judge (-1); a stand-in that tells them apart.
    monkeypatch.setattr(reviews, "gold_score", lambda prompt, response: len(response) / 10)
    run, out, archive = tmp_path / "run", tmp_path / "out", tmp_path / "archive"
    splits = {
        "train": reviews.prompts("train")[:16],
        "dev": reviews.prompts("dev")[:3],
        "eval": reviews.prompts("eval")[:3],
    }
    (run / "data").mkdir(parents=True)
    for split, prompts in splits.items():
        (run / f"data/prompts_{split}.jsonl").write_text("".join(json.dumps(p) + "\n" for p in prompts))
    save_tiny_model(run / "sft/sft-0", tokenizer, seed=0, initializer_range=1.0)  # peaked: it learns in a few steps
    trainers = ["salsa-ppo", "salsa-grpo"] + (["trl-grpo"] if importlib.util.find_spec("trl") else [])
    common = ["--run", str(run), "--out", str(out), "--archive", str(archive), "--trainers", ",".join(trainers)]
    # A budget spent before the first step: every run takes the one step that each trainer always takes.
    rl_quality.main([*common, "--phase", "lr-grid", "--grid", "3e-3,3e-2", "--grid-minutes", "0.001"])

    # Each trainer's rate is the argmax of its gold gain over SFT on the dev prompts (never the evaluation prompts).
    grid = json.loads((archive / "lr-grid.json").read_text())

    def archived(name):  # a run's (or SFT's) archived sample rows
        with gzip.open(archive / f"{name}.jsonl.gz", "rt") as f:
            return [json.loads(line) for line in f]

    sft_dev = archived("sft-dev")
    # Every run records the model it started from; runs from two builds of the base would be said so.
    assert grid["bases"] == [hashlib.sha256((run / "sft/sft-0/model.safetensors").read_bytes()).hexdigest()[:12]]
    assert "2 builds of the base" in rl_quality.lr_table({**grid, "bases": ["0" * 12, "1" * 12]})
    assert "builds of the base" not in rl_quality.lr_table(grid)
    assert {r["prompt"] for r in sft_dev} == {p["prompt"] for p in splits["dev"]}

    def mean_gold(rows):
        return np.mean([r["gold"] for r in rows])

    for trainer in trainers:
        gains = {lr: mean_gold(archived(f"lr-grid/{trainer}-lr{lr:g}")) - mean_gold(sft_dev) for lr in (3e-3, 3e-2)}
        assert len(set(gains.values())) == 2  # no tie: the choice means something
        assert grid["chosen"][trainer]["learning_rate"] == max(gains, key=gains.get)
        assert grid["chosen"][trainer]["dev_gold_gain"] == pytest.approx(max(gains.values()))

    # 0.6 s of preparation that the trainers do not see, inside a 0.6 s budget: one step each, however fast the steps.
    for name in ("salsa_train", "trl_train"):
        monkeypatch.setattr(rl_quality, name, slowly_prepared(getattr(rl_quality, name), 0.6))
    rl_quality.main([*common, "--phase", "seeds", "--seeds", "2", "--minutes", "0.01"])
    summary = json.loads((archive / "seeds-gold.json").read_text())
    sft_eval = archived("sft-eval")
    assert {r["prompt"] for r in sft_eval} == {p["prompt"] for p in splits["eval"]}
    for trainer in trainers:
        row = summary["trainers"][trainer]
        assert row["learning_rate"] == grid["chosen"][trainer]["learning_rate"] and row["seed"] == [0, 1]
        # The budget runs from the trainer's entry: spent by the preparation, the first step was the last.
        records = [json.loads((archive / f"seeds-gold/{trainer}-seed{s}.json").read_text()) for s in (0, 1)]
        for record in records:
            assert record["budget_s"] == pytest.approx(0.6) and record["preparation_s"] >= 0.6
            assert record["steps"] == 1 and record["stopped_s"] > record["preparation_s"]
        # The seeds differ: each trained its own policy.
        policies = [json.loads((out / f"seeds-gold/{trainer}-seed{s}/trained.json").read_text()) for s in (0, 1)]
        weights = [load_file(Path(record["policy"]) / "model.safetensors") for record in policies]
        assert any(not torch.equal(weights[0][name], weights[1][name]) for name in weights[0])
        by_hand = [mean_gold(archived(f"seeds-gold/{trainer}-seed{s}")) - mean_gold(sft_eval) for s in (0, 1)]
        assert row["per_seed_gain"] == pytest.approx(by_hand)
        assert 0 <= row["kl_sft"] and row["per_seed_kl"] != [0.0, 0.0]

    # On another machine (the policies gone), both phases rerun from the archive alone: nothing trained or sampled,
    # the same tables.
    tables = {name: (archive / name).read_text() for name in ("lr-grid.json", "seeds-gold.json", "report.md")}
    shutil.rmtree(out)
    for name in ("train", "evaluate_policies"):
        monkeypatch.setattr(rl_quality, name, lambda *a, **k: pytest.fail("rerun from the archive trained or sampled"))
    rl_quality.main([*common, "--phase", "lr-grid", "--grid", "3e-3,3e-2", "--grid-minutes", "0.001"])
    rl_quality.main([*common, "--phase", "seeds", "--seeds", "2", "--minutes", "0.01"])
    assert {name: (archive / name).read_text() for name in tables} == tables
    if "trl-grpo" not in trainers:
        pytest.skip("TRL is not installed: no salsa-against-TRL test")

    # Salsa's best and TRL's best by the dev gains; the seed-level tests by hand on the written per-seed gains.
    test = summary["test"]
    assert test["a"] == max(("salsa-ppo", "salsa-grpo"), key=lambda t: grid["chosen"][t]["dev_gold_gain"])
    assert test["b"] == "trl-grpo"
    a, b = (np.array(summary["trainers"][name]["per_seed_gain"]) for name in (test["a"], test["b"]))
    student = stats.ttest_ind(a, b, equal_var=True)
    assert test["t"] == pytest.approx(student.statistic) and test["t_p"] == pytest.approx(student.pvalue)
    assert test["df"] == 2
    pooled = np.concatenate([a, b])
    relabelled = [
        abs(pooled[list(g)].mean() - np.delete(pooled, list(g)).mean()) for g in itertools.combinations(range(4), 2)
    ]
    assert test["permutation_p"] == pytest.approx(np.mean([d >= abs(a.mean() - b.mean()) - 1e-12 for d in relabelled]))
    assert test["min_permutation_p"] == pytest.approx(1 / 3)  # 2 of the C(4, 2) = 6 relabellings
    se = np.sqrt((a.var(ddof=1) + b.var(ddof=1)) / 2 * (1 / 2 + 1 / 2))
    critical = stats.t.ppf(0.975, 2)
    power = stats.nct.sf(critical, 2, test["mde"] / se) + stats.nct.cdf(-critical, 2, test["mde"] / se)
    assert power == pytest.approx(0.8, abs=1e-6)
    text = (archive / "report.md").read_text()
    assert "dev split" in text and "two-sample t(2)" in text and f"{test['permutation_p']:.3f}" in text
