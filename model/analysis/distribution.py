"""Class distribution per head and jointly, imbalance ratios, and what the trainer would do about them.

The trainer (``model.training.trainer.train``) undersamples every head to ``max_ratio`` times its rarest
class and weights the rest by median frequency; showing the counts after undersampling and the
weights next to the raw counts tells a lead how much of the labeled data a training run really sees.
The trainer computes both on its training split; here they are computed on all fully labeled items,
which differs from a run only by the validation share.
"""

from __future__ import annotations

from itertools import combinations
from typing import Any

import numpy as np

from model.data.imbalance import class_counts, median_frequency_weights, undersample
from model.schema import LabelSchema


def imbalance_ratio(counts: np.ndarray) -> float | None:
    """Largest over smallest class count among the classes present; None when fewer than two are present."""
    present = counts[counts > 0]
    return float(present.max() / present.min()) if present.size >= 2 else None


def class_distribution(schema: LabelSchema, labels: np.ndarray, max_ratio: float, seed: int = 0) -> dict[str, Any]:
    """``labels``: (N, heads) class indices, -1 where a head has no usable label.

    Returns per head the counts, shares, imbalance ratio and absent classes; per pair of heads the
    joint count table; and the trainer's view: counts after undersampling and the class weights.
    """
    heads: dict[str, Any] = {}
    for j, head in enumerate(schema.heads):
        y = labels[:, j][labels[:, j] >= 0]
        counts = class_counts(y, len(head.classes))
        heads[head.name] = {
            "counts": dict(zip(head.classes, counts.tolist())),
            "shares": dict(zip(head.classes, (counts / max(counts.sum(), 1)).round(4).tolist())),
            "imbalance_ratio": imbalance_ratio(counts),
            "absent": [c for c, n in zip(head.classes, counts) if n == 0],
            "unlabeled": int((labels[:, j] < 0).sum()),
        }
    joint = []
    for a, b in combinations(range(len(schema.heads)), 2):
        both = (labels[:, a] >= 0) & (labels[:, b] >= 0)
        table = np.zeros((len(schema.heads[a].classes), len(schema.heads[b].classes)), dtype=np.int64)
        np.add.at(table, (labels[both, a], labels[both, b]), 1)
        joint.append({"rows": schema.heads[a].name, "columns": schema.heads[b].name, "table": table.tolist()})
    return {"heads": heads, "joint": joint, "trainer": trainer_view(schema, labels, max_ratio, seed)}


def trainer_view(schema: LabelSchema, labels: np.ndarray, max_ratio: float, seed: int = 0) -> dict[str, Any]:
    """Counts after the trainer's undersampling to ``max_ratio`` and its median-frequency class weights."""
    full = labels[(labels >= 0).all(axis=1)]
    n_classes = [len(h.classes) for h in schema.heads]
    kept = full[undersample(full, n_classes, max_ratio, np.random.default_rng(seed))] if len(full) else full
    out: dict[str, Any] = {
        "max_ratio": max_ratio,
        "n_fully_labeled": int(len(full)),
        "n_kept": int(len(kept)),
        "heads": {},
    }
    for j, head in enumerate(schema.heads):
        counts = class_counts(kept[:, j], n_classes[j]) if len(kept) else np.zeros(n_classes[j], dtype=np.int64)
        weights = median_frequency_weights(kept[:, j], n_classes[j]) if len(kept) else np.ones(n_classes[j])
        out["heads"][head.name] = {
            "kept": dict(zip(head.classes, counts.tolist())),
            "class_weights": dict(zip(head.classes, [round(float(w), 4) for w in weights])),
        }
    return out
