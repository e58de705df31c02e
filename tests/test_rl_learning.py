"""RL that learns, and what shows it: the gold reward, the reward's normalisation on the starting policy, the
critic's own learning rate and warm-up, the diagnostics every step logs, and the wall-clock budget."""

import dataclasses
import json
from pathlib import Path

import pytest
import torch
from workers import length_reward  # a reward that varies on a tiny random model, whose gold score does not

from salsa.config import RLConfig
from salsa.errors import ConfigError, SalsaError
from salsa.models import save_tiny_model
from salsa.rl.ppo import train_rl
from salsa.tasks import reviews

PROMPTS = [p["prompt"] for p in reviews.prompts("train")[:8]]


@pytest.fixture(scope="module")
def base(tmp_path_factory, tokenizer):
    root = tmp_path_factory.mktemp("learning")
    save_tiny_model(root / "tiny", tokenizer, seed=0, initializer_range=1.0)
    (root / "prompts.jsonl").write_text("".join(json.dumps({"prompt": p}) + "\n" for p in PROMPTS))
    return root


def _config(base, out, **overrides):
    settings = dict(init=str(base / "tiny"), prompts=str(base / "prompts.jsonl"), output_dir=str(out), steps=2,
                    prompts_per_step=4, max_new_tokens=6, save_steps=0, normalisation_samples=8)  # fmt: skip
    return RLConfig(**{**settings, **overrides})


def _records(final):
    return [json.loads(line) for line in (final.parent / "metrics.jsonl").read_text().splitlines()]


def test_the_gold_judge_as_the_reward_is_recorded_as_such(base, tmp_path):
    config = _config(base, tmp_path / "rl", reward_model="gold", reward_normalisation="none")
    final = train_rl(config, show_progress=False)
    marker = json.loads((final.parent / "salsa_complete.json").read_text())
    assert marker["reward"] == "gold judge of the task" and marker["steps"] == 2
    assert marker["gold_judge_version"] == reviews.GOLD_JUDGE_VERSION
    assert all(r["reward"] == pytest.approx(r["gold"], abs=1e-6) for r in _records(final))


def test_the_reward_is_normalised_on_samples_of_the_starting_policy(base, tmp_path):
    final = train_rl(_config(base, tmp_path / "rl"), show_progress=False, reward_fn=length_reward)
    stats = json.loads((final.parent / "reward_normalisation.json").read_text())
    assert stats["samples"] == 8 and stats["std"] > 0 and stats["policy"] == str(base / "tiny")
    # The first rollout is the starting policy's: its normalised rewards are centred near 0.
    assert abs(_records(final)[0]["reward"]) < 1.0
    constant = _config(base, tmp_path / "constant")
    with pytest.raises(SalsaError, match="a reward that does not vary cannot be normalised"):
        train_rl(constant, show_progress=False, reward_fn=lambda p, r: torch.ones(len(r)))


def test_gold_needs_the_task(base, tmp_path):
    with pytest.raises(ConfigError, match="rl.reward_model is gold, the task's gold judge, but rl.task is null"):
        train_rl(_config(base, tmp_path / "rl", reward_model="gold", task=None), show_progress=False)


def test_every_step_logs_the_diagnostics_of_the_critic_and_the_update(base, tmp_path):
    final = train_rl(_config(base, tmp_path / "rl", value_warmup_steps=0), show_progress=False, reward_fn=length_reward)
    for record in _records(final):
        for key in ("value_loss", "explained_variance", "advantage_q1", "advantage_q4", "returns", "values",
                    "clip_fraction", "approx_kl", "ratio_min", "ratio_max", "grad_norm_policy", "grad_norm_value",
                    "entropy", "response_length", "reward", "gold", "elapsed_s"):  # fmt: skip
            assert key in record, key
        assert record["ratio_min"] <= 1.0 + 1e-6 <= record["ratio_max"] + 2e-6
        assert record["grad_norm_policy"] > 0 and record["grad_norm_value"] > 0


