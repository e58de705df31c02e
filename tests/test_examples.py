"""Paired example responses: the same prompt and sample number for every policy, its first RL seed, chosen
deterministically and spread over the prompts."""

from salsa.evaluation.examples import paired_examples


def _rows(policies: dict[str, int], prompts: int = 8, samples: int = 2) -> list[dict]:
    """Rows whose response names where it came from: policy/seed/prompt/sample."""
    return [
        {"policy": policy, "seed_index": seed, "split": split, "index": i, "sample": s,
         "prompt": [{"role": "user", "content": f"{split} prompt {i}"}], "response": f"{policy}/{seed}/{i}/{s}",
         "length": 5, "gold": 0.1 * i + s, "reward": -1.0}
        for policy, seeds in policies.items() for seed in range(seeds)
        for split in ("in_distribution", "out_of_distribution") for i in range(prompts) for s in range(samples)
    ]  # fmt: skip


def test_every_policy_answers_the_same_prompt_and_sample_from_its_first_seed():
    rows = _rows({"salsa": 2, "ppo": 2, "sft": 1})
    examples = paired_examples(rows, count=4, seed=3)
    assert len(examples) == 4
    # One prompt from each quarter of the split's prompts: the picks are spread over it.
    assert [e["index"] // 2 for e in examples] == [0, 1, 2, 3]
    for e in examples:
        i, s = e["index"], e["sample"]
        assert e["split"] == "in_distribution" and e["prompt"] == f"in_distribution prompt {i}"
        assert list(e["responses"]) == ["salsa", "ppo", "sft"]
        for policy, answer in e["responses"].items():
            assert answer == {"response": f"{policy}/0/{i}/{s}", "gold": 0.1 * i + s, "reward": -1.0, "length": 5}
    assert paired_examples(rows, count=4, seed=3) == examples  # deterministic
    draws = {tuple((e["index"], e["sample"]) for e in paired_examples(rows, count=4, seed=k)) for k in range(6)}
    assert len(draws) > 1  # the seed chooses
    ood = paired_examples(rows, count=2, split="out_of_distribution")
    assert [e["index"] // 4 for e in ood] == [0, 1] and ood[0]["prompt"].startswith("out_of_distribution")


def test_only_a_sample_every_policy_answered_is_shown_and_count_is_capped_by_the_prompts():
    rows = [r for r in _rows({"salsa": 1, "ppo": 1}, prompts=3) if not (r["policy"] == "ppo" and r["sample"] == 1)]
    for seed in range(8):
        examples = paired_examples(rows, count=5, seed=seed)
        assert [e["index"] for e in examples] == [0, 1, 2] and {e["sample"] for e in examples} == {0}
    assert paired_examples([], count=4) == []
