"""`salsa eval`: do the policies differ, and by how much? Win rates with intervals, KL, the reward landscape.

1. samples: every policy answers the same held-out prompts (in-distribution and out-of-distribution) with
   the same sampling settings and seeds (common random numbers, so differences come from the weights);
2. judges: the gold judge of the task and the reward model score every response;
3. win / tie / loss of policy A against B, prompt by prompt, with 95% bootstrap intervals. With several
   RL seeds the outcomes form a [seeds x prompts] matrix and the bootstrap resamples both axes, so the
   interval covers seed-to-seed variation too;
4. KL of each policy to the SFT model and to the soup on its own samples (k1 summed over the response);
5. the reward landscape: gold and reward-model score of (1 - alpha) * SFT-1 + alpha * SFT-2;
6. the frontier: reward against KL-to-SFT along training (from the RL runs' metrics.jsonl), and each
   run's score at the largest KL both reached, so a higher score bought with a larger KL shows as such.
"""

from __future__ import annotations

import itertools
import json
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from salsa.config import EvalConfig, save_config
from salsa.data import load_prompts
from salsa.errors import ConfigError, DataError
from salsa.generation import Generation, generate
from salsa.io import atomic_dir, atomic_write_json, atomic_write_text, mark_complete, read_jsonl
from salsa.models import load_causal_lm, load_tokenizer
from salsa.progress import training_progress
from salsa.rl.core import kl_k1
from salsa.rl.policy import response_forward
from salsa.rl.snapshots import list_snapshots, load_snapshot

SPLITS = ("in_distribution", "out_of_distribution")


# --- Pure statistics -----------------------------------------------------------------------------------


def outcomes(scores_a, scores_b, tie_margin: float = 0.0) -> np.ndarray:
    """+1 where A scores higher than B by more than `tie_margin`, -1 where lower, 0 for a tie."""
    diff = np.asarray(scores_a, dtype=float) - np.asarray(scores_b, dtype=float)
    return np.where(diff > tie_margin, 1, np.where(diff < -tie_margin, -1, 0))


def win_tie_loss(results: np.ndarray) -> dict[str, float]:
    """Rates of +1 / 0 / -1, and the win rate that counts a tie as half a win."""
    results = np.asarray(results)
    win, tie, loss = (float((results == v).mean()) for v in (1, 0, -1))
    return {"win": win, "tie": tie, "loss": loss, "win_rate": win + tie / 2}


def bootstrap_resamples(matrix: np.ndarray, num_samples: int, seed: int) -> np.ndarray:
    """[num_samples, S, N, ...] resamples of a [S seeds, N prompts, ...] array: seeds and prompts drawn with
    replacement (trailing axes ride along, so stacked quantities share one draw).

    Prompts are shared by all seeds, so one draw of prompt indices is applied to every resampled seed.
    """
    matrix = np.atleast_2d(matrix)
    rng = np.random.default_rng(seed)
    rows = rng.integers(0, matrix.shape[0], size=(num_samples, matrix.shape[0]))
    cols = rng.integers(0, matrix.shape[1], size=(num_samples, matrix.shape[1]))
    return matrix[rows[:, :, None], cols[:, None, :]]


def percentile_interval(values: np.ndarray, confidence: float = 0.95) -> tuple[float, float]:
    tail = (1 - confidence) / 2 * 100
    low, high = np.percentile(values, [tail, 100 - tail])
    return float(low), float(high)


def compare(
    scores_a: np.ndarray,
    scores_b: np.ndarray,
    tie_margin: float = 0.0,
    num_samples: int = 2000,
    confidence: float = 0.95,
    seed: int = 0,
) -> dict:
    """Win / tie / loss of A against B on paired [S, N] scores, and the mean paired difference A - B.

    Each has a percentile bootstrap interval; the difference is resampled with the same draws as the
    outcomes. A win rate says how often A is better, the difference by how much.
    """
    scores_a, scores_b = np.atleast_2d(scores_a).astype(float), np.atleast_2d(scores_b).astype(float)
    results = outcomes(scores_a, scores_b, tie_margin)
    difference = scores_a - scores_b
    point = win_tie_loss(results)
    drawn = bootstrap_resamples(np.stack([results, difference], -1), num_samples, seed).reshape(num_samples, -1, 2)
    flat = drawn[..., 0]
    resampled = {
        "win": (flat == 1).mean(1),
        "tie": (flat == 0).mean(1),
        "loss": (flat == -1).mean(1),
    }
    resampled["win_rate"] = resampled["win"] + resampled["tie"] / 2
    resampled["mean_difference"] = drawn[..., 1].mean(1)
    intervals = {key: percentile_interval(values, confidence) for key, values in resampled.items()}
    return {**point, "mean_difference": float(difference.mean()), "ci": intervals, "n": int(results.size)}


