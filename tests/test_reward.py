import json
import math

import pytest
import torch

from salsa.config import RewardConfig
from salsa.errors import DataError
from salsa.reward import (
    RewardModel,
    bradley_terry_loss,
    pairwise_accuracy,
    parse_preference_rows,
    spearman,
    train_reward,
)


def test_bradley_terry_loss_matches_hand_computation():
    chosen, rejected = torch.tensor([1.0, 0.0]), torch.tensor([0.0, 2.0])
    expected = (math.log(1 + math.exp(-1.0)) + math.log(1 + math.exp(2.0))) / 2
    assert bradley_terry_loss(chosen, rejected).item() == pytest.approx(expected, rel=1e-6)


def test_accuracy_and_spearman():
    assert pairwise_accuracy(
        torch.tensor([1.0, 0.0, 3.0]), torch.tensor([0.0, 1.0, 2.0]), torch.tensor([True, True, False])
    ) == pytest.approx(1 / 3)
    assert spearman([1, 2, 3, 4], [10, 20, 30, 40]) == pytest.approx(1.0)
    assert spearman([1, 2, 3, 4], [4, 3, 2, 1]) == pytest.approx(-1.0)


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
    with pytest.raises(DataError, match="row 1: field 'chosen' must be a non-empty string"):
        parse_preference_rows([{"prompt": "p", "chosen": 3, "rejected": "b"}], "mem")


POSITIVE = ["I loved it, wonderful and delightful.", "Great service and excellent food.", "Fantastic, I am so happy."]
NEGATIVE = ["I hated it, awful and miserable.", "Terrible service and disgusting food.", "Horrible, I am so angry."]


def _pairs(path, n):
    rows = [
        {"prompt": f"Review number {i}.", "chosen": POSITIVE[i % 3], "rejected": NEGATIVE[(i + 1) % 3],
         "gold_chosen": 1.0, "gold_rejected": -1.0}
        for i in range(n)
    ]  # fmt: skip
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def test_encoder_reward_model_learns_a_preference_and_round_trips(tmp_path):
    cfg = RewardConfig(
        data=str(_pairs(tmp_path / "train.jsonl", 48)), eval_data=str(_pairs(tmp_path / "eval.jsonl", 12)),
        output_dir=str(tmp_path / "rm"), num_epochs=1, batch_size=8, learning_rate=1e-4, max_length=32,
    )  # fmt: skip
    path = train_reward(cfg, show_progress=False)
    evaluation = json.loads((tmp_path / "rm" / "eval.json").read_text())
    assert evaluation["accuracy_vs_gold"] == 1.0
    reward = RewardModel.load(path)
    scores = reward.score(["Review number 1."] * 2, [POSITIVE[0], NEGATIVE[0]])
    assert scores[0] > scores[1]
    # Normalised on the training responses: mean 0, std 1 there.
    responses = POSITIVE + NEGATIVE
    train_scores = reward.score(["Review number 0."] * len(responses), responses)
    assert abs(float(train_scores.mean())) < 1.0


def test_causal_backbone_trains_and_scores(tmp_path, tiny_model_dir):
    cfg = RewardConfig(
        backbone="causal", model=str(tiny_model_dir), data=str(_pairs(tmp_path / "train.jsonl", 16)), eval_data=None,
        output_dir=str(tmp_path / "rm"), num_epochs=1, batch_size=8, max_length=48,
    )  # fmt: skip
    reward = RewardModel.load(train_reward(cfg, show_progress=False))
    assert reward.backbone == "causal"
    assert reward.score(["a", "b", "c"], ["x", "y", "z"]).shape == (3,)
