"""Image embeddings for analysis: pooled ImageNet features, computed by the scoring pipeline itself.

Duplicates, outliers and suspected labels are judged in a feature space that no label has shaped:
the pooled last stage of an ImageNet ``efficientnet_lite0``. The pass runs :func:`model.training.scoring.run_inference`
(same DataLoader, decoding workers and eval transform as ``weather-al score``) on a network whose
heads are untrained; only the embedding is read, so the heads' and loss module's outputs are ignored
(they cost well under a percent of the forward pass). 128 px is enough for scene-level features and
about 1.6x cheaper than the training size of 160 px.
"""

from __future__ import annotations

import logging

import numpy as np

from model.analysis.inputs import Item
from model.nn.backbones import build_backbone
from model.nn.network import MultiHeadNet
from model.schema import LabelSchema
from model.training.scoring import inference_loader, run_inference

logger = logging.getLogger(__name__)

EMBEDDING_SIZE = 128
EMBEDDING_BACKBONE = "efficientnet_lite0"


def embed(
    items: list[Item],
    schema: LabelSchema,
    indices: np.ndarray,
    image_size: int = EMBEDDING_SIZE,
    backbone: str = EMBEDDING_BACKBONE,
    batch_size: int = 64,
    workers: int | None = None,
    progress: bool = False,
) -> tuple[np.ndarray, dict[int, str]]:
    """(len(items), D) float32 embeddings, NaN rows for images that could not be read, and {index: reason} of those.

    Only ``indices`` are decoded (the caller skips the images the statistics pass already found unreadable).
    """
    net = MultiHeadNet(build_backbone(backbone, weights="imagenet"), schema)
    examples = [items[i].example() for i in indices]
    loader = inference_loader(
        examples, image_size, net.backbone.mean, net.backbone.std, batch_size=batch_size, workers=workers
    )
    result = run_inference(net, loader, progress=progress, desc="embedding")
    out = np.full((len(items), net.backbone.embedding_dim), np.nan, dtype=np.float32)
    position = {items[i].key: i for i in indices}
    out[[position[k] for k in result.keys]] = result.embeddings
    return out, {position[k]: reason for k, reason in result.failures}
