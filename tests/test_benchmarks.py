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
