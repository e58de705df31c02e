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
    pair_agreement,
    pair_scores,
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
    agreement = pair_agreement(
        torch.tensor([1.0, 0.0, 3.0]), torch.tensor([0.0, 1.0, 2.0]), torch.tensor([True, True, False])
    )
    assert agreement.tolist() == [1.0, 0.0, 0.0]
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


# What `salsa reward` writes for one model (tensorboard/ holds one events file).
ONE_MODEL_LAYOUT = [
    "config.yaml", "eval.json", "metrics.jsonl", "model", "model/config.json", "model/model.safetensors",
    "model/modeling_salsa_encoder_reward.py", "model/salsa_reward.json", "model/tokenizer.json",
    "model/tokenizer_config.json", "salsa_complete.json", "salsa_stage.json", "tensorboard", "tensorboard/events",
]  # fmt: skip


def _layout(folder):
    """Every path below `folder`, TensorBoard's event files by their kind."""
    names = {p.relative_to(folder).as_posix() for p in folder.rglob("*")}
    return sorted({name.split(".out.tfevents")[0] for name in names})


def test_encoder_reward_model_learns_a_preference_and_round_trips(tmp_path, monkeypatch):
    cfg = RewardConfig(
        data=str(_pairs(tmp_path / "train.jsonl", 48)), eval_data=str(_held_out_pairs(tmp_path / "eval.jsonl", 12)),
        output_dir=str(tmp_path / "rm"), num_epochs=1, batch_size=8, learning_rate=1e-4, max_length=32,
    )  # fmt: skip
    path = train_reward(cfg, show_progress=False)
    evaluation = json.loads((tmp_path / "rm" / "eval.json").read_text())
    assert evaluation["accuracy_vs_gold"] == 1.0
    assert _says_one_label(path)
    assert _layout(tmp_path / "rm") == ONE_MODEL_LAYOUT  # K = 1: what salsa reward wrote before WARM

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


def _pairs_no_order_beats(path):
    """4 prompts of 2 pairs each, every pair also reversed: no score ordering beats ln 2, so each try stays stuck."""
    rows = [
        {"prompt": f"Review number {i}.", "chosen": a, "rejected": b}
        for i in range(4) for a, b in ((POSITIVE[i % 3], NEGATIVE[i % 3]), (NEGATIVE[i % 3], POSITIVE[i % 3]))
    ]  # fmt: skip
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return str(path)


