"""Losses: the per-sample classification loss that is the loss module's target, and its ranking loss."""

from __future__ import annotations

import torch
import torch.nn.functional as F


def per_sample_loss(
    logits: dict[str, torch.Tensor], targets: torch.Tensor, weights: dict[str, torch.Tensor] | None = None
) -> torch.Tensor:
    """Sum over heads of each sample's cross-entropy; ``targets`` is (B, heads) in head order.

    Without ``weights`` this is the loss module's target (Yoo & Kweon 2019: the unweighted target
    loss); with class weights it is the classification objective.
    """
    total = torch.zeros(targets.shape[0], device=targets.device)
    for j, (name, lg) in enumerate(logits.items()):
        w = None if weights is None else weights[name]
        total = total + F.cross_entropy(lg, targets[:, j], weight=w, reduction="none")
    return total


def ranking_loss(predicted: torch.Tensor, target: torch.Tensor, margin: float = 1.0) -> torch.Tensor:
    """Pairwise loss-prediction loss of Yoo & Kweon (CVPR 2019), Eq. 2.

    The batch is split into pairs (i, B-1-i); each pair costs
    ``max(0, -sign(l_i - l_j) * (p_i - p_j) + margin)``, averaged over pairs. Comparing pairs instead of
    regressing the loss ignores the loss's overall scale, which shrinks as training goes on.
    """
    half = predicted.shape[0] // 2
    if half == 0:
        return predicted.sum() * 0.0
    p_i, p_j = predicted[:half], predicted.flip(0)[:half]
    l_i, l_j = target[:half], target.flip(0)[:half]
    return torch.clamp(-torch.sign(l_i - l_j) * (p_i - p_j) + margin, min=0).mean()
