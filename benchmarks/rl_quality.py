"""RL quality at equal wall time: held-out gold gain over the SFT model, salsa against TRL, each at its best.

Every trainer starts from the same SFT model (`--run`: a `salsa run` directory, or the stages' output, with data/,
sft/sft-0 and reward/model), trains on the same training prompts with the same reward, sampling temperature (1.0),
response length (40 tokens) and KL coefficient (0.05), without gradient checkpointing (passed to TRL explicitly:
its default recomputes activations), and gets the same wall-clock budget on this machine. The budget starts when
the trainer is entered, before it loads anything: the model loads, salsa's reward-normalisation samples and TRL's
setup are spent inside it. Both take at least one step and stop at the first step that ends after the budget
(salsa's check before each step is replaced by this one, TRL is stopped by a callback), then save the final policy
(not counted, for either; salsa also measures it on one more rollout, for its log).

    salsa's PPO, GRPO (and RLOO): their defaults; GRPO with TRL's GRPOTrainer's group and update size (8 responses
    to a prompt, 8 sequences a gradient step) over 8 prompts a rollout, RLOO 4 responses to each of 8 prompts
    TRL's GRPOTrainer (and RLOOTrainer): its defaults but the settings above; TRL gets the reward as it comes and
    normalises advantages within each prompt's group, salsa normalises it on its starting policy's samples

Two phases, the second reading the first's choice:

  --phase lr-grid  each trainer at each policy learning rate of `--grid` (one seed, `--grid-minutes`), evaluated on
                   the dev split of the training distribution (data/prompts_dev.jsonl: subjects held out of
                   training, never the evaluation prompts) with the gold judge; each trainer's rate is the one with
                   the largest dev gold gain over SFT. Writes <out>/lr-grid.json and lr-grid.md.
  --phase seeds    each trainer at its chosen rate, `--seeds` training seeds, `--minutes`, evaluated on the held-out
                   evaluation prompts: gold gain over SFT per seed and pooled over seeds (salsa's `compare`, seeds
                   and subjects resampled), KL to SFT at the budget (on the evaluation samples, the same for all),
                   and the seed-level test of salsa's best trainer against TRL's best (each "best" by its dev gain
                   in the learning-rate grid): two-sample t, exact permutation p, minimum detectable effect at 80%
                   power. Writes <out>/seeds-<reward>.json. `--reward learned`: the run's reward model instead of
                   the gold judge, one seed each for the two best trainers (does their order hold?).

Every phase ends by writing <out>/report.md (printed too): the markdown for docs/benchmarks.md from whatever
phases are done.

    .venv/bin/python benchmarks/rl_quality.py --run runs/salsa --phase lr-grid --grid-minutes 5 --out runs/rlq
    .venv/bin/python benchmarks/rl_quality.py --run runs/salsa --phase seeds --seeds 3 --minutes 10 --out runs/rlq
    .venv/bin/python benchmarks/rl_quality.py --run runs/salsa --phase seeds --reward learned --out runs/rlq

Each trained policy's record (budget, preparation, steps) is <its folder>/trained.json; a rerun with the same
`--out` reuses every run whose record has the same budget, rate, seed and reward (delete it to train it again).
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
    the preparation ends."""

    seconds: float
    began: float = field(default_factory=time.perf_counter)
    first_step: float | None = None
    stopped: float | None = None

    def step_begins(self) -> None:
        self.first_step = self.first_step or time.perf_counter()

    def over(self) -> bool:
        if self.first_step is None:  # salsa, before its first step
            self.step_begins()
            return False
        now = time.perf_counter()
        if now - self.began >= self.seconds:
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
    if done.exists() and {k: v for k, v in json.loads(done.read_text()).items() if k in settings} == settings:
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


def evaluate_policies(run: Path, split: str, policies: dict[str, list[str]], out: Path) -> tuple[dict, list[dict]]:
    """Gold of every policy and of the SFT model on one prompt split (4 responses a prompt at temperature 0.7, the
    same sampling seeds for every policy), each policy's KL to SFT on those samples, and `compare` against SFT
    (seeds and subjects resampled); results.json and the sample rows."""
    from salsa.config import EvalConfig
    from salsa.evaluate import evaluate
    from salsa.io import read_jsonl

    sft = str(run / "sft" / "sft-0")
    config = EvalConfig(
        policies={**policies, "sft": [sft]}, comparisons=[f"{name}:sft" for name in policies],
        prompts=str(run / "data" / f"prompts_{split}.jsonl"), ood_prompts=None, reward_model=None, sft_model=sft,
        soup_model=None, samples_per_prompt=EVAL_SAMPLES, max_new_tokens=RESPONSE_TOKENS, matched_kl=False,
        output_dir=str(out),
    )  # fmt: skip
    evaluate(config, show_progress=False, overwrite=True)
    return json.loads((out / "results.json").read_text()), read_jsonl(out / "samples.jsonl")


def gold_over_sft(results: dict, name: str) -> dict:
    c = next(c for c in results["comparisons"] if (c["a"], c["b"], c["judge"]) == (name, "sft", "gold"))
    return {"gold_gain": c["mean_difference"], "ci": list(c["ci"]["mean_difference"])}


