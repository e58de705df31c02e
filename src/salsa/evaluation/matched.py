"""Comparing RL runs at matched KL: the training curves (score against KL to SFT, from each run's metrics.jsonl)
and, from the policies a run saved along the way (their answers to the evaluation prompts), which of them to compare
with which."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import yaml

from salsa.config import EvalConfig
from salsa.evaluation.judging import comparison_pairs
from salsa.evaluation.stats import centered_average, match_steps
from salsa.io import COMPLETE_MARKER, read_json, read_jsonl


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


def _saved_policies(config: EvalConfig, samples: list[dict], snapshots: list[dict], name: str, seed_index: int):
    """step -> in-distribution rows of every policy one RL run saved: its snapshots, then its final policy (at the
    run's last step); None when it saved no snapshot or the rows carry no KL to the SFT model."""
    saved: dict[int, list[dict]] = {}
    for row in snapshots:
        if (row["policy"], row["seed_index"]) == (name, seed_index):
            saved.setdefault(row["snapshot"], []).append(row)
    final = [r for r in samples if (r["policy"], r["seed_index"], r["split"]) == (name, seed_index, "in_distribution")]
    if not saved or not final or "kl_sft" not in final[0]:
        return None
    log = Path(config.policies[name][seed_index]).parent / "metrics.jsonl"
    last = len(read_jsonl(log)) if log.is_file() else max(saved) + 1
    return {**dict(sorted(saved.items())), last: final}


def matched_kl_rows(config: EvalConfig, samples: list[dict], snapshots: list[dict]) -> tuple[list[dict], list[str]]:
    """For each comparison of two RL runs whose every seed kept snapshots: seed by seed, the saved policies at
    matched KL to the SFT model, that KL measured on the evaluation prompts (each saved policy's mean over its own
    responses there). Returns their rows, tagged with the comparison, and for comparisons that could not be matched,
    why (their KL ranges did not overlap)."""
    out, unmatched = [], []
    for a, b in comparison_pairs(config):
        if len(config.policies[a]) != len(config.policies[b]):
            continue
        pair_rows = []
        for seed_index in range(len(config.policies[a])):
            saved = {name: _saved_policies(config, samples, snapshots, name, seed_index) for name in (a, b)}
            if None in saved.values():  # a seed without saved policies (or not an RL run)
                pair_rows = []
                break
            kls = {name: {step: float(np.mean([r["kl_sft"] for r in rows])) for step, rows in saved[name].items()}
                   for name in (a, b)}  # fmt: skip
            matched = match_steps(kls[a], kls[b])
            if matched is None:
                ranges = "; ".join(f"{n} {min(kl.values()):.2f}-{max(kl.values()):.2f}" for n, kl in kls.items())
                unmatched.append(
                    f"{a} vs {b}: no saved policies at matched KL (seed {seed_index}: KL to SFT of the saved policies "
                    f"on the evaluation prompts {ranges} nats do not overlap)"
                )
                pair_rows = []
                break
            step_a, step_b, target = matched
            for name, step in ((a, step_a), (b, step_b)):
                tag = {"matched": f"{a}:{b}", "step": step, "kl_eval": kls[name][step], "target_kl": target}
                pair_rows += [{**r, **tag} for r in saved[name][step]]
        out += pair_rows  # every seed of both runs matched: a comparison over only some seeds would mislead
    return out, unmatched
