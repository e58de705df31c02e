"""Data parallel on this machine: SFT and the RL step with 2 processes x 1 thread against 1 process x 2 threads.

The same work each way, on the default model (SmolLM2-135M-Instruct, fp32): SFT with a global batch of 8
built-in demonstrations (max length 128), and RLOO steps of 8 prompts x 2 samples of at most 32 new tokens with
the task's gold judge as the reward and a KL penalty against the initial model. Two processes split every batch
(gloo all-reduce of the gradients); one process uses both cores through its own threads. Throughput is processed
tokens per second from each run's metrics.jsonl, over the steps after --warmup.

What it says: whether splitting the batch across processes costs or gains against intra-op threading on a CPU
(the communication of a 135M model's gradients over loopback, and the smaller matrices per process). What it does
not say: anything about GPUs, where each process has its own device and NCCL over NVLink; there data parallel
multiplies throughput by close to the number of GPUs, and this script's GPU counterpart is benchmarks/gpu_checks.sh.

    .venv/bin/python benchmarks/scaling.py [--steps 6] [--warmup 2]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

PROMPTS, SAMPLES, NEW_TOKENS = 8, 2, 32


def throughput(metrics: Path, warmup: int) -> float:
    records = [json.loads(line) for line in metrics.read_text().splitlines()][warmup:]
    return len(records) / sum(1 / r["tokens_per_s"] for r in records)


def rl_worker(out: str, steps: int) -> None:
    import torch

    from salsa.config import RLConfig
    from salsa.models import resolve_model
    from salsa.rl.ppo import train_rl
    from salsa.tasks.reviews import gold_score

    prompts_file = Path(out).parent / "prompts.jsonl"
    if not prompts_file.exists():  # written once, before the runs
        raise SystemExit(f"{prompts_file} is missing")
    cfg = RLConfig(
        algorithm="rloo", init=resolve_model("smollm2-135m"), reference="sft", prompts=str(prompts_file), task=None,
        output_dir=out, steps=steps, prompts_per_step=PROMPTS, samples_per_prompt=SAMPLES, max_new_tokens=NEW_TOKENS,
        minibatch_size=PROMPTS * SAMPLES, save_steps=0, learning_rate=1e-6,
    )  # fmt: skip
    reward = lambda p, r: torch.tensor([gold_score(a, b) for a, b in zip(p, r, strict=True)])  # noqa: E731
    train_rl(cfg, show_progress=False, reward_fn=reward)


def launch(args: list[str], processes: int) -> None:
    env = {**os.environ, "OMP_NUM_THREADS": str(2 // processes), "HF_HUB_OFFLINE": "1"}
    prefix = [sys.executable] if processes == 1 else [sys.executable, "-m", "torch.distributed.run", "--standalone",
                                                       f"--nproc_per_node={processes}"]  # fmt: skip
    subprocess.run([*prefix, *args], env=env, check=True, capture_output=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--steps", type=int, default=6)
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--rl-worker", default=None, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.rl_worker:
        return rl_worker(args.rl_worker, args.warmup + args.steps)
    from salsa.models import resolve_model
    from salsa.tasks.reviews import prompts

    model = resolve_model("smollm2-135m")  # converted once, before anything is timed
    work = Path(tempfile.mkdtemp(prefix="salsa-scaling-"))
    (work / "prompts.jsonl").write_text("".join(json.dumps({"prompt": p["prompt"]}) + "\n" for p in prompts("train")))
    steps = args.warmup + args.steps
    print(f"{'':6}{'1 process x 2 threads':>24}{'2 processes x 1 thread':>26}{'ratio':>8}   (processed tokens/s)")
    rows = {}
    for processes in (1, 2):
        sft = ["-m", "salsa.cli", "sft", "--model", model, "-q", "--output-dir", str(work / f"sft{processes}"),
               "--set", f"max_steps={steps}", "--set", f"batch_size={8 // processes}", "--set", "max_length=128",
               "--set", "num_models=1"]  # fmt: skip
        launch(sft, processes)
        launch([__file__, "--rl-worker", str(work / f"rl{processes}"), "--steps", str(args.steps),
                "--warmup", str(args.warmup)], processes)  # fmt: skip
        rows[processes] = (
            throughput(work / f"sft{processes}/sft-0/metrics.jsonl", args.warmup),
            throughput(work / f"rl{processes}/metrics.jsonl", args.warmup),
        )
    for i, name in enumerate(("sft", "rloo")):
        one, two = rows[1][i], rows[2][i]
        print(f"{name:6}{one:>24.1f}{two:>26.1f}{two / one:>7.2f}x")


if __name__ == "__main__":
    main()
