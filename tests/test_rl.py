"""RL on tiny models: the reference is what it claims to be, and a simple reward is learned."""

import dataclasses
import json
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from salsa.config import DPOConfig, RLConfig
from salsa.errors import ConfigError
from salsa.generation import encode_prompts, generate, left_pad, position_ids, response_mask
from salsa.models import load_causal_lm, save_tiny_model
from salsa.policy import response_forward
from salsa.rl.dpo import train_dpo
from salsa.rl.ppo import train_rl
from salsa.rl.reference import load_reference, shares_the_policy_base
from salsa.snapshots import list_snapshots, load_snapshot
from salsa.soup import build_soup

PROMPTS = ["Say something.", "Write a word.", "Tell me a story.", "Describe the sea.",
           "Name a colour.", "Count to three.", "Greet me.", "Sing a song."]  # fmt: skip


@pytest.fixture(scope="module")
def peaked_model(tmp_path_factory, tokenizer):
    """A tiny model with a peaked next-token distribution (a random 49k-way uniform one learns too slowly)."""
    return save_tiny_model(tmp_path_factory.mktemp("peaked") / "base", tokenizer, seed=0, initializer_range=1.0)


@pytest.fixture(scope="module")
def token_reward(peaked_model, tokenizer, sampled_token_counts):
    """A simple reward: how often the response contains the token the model emits most at the start."""
    counts = sampled_token_counts(peaked_model, PROMPTS)
    target = tokenizer.decode([counts.most_common(1)[0][0]])
    return lambda prompts, responses: torch.tensor([10 * r.count(target) / 8 for r in responses])


@pytest.fixture(scope="module")
def prompts_file(tmp_path_factory):
    path = tmp_path_factory.mktemp("prompts") / "prompts.jsonl"
    path.write_text("".join(json.dumps({"prompt": p}) + "\n" for p in PROMPTS))
    return str(path)


def _config(tmp_path, model_dir, prompts_file, **overrides):
    base = RLConfig(
        algorithm="rloo", init=str(model_dir), reference="sft", prompts=prompts_file, task=None,
        output_dir=str(tmp_path / "rl"), steps=20, prompts_per_step=8, samples_per_prompt=4, max_new_tokens=8,
        learning_rate=1e-2, kl_coef=0.0, save_steps=0, ppo_epochs=1,
    )  # fmt: skip
    return dataclasses.replace(base, **overrides)


def _metrics(out):
    return [json.loads(line) for line in (out.parent / "metrics.jsonl").read_text().splitlines()]


def _mean(values):
    return sum(values) / len(values)


@pytest.fixture(scope="module")
def free_rloo_run(tmp_path_factory, peaked_model, prompts_file, token_reward):
    # One minibatch of the whole rollout (32 sequences): the update reuses the rollout's own forward pass. 12 steps:
    # the mean reward of steps 8-12 is 0.8 above step 1's (of steps 16-20: 1.4).
    cfg = _config(tmp_path_factory.mktemp("free"), peaked_model, prompts_file, minibatch_size=32, steps=12)
    return _metrics(train_rl(cfg, show_progress=False, reward_fn=token_reward))


def test_response_logprobs_match_the_sampling_distribution(tokenizer, tiny_model_dir):
    model = load_causal_lm(str(tiny_model_dir)).eval()
    ids, attention = left_pad(encode_prompts(tokenizer, ["Hi", "A much longer prompt than the first one"]), 0)
    torch.manual_seed(0)
    out = model.generate(input_ids=ids, attention_mask=attention, max_new_tokens=5, do_sample=True, top_k=0,
                         output_scores=True, return_dict_in_generate=True, pad_token_id=0)  # fmt: skip
    responses = out.sequences[:, ids.shape[1] :]
    expected = torch.stack([s.log_softmax(-1) for s in out.scores], 1).gather(-1, responses[..., None]).squeeze(-1)
    mask = response_mask(responses, {tokenizer.eos_token_id})
    full_attention = torch.cat([attention, mask.long()], 1)
    with torch.no_grad():
        got = response_forward(model, out.sequences, full_attention, ids.shape[1]).logprobs
    assert torch.allclose(got * mask, expected * mask, atol=1e-4)


