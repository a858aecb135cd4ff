"""Outliers: images far from every class in embedding space, or extreme in light and texture.

Embedding score: per head, the cosine distance of an image to the nearest class centroid (centroids
of the labeled images of each class, on L2-normalised ImageNet embeddings), as a robust z-score
among the images nearest that same class (median and MAD, so the outliers themselves do not set
the scale); an image's score is its largest over the heads. "Nearest class" rather than "its own
class" on purpose: an image far from its own class but close to another is a label suspect (see
:mod:`.label_problems`), an image far from all classes is something the label set does not describe.
A density score (distance to the k nearest neighbours) was left out: real outliers come in groups
(blank frames, test cards, screenshots), and a group is dense.

Statistics score: the largest robust |z| of brightness, contrast, saturation and sharpness.
The outlier score is the larger of the two: both are in units of robust standard deviations.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from model.analysis.image_stats import APPEARANCE, ImageStats

_MAD_TO_SIGMA = 1.4826


@dataclass
class OutlierScores:
    """Per item (NaN for unreadable ones): the embedding and statistics scores, their max, the statistic behind it."""

    embedding: np.ndarray
    statistics: np.ndarray
    statistic: list[str | None]  # which appearance statistic is most extreme, and in which direction

    @property
    def score(self) -> np.ndarray:
        return np.fmax(self.embedding, self.statistics)

    def ranking(self) -> np.ndarray:
        s = self.score
        ranked = np.flatnonzero(~np.isnan(s))
        return ranked[np.argsort(-s[ranked], kind="stable")]


def robust_z(values: np.ndarray, reference: np.ndarray | None = None) -> np.ndarray:
    """(x - median) / (1.4826 MAD) over ``reference`` (default ``values``); NaN-aware, scale floored."""
    ref = values if reference is None else reference
    ref = ref[~np.isnan(ref)]
    if ref.size == 0:
        return np.full(values.shape, np.nan)
    med = np.median(ref)
    scale = _MAD_TO_SIGMA * np.median(np.abs(ref - med))
    floor = 1e-3 * max(abs(float(med)), 1e-3)
    return (values - med) / max(scale, floor)


def embedding_scores(embeddings: np.ndarray, labels: np.ndarray, usable: np.ndarray) -> np.ndarray:
    """Max over heads of the robust z of the distance to the nearest class centroid; NaN where not usable."""
    unit = embeddings / np.maximum(np.linalg.norm(embeddings, axis=1, keepdims=True), 1e-12)
    usable = usable & ~np.isnan(unit).any(axis=1)
    if not usable.any():
        return np.full(len(unit), np.nan)
    per_head = []
    for j in range(labels.shape[1]):
        centroids = [
            unit[usable & (labels[:, j] == c)].mean(axis=0)
            for c in np.unique(labels[usable, j])
            if c >= 0 and (usable & (labels[:, j] == c)).sum() >= 2
        ]
        if not centroids:  # no labels on this head: one centroid of everything
            centroids = [unit[usable].mean(axis=0)]
        cen = np.array(centroids)
        cen /= np.maximum(np.linalg.norm(cen, axis=1, keepdims=True), 1e-12)
        distance = 1.0 - np.nan_to_num(unit) @ cen.T
        nearest, dmin = distance.argmin(axis=1), distance.min(axis=1)
        z = np.full(len(unit), np.nan)
        for c in range(len(cen)):
            members = usable & (nearest == c)
            z[members] = robust_z(dmin[members])
        per_head.append(z)
    return np.fmax.reduce(np.array(per_head), axis=0)  # fmax: a head without a score (NaN) does not hide the others


def statistics_scores(stats: ImageStats) -> tuple[np.ndarray, list[str | None]]:
    """Max robust |z| over the appearance statistics, and which one (e.g. "sharpness high")."""
    z = np.array([robust_z(stats.column(name)) for name in APPEARANCE])  # (stats, N)
    absz = np.abs(z)
    with np.errstate(invalid="ignore"):
        best = np.nanargmax(np.where(np.isnan(absz), -1, absz), axis=0)
    score = absz[best, np.arange(absz.shape[1])]
    which = [
        None if np.isnan(score[i]) else f"{APPEARANCE[b]} {'high' if z[b, i] > 0 else 'low'}"
        for i, b in enumerate(best)
    ]
    return score, which


def outlier_scores(embeddings: np.ndarray, labels: np.ndarray, usable: np.ndarray, stats: ImageStats) -> OutlierScores:
    emb = embedding_scores(embeddings, labels, usable)
    st, which = statistics_scores(stats)
    st = np.where(usable, st, np.nan)
    return OutlierScores(embedding=np.where(usable, emb, np.nan), statistics=st, statistic=which)
