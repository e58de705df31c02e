"""`salsa data make`: prompts, SFT demonstrations and preference pairs of a built-in task, offline.

1. prompts: train / dev / eval (in-distribution, disjoint subjects; dev is held out of training, for tuning) and
   ood (another domain and phrasing);
2. n samples of the model for every train and dev prompt, scored by the gold judge;
3. sft.jsonl: the best of the n samples per train prompt (best-of-n demonstrations);
4. prefs.jsonl: for each train prompt, pairs drawn from its own samples, those of its twin (the same
   request with the opposite sentiment) and a few of the same request about another subject, every
   response scored by the gold judge under this prompt; the same two responses are then preferred one way
   or the other depending on what was asked, so a reward model must read the prompt: its polarity and its
   subject. prefs_dev.jsonl: every pair of a dev prompt's own samples. Nothing is sampled for the evaluation
   prompts: no training or tuning data is built from them. Pairs whose
   gold scores tie are dropped; labels are Bradley-Terry draws on the gold scores,
   P(a preferred) = sigmoid((gold_a - gold_b) / label_temperature), so the reward model learns from noisy
   labels and is an imperfect proxy of the gold judge;
5. datasheet.md: sizes, how the data was made, and the measured label noise.
"""

from __future__ import annotations

import itertools
import json
import math
import random
import statistics
from pathlib import Path

from salsa import runtime
from salsa.config import DataConfig
from salsa.engine import Stage, run_stage
from salsa.generation import check_prompt_lengths, sample_responses
from salsa.io import atomic_write_text
from salsa.models import load_causal_lm, load_tokenizer
from salsa.seeding import derive_seed
from salsa.tasks import BUILTIN_TASKS


def _jsonl(rows: list[dict]) -> str:
    return "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows)


def bradley_terry_label(gold_a: float, gold_b: float, temperature: float, rng: random.Random) -> bool:
    """True if a is preferred: a draw with P = sigmoid((gold_a - gold_b) / temperature); t = 0 is noiseless."""
    if temperature <= 0:
        return gold_a > gold_b or (gold_a == gold_b and rng.random() < 0.5)
    return rng.random() < 1.0 / (1.0 + math.exp(-(gold_a - gold_b) / temperature))


def preference_pairs(
    prompt: str, samples: list[tuple[str, float]], temperature: float, rng: random.Random
) -> list[dict]:
    """All pairs of distinct responses of one prompt, each labelled by a Bradley-Terry draw.

    Pairs whose gold scores tie are dropped: the judge states no preference, and a coin-flip label is noise.
    """
    distinct = list(dict.fromkeys(samples))
    rows = []
    for (a, gold_a), (b, gold_b) in itertools.combinations(distinct, 2):
        if a == b or gold_a == gold_b:
            continue
        if not bradley_terry_label(gold_a, gold_b, temperature, rng):
            (a, gold_a), (b, gold_b) = (b, gold_b), (a, gold_a)
        rows.append({"prompt": prompt, "chosen": a, "rejected": b, "gold_chosen": gold_a, "gold_rejected": gold_b})
    return rows


def make_task_data(config: DataConfig, show_progress: bool = True, overwrite: bool = False) -> Path:
    """Write the task's datasets to `config.output_dir`; a complete directory made with this config is reused."""
    return run_stage(config, lambda stage: _make(config, stage, show_progress), overwrite)