def test_a_prompt_shared_by_several_samples_runs_once_with_the_same_result(tokenizer, peaked_model):
    # Rows 0, 2, 3 share a prompt and row 1 has its own; the shared pass must equal one pass per row, in
    # log-probs and in the gradient it gives every weight (the prompt's keys/values included), up to float32
    # rounding: a prompt that got no gradient through its keys/values would be off by O(1) in k/v_proj.
    model = load_causal_lm(str(peaked_model))
    torch.manual_seed(0)
    prompt_ids, prompt_mask = left_pad(encode_prompts(tokenizer, ["Hi", "A much longer prompt", "Hi", "Hi"]), 0)
    responses = torch.randint(1, len(tokenizer), (4, 6))
    sequences = torch.cat([prompt_ids, responses], 1)
    attention = torch.cat([prompt_mask, torch.ones_like(responses)], 1)
    prompt_length = prompt_ids.shape[1]

    shared = response_forward(model, sequences, attention, prompt_length).logprobs
    shared.sum().backward()
    shared_grads = [p.grad.clone() for p in model.parameters()]
    model.zero_grad()
    one_by_one = torch.cat([response_forward(model, sequences[i : i + 1], attention[i : i + 1], prompt_length).logprobs
                            for i in range(4)])  # fmt: skip
    one_by_one.sum().backward()
    assert torch.allclose(shared, one_by_one, atol=1e-4)
    for shared_grad, p in zip(shared_grads, model.parameters(), strict=True):
        assert (shared_grad - p.grad).abs().max() <= 1e-4 * p.grad.abs().max()


def _smallest_greedy_margin(model, sample):
    """The smallest gap between the two largest logits where `sample` chose a token. Logits computed in a batch of
    another shape, or by another implementation, agree to float rounding (a few 1e-6) only; greedy tokens agree
    where this gap is far larger."""
    with torch.no_grad():
        logits = model(sample.sequences, attention_mask=sample.attention_mask,
                       position_ids=position_ids(sample.attention_mask)).logits  # fmt: skip
    top = logits[:, sample.prompt_length - 1 : -1].topk(2, dim=-1).values
    return float((top[..., 0] - top[..., 1])[sample.mask.bool()].min())


def test_generation_with_a_repeated_prompt_equals_generating_it_alone(tokenizer, peaked_model):
    model = load_causal_lm(str(peaked_model))
    prompts = ["Describe the sea.", "Greet me.", "Describe the sea."]
    together = generate(model, tokenizer, prompts, max_new_tokens=6, temperature=0, seeds=0, with_logprobs=True)
    assert _smallest_greedy_margin(model, together) > 1e-4  # the peaked model: no token at a rounding tie
    for i, prompt in enumerate(prompts):
        alone = generate(model, tokenizer, [prompt], max_new_tokens=6, temperature=0, seeds=0, with_logprobs=True)
        assert together.responses[i] == alone.responses[0]
        same = together.logprobs[i][together.mask[i].bool()], alone.logprobs[0][alone.mask[0].bool()]
        assert torch.allclose(*same, atol=1e-5)
    assert together.responses[0] == together.responses[2]


def test_nucleus_sampling_distribution_by_hand():
    from salsa.generation import sampling_logprobs

    logits = torch.tensor([[0.5, 0.3, 0.2]]).log()
    # top-p 0.7: ascending cumulative mass 0.2, 0.5, 1.0; the token whose mass (0.2) fits in 1 - 0.7 goes.
    assert torch.allclose(sampling_logprobs(logits, 1.0, 0.7).exp(), torch.tensor([[0.625, 0.375, 0.0]]))
    # temperature 0.5 squares the probabilities before renormalising: 25 : 9 : 4.
    assert torch.allclose(sampling_logprobs(logits, 0.5).exp(), torch.tensor([[25.0, 9.0, 4.0]]) / 38)
    assert torch.allclose(sampling_logprobs(logits, 0.0).exp(), torch.tensor([[0.5, 0.3, 0.2]]))
    # The most likely token stays however small top_p is.
    assert torch.equal(sampling_logprobs(logits, 1.0, 0.01).exp(), torch.tensor([[1.0, 0.0, 0.0]]))


