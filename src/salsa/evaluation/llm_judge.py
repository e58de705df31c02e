"""A pairwise LLM judge: which of two responses to a prompt is better, asked in both orders.

The judge model reads the filled template (as a user turn of its chat template, when it has one) and we read
its next-token distribution: the verdict of one order is the label ("A" or "B") it gives more probability
(no text is generated, so nothing needs parsing). Each pair is shown twice, A first and then B first. A win
needs both orders to agree; a judge that prefers whatever comes first (position bias) gives a tie, as in
MT-Bench's pairwise judging (Zheng et al., 2023). Identical responses are a tie without asking.
"""

from __future__ import annotations

from collections.abc import Callable

import torch

from salsa import runtime
from salsa.config import REFERENCES, EvalConfig
from salsa.data import Prompt, prompt_text
from salsa.errors import DataError
from salsa.evaluation.judging import comparison_pairs, turn_of
from salsa.evaluation.stats import seed_pairs
from salsa.generation import left_pad
from salsa.judge_prompt import LABELS, conversation_text, fill_template, order_verdict, pairwise_verdict
from salsa.models import forward_logits, load_tokenizer
from salsa.standard_sets import has_references, mt_bench_second_turns, reference_answers
from salsa.tokenization import render_prompt


class LLMJudge:
    """A causal LM asked for pairwise verdicts; `verdicts` shards the work over processes."""

    def __init__(self, model: torch.nn.Module, name: str, template: str, batch_size: int):
        self.model, self.name, self.template, self.batch_size = model, name, template, batch_size
        self.tokenizer = load_tokenizer(name)
        # The label may be tokenised alone or after a space, depending on what precedes it: count both.
        self.label_ids = [
            sorted({self.tokenizer(text, add_special_tokens=False)["input_ids"][0] for text in (label, " " + label)})
            for label in LABELS
        ]
        self.max_length = getattr(model.config, "max_position_embeddings", None)

    def _encode(self, prompt: Prompt, first: str, second: str) -> list[int]:
        text = render_prompt(self.tokenizer, [{"role": "user", "content": fill_template(self.template, prompt_text(
            prompt), first, second)}])  # fmt: skip
        ids = self.tokenizer(text, add_special_tokens=not self.tokenizer.chat_template)["input_ids"]
        if self.max_length and len(ids) > self.max_length:
            raise DataError(
                f"eval.judge: a judge prompt has {len(ids)} tokens, more than {self.name}'s {self.max_length}; use a "
                "judge with a longer context, a shorter template, or a smaller eval.max_new_tokens"
            )
        return ids

    @torch.no_grad()
    def _order_verdicts(self, texts: list[list[int]]) -> list[int]:
        device = next(self.model.parameters()).device
        ids, mask = (t.to(device) for t in left_pad(texts, self.tokenizer.pad_token_id or 0))
        logits, _ = forward_logits(self.model, ids, mask, (mask.cumsum(-1) - 1).clamp(min=0), keep=1)
        logprobs = logits[:, -1].float().log_softmax(-1)
        scores = [logprobs[:, label].logsumexp(-1) for label in self.label_ids]
        return [order_verdict(a, b) for a, b in zip(scores[0].tolist(), scores[1].tolist(), strict=True)]

    def verdicts(
        self, jobs: list[tuple[Prompt, str, str]], on_batch: Callable[[int], None] | None = None
    ) -> list[dict[str, int]]:
        """For each (prompt, response A, response B): the verdict of each order and the pairwise verdict."""
        results: dict[int, dict[str, int]] = {}
        asked = [i for i, (_, a, b) in enumerate(jobs) if a != b]
        results.update({i: {"a_first": 0, "b_first": 0, "verdict": 0} for i, (_, a, b) in enumerate(jobs) if a == b})
        if on_batch:
            on_batch(len(results))
        for batch in runtime.my_batches(asked, self.batch_size):
            texts = [self._encode(jobs[i][0], jobs[i][1], jobs[i][2]) for i in batch]
            texts += [self._encode(jobs[i][0], jobs[i][2], jobs[i][1]) for i in batch]
            found = self._order_verdicts(texts)
            for i, a_first, b_first in zip(batch, found[: len(batch)], found[len(batch) :], strict=True):
                results[i] = {"a_first": a_first, "b_first": b_first, "verdict": pairwise_verdict(a_first, b_first)}
            if on_batch:
                on_batch(len(batch) * runtime.world_size())
        everything = runtime.gather_dict(results)
        return [everything[i] for i in range(len(jobs))]


