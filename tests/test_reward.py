import json
import math

import pytest
import torch
from transformers import AutoConfig
from transformers.models.auto import configuration_auto

from salsa.config import RewardConfig
from salsa.data import PreferencePair, parse_preference_rows
from salsa.errors import ConfigError, DataError
from salsa.io import COMPLETE_MARKER, read_json, read_jsonl
from salsa.reward import (
    backbone_learning_rate,
    bradley_terry_loss,
    pair_scores,
    pairwise_accuracy,
    prompt_groups,
    spearman,
    stayed_at_chance,
    train_reward,
)
from salsa.scoring import RewardModel
from salsa.seeding import batch_stream


def test_bradley_terry_loss_matches_hand_computation():
    chosen, rejected = torch.tensor([1.0, 0.0]), torch.tensor([0.0, 2.0])
    expected = (math.log(1 + math.exp(-1.0)) + math.log(1 + math.exp(2.0))) / 2
    assert bradley_terry_loss(chosen, rejected).item() == pytest.approx(expected, rel=1e-6)


def test_a_loss_that_stays_at_ln_2_is_flagged():
    constant_score = bradley_terry_loss(torch.zeros(4), torch.zeros(4)).item()
    assert stayed_at_chance([0.70] * 5 + [constant_score] * 5)
    assert not stayed_at_chance([constant_score] * 18 + [0.60, 0.55])  # the last tenth learned
    assert not stayed_at_chance([constant_score] * 9 + [0.5] * 11, tail=0.5)


def test_accuracy_and_spearman():
    assert pairwise_accuracy(
        torch.tensor([1.0, 0.0, 3.0]), torch.tensor([0.0, 1.0, 2.0]), torch.tensor([True, True, False])
    ) == pytest.approx(1 / 3)
    assert spearman([1, 2, 3, 4], [10, 20, 30, 40]) == pytest.approx(1.0)
    assert spearman([1, 2, 3, 4], [4, 3, 2, 1]) == pytest.approx(-1.0)


def test_prompt_batches_keep_prompts_whole_and_see_every_pair_once_per_epoch():
    prompts = ["a", "b", "a", "c", "b", "a", "d", "e", "e"]
    groups = prompt_groups(prompts)
    assert groups == [[0, 2, 5], [1, 4], [3], [6], [7, 8]]
    batches = batch_stream([len(g) for g in groups], 3, seed=0)
    stream = []  # the groups in the order the batches take them
    for _ in range(12):
        batch = next(batches)
        assert sum(len(groups[g]) for g in batch) >= 3  # whole prompts until the batch holds 3 pairs
        assert sum(len(groups[g]) for g in batch[:-1]) < 3  # and not one prompt more
        stream += batch
    for epoch in range(3):  # every prompt once per epoch, in a fresh order each time
        assert sorted(stream[5 * epoch : 5 * epoch + 5]) == list(range(5))
    assert stream[:5] != stream[5:10] or stream[5:10] != stream[10:15]


class _CountingReward:
    """Scores a response by its length and records how many texts were forwarded."""

    def __init__(self):
        self.forwarded = 0

    def forward(self, prompts, responses):
        self.forwarded += len(responses)
        return torch.tensor([float(len(r)) for r in responses])


def test_pair_scores_forward_each_distinct_response_once():
    batch = [PreferencePair("p", "long answer", "no"), PreferencePair("p", "long answer", "meh"),
             PreferencePair("p", "meh", "no"), PreferencePair("q", "no", "meh")]  # fmt: skip
    reward = _CountingReward()
    chosen, rejected = pair_scores(reward, batch)
    assert reward.forwarded == 5  # (p, long answer), (p, no), (p, meh), (q, no), (q, meh)
    assert chosen.tolist() == [11.0, 11.0, 3.0, 2.0]
    assert rejected.tolist() == [2.0, 3.0, 2.0, 3.0]