def test_rows_that_end_early_leave_the_batch_without_changing_the_others(tokenizer, peaked_model):
    """Greedy samples equal transformers' `generate`, with an end-of-sequence token that some rows hit early."""
    model = load_causal_lm(str(peaked_model)).eval()
    ids, attention = left_pad(encode_prompts(tokenizer, PROMPTS), tokenizer.pad_token_id)
    first_tokens = generate(model, tokenizer, PROMPTS, max_new_tokens=3, temperature=0, seeds=0).sequences[:, -3:]
    stop = int(first_tokens[0, 1])  # row 0 now ends at its second token; rows without it run on
    model.generation_config.eos_token_id = [tokenizer.eos_token_id, stop]
    ours = generate(model, tokenizer, PROMPTS, max_new_tokens=8, temperature=0, seeds=0)
    reference = model.generate(
        input_ids=ids, attention_mask=attention, do_sample=False, max_new_tokens=8, pad_token_id=tokenizer.pad_token_id
    )[:, ids.shape[1] :]
    reference_mask = response_mask(reference, {tokenizer.eos_token_id, stop})
    assert ours.mask[0].sum() == 2 and any(m.sum() > 2 for m in ours.mask)
    assert _smallest_greedy_margin(model, ours) > 1e-4  # no greedy token at a rounding tie
    for row, (tokens, mask) in enumerate(zip(reference, reference_mask, strict=True)):
        assert torch.equal(ours.sequences[row, ids.shape[1] :][ours.mask[row].bool()], tokens[mask.bool()])


def test_generation_is_determined_by_its_seed(tokenizer, peaked_model):
    model = load_causal_lm(str(peaked_model))
    first, again, other = (
        generate(model, tokenizer, PROMPTS, max_new_tokens=6, temperature=1.0, top_p=0.9, seeds=seed).responses
        for seed in (1, 1, 2)
    )
    assert first == again and first != other


def test_soup_reference_uses_the_averaged_weights(tmp_path, tokenizer, prompts_file):
    a = save_tiny_model(tmp_path / "a", tokenizer, seed=1)
    b = save_tiny_model(tmp_path / "b", tokenizer, seed=2)
    soup_dir = build_soup([a, b], tmp_path / "soup", [0.25, 0.75])
    cpu = torch.device("cpu")
    in_memory = load_reference(RLConfig(reference="soup", init=str(a), reference_models=[str(a), str(b)],
                                        reference_weights=[0.25, 0.75]), None, cpu).model  # fmt: skip
    from_dir = load_reference(RLConfig(reference="soup", init=str(a), reference_model=str(soup_dir)), None, cpu).model
    soup_model = load_causal_lm(str(soup_dir)).eval()
    sequences = torch.randint(0, len(tokenizer), (3, 12))
    attention = torch.ones_like(sequences)
    # The same weights, bit for bit; their outputs agree to float rounding (the weights lie at other addresses).
    expected = soup_model.state_dict()
    for reference in (in_memory, from_dir):
        assert all(torch.equal(value, expected[name]) for name, value in reference.state_dict().items())
    with torch.no_grad():
        expected = response_forward(soup_model, sequences, attention, 5).logprobs
        assert torch.allclose(response_forward(in_memory, sequences, attention, 5).logprobs, expected, atol=1e-5)
        assert torch.allclose(response_forward(from_dir, sequences, attention, 5).logprobs, expected, atol=1e-5)
        plain_a = response_forward(load_causal_lm(str(a)), sequences, attention, 5).logprobs
    assert not torch.allclose(plain_a, expected, atol=1e-3)
    assert not any(p.requires_grad for p in in_memory.parameters())


def _salsa(*argv):
    """`salsa ARGV` in this process (the command line as a user types it); returns the exit code."""
    from salsa.cli import main

    saved, sys.argv = sys.argv, ["salsa", *argv]
    try:
        main()
        return 0
    except SystemExit as e:
        return e.code
    finally:
        sys.argv = saved


