"""Class imbalance: undersampling of majority classes and median-frequency class weights.

Both act per head on a multi-head label table (one row per image, one column per head, values are
class indices). Real weather data is strongly skewed (BDD100K: 7% dusk, under 8% snow or rain), so the
trainer applies both, plus augmentation, as the seed article asks.
"""

from __future__ import annotations

import numpy as np


def class_counts(labels: np.ndarray, n_classes: int) -> np.ndarray:
    return np.bincount(labels, minlength=n_classes)


def undersample(
    labels: np.ndarray, n_classes: list[int], max_ratio: float = 10.0, rng: np.random.Generator | None = None
) -> np.ndarray:
    """Indices of rows to keep so that no class exceeds ``max_ratio`` times the rarest present class of its head.

    ``labels`` is (N, heads). A row that carries a rare class of ANY head is protected: dropping a
    majority "day" image that is also one of the few "snow" images would trade one imbalance for another.
    "Rare" means a class at or under the cap of a head that has some class over it. Classes absent from the data are
    ignored.
    """
    rng = rng or np.random.default_rng(0)
    n = labels.shape[0]
    keep = np.ones(n, dtype=bool)
    caps, over = [], []
    for j, k in enumerate(n_classes):
        counts = class_counts(labels[:, j], k)
        present = counts[counts > 0]
        cap = int(np.floor(present.min() * max_ratio)) if present.size else 0
        caps.append(cap)
        over.append({c for c in range(k) if counts[c] > cap})
    for j in range(labels.shape[1]):
        for c in over[j]:
            rows = np.flatnonzero(keep & (labels[:, j] == c))
            excess = rows.size - caps[j]
            if excess <= 0:
                continue
            droppable = rows[~_carries_rare_class_of_other_head(labels, rows, j, over)]
            drop = rng.permutation(droppable)[: min(excess, droppable.size)]
            keep[drop] = False
    return np.flatnonzero(keep)


def _carries_rare_class_of_other_head(
    labels: np.ndarray, rows: np.ndarray, head: int, over: list[set[int]]
) -> np.ndarray:
    """Whether each row carries a rare class of a head OTHER than ``head``.

    A head without any class over its cap is balanced and has no rare class: protecting its rows
    would protect every row and undersampling would never act.
    """
    mask = np.zeros(rows.size, dtype=bool)
    for j in range(labels.shape[1]):
        if j != head and over[j]:
            mask |= ~np.isin(labels[rows, j], list(over[j]))
    return mask


def median_frequency_weights(labels: np.ndarray, n_classes: int) -> np.ndarray:
    """Median-frequency balancing (Eigen & Fergus, ICCV 2015): ``w_c = median_freq / freq_c``.

    Frequencies are over the classes present; an absent class gets weight 1 (it contributes no loss).
    """
    counts = class_counts(labels, n_classes).astype(float)
    freq = counts / max(counts.sum(), 1.0)
    present = freq > 0
    weights = np.ones(n_classes)
    if present.any():
        weights[present] = np.median(freq[present]) / freq[present]
    return weights
