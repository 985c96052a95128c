import math

import pytest
import torch

from chatforge.losses import (adaptive_kl_coef, dpo_loss, gae, group_centered, grpo_advantages, k3_kl,
                              kl_penalized_rewards, policy_loss, returns_to_go, rloo_advantages, value_loss, whiten,
                              IGNORE_INDEX, masked_mean, pairwise_accuracy, ranking_loss, token_cross_entropy)


def nll_sigmoid(x):
    """-log sigmoid(x) = log(1 + e^-x), by hand."""
    return math.log(1 + math.exp(-x))


def test_ranking_loss_k2_by_hand():
    # one pair, r_w - r_l = 1: log(1 + e^-1) = 0.313262
    assert ranking_loss(torch.tensor([1.0, 0.0]), [2]).item() == pytest.approx(0.313262, abs=1e-6)


def test_ranking_loss_k3_by_hand():
    # pairs (0,1): 1, (0,2): 2, (1,2): 1 -> (0.313262 + 0.126928 + 0.313262) / 3 = 0.251151
    loss = ranking_loss(torch.tensor([2.0, 1.0, 0.0]), [3])
    assert loss.item() == pytest.approx(0.251151, abs=1e-6)


def test_ranking_loss_k4_is_mean_pairwise_loss():
    rewards = torch.tensor([0.5, 1.5, -1.0, 0.0])  # ranked best first; the model gets pair (0,1) wrong
    by_hand = [nll_sigmoid(0.5 - 1.5), nll_sigmoid(0.5 + 1.0), nll_sigmoid(0.5 - 0.0),
               nll_sigmoid(1.5 + 1.0), nll_sigmoid(1.5 - 0.0), nll_sigmoid(-1.0 - 0.0)]
    assert ranking_loss(rewards, [4]).item() == pytest.approx(sum(by_hand) / 6, abs=1e-6)
    # = 1.313262, 0.201413, 0.474077, 0.078889, 0.201413, 1.313262 -> mean 0.597053
    assert ranking_loss(rewards, [4]).item() == pytest.approx(0.597053, abs=1e-5)


def test_ranking_loss_groups_weigh_equally_and_margin():
    two = ranking_loss(torch.tensor([1.0, 0.0, 2.0, 1.0, 0.0]), [2, 3])
    assert two.item() == pytest.approx((0.313262 + 0.251151) / 2, abs=1e-6)
    # a margin of 1 turns a gap of 1 into a gap of 0: log 2
    assert ranking_loss(torch.tensor([1.0, 0.0]), [2], margin=1.0).item() == pytest.approx(math.log(2), abs=1e-6)
    with pytest.raises(ValueError):
        ranking_loss(torch.tensor([1.0, 0.0, 3.0]), [2])


def test_pairwise_accuracy():
    assert pairwise_accuracy(torch.tensor([0.5, 1.5, -1.0, 0.0]), [4]) == (4, 6)


def test_masked_mean_and_token_loss():
    values = torch.tensor([[1.0, 2.0, 3.0], [4.0, 5.0, 6.0]])
    mask = torch.tensor([[1, 1, 0], [0, 0, 1]])
    assert masked_mean(values, mask).item() == pytest.approx(3.0)
    assert masked_mean(values, mask, dim=1).tolist() == [1.5, 6.0]
    # uniform logits over 4 tokens: every counted token costs log 4
    logits = torch.zeros(1, 3, 4)
    labels = torch.tensor([[1, IGNORE_INDEX, 3]])
    assert token_cross_entropy(logits, labels).item() == pytest.approx(math.log(4))


# ---- RL math, against values worked out by hand (see each test's comment)

def test_kl_penalized_rewards_put_the_score_on_the_last_real_token():
    logprobs = torch.tensor([[-1.0, -2.0, -3.0], [-1.0, -1.0, -9.0]])
    ref_logprobs = torch.tensor([[-1.5, -2.0, -2.0], [-2.0, -1.0, 0.0]])
    mask = torch.tensor([[1, 1, 1], [1, 1, 0]])
    rewards, kl = kl_penalized_rewards(logprobs * mask, ref_logprobs * mask, mask, torch.tensor([2.0, -1.0]), 0.1)
    # kl = logprobs - ref = [0.5, 0, -1] and [1, 0, (pad)]; rewards = -0.1 * kl, + score on the last real token
    assert torch.allclose(kl, torch.tensor([[0.5, 0.0, -1.0], [1.0, 0.0, 0.0]]))
    assert torch.allclose(rewards, torch.tensor([[-0.05, 0.0, 2.1], [-0.1, -1.0, 0.0]]))


