import math

import pytest
import torch

from chatforge.losses import IGNORE_INDEX, masked_mean, pairwise_accuracy, ranking_loss, token_cross_entropy


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
