"""Reference schedules (fixed, ema, soft, hard): each update rule by hand, where a moving reference starts, and a
LoRA run with a moving reference that resumes bit for bit after a kill."""

import dataclasses
import json

import pytest
import torch
from torch import nn

import salsa.rl.dpo
from salsa.config import DPOConfig, RLConfig
from salsa.models import load_causal_lm, save_tiny_model
from salsa.policy import fresh_policy
from salsa.rl.dpo import train_dpo
from salsa.rl.ppo import train_rl
from salsa.rl.reference import Reference, load_reference, move_towards, reference_schedule
from salsa.soup import build_soup
from salsa.weights.in_memory import soup_state_dict

CPU = torch.device("cpu")


def _linear(*weights: float) -> nn.Linear:
    layer = nn.Linear(len(weights), 1, bias=False)
    with torch.no_grad():
        layer.weight.copy_(torch.tensor([weights]))
    return layer


@pytest.mark.parametrize(
    ("settings", "expected_after_steps"),
    [
        ({"reference": "sft"}, [[1.0, 2.0]] * 4),  # fixed
        # ema, decay 0.9, every step: 0.9 r + 0.1 p = [1.2, 2.4], then 0.9 [1.2, 2.4] + 0.1 [3, 6] = [1.38, 2.76], ...
        ({"reference": "ema", "ema_decay": 0.9}, [[1.2, 2.4], [1.38, 2.76], [1.542, 3.084], [1.6878, 3.3756]]),
        # the same schedule from another start, named as a schedule
        ({"reference": "soup", "reference_schedule": "ema", "ema_decay": 0.9}, [[1.2, 2.4], [1.38, 2.76]]),
        # soft, every 2 steps, w = 0.25: 0.75 r + 0.25 p = [1.5, 3] at step 2, 0.75 [1.5, 3] + 0.25 [3, 6] at step 4
        (
            {"reference_schedule": "soft", "reference_update_steps": 2, "reference_update_weight": 0.25},
            [[1.0, 2.0], [1.5, 3.0], [1.5, 3.0], [1.875, 3.75]],
        ),
        # hard, every 3 steps: the policy itself at step 3
        ({"reference_schedule": "hard", "reference_update_steps": 3}, [[1.0, 2.0], [1.0, 2.0], [3.0, 6.0], [3.0, 6.0]]),
    ],
)
def test_each_schedule_moves_the_reference_by_its_rule_and_only_when_due(settings, expected_after_steps):
    reference = Reference(_linear(1.0, 2.0), schedule=reference_schedule(RLConfig(**settings)))
    policy = _linear(3.0, 6.0)
    for step, expected in enumerate(expected_after_steps, start=1):
        reference.update(policy, step)
        assert torch.allclose(reference.model.weight, torch.tensor([expected]), atol=1e-6), (step, settings)
    assert torch.equal(policy.weight, torch.tensor([[3.0, 6.0]]))  # the policy is only read


def test_a_lora_policy_moves_the_reference_towards_its_merged_weights_and_leaves_its_base_alone(tiny_model_dir):
    policy = fresh_policy(RLConfig(init=str(tiny_model_dir), use_lora=True, lora_r=4))
    generator = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for name, p in policy.named_parameters():
            if "lora_B" in name:  # B starts at 0: give the adapters a delta
                p.copy_(0.1 * torch.randn(p.shape, generator=generator))
    base_before = {n: p.clone() for n, p in policy.named_parameters() if "lora_" not in n}
    merged = fresh_policy(RLConfig(init=str(tiny_model_dir), use_lora=True, lora_r=4))
    merged.load_state_dict(policy.state_dict())
    merged = merged.merge_and_unload().state_dict()
    reference = load_causal_lm(str(tiny_model_dir))
    start = {n: p.clone() for n, p in reference.named_parameters()}

    move_towards(reference, policy, 0.25)
    moved = dict(reference.named_parameters())
    for name, value in start.items():
        assert torch.allclose(moved[name], 0.75 * value + 0.25 * merged[name], atol=1e-6), name
    assert any(not torch.allclose(moved[n], 0.75 * start[n] + 0.25 * start[n]) for n in start)  # the delta counts
    assert all(torch.equal(p, base_before[n]) for n, p in policy.named_parameters() if "lora_" not in n)