def mean_with_interval(matrix: np.ndarray, num_samples: int = 2000, confidence: float = 0.95, seed: int = 0) -> dict:
    matrix = np.atleast_2d(np.asarray(matrix, dtype=float))
    resampled = bootstrap_resamples(matrix, num_samples, seed).reshape(num_samples, -1).mean(1)
    return {"mean": float(matrix.mean()), "ci": percentile_interval(resampled, confidence)}


def moving_average(values, window: int) -> np.ndarray:
    """Trailing mean over `window` points (shorter at the start), to read a noisy training curve."""
    values = np.asarray(values, dtype=float)
    sums = np.cumsum(np.insert(values, 0, 0.0))
    counts = np.minimum(np.arange(1, len(values) + 1), window)
    return (sums[1:] - sums[np.arange(1, len(values) + 1) - counts]) / counts


def score_at_kl(kl, score, target: float) -> float:
    """Linear interpolation of a (smoothed) score-vs-KL curve at `target` KL."""
    kl, score = np.asarray(kl, dtype=float), np.asarray(score, dtype=float)
    order = np.argsort(kl)
    return float(np.interp(target, kl[order], score[order]))


def matched_kl(curves: dict[str, dict[str, list[float]]], keys: tuple[str, ...] = ("gold", "reward")) -> dict:
    """Each curve's scores at the largest KL every curve reached; curves map name -> {kl_sft: [...], key: [...]}."""
    target = min(max(c["kl_sft"]) for c in curves.values())
    scores = {
        name: {key: score_at_kl(c["kl_sft"], c[key], target) for key in keys if c.get(key)}
        for name, c in curves.items()
    }
    return {"kl_sft": float(target), "scores": scores}


def match_steps(kl_a: dict[int, float], kl_b: dict[int, float]) -> tuple[int, int, float]:
    """The step of each run whose KL to the SFT model lies closest to the largest KL both runs reached.

    `kl_a` / `kl_b` map the steps that have a saved policy to the (smoothed) training KL there.
    """
    target = min(max(kl_a.values()), max(kl_b.values()))
    closest = lambda kl: min(kl, key=lambda step: (abs(kl[step] - target), step))  # noqa: E731
    return closest(kl_a), closest(kl_b), float(target)


