"""RL quality at equal wall time: held-out gold gain over the SFT model, salsa against TRL, each at its best.

Every trainer starts from the same SFT model (`--run`: a `salsa run` directory, or the stages' output, with data/,
sft/sft-0 and reward/model), trains on the same training prompts with the same reward, sampling temperature (1.0),
response length (40 tokens) and KL coefficient (0.05), without gradient checkpointing (passed to TRL explicitly:
its default recomputes activations), and gets the same wall-clock budget on this machine. The budget starts when
the trainer is entered, before it loads anything: the model loads, salsa's reward-normalisation samples and TRL's
setup are spent inside it. Both take at least one step and stop at the step end nearest the budget (`Budget`;
salsa's check before each step is replaced by this one, TRL is stopped by a callback), then save the final policy
(not counted, for either; salsa also measures it on one more rollout, for its log).

    salsa's PPO, GRPO (and RLOO): their defaults; GRPO with TRL's GRPOTrainer's group and update size (8 responses
    to a prompt, 8 sequences a gradient step) over 8 prompts a rollout, RLOO 4 responses to each of 8 prompts
    TRL's GRPOTrainer (and RLOOTrainer): its defaults but the settings above; TRL gets the reward as it comes and
    normalises advantages within each prompt's group, salsa normalises it on its starting policy's samples

Two phases, the second reading the first's choice:

  --phase lr-grid  each trainer at each policy learning rate of `--grid` (one seed, `--grid-minutes`), evaluated on
                   the dev split of the training distribution (data/prompts_dev.jsonl: subjects held out of
                   training, never the evaluation prompts) with the gold judge; each trainer's rate is the one with
                   the largest dev gold gain over SFT. Writes <archive>/lr-grid.json.
  --phase seeds    each trainer at its chosen rate, `--seeds` training seeds, `--minutes`, evaluated on the held-out
                   evaluation prompts: gold gain over SFT per seed and pooled over seeds (salsa's `compare`, seeds
                   and subjects resampled), KL to SFT at the budget (on the evaluation samples, the same for all),
                   and the seed-level test of salsa's best trainer against TRL's best (each "best" by its dev gain
                   in the learning-rate grid): two-sample t, exact permutation p, minimum detectable effect at 80%
                   power. Writes <archive>/seeds-<reward>.json. `--reward learned`: the run's reward model instead
                   of the gold judge, one seed each for the two best trainers (does their order hold?).

Every phase ends by writing <archive>/report.md (printed too): the markdown for docs/benchmarks.md from whatever
phases are done.

    .venv/bin/python benchmarks/rl_quality.py --run runs/salsa --phase lr-grid --out runs/rlq --archive A
    .venv/bin/python benchmarks/rl_quality.py --run runs/salsa --phase seeds --out runs/rlq --archive A
    .venv/bin/python benchmarks/rl_quality.py --run runs/salsa --phase seeds --reward learned --out runs/rlq --archive A

The trained policies stay in `--out` (about 0.5 GB each), each with its record (<its folder>/trained.json). The
archive (`--archive`, default <out>/archive; benchmarks/results/rl-quality is the committed one) holds each run's
record and its evaluation's sample rows, written as soon as the run is evaluated, and the SFT model's rows per split:
a phase reruns from it on another machine, training and evaluating only the runs it lacks, and every table is
computed from it alone. A run is reused when its record has the same budget, rate, seed and reward (delete it, in
both places, to train it again).
"""

from __future__ import annotations

import argparse
import importlib.util
import itertools
import json
import time
from dataclasses import dataclass, field
from pathlib import Path
from unittest import mock

import numpy as np

TEMPERATURE, KL_COEF, RESPONSE_TOKENS, EVAL_SAMPLES = 1.0, 0.05, 40, 4
SALSA_SHAPES = {  # the group methods need several responses per prompt
    "ppo": {},
    "rloo": {"samples_per_prompt": 4, "prompts_per_step": 8},
    "grpo": {"samples_per_prompt": 8, "prompts_per_step": 8, "minibatch_size": 8},
}
TRL_SHAPE: dict = {}  # TRL's defaults: GRPO 8 responses to one prompt a step, RLOO 2 to each of 4
TRAINERS = ("salsa-ppo", "salsa-rloo", "salsa-grpo", "trl-grpo", "trl-rloo")