def test_the_value_warm_up_moves_the_value_function_and_not_the_policy(base, tmp_path):
    from safetensors.torch import load_file

    config = _config(base, tmp_path / "rl", steps=2, value_warmup_steps=1, snapshot_steps=1)
    final = train_rl(config, show_progress=False, reward_fn=length_reward)
    first = _records(final)[0]
    assert first["grad_norm_policy"] == 0.0 and first["grad_norm_value"] > 0
    after_warm_up = load_file(str(final.parent / "snapshots" / "step-000001.safetensors"))
    start = load_file(str(base / "tiny" / "model.safetensors"))
    assert all(torch.equal(after_warm_up[k], start[k]) for k in start)  # the policy has not moved
    # A warm-up as long as the run leaves its last step to the policy.
    assert dataclasses.replace(config, value_warmup_steps=2).warmup_steps == 1


def test_a_wall_clock_budget_stops_at_a_step_boundary_and_saves_the_policy(base, tmp_path):
    final = train_rl(_config(base, tmp_path / "rl", steps=50, max_minutes=1e-9), False, reward_fn=length_reward)
    marker = json.loads((final.parent / "salsa_complete.json").read_text())
    assert marker["steps"] < 50 and (final / "model.safetensors").is_file()


def test_the_normalisation_is_measured_once_and_reused_on_resume(base, tmp_path, interrupt):
    config = _config(base, tmp_path / "rl", steps=3, save_steps=1)
    restore = interrupt("salsa.rl.ppo.rl_update", at_call=3)
    with pytest.raises(KeyboardInterrupt):
        train_rl(config, show_progress=False, reward_fn=length_reward)
    restore()
    # The resumed run must read the recorded statistics, not measure new ones: make them recognisable (every
    # reward then lies far below the clip, -reward_clip).
    saved = tmp_path / "rl" / "reward_normalisation.json"
    saved.write_text(json.dumps({**json.loads(saved.read_text()), "mean": 1000.0, "std": 1.0}))
    final = train_rl(config, show_progress=False, reward_fn=length_reward)
    last = _records(final)[-1]
    assert last["step"] == 3 and last["reward"] == pytest.approx(-config.reward_clip)


RULE_REWARD = f"{Path(__file__).parent / 'rewards.py'}:length"  # a rule reward the config can name


def _normalisation_config(base, out, models, **overrides):
    from salsa.config import NormalisationConfig

    settings = dict(models=[str(m) for m in models], reward_model=RULE_REWARD, prompts=str(base / "prompts.jsonl"),
                    samples=16, max_new_tokens=6, output_dir=str(out))  # fmt: skip
    return NormalisationConfig(**{**settings, **overrides})


def test_shared_normalisation_deals_the_prompts_to_the_k_models_in_turn_by_hand(base, tmp_path, tokenizer, monkeypatch):
    import math

    from salsa.rl.normalisation import shared_normalisation

    save_tiny_model(tmp_path / "tiny-1", tokenizer, seed=1, initializer_range=1.0)
    calls = []

    def prompt_number(prompts, responses):  # the reward of a response: its prompt's number, whatever it says
        calls.append([p for p in prompts])
        return torch.tensor([float(PROMPTS.index(p)) for p in prompts])

    monkeypatch.setattr("salsa.rl.normalisation.reward_function", lambda spec: prompt_number)
    # 16 samples, 2 per prompt: the 8 training prompts, each once, 4 of them answered by each model.
    saved = shared_normalisation(_normalisation_config(base, tmp_path / "norm", [base / "tiny", tmp_path / "tiny-1"]))
    recorded = json.loads(saved.read_text())
    assert recorded["mean"] == pytest.approx(3.5)  # mean of 0..7
    assert recorded["std"] == pytest.approx(math.sqrt(sum((i - 3.5) ** 2 for i in range(8)) / 8))
    assert recorded["samples"] == 16 and (saved.parent / "salsa_complete.json").is_file()
    assert [len(c) for c in calls] == [8, 8]  # one model, then the other: 4 prompts x 2 responses each
    first, second = ({p for p in c} for c in calls)
    assert not first & second and first | second == set(PROMPTS)