def judgment_rows(samples: list[dict], pairs: list[tuple[str, str]]) -> list[dict]:
    """The pairs of responses to judge, for every compared pair of policies and split: response (prompt i,
    sample s) of A against B's response to the same prompt with the same sampling seed. On an MT-Bench second turn,
    as FastChat's multi-turn pairwise judge: each side's response is its whole conversation (the first question, its
    own first answer, the follow-up, its answer to it; `conversation_text`) and the prompt is the follow-up, the
    question whose answers are judged."""
    by_key = {(r["policy"], r["seed_index"], r["split"], r["index"], r["sample"]): r for r in samples}
    seeds: dict[str, int] = {}
    for r in samples:
        seeds[r["policy"]] = max(seeds.get(r["policy"], 0), r["seed_index"] + 1)
    rows = []
    for a, b in pairs:
        for pair_index, (seed_a, seed_b) in enumerate(seed_pairs(seeds[a], seeds[b], (a, b))):
            for row_a in (r for r in samples if (r["policy"], r["seed_index"]) == (a, seed_a)):
                key = (b, seed_b, row_a["split"], row_a["index"], row_a["sample"])
                if b == REFERENCES and key not in by_key:  # no reference answer to this prompt (MT-Bench: 50 of 80)
                    continue
                row_b = by_key[key]
                prompt, response_a, response_b = row_a["prompt"], row_a["response"], row_b["response"]
                if turn_of(row_a["split"]) == 2:
                    prompt = row_a["prompt"][-1]["content"]
                    response_a, response_b = (conversation_text(r["prompt"], r["response"]) for r in (row_a, row_b))
                rows.append({
                    "a": a, "b": b, "split": row_a["split"], "pair_index": pair_index, "seed_a": seed_a,
                    "seed_b": seed_b, "index": row_a["index"], "sample": row_a["sample"], "prompt": prompt,
                    "response_a": response_a, "response_b": response_b,
                })  # fmt: skip
                if "gold" in row_a:  # kept beside the verdict to measure the judge's agreement with gold
                    rows[-1] |= {"gold_a": row_a["gold"], "gold_b": row_b["gold"]}
    return rows


def reference_samples(samples: list[dict], sources: dict[str, str | None]) -> list[dict]:
    """The reference answers of every split whose prompts (`sources`: split -> eval.prompts / ood_prompts) are a
    standard set that has some, as the sample rows of a policy named `references` with one seed: the answer to
    prompt i stands as every sample of prompt i, so that each response of a policy meets the reference answer to its
    prompt. A prompt without one (MT-Bench's 50 questions outside math, reasoning and coding) has no row. On an
    MT-Bench second turn the reference's conversation is its own: the first question, GPT-4's first answer, the
    follow-up, and GPT-4's second answer as the response."""
    rows = []
    for split, source in sources.items():
        if not has_references(source):
            continue
        turn = turn_of(split)
        answers = reference_answers(source, turn)
        prompts = {(r["index"], r["sample"]): r["prompt"] for r in samples if r["split"] == split}
        if turn == 2:  # a question without references is left out below: its placeholder first answer is never read
            conversations = mt_bench_second_turns([first or "" for first in reference_answers(source, 1)])
            prompts = {(i, s): conversations[i] for i, s in prompts}
        rows += [
            {"policy": REFERENCES, "seed_index": 0, "split": split, "index": i, "sample": s, "prompt": prompt,
             "response": answers[i]}
            for (i, s), prompt in sorted(prompts.items()) if answers[i] is not None
        ]  # fmt: skip
    return rows


def judging_plan(config: EvalConfig, prompts: dict[str, list], sources: dict[str, str | None]) -> list[str]:
    """What the LLM judge would be asked, one line per compared pair and split, then the total: the prompts judged
    (those with a reference answer, against `references`), the pairs of responses (prompts x samples x pairs of
    seeds) and the judge calls (two orders each; two identical responses are a tie and not asked, so the calls are
    at most this many). Reads no model."""
    lines, calls = [], 0
    for a, b in comparison_pairs(config, with_references=True):
        seeds_b = 1 if b == REFERENCES else len(config.policies[b])
        seeds = len(seed_pairs(len(config.policies[a]), seeds_b, (a, b)))
        for split, split_prompts in prompts.items():
            judged = len(split_prompts)
            if b == REFERENCES:
                if not has_references(sources[split]):
                    continue
                judged = sum(answer is not None for answer in reference_answers(sources[split], turn_of(split)))
            pairs = judged * config.samples_per_prompt * seeds
            calls += 2 * pairs
            lines.append(
                f"judge {config.judge}: {a} vs {b} on {split} ({sources[split]}): {judged} of {len(split_prompts)} "
                f"prompts x {config.samples_per_prompt} samples x {seeds} seed pairs = {pairs} pairs, both orders: "
                f"{2 * pairs} judge calls"
            )
    return [*lines, f"judge {config.judge}: at most {calls} judge calls in all (identical responses are not asked)"]