def test_a_moving_reference_starts_where_its_reference_starts_as_a_float32_copy(tmp_path, tokenizer):
    a = save_tiny_model(tmp_path / "a", tokenizer, seed=1)
    b = save_tiny_model(tmp_path / "b", tokenizer, seed=2)
    soup_dir = build_soup([a, b], tmp_path / "soup", [0.25, 0.75])
    expected = soup_state_dict([a, b], [0.25, 0.75])
    starts = {
        "soup in memory": RLConfig(
            reference="soup", init=str(a), reference_models=[str(a), str(b)], reference_weights=[0.25, 0.75]
        ),  # fmt: skip
        "soup directory as init": RLConfig(reference="soup", init=str(soup_dir)),
        "a path": RLConfig(reference="sft", init=str(a), reference_model=str(soup_dir)),
    }
    for case, config in starts.items():
        config = dataclasses.replace(config, use_lora=True, reference_schedule="soft", mixed_precision="bf16")
        policy = fresh_policy(config)
        reference = load_reference(config, policy, CPU)
        # Its own copy (not the LoRA policy with adapters off), in float32 whatever the compute precision.
        assert reference.moving and not reference.adapters_off and reference.model is not policy, case
        state = reference.model.state_dict()
        assert all(state[k].dtype == torch.float32 and torch.equal(state[k], expected[k]) for k in expected), case


@pytest.mark.parametrize("algorithm", ["rloo", "dpo"])
def test_an_interrupted_lora_run_with_a_moving_reference_resumes_bit_identically(
    tmp_path, tiny_model_dir, interrupt, algorithm
):
    prompts = tmp_path / "prompts.jsonl"
    prompts.write_text("".join(json.dumps({"prompt": p}) + "\n" for p in ["Say hi.", "Name a colour.", "Greet me."]))
    prefs = tmp_path / "prefs.jsonl"
    pairs = [{"prompt": p, "chosen": "Yes, gladly.", "rejected": "No."} for p in ["Say hi.", "Greet me.", "Go."]]
    prefs.write_text("".join(json.dumps(r) + "\n" for r in pairs))
    # Soft every 2 steps: the checkpoint at step 2 holds the moved reference, and steps 3 and 4 depend on it.
    shared = dict(
        init=str(tiny_model_dir), reference="sft", reference_schedule="soft", reference_update_steps=2,
        reference_update_weight=0.5, use_lora=True, lora_r=4, output_dir=str(tmp_path / "straight"), steps=4,
        save_steps=2, learning_rate=1e-2,
    )  # fmt: skip
    if algorithm == "rloo":
        config = RLConfig(algorithm=algorithm, prompts=str(prompts), task=None, prompts_per_step=3,
                          samples_per_prompt=2, max_new_tokens=6, kl_coef=0.5, ppo_epochs=1, **shared)  # fmt: skip
        reward = lambda prompts, responses: [len(r) / 10.0 for r in responses]  # noqa: E731
        train = lambda config: train_rl(config, False, reward)  # noqa: E731
    else:
        config = DPOConfig(data=str(prefs), batch_size=3, **shared)
        train = lambda config: train_dpo(config, False)  # noqa: E731
    straight = train(config)
    resumed_config = dataclasses.replace(config, output_dir=str(tmp_path / "resumed"))
    restore = interrupt("salsa.rl.ppo.rl_update" if algorithm == "rloo" else "salsa.rl.dpo.dpo_loss", at_call=4)
    with pytest.raises(KeyboardInterrupt):
        train(resumed_config)
    restore()
    assert (tmp_path / "resumed" / "checkpoints" / "step-0000002").is_dir()  # killed at step 4: resumes from 2
    resumed = train(resumed_config)
    a, b = load_causal_lm(str(straight)).state_dict(), load_causal_lm(str(resumed)).state_dict()
    assert all(torch.equal(a[k], b[k]) for k in a)
    logged = [[json.loads(line) for line in (out.parent / "metrics.jsonl").read_text().splitlines()]
              for out in (straight, resumed)]  # fmt: skip
    assert [m["step"] for m in logged[1]] == [1, 2, 3, 4]
    assert all("kl_sft" not in m for m in logged[0])  # a reference that moved away from SFT: its KL is not to SFT
    assert logged[0] == [{**m, **_timings(logged[0][i])} for i, m in enumerate(logged[1])]


