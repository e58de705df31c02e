"""Does PPO at salsa's defaults learn? One run at the defaults, then held-out gold against its SFT model.

From the default pipeline's SFT model (`--run` holds data/, sft/sft-0 and reward/model, as `salsa run` writes them),
one PPO run with every RL setting at its default except the reward (`--reward gold`: the task's gold judge, the
control that tells "RL cannot optimise" from "the reward model is a poor proxy"; `--reward model`: the reward model)
and the seed. Then the final policy and the SFT model answer the held-out in-distribution evaluation prompts
(8 responses per prompt at temperature 0.7, the same seeds for both), and the script prints one JSON line: the
training time, the mean gold of each, the paired gold and reward differences with 95% bootstrap intervals, the KL
to SFT, the critic's explained variance over the middle third of the run and the rollouts' gold at the start and
over the last three steps.

    .venv/bin/python benchmarks/rl_defaults.py --run runs/salsa --reward gold --seed 0
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--run", type=Path, required=True, help="a run directory with data/, sft/sft-0, reward/model")
    parser.add_argument("--reward", choices=("gold", "model"), default="gold")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", type=Path, default=Path("runs/rl-defaults"))
    args = parser.parse_args()

    from salsa.config import EvalConfig, RLConfig
    from salsa.evaluate import evaluate
    from salsa.rl.ppo import train_rl

    sft, reward_model = args.run / "sft/sft-0", args.run / "reward/model"
    out = args.out / f"{args.reward}-seed-{args.seed}"
    rl = RLConfig(
        init=str(sft), reward_model="gold" if args.reward == "gold" else str(reward_model), seed=args.seed,
        prompts=str(args.run / "data/prompts_train.jsonl"), output_dir=str(out / "rl"), save_steps=0,
    )  # fmt: skip
    final = train_rl(rl, show_progress=False)
    evaluate(
        EvalConfig(
            policies={"rl": [str(final)], "sft": [str(sft)]},
            comparisons=["rl:sft"],
            sft_model=str(sft),
            prompts=str(args.run / "data/prompts_eval.jsonl"),
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
    in_distribution = {name: p["splits"]["in_distribution"]["gold"]["mean"] for name, p in results["policies"].items()}
    line = {
        "reward": args.reward, "seed": args.seed, "train_minutes": round(metrics[-1]["elapsed_s"] / 60, 1),
        "sft_gold": round(in_distribution["sft"], 3), "rl_gold": round(in_distribution["rl"], 3),
        "kl_sft": round(results["policies"]["rl"]["kl_sft"]["mean"], 2),
    }  # fmt: skip
    for c in results["comparisons"]:
        line[f"{c['judge']}_difference"] = [
            round(c["mean_difference"], 3),
            [round(x, 3) for x in c["ci"]["mean_difference"]],
        ]
        line[f"{c['judge']}_win_rate"] = [round(c["win_rate"], 3), [round(x, 3) for x in c["ci"]["win_rate"]]]
    third = len(metrics) // 3
    line["explained_variance_middle"] = round(sum(m["explained_variance"] for m in metrics[third:-third]) / third, 3)
    line["rollout_gold_first_last3"] = [
        round(metrics[0]["gold"], 3),
        round(sum(m["gold"] for m in metrics[-3:]) / 3, 3),
    ]
    print(json.dumps(line))


if __name__ == "__main__":
    main()
