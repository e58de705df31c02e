"""Every number of the report, computed from the sampled and judged responses (`results.json`)."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from salsa.config import EvalConfig, RLConfig
from salsa.config_loading import load_stage_config
from salsa.data import as_messages
from salsa.evaluation.judging import comparison_pairs, prompt_sources
from salsa.evaluation.matched import over_optimisation_by_policy, training_curves, training_diagnostics, training_reward
from salsa.evaluation.stats import (
    claim_verdict,
    compare,
    compare_verdicts,
    factorial_effects,
    matched_kl,
    mean_with_interval,
    outcomes,
    seed_level_test,
    seed_pairs,
    two_level_interval,
    within_prompt_interval,
)
from salsa.io import COMPLETE_MARKER, SOUP_RECORD, is_soup_directory, read_json
from salsa.standard_sets import SETS
from salsa.tasks import BUILTIN_TASKS


def _by_prompt(rows: list[dict], key: str) -> list[list[float]]:
    """[prompts, samples] of `key`, prompts in file order, samples in seed order."""
    grouped: dict[int, dict[int, float]] = {}
    for row in rows:
        grouped.setdefault(row["index"], {})[row["sample"]] = row[key]
    return [[grouped[i][s] for s in sorted(grouped[i])] for i in sorted(grouped)]


def prompt_clusters(rows: list[dict], task: str | None) -> list[str]:
    """Each prompt's cluster for the bootstrap, in prompt-index order (that of `_by_prompt`): with a built-in task,
    the subject its prompt names (the built-in prompts of one subject are two requests in three near-paraphrases,
    not independent draws); without a task, or for a prompt that names none of the task's subjects, the prompt
    alone. A conversation is clustered by its last turn, the request answered (an MT-Bench second turn's follow-up,
    the prompt its judge is shown), never by the policy's own first answer in it."""
    prompts = {r["index"]: as_messages(r["prompt"])[-1]["content"] for r in rows}
    if task is None:
        return [f"#{i}" for i in sorted(prompts)]
    parse = BUILTIN_TASKS[task].parse_request
    return [parse(prompts[i])[1] or f"#{i}" for i in sorted(prompts)]


def cluster_task(config: EvalConfig, split: str) -> str | None:
    """The built-in task whose subjects cluster `split`'s prompts (`prompt_clusters`): none for a standard set's,
    whose prompts are no task's (a subject's words inside one do not make it one of that subject's paraphrases)."""
    return None if prompt_sources(config)[split] in SETS else config.task


def clustered_stats(stats: dict, rows: list[dict], task: str | None) -> dict:
    """The bootstrap settings `stats` with the clusters of the prompts that `rows` answered."""
    return {**stats, "clusters": prompt_clusters(rows, task)}


def with_verdict(result: dict, scores_a: np.ndarray, scores_b: np.ndarray, min_seeds: int) -> dict:
    """A comparison `result` of paired [S, N, ...] scores with its tests over seeds and its verdict by the rule
    (VERDICT_RULE): `claim` (supported | contradicted | unresolved, for A above B) and `claim_reason`."""
    seed_test = seed_level_test(scores_a, scores_b)
    claim, reason = claim_verdict(result["ci"]["mean_difference"], seed_test, min_seeds)
    return {**result, "seed_test": seed_test, "claim": claim, "claim_reason": reason}


def _score_matrix(samples: list[dict], policy: str, split: str, key: str) -> np.ndarray:
    """[seeds, prompts, samples] scores of one policy on one split."""
    rows = [r for r in samples if r["policy"] == policy and r["split"] == split]
    num_seeds = 1 + max(r["seed_index"] for r in rows)
    return np.array([_by_prompt([r for r in rows if r["seed_index"] == s], key) for s in range(num_seeds)], dtype=float)


def _paired(a: np.ndarray, b: np.ndarray, names: tuple[str, str]) -> tuple[np.ndarray, np.ndarray]:
    """Pair seed i of A with seed i of B; a single model (the SFT, say) is paired with every seed."""
    pairs = seed_pairs(a.shape[0], b.shape[0], names)
    return a[[i for i, _ in pairs]], b[[j for _, j in pairs]]