def test_a_run_stuck_at_ln_2_after_its_first_epoch_starts_again_with_the_next_seed(tmp_path):
    cfg = RewardConfig(
        data=_pairs_no_order_beats(tmp_path / "train.jsonl"), eval_data=None, output_dir=str(tmp_path / "rm"),
        num_epochs=2, batch_size=2, max_length=32, restarts=1, seed=5,
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
    assert pair_agreement(tied, tied, torch.ones(4, dtype=torch.bool)).tolist() == [0.5] * 4  # a constant scorer
    one_tie = pair_agreement(torch.tensor([1.0, 0.0]), torch.tensor([0.0, 0.0]), torch.tensor([True, True]))
    assert one_tie.tolist() == [1.0, 0.5]


def test_backbone_learning_rate_defaults_by_kind_and_an_explicit_one_wins():
    assert backbone_learning_rate(RewardConfig()) == 1e-4  # the small encoder must move to learn
    assert backbone_learning_rate(RewardConfig(backbone="causal")) == 1e-5  # a pretrained LM must not forget
    assert backbone_learning_rate(RewardConfig(backbone="causal", learning_rate=3e-6)) == 3e-6


class _ConstantReward:
    """Scores every response alike."""

    def raw_scores(self, prompts, responses):
        return torch.zeros(len(responses))


class _RightOnTheFirstReward:
    """Orders the first `right` pairs as their labels do (scores the chosen response 1, the rejected 0) and the others
    the other way round."""

    def __init__(self, pairs, right):
        self.better = {p.chosen for p in pairs[:right]} | {p.rejected for p in pairs[right:]}

    def raw_scores(self, prompts, responses):
        return torch.tensor([float(r in self.better) for r in responses])


def _distinct_pairs(n):
    rows = [{"prompt": f"p{i}", "chosen": f"good {i}", "rejected": f"bad {i}", "gold_chosen": 1.0, "gold_rejected": 0.0}
            for i in range(n)]  # fmt: skip
    return parse_preference_rows(rows, "mem")


@pytest.mark.filterwarnings("ignore:An input array is constant")  # a constant scorer has no rank correlation
def test_held_out_accuracy_has_a_bootstrap_interval_over_the_pairs():
    from salsa.reward import evaluate_reward

    constant = evaluate_reward(_ConstantReward(), _distinct_pairs(40))
    for key in ("accuracy_vs_labels", "accuracy_vs_gold"):
        assert constant[key] == 0.5 and list(constant["ci"][key]) == [0.5, 0.5]  # every pair a tie: chance, surely
    # 30 of 40 right: the interval is about the normal one, 0.75 +- 1.96 sqrt(0.75 * 0.25 / 40) = +-0.134.
    pairs = _distinct_pairs(40)
    evaluation = evaluate_reward(_RightOnTheFirstReward(pairs, 30), pairs)
    low, high = evaluation["ci"]["accuracy_vs_gold"]
    assert evaluation["accuracy_vs_gold"] == 0.75 and evaluation["confidence"] == 0.95
    assert low == pytest.approx(0.75 - 0.134, abs=0.03) and high == pytest.approx(0.75 + 0.134, abs=0.03)


@pytest.mark.filterwarnings("ignore:An input array is constant")
def test_the_average_is_compared_with_each_member_on_the_same_pairs():
    from salsa.reward import evaluate_members

    pairs = _distinct_pairs(40)
    evaluation = evaluate_members(
        _RightOnTheFirstReward(pairs, 30), [_RightOnTheFirstReward(pairs, 20), _ConstantReward()], pairs
    )
    assert evaluation["accuracy_vs_gold"] == 0.75
    assert [m["accuracy_vs_gold"] for m in evaluation["members"]] == [0.5, 0.5]
    better, than_chance = (m["average_minus_member"]["accuracy_vs_gold"] for m in evaluation["members"])
    # The average is right on 10 more pairs than the first member and wrong on none it got right: pair by pair the
    # difference is 1 on a quarter of the pairs, 0 elsewhere, so its interval is 0.25 +- 1.96 sqrt(0.25 * 0.75 / 40)
    # = +-0.134 and excludes 0, where the two accuracies' own intervals overlap.
    assert better["mean"] == pytest.approx(0.25)
    assert better["ci"] == pytest.approx((0.25 - 0.134, 0.25 + 0.134), abs=0.03)
    assert evaluation["members"][0]["ci"]["accuracy_vs_gold"][1] > evaluation["ci"]["accuracy_vs_gold"][0]
    assert than_chance["mean"] == pytest.approx(0.25) and than_chance["ci"][0] < 0.25 < than_chance["ci"][1]


def test_warm_members_take_disjoint_blocks_of_seeds():
    from salsa.reward import member_seeds

    config = RewardConfig(seed=5, restarts=1)
    assert [member_seeds(config, i) for i in range(3)] == [[5, 6], [7, 8], [9, 10]]
    assert member_seeds(RewardConfig(seed=5, restarts=0), 2) == [7]


def _record_start_heads(monkeypatch):
    """The scalar head of every model a reward run starts from, as it is drawn (before any training)."""
    import salsa.reward

    real, heads = salsa.reward._backbone_model, []

    def recording(config):
        model, tokenizer = real(config)
        heads.append(model.score.weight.detach().clone())
        return model, tokenizer

    monkeypatch.setattr(salsa.reward, "_backbone_model", recording)
    return heads


def _member_weights(out, count):
    from safetensors.torch import load_file

    return [load_file(out / "members" / f"member-{i}" / "model" / "model.safetensors") for i in range(count)]


def _assert_the_average_of(average_dir, members):
    """The average's every tensor is the mean of the members' (by hand), and the members differ."""
    from safetensors.torch import load_file

    average = load_file(average_dir / "model.safetensors")
    assert set(average) == set(members[0])
    for name, tensor in average.items():
        torch.testing.assert_close(tensor, sum(m[name] for m in members) / len(members))
    assert not torch.equal(members[0]["score.weight"], members[1]["score.weight"])


def _warm_causal_config(tmp_path, tiny_model_dir, **overrides):
    settings = dict(
        backbone="causal", model=str(tiny_model_dir), data=str(_pairs(tmp_path / "train.jsonl", 48)),
        eval_data=str(_held_out_pairs(tmp_path / "eval.jsonl", 12)), output_dir=str(tmp_path / "rm"), num_epochs=1,
        batch_size=8, max_length=48, learning_rate=1e-3, head_learning_rate=1e-2, num_models=3,
    )  # fmt: skip
    return RewardConfig(**{**settings, **overrides})


def test_warm_averages_members_of_one_start_into_a_reward_model_rl_and_transformers_load(
    tmp_path, tiny_model_dir, monkeypatch
):
    from transformers import AutoModelForSequenceClassification

    from salsa.config import RLConfig
    from salsa.rl.ppo import train_rl

    heads = _record_start_heads(monkeypatch)
    path = train_reward(_warm_causal_config(tmp_path, tiny_model_dir), show_progress=False)
    out = tmp_path / "rm"
    # One start: every member's head is drawn alike; each member has its own seeds (data order), from its block.
    assert len(heads) == 3 and all(torch.equal(head, heads[0]) for head in heads)
    records = [read_json(out / "members" / f"member-{i}" / COMPLETE_MARKER) for i in range(3)]
    assert [(r["seed"], r["init_seed"]) for r in records] == [(0, 0), (3, 0), (6, 0)]
    members = _member_weights(out, 3)
    _assert_the_average_of(path, members)
    # A member directory holds what one model's run holds, and the average is laid out as one model is.
    member = out / "members" / "member-0"
    assert {"metrics.jsonl", "model", COMPLETE_MARKER} <= {p.name for p in member.iterdir()}
    assert _layout(path) == _layout(member / "model")

    # The average's normalisation is measured on the average: its scores of the training responses are 0 +- 1.
    reward = RewardModel.load(path)
    rows = read_jsonl(tmp_path / "train.jsonl")
    texts = sorted({(r["prompt"], response) for r in rows for response in (r["chosen"], r["rejected"])})
    scores = reward.score([p for p, _ in texts], [r for _, r in texts])
    assert float(scores.mean()) == pytest.approx(0.0, abs=1e-4) and float(scores.std()) == pytest.approx(1.0, abs=1e-4)
    # transformers loads it with the same scores.
    plain = AutoModelForSequenceClassification.from_pretrained(path).eval()
    prompts, responses = [p for p, _ in texts[:4]], [r for _, r in texts[:4]]
    with torch.no_grad():
        torch.testing.assert_close(plain(**reward.encode(prompts, responses)).logits[:, 0],
                                   reward.raw_scores(prompts, responses))  # fmt: skip

    # Held-out accuracy of every member and of the average, with intervals; average - member is their difference.
    evaluation = read_json(out / "eval.json")
    assert [(m["seed"], m["init_seed"]) for m in evaluation["members"]] == [(0, 0), (3, 0), (6, 0)]
    for entry in (evaluation, *evaluation["members"]):
        for key in ("accuracy_vs_labels", "accuracy_vs_gold"):
            low, high = entry["ci"][key]
            assert low <= entry[key] <= high
    for entry in evaluation["members"]:
        difference = entry["average_minus_member"]["accuracy_vs_gold"]
        assert difference["mean"] == pytest.approx(evaluation["accuracy_vs_gold"] - entry["accuracy_vs_gold"])
        assert difference["ci"][0] <= difference["mean"] <= difference["ci"][1]

    # RL takes the average as its reward model.
    (tmp_path / "prompts.jsonl").write_text("".join(json.dumps({"prompt": f"Review {s}."}) + "\n" for s in "abcd"))
    rl = RLConfig(
        algorithm="rloo", init=str(tiny_model_dir), reference="sft", reward_model=str(path), task=None,
        prompts=str(tmp_path / "prompts.jsonl"), output_dir=str(tmp_path / "rl"), steps=1, prompts_per_step=2,
        samples_per_prompt=2, max_new_tokens=4, save_steps=0, normalisation_samples=4,
    )  # fmt: skip
    train_rl(rl, show_progress=False)
    assert "reward" in read_jsonl(tmp_path / "rl" / "metrics.jsonl")[0]


def test_warm_with_the_encoder_loads_in_transformers_with_its_own_code(tmp_path, monkeypatch):
    from transformers import AutoModelForSequenceClassification

    heads = _record_start_heads(monkeypatch)
    cfg = RewardConfig(
        data=str(_pairs(tmp_path / "train.jsonl", 16)), eval_data=None, output_dir=str(tmp_path / "rm"),
        num_epochs=1, batch_size=8, max_length=32, num_models=2,
    )  # fmt: skip
    path = train_reward(cfg, show_progress=False)
    assert len(heads) == 2 and torch.equal(heads[0], heads[1])
    _assert_the_average_of(path, _member_weights(tmp_path / "rm", 2))
    assert _says_one_label(path) and read_json(tmp_path / "rm" / "eval.json") == {}
    plain = AutoModelForSequenceClassification.from_pretrained(path, trust_remote_code=True).eval()
    reward = RewardModel.load(path)
    prompts, responses = ["How was visit 1?"] * 2, ["The view was great.", "The view was awful."]
    with torch.no_grad():
        torch.testing.assert_close(plain(**reward.encode(prompts, responses)).logits[:, 0],
                                   reward.raw_scores(prompts, responses))  # fmt: skip


def test_a_warm_run_interrupted_after_a_member_keeps_it_and_trains_only_the_rest(
    tmp_path, tiny_model_dir, interrupt, monkeypatch
):
    import salsa.reward

    cfg = _warm_causal_config(tmp_path, tiny_model_dir, num_models=2, eval_data=None)
    restore = interrupt("salsa.reward._fit", at_call=2)  # member 1's first try
    with pytest.raises(KeyboardInterrupt):
        train_reward(cfg, show_progress=False)
    restore()
    member = tmp_path / "rm" / "members" / "member-0"
    finished = {p: p.stat().st_mtime_ns for p in member.rglob("*") if p.is_file()}
    assert (member / COMPLETE_MARKER).is_file() and not (tmp_path / "rm" / "model").exists()

    fits = []
    real = salsa.reward._fit
    monkeypatch.setattr(salsa.reward, "_fit", lambda *args, **kwargs: fits.append(args[2]) or real(*args, **kwargs))
    path = train_reward(cfg, show_progress=False)
    assert fits == [3]  # member 1's first seed; member 0 was not trained again
    assert {p: p.stat().st_mtime_ns for p in member.rglob("*") if p.is_file()} == finished
    _assert_the_average_of(path, _member_weights(tmp_path / "rm", 2))


def test_every_warm_member_restarts_from_the_shared_start_with_its_next_seed(tmp_path, monkeypatch):
    heads = _record_start_heads(monkeypatch)
    cfg = RewardConfig(
        data=_pairs_no_order_beats(tmp_path / "train.jsonl"), eval_data=None, output_dir=str(tmp_path / "rm"),
        num_epochs=2, batch_size=2, max_length=32, restarts=1, seed=5, num_models=2,
    )  # fmt: skip
    train_reward(cfg, show_progress=False)
    members = tmp_path / "rm" / "members"
    # Each member's first try stays at ln 2 and gives up after its first epoch; its last try trains to the end.
    for i, (given_up, kept) in enumerate(((5, 6), (7, 8))):
        log = read_jsonl(members / f"member-{i}" / "metrics.jsonl")
        assert [(r["seed"], r["step"]) for r in log] == [(given_up, s) for s in range(1, 5)] + [
            (kept, s) for s in range(1, 9)
        ]
        assert read_json(members / f"member-{i}" / COMPLETE_MARKER)["seed"] == kept
    # Member 0's restart draws a new head (seed 6); member 1 starts both its tries from that head.
    assert not torch.equal(heads[0], heads[1])
    assert torch.equal(heads[2], heads[1]) and torch.equal(heads[3], heads[1])
    assert read_json(members / "member-1" / COMPLETE_MARKER)["init_seed"] == 6
