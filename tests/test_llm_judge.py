"""The LLM judge: verdicts from both orders, a hand-made judge model, pairing, and agreement with gold."""

from types import SimpleNamespace

import numpy as np
import pytest
import torch

from salsa.config import EvalConfig
from salsa.errors import DataError
from salsa.evaluation.llm_judge import LLMJudge, judgment_rows
from salsa.evaluation.summary import summarise_judge
from salsa.judge_prompt import DEFAULT_TEMPLATE, check_template, fill_template, pairwise_verdict


@pytest.mark.parametrize(
    ("a_first", "b_first", "expected"),
    [
        (1, -1, 1),  # A preferred when shown first and when shown second: A wins
        (-1, 1, -1),  # B preferred in both orders: B wins
        (1, 1, 0),  # the first shown preferred both times: position bias, a tie
        (-1, -1, 0),  # the second shown preferred both times
        (1, 0, 0),  # one order undecided
        (0, 0, 0),
    ],
)
def test_a_verdict_needs_both_orders_to_agree(a_first, b_first, expected):
    assert pairwise_verdict(a_first, b_first) == expected


def test_a_template_is_filled_literally_and_needs_every_placeholder():
    filled = fill_template(DEFAULT_TEMPLATE, "Review {x}.", "ok {response_b}", "bad")
    assert "Review {x}." in filled and "[Response A]\nok {response_b}\n" in filled and filled.count("bad") == 1
    with pytest.raises(DataError, match=r"lacks \{response_b\}"):
        check_template("{prompt} {response_a}", "eval.judge_template (t.txt)")


class HandMadeJudge(torch.nn.Module):
    """A judge model written by hand: it reads the filled template back and puts its next-token logit on the
    label of the response it likes (`prefers` maps the two shown responses to 'A' or 'B')."""

    def __init__(self, tokenizer, prefers):
        super().__init__()
        self.tokenizer, self.prefers, self.calls = tokenizer, prefers, 0
        self.weight = torch.nn.Parameter(torch.zeros(1))
        self.config = SimpleNamespace(max_position_embeddings=4096)

    def forward(self, input_ids, attention_mask, logits_to_keep=0, **_):
        self.calls += 1
        logits = torch.zeros(len(input_ids), 1, len(self.tokenizer))
        for row, (ids, mask) in enumerate(zip(input_ids, attention_mask, strict=True)):
            text = self.tokenizer.decode(ids[mask.bool()])
            first = text.split("[Response A]\n")[1].split("\n\n[Response B]")[0]
            second = text.split("[Response B]\n")[1].split("\n\nWhich response")[0]
            label = self.prefers(first, second)
            logits[row, -1, self.tokenizer(label, add_special_tokens=False)["input_ids"][0]] = 5.0
        return SimpleNamespace(logits=logits)


def test_the_judge_asks_both_orders_and_a_position_biased_judge_gives_ties(tiny_model_dir):
    from salsa.models import load_tokenizer

    tokenizer = load_tokenizer(str(tiny_model_dir))
    jobs = [("Review a cafe.", "good coffee", "bad coffee"), ("Review a park.", "awful", "good trees"),
            ("Review a bar.", "same", "same")]  # fmt: skip
    fair = HandMadeJudge(tokenizer, lambda first, second: "A" if "good" in first else "B")
    judge = LLMJudge(fair, str(tiny_model_dir), DEFAULT_TEMPLATE, batch_size=8)
    found = judge.verdicts(jobs)
    assert [v["verdict"] for v in found] == [1, -1, 0]
    assert [(v["a_first"], v["b_first"]) for v in found[:2]] == [(1, -1), (-1, 1)]
    assert fair.calls == 1  # both orders of both pairs in one batch; identical responses are never asked

    biased = LLMJudge(HandMadeJudge(tokenizer, lambda *_: "A"), str(tiny_model_dir), DEFAULT_TEMPLATE, 8)
    assert [v["verdict"] for v in biased.verdicts(jobs)] == [0, 0, 0]


def _samples(policy, seeds, responses, gold):
    return [
        {"policy": policy, "seed_index": s, "split": "in_distribution", "index": i, "sample": 0, "prompt": f"p{i}",
         "response": responses[s][i], "gold": gold[s][i]}
        for s in range(seeds) for i in range(len(responses[0]))
    ]  # fmt: skip


def test_judged_pairs_share_prompt_and_seed_and_a_single_model_meets_every_seed():
    samples = _samples("salsa", 2, [["a0", "a1"], ["b0", "b1"]], [[1, 1], [1, 1]])
    samples += _samples("sft", 1, [["s0", "s1"]], [[0, 0]])
    rows = judgment_rows(samples, [("salsa", "sft")])
    assert [(r["seed_a"], r["seed_b"], r["response_a"], r["response_b"]) for r in rows] == [
        (0, 0, "a0", "s0"), (0, 0, "a1", "s1"), (1, 0, "b0", "s0"), (1, 0, "b1", "s1"),
    ]  # fmt: skip
    assert rows[0]["prompt"] == "p0" and rows[0]["gold_a"] == 1 and rows[0]["gold_b"] == 0


def test_judge_summary_counts_consistency_position_and_agreement_with_gold_by_hand():
    def row(index, verdict, a_first, b_first, gold_a, gold_b, same=False):
        return {"a": "x", "b": "y", "split": "in_distribution", "pair_index": 0, "index": index, "sample": 0,
                "prompt": "p", "response_a": "r", "response_b": "r" if same else "s", "verdict": verdict,
                "a_first": a_first, "b_first": b_first, "gold_a": gold_a, "gold_b": gold_b}  # fmt: skip

    judgments = [
        row(0, 1, 1, -1, 2.0, 1.0),  # judge A, gold A: agree
        row(1, -1, -1, 1, 2.0, 1.0),  # judge B, gold A: disagree
        row(2, 0, 1, 1, 1.0, 1.0),  # position bias -> tie; gold tie: agree (as three classes)
        row(3, 0, 0, 0, 1.0, 1.0, same=True),  # identical responses: a tie, not asked
    ]
    config = EvalConfig(policies={"x": ["m"], "y": ["n"]}, judge="j")
    (comparison,), info = summarise_judge(judgments, config, {"num_samples": 200, "confidence": 0.95, "seed": 0})
    assert (comparison["win"], comparison["tie"], comparison["loss"]) == (0.25, 0.5, 0.25)
    assert comparison["judge"] == "llm" and comparison["mean_difference"] == 0.0
    assert info["identical_pairs"] == 1 and info["consistent"] == pytest.approx(2 / 3)
    assert info["first_shown_preferred"] == pytest.approx((1 + 1 + 2) / 6)  # the first shown won 4 of 6 answers
    assert info["gold"] == {"agreement": pytest.approx(2 / 3), "decisive_pairs": 2, "decisive_agreement": 0.5}
    assert np.isclose(comparison["win_rate"], 0.5)