def summarise_matched(matched_rows: list[dict], judges: list[str], config: EvalConfig, stats: dict) -> list[dict]:
    """Per compared pair of runs: the steps chosen at matched KL, their KL on the eval prompts, and win rates with
    the verdict by the rule."""
    out = []
    for comparison in dict.fromkeys(r["matched"] for r in matched_rows):
        rows = [r for r in matched_rows if r["matched"] == comparison]
        clustered = clustered_stats(stats, rows, cluster_task(config, "in_distribution"))
        a, b = comparison.split(":")
        entry: dict = {"a": a, "b": b, "split": "in_distribution", "runs": [], "kl_sft": {}, "comparisons": []}
        for name in (a, b):
            picked = {r["seed_index"]: r for r in rows if r["policy"] == name}
            keys = ("step", "kl_eval", "target_kl")
            entry["runs"] += [
                {"policy": name, "seed_index": i, **{k: r[k] for k in keys}} for i, r in sorted(picked.items())
            ]
            if "kl_sft" in rows[0]:
                kl = _score_matrix(rows, name, "in_distribution", "kl_sft")
                entry["kl_sft"][name] = mean_with_interval(kl, **clustered)
        for judge in judges:
            scores = [_score_matrix(rows, name, "in_distribution", judge) for name in (a, b)]
            result = with_verdict(compare(*scores, config.tie_margin, **clustered), *scores, config.verdict_min_seeds)
            entry["comparisons"].append(
                {"a": a, "b": b, "split": "in_distribution", "judge": judge, "matched_kl": True, **result}
            )
        out.append(entry)
    return out


def _arm_of(paths: list[str]) -> tuple[str, str, float] | None:
    """(init kind, reference kind, KL coefficient) of an RL policy, from its run's config; None for other models
    and for references other than sft and soup. Kinds, not models: an arm `sft:sft`, whose seeds start from SFT
    model s mod K, is one cell of the 2 x 2 whichever ingredient its first seed started from."""
    run_dir = Path(paths[0]).parent
    marker, config_file = run_dir / COMPLETE_MARKER, run_dir / "config.yaml"
    # Only an RL run's: the SFT models' folder has a config.yaml too, which would read as RL's defaults.
    if not config_file.is_file() or not marker.is_file() or read_json(marker).get("stage") != "rl":
        return None
    rl = load_stage_config(RLConfig, "rl", config_file, recorded=True)
    if rl.reference not in ("sft", "soup"):
        return None
    return ("soup" if is_soup_directory(rl.init) else "sft", rl.reference, rl.kl_coef)


def summarise_factorial(config: EvalConfig, samples: list[dict], judges: list[str], stats: dict) -> list[dict]:
    """Which of init and reference carries a difference: for every KL coefficient at which the four RL arms of
    the 2 x 2 (init sft | soup, reference sft | soup) were evaluated, the main effects and their interaction, each
    with its bootstrap interval and its Holm-corrected test over seeds (`factorial_effects`)."""
    arms = {name: _arm_of(paths) for name, paths in config.policies.items()}
    in_distribution = [r for r in samples if r["split"] == "in_distribution"]
    clustered = clustered_stats(stats, in_distribution, cluster_task(config, "in_distribution"))
    out = []
    for coef in sorted({arm[2] for arm in arms.values() if arm}):
        cells = {(arm[0], arm[1]): name for name, arm in arms.items() if arm and arm[2] == coef}
        if len(cells) < 4:
            continue
        effects = {
            judge: factorial_effects(
                {key: _score_matrix(samples, name, "in_distribution", judge) for key, name in cells.items()},
                config.verdict_min_seeds, **clustered,
            )
            for judge in judges
        }  # fmt: skip
        out.append({"kl_coef": coef, "cells": {f"{i}:{r}": name for (i, r), name in cells.items()}, "effects": effects})
    return out


def summarise_judge(judgments: list[dict], config: EvalConfig, stats: dict) -> tuple[list[dict], dict]:
    """The LLM judge's comparisons (judge "llm") and how it judged: how often its two orders agreed, how often
    it preferred the response shown first, and its agreement with the gold judge on the same pairs."""
    comparisons = []
    for a, b, split in dict.fromkeys((r["a"], r["b"], r["split"]) for r in judgments):
        rows = [r for r in judgments if (r["a"], r["b"], r["split"]) == (a, b, split)]
        pairs = sorted({r["pair_index"] for r in rows})
        verdicts = np.array([_by_prompt([r for r in rows if r["pair_index"] == p], "verdict") for p in pairs])
        result = compare_verdicts(verdicts, **clustered_stats(stats, rows, cluster_task(config, split)))
        result = with_verdict(result, verdicts, np.zeros_like(verdicts), config.verdict_min_seeds)
        comparisons.append({"a": a, "b": b, "split": split, "judge": "llm", **result})
    asked = [r for r in judgments if r["response_a"] != r["response_b"]]
    info: dict = {
        "model": config.judge,
        "template": config.judge_template or "built-in",
        "pairs": len(judgments),
        "identical_pairs": len(judgments) - len(asked),
        "consistent": float(np.mean([r["verdict"] != 0 for r in asked])) if asked else None,
        "first_shown_preferred": float(np.mean([(r["a_first"] == 1) + (r["b_first"] == 1) for r in asked]) / 2)
        if asked
        else None,
    }
    scored = [r for r in asked if "gold_a" in r]  # a standard set's prompts (or a reference answer) have no gold
    if scored:
        gold = outcomes([r["gold_a"] for r in scored], [r["gold_b"] for r in scored], config.tie_margin)
        verdicts = np.array([r["verdict"] for r in scored])
        decisive = (gold != 0) & (verdicts != 0)
        info["gold"] = {
            "agreement": float((gold == verdicts).mean()),  # win, tie and loss as three classes
            "decisive_pairs": int(decisive.sum()),  # both judges picked a side
            "decisive_agreement": float((gold == verdicts)[decisive].mean()) if decisive.any() else None,
        }
    return comparisons, info


