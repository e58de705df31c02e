"""Text statistics of the evaluation's responses (reward gaming: length, truncation, repetition, variety), against
hand computations."""

import pytest

from salsa.evaluation.text_stats import distinct_n, longest_repeat, text_statistics, truncated, words

STATS = {"num_samples": 200, "confidence": 0.95, "seed": 0}


def test_words_are_lowercased_without_punctuation():
    assert words("Great, great GREAT! It's the best-ever_deal.") == ["great", "great", "great", "it's", "the", "best",
                                                                    "ever", "deal"]  # fmt: skip
    assert words("  ...  ") == []


def test_distinct_2_pools_the_bigrams_of_every_response():
    # "a b a b": (a b) (b a) (a b); "a b": (a b); 4 bigrams, 2 distinct. No bigram across responses: (b a) once.
    assert distinct_n(["a b a b", "A, b"]) == pytest.approx(2 / 4)
    assert distinct_n(["one two three", "four five"]) == 1.0
    assert distinct_n(["one", "two"]) is None  # no bigram at all
    assert distinct_n(["a b c a b c"], n=3) == pytest.approx(3 / 4)  # abc bca cab abc


def test_longest_repeat_is_the_longest_word_ngram_seen_twice():
    assert longest_repeat("I love it, I LOVE it!") == 3
    assert longest_repeat("the cat sat on the mat") == 1
    assert longest_repeat("so so so") == 2  # the two occurrences of "so so" overlap
    assert longest_repeat("amazing amazing amazing amazing amazing") == 4
    assert longest_repeat("one two three") == 0
    assert longest_repeat("") == 0


def test_a_response_is_truncated_when_it_used_the_whole_budget():
    assert truncated(48, 48) and truncated(48.0, 48)
    assert not truncated(47, 48)


def _row(policy, seed, split, index, sample, response, length):
    return {"policy": policy, "seed_index": seed, "split": split, "index": index, "sample": sample,
            "prompt": f"prompt {index}", "response": response, "length": length}  # fmt: skip


def test_text_statistics_per_policy_and_split():
    rows = [
        # ppo, 2 seeds x 2 prompts x 1 sample, in-distribution
        _row("ppo", 0, "in_distribution", 0, 0, "good good good", 4),  # repeat 2, truncated at 4
        _row("ppo", 0, "in_distribution", 1, 0, "a fine day", 3),  # repeat 0
        _row("ppo", 1, "in_distribution", 0, 0, "nice nice", 4),  # repeat 1, truncated
        _row("ppo", 1, "in_distribution", 1, 0, "nice one", 2),  # repeat 0
        _row("ppo", 0, "out_of_distribution", 0, 0, "x y", 1),
        # sft, one model
        _row("sft", 0, "in_distribution", 0, 0, "a b a b", 4),  # repeat 2 ("a b"), truncated
        _row("sft", 0, "in_distribution", 1, 0, "c", 1),
    ]
    result = text_statistics(rows, max_new_tokens=4, stats=STATS)
    assert list(result) == ["ppo", "sft"] and list(result["ppo"]) == ["in_distribution", "out_of_distribution"]
    ppo = result["ppo"]["in_distribution"]
    assert ppo["length"]["mean"] == pytest.approx((4 + 3 + 4 + 2) / 4)
    assert ppo["truncated"]["mean"] == pytest.approx(2 / 4)
    assert ppo["longest_repeat"]["mean"] == pytest.approx((2 + 0 + 1 + 0) / 4)
    # seed 0: (good good) (good good) (a fine) (fine day): 3 of 4 distinct; seed 1: (nice nice) (nice one): 2 of 2
    assert ppo["distinct_2"]["mean"] == pytest.approx((3 / 4 + 2 / 2) / 2)
    for key in ("length", "truncated", "longest_repeat", "distinct_2"):
        low, high = ppo[key]["ci"]
        assert low <= ppo[key]["mean"] <= high and low < high, key  # seeds differ: the interval has a width
    sft = result["sft"]["in_distribution"]
    assert sft["longest_repeat"]["mean"] == pytest.approx(1.0) and sft["truncated"]["mean"] == pytest.approx(0.5)
    assert sft["distinct_2"] == {"mean": pytest.approx(2 / 3), "ci": (pytest.approx(2 / 3), pytest.approx(2 / 3))}
    assert result["ppo"]["out_of_distribution"]["distinct_2"]["mean"] == 1.0
    rows.append(_row("one-word", 0, "in_distribution", 0, 0, "yes", 2))
    assert text_statistics(rows, 4, STATS)["one-word"]["in_distribution"]["distinct_2"] is None