@pytest.mark.parametrize("algorithm", ["ppo", "dpo"])
def test_a_skipped_step_leaves_the_reference_where_it_is(tmp_path, tiny_model_dir, monkeypatch, algorithm):
    """One rule for online RL and DPO: a moving reference follows the policy only after a step that updated it; a
    step skipped for a non-finite value (here step 2) leaves it where it is."""
    moved_at, follow = [], Reference.update
    monkeypatch.setattr(
        Reference, "update", lambda self, policy, step: (moved_at.append(step), follow(self, policy, step))
    )
    calls = {"n": 0}

    def nan_at_call_2(value: torch.Tensor) -> torch.Tensor:
        calls["n"] += 1
        return value * float("nan") if calls["n"] == 2 else value

    shared = dict(init=str(tiny_model_dir), reference="ema", output_dir=str(tmp_path / algorithm), steps=3,
                  save_steps=0, on_nonfinite="skip", report_to=[])  # fmt: skip
    if algorithm == "ppo":
        (tmp_path / "prompts.jsonl").write_text("".join(json.dumps({"prompt": p}) + "\n" for p in ["Hi.", "Go."]))
        config = RLConfig(algorithm="ppo", prompts=str(tmp_path / "prompts.jsonl"), task=None, prompts_per_step=2,
                          samples_per_prompt=2, max_new_tokens=4, value_warmup_steps=0, reward_normalisation="none",
                          **shared)  # fmt: skip
        train_rl(config, False, lambda prompts, responses: nan_at_call_2(torch.ones(len(responses))))
    else:
        (tmp_path / "prefs.jsonl").write_text(
            json.dumps({"prompt": "Hi.", "chosen": "Hello!", "rejected": "No."}) + "\n"
        )
        dpo_loss = salsa.rl.dpo.dpo_loss
        monkeypatch.setattr(salsa.rl.dpo, "dpo_loss", lambda *args, **kwargs: nan_at_call_2(dpo_loss(*args, **kwargs)))
        train_dpo(DPOConfig(data=str(tmp_path / "prefs.jsonl"), batch_size=1, **shared), False)
    assert moved_at == [1, 3]


def _timings(record: dict) -> dict:
    """The fields of a metrics line that measure time, not the run."""
    return {k: v for k, v in record.items() if k in ("tokens_per_s", "elapsed_s")}


def test_schedule_settings_that_cannot_work_are_refused():
    from salsa.errors import ConfigError

    with pytest.raises(ConfigError, match="rl.reference_schedule is soft but rl.reference is none"):
        RLConfig(reference="none", reference_schedule="soft").check()
    with pytest.raises(ConfigError, match="rl.reference ema is the ema schedule from the init"):
        RLConfig(reference="ema", reference_schedule="hard").check()
    with pytest.raises(ConfigError, match="moving reference"):
        RLConfig(reference="soup", reference_schedule="hard", use_lora=True, sharding="fsdp2").check()
    RLConfig(reference="ema", reference_schedule="ema").check()  # the alias, spelled out
