"""`salsa eval`: do the policies differ, and by how much? Win rates with intervals, KL, the reward landscape.

1. samples: every policy answers the same held-out prompts (in-distribution and out-of-distribution) with
   the same sampling settings and seeds (common random numbers, so differences come from the weights);
2. judges: the gold judge of the task and the reward model score every response; an LLM judge, if given,
   compares the paired responses of every compared pair of policies (both orders; `evaluation/llm_judge.py`);
3. win / tie / loss of policy A against B, prompt by prompt, with 95% bootstrap intervals. With several
   RL seeds the outcomes form a [seeds x prompts] matrix and the bootstrap resamples both axes, so the
   interval covers seed-to-seed variation too;
4. KL of each policy to the SFT model and to the soup on its own samples (k1 summed over the response);
5. the reward landscape: gold and reward-model score of (1 - alpha) * SFT-1 + alpha * SFT-2;
6. the frontier: reward against KL-to-SFT along training (from the RL runs' metrics.jsonl), and each
   run's score at the largest KL both reached, so a higher score bought with a larger KL shows as such;
7. merge sweeps (`sweeps`): ExPO, LITI and SLERP merges of the policies at several values, each built in memory
   and evaluated as a policy is, for the report's plot of score against KL to SFT.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch

from salsa import runtime
from salsa.config import EvalConfig
from salsa.engine import Stage, run_stage
from salsa.evaluation.judging import Judges, comparison_pairs, frozen, sample_and_score
from salsa.evaluation.landscape import sample_point
from salsa.evaluation.matched import plan_matched_kl
from salsa.evaluation.soup_health import ingredients_of, member_names, summarise_soup_health
from salsa.evaluation.summary import summarise
from salsa.evaluation.sweeps import summarise_sweeps
from salsa.generation import check_prompt_lengths
from salsa.io import atomic_write_json, atomic_write_text
from salsa.models import load_tokenizer
from salsa.progress import training_progress
from salsa.rl.snapshots import load_snapshot
from salsa.sweep_spec import SweepPoint

LANDSCAPE_KEYS = ("index", "sample", "prompt", "response", "length", "gold", "reward")


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


def _judge(config: EvalConfig, samples: list[dict], stage: Stage, device, dtype, progress) -> list[dict]:
    """The LLM judge's verdicts on every comparison (both orders of each pair of responses)."""
    from salsa.evaluation.llm_judge import LLMJudge, judgment_rows
    from salsa.judge_prompt import DEFAULT_TEMPLATE

    rows = judgment_rows(samples, comparison_pairs(config))
    task = progress.add_task("LLM judge", total=len(rows), metrics=config.judge)
    template = stage.inputs.get("judge_template") or DEFAULT_TEMPLATE
    judge = LLMJudge(frozen(config.judge, device, dtype), config.judge, template, config.batch_size)
    jobs = [(r["prompt"], r["response_a"], r["response_b"]) for r in rows]
    verdicts = judge.verdicts(jobs, lambda n: progress.update(task, advance=n))
    return [{**r, **v} for r, v in zip(rows, verdicts, strict=True)]


@dataclass
class SampleArgs:
    """What every sampling pass of an evaluation shares."""

    tokenizer: object
    device: torch.device
    dtype: torch.dtype
    samples: range  # the sample indices of every prompt
    advance: Callable[[int], None]  # the progress bar, by a number of responses
    describe: Callable[[str], None]  # the progress bar's text


def _matched_kl_samples(
    config: EvalConfig,
    plan: list,
    samples: list[dict],
    splits: dict,
    judges: Judges,
    kl_references: dict,
    args: SampleArgs,
) -> list[dict]:
    """The in-distribution samples of every saved policy the matched-KL comparisons need."""
    rows_out: list[dict] = []
    for m in plan:
        args.describe(f"{m.policy} [{m.seed_index}] at step {m.step} (matched KL)")
        if m.final:  # the final policy's samples are already drawn, with the same prompts and seeds
            rows = _drawn(samples, m.policy, m.seed_index)
        else:
            model = load_snapshot(m.run_dir, m.step).to(args.device, args.dtype).eval().requires_grad_(False)
            rows = sample_and_score(
                model, args.tokenizer, splits["in_distribution"], "in_distribution", config, judges, kl_references,
                args.advance, args.samples,
            )  # fmt: skip
            del model
        meta = {"matched": m.comparison, "policy": m.policy, "seed_index": m.seed_index, "split": "in_distribution",
                "step": m.step, "kl_train": m.kl_train, "target_kl": m.target}  # fmt: skip
        rows_out += [{**r, **meta} for r in rows]
    return rows_out