def test_a_soup_as_init_is_the_soup_reference(tmp_path, tokenizer, prompts_file, monkeypatch, capfd):
    # The README's SALSA command: `salsa rl --init runs/x/soup --reference soup ...` anchors to the init, which is
    # a soup; it trains exactly as the same command with `--reference-model runs/x/soup`.
    monkeypatch.chdir(tmp_path)
    for seed in (1, 2):
        save_tiny_model(tmp_path / f"runs/x/sft-{seed - 1}", tokenizer, seed=seed)
    assert _salsa("soup", "runs/x/sft-0", "runs/x/sft-1", "--out", "runs/x/soup") == 0
    reward = str(Path(__file__).parent / "rewards.py") + ":length"
    command = ["rl", "--init", "runs/x/soup", "--reference", "soup", "--reward-model", reward, "-q", "--steps", "2",
               "--set", f"prompts={prompts_file}", "--set", "prompts_per_step=4", "--set", "max_new_tokens=6",
               "--set", "task=null", "--set", "learning_rate=1e-2", "--set", "kl_coef=1.0",
               "--set", "value_warmup_steps=0"]  # fmt: skip
    assert _salsa(*command, "--output-dir", "runs/rl-salsa") == 0, capfd.readouterr().err
    assert _salsa(*command, "--reference-model", "runs/x/soup", "--output-dir", "runs/rl-explicit") == 0
    implicit, explicit = (_metrics(tmp_path / f"runs/{run}/final") for run in ("rl-salsa", "rl-explicit"))
    assert implicit[0]["kl_ref"] == pytest.approx(0.0, abs=1e-5)  # the policy starts at its reference
    assert abs(implicit[1]["kl_ref"]) > 1e-4  # then it moves away: the KL compared below is measured, not zero
    assert [m["kl_ref"] for m in implicit] == pytest.approx([m["kl_ref"] for m in explicit], rel=1e-4, abs=1e-6)

    # An init that is not a soup is no soup reference: one line, nothing written.
    capfd.readouterr()
    assert _salsa(*command[:2], "runs/x/sft-0", *command[3:], "--output-dir", "runs/rl-not-a-soup") == 2
    assert capfd.readouterr().err.strip().splitlines() == [
        "error: rl.reference is soup but rl.init (runs/x/sft-0) is not a soup directory (no soup.json from `salsa "
        "soup`); pass a soup directory as --init or --reference-model, or models to average as --set "
        "reference_models=[A,B]"
    ]
    assert not (tmp_path / "runs/rl-not-a-soup").exists()


def test_lora_on_the_model_that_is_the_reference_keeps_no_second_copy(tmp_path):
    soup, sft = str(tmp_path / "soup"), str(tmp_path / "sft-0")
    shared = [
        RLConfig(use_lora=True, reference="sft", init=sft),
        RLConfig(use_lora=True, reference="soup", init=soup),  # the init is the soup reference
        RLConfig(use_lora=True, reference="soup", init=soup, reference_model=soup + "/"),
    ]
    separate = [
        RLConfig(use_lora=False, reference="soup", init=soup),
        RLConfig(use_lora=True, reference="soup", init=sft, reference_model=soup),
        RLConfig(use_lora=True, reference="soup", init=soup, reference_models=[sft, soup]),
        RLConfig(use_lora=True, reference="ema", init=soup),
    ]
    assert [shares_the_policy_base(c) for c in shared + separate] == [True] * 3 + [False] * 4


def test_rloo_learns_a_simple_reward_from_its_reference(free_rloo_run):
    rewards = [m["reward"] for m in free_rloo_run]
    # RLOO's own baseline centres the advantages; they are not whitened (the default for rloo), so the first steps
    # move the policy less than whitened ones would.
    assert _mean(rewards[-5:]) > rewards[0] + 0.5, rewards
    assert free_rloo_run[0]["kl_ref"] == pytest.approx(0.0, abs=1e-4)  # the policy starts at its reference
    # One update per rollout from the weights that scored it: every ratio is exactly 1, nothing is clipped.
    assert all(m["approx_kl"] == 0.0 and m["clip_fraction"] == 0.0 for m in free_rloo_run)