def _policy_means(config: EvalConfig, samples: list[dict], judges: list[str], splits: list[str], stats: dict) -> dict:
    """Each policy's mean score, length and KL (to SFT and the soup) per split, with intervals."""
    return {
        name: {"paths": list(paths), **policy_means(samples, name, judges, splits, stats, config)}
        for name, paths in config.policies.items()
    }


def policy_means(
    samples: list[dict], name: str, judges: list[str], splits: list[str], stats: dict, config: EvalConfig
) -> dict:
    """One policy's mean score by each judge and length per split, and its KL to SFT and the soup (in-distribution
    prompts), with intervals (clusters of prompts by `cluster_task`, `prompt_clusters`); its rows are those of `samples`
    whose `policy` is `name`."""
    entry: dict = {"splits": {}}
    mine = {split: [r for r in samples if r["policy"] == name and r["split"] == split] for split in splits}
    clustered = {split: clustered_stats(stats, rows, cluster_task(config, split)) for split, rows in mine.items()}
    for split in splits:
        entry["splits"][split] = {
            key: mean_with_interval(_score_matrix(samples, name, split, key), **clustered[split])
            for key in (*judged_by(judges, mine[split]), "length")
        }
    for ref in ("sft", "soup"):
        key = f"kl_{ref}"
        rows = [r for r in samples if r["policy"] == name and key in r]
        if rows:
            matrix = _score_matrix(samples, name, "in_distribution", key)
            entry[key] = mean_with_interval(matrix, **clustered["in_distribution"])
    return entry


def judged_by(judges: list[str], rows: list[dict]) -> list[str]:
    """The judges that scored `rows` (one split's: a standard set has judges of its own, IFEval its rules)."""
    return [judge for judge in judges if rows and judge in rows[0]]


def _comparisons(config: EvalConfig, samples: list[dict], judges: list[str], splits: list[str], stats: dict) -> list:
    """Every configured pair, split and judge: win rates and mean differences with intervals, the tests over seeds
    and the verdict by the rule (unresolved with fewer seeds than eval.verdict_min_seeds)."""
    by_split = {split: [r for r in samples if r["split"] == split] for split in splits}
    clustered = {split: clustered_stats(stats, rows, cluster_task(config, split)) for split, rows in by_split.items()}
    comparisons = []
    for a, b in comparison_pairs(config):
        for split in splits:
            for judge in judged_by(judges, by_split[split]):
                scores_a, scores_b = _paired(
                    _score_matrix(samples, a, split, judge), _score_matrix(samples, b, split, judge), (a, b)
                )
                result = compare(scores_a, scores_b, config.tie_margin, **clustered[split])
                result = with_verdict(result, scores_a, scores_b, config.verdict_min_seeds)
                comparisons.append({"a": a, "b": b, "split": split, "judge": judge, **result})
    return comparisons


def _landscape(landscape_rows: list[dict], judges: list[str], stats: dict, task: str | None) -> list[dict]:
    """Each landscape point's mean score with two intervals: `ci` keeps these prompts and resamples their samples
    (what separates two points measured on the same prompts); `ci_prompts_resampled` resamples the clusters of
    prompts too (the point's level for prompts like these)."""
    landscape = []
    for alpha in dict.fromkeys(r["alpha"] for r in landscape_rows):
        rows = [r for r in landscape_rows if r["alpha"] == alpha]
        point = {"alpha": alpha, "samples": len(rows)}
        for key in (*judges, "length"):
            matrix = np.array(_by_prompt(rows, key))
            point[key] = within_prompt_interval(matrix, **stats)
            point[key]["ci_prompts_resampled"] = two_level_interval(matrix, **clustered_stats(stats, rows, task))["ci"]
        landscape.append(point)
    return landscape