def _policy_samples(
    model: torch.nn.Module,
    name: str,
    seed_index: int,
    config: EvalConfig,
    splits: dict,
    judges: Judges,
    kl_references: dict,
    args: SampleArgs,
) -> list[dict]:
    """One policy model's answers on every split, scored, with its KL to the references on the in-distribution
    prompts."""
    rows = []
    for split, prompts in splits.items():
        references = kl_references if split == "in_distribution" else None
        scored = sample_and_score(
            model, args.tokenizer, prompts, split, config, judges, references, args.advance, args.samples
        )
        rows += [{"policy": name, "seed_index": seed_index, "split": split, **r} for r in scored]
    return rows


def _sweep_samples(
    config: EvalConfig, points: list[SweepPoint], splits: dict, judges: Judges, kl_references: dict, args: SampleArgs
) -> list[dict]:
    """The answers of every point of the merge sweeps, each merge built in memory from its two models (no file
    written) and evaluated as a policy is: the same prompts and seeds, the same judges and KL references."""
    from salsa.weights.in_memory import soup_model

    rows = []
    for point in points:
        for seed_index, models in enumerate(point.models):
            args.describe(f"{point.name} [{seed_index}]")
            model = soup_model(models, **point.parameters).to(args.device, args.dtype).eval().requires_grad_(False)
            rows += _policy_samples(model, point.name, seed_index, config, splits, judges, kl_references, args)
            del model
    return rows


def _landscape_samples(
    config: EvalConfig, samples: list[dict], splits: dict, judges: Judges, args: SampleArgs
) -> list[dict]:
    """The samples of every point (1 - alpha) * SFT-1 + alpha * SFT-2 of the landscape."""
    from salsa.weights.in_memory import soup_model

    endpoints = {0.0: config.landscape_models[0], 1.0: config.landscape_models[1]}
    rows_out: list[dict] = []
    for alpha in config.landscape_alphas:
        args.describe(f"landscape alpha={alpha:+.2f}")
        policy = _policy_at(config, endpoints[alpha]) if alpha in endpoints else None
        # An endpoint that is also a policy starts from the responses already drawn from it.
        drawn = [{k: v for k, v in r.items() if k in LANDSCAPE_KEYS} for r in _drawn(samples, *policy)] if (
            policy is not None
        ) else []  # fmt: skip
        args.advance(len(drawn))

        def build(alpha=alpha):
            model = soup_model(config.landscape_models, alpha=alpha, allow_extrapolation=True)
            return model.to(args.device, args.dtype).eval().requires_grad_(False)

        rows = sample_point(config, build, args.tokenizer, splits["in_distribution"], judges, drawn, args.advance)
        rows_out += [{"alpha": alpha, **r} for r in rows]
    return rows_out


def _soup_health_samples(
    config: EvalConfig, ingredients: list[str], loaded: dict, prompts: list, judges: Judges, args: SampleArgs
) -> list[dict]:
    """Every ingredient and the soup answer the in-distribution prompts, each scored with its KL to the others."""
    members = dict(zip(member_names(len(ingredients)), [*ingredients, config.soup_model], strict=True))
    models = {name: loaded.get(Path(path).resolve()) or frozen(path, args.device, args.dtype)
              for name, path in members.items()}  # fmt: skip
    rows = []
    for name, model in models.items():
        args.describe(f"soup health: {name}")
        scored = sample_and_score(
            model, args.tokenizer, prompts, "in_distribution", config, judges, models, args.advance, args.samples
        )
        rows += [{"member": name, "split": "in_distribution", **r} for r in scored]
    return rows


def evaluate(config: EvalConfig, show_progress: bool = True, overwrite: bool = False) -> Path:
    """Sample, judge and compare the configured policies; writes results.json and samples.jsonl."""
    return run_stage(config, lambda stage: _evaluate(config, stage, show_progress), overwrite)


