"""The multi-head classifier with its loss prediction module.

One linear head per ``<Choices>`` reads the pooled last stage. The loss prediction module follows
Yoo & Kweon, "Learning Loss for Active Learning" (CVPR 2019), Fig. 3: for each of the four backbone
stages, global average pooling, Linear(C, 128), ReLU; the four 128-d vectors are concatenated and
Linear(512, 1) gives the predicted loss of the sample.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from model.nn.backbones import Backbone
from model.schema import LabelSchema


class LossPredictionModule(nn.Module):
    """Predicts the classifier's loss of each sample from the four stage feature maps."""

    def __init__(self, stage_channels: tuple[int, ...], hidden: int = 128) -> None:
        super().__init__()
        self.fcs = nn.ModuleList(nn.Linear(c, hidden) for c in stage_channels)
        self.out = nn.Linear(hidden * len(stage_channels), 1)

    def forward(self, pooled: list[torch.Tensor]) -> torch.Tensor:
        """``pooled``: each stage's feature map after global average pooling, (batch, channels) each."""
        hidden = [torch.relu(fc(f)) for fc, f in zip(self.fcs, pooled)]
        return self.out(torch.cat(hidden, dim=1)).squeeze(1)


@dataclass
class NetOutput:
    """What one forward pass gives: logits per head, the predicted loss, and the embedding."""

    logits: dict[str, torch.Tensor]
    predicted_loss: torch.Tensor
    embedding: torch.Tensor


class MultiHeadNet(nn.Module):
    """Backbone + one linear head per label head + the loss prediction module."""

    def __init__(self, backbone: Backbone, schema: LabelSchema, dropout: float = 0.2) -> None:
        super().__init__()
        backbone.drop_imagenet_classifier()
        self.backbone = backbone
        self.schema = schema
        self.dropout = nn.Dropout(dropout)
        self.heads = nn.ModuleDict({h.name: nn.Linear(backbone.embedding_dim, len(h.classes)) for h in schema.heads})
        self.loss_module = LossPredictionModule(backbone.stage_channels)

    def forward(
        self,
        x: torch.Tensor,
        detach_features: bool = False,
        start: int = 0,
        pooled: torch.Tensor | None = None,
    ) -> NetOutput:
        """The image ``x``, or with ``start`` > 0 the frozen part's output that the feature cache kept.

        ``pooled`` then holds the pooled feature maps of the stages before ``start``, concatenated
        (the loss module reads every stage). ``detach_features`` cuts the module's gradient into the
        backbone (the paper does so late in training).
        """
        feats, embedding = self.backbone(x, start)
        stage_means = [f.mean(dim=(2, 3)) for f in feats]
        if detach_features:
            stage_means = [f.detach() for f in stage_means]
        if start:
            if pooled is None:
                raise ValueError(f"starting at stage group {start} needs the pooled features of the stages before it")
            stage_means = [*pooled.split(list(self.backbone.stage_channels[:start]), dim=1), *stage_means]
        z = self.dropout(embedding)
        logits = {name: head(z) for name, head in self.heads.items()}
        return NetOutput(logits=logits, predicted_loss=self.loss_module(stage_means), embedding=embedding)

    def set_trainable_stages(self, n: int) -> None:
        """Train the last ``n`` of the four backbone stage groups (0: heads and loss module only; 4: all).

        Frozen groups also keep their BatchNorm statistics: with few labels, updating them from small
        batches would undo the pretrained features the frozen weights rely on.
        """
        if not 0 <= n <= 4:
            raise ValueError(f"trainable stages must be 0..4, got {n}")
        groups = self.backbone.stage_groups()
        for p in self.backbone.parameters():
            p.requires_grad = n == 4  # stem-only parameters outside the groups follow "all"
        self._frozen = groups[: 4 - n]
        for i, g in enumerate(groups):
            for p in g.parameters():
                p.requires_grad = i >= 4 - n
        self.train(self.training)

    def train(self, mode: bool = True) -> MultiHeadNet:
        super().train(mode)
        for g in getattr(self, "_frozen", []):
            g.eval()
        return self


def forward_batch(net: MultiHeadNet, batch: dict[str, Any], detach_features: bool = False) -> NetOutput:
    """``net`` on a collated batch (model.data.examples.collate): images, or cached features with ``start``."""
    device = next(net.parameters()).device
    pooled = batch.get("pooled")
    return net(
        batch["image"].to(device, non_blocking=True),
        detach_features=detach_features,
        start=batch.get("start", 0),
        pooled=None if pooled is None else pooled.to(device, non_blocking=True),
    )
