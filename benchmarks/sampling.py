"""New tokens/s of batched sampling: salsa's `sample_responses` against transformers' `generate`.

Same model (the default SmolLM2-135M-Instruct, fp32 on a CPU), same prompts (the first --prompts train
prompts of the built-in task through the chat template), same batches (jobs sorted by prompt length, as
`salsa data make` forms them), pure temperature sampling with nucleus top-p, at most --max-new-tokens
new tokens. The peer is `model.generate` on each left-padded batch, which keeps finished rows in the batch
until the longest one ends; salsa drops a row from the batch (and its keys/values from the cache) when it
samples an end-of-sequence token, and prefills a prompt shared by several samples once. Both sides do
the same jobs; their new tokens are counted the same way (each decoded response encoded again, plus its
end-of-sequence token), and both paths are warmed up on a small batch first.

    .venv/bin/python benchmarks/sampling.py [--prompts 48] [--samples 4] [--batch-sizes 16 96]
"""

from __future__ import annotations

import argparse
import time

import torch


def generate_peer(model, tokenizer, prompts: list[str], batch_size: int, args) -> list[str]:
    """transformers' `generate` over the same length-sorted batches; the decoded response of every job."""
    from salsa.generation import decode_responses, encode_prompts, eos_token_ids, left_pad, response_mask

    encoded = encode_prompts(tokenizer, prompts)
    jobs = sorted((len(encoded[i]), i) for i in range(len(prompts)) for _ in range(args.samples))
    responses = []
    for number, start in enumerate(range(0, len(jobs), batch_size)):
        ids, attention = left_pad([encoded[i] for _, i in jobs[start : start + batch_size]], tokenizer.pad_token_id)
        torch.manual_seed(number)
        out = model.generate(
            input_ids=ids, attention_mask=attention, do_sample=True, temperature=args.temperature, top_k=0,
            top_p=args.top_p, max_new_tokens=args.max_new_tokens, pad_token_id=tokenizer.pad_token_id,
        )  # fmt: skip
        tokens = out[:, ids.shape[1] :]
        responses += decode_responses(tokenizer, tokens, response_mask(tokens, eos_token_ids(model, tokenizer)))
    return responses


def count_new_tokens(tokenizer, responses: list[str]) -> int:
    """Tokens of the decoded responses, each with its end-of-sequence token."""
    return sum(len(tokenizer(r, add_special_tokens=False)["input_ids"]) + 1 for r in responses)


def timed(run) -> tuple[float, int]:
    started = time.perf_counter()
    tokens = run()
    return time.perf_counter() - started, tokens


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--prompts", type=int, default=48)
    parser.add_argument("--samples", type=int, default=4)
    parser.add_argument("--batch-sizes", type=int, nargs="+", default=[16, 96])
    parser.add_argument("--max-new-tokens", type=int, default=40)
    parser.add_argument("--temperature", type=float, default=0.8)
    parser.add_argument("--top-p", type=float, default=0.95)
    args = parser.parse_args()
    import transformers

    from salsa.generation import sample_responses
    from salsa.models import load_causal_lm, load_tokenizer
    from salsa.tasks.reviews import prompts

    transformers.logging.set_verbosity_error()
    model, tokenizer = load_causal_lm("smollm2-135m").eval(), load_tokenizer("smollm2-135m")
    texts = [p["prompt"] for p in prompts("train")][: args.prompts]
    # Warm-up: one small batch through each path.
    sample_responses(model, tokenizer, texts[:2], num_samples=2, max_new_tokens=8, batch_size=4)
    model.generate(**tokenizer(["Hi"], return_tensors="pt"), max_new_tokens=8, pad_token_id=tokenizer.pad_token_id)

    def salsa_tokens(batch_size: int) -> int:
        replies = sample_responses(
            model, tokenizer, texts, num_samples=args.samples, max_new_tokens=args.max_new_tokens,
            temperature=args.temperature, top_p=args.top_p, batch_size=batch_size,
        )  # fmt: skip
        return count_new_tokens(tokenizer, [r for rs in replies for r in rs])

    print(f"{len(texts)} prompts x {args.samples} samples, <= {args.max_new_tokens} new tokens, "
          f"temperature {args.temperature}, top-p {args.top_p}")  # fmt: skip
    print(f"{'batch':>5}  {'generate tok/s':>14}  {'salsa tok/s':>11}  {'generate s':>10}  {'salsa s':>7}  ratio")
    for batch_size in args.batch_sizes:
        peer_s, peer_tokens = timed(
            lambda b=batch_size: count_new_tokens(tokenizer, generate_peer(model, tokenizer, texts, b, args))
        )
        salsa_s, salsa_tokens_ = timed(lambda b=batch_size: salsa_tokens(b))
        peer_rate, salsa_rate = peer_tokens / peer_s, salsa_tokens_ / salsa_s
        print(f"{batch_size:>5}  {peer_rate:>14.1f}  {salsa_rate:>11.1f}  {peer_s:>10.1f}  {salsa_s:>7.1f}  "
              f"{salsa_rate / peer_rate:.2f}x")  # fmt: skip


if __name__ == "__main__":
    main()