def test_preference_rows_accept_strings_and_messages_and_name_bad_rows(tmp_path):
    rows = [
        {"prompt": "p", "chosen": "good", "rejected": "bad"},
        {"prompt": "q", "chosen": [{"role": "user", "content": "q"}, {"role": "assistant", "content": "yes"}],
         "rejected": [{"role": "assistant", "content": "no"}]},
    ]  # fmt: skip
    pairs = parse_preference_rows(rows, "mem")
    assert (pairs[1].chosen, pairs[1].rejected) == ("yes", "no")
    bad = tmp_path / "prefs.jsonl"
    bad.write_text(json.dumps(rows[0]) + "\n" + json.dumps({"prompt": "p", "chosen": "x"}) + "\n")
    from salsa.data import load_records

    with pytest.raises(DataError, match=r"prefs.jsonl row 2: missing field 'rejected'"):
        parse_preference_rows(*load_records(str(bad)))
    with pytest.raises(DataError, match="row 1: field 'chosen' must be a string or a list of chat messages"):
        parse_preference_rows([{"prompt": "p", "chosen": 3, "rejected": "b"}], "mem")


POSITIVE = ["I loved it, wonderful and delightful.", "Great service and excellent food.", "Fantastic, I am so happy."]
NEGATIVE = ["I hated it, awful and miserable.", "Terrible service and disgusting food.", "Horrible, I am so angry."]
GOOD, BAD = ["wonderful", "excellent", "delightful", "great"], ["awful", "terrible", "disgusting", "horrible"]
SUBJECTS = ["food", "service", "room", "staff", "view", "music", "coffee", "garden"]
TRAINING_SUBJECTS, HELD_OUT_SUBJECTS = SUBJECTS[:5], SUBJECTS[5:]


