"""Each RL formula against a hand computation."""

import math

import pytest
import torch

from salsa.policy import entropy_from_logprobs
from salsa.rl.core import (
    AdaptiveKLController,
    advantage_diagnostics,
    clipped_policy_loss,
    clipped_value_loss,
    discounted_returns,
    dpo_loss,
    explained_variance,
    gae,
    grpo_advantages,
    kl_k1,
    kl_k3,
    masked_mean,
    masked_whiten,
    rloo_advantages,
    token_rewards,
)


def test_gae_matches_hand_computation():
    rewards = torch.tensor([[1.0, 0.0, 2.0]])
    values = torch.tensor([[0.5, 1.0, 1.5]])
    mask = torch.ones(1, 3)
    gamma, lam = 0.9, 0.8
    # t=2: delta = 2 - 1.5 = 0.5                 A2 = 0.5
    # t=1: delta = 0 + 0.9*1.5 - 1.0 = 0.35       A1 = 0.35 + 0.72*0.5 = 0.71
    # t=0: delta = 1 + 0.9*1.0 - 0.5 = 1.4        A0 = 1.4 + 0.72*0.71 = 1.9112
    advantages, returns = gae(rewards, values, mask, gamma, lam)
    assert torch.allclose(advantages, torch.tensor([[1.9112, 0.71, 0.5]]))
    assert torch.allclose(returns, advantages + values)


def test_gae_stops_at_the_end_of_each_response():
    rewards = torch.tensor([[0.0, 1.0, 5.0]])
    values = torch.tensor([[0.0, 0.0, 9.0]])
    mask = torch.tensor([[1.0, 1.0, 0.0]])  # the third position is padding after EOS
    advantages, _ = gae(rewards, values, mask, gamma=1.0, lam=1.0)
    assert torch.allclose(advantages, torch.tensor([[1.0, 1.0, 0.0]]))


def test_discounted_returns():
    returns = discounted_returns(torch.tensor([[1.0, 2.0, 3.0]]), torch.ones(1, 3), gamma=0.5)
    assert torch.allclose(returns, torch.tensor([[1 + 0.5 * 2 + 0.25 * 3, 2 + 0.5 * 3, 3.0]]))


def test_kl_estimators_are_unbiased_for_exact_kl():
    p = torch.tensor([0.5, 0.3, 0.2])
    q = torch.tensor([0.2, 0.5, 0.3])
    exact = float((p * (p / q).log()).sum())
    logp, logq = p.log(), q.log()
    # Expectation under p, computed exactly over the support.
    assert float((p * kl_k1(logp, logq)).sum()) == pytest.approx(exact, rel=1e-6)
    assert float((p * kl_k3(logp, logq)).sum()) == pytest.approx(exact, rel=1e-6)
    assert (kl_k3(logp, logq) >= 0).all()
    # Monte Carlo with samples from p agrees too.
    torch.manual_seed(0)
    y = torch.multinomial(p, 200_000, replacement=True)
    assert float(kl_k3(logp[y], logq[y]).mean()) == pytest.approx(exact, abs=5e-3)


def test_token_rewards_put_the_score_on_the_last_response_token():
    kl = torch.tensor([[0.1, 0.2, 0.3], [0.5, 0.5, 0.5]])
    mask = torch.tensor([[1.0, 1.0, 1.0], [1.0, 0.0, 0.0]])
    rewards = token_rewards(torch.tensor([1.0, 2.0]), kl, mask, kl_coef=0.5)
    assert torch.allclose(rewards, torch.tensor([[-0.05, -0.1, 1 - 0.15], [2 - 0.25, 0.0, 0.0]]))


def test_clipped_policy_loss():
    logp = torch.log(torch.tensor([[1.5, 0.5]]))  # ratios 1.5 and 0.5 against old log-probs 0
    old = torch.zeros(1, 2)
    adv = torch.tensor([[1.0, -1.0]])
    loss, clip_fraction, _ = clipped_policy_loss(logp, old, adv, torch.ones(1, 2), clip=0.2)
    # token 0: max(-1.5, -1.2) = -1.2 (clipped); token 1: max(0.5, 0.8) = 0.8 (clipped)
    assert loss.item() == pytest.approx((-1.2 + 0.8) / 2)
    assert clip_fraction.item() == 1.0
    loss, clip_fraction, approx_kl = clipped_policy_loss(old, old, adv, torch.ones(1, 2), clip=0.2)
    assert loss.item() == pytest.approx(0.0) and clip_fraction.item() == 0.0 and approx_kl.item() == 0.0