@dataclass
class Budget:
    """A wall-clock budget that runs from the trainer's entry, asked between steps (`over`). The first step is always
    taken (TRL's callback can only stop a run after a step; salsa's check comes before each), and when it begins
    the preparation ends. A run stops at the step end nearest the budget, as judged from the step just taken: when
    the next step would end farther past it than this moment falls short of it (now + step / 2 >= budget). So a
    trainer with long steps is not given half a step more on average than one with short steps (stopping at the
    first step end past the budget), nor half a step less (stopping at the last one before it)."""

    seconds: float
    began: float = field(default_factory=time.perf_counter)
    first_step: float | None = None
    last_check: float | None = None
    stopped: float | None = None

    def step_begins(self) -> None:
        if self.first_step is None:
            self.first_step = self.last_check = time.perf_counter()

    def over(self) -> bool:
        if self.first_step is None:  # salsa, before its first step
            self.step_begins()
            return False
        now = time.perf_counter()
        step, self.last_check = now - self.last_check, now
        if now + step / 2 - self.began >= self.seconds:
            self.stopped = self.stopped or now
            return True
        return False

    def record(self) -> dict:
        return {
            "budget_s": self.seconds,
            "preparation_s": self.first_step - self.began,
            "stopped_s": self.stopped - self.began,
        }


def salsa_train(algorithm: str, run: Path, reward: str, lr: float, seed: int, budget: Budget, folder: Path) -> dict:
    """A salsa run stopped by `budget` (in place of rl.max_minutes, whose clock starts after the preparation)."""
    from salsa.config import RLConfig
    from salsa.rl import ppo

    config = RLConfig(
        algorithm=algorithm, init=str(run / "sft" / "sft-0"), reward_model=reward, task="reviews", seed=seed,
        prompts=str(run / "data" / "prompts_train.jsonl"), output_dir=str(folder / "rl"), steps=1_000_000,
        save_steps=0, kl_coef=KL_COEF, temperature=TEMPERATURE, max_new_tokens=RESPONSE_TOKENS, learning_rate=lr,
        gradient_checkpointing=False, report_to=[], **SALSA_SHAPES[algorithm],
    )  # fmt: skip
    with mock.patch.object(ppo, "_out_of_time", lambda *_: budget.over()):
        final = ppo.train_rl(config, show_progress=False, overwrite=True)
    steps = len((final.parent / "metrics.jsonl").read_text().splitlines())
    return {"policy": str(final), "steps": steps}


def trl_train(name: str, run: Path, reward_fn, lr: float, seed: int, budget: Budget, folder: Path) -> dict:
    """A TRL trainer stopped by `budget`, with the settings every trainer shares."""
    import datasets
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer, TrainerCallback, TrainingArguments
    from trl import GRPOConfig, GRPOTrainer, RLOOConfig, RLOOTrainer

    class Stop(TrainerCallback):
        def on_step_begin(self, _args, state, control, **kwargs):
            budget.step_begins()

        def on_step_end(self, _args, state, control, **kwargs):
            control.should_training_stop = budget.over()

    def reward(prompts, completions, **kwargs):
        text = [c[-1]["content"] if isinstance(c, list) else c for c in completions]
        prompt_text = [p[-1]["content"] if isinstance(p, list) else p for p in prompts]
        return reward_fn(prompt_text, text).tolist()

    path = str(run / "sft" / "sft-0")
    rows = [{"prompt": [{"role": "user", "content": json.loads(line)["prompt"]}]}
            for line in (run / "data" / "prompts_train.jsonl").open()]  # fmt: skip
    # Recent transformers name it activation_checkpointing (the old name deprecated); 5.21 and older only the old one.
    no_checkpointing = {
        "activation_checkpointing"
        if hasattr(TrainingArguments, "activation_checkpointing")
        else "gradient_checkpointing": False
    }
    config_cls, trainer_cls = (RLOOConfig, RLOOTrainer) if name == "rloo" else (GRPOConfig, GRPOTrainer)
    config = config_cls(
        output_dir=str(folder / "trl"), max_steps=1_000_000, max_completion_length=RESPONSE_TOKENS,
        temperature=TEMPERATURE, beta=KL_COEF, learning_rate=lr, seed=seed,
        report_to="none", save_strategy="no", logging_strategy="no", disable_tqdm=True, use_cpu=True, bf16=False,
        **no_checkpointing, **TRL_SHAPE,
    )  # fmt: skip
    tokenizer = AutoTokenizer.from_pretrained(path)
    trainer = trainer_cls(
        model=AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32), reward_funcs=reward, args=config,
        train_dataset=datasets.Dataset.from_list(rows), processing_class=tokenizer, callbacks=[Stop()],
    )  # fmt: skip
    trainer.train()
    final = folder / "final"
    trainer.model.save_pretrained(final)
    tokenizer.save_pretrained(final)
    return {"policy": str(final), "steps": trainer.state.global_step}