def summarise(
    config: EvalConfig,
    samples: list[dict],
    landscape_rows: list[dict],
    judges: list[str],
    splits: list[str],
    matched_rows: list[dict] | None = None,
    unmatched: list[str] | None = None,
    judgments: list[dict] | None = None,
) -> dict:
    """Every number the report shows, computed from the samples."""
    stats = {"num_samples": config.bootstrap_samples, "confidence": config.confidence, "seed": config.seed}
    first = next(iter(config.policies))
    num_prompts = {split: _score_matrix(samples, first, split, "length").shape[1] for split in splits}
    rows = {split: [r for r in samples if r["policy"] == first and r["split"] == split] for split in splits}
    num_clusters = {split: len(set(prompt_clusters(rows[split], cluster_task(config, split)))) for split in splits}
    policies = _policy_means(config, samples, judges, splits, stats)
    comparisons = _comparisons(config, samples, judges, splits, stats)
    llm_judge = None
    if judgments:
        judged, llm_judge = summarise_judge(judgments, config, stats)
        comparisons += judged
    landscape = _landscape(landscape_rows, judges, stats, cluster_task(config, "in_distribution"))
    curves = {name: training_curves(paths) for name, paths in config.policies.items()}
    curves = {name: c for name, c in curves.items() if c}
    diagnostics = {name: training_diagnostics(paths) for name, paths in config.policies.items()}
    rewards = {name: training_reward(paths[0]) for name, paths in config.policies.items()}
    first_pair = comparison_pairs(config)[0] if comparison_pairs(config) else None
    return {
        "settings": {
            "temperature": config.temperature,
            "max_new_tokens": config.max_new_tokens,
            "seed": config.seed,
            "tie_margin": config.tie_margin,
            "confidence": config.confidence,
            "bootstrap_samples": config.bootstrap_samples,
            # What the bootstrap resamples: subjects (clusters of near-paraphrased prompts) or single prompts.
            "bootstrap_unit": "subject" if num_clusters != num_prompts else "prompt",
            "bootstrap_clusters": num_clusters,
            "verdict_min_seeds": config.verdict_min_seeds,
            "prompts": num_prompts,
            "samples_per_prompt": config.samples_per_prompt,
            "training_temperature": next((c["temperature"] for c in curves.values() if "temperature" in c), None),
        },
        "judges": judges,
        # The one comparison stated as the result: the first pair (SALSA against PPO in `salsa run`), on the
        # in-distribution prompts, by the first judge (gold when the task has one, the LLM judge when it is the
        # only one). Every other is secondary.
        "headline": {"a": first_pair[0], "b": first_pair[1], "split": splits[0], "judge": [*judges, "llm"][0]}
        if first_pair
        else None,
        "policies": policies,
        "comparisons": comparisons,
        "llm_judge": llm_judge,
        "landscape": landscape,
        "landscape_midpoint_is_soup": _midpoint_is_soup(config),
        "frontier": curves,
        # Where gold stopped following the reward model along training; not for a run trained on gold itself.
        "over_optimisation": over_optimisation_by_policy(curves, rewards),
        "diagnostics": {name: d for name, d in diagnostics.items() if d},
        # What each RL policy was trained on; a policy trained on the gold judge is judged by its own reward.
        "training_rewards": {name: r for name, r in rewards.items() if r},
        "matched_kl": matched_kl(curves, tuple(j for j in judges)) if len(curves) >= 2 else None,
        "matched_kl_comparisons": summarise_matched(matched_rows or [], judges, config, stats),
        "matched_kl_notes": unmatched or [],
        "factorial": summarise_factorial(config, samples, judges, stats),
    }


def _midpoint_is_soup(config: EvalConfig) -> bool:
    """Alpha 0.5 of the landscape is the run's soup only when the soup averages exactly the two landscape models."""

    record = Path(config.soup_model or "") / SOUP_RECORD
    if not config.landscape_models or not record.is_file():
        return False
    ingredients = read_json(record).get("ingredients", [])
    paths = sorted(str(Path(i["path"]).resolve()) for i in ingredients)
    weights = [i.get("weight") for i in ingredients]  # none for a slerp: it is not on the line
    models = sorted(str(Path(m).resolve()) for m in config.landscape_models)
    return paths == models and all(w is not None and abs(w - 0.5) < 1e-9 for w in weights)
