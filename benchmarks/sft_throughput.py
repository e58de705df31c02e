"""Training tokens/s of `salsa sft` against TRL's SFTTrainer, side by side in one run.

Same model (the default SmolLM2-135M-Instruct unless --model), same data (the built-in reviews
demonstrations, chat template applied, completion-only loss), same micro-batch, sequence length,
optimizer (AdamW), precision (fp32 on a CPU) and number of steps. Tokens are non-padding input tokens;
the first --warmup steps of each are not timed.

    .venv/bin/python benchmarks/sft_throughput.py [--steps 8] [--batch-size 8]
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
import time
from pathlib import Path

import torch


def salsa_run(args, workdir: Path) -> tuple[float, list[float]]:
    from salsa import SFTConfig, train_sft

    cfg = SFTConfig(
        model=args.model, data="builtin:reviews", output_dir=str(workdir / "salsa"), num_models=1,
        max_steps=args.warmup + args.steps, batch_size=args.batch_size, max_length=args.max_length,
        learning_rate=3e-5, warmup_ratio=0.0, mixed_precision="no",
    )  # fmt: skip
    (path,) = train_sft(cfg, show_progress=False)
    records = [json.loads(line) for line in (path / "metrics.jsonl").read_text().splitlines()][args.warmup :]
    tokens = sum(r["tokens"] for r in records)
    seconds = [r["tokens"] / r["tokens_per_s"] for r in records]
    return tokens / sum(seconds), seconds


def trl_run(args, workdir: Path) -> tuple[float, list[float]]:
    import datasets
    from transformers import AutoModelForCausalLM, AutoTokenizer, TrainerCallback
    from trl import SFTConfig, SFTTrainer

    from salsa.models import resolve_model
    from salsa.tasks.reviews import demonstrations

    path = resolve_model(args.model)
    rows = [
        {
            "prompt": [{"role": "user", "content": r["prompt"]}],
            "completion": [{"role": "assistant", "content": r["completion"]}],
        }
        for r in demonstrations()
    ]

    class StepTimer(TrainerCallback):
        def __init__(self):
            self.marks = []

        def on_step_begin(self, _args, state, control, **kwargs):
            self.started = time.perf_counter()
            self.tokens_before = state.num_input_tokens_seen

        def on_step_end(self, _args, state, control, **kwargs):
            self.marks.append((time.perf_counter() - self.started, state.num_input_tokens_seen - self.tokens_before))

    timer = StepTimer()
    config = SFTConfig(
        output_dir=str(workdir / "trl"), max_steps=args.warmup + args.steps,
        per_device_train_batch_size=args.batch_size,
        max_length=args.max_length, learning_rate=3e-5, warmup_steps=0, lr_scheduler_type="cosine",
        logging_steps=1, report_to="none", save_strategy="no", use_cpu=True, bf16=False,
        include_num_input_tokens_seen="non_padding", dataloader_num_workers=0, seed=0, completion_only_loss=True,
    )  # fmt: skip
    trainer = SFTTrainer(
        model=AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32),
        args=config,
        train_dataset=datasets.Dataset.from_list(rows),
        processing_class=AutoTokenizer.from_pretrained(path),
        callbacks=[timer],
    )
    trainer.train()
    timed = timer.marks[args.warmup :]
    seconds = [s for s, _ in timed]
    return sum(t for _, t in timed) / sum(seconds), seconds


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="smollm2-135m")
    parser.add_argument("--steps", type=int, default=8)
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--max-length", type=int, default=128)
    args = parser.parse_args()
    import transformers

    transformers.logging.set_verbosity_error()
    transformers.logging.disable_progress_bar()
    with tempfile.TemporaryDirectory() as tmp:
        trl_tps, trl_s = trl_run(args, Path(tmp))
        salsa_tps, salsa_s = salsa_run(args, Path(tmp))
    print(f"model {args.model}, batch {args.batch_size}, max_length {args.max_length}, {args.steps} timed steps")
    print(f"{'':8}{'tokens/s':>10}{'median s/step':>15}")
    print(f"{'trl':8}{trl_tps:>10.1f}{statistics.median(trl_s):>15.2f}")
    print(f"{'salsa':8}{salsa_tps:>10.1f}{statistics.median(salsa_s):>15.2f}")
    print(f"ratio salsa/trl: {salsa_tps / trl_tps:.2f}x (target >= 1.0x)")


if __name__ == "__main__":
    main()