def train(trainer: str, args, reward: str, lr: float, seed: int, minutes: float, folder: Path) -> dict:
    """One trained policy and its record (<folder>/trained.json), reused when one with these settings is there."""
    from salsa.io import atomic_write_json
    from salsa.scoring import gold_reward, reward_function
    from salsa.tasks import reviews

    settings = {"trainer": trainer, "reward": reward, "learning_rate": lr, "seed": seed, "minutes": minutes}
    done = folder / "trained.json"
    if done.exists() and _same_settings(json.loads(done.read_text()), settings):
        return json.loads(done.read_text())
    kind, algorithm = trainer.split("-")
    model = str(args.run / "reward" / "model")
    budget = Budget(60 * minutes)  # from here: every load, every normalisation sample, every bit of setup
    if kind == "salsa":
        trained = salsa_train(algorithm, args.run, "gold" if reward == "gold" else model, lr, seed, budget, folder)
    else:
        reward_fn = gold_reward(reviews.gold_score) if reward == "gold" else reward_function(model)
        trained = trl_train(algorithm, args.run, reward_fn, lr, seed, budget, folder)
    record = {**settings, **trained, **budget.record()}
    atomic_write_json(done, record)
    print(f"{trainer} lr {lr:g} seed {seed}: {record['steps']} steps, stopped at {record['stopped_s'] / 60:.2f} min "
          f"({record['preparation_s']:.0f} s of it preparation)", flush=True)  # fmt: skip
    return record


def _same_settings(record: dict, settings: dict) -> bool:
    return {k: v for k, v in record.items() if k in settings} == settings


def evaluate_policies(run: Path, split: str, policies: dict[str, list[str]], out: Path) -> list[dict]:
    """The sample rows of `policies` on one prompt split (4 responses a prompt at temperature 0.7), scored by the
    gold judge, with each response's KL to SFT. Every policy draws sample s of prompt i with the same seed whatever
    else is evaluated with it (evaluate's common random numbers), so rows drawn in separate evaluations pool."""
    from salsa.config import EvalConfig
    from salsa.evaluate import evaluate
    from salsa.io import read_jsonl

    sft = str(run / "sft" / "sft-0")
    config = EvalConfig(
        policies=policies, comparisons=[], prompts=str(run / "data" / f"prompts_{split}.jsonl"), ood_prompts=None,
        reward_model=None, sft_model=sft, soup_model=None, samples_per_prompt=EVAL_SAMPLES,
        max_new_tokens=RESPONSE_TOKENS, matched_kl=False, output_dir=str(out),
    )  # fmt: skip
    evaluate(config, show_progress=False, overwrite=True)
    return read_jsonl(out / "samples.jsonl")


# The archive (--archive, committed): each run's record and its evaluation's sample rows, written as soon as the run
# is evaluated, so that a phase resumes from it on another machine (the policies themselves stay in --out); every
# table is computed from the archive alone.


def _write_rows(path: Path, rows: list[dict]) -> None:
    """Rows as a study archives them (`salsa.study._write`: gzip-compressed JSONL, the same rows to the same bytes)."""
    from salsa.study import _write

    _write(path.with_suffix(""), "".join(json.dumps(row) + "\n" for row in rows))  # x.jsonl -> x.jsonl.gz


def _read_rows(path: Path) -> list[dict]:
    from salsa.study import _read  # decompresses within a bound, as for a study's archive

    return [json.loads(line) for line in _read(path).splitlines()]


def sft_rows(args, split: str) -> list[dict]:
    """The SFT model's sample rows on a split, archived at <archive>/sft-<split>.jsonl.gz."""
    path = args.archive / f"sft-{split}.jsonl.gz"
    if not path.exists():
        path.parent.mkdir(parents=True, exist_ok=True)
        _write_rows(path, evaluate_policies(args.run, split, {"sft": [str(args.run / "sft" / "sft-0")]},
                                            args.out / f"eval-sft-{split}"))  # fmt: skip
    return _read_rows(path)