@pytest.mark.parametrize("algorithm", ["ppo", "grpo"])
def test_ppo_and_grpo_learn_a_simple_reward(tmp_path, peaked_model, prompts_file, token_reward, algorithm):
    # GRPO also recomputes activations in the backward pass: it must learn all the same. 10 steps: the mean reward
    # of steps 6-10 is 1.05 (ppo) and 1.08 (grpo) above step 1's.
    cfg = _config(tmp_path, peaked_model, prompts_file, algorithm=algorithm, minibatch_size=16, steps=10,
                  gradient_checkpointing=algorithm == "grpo")  # fmt: skip
    final = train_rl(cfg, show_progress=False, reward_fn=token_reward)
    rewards = [m["reward"] for m in _metrics(final)]
    # Step 1's rollout scores the initial policy; at this learning rate the first updates already help.
    assert _mean(rewards[-5:]) > rewards[0] + 0.3, rewards
    assert (final / "config.json").is_file() and (final / "tokenizer.json").is_file()


def test_large_kl_coefficient_keeps_the_policy_near_its_reference(tmp_path, peaked_model, prompts_file, token_reward):
    # A small learning rate: with Adam's fixed step size a large one moves any policy far within a few steps.
    # 6 steps, compared over steps 4-6: the two runs part from step 3 on. Two seeds, pooled: one run's KL is noisy
    # (at 6 steps, seeds 0 to 5 alone: 0.33 to 0.63 of the free run's; pooled, every pair of them: 0.39 to 0.60, and
    # in each the anchored runs gained less reward). Half the prompts per step instead would not do: at 4, the
    # gradient's noise hides the anchor (seeds 0 to 5 alone: 0.56 to 1.25).
    runs = {0.0: [], 5.0: []}
    for beta in runs:
        for seed in (0, 1):
            cfg = _config(tmp_path / f"{beta}-{seed}", peaked_model, prompts_file, kl_coef=beta, learning_rate=1e-3,
                          seed=seed, steps=6)  # fmt: skip
            runs[beta].append(_metrics(train_rl(cfg, show_progress=False, reward_fn=token_reward)))
    kl_free, kl_anchored = (_mean([m["kl_ref"] for run in runs[b] for m in run[3:]]) for b in runs)
    assert kl_anchored < 0.75 * kl_free, (kl_anchored, kl_free)
    gain_free, gain_anchored = (
        _mean([_mean([m["reward"] for m in run[3:]]) - run[0]["reward"] for run in runs[b]]) for b in runs
    )
    assert gain_anchored < gain_free


def test_interrupted_ema_run_resumes_to_the_same_policy(tmp_path, peaked_model, prompts_file, token_reward, interrupt):
    # Half the prompts per step: the same resume, at half the cost of each step.
    cfg = _config(tmp_path / "straight", peaked_model, prompts_file, reference="ema", steps=4, kl_coef=0.1,
                  save_steps=2, prompts_per_step=4)  # fmt: skip
    straight = train_rl(cfg, False, token_reward)
    resumed_cfg = dataclasses.replace(cfg, output_dir=str(tmp_path / "resumed"))
    restore = interrupt("salsa.rl.ppo.rl_update", at_call=4)
    with pytest.raises(KeyboardInterrupt):
        train_rl(resumed_cfg, False, token_reward)
    restore()
    resumed = train_rl(resumed_cfg, False, token_reward)
    a, b = load_causal_lm(str(straight)).state_dict(), load_causal_lm(str(resumed)).state_dict()
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert [m["step"] for m in _metrics(resumed)] == [1, 2, 3, 4]


def test_no_reference_means_no_kl_penalty(tmp_path, peaked_model, prompts_file, token_reward):
    none = _config(tmp_path, peaked_model, prompts_file, reference="none", steps=2)
    assert all(m["kl_coef"] == 0.0 and m["kl_ref"] == 0.0 for m in _metrics(train_rl(none, False, token_reward)))


def test_invalid_rl_settings(tmp_path, peaked_model, prompts_file, token_reward):
    with pytest.raises(ConfigError, match="samples_per_prompt must be >= 2 for rloo"):
        train_rl(_config(tmp_path, peaked_model, prompts_file, samples_per_prompt=1), False, token_reward)
    with pytest.raises(ConfigError, match="rl.reference must be one of"):
        train_rl(_config(tmp_path, peaked_model, prompts_file, reference="base"), False, token_reward)