def lr_grid(args) -> dict:
    """Every trainer at every rate of the grid (seed 0), its dev gold gain over SFT, and the rate that maximises it."""
    from salsa.io import atomic_write_json, atomic_write_text

    runs = {}
    for trainer in args.trainers:
        for lr in args.grid:
            folder = args.out / "lr-grid" / f"{trainer}-lr{lr:g}"
            runs[f"{trainer}@{lr:g}"] = train(trainer, args, "gold", lr, 0, args.grid_minutes, folder)
    policies = {name: [record["policy"]] for name, record in runs.items()}
    results, _ = evaluate_policies(args.run, "dev", policies, args.out / "lr-grid" / "eval-dev")
    rows = [
        {**{k: record[k] for k in ("trainer", "learning_rate", "steps", "preparation_s", "stopped_s")},
         **gold_over_sft(results, name), "kl_sft": results["policies"][name]["kl_sft"]["mean"]}
        for name, record in runs.items()
    ]  # fmt: skip
    chosen = {}
    for trainer in args.trainers:
        best = max((r for r in rows if r["trainer"] == trainer), key=lambda r: r["gold_gain"])
        chosen[trainer] = {"learning_rate": best["learning_rate"], "dev_gold_gain": best["gold_gain"]}
    grid = {"split": "dev", "minutes": args.grid_minutes, "grid": args.grid, "rows": rows, "chosen": chosen}
    atomic_write_json(args.out / "lr-grid.json", grid)
    atomic_write_text(args.out / "lr-grid.md", lr_table(grid))
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

    grid_file = args.out / "lr-grid.json"
    if not grid_file.exists():
        raise SystemExit(f"no {grid_file}: run --phase lr-grid first (with the same --out)")
    chosen = json.loads(grid_file.read_text())["chosen"]
    best = {kind: best_of(chosen, kind) for kind in ("salsa", "trl")}
    if args.reward == "learned":
        trainers, seeds = [t for t in best.values() if t], [0]
    else:
        trainers, seeds = [t for t in args.trainers if t in chosen], list(range(args.seeds))
    folder = args.out / f"seeds-{args.reward}"
    runs = {
        trainer: [train(trainer, args, args.reward, chosen[trainer]["learning_rate"], seed, args.minutes,
                        folder / f"{trainer}-seed{seed}") for seed in seeds]
        for trainer in trainers
    }  # fmt: skip
    policies = {trainer: [r["policy"] for r in records] for trainer, records in runs.items()}
    results, samples = evaluate_policies(args.run, "eval", policies, folder / "eval")
    sft = _score_matrix(samples, "sft", "in_distribution", "gold")
    rows = {}
    for trainer, records in runs.items():
        gold, kl = (_score_matrix(samples, trainer, "in_distribution", key) for key in ("gold", "kl_sft"))
        rows[trainer] = {
            "learning_rate": chosen[trainer]["learning_rate"], **gold_over_sft(results, trainer),
            "per_seed_gain": [float((g - sft[0]).mean()) for g in gold],
            "kl_sft": results["policies"][trainer]["kl_sft"]["mean"],
            "kl_sft_ci": list(results["policies"][trainer]["kl_sft"]["ci"]),
            "per_seed_kl": [float(k.mean()) for k in kl],
            **{key: [r[key] for r in records] for key in ("seed", "steps", "preparation_s", "stopped_s")},
        }  # fmt: skip
    summary = {"reward": args.reward, "minutes": args.minutes, "best": best, "trainers": rows}
    if args.reward == "gold" and best["salsa"] in rows and best["trl"] in rows:  # learned: one seed, no test
        summary["test"] = best_against_best(samples, best["salsa"], best["trl"], rows)
    atomic_write_json(args.out / f"seeds-{args.reward}.json", summary)
    return summary


def best_against_best(samples: list[dict], a: str, b: str, rows: dict) -> dict:
    """salsa's best (A) minus TRL's best (B): the pooled difference with an interval that draws each trainer's seeds
    on their own (independent runs) and the subjects once for both, and the two-sample tests on the per-seed gains."""
    from salsa.evaluation.stats import contrast_with_interval
    from salsa.evaluation.summary import _score_matrix, clustered_stats

    rows_a = [r for r in samples if r["policy"] == a]
    clusters = clustered_stats({"num_samples": 2000, "confidence": 0.95, "seed": 0}, rows_a, "reviews")
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
    return "\n".join(lines) + "\n"


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
    return "\n".join(lines) + "\n"


def report(out: Path) -> str:
    """The markdown for docs/benchmarks.md from the phases done so far, written to <out>/report.md."""
    from salsa.io import atomic_write_text

    parts = [(out / "lr-grid.md").read_text()] if (out / "lr-grid.md").exists() else []
    for reward in ("gold", "learned"):
        if (out / f"seeds-{reward}.json").exists():
            parts.append(seeds_table(json.loads((out / f"seeds-{reward}.json").read_text())))
    text = "\n".join(parts)
    atomic_write_text(out / "report.md", text)
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
    parser.add_argument("--out", type=Path, default=Path("runs/rl-quality"))
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
    args.out.mkdir(parents=True, exist_ok=True)
    if args.phase == "lr-grid":
        lr_grid(args)
    else:
        seeds_phase(args)
    print(report(args.out))


if __name__ == "__main__":
    main()