def trained_and_evaluated(args, trainer: str, reward: str, lr: float, seed: int, minutes: float, phase: str,
                          split: str) -> tuple[dict, list[dict]]:  # fmt: skip
    """One run's record and its policy's sample rows on `split`: from the archive (<archive>/<phase>/<name>.json and
    .jsonl.gz) when it holds this run, else trained (or its policy reused from --out), evaluated and archived."""
    from salsa.io import atomic_write_json, read_json

    name = f"{trainer}-lr{lr:g}" if phase == "lr-grid" else f"{trainer}-seed{seed}"
    record_file, rows_file = args.archive / phase / f"{name}.json", args.archive / phase / f"{name}.jsonl.gz"
    settings = {"trainer": trainer, "reward": reward, "learning_rate": lr, "seed": seed, "minutes": minutes}
    if record_file.exists() and _same_settings(read_json(record_file), settings):
        return read_json(record_file), _read_rows(rows_file)
    folder = args.out / phase / name
    record = train(trainer, args, reward, lr, seed, minutes, folder)
    rows = evaluate_policies(args.run, split, {name: [record["policy"]]}, folder / "eval")
    record_file.parent.mkdir(parents=True, exist_ok=True)
    _write_rows(rows_file, rows)
    # The starting model's digest: a phase resumed on another machine, whose rebuilt base may differ by float
    # rounding, says so (`bases`).
    record = {**{k: v for k, v in record.items() if k != "policy"}, "sft_sha256": sft_digest(args.run)}
    atomic_write_json(record_file, record)  # last: the run's marker
    return read_json(record_file), rows


def sft_digest(run: Path) -> str:
    from salsa.io import sha256_file

    return sha256_file(run / "sft" / "sft-0" / "model.safetensors")


def bases(records: list[dict]) -> list[str]:
    """The distinct starting models (sft_sha256, first 12 digits) of these runs, in order of appearance."""
    return list(dict.fromkeys(record["sft_sha256"][:12] for record in records))


def pooled_samples(sft: list[dict], runs: dict[str, list[list[dict]]]) -> list[dict]:
    """SFT's rows and each policy's, named by `runs`' keys, its seeds in order (`seed_index`)."""
    rows = [{**r, "policy": "sft", "seed_index": 0} for r in sft]
    for name, seeds in runs.items():
        rows += [{**r, "policy": name, "seed_index": i} for i, seed_rows in enumerate(seeds) for r in seed_rows]
    return rows


def stats_settings() -> dict:
    """The bootstrap settings of salsa's evaluation at its defaults."""
    from salsa.config import EvalConfig

    defaults = EvalConfig()
    return {"num_samples": defaults.bootstrap_samples, "confidence": defaults.confidence, "seed": defaults.seed}


def over_sft(samples: list[dict], name: str) -> dict:
    """A policy's gold gain over SFT (salsa's `compare`: its seeds and the subjects resampled) and its KL to SFT,
    each with a 95% interval."""
    from salsa.evaluation.stats import compare, mean_with_interval
    from salsa.evaluation.summary import _score_matrix, clustered_stats

    clusters = clustered_stats(stats_settings(), [r for r in samples if r["policy"] == "sft"], "reviews")
    gold, sft = (_score_matrix(samples, policy, "in_distribution", "gold") for policy in (name, "sft"))
    gain = compare(gold, np.repeat(sft, len(gold), axis=0), **clusters)  # SFT paired with every seed
    kl = mean_with_interval(_score_matrix(samples, name, "in_distribution", "kl_sft"), **clusters)
    return {"gold_gain": gain["mean_difference"], "ci": list(gain["ci"]["mean_difference"]),
            "kl_sft": kl["mean"], "kl_sft_ci": list(kl["ci"])}  # fmt: skip