def _evaluate(config: EvalConfig, stage: Stage, show_progress: bool) -> None:
    splits = {"in_distribution": stage.inputs["prompts"]}
    if config.ood_prompts:
        splits["out_of_distribution"] = stage.inputs["ood_prompts"]
    device = runtime.accelerator().device
    dtype = runtime.forward_dtype(config.mixed_precision)
    judges = Judges(config.task, config.reward_model, device)
    kl_paths = {name: p for name, p in (("sft", config.sft_model), ("soup", config.soup_model)) if p}
    first_policy = next(iter(config.policies.values()))[0]
    tokenizer = load_tokenizer(first_policy)
    kl_references = {name: frozen(path, device, dtype) for name, path in kl_paths.items()}
    first_model = next(iter(kl_references.values()), None) or frozen(first_policy, device, dtype)
    for split, source in (("in_distribution", config.prompts), ("out_of_distribution", config.ood_prompts)):
        if split in splits:
            check_prompt_lengths(tokenizer, splits[split], config.max_new_tokens, first_model, f"eval ({source})")
    loaded = {Path(kl_paths[name]).resolve(): model for name, model in kl_references.items()}

    num_policy_models = sum(len(paths) for paths in config.policies.values())
    per_prompt = config.samples_per_prompt
    total = num_policy_models * sum(len(p) for p in splits.values()) * per_prompt
    if config.landscape_models:  # the first round of each point; a point that needs more rounds adds to it
        total += len(config.landscape_alphas) * len(splits["in_distribution"]) * per_prompt
    matched_plan, unmatched = plan_matched_kl(config) if config.matched_kl else ([], [])
    total += sum(not m.final for m in matched_plan) * len(splits["in_distribution"]) * per_prompt
    ingredients = ingredients_of(config.soup_model) if config.soup_health and config.soup_model else None
    if ingredients:
        total += (len(ingredients) + 1) * len(splits["in_distribution"]) * per_prompt
    points = config.sweep_points()
    total += sum(len(point.models) for point in points) * sum(len(p) for p in splits.values()) * per_prompt
    everyone = range(per_prompt)
    samples: list[dict] = []
    with training_progress(disable=not show_progress or not runtime.is_main_process()) as progress:
        task = progress.add_task("evaluating", total=total, metrics="")
        advance = lambda n: progress.update(task, advance=n)  # noqa: E731
        sample_args = SampleArgs(
            tokenizer, device, dtype, everyone, advance, lambda text: progress.update(task, metrics=text)
        )
        for name, paths in config.policies.items():
            for seed_index, path in enumerate(paths):
                progress.update(task, metrics=f"{name} [{seed_index}]")
                # A policy that is also a KL reference (the SFT model, say) is that loaded model: KL 0 to it.
                model = loaded.get(Path(path).resolve()) or frozen(path, device, dtype)
                samples += _policy_samples(model, name, seed_index, config, splits, judges, kl_references, sample_args)
                del model
        sweep_rows = _sweep_samples(config, points, splits, judges, kl_references, sample_args)
        matched_rows = _matched_kl_samples(config, matched_plan, samples, splits, judges, kl_references, sample_args)
        landscape_rows = (
            _landscape_samples(config, samples, splits, judges, sample_args) if config.landscape_models else []
        )
        health_rows = (
            _soup_health_samples(config, ingredients, loaded, splits["in_distribution"], judges, sample_args)
            if ingredients
            else []
        )
        judgments = _judge(config, samples, stage, device, dtype, progress) if config.judge else []

    results = summarise(config, samples, landscape_rows, judges.names, list(splits), matched_rows, unmatched, judgments)
    results["settings"]["gold_judge_version"] = judges.gold_version
    stats = {"num_samples": config.bootstrap_samples, "confidence": config.confidence, "seed": config.seed}
    results["soup_health"] = summarise_soup_health(health_rows, judges.names, config, stats) if health_rows else None
    if points:  # each point in the policies' table, and the sweeps as curves of points
        point_entries, results["sweeps"] = summarise_sweeps(
            config, points, sweep_rows, judges.names, list(splits), stats
        )
        results["policies"].update(point_entries)
    if runtime.is_main_process():
        everything = samples + matched_rows + landscape_rows + health_rows + sweep_rows
        atomic_write_text(stage.out / "samples.jsonl", "".join(json.dumps(r) + "\n" for r in everything))
        if judgments:
            atomic_write_text(stage.out / "judgments.jsonl", "".join(json.dumps(r) + "\n" for r in judgments))
        atomic_write_json(stage.out / "results.json", results)
    stage.finish()