def test_kl_to_a_separate_sft_model_is_logged(tmp_path, peaked_model, prompts_file, token_reward):
    cfg = _config(tmp_path, peaked_model, prompts_file, reference="ema", sft_model=str(peaked_model), steps=2)
    metrics = _metrics(train_rl(cfg, show_progress=False, reward_fn=token_reward))
    assert metrics[0]["kl_sft"] == pytest.approx(0.0, abs=1e-4)  # the policy starts at the SFT model
    assert metrics[1]["kl_sft"] != 0.0


@pytest.mark.parametrize("use_lora", [True, False])
def test_a_snapshot_is_the_policy_at_its_step(tmp_path, peaked_model, prompts_file, token_reward, use_lora):
    cfg = _config(
        tmp_path / "long", peaked_model, prompts_file, steps=3, snapshot_steps=2, use_lora=use_lora,
        prompts_per_step=4, samples_per_prompt=2,
    )  # fmt: skip
    run_dir = train_rl(cfg, False, token_reward).parent
    assert list(list_snapshots(run_dir)) == [2]  # step 3 is final/
    # The same run stopped after 2 steps: its final policy is the snapshot (every draw is seeded by step).
    short = train_rl(dataclasses.replace(cfg, steps=2, output_dir=str(tmp_path / "short")), False, token_reward)
    expected, snapshot = load_causal_lm(str(short)).state_dict(), load_snapshot(run_dir, 2).state_dict()
    assert expected.keys() == snapshot.keys()
    assert all(torch.allclose(expected[k], snapshot[k], atol=1e-6) for k in expected)
    base = load_causal_lm(str(peaked_model)).state_dict()
    assert any(not torch.equal(snapshot[k], base[k]) for k in base)  # and it is not the initial policy


def _nan_on_one_response(reward_fn, at_step):
    """The reward, with NaN for response 3 of the rollout of step `at_step` (its first call measures the reward's
    normalisation on the starting policy)."""
    calls = {"n": -1}

    def scores(prompts, responses):
        calls["n"] += 1
        values = torch.as_tensor(reward_fn(prompts, responses), dtype=torch.float32)
        if calls["n"] == at_step:
            values[3] = float("nan")
        return values

    return scores


def test_a_nan_reward_stops_the_run_or_skips_the_step_and_no_weight_turns_nan(
    tmp_path, peaked_model, prompts_file, token_reward
):
    from salsa.errors import SalsaError

    cfg = _config(tmp_path / "stop", peaked_model, prompts_file, algorithm="ppo", steps=3, save_steps=1)
    with pytest.raises(SalsaError, match=r"rl step 2: reward is not finite \(nan at index 3\)"):
        train_rl(cfg, False, _nan_on_one_response(token_reward, at_step=2))
    out = tmp_path / "stop" / "rl"
    assert not (out / "final").exists() and not (out / "salsa_complete.json").exists()
    saved = load_file(str(out / "checkpoints" / "step-0000001" / "weights.safetensors"))
    assert all(torch.isfinite(t).all() for t in saved.values())

    skip = dataclasses.replace(cfg, output_dir=str(tmp_path / "skip"), on_nonfinite="skip")
    final = train_rl(skip, False, _nan_on_one_response(token_reward, at_step=2))
    records = _metrics(final)
    assert [r["skipped"] for r in records] == [0, 1, 1]
    assert "policy_loss" in records[0] and "policy_loss" not in records[1]  # step 2 made no update
    weights = load_causal_lm(str(final)).state_dict()
    assert all(torch.isfinite(t).all() for t in weights.values())


