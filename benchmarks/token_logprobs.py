"""The log-probs of RL's response tokens and their gradient, two ways side by side: a full `log_softmax` over the
vocabulary gathered at the chosen tokens (how `policy.response_forward` took them before), against
`policy.token_logprobs` (the chosen logit minus a log-sum-exp; the gradient built in the backward pass).

Each way runs in its own process, alternately (--rounds times each), so that each one's peak memory is its own:
the script prints the seconds of a forward and backward pass (the median of --reps after a warm-up), the growth of
the process's peak resident memory over what it held before the first pass, and the ratios of the two ways.

By default the logits are random, at RL's default shapes on the default model: 64 responses (32 prompts x 2) x 40
positions x 49,152 words, with the entropy (PPO logs it). With --model, the logits come from that model's forward
pass over --batch random sequences of 24 prompt and 40 response tokens, and the backward pass runs through the model:
the share of a training step the change can save.

    .venv/bin/python benchmarks/token_logprobs.py [--rounds 2] [--reps 3] [--model smollm2-135m --batch 16]
"""

from __future__ import annotations

import argparse
import json
import resource
import statistics
import subprocess
import sys
import time

import torch

WAYS = ("full log_softmax", "token_logprobs")
PROMPT_TOKENS, RESPONSE_TOKENS, VOCAB, TEMPERATURE = 24, 40, 49_152, 0.7


def full_log_softmax(
    logits: torch.Tensor, targets: torch.Tensor, temperature: float
) -> tuple[torch.Tensor, torch.Tensor]:
    """The former way: every word's log-prob ([B, R, vocab]), gathered; the entropy from the same tensor."""
    from salsa.policy import entropy_from_logprobs

    all_logprobs = (logits / temperature).log_softmax(-1)
    logprobs = torch.gather(all_logprobs, -1, targets[..., None]).squeeze(-1)
    entropy = entropy_from_logprobs(all_logprobs.detach())
    return logprobs, entropy


def one_way(way: str, args: argparse.Namespace) -> dict:
    """Time `way`'s forward and backward passes in this process; its peak memory growth over the set-up."""
    from salsa.models import forward_logits, load_causal_lm
    from salsa.policy import token_logprobs

    torch.manual_seed(0)
    torch.set_num_threads(args.threads)
    if args.model:
        model = load_causal_lm(args.model).train()
        vocab = model.get_output_embeddings().weight.shape[0]
        sequences = torch.randint(0, vocab, (args.batch, PROMPT_TOKENS + RESPONSE_TOKENS))
        mask = torch.ones_like(sequences)

        def logits_and_targets():
            logits, _ = forward_logits(model, sequences, mask, keep=RESPONSE_TOKENS + 1)
            return logits[:, :-1], sequences[:, PROMPT_TOKENS:]
    else:
        leaf = (torch.randn(args.batch, RESPONSE_TOKENS, VOCAB) * 3).requires_grad_()
        targets = torch.randint(0, VOCAB, (args.batch, RESPONSE_TOKENS))

        def logits_and_targets():
            return leaf, targets

    weights = torch.randn(args.batch, RESPONSE_TOKENS)

    def step() -> tuple[float, float]:
        logits, targets = logits_and_targets()
        if way == WAYS[0]:
            logprobs, entropy = full_log_softmax(logits, targets, TEMPERATURE)
        else:
            logprobs, entropy = token_logprobs(logits, targets, TEMPERATURE, with_entropy=True)
        (logprobs * weights).sum().backward()
        return float(logprobs.sum()), float(entropy.sum())

    before_kb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    sums = step()  # warm-up
    seconds = []
    for _ in range(args.reps):
        started = time.perf_counter()
        step()
        seconds.append(time.perf_counter() - started)
    peak_kb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return {"seconds": statistics.median(seconds), "peak_growth_mb": (peak_kb - before_kb) / 1024, "sums": sums}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rounds", type=int, default=2, help="processes per way, alternating")
    parser.add_argument("--reps", type=int, default=3, help="timed passes per process, after one warm-up")
    parser.add_argument("--model", default=None, help="logits from this model's forward pass (e.g. smollm2-135m)")
    parser.add_argument("--batch", type=int, default=None, help="responses per pass (64; 16 with --model)")
    parser.add_argument("--threads", type=int, default=torch.get_num_threads())
    parser.add_argument("--way", choices=WAYS, help=argparse.SUPPRESS)  # one process's side of the comparison
    args = parser.parse_args()
    args.batch = args.batch or (16 if args.model else 64)
    if args.way:
        print(json.dumps(one_way(args.way, args)))
        return

    results: dict[str, list[dict]] = {way: [] for way in WAYS}
    for _ in range(args.rounds):
        for way in WAYS:
            command = [sys.executable, __file__, "--way", way, "--reps", str(args.reps), "--batch", str(args.batch)]
            command += ["--threads", str(args.threads)] + (["--model", args.model] if args.model else [])
            out = subprocess.run(command, check=True, capture_output=True, text=True).stdout
            results[way].append(json.loads(out.splitlines()[-1]))
    full, token = ([r["sums"] for r in results[way]] for way in WAYS)
    for (full_lp, full_entropy), (token_lp, token_entropy) in zip(full, token, strict=True):
        scale = max(1.0, abs(full_lp), abs(full_entropy))
        assert abs(full_lp - token_lp) < 1e-4 * scale and abs(full_entropy - token_entropy) < 1e-4 * scale

    what = f"logits of {args.model}" if args.model else "random logits"
    print(f"{args.batch} responses x {RESPONSE_TOKENS} tokens, {what}, forward + backward, {args.threads} threads")
    print(f"{'way':<18} {'seconds':>9} {'peak growth MB':>15}")
    summary = {}
    for way in WAYS:
        seconds = statistics.median(r["seconds"] for r in results[way])
        growth = statistics.median(r["peak_growth_mb"] for r in results[way])
        summary[way] = seconds, growth
        print(f"{way:<18} {seconds:>9.3f} {growth:>15.0f}")
    (full_s, full_mb), (token_s, token_mb) = summary[WAYS[0]], summary[WAYS[1]]
    print(f"token_logprobs / full log_softmax: time {token_s / full_s:.2f}x, peak growth {token_mb / full_mb:.2f}x")


if __name__ == "__main__":
    main()