def lr_grid(args) -> dict:
    """Every trainer at every rate of the grid (seed 0), its dev gold gain over SFT, and the rate that maximises it."""
    from salsa.io import atomic_write_json

    sft = sft_rows(args, "dev")
    runs = {f"{trainer}@{lr:g}": trained_and_evaluated(args, trainer, "gold", lr, 0, args.grid_minutes, "lr-grid",
                                                       "dev")
            for trainer in args.trainers for lr in args.grid}  # fmt: skip
    samples = pooled_samples(sft, {name: [rows] for name, (_, rows) in runs.items()})
    rows = [
        {**{k: record[k] for k in ("trainer", "learning_rate", "steps", "preparation_s", "stopped_s")},
         **over_sft(samples, name)}
        for name, (record, _) in runs.items()
    ]  # fmt: skip
    chosen = {}
    for trainer in args.trainers:
        best = max((r for r in rows if r["trainer"] == trainer), key=lambda r: r["gold_gain"])
        chosen[trainer] = {"learning_rate": best["learning_rate"], "dev_gold_gain": best["gold_gain"]}
    grid = {"split": "dev", "minutes": args.grid_minutes, "grid": args.grid, "rows": rows, "chosen": chosen,
            "bases": bases([record for record, _ in runs.values()])}  # fmt: skip
    atomic_write_json(args.archive / "lr-grid.json", grid)
    return grid


def best_of(chosen: dict, kind: str) -> str | None:
    """The trainer of one library (salsa | trl) with the largest dev gain at its chosen rate."""
    mine = [t for t in chosen if t.startswith(kind + "-")]
    return max(mine, key=lambda t: chosen[t]["dev_gold_gain"]) if mine else None


def seeds_phase(args) -> dict:
    """Each trainer at its chosen rate over `--seeds` seeds (gold), or the two best for one seed (learned), on the
    evaluation prompts; the seed-level test of salsa's best against TRL's best."""
    from salsa.evaluation.summary import _score_matrix
    from salsa.io import atomic_write_json

    grid_file = args.archive / "lr-grid.json"
    if not grid_file.exists():
        raise SystemExit(f"no {grid_file}: run --phase lr-grid first (with the same --archive)")
    chosen = json.loads(grid_file.read_text())["chosen"]
    best = {kind: best_of(chosen, kind) for kind in ("salsa", "trl")}
    if args.reward == "learned":
        trainers, seeds = [t for t in best.values() if t], [0]
    else:
        trainers, seeds = [t for t in args.trainers if t in chosen], list(range(args.seeds))
    sft = sft_rows(args, "eval")
    phase = f"seeds-{args.reward}"
    runs: dict[str, list] = {trainer: [] for trainer in trainers}
    for seed in seeds:  # one seed of every trainer at a time: a phase cut short leaves them balanced
        for trainer in trainers:
            lr = chosen[trainer]["learning_rate"]
            runs[trainer].append(trained_and_evaluated(args, trainer, args.reward, lr, seed, args.minutes, phase,
                                                       "eval"))  # fmt: skip
    samples = pooled_samples(sft, {trainer: [rows for _, rows in done] for trainer, done in runs.items()})
    sft_gold = _score_matrix(samples, "sft", "in_distribution", "gold")[0]
    rows = {}
    for trainer, done in runs.items():
        records = [record for record, _ in done]
        gold, kl = (_score_matrix(samples, trainer, "in_distribution", key) for key in ("gold", "kl_sft"))
        rows[trainer] = {
            "learning_rate": chosen[trainer]["learning_rate"], **over_sft(samples, trainer),
            "per_seed_gain": [float((g - sft_gold).mean()) for g in gold],
            "per_seed_kl": [float(k.mean()) for k in kl],
            **{key: [r[key] for r in records] for key in ("seed", "steps", "preparation_s", "stopped_s")},
        }  # fmt: skip
    summary = {"reward": args.reward, "minutes": args.minutes, "best": best, "trainers": rows,
               "bases": bases([record for done in runs.values() for record, _ in done])}  # fmt: skip
    if args.reward == "gold" and best["salsa"] in rows and best["trl"] in rows:  # learned: one seed, no test
        summary["test"] = best_against_best(samples, best["salsa"], best["trl"], rows)
    atomic_write_json(args.archive / f"{phase}.json", summary)
    return summary