def test_gae_by_hand_with_padding():
    rewards = torch.tensor([[0.0, 0.0, 1.0], [0.0, 2.0, 5.0]])  # the 5 is padding and must not count
    values = torch.tensor([[0.5, 0.4, 0.3], [1.0, 1.0, 9.0]])
    mask = torch.tensor([[1, 1, 1], [1, 1, 0]])
    advantages, returns = gae(rewards, values, mask, gamma=1.0, lam=0.5)
    # row 0: d2 = 1 - 0.3 = 0.7, A2 = 0.7; d1 = 0.3 - 0.4 = -0.1, A1 = -0.1 + 0.5 * 0.7 = 0.25;
    #        d0 = 0.4 - 0.5 = -0.1, A0 = -0.1 + 0.5 * 0.25 = 0.025
    # row 1: A1 = 2 + 0 - 1 = 1 (the episode ends there), A0 = (0 + 1 - 1) + 0.5 * 1 = 0.5
    assert torch.allclose(advantages, torch.tensor([[0.025, 0.25, 0.7], [0.5, 1.0, 0.0]]))
    assert torch.allclose(returns, torch.tensor([[0.525, 0.65, 1.0], [1.5, 2.0, 0.0]]))


def test_gae_discounts():
    advantages, returns = gae(torch.tensor([[1.0, 2.0]]), torch.zeros(1, 2), torch.ones(1, 2), gamma=0.9, lam=1.0)
    # A1 = 2; A0 = 1 + 0.9 * 0 - 0 + 0.9 * 1 * 2 = 2.8 (Monte Carlo return with zero values)
    assert torch.allclose(advantages, torch.tensor([[2.8, 2.0]]))
    assert torch.allclose(returns, advantages)


def test_whiten_ignores_padding():
    values = torch.tensor([[1.0, 2.0, 3.0, 100.0]])
    mask = torch.tensor([[1, 1, 1, 0]])
    # mean 2, variance (1 + 0 + 1) / 3 = 2/3 -> (v - 2) / sqrt(2/3)
    expected = torch.tensor([[-1.224745, 0.0, 1.224745, 0.0]])
    assert torch.allclose(whiten(values, mask), expected, atol=1e-5)
    assert torch.allclose(whiten(values, mask, shift_mean=False), (expected + 2) * mask, atol=1e-5)


def test_policy_loss_clips_by_hand():
    ratios = torch.tensor([[1.5, 0.5, 1.0, 0.5, 7.0]])
    old = torch.zeros(1, 5)
    advantages = torch.tensor([[1.0, 1.0, -2.0, -1.0, 3.0]])
    mask = torch.tensor([[1, 1, 1, 1, 0]])  # the last token is padding
    loss, stats = policy_loss(torch.log(ratios), old, advantages, mask, clip=0.2)
    # per token max(-A r, -A clip(r)): max(-1.5, -1.2) = -1.2 (clipped); max(-0.5, -0.8) = -0.5;
    # max(2, 2) = 2; max(0.5, 0.8) = 0.8 (clipped)  -> mean 0.275, clip fraction 2/4
    assert loss.item() == pytest.approx(0.275)
    assert stats["clip_fraction"] == pytest.approx(0.5)
    # k3: r - 1 - log r = 0.094535, 0.193147, 0, 0.193147 -> mean 0.120207
    assert stats["approx_kl"] == pytest.approx(0.120207, abs=1e-6)


def test_policy_loss_gradient_is_zero_where_clipped():
    logprobs = torch.log(torch.tensor([[1.5, 1.1]])).requires_grad_()
    loss, _ = policy_loss(logprobs, torch.zeros(1, 2), torch.ones(1, 2), torch.ones(1, 2), clip=0.2)
    loss.backward()
    # token 0 is clipped (no gradient); token 1: d/dlogp of -A * exp(logp) / 2 = -1.1 / 2
    assert torch.allclose(logprobs.grad, torch.tensor([[0.0, -0.55]]))