def test_an_interrupted_dpo_run_resumes_to_the_same_policy(tmp_path, peaked_model, interrupt):
    prefs = tmp_path / "prefs.jsonl"
    rows = [{"prompt": p, "chosen": "Yes, gladly.", "rejected": "No."} for p in PROMPTS]
    prefs.write_text("".join(json.dumps(r) + "\n" for r in rows))
    cfg = DPOConfig(init=str(peaked_model), reference="ema", data=str(prefs), output_dir=str(tmp_path / "straight"),
                    steps=4, batch_size=3, learning_rate=1e-3, save_steps=2)  # fmt: skip
    straight = train_dpo(cfg, False)
    resumed_cfg = dataclasses.replace(cfg, output_dir=str(tmp_path / "resumed"))
    restore = interrupt("salsa.rl.dpo.dpo_loss", at_call=4)
    with pytest.raises(KeyboardInterrupt):
        train_dpo(resumed_cfg, False)
    restore()
    resumed = train_dpo(resumed_cfg, False)
    a, b = load_causal_lm(str(straight)).state_dict(), load_causal_lm(str(resumed)).state_dict()
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert [m["step"] for m in _metrics(resumed)] == [1, 2, 3, 4]
    assert _metrics(resumed)[-1]["loss"] < _metrics(resumed)[0]["loss"]


def _one_update(model_dir, tokenizer, prompts, **overrides):
    """A Learner, a rollout of `prompts` and one rl_update on it; returns (learner before/after weights, stats)."""
    from salsa.logs import FiniteGuard
    from salsa.rl.learner import Learner
    from salsa.rl.ppo import rl_update
    from salsa.rl.rollout import collect_rollout

    settings = dict(init=str(model_dir), task=None, prompts_per_step=len(prompts), samples_per_prompt=2,
                    max_new_tokens=6, learning_rate=1e-2, ppo_epochs=2, minibatch_size=4)  # fmt: skip
    config = RLConfig(**{**settings, **overrides})
    torch.manual_seed(0)
    learner = Learner(config, torch.device("cpu"))
    reference = load_reference(config, learner.policy, torch.device("cpu"))
    reward = lambda p, r: torch.tensor([float(len(x)) for x in r])  # noqa: E731
    rollout = collect_rollout(learner, tokenizer, prompts, list(range(len(prompts))), config, 0, reward, reference,
                              None, None)  # fmt: skip
    before = {k: v.clone() for k, v in learner.weights().items()}
    optimizer = torch.optim.AdamW(learner.parameters(), lr=config.learning_rate)
    order = torch.Generator().manual_seed(0)
    stats = rl_update(learner, rollout, config, optimizer, config.kl_coef, order, FiniteGuard("rl"), 1)
    return before, learner.weights(), stats, rollout


@pytest.mark.parametrize("value_head", ["shared", "separate"])
def test_ppo_trains_its_value_function_on_the_trunk_or_on_a_separate_critic(tokenizer, peaked_model, value_head):
    before, after, stats, _ = _one_update(peaked_model, tokenizer, PROMPTS[:2], algorithm="ppo", value_head=value_head)
    changed = {k for k in before if not torch.equal(before[k], after[k])}
    assert {"value_head.linear.weight", "value_head.linear.bias"} <= changed  # starts at 0, learns the returns
    assert "value_loss" in stats and stats["value_loss"] > 0
    critic = {k for k in before if k.startswith("critic.")}
    if value_head == "separate":
        assert critic and critic & changed  # the critic model is trained too
    else:
        assert not critic


def test_ppo_advantages_are_gae_of_the_kl_shaped_rewards():
    from salsa.rl.update import advantages

    config = RLConfig(algorithm="ppo", gamma=1.0, lam=0.95, whiten_advantages=False)
    adv, returns = advantages(config, torch.tensor([1.0]), torch.tensor([[0.1, 0.2]]), torch.tensor([[0.5, 0.3]]),
                              torch.ones(1, 2), beta=0.5)  # fmt: skip
    # r = [-0.05, -0.1 + 1]; delta_1 = 0.9 - 0.3 = 0.6, delta_0 = -0.05 + 0.3 - 0.5 = -0.25; A_0 = -0.25 + 0.95 * 0.6
    assert adv[0].tolist() == pytest.approx([0.32, 0.6]) and returns[0].tolist() == pytest.approx([0.82, 0.9])
    rloo = RLConfig(algorithm="rloo", samples_per_prompt=2)  # not whitened by default: the raw leave-one-out gap
    adv, _ = advantages(rloo, torch.tensor([1.0, 3.0]), torch.zeros(2, 1), None, torch.ones(2, 1), beta=0.0)
    assert adv[:, 0].tolist() == [-2.0, 2.0]
    # With a KL coefficient RLOO's return is score - beta * the KL summed over the response (row 0 ends after one
    # token): R = [1 - 0.5 * 0.1, 3 - 0.5 * 2.0] = [0.95, 2]
    adv, _ = advantages(rloo, torch.tensor([1.0, 3.0]), torch.tensor([[0.1, 0.3], [1.5, 0.5]]), None,
                        torch.tensor([[1.0, 0.0], [1.0, 1.0]]), beta=0.5)  # fmt: skip
    assert adv.flatten().tolist() == pytest.approx([-1.05, 0.0, 1.05, 1.05])