def best_against_best(samples: list[dict], a: str, b: str, rows: dict) -> dict:
    """salsa's best (A) minus TRL's best (B): the pooled difference with an interval that draws each trainer's seeds
    on their own (independent runs) and the subjects once for both, and the two-sample tests on the per-seed gains."""
    from salsa.evaluation.stats import contrast_with_interval
    from salsa.evaluation.summary import _score_matrix, clustered_stats

    rows_a = [r for r in samples if r["policy"] == a]
    clusters = clustered_stats(stats_settings(), rows_a, "reviews")
    scores = [_score_matrix(samples, name, "in_distribution", "gold") for name in (a, b)]
    both = contrast_with_interval(scores, [1.0, -1.0], **clusters)
    return {"a": a, "b": b, "gold_difference": both["mean"], "ci": list(both["ci"]),
            **two_sample_tests(rows[a]["per_seed_gain"], rows[b]["per_seed_gain"])}  # fmt: skip


def two_sample_tests(gains_a: list[float], gains_b: list[float]) -> dict:
    """Per-seed gains of two trainers trained independently: Student's two-sample t (pooled variance; salsa's
    `pooled_contrast_test` of the contrast A - B, which also gives the minimum detectable effect at 80% power), and
    the exact permutation p over every relabelling of the seeds into two groups of these sizes (two-sided, on the
    difference of means; its smallest value is 2 / C(n_a + n_b, n_a), 0.1 for 3 against 3)."""
    from salsa.evaluation.stats import pooled_contrast_test

    tested = pooled_contrast_test([np.array(gains_a), np.array(gains_b)], [1.0, -1.0])
    pooled, observed = np.array([*gains_a, *gains_b]), abs(np.mean(gains_a) - np.mean(gains_b))
    splits = list(itertools.combinations(range(len(pooled)), len(gains_a)))
    extreme = 0
    for group in splits:
        mask = np.zeros(len(pooled), dtype=bool)
        mask[list(group)] = True
        extreme += abs(pooled[mask].mean() - pooled[~mask].mean()) >= observed - 1e-12
    return {"t": tested["t"], "df": tested["df"], "t_p": tested["p"], "permutation_p": float(extreme / len(splits)),
            "min_permutation_p": 2 / len(splits), "mde": tested["mde"]}  # fmt: skip


def _signed(x: float | None) -> str:
    return "-" if x is None else f"{x:+.3f}"


def _bases_note(table: dict) -> list[str]:
    if len(table["bases"]) < 2:
        return []
    digests = ", ".join(table["bases"])
    return ["", f"These runs started from {len(table['bases'])} builds of the base (SFT model sha256 {digests}): "
            "a base rebuilt on another machine differs from the first by float rounding."]  # fmt: skip


def lr_table(grid: dict) -> str:
    lines = [
        f"Learning-rate grid (one seed, {grid['minutes']:g} min each; gold gain over SFT on the dev split):",
        "",
        "| trainer | policy lr | steps | preparation | dev gold over SFT [95% CI] | KL to SFT | chosen |",
        "|---|---|---|---|---|---|---|",
    ]
    for r in grid["rows"]:
        mark = "**yes**" if grid["chosen"][r["trainer"]]["learning_rate"] == r["learning_rate"] else ""
        lines.append(
            f"| {r['trainer']} | {r['learning_rate']:g} | {r['steps']} | {r['preparation_s']:.0f} s | "
            f"{_signed(r['gold_gain'])} [{_signed(r['ci'][0])}, {_signed(r['ci'][1])}] | {r['kl_sft']:.2f} | {mark} |"
        )
    return "\n".join(lines + _bases_note(grid)) + "\n"


