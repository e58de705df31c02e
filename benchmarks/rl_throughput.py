"""Processed tokens/s of one RL iteration: salsa PPO and RLOO against TRL's RLOOTrainer and GRPOTrainer.

Same model (the default SmolLM2-135M-Instruct, fp32 on a CPU), same prompts (the built-in task's train
prompts through the chat template), 16 completions per step (4 prompts x 4 samples) of at most 32 new
tokens at temperature 1, the same reward function (the task's gold judge), a KL penalty against a frozen
copy of the initial model (beta 0.05), one optimisation pass per rollout (salsa's default `ppo_epochs: 1`, no
value warm-up; a last row runs PPO with 4 epochs per rollout, TRL's former PPOTrainer's setting, which is not like
for like). Processed tokens are prompt plus completion tokens (no padding) per step; the first --warmup steps of
each are not timed. salsa also runs with LoRA adapters (r 16 on every linear layer) in place of full-weight
updates. TRL's trainers turn on gradient checkpointing by default (it saves GPU memory and costs a second forward
pass); its RLOOTrainer also runs without it, and the ratios are taken against the faster TRL run.

    .venv/bin/python benchmarks/rl_throughput.py [--steps 3] [--warmup 1]
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

import torch

PROMPTS_PER_STEP, SAMPLES, NEW_TOKENS, BETA = 4, 4, 32, 0.05


def gold_reward(prompts: list[str], responses: list[str]) -> list[float]:
    from salsa.tasks.reviews import gold_score

    return [gold_score(p, r) for p, r in zip(prompts, responses, strict=True)]


def salsa_run(
    algorithm: str, args, workdir: Path, prompts_file: Path, use_lora: bool = False, ppo_epochs: int = 1
) -> float:
    from salsa.config import RLConfig
    from salsa.models import resolve_model
    from salsa.rl.ppo import train_rl

    cfg = RLConfig(
        algorithm=algorithm, init=resolve_model("smollm2-135m"), reference="sft", prompts=str(prompts_file), task=None,
        output_dir=str(workdir / f"salsa-{algorithm}-{'lora' if use_lora else 'full'}-{ppo_epochs}"),
        steps=args.warmup + args.steps, ppo_epochs=ppo_epochs,
        prompts_per_step=PROMPTS_PER_STEP,
        samples_per_prompt=SAMPLES, max_new_tokens=NEW_TOKENS, kl_coef=BETA, minibatch_size=PROMPTS_PER_STEP * SAMPLES,
        save_steps=0, learning_rate=1e-6, use_lora=use_lora, value_warmup_steps=0,
    )  # fmt: skip
    final = train_rl(cfg, show_progress=False, reward_fn=lambda p, r: torch.tensor(gold_reward(p, r)))
    records = [json.loads(line) for line in (final.parent / "metrics.jsonl").read_text().splitlines()][args.warmup :]
    # tokens_per_s is measured per step; the harmonic combination is total tokens over total time.
    return len(records) / sum(1 / r["tokens_per_s"] for r in records) if records else float("nan")


def trl_run(trainer_name: str, args, workdir: Path, gradient_checkpointing: bool = True) -> float:
    import datasets
    from transformers import AutoModelForCausalLM, AutoTokenizer, TrainerCallback
    from trl import GRPOConfig, GRPOTrainer, RLOOConfig, RLOOTrainer

    from salsa.models import resolve_model
    from salsa.tasks.reviews import prompts

    path = resolve_model("smollm2-135m")
    rows = [{"prompt": [{"role": "user", "content": p["prompt"]}]} for p in prompts("train")]

    def reward(prompts, completions, **kwargs):
        text = [c[-1]["content"] if isinstance(c, list) else c for c in completions]
        prompt_text = [p[-1]["content"] if isinstance(p, list) else p for p in prompts]
        return gold_reward(prompt_text, text)

    class StepTimer(TrainerCallback):
        def __init__(self):
            self.steps = []

        def on_step_begin(self, _args, state, control, **kwargs):
            self.started = time.perf_counter()

        def on_step_end(self, _args, state, control, **kwargs):
            self.steps.append(time.perf_counter() - self.started)

    config_cls, trainer_cls = (RLOOConfig, RLOOTrainer) if trainer_name == "rloo" else (GRPOConfig, GRPOTrainer)
    config = config_cls(
        output_dir=str(workdir / f"trl-{trainer_name}-{gradient_checkpointing}"), max_steps=args.warmup + args.steps,
        per_device_train_batch_size=PROMPTS_PER_STEP * SAMPLES, num_generations=SAMPLES,
        max_completion_length=NEW_TOKENS, temperature=1.0, beta=BETA, num_iterations=1, learning_rate=1e-6,
        logging_steps=1, report_to="none", save_strategy="no", use_cpu=True, bf16=False, seed=0,
        gradient_checkpointing=gradient_checkpointing,
    )  # fmt: skip
    timer = StepTimer()
    trainer = trainer_cls(
        model=AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32), reward_funcs=reward, args=config,
        train_dataset=datasets.Dataset.from_list(rows), processing_class=AutoTokenizer.from_pretrained(path),
        callbacks=[timer],
    )  # fmt: skip
    trainer.train()
    tokens = [h["num_tokens"] for h in trainer.state.log_history if "num_tokens" in h]
    per_step = [b - a for a, b in zip([0.0, *tokens], tokens, strict=False)]
    timed_tokens, timed_seconds = sum(per_step[args.warmup :]), sum(timer.steps[args.warmup :])
    return timed_tokens / timed_seconds


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--steps", type=int, default=3)
    parser.add_argument("--warmup", type=int, default=1)
    args = parser.parse_args()
    import transformers

    from salsa.tasks.reviews import prompts

    transformers.logging.set_verbosity_error()
    transformers.logging.disable_progress_bar()
    results = {}
    with tempfile.TemporaryDirectory() as tmp:
        workdir = Path(tmp)
        prompts_file = workdir / "prompts.jsonl"
        prompts_file.write_text("".join(json.dumps({"prompt": p["prompt"]}) + "\n" for p in prompts("train")))
        results["trl RLOOTrainer"] = trl_run("rloo", args, workdir)
        results["trl RLOOTrainer, no ckpt"] = trl_run("rloo", args, workdir, gradient_checkpointing=False)
        results["trl GRPOTrainer"] = trl_run("grpo", args, workdir)
        results["salsa rloo"] = salsa_run("rloo", args, workdir, prompts_file)
        results["salsa ppo"] = salsa_run("ppo", args, workdir, prompts_file)
        results["salsa rloo, LoRA"] = salsa_run("rloo", args, workdir, prompts_file, use_lora=True)
        results["salsa ppo, LoRA"] = salsa_run("ppo", args, workdir, prompts_file, use_lora=True)
        # PPO with 4 epochs over each rollout, as TRL's former PPOTrainer (not like-for-like with the rows above)
        results["salsa ppo, 4 epochs"] = salsa_run("ppo", args, workdir, prompts_file, ppo_epochs=4)
    print(f"{PROMPTS_PER_STEP * SAMPLES} completions of <= {NEW_TOKENS} tokens per step, {args.steps} timed steps")
    for name, value in results.items():
        print(f"{name:24} {value:8.1f} processed tokens/s")
    fastest = max((name for name in results if name.startswith("trl")), key=results.get)
    rloo, ppo = results["salsa rloo"] / results[fastest], results["salsa ppo"] / results[fastest]
    print(f"against the fastest TRL run ({fastest}): salsa rloo {rloo:.2f}x   salsa ppo {ppo:.2f}x   (target >= 1.5x)")
    default = [results[f"salsa {a}"] / results["trl RLOOTrainer"] for a in ("rloo", "ppo")]
    print(f"against trl RLOOTrainer's defaults: salsa rloo {default[0]:.2f}x   salsa ppo {default[1]:.2f}x")
    lora = [results[f"salsa {a}, LoRA"] / results[f"salsa {a}"] for a in ("rloo", "ppo")]
    print(f"LoRA (r 16, all linear layers) / full weights in salsa: rloo {lora[0]:.2f}x   ppo {lora[1]:.2f}x")
    epochs = results["salsa ppo, 4 epochs"] / results["salsa ppo"]
    print(f"salsa PPO with 4 epochs per rollout / one pass (the default): {epochs:.2f}x")


if __name__ == "__main__":
    main()