def test_clipped_value_loss():
    values, old, returns = torch.tensor([[2.0]]), torch.tensor([[1.0]]), torch.tensor([[3.0]])
    # unclipped (2-3)^2 = 1; clipped V = 1.2, (1.2-3)^2 = 3.24 -> max 3.24, times 0.5
    assert clipped_value_loss(values, old, returns, torch.ones(1, 1), clip=0.2).item() == pytest.approx(1.62)


def test_rloo_and_grpo_advantages():
    scores = torch.tensor([1.0, 2.0, 3.0, 0.0, 0.0, 6.0])
    assert torch.allclose(
        rloo_advantages(scores, 3), torch.tensor([1 - 2.5, 2 - 2.0, 3 - 1.5, 0 - 3.0, 0 - 3.0, 6 - 0.0])
    )
    g = grpo_advantages(scores, 3, eps=0.0)
    assert torch.allclose(g[:3], torch.tensor([-1.0, 0.0, 1.0]))
    assert g[3:].sum().abs() < 1e-6


def test_masked_statistics_and_entropy():
    x, mask = torch.tensor([[1.0, 3.0, 100.0]]), torch.tensor([[1.0, 1.0, 0.0]])
    assert masked_mean(x, mask).item() == 2.0
    w = masked_whiten(x, mask)
    assert masked_mean(w, mask).abs().item() < 1e-6
    # Unbiased variance of [1, 3] is 2: whitened values are -+1 / sqrt(2); the masked 100 plays no part.
    assert w[0, :2].tolist() == pytest.approx([-1 / math.sqrt(2), 1 / math.sqrt(2)], abs=1e-6)
    x2, mask2 = torch.tensor([[2.0, 4.0, 9.0, 0.0]]), torch.tensor([[1.0, 1.0, 1.0, 0.0]])
    # mean 5, unbiased variance (9 + 1 + 16) / 2 = 13
    assert masked_whiten(x2, mask2)[0, :3].tolist() == pytest.approx([(v - 5) / math.sqrt(13) for v in (2, 4, 9)])
    assert masked_whiten(x2, mask2, shift_mean=False)[0, 0].item() == pytest.approx((2 - 5) / math.sqrt(13) + 5)
    # Over several processes `total` sums a statistic over them: here the other process holds the 9.
    other = iter([torch.tensor([9.0, 1.0]), torch.tensor((9.0 - 5) ** 2)])  # its (sum, count), then its squares
    whitened = masked_whiten(torch.tensor([[2.0, 4.0]]), torch.ones(1, 2), total=lambda t: t + next(other))
    assert whitened[0].tolist() == pytest.approx([(v - 5) / math.sqrt(13) for v in (2, 4)])
    assert entropy_from_logprobs(torch.zeros(1, 4).log_softmax(-1)).item() == pytest.approx(math.log(4))
    assert entropy_from_logprobs(torch.tensor([[0.0, -1e9]])).item() == pytest.approx(0.0)


def test_dpo_loss_and_adaptive_kl():
    zero = torch.zeros(2)
    assert dpo_loss(zero, zero, zero, zero, beta=0.1).item() == pytest.approx(math.log(2))
    chosen = torch.tensor([1.0, 1.0])
    assert dpo_loss(chosen, zero, zero, zero, beta=1.0).item() == pytest.approx(math.log(1 + math.exp(-1)))
    # With a reference: margin = (pi_c - ref_c) - (pi_r - ref_r) = (-1 - -3) - (-2 - -1) = 3; beta 0.5 -> 1.5.
    loss = dpo_loss(torch.tensor([-1.0]), torch.tensor([-2.0]), torch.tensor([-3.0]), torch.tensor([-1.0]), beta=0.5)
    assert loss.item() == pytest.approx(math.log(1 + math.exp(-1.5)))
    # A reference that favours the chosen response more than the policy does makes the loss larger.
    worse = dpo_loss(torch.tensor([-1.0]), torch.tensor([-2.0]), torch.tensor([0.0]), torch.tensor([-5.0]), beta=0.5)
    assert worse.item() == pytest.approx(math.log(1 + math.exp(2.0)))  # margin (-1 - 0) - (-2 - -5) = -4
    controller = AdaptiveKLController(0.1, target=6.0, horizon=10_000)
    controller.update(current_kl=12.0, num_samples=1000)  # error clipped at +0.2
    assert controller.value == pytest.approx(0.1 * (1 + 0.2 * 0.1))