def _make(config: DataConfig, stage: Stage, show_progress: bool) -> None:
    task = BUILTIN_TASKS[config.task]
    splits = {name: task.prompts(name) for name in ("train", "dev", "eval", "ood")}
    model = load_causal_lm(config.model, runtime.forward_dtype(config.mixed_precision))
    model = model.to(runtime.accelerator().device)
    tokenizer = load_tokenizer(config.model)
    for name, rows in splits.items():
        check_prompt_lengths(tokenizer, [r["prompt"] for r in rows], config.max_new_tokens, model, f"{name} prompts")
    sampled = {}  # nothing is sampled for the evaluation prompts: no training or tuning data comes from them
    for name in ("train", "dev"):
        texts = [p["prompt"] for p in splits[name]]
        replies = sample_responses(
            model, tokenizer, texts, num_samples=config.samples_per_prompt, max_new_tokens=config.max_new_tokens,
            temperature=config.temperature, top_p=config.top_p, batch_size=config.batch_size,
            seed=derive_seed(config.seed, "data", name),
            show_progress=show_progress, description=f"sampling {name}",
        )  # fmt: skip
        sampled[name] = [[(r, task.gold_score(p, r)) for r in rs] for p, rs in zip(texts, replies, strict=True)]
    rng = random.Random(derive_seed(config.seed, "labels"))
    sft_rows, prefs, samples_rows = [], {"train": [], "dev": []}, []
    train_index = {meta["prompt"]: i for i, meta in enumerate(splits["train"])}
    for name in ("train", "dev"):
        for meta, samples in zip(splits[name], sampled[name], strict=True):
            prompt = meta["prompt"]
            samples_rows += [{"split": name, "prompt": prompt, "response": r, "gold": g} for r, g in samples]
            if name == "dev":
                prefs[name] += preference_pairs(prompt, samples, config.label_temperature, rng)
                continue
            twin = train_index.get(task.counterpart(prompt))
            other = train_index.get(task.other_subject(prompt)) if config.off_subject_samples else None
            borrowed = sampled["train"][twin] if twin is not None else []
            if other is not None:
                borrowed = borrowed + sampled["train"][other][: config.off_subject_samples]
            pooled = list(samples) + [(r, task.gold_score(prompt, r)) for r, _ in borrowed]
            pairs = preference_pairs(prompt, pooled, config.label_temperature, rng)
            rng.shuffle(pairs)
            prefs[name] += pairs[: config.pairs_per_prompt]
            best, gold = max(samples, key=lambda s: s[1])
            sft_rows.append({"prompt": prompt, "completion": best, "gold": gold})
    agreement = statistics.mean(p["gold_chosen"] > p["gold_rejected"] for p in prefs["train"])
    base_gold = {name: statistics.mean(g for s in sampled[name] for _, g in s) for name in sampled}
    sft_gold = statistics.mean(r["gold"] for r in sft_rows)
    out = stage.out
    if not runtime.is_main_process():  # every process drew its share of the samples; the main one writes
        return stage.finish()
    for name, rows in splits.items():
        atomic_write_text(out / f"prompts_{name}.jsonl", _jsonl(rows))
    atomic_write_text(out / "sft.jsonl", _jsonl(sft_rows))
    atomic_write_text(out / "prefs.jsonl", _jsonl(prefs["train"]))
    atomic_write_text(out / "prefs_dev.jsonl", _jsonl(prefs["dev"]))
    atomic_write_text(out / "samples.jsonl", _jsonl(samples_rows))
    sheet = datasheet(
        config, splits, len(sft_rows), len(prefs["train"]), len(prefs["dev"]), agreement, base_gold, sft_gold
    )
    atomic_write_text(out / "datasheet.md", sheet)
    stage.finish(
        {"label_agreement_with_gold": agreement, "base_gold": base_gold, "gold_judge_version": task.GOLD_JUDGE_VERSION}
    )


def datasheet(config, splits, n_sft, n_prefs, n_prefs_dev, agreement, base_gold, sft_gold) -> str:
    n_samples = (len(splits["train"]) + len(splits["dev"])) * config.samples_per_prompt
    kept = "every pair" if config.pairs_per_prompt is None else f"up to {config.pairs_per_prompt} pairs"
    return f"""# Datasheet: built-in task `{config.task}`

Made by `salsa data make` (seed {config.seed}) from the model `{config.model}`; no network, no human labels.

| file | rows | what |
|---|---|---|
| prompts_train.jsonl | {len(splits["train"])} | in-distribution prompts (products, places, services) |
| prompts_dev.jsonl | {len(splits["dev"])} | training-distribution prompts on subjects held out of training: tune here |
| prompts_eval.jsonl | {len(splits["eval"])} | in-distribution prompts, held-out subjects (not in train or dev) |
| prompts_ood.jsonl | {len(splits["ood"])} | out-of-distribution prompts: media and art, different phrasing |
| sft.jsonl | {n_sft} | best-of-{config.samples_per_prompt} samples per train prompt under the gold judge |
| prefs.jsonl | {n_prefs} | {kept} per train prompt from its own, its twin's and off-subject samples |
| prefs_dev.jsonl | {n_prefs_dev} | every pair of a dev prompt's own samples (the reward model's held-out pairs) |
| samples.jsonl | {n_samples} | all samples with their gold scores |

**Sampling.** {config.samples_per_prompt} samples per prompt, temperature {config.temperature},
top-p {config.top_p}, at most {config.max_new_tokens} new tokens, through the model's chat template.

**Gold judge** (version {BUILTIN_TASKS[config.task].GOLD_JUDGE_VERSION}). VADER compound sentiment of the
response, sign-flipped when a negative review was requested, times a form factor (repetition, very short
answers, word lists, unfinished sentences and rambling score low) and an on-subject check; see
`salsa.tasks.reviews`. Mean gold score of the model's samples: train {base_gold["train"]:+.3f},
dev {base_gold["dev"]:+.3f}; of the best-of-{config.samples_per_prompt} demonstrations: {sft_gold:+.3f}.

**Pairs.** Each train prompt pools its own samples, those of its twin (the opposite sentiment) and
{config.off_subject_samples} samples of the same request about the next train subject, all scored under
this prompt; every pair of the pool is labelled. The twin's answers teach polarity, the off-subject
answers (no credit for sentiment under this prompt) that a review must be about what was asked.

**Labels.** For each pair, P(a preferred) = sigmoid((gold_a - gold_b) / {config.label_temperature}); pairs
whose gold scores tie are dropped. The labels agree with the gold ordering on {agreement:.1%} of the train
pairs: the reward model learns from noisy preferences, as in real RLHF. `gold_chosen` / `gold_rejected` are
kept for evaluation only.
"""
