"""Does PPO at salsa's defaults learn? One run at the defaults, then held-out gold against its SFT model.

From the default pipeline's SFT model (`--run` holds data/, sft/sft-0 and reward/model, as `salsa run` writes them),
one PPO run with every RL setting at its default except the reward and the seed. The reward is `--reward gold` (the
task's gold judge: the control that tells "RL cannot optimise" from "the reward model is a poor proxy"), `--reward
model` (the run's reward model) or `--reward PATH` (any other reward model, such as a WARM average or one of its
members). Then the final policy and the SFT model answer the held-out in-distribution evaluation prompts (8 responses
per prompt at temperature 0.7, the same seeds for both), and the script prints one JSON line: the training time, the
mean gold of each, the paired gold and reward differences with 95% bootstrap intervals (reward: the run's reward
model), the KL to SFT, the critic's explained variance over the middle third of the run, the rollouts' gold at the
start and over the last three steps, and the training curve (rollout gold against KL to SFT every fourth step).

    .venv/bin/python benchmarks/rl_defaults.py --run runs/salsa --reward gold --seed 0
    .venv/bin/python benchmarks/rl_defaults.py --run runs/salsa --reward runs/salsa/reward-warm3/model --name warm

`--pool` reads the evaluations of several such runs (their output folders, one seed each) and prints the gold gain
over SFT pooled over the seeds: the mean, its percentile-bootstrap interval over seeds and prompts together (salsa's
`compare`, as `salsa eval` computes it for several seeds), the per-seed means and the seed-level tests (t-test, exact
sign-flip permutation test, minimum detectable effect).

    .venv/bin/python benchmarks/rl_defaults.py --pool runs/rl-defaults/gold-seed-0 runs/rl-defaults/gold-seed-1 ...

With `--against`, the baseline is the RL policy of other runs (one folder per `--pool` folder, paired in the order
given: the same seeds and evaluation prompts) instead of each run's SFT model; for instance RL with a WARM reward
model against RL with one of its members:

    python benchmarks/rl_defaults.py --pool runs/rl-defaults/warm-seed-0 --against runs/rl-defaults/member-0-seed-0
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--run", type=Path, help="a run directory with data/, sft/sft-0, reward/model")
    parser.add_argument("--pool", type=Path, nargs="+", help="output folders of runs of this script, one seed each")
    parser.add_argument("--against", type=Path, nargs="+", help="with --pool: runs whose RL policy is the baseline")
    parser.add_argument("--reward", default="gold", help="gold, model (the run's reward/model) or a reward model path")
    parser.add_argument("--name", help="the output folder's prefix (default: the --reward value, or the path's name)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument(
        "--set",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="an RL setting other than its default (a tuning candidate; repeatable)",
    )
    parser.add_argument(
        "--prompts",
        choices=("eval", "dev"),
        default="eval",
        help="evaluate on the held-out evaluation prompts, or on the dev split (for tuning)",
    )
    parser.add_argument("--out", type=Path, default=Path("runs/rl-defaults"))
    args = parser.parse_args()
    if args.pool:
        if args.against and len(args.against) != len(args.pool):
            parser.error(f"--against needs one folder per --pool folder ({len(args.pool)}), got {len(args.against)}")
        print(json.dumps(pooled(args.pool, args.against)))
        return
    if args.run is None:
        parser.error("give --run (or --pool)")

    from salsa.config import EvalConfig, RLConfig
    from salsa.config_loading import parse_overrides
    from salsa.evaluate import evaluate
    from salsa.rl.ppo import train_rl

    sft, reward_model = args.run / "sft/sft-0", args.run / "reward/model"
    training_reward = {"gold": "gold", "model": str(reward_model)}.get(args.reward, args.reward)
    name = args.name or (args.reward if args.reward in ("gold", "model") else Path(args.reward).name)
    out = args.out / f"{name}-seed-{args.seed}"
    rl = RLConfig(
        init=str(sft), reward_model=training_reward, seed=args.seed,
        prompts=str(args.run / "data/prompts_train.jsonl"), output_dir=str(out / "rl"), save_steps=0,
        **parse_overrides(RLConfig, args.set, "rl"),
    )  # fmt: skip
    final = train_rl(rl, show_progress=False)
    evaluate(
        EvalConfig(
            policies={"rl": [str(final)], "sft": [str(sft)]},
            comparisons=["rl:sft"],
            sft_model=str(sft),
            prompts=str(args.run / f"data/prompts_{args.prompts}.jsonl"),
            ood_prompts=None,
            reward_model=str(reward_model),
            soup_model=None,
            samples_per_prompt=8,
            matched_kl=False,
            output_dir=str(out / "eval"),
        ),  # fmt: skip
        show_progress=False,
    )
    results = json.loads((out / "eval/results.json").read_text())
    metrics = [json.loads(line) for line in (out / "rl/metrics.jsonl").read_text().splitlines()]
    policies = results["policies"]
    in_distribution = {policy: p["splits"]["in_distribution"]["gold"]["mean"] for policy, p in policies.items()}
    line = {
        "reward": name, "seed": args.seed, "settings": args.set, "prompts": args.prompts,
        "train_minutes": round(metrics[-1]["elapsed_s"] / 60, 1),
        "sft_gold": round(in_distribution["sft"], 3), "rl_gold": round(in_distribution["rl"], 3),
        "kl_sft": round(policies["rl"]["kl_sft"]["mean"], 2),
    }  # fmt: skip
    for c in results["comparisons"]:
        line[f"{c['judge']}_difference"] = [
            round(c["mean_difference"], 3),
            [round(x, 3) for x in c["ci"]["mean_difference"]],
        ]
        line[f"{c['judge']}_win_rate"] = [round(c["win_rate"], 3), [round(x, 3) for x in c["ci"]["win_rate"]]]
    if "explained_variance" in metrics[0]:  # PPO's critic; RLOO and GRPO have none
        line["explained_variance_middle"] = round(middle_third_mean([m["explained_variance"] for m in metrics]), 3)
    line["rollout_gold_first_last3"] = [
        round(metrics[0]["gold"], 3),
        round(sum(m["gold"] for m in metrics[-3:]) / 3, 3),
    ]
    curve = sorted({*range(0, len(metrics), 4), len(metrics) - 1})
    line["gold_vs_kl"] = [[round(metrics[i]["kl_sft"], 2), round(metrics[i]["gold"], 3)] for i in curve]
    print(json.dumps(line))


def middle_third(steps: int) -> range:
    """The steps of a run less its first and last floor(T / 3) (0-based): T = 10 gives steps 3-6, four of them; T = 24
    gives 8-15. A run of 1 or 2 steps is its own middle."""
    third = steps // 3
    return range(third, steps - third)


def middle_third_mean(values: list[float]) -> float:
    """The mean of a per-step series over its middle third (the critic's explained variance once it has warmed up,
    before the run's last steps)."""
    middle = [values[i] for i in middle_third(len(values))]
    return sum(middle) / len(middle)


def pooled(folders: list[Path], against: list[Path] | None = None) -> dict:
    """Held-out gold of the RL policy minus SFT's (or minus the RL policy of the runs `against`, paired folder by
    folder) over several runs' evaluations, seeds and prompts pooled."""
    import numpy as np

    from salsa.evaluation.stats import compare, seed_level_test
    from salsa.evaluation.summary import _score_matrix
    from salsa.io import read_jsonl

    def scores(folder: Path, policy: str) -> np.ndarray:  # [prompts, samples], as `salsa eval` reads its samples
        return _score_matrix(read_jsonl(folder / "eval/samples.jsonl"), policy, "in_distribution", "gold")[0]

    rl = np.array([scores(f, "rl") for f in folders])
    baseline = np.array([scores(f, "rl") for f in against] if against else [scores(f, "sft") for f in folders])
    both = compare(rl, baseline)
    tests = seed_level_test(rl, baseline)
    return {
        "seeds": len(folders), "prompts": rl.shape[1], "gold_difference": round(both["mean_difference"], 3),
        "ci": [round(x, 3) for x in both["ci"]["mean_difference"]],
        "per_seed": [round(x, 3) for x in tests["per_seed"]], "t_p": tests["t_p"],
        "permutation_p": tests["permutation_p"], "mde": tests["mde"],
    }  # fmt: skip


if __name__ == "__main__":
    main()