def test_value_loss_clips_by_hand():
    values = torch.tensor([[1.5, 0.9, 50.0]])
    old_values = torch.tensor([[1.0, 1.0, 0.0]])
    returns = torch.tensor([[2.0, 0.0, 0.0]])
    mask = torch.tensor([[1, 1, 0]])
    loss, stats = value_loss(values, old_values, returns, mask, clip=0.2)
    # token 0: clipped value 1.2 -> max((1.5-2)^2, (1.2-2)^2) = 0.64 (clip active); token 1: 0.81 both
    assert loss.item() == pytest.approx(0.5 * (0.64 + 0.81) / 2)
    assert stats["value_clip_fraction"] == pytest.approx(0.5)


def test_adaptive_kl_coef_moves_toward_the_target():
    # error = clip(6/4 - 1, -0.2, 0.2) = 0.2 -> 0.1 * (1 + 0.2 * 10 / 100) = 0.102
    assert adaptive_kl_coef(0.1, 6.0, 4.0, 100, 10) == pytest.approx(0.102)
    # error = 3.6/4 - 1 = -0.1 -> 0.1 * (1 - 0.1 * 10 / 100) = 0.099
    assert adaptive_kl_coef(0.1, 3.6, 4.0, 100, 10) == pytest.approx(0.099)



# ---- critic-free advantages. Two groups of three responses; the 9s and 7s are padding and must not count.
GROUP_REWARDS = torch.tensor([[0.5, 0.5, 9.0], [0.0, 0.0, 2.0], [3.0, 7.0, 7.0],    # returns 1, 2, 3
                              [1.0, -1.0, 0.0], [0.0, 0.0, 9.0], [0.0, 0.0, 6.0]])  # returns 0, 0, 6
GROUP_MASK = torch.tensor([[1, 1, 0], [1, 1, 1], [1, 0, 0], [1, 1, 1], [1, 1, 0], [1, 1, 1]])


def test_grpo_advantages_normalise_within_each_group_by_hand():
    advantages = grpo_advantages(GROUP_REWARDS, GROUP_MASK, group_size=3, eps=0.0)
    # group 1: mean 2, unbiased std sqrt((1 + 0 + 1) / 2) = 1 -> -1, 0, 1
    # group 2: mean 2, std sqrt((4 + 4 + 16) / 2) = sqrt(12) = 3.464102 -> -0.577350, -0.577350, 1.154701
    per_response = torch.tensor([-1.0, 0.0, 1.0, -0.577350, -0.577350, 1.154701])
    assert torch.allclose(advantages, per_response[:, None] * GROUP_MASK, atol=1e-6)  # on every real token only
    # eps keeps a group whose responses all score the same at 0 (no signal), not 0 / 0
    assert grpo_advantages(torch.ones(2, 2), torch.ones(2, 2), group_size=2).abs().max() == 0


def test_grpo_advantages_of_kl_penalised_rewards():
    """kl_in reward: the KL-penalised return goes into the group normalisation."""
    logprobs = torch.tensor([[-1.0, -2.0, -3.0], [-1.0, -1.0, 0.0]])
    ref_logprobs = torch.tensor([[-1.5, -2.0, -2.0], [-2.0, -1.0, 0.0]])
    mask = torch.tensor([[1, 1, 1], [1, 1, 0]])
    rewards, _ = kl_penalized_rewards(logprobs, ref_logprobs, mask, torch.tensor([1.0, 1.0]), 1.0)
    # equal scores, so the KL alone ranks them: returns 1 - (0.5 + 0 - 1) = 1.5 and 1 - 1 = 0;
    # mean 0.75, std |1.5 - 0| / sqrt(2) = 1.060660 -> +-0.707107
    advantages = grpo_advantages(rewards, mask, group_size=2, eps=0.0)
    assert torch.allclose(advantages, torch.tensor([[0.707107] * 3, [-0.707107, -0.707107, 0.0]]), atol=1e-6)


def test_rloo_advantages_subtract_the_others_mean_by_hand():
    advantages = rloo_advantages(GROUP_REWARDS, GROUP_MASK, group_size=3)
    # group 1: 1 - (2 + 3) / 2 = -1.5, 2 - (1 + 3) / 2 = 0, 3 - (1 + 2) / 2 = 1.5
    # group 2: 0 - (0 + 6) / 2 = -3 (twice), 6 - 0 = 6
    per_response = torch.tensor([-1.5, 0.0, 1.5, -3.0, -3.0, 6.0])
    assert torch.allclose(advantages, per_response[:, None] * GROUP_MASK)