def test_ema_update_moves_the_reference_a_fraction_towards_the_policy():
    from salsa.rl.reference import move_towards

    reference, policy = torch.nn.Linear(2, 1, bias=False), torch.nn.Linear(2, 1, bias=False)
    with torch.no_grad():
        reference.weight.copy_(torch.tensor([[1.0, 2.0]]))
        policy.weight.copy_(torch.tensor([[3.0, -2.0]]))
    move_towards(reference, policy, weight=0.1)  # an EMA step with decay 0.9
    # 0.9 * reference + 0.1 * policy, not the other way round
    assert reference.weight.tolist() == [pytest.approx([1.2, 1.6])]
    assert policy.weight.tolist() == [[3.0, -2.0]]


def test_approximate_kl_is_k3_of_the_new_over_old_ratio():
    old = torch.tensor([[-1.0, -2.0]])
    new = torch.tensor([[-0.5, -2.5]])
    mask = torch.ones(1, 2)
    _, _, approx = clipped_policy_loss(new, old, torch.zeros(1, 2), mask, clip=0.2)
    ratios = (new - old).exp()
    assert approx.item() == pytest.approx(float(((ratios - 1) - (new - old)).mean()))
    _, _, same = clipped_policy_loss(old, old, torch.zeros(1, 2), mask, clip=0.2)
    assert same.item() == 0.0


def test_sequence_aggregation_weighs_every_response_alike():
    from salsa.rl.core import aggregate

    x = torch.tensor([[1.0, 1.0, 1.0, 1.0], [5.0, 0.0, 0.0, 0.0]])
    mask = torch.tensor([[1.0, 1.0, 1.0, 1.0], [1.0, 0.0, 0.0, 0.0]])
    assert aggregate(x, mask, "token").item() == pytest.approx(9 / 5)  # the long response weighs 4 of 5 tokens
    assert aggregate(x, mask, "sequence").item() == pytest.approx((1 + 5) / 2)


def test_explained_variance_by_hand():
    returns = torch.tensor([[1.0, 2.0, 3.0, 9.0]])
    mask = torch.tensor([[1.0, 1.0, 1.0, 0.0]])  # the last token is padding
    # A perfect critic explains everything; the mean (2) explains nothing; an offset predictor still explains all.
    assert explained_variance(returns, returns, mask) == pytest.approx(1.0)
    assert explained_variance(torch.full_like(returns, 2.0), returns, mask) == pytest.approx(0.0)
    assert explained_variance(returns + 5, returns, mask) == pytest.approx(1.0)
    # V = [1.5, 2, 2.5]: errors [-0.5, 0, 0.5], variance 1/6 against Var[R] = 2/3: 1 - 0.25 = 0.75.
    values = torch.tensor([[1.5, 2.0, 2.5, 0.0]])
    assert explained_variance(values, returns, mask) == pytest.approx(0.75)
    # Reversed predictions are worse than the mean: Var[R - V] = 4 Var[R] -> 1 - 4 = -3.
    assert explained_variance(torch.tensor([[3.0, 2.0, 1.0, 0.0]]), returns, mask) == pytest.approx(-3.0)


def test_advantage_diagnostics_average_each_quarter_of_each_response():
    # Response 1 has 4 tokens (one per quarter), response 2 has 8 (two per quarter); the padding is ignored.
    advantages = torch.tensor([[1.0, 2.0, 3.0, 4.0, 99.0, 99.0, 99.0, 99.0],
                               [10.0, 20.0, 30.0, 40.0, 50.0, 60.0, 70.0, 80.0]])  # fmt: skip
    mask = torch.tensor([[1.0] * 4 + [0.0] * 4, [1.0] * 8])
    result = advantage_diagnostics(advantages, mask)
    assert result == pytest.approx(
        {
            "advantage_q1": (1 + 10 + 20) / 3,
            "advantage_q2": (2 + 30 + 40) / 3,
            "advantage_q3": (3 + 50 + 60) / 3,
            "advantage_q4": (4 + 70 + 80) / 3,
        }  # fmt: skip
    )
    # A response shorter than the number of quarters puts its tokens in the quarters their position falls in.
    short = advantage_diagnostics(torch.tensor([[5.0, 7.0]]), torch.ones(1, 2))
    assert short["advantage_q1"] == 5.0 and short["advantage_q3"] == 7.0 and short["advantage_q2"] == 0.0
