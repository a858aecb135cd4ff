"""Batched inference: per image, each head's probabilities, the predicted loss, and an embedding.

Decoding runs in DataLoader worker processes so that reading and resizing the next batch overlaps the
forward pass of this one; images that cannot be read are reported with their reason and skipped.
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
from torch.utils.data import DataLoader
from tqdm.auto import tqdm

from model.data.examples import Example, ImageDataset, collate
from model.data.transforms import eval_transform
from model.nn.feature_cache import CachedFeatures
from model.nn.network import MultiHeadNet, forward_batch
from model.progress import Report, silent
from model.schema import LabelSchema

if TYPE_CHECKING:
    from model.data.decoded import DecodedImages

logger = logging.getLogger(__name__)


@dataclass
class ScoreResult:
    """Scores of the images that could be read, in input order; ``failures`` holds (key, reason) of the rest."""

    schema: LabelSchema
    keys: list[str]
    probs: dict[str, np.ndarray]
    predicted_loss: np.ndarray
    embeddings: np.ndarray
    targets: np.ndarray  # (N, heads) class indices, -1 where unlabeled
    failures: list[tuple[str, str]] = field(default_factory=list)

    def __len__(self) -> int:
        return len(self.keys)

    def predicted_indices(self) -> dict[str, np.ndarray]:
        return {h: p.argmax(axis=1) for h, p in self.probs.items()}

    def labels_of(self, i: int) -> dict[str, str]:
        """Head name -> predicted class value of the i-th image."""
        return {h.name: h.classes[int(self.probs[h.name][i].argmax())] for h in self.schema.heads}

    def true_loss(self) -> np.ndarray:
        """Sum over heads of the cross-entropy against ``targets``: the quantity the loss module predicts."""
        total = np.zeros(len(self.keys))
        for j, h in enumerate(self.schema.head_names):
            p = self.probs[h][np.arange(len(self.keys)), self.targets[:, j]]
            total += -np.log(np.clip(p, 1e-12, 1.0))
        return total

    def all_correct(self) -> np.ndarray:
        """Whether every head's prediction equals the target, per image."""
        pred = np.stack([self.probs[h].argmax(axis=1) for h in self.schema.head_names], axis=1)
        return (pred == self.targets).all(axis=1)

    def subset(self, idx: np.ndarray) -> ScoreResult:
        idx = np.asarray(idx, dtype=np.int64)
        return ScoreResult(
            self.schema,
            [self.keys[i] for i in idx],
            {h: p[idx] for h, p in self.probs.items()},
            self.predicted_loss[idx],
            self.embeddings[idx],
            self.targets[idx],
            [],
        )


def default_workers() -> int:
    """DataLoader workers: none on 2 cores or fewer, else one per core beyond two, at most 2.

    torch's intra-op threads already use every core, and reading plus draft-mode decoding plus resizing
    a 640x360 JPEG costs ~3.6 ms of CPU against ~36 ms for the forward pass at 160 px. On 2 cores a
    worker only takes a core from the forward pass: benchmarks/bench_scoring.py measured 61 img/s with
    no worker, 49 with one and 45 with two (2 torch threads).
    """
    return max(0, min(2, (os.cpu_count() or 1) - 2))


def inference_loader(
    examples: list[Example],
    image_size: int,
    mean: tuple[float, ...],
    std: tuple[float, ...],
    batch_size: int = 32,
    workers: int | None = None,
    decoded: DecodedImages | None = None,
    persistent: bool = False,
) -> DataLoader:
    """The DataLoader :func:`run_inference` reads ``examples`` through.

    ``persistent`` keeps its worker processes alive between passes, for a set scored again and again
    (the validation split after every epoch); ``decoded``: images already decoded at ``image_size``
    (model.data.decoded), taken from there.
    """
    workers = default_workers() if workers is None else workers
    if len(examples) <= 2 * batch_size:
        workers = 0  # starting worker processes costs more than decoding a couple of batches
    return DataLoader(
        ImageDataset(examples, eval_transform(mean, std), image_size, decoded),
        batch_size=batch_size,
        shuffle=False,
        num_workers=workers,
        collate_fn=collate,
        persistent_workers=persistent and workers > 0,
        prefetch_factor=4 if workers else None,
    )


def run_inference(
    model: MultiHeadNet,
    loader: DataLoader,
    progress: bool = False,
    desc: str = "scoring",
    report: Report = silent,
) -> ScoreResult:
    """Score the examples of ``loader`` (an :func:`inference_loader` or a FeatureCache.loader) in eval mode.

    Unreadable images go to ``failures``. A persistent loader can be passed again and again. ``report``
    hears ``("scoring", images done, images)`` after every batch (model.progress).
    """
    dataset = loader.dataset
    assert isinstance(dataset, (ImageDataset, CachedFeatures))  # an inference_loader's, or the feature cache's
    examples: list[Example] = dataset.examples
    schema = model.schema
    probs: dict[str, list[np.ndarray]] = {h: [] for h in schema.head_names}
    losses, embs, idxs, targets = [], [], [], []
    failures: list[tuple[str, str]] = []
    was_training = model.training
    if was_training:  # switching walks every module: ~1 ms, a tenth of a one-image forward (/predict)
        model.eval()
    done = 0
    with torch.inference_mode():
        for batch in tqdm(loader, desc=desc, unit="batch", disable=not progress, leave=False):
            done += len(batch["index"]) + len(batch["failures"])
            report("scoring", done, len(examples))
            failures.extend((examples[i].key, reason) for i, reason in batch["failures"])
            if "image" not in batch:
                continue
            out = forward_batch(model, batch)
            for h in schema.head_names:
                probs[h].append(out.logits[h].softmax(dim=1).float().cpu().numpy())
            losses.append(out.predicted_loss.float().cpu().numpy())
            embs.append(out.embedding.float().cpu().numpy())
            idxs.append(batch["index"].numpy())
            targets.append(batch["labels"].numpy())
    if was_training:
        model.train()
    for key, reason in failures:
        logger.warning("skipped %s: %s", key, reason)
    n_heads = len(schema.heads)
    order = np.concatenate(idxs) if idxs else np.zeros(0, dtype=np.int64)
    return ScoreResult(
        schema=schema,
        keys=[examples[i].key for i in order],
        probs={h: _cat(v, (0, len(schema.head(h).classes))) for h, v in probs.items()},
        predicted_loss=_cat(losses, (0,)),
        embeddings=_cat(embs, (0, model.backbone.embedding_dim)),
        targets=_cat(targets, (0, n_heads)).astype(np.int64),
        failures=failures,
    )


def _cat(parts: list[np.ndarray], empty_shape: tuple[int, ...]) -> np.ndarray:
    return np.concatenate(parts) if parts else np.zeros(empty_shape, dtype=np.float32)


def score_rows(result: ScoreResult) -> list[dict[str, Any]]:
    """One JSON-ready dict per scored image: ``image``, per head ``label`` and ``probs``, ``predicted_loss``."""
    rows = []
    for i, key in enumerate(result.keys):
        row: dict[str, Any] = {"image": key}
        for h in result.schema.heads:
            p = result.probs[h.name][i]
            row[h.name] = {
                "label": h.classes[int(p.argmax())],
                "probs": {c: round(float(v), 6) for c, v in zip(h.classes, p)},
            }
        row["predicted_loss"] = float(result.predicted_loss[i])
        rows.append(row)
    return rows