def test_shared_normalisation_of_one_model_is_that_models_own_measurement(base, tmp_path):
    from salsa.data import load_prompts
    from salsa.models import load_causal_lm, load_tokenizer
    from salsa.rl.normalisation import per_run_normalisation, shared_normalisation
    from salsa.scoring import reward_function

    shared = shared_normalisation(_normalisation_config(base, tmp_path / "norm", [base / "tiny"], samples=8))
    config = _config(base, tmp_path / "rl")
    (tmp_path / "rl").mkdir()
    own = per_run_normalisation(
        reward_function(RULE_REWARD), load_causal_lm(str(base / "tiny")), load_tokenizer(str(base / "tiny")),
        load_prompts(config.prompts), config, tmp_path / "rl",
    )  # fmt: skip
    recorded = json.loads(shared.read_text())
    assert (recorded["mean"], recorded["std"]) == pytest.approx(own, rel=1e-6) and recorded["samples"] == 8


def test_a_fixed_normalisation_is_read_from_its_file_by_the_run_and_its_critic(base, tmp_path, monkeypatch):
    from salsa.errors import DataError
    from salsa.rl.learner import Learner

    calibrated, real = [], Learner.calibrate_value
    monkeypatch.setattr(Learner, "calibrate_value", lambda self, m, s: calibrated.append((m, s)) or real(self, m, s))
    file = tmp_path / "norm.json"
    file.write_text(json.dumps({"mean": 1000.0, "std": 1.0}))  # recognisable: every reward at -reward_clip
    config = _config(base, tmp_path / "rl", steps=1, reward_normalisation="fixed", normalisation_file=str(file))
    final = train_rl(config, show_progress=False, reward_fn=length_reward)
    assert [r["reward"] for r in _records(final)] == [pytest.approx(-config.reward_clip)]
    assert calibrated == [(1000.0, 1.0)] and not (final.parent / "reward_normalisation.json").exists()
    file.write_text(json.dumps({"mean": 0.0, "std": 0.0}))
    with pytest.raises(DataError, match=r"rl.normalisation_file: .*norm.json is corrupt \(expects a finite mean"):
        train_rl(dataclasses.replace(config, output_dir=str(tmp_path / "b")), False, reward_fn=length_reward)
    with pytest.raises(ConfigError, match=r"rl.normalisation_file: .*missing.json does not exist"):
        train_rl(
            dataclasses.replace(config, normalisation_file=str(tmp_path / "missing.json")),
            False,
            reward_fn=length_reward,
        )
    with pytest.raises(ConfigError, match="rl.normalisation_file is the mean and std of rl.reward_normalisation fixed"):
        train_rl(dataclasses.replace(config, normalisation_file=None), False, reward_fn=length_reward)


def test_the_critic_can_start_as_the_reward_model(base, tmp_path):
    from safetensors.torch import load_file

    from salsa.config import RewardConfig
    from salsa.reward import train_reward
    from salsa.rl.learner import Learner

    rows = [{"prompt": p, "chosen": "I loved it, truly wonderful.", "rejected": "no"} for p in PROMPTS]
    (tmp_path / "prefs.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    reward_dir = train_reward(
        RewardConfig(backbone="causal", model=str(base / "tiny"), data=str(tmp_path / "prefs.jsonl"), eval_data=None,
                     output_dir=str(tmp_path / "reward"), num_epochs=1, batch_size=8),
        show_progress=False,
    )  # fmt: skip
    meta = json.loads((reward_dir / "salsa_reward.json").read_text())
    config = _config(base, tmp_path / "rl", reward_model=str(reward_dir), value_head="separate",
                     value_init="reward_model")  # fmt: skip
    learner = Learner(config, torch.device("cpu"))
    learner.calibrate_value(mean=0.5, std=2.0)
    trained = load_file(str(reward_dir / "model.safetensors"))
    critic = learner.critic.state_dict()
    assert all(torch.equal(critic[name], value) for name, value in trained.items() if name.startswith("model."))
    # V = (((raw - m0) / s0) - 0.5) / 2: the reward model's score layer, rescaled to the RL reward.
    scale = meta["std"] * 2.0
    linear = learner.value_head.linear
    assert torch.allclose(linear.weight, trained["score.weight"] / scale)
    assert float(linear.bias.detach()) == pytest.approx(-(meta["mean"] + 0.5 * meta["std"]) / scale)
    with pytest.raises(ConfigError, match="value_init reward_model .* set rl.value_head to separate"):
        train_rl(dataclasses.replace(config, value_head="shared"), show_progress=False)


