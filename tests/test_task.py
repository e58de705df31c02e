import itertools
import json
import random

import pytest

from salsa.config import DataConfig
from salsa.task_data import bradley_terry_label, make_task_data, preference_pairs
from salsa.tasks import reviews


def test_gold_judge_prefers_fluent_on_topic_requested_sentiment():
    prompt = reviews.make_prompt("a neighbourhood bakery", "positive")
    fluent = "The bakery was wonderful, with delicious bread and friendly staff."
    degenerate = "great great great great great great great great"
    wrong_polarity = "The bakery was awful, with stale bread and rude staff."
    off_topic = "The weather was wonderful and the sea was lovely today."
    assert reviews.gold_score(prompt, fluent) > 0.5
    assert reviews.gold_score(prompt, degenerate) < reviews.gold_score(prompt, wrong_polarity) < 0
    assert reviews.gold_score(prompt, off_topic) == 0.0
    negative = reviews.make_prompt("a neighbourhood bakery", "negative")
    assert reviews.gold_score(negative, wrong_polarity) > 0.5 > reviews.gold_score(negative, fluent)


def test_counterpart_swaps_the_requested_sentiment():
    prompt = reviews.make_prompt("a cinema", "positive", reviews.TEMPLATES[1])
    assert reviews.counterpart(prompt) == reviews.make_prompt("a cinema", "negative", reviews.TEMPLATES[1])
    assert reviews.counterpart(reviews.counterpart(prompt)) == prompt


def test_other_subject_asks_the_same_about_another_subject_of_the_split():
    train = [phrase for phrase, _ in reviews.SPLITS["train"][0]]
    prompt = reviews.make_prompt(train[3], "negative", reviews.TEMPLATES[2])
    other = reviews.other_subject(prompt)
    assert other == reviews.make_prompt(train[4], "negative", reviews.TEMPLATES[2])
    last = reviews.make_prompt(train[-1], "positive")
    assert reviews.other_subject(last) == reviews.make_prompt(train[0], "positive")
    dev = [phrase for phrase, _ in reviews.DEV_SUBJECTS]  # a dev subject's other subject is a dev subject
    assert reviews.other_subject(reviews.make_prompt(dev[0], "positive")) == reviews.make_prompt(dev[1], "positive")
    # An answer about the other subject earns no sentiment credit under the original prompt.
    assert reviews.gold_score(prompt, "The laptop backpack was awful, flimsy and badly stitched.") == 0.0
    assert reviews.other_subject("Tell me a joke.") is None


def test_form_penalises_repetition_and_short_answers():
    assert reviews.form("I really enjoyed the quiet garden and the kind staff.") == 1.0
    assert reviews.form("so good so good so good so good") == 0.0
    assert reviews.form("Nice.") == 0.0


def test_splits_are_disjoint_and_ood_is_another_domain():
    splits = {name: reviews.prompts(name) for name in ("train", "dev", "eval", "ood")}
    texts = {name: {p["prompt"] for p in rows} for name, rows in splits.items()}
    subjects = {name: {p["subject"] for p in rows} for name, rows in splits.items()}
    for a, b in itertools.combinations(splits, 2):
        assert not texts[a] & texts[b] and not subjects[a] & subjects[b], (a, b)
    assert len(splits["dev"]) == 24 and len(splits["train"]) == 120
    assert all(
        reviews.parse_request(p["prompt"]) == (p["sentiment"], p["subject"]) for rows in splits.values() for p in rows
    )


def test_bradley_terry_labels_follow_gold_without_noise_and_are_seeded():
    rng = random.Random(0)
    assert all(bradley_terry_label(0.5, -0.5, 0.0, rng) for _ in range(20))
    draws = [bradley_terry_label(0.1, 0.0, 0.1, random.Random(s)) for s in range(400)]
    assert 0.65 < sum(draws) / len(draws) < 0.80  # sigmoid(1) = 0.731
    rows = preference_pairs("p", [("a", 1.0), ("b", 0.0), ("c", -1.0), ("a", 1.0), ("d", 0.0)], 0.0, random.Random(0))
    assert len(rows) == 5  # distinct responses with distinct gold scores: (a,b) (a,c) (a,d) (b,c) (c,d)
    assert all(r["gold_chosen"] > r["gold_rejected"] for r in rows)


@pytest.fixture(scope="module")
def task_data(tiny_study):
    """The same data made twice, each on its own: conftest.tiny_study's data stage in run/ and in shard-1/ (the tiny
    model, 2 samples per prompt, 6 new tokens), which the study makes anyway."""
    return tiny_study / "run" / "data", tiny_study / "shard-1" / "data"


def test_task_data_is_deterministic_and_complete(task_data):
    first, second = task_data
    for name in ("prompts_train", "prompts_dev", "prompts_eval", "prompts_ood", "sft", "prefs", "prefs_dev", "samples"):
        assert (first / f"{name}.jsonl").read_text() == (second / f"{name}.jsonl").read_text(), name
    sft = [json.loads(line) for line in (first / "sft.jsonl").read_text().splitlines()]
    assert len(sft) == len(reviews.prompts("train"))
    assert "Datasheet" in (first / "datasheet.md").read_text()
    marker = json.loads((first / "salsa_complete.json").read_text())
    assert marker["gold_judge_version"] == reviews.GOLD_JUDGE_VERSION  # the judge that chose and labelled the data
    prefs = [json.loads(line) for line in (first / "prefs.jsonl").read_text().splitlines()]
    held_out = [json.loads(line) for line in (first / "prefs_dev.jsonl").read_text().splitlines()]
    dev_prompts = {p["prompt"] for p in reviews.prompts("dev")}
    # Nothing is built from the evaluation prompts; the reward model's held-out pairs come from the dev split.
    samples = [json.loads(line) for line in (first / "samples.jsonl").read_text().splitlines()]
    evaluation = {p["prompt"] for p in reviews.prompts("eval") + reviews.prompts("ood")}
    assert not {r["prompt"] for r in prefs + held_out + sft + samples} & evaluation
    assert prefs and held_out and {p["prompt"] for p in held_out} <= dev_prompts
    assert not {p["prompt"] for p in prefs + sft} & dev_prompts
    # Training pairs also use the samples of the twin prompt and of the same request about another subject,
    # scored by the judge under this prompt.
    own = {(s["prompt"], s["response"]) for s in samples}
    borrowed = [(p["prompt"], r) for p in prefs for r in (p["chosen"], p["rejected"]) if (p["prompt"], r) not in own]
    from_twin = {(p, r) for p, r in borrowed if (reviews.counterpart(p), r) in own}
    from_other = {(p, r) for p, r in borrowed if (reviews.other_subject(p), r) in own}
    assert from_twin and from_other and from_twin | from_other == set(borrowed)
    assert all(p["gold_chosen"] == reviews.gold_score(p["prompt"], p["chosen"]) for p in prefs)
    assert all(p["gold_chosen"] != p["gold_rejected"] for p in prefs)


def test_data_make_rejects_bad_settings(tmp_path):
    from salsa.errors import ConfigError

    with pytest.raises(ConfigError, match="data.task must be a built-in task \\(reviews\\), got 'movies'"):
        make_task_data(DataConfig(task="movies", output_dir=str(tmp_path)))
    with pytest.raises(ConfigError, match="off_subject_samples must be >= 0"):
        make_task_data(DataConfig(off_subject_samples=-1, output_dir=str(tmp_path)))
    with pytest.raises(ConfigError, match="samples_per_prompt must be >= 2"):
        make_task_data(DataConfig(samples_per_prompt=1, output_dir=str(tmp_path)))