def sequence_kl(logprobs: torch.Tensor, ref_logprobs: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """KL(policy || reference) of whole responses, estimated on the policy's own samples (k1 summed)."""
    return (kl_k1(logprobs, ref_logprobs) * mask).sum(1)


# --- Sampling and scoring --------------------------------------------------------------------------------


def comparison_pairs(config: EvalConfig) -> list[tuple[str, str]]:
    if config.comparisons is None:
        return list(itertools.combinations(config.policies, 2))
    pairs = []
    for item in config.comparisons:
        a, sep, b = item.partition(":")
        if not sep or a not in config.policies or b not in config.policies:
            raise ConfigError(
                f"eval.comparisons: '{item}' must be 'a:b' with policy names from {', '.join(config.policies)}"
            )
        pairs.append((a, b))
    return pairs


def validate_eval_config(config: EvalConfig) -> None:
    if not config.policies:
        raise ConfigError("eval.policies is empty; give at least one name: model_dir")
    for name, paths in config.policies.items():
        if not paths:
            raise ConfigError(f"eval.policies.{name}: no model directory")
        for path in paths:
            if not Path(path).is_dir():
                raise ConfigError(f"eval.policies.{name}: {path} is not a model directory")
    if config.reward_model is None and config.task is None:
        raise ConfigError("eval: set reward_model or task (a judge); both are null")
    if config.landscape_models is not None and len(config.landscape_models) != 2:
        raise ConfigError(f"eval.landscape_models needs exactly two models, got {len(config.landscape_models)}")
    for name in ("max_new_tokens", "batch_size", "bootstrap_samples", "temperature"):
        if getattr(config, name) <= 0:
            raise ConfigError(f"eval.{name} must be > 0, got {getattr(config, name)}")
    if not 0 < config.confidence < 1:
        raise ConfigError(f"eval.confidence must lie in (0, 1), got {config.confidence}")
    comparison_pairs(config)


class Judges:
    """The gold judge and the reward model, both optional, scoring (prompt, response) pairs."""

    def __init__(self, task: str | None, reward_model: str | None):
        self.gold_fn: Callable[[str, str], float] | None = None
        if task:
            from salsa.tasks import BUILTIN_TASKS

            if task not in BUILTIN_TASKS:
                raise ConfigError(f"eval.task: unknown task '{task}'; available: {', '.join(BUILTIN_TASKS)}")
            self.gold_fn = BUILTIN_TASKS[task].gold_score
        self.reward = None
        if reward_model:
            from salsa.reward import RewardModel

            self.reward = RewardModel.load(reward_model)

    @property
    def names(self) -> list[str]:
        return [name for name, judge in (("gold", self.gold_fn), ("reward", self.reward)) if judge is not None]

    def score(self, prompts: list[str], responses: list[str]) -> dict[str, list[float]]:
        scores = {}
        if self.gold_fn is not None:
            scores["gold"] = [self.gold_fn(p, r) for p, r in zip(prompts, responses, strict=True)]
        if self.reward is not None:
            scores["reward"] = self.reward.score(prompts, responses).tolist()
        return scores


def _batches(prompts: list[str], size: int) -> list[list[str]]:
    return [prompts[i : i + size] for i in range(0, len(prompts), size)]


@torch.no_grad()
def sample_and_score(
    model: torch.nn.Module,
    tokenizer,
    prompts: list[str],
    config: EvalConfig,
    judges: Judges,
    kl_references: dict[str, torch.nn.Module] | None = None,
    on_batch: Callable[[int], None] | None = None,
) -> list[dict]:
    """One response per prompt with its judges' scores and, given references, its KL to each."""
    rows = []
    for number, batch in enumerate(_batches(prompts, config.batch_size)):
        sample: Generation = generate(
            model, tokenizer, batch, max_new_tokens=config.max_new_tokens, temperature=config.temperature,
            seed=config.seed * 1_000_003 + number, with_logprobs=bool(kl_references),
        )  # fmt: skip
        scores = judges.score(batch, sample.responses)
        kls = {}
        if kl_references:
            args = (sample.sequences, sample.attention_mask, sample.prompt_length, config.temperature)
            for name, reference in kl_references.items():
                if reference is model:
                    kls[f"kl_{name}"] = [0.0] * len(batch)
                else:
                    ref_logprobs = response_forward(reference, *args).logprobs
                    kls[f"kl_{name}"] = sequence_kl(sample.logprobs, ref_logprobs, sample.mask).tolist()
        lengths = sample.mask.sum(1).tolist()
        for i, (prompt, response) in enumerate(zip(batch, sample.responses, strict=True)):
            row = {"prompt": prompt, "response": response, "length": lengths[i]}
            row.update({key: values[i] for key, values in {**scores, **kls}.items()})
            rows.append(row)
        if on_batch:
            on_batch(len(batch))
    return rows


def _frozen(path: str) -> torch.nn.Module:
    return load_causal_lm(path).eval().requires_grad_(False)


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


LANDSCAPE_KEYS = ("prompt", "response", "length", "gold", "reward")


def _policy_at(config: EvalConfig, path: str) -> tuple[str, int] | None:
    """(policy name, seed index) of the policy model at `path`, if one is."""
    for name, paths in config.policies.items():
        for seed_index, policy_path in enumerate(paths):
            if Path(policy_path).resolve() == Path(path).resolve():
                return name, seed_index
    return None


def _drawn(samples: list[dict], policy: str, seed_index: int) -> list[dict]:
    """The in-distribution samples already drawn from one policy model, in prompt order."""
    key = (policy, seed_index, "in_distribution")
    return [r for r in samples if (r["policy"], r["seed_index"], r["split"]) == key]


def evaluate(config: EvalConfig, show_progress: bool = True) -> Path:
    """Sample, judge and compare the configured policies; writes results.json and samples.jsonl."""
    validate_eval_config(config)
    splits = {"in_distribution": load_prompts(config.prompts)}
    if config.ood_prompts:
        splits["out_of_distribution"] = load_prompts(config.ood_prompts)
    judges = Judges(config.task, config.reward_model)
    kl_paths = {name: p for name, p in (("sft", config.sft_model), ("soup", config.soup_model)) if p}
    for name, path in kl_paths.items():
        if not Path(path).is_dir():
            raise ConfigError(f"eval.{name}_model: {path} is not a model directory")
    first_policy = next(iter(config.policies.values()))[0]
    tokenizer = load_tokenizer(first_policy)
    kl_references = {name: _frozen(path) for name, path in kl_paths.items()}
    loaded = {Path(kl_paths[name]).resolve(): model for name, model in kl_references.items()}

    num_policy_models = sum(len(paths) for paths in config.policies.values())
    total = num_policy_models * sum(len(p) for p in splits.values())
    if config.landscape_models:
        total += len(config.landscape_alphas) * len(splits["in_distribution"])
    matched_plan = plan_matched_kl(config) if config.matched_kl else []
    total += sum(not m.final for m in matched_plan) * len(splits["in_distribution"])
    samples: list[dict] = []
    with training_progress(disable=not show_progress) as progress:
        task = progress.add_task("evaluating", total=total, metrics="")
        advance = lambda n: progress.update(task, advance=n)  # noqa: E731
        for name, paths in config.policies.items():
            for seed_index, path in enumerate(paths):
                progress.update(task, metrics=f"{name} [{seed_index}]")
                # A policy that is also a KL reference (the SFT model, say) is that loaded model: KL 0 to it.
                model = loaded.get(Path(path).resolve()) or _frozen(path)
                for split, prompts in splits.items():
                    rows = sample_and_score(
                        model, tokenizer, prompts, config, judges,
                        kl_references if split == "in_distribution" else None, advance,
                    )  # fmt: skip
                    samples += [{"policy": name, "seed_index": seed_index, "split": split, **r} for r in rows]
                del model
        matched_rows: list[dict] = []
        for m in matched_plan:
            progress.update(task, metrics=f"{m.policy} [{m.seed_index}] at step {m.step} (matched KL)")
            if m.final:  # the final policy's samples are already drawn, with the same prompts and seeds
                rows = _drawn(samples, m.policy, m.seed_index)
            else:
                model = load_snapshot(m.run_dir, m.step).eval().requires_grad_(False)
                rows = sample_and_score(
                    model, tokenizer, splits["in_distribution"], config, judges, kl_references, advance
                )
                del model
            meta = {"matched": m.comparison, "policy": m.policy, "seed_index": m.seed_index, "split": "in_distribution",
                    "step": m.step, "kl_train": m.kl_train, "target_kl": m.target}  # fmt: skip
            matched_rows += [{**r, **meta} for r in rows]
        landscape_rows: list[dict] = []
        if config.landscape_models:
            from salsa.soup import soup_model

            endpoints = {0.0: config.landscape_models[0], 1.0: config.landscape_models[1]}
            for alpha in config.landscape_alphas:
                progress.update(task, metrics=f"landscape alpha={alpha:+.2f}")
                policy = _policy_at(config, endpoints[alpha]) if alpha in endpoints else None
                if policy is not None:  # an endpoint that is also a policy: its samples are already drawn
                    rows = [{k: v for k, v in r.items() if k in LANDSCAPE_KEYS} for r in _drawn(samples, *policy)]
                    advance(len(rows))
                else:
                    model = soup_model(config.landscape_models, alpha=alpha, allow_extrapolation=True)
                    model.eval().requires_grad_(False)
                    rows = sample_and_score(model, tokenizer, splits["in_distribution"], config, judges, None, advance)
                    del model
                landscape_rows += [{"alpha": alpha, **r} for r in rows]

    results = summarise(config, samples, landscape_rows, judges.names, list(splits), matched_rows)
    out = Path(config.output_dir)
    with atomic_dir(out) as tmp:
        everything = samples + matched_rows + landscape_rows
        atomic_write_text(tmp / "samples.jsonl", "".join(json.dumps(r) + "\n" for r in everything))
        atomic_write_json(tmp / "results.json", results)
        save_config(config, tmp / "config.yaml", section="eval")
        mark_complete(tmp, {"stage": "eval"})
    return out


def _score_matrix(samples: list[dict], policy: str, split: str, key: str) -> np.ndarray:
    """[seeds, prompts] scores of one policy on one split (prompts in file order)."""
    rows = [r for r in samples if r["policy"] == policy and r["split"] == split]
    num_seeds = 1 + max(r["seed_index"] for r in rows)
    return np.array([[r[key] for r in rows if r["seed_index"] == s] for s in range(num_seeds)], dtype=float)


def _paired(a: np.ndarray, b: np.ndarray, names: tuple[str, str]) -> tuple[np.ndarray, np.ndarray]:
    """Pair seed i of A with seed i of B; a single model (the SFT, say) is paired with every seed."""
    if a.shape[0] == b.shape[0]:
        return a, b
    if a.shape[0] == 1:
        return np.repeat(a, b.shape[0], 0), b
    if b.shape[0] == 1:
        return a, np.repeat(b, a.shape[0], 0)
    raise DataError(f"eval: {names[0]} has {a.shape[0]} seeds and {names[1]} {b.shape[0]}; give equal numbers")


def summarise_matched(matched_rows: list[dict], judges: list[str], config: EvalConfig, stats: dict) -> list[dict]:
    """Per compared pair of runs: the steps chosen at matched KL, their KL on the eval prompts, and win rates."""
    out = []
    for comparison in dict.fromkeys(r["matched"] for r in matched_rows):
        rows = [r for r in matched_rows if r["matched"] == comparison]
        a, b = comparison.split(":")
        entry: dict = {"a": a, "b": b, "split": "in_distribution", "runs": [], "kl_sft": {}, "comparisons": []}
        for name in (a, b):
            picked = {r["seed_index"]: r for r in rows if r["policy"] == name}
            keys = ("step", "kl_train", "target_kl")
            entry["runs"] += [
                {"policy": name, "seed_index": i, **{k: r[k] for k in keys}} for i, r in sorted(picked.items())
            ]
            if "kl_sft" in rows[0]:
                kl = _score_matrix(rows, name, "in_distribution", "kl_sft")
                entry["kl_sft"][name] = mean_with_interval(kl, **stats)
        for judge in judges:
            scores = [_score_matrix(rows, name, "in_distribution", judge) for name in (a, b)]
            result = compare(*scores, config.tie_margin, **stats)
            entry["comparisons"].append(
                {"a": a, "b": b, "split": "in_distribution", "judge": judge, "matched_kl": True, **result}
            )
        out.append(entry)
    return out


def summarise(
    config: EvalConfig,
    samples: list[dict],
    landscape_rows: list[dict],
    judges: list[str],
    splits: list[str],
    matched_rows: list[dict] | None = None,
) -> dict:
    """Every number the report shows, computed from the samples."""
    stats = {"num_samples": config.bootstrap_samples, "confidence": config.confidence, "seed": config.seed}
    first = next(iter(config.policies))
    num_prompts = {split: _score_matrix(samples, first, split, "length").shape[1] for split in splits}
    policies = {}
    for name, paths in config.policies.items():
        entry: dict = {"paths": list(paths), "splits": {}}
        for split in splits:
            entry["splits"][split] = {
                key: mean_with_interval(_score_matrix(samples, name, split, key), **stats)
                for key in (*judges, "length")
            }
        for ref in ("sft", "soup"):
            key = f"kl_{ref}"
            rows = [r for r in samples if r["policy"] == name and key in r]
            if rows:
                entry[key] = mean_with_interval(_score_matrix(samples, name, "in_distribution", key), **stats)
        policies[name] = entry
    comparisons = []
    for a, b in comparison_pairs(config):
        for split in splits:
            for judge in judges:
                scores_a, scores_b = _paired(
                    _score_matrix(samples, a, split, judge), _score_matrix(samples, b, split, judge), (a, b)
                )
                result = compare(scores_a, scores_b, config.tie_margin, **stats)
                comparisons.append({"a": a, "b": b, "split": split, "judge": judge, **result})
    landscape = []
    for alpha in dict.fromkeys(r["alpha"] for r in landscape_rows):
        rows = [r for r in landscape_rows if r["alpha"] == alpha]
        point = {"alpha": alpha}
        for key in (*judges, "length"):
            point[key] = mean_with_interval(np.array([[r[key] for r in rows]]), **stats)
        landscape.append(point)
    curves = {name: training_curves(paths) for name, paths in config.policies.items()}
    curves = {name: c for name, c in curves.items() if c}
    return {
        "settings": {
            "temperature": config.temperature,
            "max_new_tokens": config.max_new_tokens,
            "seed": config.seed,
            "tie_margin": config.tie_margin,
            "confidence": config.confidence,
            "bootstrap_samples": config.bootstrap_samples,
            "prompts": num_prompts,
        },
        "judges": judges,
        "policies": policies,
        "comparisons": comparisons,
        "landscape": landscape,
        "frontier": curves,
        "matched_kl": matched_kl(curves, tuple(j for j in judges)) if len(curves) >= 2 else None,
        "matched_kl_comparisons": summarise_matched(matched_rows or [], judges, config, stats),
    }