def _pairs(path, n, subjects=TRAINING_SUBJECTS, prompt="Review number {}."):
    """`n` pairs "The <subject> was <good word>." over "... <bad word>.", with gold scores. Held-out pairs (other
    subjects and prompts) share no prompt and no response with the training pairs, so their accuracy is not
    training accuracy."""
    rows = []
    for i in range(n):
        subject = subjects[i % len(subjects)]
        good, bad = GOOD[i % len(GOOD)], BAD[(i // len(subjects)) % len(BAD)]
        rows.append({"prompt": prompt.format(i), "chosen": f"The {subject} was {good}.",
                     "rejected": f"The {subject} was {bad}.", "gold_chosen": 1.0, "gold_rejected": -1.0})  # fmt: skip
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def _held_out_pairs(path, n):
    return _pairs(path, n, HELD_OUT_SUBJECTS, prompt="How was visit {}?")


def _says_one_label(path):
    """The saved config declares the one score the model outputs (TRL refuses a reward model of more labels)."""
    config = AutoConfig.from_pretrained(path, trust_remote_code=True)
    return config.num_labels == 1 and len(config.id2label) == 1


def test_encoder_reward_model_learns_a_preference_and_round_trips(tmp_path, monkeypatch):
    cfg = RewardConfig(
        data=str(_pairs(tmp_path / "train.jsonl", 48)), eval_data=str(_held_out_pairs(tmp_path / "eval.jsonl", 12)),
        output_dir=str(tmp_path / "rm"), num_epochs=1, batch_size=8, learning_rate=1e-4, max_length=32,
    )  # fmt: skip
    path = train_reward(cfg, show_progress=False)
    evaluation = json.loads((tmp_path / "rm" / "eval.json").read_text())
    assert evaluation["accuracy_vs_gold"] == 1.0
    assert _says_one_label(path)

    def asks_whether_to_trust_remote_code(*args, **kwargs):
        raise AssertionError("loading salsa's reward model asked whether to trust its code (a terminal prompt)")

    monkeypatch.setattr(configuration_auto, "resolve_trust_remote_code", asks_whether_to_trust_remote_code)
    reward = RewardModel.load(path)
    monkeypatch.undo()
    scores = reward.score(["Review number 1."] * 2, [POSITIVE[0], NEGATIVE[0]])
    assert scores[0] > scores[1]
    # Normalised on the training responses (every distinct prompt and response of the pairs): mean 0, std 1 there.
    pairs = [json.loads(line) for line in (tmp_path / "train.jsonl").read_text().splitlines()]
    texts = sorted({(p["prompt"], r) for p in pairs for r in (p["chosen"], p["rejected"])})
    train_scores = reward.score([p for p, _ in texts], [r for _, r in texts])
    assert float(train_scores.mean()) == pytest.approx(0.0, abs=1e-4)
    assert float(train_scores.std()) == pytest.approx(1.0, abs=1e-4)
    # A directory of the older format (head in its own file) is refused rather than scored with a missing head.
    (path / "score_head.safetensors").write_bytes(b"")
    with pytest.raises(DataError, match="older salsa"):
        RewardModel.load(str(path))


def test_a_run_stuck_at_ln_2_after_its_first_epoch_starts_again_with_the_next_seed(tmp_path):
    # Every pair also appears reversed: no score ordering beats ln 2, so each try stays stuck.
    rows = [
        {"prompt": f"Review number {i}.", "chosen": a, "rejected": b}
        for i in range(4) for a, b in ((POSITIVE[i % 3], NEGATIVE[i % 3]), (NEGATIVE[i % 3], POSITIVE[i % 3]))
    ]  # fmt: skip
    (tmp_path / "train.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    cfg = RewardConfig(
        data=str(tmp_path / "train.jsonl"), eval_data=None, output_dir=str(tmp_path / "rm"), num_epochs=2,
        batch_size=2, max_length=32, restarts=1, seed=5,
    )  # fmt: skip
    train_reward(cfg, show_progress=False)
    log = read_jsonl(tmp_path / "rm" / "metrics.jsonl")
    # Seed 5 gives up after its first epoch (4 steps of one prompt); seed 6, the last try, trains to the end.
    assert [(r["seed"], r["step"]) for r in log] == [(5, s) for s in range(1, 5)] + [(6, s) for s in range(1, 9)]
    assert read_json(tmp_path / "rm" / COMPLETE_MARKER)["seed"] == 6
    with pytest.raises(ConfigError, match="reward.restarts"):
        train_reward(RewardConfig(data=str(tmp_path / "train.jsonl"), restarts=-1), show_progress=False)


def test_causal_backbone_learns_a_preference(tmp_path, tiny_model_dir):
    cfg = RewardConfig(
        backbone="causal", model=str(tiny_model_dir), data=str(_pairs(tmp_path / "train.jsonl", 48)),
        eval_data=str(_held_out_pairs(tmp_path / "eval.jsonl", 12)), output_dir=str(tmp_path / "rm"), num_epochs=3,
        batch_size=8, max_length=48, learning_rate=1e-3, head_learning_rate=1e-2, gradient_checkpointing=True,
    )  # fmt: skip
    path = train_reward(cfg, show_progress=False)
    assert _says_one_label(path)
    reward = RewardModel.load(path)
    assert reward.layout == "conversation"  # the causal backbone reads the templated conversation, as TRL does
    # The last-token head of a random tiny LM learns to rank good reviews above bad ones, also of subjects and
    # prompts it never saw.
    assert json.loads((tmp_path / "rm" / "eval.json").read_text())["accuracy_vs_gold"] >= 0.9
    scores = reward.score(["How was your stay?"] * 8, [f"The garden was {word}." for word in GOOD + BAD])
    assert scores[:4].min() > scores[4:].max()


def test_a_tie_counts_as_half_a_correct_order():
    tied = torch.zeros(4)
    assert pairwise_accuracy(tied, tied, torch.ones(4, dtype=torch.bool)) == 0.5  # a constant scorer: chance
    assert pairwise_accuracy(torch.tensor([1.0, 0.0]), torch.tensor([0.0, 0.0]), torch.tensor([True, True])) == 0.75


def test_backbone_learning_rate_defaults_by_kind_and_an_explicit_one_wins():
    assert backbone_learning_rate(RewardConfig()) == 1e-4  # the small encoder must move to learn
    assert backbone_learning_rate(RewardConfig(backbone="causal")) == 1e-5  # a pretrained LM must not forget
    assert backbone_learning_rate(RewardConfig(backbone="causal", learning_rate=3e-6)) == 3e-6
