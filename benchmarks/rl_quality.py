"""RL quality at equal wall time: held-out gold gain over the SFT model, salsa against TRL.

Every trainer starts from the same SFT model, trains on the same training prompts with the same reward and gets
the same wall-clock budget (`--minutes`) on this machine; its policy is saved at a third, two thirds and all of the
budget. Every saved policy then answers the held-out in-distribution evaluation prompts (4 responses per prompt,
temperature 0.7, the same seeds for every policy), and the report gives each one's mean gold score minus the SFT
model's with a 95% bootstrap interval over prompts, against the wall time it had trained.

    salsa's PPO, RLOO and GRPO, with their defaults (the RL budget replaced by the wall-clock budget); RLOO with 4
    responses to each of 8 prompts a rollout, GRPO with TRL's GRPOTrainer's group and update size (8 responses
    to a prompt, 8 sequences a gradient step) over 8 prompts a rollout
    TRL's GRPOTrainer and RLOOTrainer, with their defaults, the same sampling (temperature 1, the same maximum
    response length), the same KL coefficient and, for fairness, the same learning rate as salsa's policy

The reward is the task's gold judge (`--reward gold`: can RL optimise the true objective at all?) or the reward
model (`--reward model`). salsa normalises it on its starting policy's samples (its default); TRL's trainers get it
as it comes, and normalise advantages within each prompt's group themselves. The SFT model,
reward model and prompts come from a `salsa run` directory or the stages' own output (`--run`, with data/, sft/sft-0,
reward/model).

    .venv/bin/python benchmarks/rl_quality.py --run runs/dev --reward gold --minutes 20

Each trainer's saved policies are listed in `<out>/<reward>/<trainer>.json` when it finishes; a rerun with the same
`--out` and `--minutes` reuses the trainers listed there and trains only the others (delete the file to train one
again).
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import time
from pathlib import Path

import torch

TEMPERATURE, KL_COEF = 1.0, 0.05


def salsa_run(algorithm: str, args, out: Path, rewards) -> list[tuple[float, str]]:
    """A salsa run under the wall-clock budget; its policy snapshots at the checkpoints of the budget."""
    from salsa.config import RLConfig
    from salsa.rl.ppo import train_rl
    from salsa.snapshots import list_snapshots, load_snapshot

    # The group methods need several responses per prompt: RLOO 4 to each of 8 prompts; GRPO TRL's GRPOTrainer's
    # defaults (8 responses to a prompt, 8 sequences an update), 8 prompts a rollout.
    extra = {
        "rloo": {"samples_per_prompt": 4, "prompts_per_step": 8},
        "grpo": {"samples_per_prompt": 8, "prompts_per_step": 8, "minibatch_size": 8},
    }.get(algorithm, {})
    config = RLConfig(
        algorithm=algorithm, init=str(args.run / "sft" / "sft-0"), reward_model=rewards, task="reviews",
        prompts=str(args.run / "data" / "prompts_train.jsonl"), output_dir=str(out / f"salsa-{algorithm}"),
        steps=10_000, max_minutes=args.minutes, snapshot_steps=2, save_steps=0, kl_coef=KL_COEF, **extra,
    )  # fmt: skip
    final = train_rl(config, show_progress=False)
    elapsed = {r["step"]: r["elapsed_s"] for r in map(json.loads, (final.parent / "metrics.jsonl").open())}
    saved = []
    for fraction in (1 / 3, 2 / 3):
        steps = [s for s in list_snapshots(final.parent) if elapsed[s] <= fraction * 60 * args.minutes]
        if steps:
            path = out / f"salsa-{algorithm}-{steps[-1]}"
            load_snapshot(final.parent, steps[-1]).save_pretrained(path)
            _copy_tokenizer(final, path)
            saved.append((elapsed[steps[-1]], str(path)))
    saved.append((max(elapsed.values()), str(final)))
    for snapshot in list_snapshots(final.parent).values():
        snapshot.unlink()  # full-weight snapshots every other step: ~0.5 GB each
    return saved


def _copy_tokenizer(source: Path, target: Path) -> None:
    from transformers import AutoTokenizer

    AutoTokenizer.from_pretrained(source).save_pretrained(target)


def trl_run(trainer_name: str, args, out: Path, reward_fn) -> list[tuple[float, str]]:
    """A TRL trainer under the same budget, saving its policy at the same fractions of it."""
    import datasets
    from transformers import AutoModelForCausalLM, AutoTokenizer, TrainerCallback
    from trl import GRPOConfig, GRPOTrainer, RLOOConfig, RLOOTrainer

    from salsa.config import RLConfig

    rows = [{"prompt": [{"role": "user", "content": json.loads(line)["prompt"]}]}
            for line in (args.run / "data" / "prompts_train.jsonl").open()]  # fmt: skip
    path = str(args.run / "sft" / "sft-0")
    folder = out / f"trl-{trainer_name}"
    saved: list[tuple[float, str]] = []

    class Budget(TrainerCallback):
        """Save at a third and two thirds of the budget; stop (and save) at its end."""

        def on_train_begin(self, _args, state, control, **kwargs):
            self.began, self.marks = time.perf_counter(), [args.minutes * 60 / 3, args.minutes * 60 * 2 / 3]

        def on_step_end(self, _args, state, control, model=None, processing_class=None, **kwargs):
            elapsed = time.perf_counter() - self.began
            due = self.marks and elapsed >= self.marks[0]
            if due or elapsed >= args.minutes * 60:
                if due:
                    self.marks.pop(0)
                target = folder / f"step-{state.global_step}"
                model.save_pretrained(target)
                processing_class.save_pretrained(target)
                saved.append((elapsed, str(target)))
            if elapsed >= args.minutes * 60:
                control.should_training_stop = True

    def reward(prompts, completions, **kwargs):
        text = [c[-1]["content"] if isinstance(c, list) else c for c in completions]
        prompt_text = [p[-1]["content"] if isinstance(p, list) else p for p in prompts]
        return reward_fn(prompt_text, text).tolist()

    config_cls, trainer_cls = (RLOOConfig, RLOOTrainer) if trainer_name == "rloo" else (GRPOConfig, GRPOTrainer)
    config = config_cls(
        output_dir=str(folder), max_steps=10_000, max_completion_length=40, temperature=TEMPERATURE, beta=KL_COEF,
        learning_rate=RLConfig().learning_rate, logging_steps=1, report_to="none", save_strategy="no", use_cpu=True,
        bf16=False, seed=0,
    )  # fmt: skip
    trainer = trainer_cls(
        model=AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32), reward_funcs=reward, args=config,
        train_dataset=datasets.Dataset.from_list(rows), processing_class=AutoTokenizer.from_pretrained(path),
        callbacks=[Budget()],
    )  # fmt: skip
    trainer.train()
    return saved


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--run", type=Path, required=True, help="a run directory with data/, sft/sft-0, reward/model")
    parser.add_argument("--reward", choices=("gold", "model"), default="gold")
    parser.add_argument("--minutes", type=float, default=20.0, help="wall-clock budget of every trainer")
    parser.add_argument("--out", type=Path, default=Path("runs/rl-quality"))
    parser.add_argument("--trainers", default="salsa-ppo,salsa-rloo,salsa-grpo,trl-grpo,trl-rloo")
    args = parser.parse_args()
    if any(t.startswith("trl-") for t in args.trainers.split(",")) and importlib.util.find_spec("trl") is None:
        parser.error('TRL is not installed: pip install "trl>=1.16,<2" (the bench extra), or leave out trl- trainers')
    import transformers

    from salsa.config import EvalConfig
    from salsa.evaluate import evaluate
    from salsa.scoring import gold_reward, reward_function
    from salsa.tasks import reviews

    transformers.logging.set_verbosity_error()
    transformers.logging.disable_progress_bar()
    out = args.out / args.reward
    rewards = "gold" if args.reward == "gold" else str(args.run / "reward" / "model")
    reward_fn = gold_reward(reviews.gold_score) if args.reward == "gold" else reward_function(rewards)
    runs: dict[str, list[tuple[float, str]]] = {}
    for trainer in args.trainers.split(","):
        kind, algorithm = trainer.split("-")
        done = out / f"{trainer}.json"  # a trainer that finished in an earlier invocation is not trained again
        earlier = json.loads(done.read_text()) if done.exists() else {}
        if earlier.get("minutes") == args.minutes:  # only on the same budget
            runs[trainer] = [tuple(saved) for saved in earlier["saved"]]
            print(f"{trainer}: trained earlier ({done})", flush=True)
            continue
        started = time.perf_counter()
        if kind == "salsa":
            runs[trainer] = salsa_run(algorithm, args, out, rewards)
        else:
            runs[trainer] = trl_run(algorithm, args, out, reward_fn)
        done.write_text(json.dumps({"minutes": args.minutes, "saved": runs[trainer]}))
        print(f"{trainer}: trained {runs[trainer][-1][0] / 60:.1f} min ({(time.perf_counter() - started) / 60:.1f} min "
              "with setup)", flush=True)  # fmt: skip
    policies = {f"{t}@{i}": [path] for t, saved in runs.items() for i, (_, path) in enumerate(saved)}
    policies["sft"] = [str(args.run / "sft" / "sft-0")]
    evaluation = EvalConfig(
        policies=policies, comparisons=[f"{name}:sft" for name in policies if name != "sft"],
        prompts=str(args.run / "data" / "prompts_eval.jsonl"), ood_prompts=None, reward_model=None,
        sft_model=None, soup_model=None, samples_per_prompt=4, matched_kl=False, output_dir=str(out / "eval"),
    )  # fmt: skip
    evaluate(evaluation, show_progress=False, overwrite=True)
    results = json.loads((out / "eval" / "results.json").read_text())
    print(f"\nheld-out gold over SFT (mean difference, 95% CI; {args.reward} reward, {args.minutes:g} min budget)")
    best: dict[str, float] = {}
    for trainer, saved in runs.items():
        for index, (elapsed, _) in enumerate(saved):
            c = next(c for c in results["comparisons"] if c["a"] == f"{trainer}@{index}" and c["judge"] == "gold")
            low, high = c["ci"]["mean_difference"]
            print(f"{trainer:11} {elapsed / 60:5.1f} min  {c['mean_difference']:+.3f} [{low:+.3f}, {high:+.3f}]")
        best[trainer] = c["mean_difference"]  # at the end of the budget
    trl_best = max((v for k, v in best.items() if k.startswith("trl")), default=float("nan"))
    for trainer in (k for k in best if k.startswith("salsa")):
        print(f"{trainer} at the budget: {best[trainer]:+.3f} against TRL's best {trl_best:+.3f}")


if __name__ == "__main__":
    main()
