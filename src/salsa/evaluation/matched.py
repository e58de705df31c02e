"""Comparing RL runs at matched KL: the training curves (score against KL to SFT, from each run's metrics.jsonl)
and, from the policies a run saved along the way, which of them to compare with which."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from salsa.config import EvalConfig
from salsa.evaluation.judging import comparison_pairs
from salsa.evaluation.stats import match_steps, moving_average
from salsa.io import read_jsonl
from salsa.rl.snapshots import list_snapshots


def training_curves(policy_paths: list[str], window: int = 3) -> dict[str, list[float]] | None:
    """Smoothed KL-to-SFT, reward and gold along training, averaged over seeds (RL runs only)."""
    runs = []
    for path in policy_paths:
        log = Path(path).parent / "metrics.jsonl"
        if not log.is_file():
            return None
        runs.append(read_jsonl(log))
    steps = min(len(r) for r in runs)
    if steps == 0:
        return None
    curves: dict[str, list[float]] = {"step": [float(s + 1) for s in range(steps)]}
    for key in ("kl_sft", "reward", "gold", "response_length"):
        values = [[rec.get(key) for rec in run[:steps]] for run in runs]
        if any(v is None for run in values for v in run):
            if key == "kl_sft":
                return None  # without KL to the SFT model the runs are not on a common axis
            continue
        curves[key] = moving_average(np.mean(values, axis=0), window).tolist()
    return curves


@dataclass
class MatchedPolicy:
    """One side of a matched-KL comparison: a run's policy at `step` (its last step is the final policy)."""

    comparison: str  # "a:b"
    policy: str
    seed_index: int
    run_dir: Path
    step: int
    final: bool
    kl_train: float  # smoothed training KL to the SFT model at `step`
    target: float  # the KL both runs were matched at


def _saved_policy_kls(final_path: str, window: int = 3) -> dict[int, float] | None:
    """step -> smoothed training KL to SFT for every step with a saved policy (snapshots and the final)."""
    run_dir = Path(final_path).parent
    log = run_dir / "metrics.jsonl"
    snapshots = list_snapshots(run_dir)
    if not snapshots or not log.is_file():
        return None
    records = read_jsonl(log)
    if not records or any(r.get("kl_sft") is None for r in records):
        return None
    kl = moving_average([r["kl_sft"] for r in records], window)
    steps = [*snapshots, len(records)]
    return {step: float(kl[step - 1]) for step in steps if step <= len(records)}


def plan_matched_kl(config: EvalConfig) -> list[MatchedPolicy]:
    """For each comparison of two RL runs whose every seed kept snapshots: seed by seed, the policies at matched KL."""
    plan = []
    for a, b in comparison_pairs(config):
        paths_a, paths_b = config.policies[a], config.policies[b]
        if len(paths_a) != len(paths_b):
            continue
        pair_plan = []
        for seed_index, (path_a, path_b) in enumerate(zip(paths_a, paths_b, strict=True)):
            kl_a, kl_b = _saved_policy_kls(path_a), _saved_policy_kls(path_b)
            if kl_a is None or kl_b is None:
                break
            step_a, step_b, target = match_steps(kl_a, kl_b)
            for name, path, kl, step in ((a, path_a, kl_a, step_a), (b, path_b, kl_b, step_b)):
                final = step == max(kl)  # the largest saved step is the final policy
                pair_plan.append(
                    MatchedPolicy(f"{a}:{b}", name, seed_index, Path(path).parent, step, final, kl[step], target)
                )
        else:  # every seed of both runs has saved policies: a comparison over only some seeds would mislead
            plan += pair_plan
    return plan