def _token_reward(tokenizer, targets):
    def reward(prompts, responses):
        shares = []
        for response in responses:
            ids = tokenizer.encode(response, add_special_tokens=False)
            shares.append(sum(i in targets for i in ids) / max(1, len(ids)))
        return torch.tensor(shares)

    return reward


def _frequent_tokens(counts) -> set[int]:
    """Every other of the six tokens sampled most often: a reward the model can learn to earn more of."""
    return {token for token, _ in counts.most_common(6)[1::2]}


def test_at_the_default_critic_settings_the_critic_explains_the_returns(
    base, tmp_path, tokenizer, sampled_token_counts
):
    """The value function's defaults (learning rate, warm-up, the reward's normalisation) at the default model's
    width: a value head's output moves by about learning rate x width per Adam step, so a narrower model would
    need a larger rate. With the critic's learning rate near zero its explained variance stays at 0."""
    wide = save_tiny_model(tmp_path / "wide", tokenizer, seed=0, initializer_range=1.0, hidden_size=576, num_layers=1)
    reward = _token_reward(tokenizer, _frequent_tokens(sampled_token_counts(wide, PROMPTS)))
    # 6 steps: the 2 of warm-up, then 4 that also move the policy; the last 3 are scored by a critic updated 3 to 5
    # times (their mean explained variance: 0.34 at this seed, 0).
    config = RLConfig(init=str(wide), prompts=str(base / "prompts.jsonl"), output_dir=str(tmp_path / "rl"), steps=6,
                      prompts_per_step=8, samples_per_prompt=4, max_new_tokens=8, save_steps=0, task=None)  # fmt: skip
    # The defaults this test measures are the ones docs/design.md ("RL defaults, and why") documents.
    critic = (config.value_learning_rate, config.value_warmup_steps, config.reward_normalisation)
    assert critic == (1e-3, 2, "initial_policy")
    records = _records(train_rl(config, show_progress=False, reward_fn=reward))
    explained = [r["explained_variance"] for r in records]
    assert explained[0] == 0.0  # the value head starts at zero
    assert sum(explained[-3:]) / 3 > 0.2, explained
    # The control: the same run with a critic that cannot move explains nothing, so the rise above is the critic's.
    # Its warm-up steps and a policy step show it; a value head that stays at zero predicts a constant at any step,
    # whose explained variance is 0 on a rollout of any size: a quarter of the prompts per step tells it as well.
    still = dataclasses.replace(config, value_learning_rate=1e-9, output_dir=str(tmp_path / "still"), steps=3,
                                prompts_per_step=2)  # fmt: skip
    still_explained = [
        r["explained_variance"] for r in _records(train_rl(still, show_progress=False, reward_fn=reward))
    ]
    assert max(abs(e) for e in still_explained) < 0.01, still_explained


def test_at_the_default_settings_ppo_earns_more_of_a_learnable_reward(base, tmp_path, tokenizer, sampled_token_counts):
    """Every setting at its default but the policy's learning rate, scaled up for a model of width 32."""
    reward = _token_reward(tokenizer, _frequent_tokens(sampled_token_counts(base / "tiny", PROMPTS)))
    config = RLConfig(init=str(base / "tiny"), prompts=str(base / "prompts.jsonl"), output_dir=str(tmp_path / "rl"),
                      steps=20, prompts_per_step=8, samples_per_prompt=4, max_new_tokens=8, save_steps=0, task=None,
                      learning_rate=1e-3)  # fmt: skip
    records = _records(train_rl(config, show_progress=False, reward_fn=reward))
    rewards = [r["reward"] for r in records]  # normalised on the starting policy: step 1 is near 0
    assert sum(rewards[-5:]) / 5 > sum(rewards[:3]) / 3 + 0.5, rewards
