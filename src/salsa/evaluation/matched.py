"""Comparing RL runs at matched KL: the training curves (score against KL to SFT, from each run's metrics.jsonl)
and, from the policies a run saved along the way, which of them to compare with which."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import yaml

from salsa.config import EvalConfig
from salsa.evaluation.judging import comparison_pairs
from salsa.evaluation.stats import centered_average, match_steps
from salsa.io import COMPLETE_MARKER, read_json, read_jsonl
from salsa.rl.snapshots import list_snapshots


def _policy_series(run_dir: Path) -> dict[str, list[float]] | None:
    """Measurements of the policy after 0, 1, ..., T updates: index s holds what the rollout of that policy gave.

    Record s of metrics.jsonl was sampled by the policy before update s, i.e. after s - 1 updates; the final
    policy's rollout comes from the completion marker (`final_policy`), measured after training.
    """
    log, marker = run_dir / "metrics.jsonl", run_dir / COMPLETE_MARKER
    if not log.is_file() or not marker.is_file():
        return None
    records, final = read_jsonl(log), read_json(marker).get("final_policy")
    if not records or final is None:
        return None
    series: dict[str, list[float]] = {}
    for key in ("kl_sft", "reward", "gold", "response_length"):
        values = [r.get(key) for r in records] + [final.get(key)]
        if all(v is not None for v in values):
            series[key] = values
    return series if "kl_sft" in series else None  # without KL to the SFT model there is no common axis


def training_curves(policy_paths: list[str], window: int = 3) -> dict[str, list[float]] | None:
    """Score and KL to SFT of the policy after each number of updates (0 = the start), averaged over seeds and over
    `window` neighbouring policies (centred), for the frontier plot. None for a policy that is not an RL run."""
    runs = [_policy_series(Path(path).parent) for path in policy_paths]
    if any(r is None for r in runs):
        return None
    length = min(len(r["kl_sft"]) for r in runs)
    curves: dict = {"step": [float(s) for s in range(length)]}
    for key in runs[0]:
        if all(key in r for r in runs):
            curves[key] = centered_average(np.mean([r[key][:length] for r in runs], axis=0), window).tolist()
    config = Path(policy_paths[0]).parent / "config.yaml"
    if config.is_file():  # the temperature the training rollouts (and so their KL) were sampled at
        curves["temperature"] = (yaml.safe_load(config.read_text()) or {}).get("rl", {}).get("temperature")
    return curves


# How far the rollouts' gold score (a centred mean of 3 steps) must end below its peak, while the training reward has
# not fallen, to say that over-optimisation began: about twice that mean's standard error at the default rollout
# (64 responses a step, gold's spread about 0.35).
OVEROPTIMISATION_DROP = 0.05


def over_optimisation(curve: dict[str, list[float]], drop: float = OVEROPTIMISATION_DROP) -> dict | None:
    """Where gold stops following the training reward along one training curve (index s = after s updates).

    The policy at which the rollouts' gold peaked, its KL to SFT, gold and reward there and at the end, and `began`:
    gold ended more than `drop` below its peak while the reward ended no lower than at the peak (the proxy still
    rose, or held, as the true objective fell). None without both scores."""
    if "gold" not in curve or "reward" not in curve:
        return None
    gold, reward = curve["gold"], curve["reward"]
    peak = int(np.argmax(gold))
    return {
        "step": peak, "kl_sft": curve["kl_sft"][peak], "gold_peak": gold[peak], "gold_end": gold[-1],
        "reward_peak": reward[peak], "reward_end": reward[-1], "drop": drop,
        "began": bool(gold[peak] - gold[-1] > drop and reward[-1] >= reward[peak]),
    }  # fmt: skip


def over_optimisation_by_policy(curves: dict[str, dict], rewards: dict[str, str | None]) -> dict[str, dict]:
    """`over_optimisation` of each policy's training curve, except runs trained on the gold judge (`rewards`: what each
    was trained on), for which gold is the reward itself."""
    found = {
        name: over_optimisation(curve)
        for name, curve in curves.items()
        if not (rewards.get(name) or "").startswith("gold")
    }
    return {name: o for name, o in found.items() if o}


# What each update logs about itself (metrics.jsonl): the critic, the advantages, the update's size.
DIAGNOSTICS = (
    "explained_variance", "value_loss", "advantage_q1", "advantage_q2", "advantage_q3", "advantage_q4",
    "clip_fraction", "approx_kl", "ratio_min", "ratio_max", "grad_norm_policy", "grad_norm_value", "entropy",
)  # fmt: skip


def training_diagnostics(policy_paths: list[str]) -> dict[str, list[float]] | None:
    """Each update's diagnostics, averaged over the seeds (update 1, 2, ...); None for a policy that is not an RL
    run. Only the diagnostics every seed logged are kept."""
    logs = [Path(path).parent / "metrics.jsonl" for path in policy_paths]
    if not all(log.is_file() for log in logs):
        return None
    runs = [read_jsonl(log) for log in logs]
    length = min(len(r) for r in runs)
    if length == 0:
        return None
    out: dict[str, list[float]] = {"step": [float(s) for s in range(1, length + 1)]}
    for key in DIAGNOSTICS:
        values = [[r.get(key) for r in run[:length]] for run in runs]
        if all(v is not None for run in values for v in run):
            out[key] = np.mean(values, axis=0).tolist()
    return out if len(out) > 1 else None


def training_reward(policy_path: str) -> str | None:
    """What an RL policy was trained on (its run's completion marker), or None for a model that is not an RL run."""
    marker = Path(policy_path).parent / COMPLETE_MARKER
    return read_json(marker).get("reward") if marker.is_file() else None


@dataclass
class MatchedPolicy:
    """One side of a matched-KL comparison: a run's policy after `step` updates (its last is the final policy)."""

    comparison: str  # "a:b"
    policy: str
    seed_index: int
    run_dir: Path
    step: int
    final: bool
    kl_train: float  # KL to the SFT model of this policy on its own training rollouts (centred average)
    target: float  # the KL both runs were matched at


def _saved_policy_kls(final_path: str, window: int = 3) -> dict[int, float] | None:
    """step -> KL to SFT of every saved policy (snapshots and the final one), measured on the rollouts that policy
    sampled (centred average over `window` neighbouring policies: one rollout's estimate is noisy)."""
    run_dir = Path(final_path).parent
    snapshots, series = list_snapshots(run_dir), _policy_series(run_dir)
    if not snapshots or series is None:
        return None
    kl = centered_average(series["kl_sft"], window)
    final = len(kl) - 1
    return {step: float(kl[step]) for step in [*snapshots, final] if step <= final}


def plan_matched_kl(config: EvalConfig) -> tuple[list[MatchedPolicy], list[str]]:
    """For each comparison of two RL runs whose every seed kept snapshots: seed by seed, the policies at matched KL.

    Returns the plan and, for comparisons that could not be matched, why (their KL ranges did not overlap).
    """
    plan, unmatched = [], []
    for a, b in comparison_pairs(config):
        paths_a, paths_b = config.policies[a], config.policies[b]
        if len(paths_a) != len(paths_b):
            continue
        pair_plan = []
        for seed_index, (path_a, path_b) in enumerate(zip(paths_a, paths_b, strict=True)):
            kl_a, kl_b = _saved_policy_kls(path_a), _saved_policy_kls(path_b)
            if kl_a is None or kl_b is None:  # a seed without saved policies (or not an RL run)
                pair_plan = []
                break
            matched = match_steps(kl_a, kl_b)
            if matched is None:
                ranges = "; ".join(
                    f"{name} {min(kl.values()):.2f}-{max(kl.values()):.2f}" for name, kl in ((a, kl_a), (b, kl_b))
                )
                unmatched.append(
                    f"{a} vs {b}: no saved policies at matched KL (seed {seed_index}: KL to SFT of the saved policies "
                    f"{ranges} nats do not overlap)"
                )
                pair_plan = []
                break
            step_a, step_b, target = matched
            for name, path, kl, step in ((a, path_a, kl_a, step_a), (b, path_b, kl_b, step_b)):
                final = step == max(kl)  # the largest saved step is the final policy
                pair_plan.append(
                    MatchedPolicy(f"{a}:{b}", name, seed_index, Path(path).parent, step, final, kl[step], target)
                )
        plan += pair_plan  # every seed of both runs matched: a comparison over only some seeds would mislead
    return plan, unmatched
