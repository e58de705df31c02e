"""The KL to a reference of several models' answers to the same prompts, as an evaluation measures a job's policy
and its snapshots against the SFT model: the reference reading every batch of prompts again for each model, against
reading it once and keeping its keys and values (`salsa.evaluation.judging.PromptStates`).

Same reference (the default SmolLM2-135M-Instruct, fp32 on a CPU), same answers: --models copies of the default
model, each with its weights perturbed by its own seed (stand-ins for a run's snapshots), answer the built-in task's
48 evaluation prompts once each (temperature 0.7, at most --max-new-tokens tokens, one batch, as `salsa eval` draws
them). Both sides compute every model's KL to the reference; the script checks that they agree and prints the
seconds of each and their ratio, measured side by side after a warm-up.

    .venv/bin/python benchmarks/eval_kl.py [--models 4] [--max-new-tokens 32]
"""

from __future__ import annotations

import argparse
import copy
import time

import numpy as np
import torch


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--models", type=int, default=4)
    parser.add_argument("--max-new-tokens", type=int, default=32)
    args = parser.parse_args()
    import transformers

    from salsa.config import EvalConfig
    from salsa.evaluation.judging import Judges, PromptStates, draw_answers, kl_to
    from salsa.models import load_causal_lm, load_tokenizer
    from salsa.tasks.reviews import prompts

    transformers.logging.set_verbosity_error()
    reference, tokenizer = load_causal_lm("smollm2-135m").eval(), load_tokenizer("smollm2-135m")
    texts = [p["prompt"] for p in prompts("eval")]
    config = EvalConfig(policies={"a": ["a"]}, max_new_tokens=args.max_new_tokens, batch_size=len(texts))
    judges = Judges(None, None, torch.device("cpu"))
    answers = []
    with torch.no_grad():
        for seed in range(args.models):
            model = copy.deepcopy(reference)
            generator = torch.Generator().manual_seed(seed)
            for p in model.parameters():  # about 1% of each tensor's spread: answers that differ, still fluent
                p.add_(torch.randn(p.shape, generator=generator) * 0.01 * p.std())
            answers.append(draw_answers(model, tokenizer, texts, "in_distribution", config, judges))
            del model
    kl_to(answers[0], reference, config)  # warm-up
    kl_to(answers[0], reference, config, PromptStates())

    started = time.perf_counter()
    again = [kl_to(a, reference, config) for a in answers]
    again_s = time.perf_counter() - started
    started = time.perf_counter()
    states = PromptStates()
    once = [kl_to(a, reference, config, states) for a in answers]
    once_s = time.perf_counter() - started
    gap = max(float(np.max(np.abs(np.subtract(a, b)))) for a, b in zip(again, once, strict=True))
    print(f"{args.models} models x {len(texts)} prompts, <= {args.max_new_tokens} new tokens, one batch; "
          f"{torch.get_num_threads()} threads")  # fmt: skip
    print(f"reference reads the prompts for each model: {again_s:.1f} s")
    print(f"reference reads them once (PromptStates):   {once_s:.1f} s")
    print(f"ratio once/again: {once_s / again_s:.2f}x; largest KL difference {gap:.1e} nats")


if __name__ == "__main__":
    main()