def test_group_centered_subtracts_each_groups_mean():
    # groups (1, 2, 6) and (0, 0, 3): means 3 and 1
    centered = group_centered(torch.tensor([1.0, 2.0, 6.0, 0.0, 0.0, 3.0]), 3)
    assert centered.tolist() == [-2.0, -1.0, 3.0, -1.0, -1.0, 2.0]


def test_reinforce_pp_returns_to_go_then_whitened_by_hand():
    rewards = torch.tensor([[-0.05, 0.0, 2.1], [-0.1, -1.0, 5.0]])  # the 5 is padding
    mask = torch.tensor([[1, 1, 1], [1, 1, 0]])
    returns = returns_to_go(rewards, mask, gamma=0.5)
    # row 0: G2 = 2.1, G1 = 0 + 0.5 * 2.1 = 1.05, G0 = -0.05 + 0.5 * 1.05 = 0.475; row 1: G1 = -1, G0 = -0.6
    assert torch.allclose(returns, torch.tensor([[0.475, 1.05, 2.1], [-0.6, -1.0, 0.0]]))
    # over the 5 real tokens: mean 0.405, variance 6.278 / 5 = 1.2556, std 1.120535
    expected = torch.tensor([[0.062470, 0.575618, 1.512670], [-0.896893, -1.253866, 0.0]])
    assert torch.allclose(whiten(returns, mask), expected, atol=1e-5)


def test_k3_kl_by_hand():
    # d = ref - logp: -0.5 -> e^-0.5 + 0.5 - 1 = 0.106531; 1 -> e - 2 = 0.718282; 0 -> 0
    kl = k3_kl(torch.tensor([-1.0, -2.0, -3.0]), torch.tensor([-1.5, -1.0, -3.0]))
    assert torch.allclose(kl, torch.tensor([0.106531, 0.718282, 0.0]), atol=1e-6)

# Two pairs, beta 0.5. Pair 1: policy - reference log-prob on chosen (-5) - (-6) = 1, on rejected (-9) - (-8) = -1,
# so h = 2, beta h = 1. Pair 2: chosen (-4) - (-3.5) = -0.5, rejected (-3) - (-4) = 1, so h = -1.5, beta h = -0.75.
DPO_PAIRS = dict(policy_chosen=torch.tensor([-5.0, -4.0]), policy_rejected=torch.tensor([-9.0, -3.0]),
                 ref_chosen=torch.tensor([-6.0, -3.5]), ref_rejected=torch.tensor([-8.0, -4.0]), beta=0.5)


def test_dpo_sigmoid_loss_by_hand():
    # (log(1 + e^-1) + log(1 + e^0.75)) / 2 = (0.3132617 + 1.1368710) / 2
    loss, _ = dpo_loss(**DPO_PAIRS)
    assert loss.item() == pytest.approx(0.7250663, abs=1e-6)


def test_dpo_conservative_loss_by_hand():
    # eps 0.1: 0.9 log(1 + e^-x) + 0.1 log(1 + e^x) at x = 1: 0.4132617, at x = -0.75: 1.0618710
    loss, _ = dpo_loss(**DPO_PAIRS, label_smoothing=0.1)
    assert loss.item() == pytest.approx(0.7375663, abs=1e-6)


def test_ipo_loss_by_hand():
    # (h - 1/(2 beta))^2 = (2 - 1)^2 = 1 and (-1.5 - 1)^2 = 6.25
    loss, _ = dpo_loss(**DPO_PAIRS, loss_type="ipo")
    assert loss.item() == pytest.approx(3.625, abs=1e-6)


def test_dpo_implicit_rewards_accuracy_and_margin():
    # rewards beta (policy - reference): chosen [0.5, -0.25], rejected [-0.5, 0.5]; pair 2 is ordered wrong
    _, stats = dpo_loss(**DPO_PAIRS)
    assert stats["chosen_rewards"].tolist() == pytest.approx([0.5, -0.25])
    assert stats["rejected_rewards"].tolist() == pytest.approx([-0.5, 0.5])
    assert stats["accuracy"] == 0.5
    assert stats["margin"] == pytest.approx((1.0 - 0.75) / 2)
    with pytest.raises(ValueError, match="loss_type"):
        dpo_loss(**DPO_PAIRS, loss_type="hinge")
