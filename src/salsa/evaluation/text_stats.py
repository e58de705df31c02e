"""Text statistics that show reward gaming: a policy that learned the reward model's blind spots rather than the task
writes longer, more often truncated, more repetitive and less varied text than its SFT model, while its scores rise.

Per policy and split, over the evaluation's responses (words: lowercased runs of letters and digits, an apostrophe
inside a word kept, punctuation dropped):

    length           mean response length in tokens (the EOS token counted, as the eval stage counts it)
    truncated        share of responses that used the whole max_new_tokens budget (stopped by the limit, or ending
                     with EOS exactly at it: the rows cannot tell the two apart)
    longest_repeat   mean over responses of the longest word n-gram that occurs twice in the response (occurrences
                     may overlap: "so so so" repeats "so so"); 0 when no word repeats
    distinct_2       distinct word bigrams / all word bigrams over one seed's responses, averaged over seeds (pooled
                     per seed, so a policy of one model and an arm of several seeds pool as many responses)

Each with the bootstrap of `stats.mean_with_interval` over the [seeds, prompts, samples] matrix; distinct_2 pools
every response of a seed, so its interval resamples seeds only (zero width for a policy of one model); it is None
where a seed's responses hold no bigram.
"""

from __future__ import annotations

import re

import numpy as np

from salsa.evaluation.stats import mean_with_interval
from salsa.evaluation.summary import _score_matrix

WORD = re.compile(r"[^\W_]+(?:'[^\W_]+)*")


def words(text: str) -> list[str]:
    """The words of a response, lowercased; punctuation and whitespace dropped."""
    return WORD.findall(text.lower())


def ngrams(tokens: list[str], n: int) -> list[tuple[str, ...]]:
    return [tuple(tokens[i : i + n]) for i in range(len(tokens) - n + 1)]


def distinct_n(responses: list[str], n: int = 2) -> float | None:
    """Distinct word n-grams / all word n-grams, pooled over the responses (n-grams do not cross responses); None
    when the responses hold no n-gram."""
    grams = [gram for response in responses for gram in ngrams(words(response), n)]
    return len(set(grams)) / len(grams) if grams else None


def longest_repeat(text: str) -> int:
    """The largest n such that some word n-gram occurs at least twice in `text` (overlapping occurrences count);
    0 when every word is different."""
    tokens = words(text)
    n = 0
    # A repeated (n+1)-gram contains a repeated n-gram, so the first n without a repeat ends the search.
    while len(set(ngrams(tokens, n + 1))) < len(tokens) - n:
        n += 1
    return n


def truncated(length: float, max_new_tokens: int) -> bool:
    """Whether a response used the whole token budget."""
    return length >= max_new_tokens


def text_statistics(samples: list[dict], max_new_tokens: int, stats: dict) -> dict[str, dict[str, dict]]:
    """{policy: {split: {length, truncated, longest_repeat, distinct_2}}}, each {mean, ci}, from the evaluation's
    sample rows (policy, seed_index, split, index, sample, response, length); `stats` the bootstrap settings
    (num_samples, confidence, seed)."""
    rows = [{**r, "truncated": float(truncated(r["length"], max_new_tokens)),
             "longest_repeat": float(longest_repeat(r["response"]))} for r in samples]  # fmt: skip
    out: dict[str, dict[str, dict]] = {}
    for policy in dict.fromkeys(r["policy"] for r in rows):
        mine = [r for r in rows if r["policy"] == policy]
        out[policy] = {}
        for split in dict.fromkeys(r["split"] for r in mine):
            entry = {key: mean_with_interval(_score_matrix(mine, policy, split, key), **stats)
                     for key in ("length", "truncated", "longest_repeat")}  # fmt: skip
            seeds = sorted({r["seed_index"] for r in mine if r["split"] == split})
            per_seed = [distinct_n([r["response"] for r in mine if r["split"] == split and r["seed_index"] == s])
                        for s in seeds]  # fmt: skip
            # None where a seed's responses hold no bigram at all (every one a word or less).
            entry["distinct_2"] = None if None in per_seed else mean_with_interval(np.array(per_seed)[:, None], **stats)
            out[policy][split] = entry
    return out