def seeds_table(summary: dict) -> str:
    seeds = max(len(r["seed"]) for r in summary["trainers"].values())
    lines = [
        f"{summary['reward'].capitalize()} reward, {seeds} seed{'s' * (seeds > 1)} per trainer at its chosen rate, "
        f"{summary['minutes']:g} min each (preparation included); gold gain over SFT on the evaluation prompts, "
        "pooled over seeds (95% CI: seeds and subjects resampled), and KL to SFT at the budget:",
        "",
        "| trainer | policy lr | steps | preparation | stopped | gold over SFT [95% CI] | per seed | KL to SFT |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for trainer, r in summary["trainers"].items():
        per_seed = ", ".join(_signed(g) for g in r["per_seed_gain"])
        lines.append(
            f"| {trainer} | {r['learning_rate']:g} | {'/'.join(map(str, r['steps']))} | "
            f"{np.mean(r['preparation_s']):.0f} s | {np.mean(r['stopped_s']) / 60:.1f} min | "
            f"{_signed(r['gold_gain'])} [{_signed(r['ci'][0])}, {_signed(r['ci'][1])}] | {per_seed} | "
            f"{r['kl_sft']:.2f} [{r['kl_sft_ci'][0]:.2f}, {r['kl_sft_ci'][1]:.2f}] |"
        )
    test = summary.get("test")
    if test:
        p = "-" if test["t_p"] is None else f"{test['t_p']:.3f}"
        mde = "-" if test["mde"] is None else f"{test['mde']:.3f}"
        lines += [
            "",
            f"salsa's best ({test['a']}) minus TRL's best ({test['b']}), each the best of its library on the dev "
            f"split: {_signed(test['gold_difference'])} [{_signed(test['ci'][0])}, {_signed(test['ci'][1])}] gold "
            f"(each trainer's seeds and the subjects resampled); over seeds, two-sample t({test['df']}) p = {p}, "
            f"exact permutation p = {test['permutation_p']:.3f} (the smallest possible "
            f"{test['min_permutation_p']:.3f}), minimum detectable effect at 80% power {mde}.",
        ]
    if summary["reward"] == "learned" and len(summary["trainers"]) == 2:
        (high, h), (low, lo) = sorted(summary["trainers"].items(), key=lambda item: -item[1]["gold_gain"])
        lines += ["", f"Trained on the learned reward model (one seed each), {high} gains more held-out gold than "
                  f"{low} ({_signed(h['gold_gain'])} against {_signed(lo['gold_gain'])})."]  # fmt: skip
    return "\n".join(lines + _bases_note(summary)) + "\n"


def report(archive: Path) -> str:
    """The markdown for docs/benchmarks.md from the phases archived so far, written to <archive>/report.md."""
    from salsa.io import atomic_write_text, read_json

    parts = [lr_table(read_json(archive / "lr-grid.json"))] if (archive / "lr-grid.json").exists() else []
    for reward in ("gold", "learned"):
        if (archive / f"seeds-{reward}.json").exists():
            parts.append(seeds_table(read_json(archive / f"seeds-{reward}.json")))
    text = "\n".join(parts)
    atomic_write_text(archive / "report.md", text)
    return text


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--run", type=Path, required=True, help="a run directory with data/, sft/sft-0, reward/model")
    parser.add_argument("--phase", choices=("lr-grid", "seeds"), required=True)
    parser.add_argument("--reward", choices=("gold", "learned"), default="gold", help="seeds: the training reward")
    parser.add_argument("--grid", default="1e-5,3e-5,1e-4", help="lr-grid: the policy learning rates")
    parser.add_argument("--grid-minutes", type=float, default=5.0, help="lr-grid: each run's budget")
    parser.add_argument("--seeds", type=int, default=3, help="seeds: training seeds per trainer (gold reward)")
    parser.add_argument("--minutes", type=float, default=10.0, help="seeds: each run's budget")
    parser.add_argument("--out", type=Path, default=Path("runs/rl-quality"), help="the trained policies")
    parser.add_argument(
        "--archive", type=Path, help="each run's record and samples, and the tables (default <out>/archive)"
    )
    parser.add_argument("--trainers", default="salsa-ppo,salsa-grpo,trl-grpo", help=f"any of {', '.join(TRAINERS)}")
    args = parser.parse_args(argv)
    args.trainers, args.grid = args.trainers.split(","), [float(x) for x in args.grid.split(",")]
    unknown = sorted(set(args.trainers) - set(TRAINERS))
    if unknown:
        parser.error(f"unknown trainer(s) {', '.join(unknown)}; choose from {', '.join(TRAINERS)}")
    if any(t.startswith("trl-") for t in args.trainers) and importlib.util.find_spec("trl") is None:
        parser.error('TRL is not installed: pip install "trl>=1.16,<2" (the bench extra), or leave out trl- trainers')
    import transformers

    import salsa.evaluate  # noqa: F401  (imports are the process's, not a trainer's: none in any budget)
    import salsa.rl.ppo  # noqa: F401

    if any(t.startswith("trl-") for t in args.trainers):
        import trl  # noqa: F401

    transformers.logging.set_verbosity_error()
    transformers.logging.disable_progress_bar()
    args.archive = args.archive or args.out / "archive"
    args.out.mkdir(parents=True, exist_ok=True)
    if args.phase == "lr-grid":
        lr_grid(args)
    else:
        seeds_phase(args)
    print(report(args.archive))


if __name__ == "__main__":
    main()