def test_grpo_adds_the_k3_penalty_to_its_loss(tokenizer, peaked_model, tmp_path):
    # One gradient step (one epoch, one minibatch) from the reference itself: the k3 term is 0 there.
    one_step = dict(algorithm="grpo", ppo_epochs=1, minibatch_size=8)
    _, _, stats, _ = _one_update(peaked_model, tokenizer, PROMPTS[:2], kl_coef=1.0, **one_step)
    assert stats["kl_loss"] == pytest.approx(0.0, abs=1e-5)
    # Another reference: k3 > 0 and it pulls the update, so the coefficient changes the weights.
    other = str(save_tiny_model(tmp_path / "other", tokenizer, seed=3, initializer_range=1.0))
    runs = [
        _one_update(peaked_model, tokenizer, PROMPTS[:2], kl_coef=b, reference_model=other, **one_step)
        for b in (0.0, 1.0)
    ]
    assert runs[1][2]["kl_loss"] > 0.1
    assert any(not torch.allclose(runs[0][1][k], runs[1][1][k]) for k in runs[0][1])


def test_a_response_cut_at_max_new_tokens_pays_the_missing_eos_penalty(tokenizer, peaked_model):
    _, _, _, rollout = _one_update(
        peaked_model, tokenizer, PROMPTS[:4], algorithm="rloo", max_new_tokens=2, missing_eos_penalty=3.0
    )
    responses = rollout.sequences[:, rollout.prompt_length :]
    ended = torch.isin(responses, torch.tensor([tokenizer.eos_token_id])).any(1)
    lengths = torch.tensor([float(len(r)) for r in rollout.responses]).clamp(-5.0, 5.0)  # reward_clip 5
    assert rollout.scores.tolist() == pytest.approx((lengths - 3.0 * (~ended).float()).tolist())
    assert (~ended).any()  # at 2 tokens most responses are cut


def test_the_adaptive_kl_coefficient_follows_the_measured_kl(tmp_path, peaked_model, prompts_file, token_reward):
    cfg = _config(tmp_path, peaked_model, prompts_file, algorithm="rloo", steps=3, kl_coef=0.2, adaptive_kl=True,
                  target_kl=0.01, kl_horizon=100)  # fmt: skip
    records = _metrics(train_rl(cfg, False, token_reward))
    n = cfg.prompts_per_step * cfg.samples_per_prompt
    for now, after in zip(records, records[1:], strict=False):
        error = min(max(now["kl_ref"] / 0.01 - 1, -0.2), 0.2)
        assert after["kl_coef"] == pytest.approx(now["kl_coef"] * (1 + error * n / 100))
    assert records[-1]["kl_coef"] != 0.2


def test_reference_free_dpo_trains_without_a_reference(tmp_path, peaked_model):
    prefs = tmp_path / "prefs.jsonl"
    prefs.write_text(
        "".join(json.dumps({"prompt": p, "chosen": "Yes.", "rejected": "No, never."}) + "\n" for p in PROMPTS)
    )
    cfg = DPOConfig(init=str(peaked_model), reference="none", data=str(prefs), output_dir=str(tmp_path / "dpo"),
                    steps=6, batch_size=4, learning_rate=1e-3, save_steps=0, gradient_checkpointing=True)  # fmt: skip
    records = _metrics(train_dpo(cfg, False))
    assert records[-1]["margin"] > records[0]["margin"]  # the chosen response gains on the rejected one
