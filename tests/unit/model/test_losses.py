"""The classification target of the loss module and its pairwise ranking loss (Yoo & Kweon 2019, Eq. 2)."""

from __future__ import annotations

import math

import pytest
import torch

from model.nn.losses import per_sample_loss, ranking_loss


def test_ranking_loss_hand_computed() -> None:
    # pairs are (0, 3) and (1, 2)
    predicted = torch.tensor([0.2, 1.5, 0.5, 0.9])
    target = torch.tensor([3.0, 0.1, 2.0, 1.0])
    # pair (0,3): l0 > l3 -> sign +1 -> max(0, -(0.2 - 0.9) + 1) = 1.7
    # pair (1,2): l1 < l2 -> sign -1 -> max(0, +(1.5 - 0.5) + 1) = 2.0
    assert ranking_loss(predicted, target).item() == pytest.approx((1.7 + 2.0) / 2)


def test_ranking_loss_zero_when_order_right_by_more_than_margin() -> None:
    predicted = torch.tensor([5.0, -1.0, 0.0, 2.0])
    target = torch.tensor([4.0, 0.0, 1.0, 3.0])
    # (0,3): +1 * (5-2) = 3 > margin; (1,2): -1 * (-1-0) = 1 = margin -> both cost 0
    assert ranking_loss(predicted, target).item() == 0.0


def test_ranking_loss_margin_is_configurable() -> None:
    predicted = torch.tensor([1.0, 0.0])
    target = torch.tensor([2.0, 1.0])  # right order, predicted gap 1
    assert ranking_loss(predicted, target, margin=1.0).item() == 0.0
    assert ranking_loss(predicted, target, margin=3.0).item() == pytest.approx(2.0)
    assert ranking_loss(predicted, target, margin=0.25).item() == 0.0


def test_ranking_loss_odd_batch_leaves_middle_out() -> None:
    predicted = torch.tensor([0.0, 0.0, 100.0, 0.3, 0.0])
    target = torch.tensor([1.0, 2.0, -50.0, 1.0, 0.0])
    # pairs (0,4): +1 -> max(0, -(0-0)+1) = 1;  (1,3): +1 -> max(0, -(0-0.3)+1) = 1.3; index 2 unused
    assert ranking_loss(predicted, target).item() == pytest.approx((1.0 + 1.3) / 2)


def test_ranking_loss_single_sample_is_zero_with_gradient() -> None:
    predicted = torch.tensor([0.7], requires_grad=True)
    loss = ranking_loss(predicted, torch.tensor([1.0]))
    loss.backward()
    assert loss.item() == 0.0
    assert predicted.grad is not None


def test_ranking_loss_gradient_pushes_pair_apart_in_the_right_direction() -> None:
    predicted = torch.tensor([0.0, 0.0], requires_grad=True)
    ranking_loss(predicted, torch.tensor([2.0, 1.0])).backward()
    # sample 0 has the larger true loss: descending the gradient raises its prediction, lowers the other
    assert predicted.grad[0] < 0 < predicted.grad[1]


def _cross_entropy_by_hand(logits: list[float], target: int) -> float:
    return -logits[target] + math.log(sum(math.exp(v) for v in logits))


def test_per_sample_loss_is_sum_of_heads_cross_entropies() -> None:
    tod = [[2.0, 0.5, -1.0], [0.0, 0.0, 0.0]]
    wx = [[0.1, 3.0], [-2.0, 1.0]]
    targets = torch.tensor([[0, 1], [2, 0]])
    got = per_sample_loss({"timeofday": torch.tensor(tod), "weather": torch.tensor(wx)}, targets)
    expected = [
        _cross_entropy_by_hand(tod[0], 0) + _cross_entropy_by_hand(wx[0], 1),
        _cross_entropy_by_hand(tod[1], 2) + _cross_entropy_by_hand(wx[1], 0),
    ]
    assert got.shape == (2,)
    assert got.tolist() == pytest.approx(expected, rel=1e-6)


def test_per_sample_loss_class_weights_scale_each_sample_by_its_class() -> None:
    logits = {"h": torch.tensor([[1.0, 0.0], [1.0, 0.0]])}
    targets = torch.tensor([[0], [1]])
    plain = per_sample_loss(logits, targets)
    weighted = per_sample_loss(logits, targets, {"h": torch.tensor([0.5, 4.0])})
    assert weighted.tolist() == pytest.approx([0.5 * plain[0].item(), 4.0 * plain[1].item()])
