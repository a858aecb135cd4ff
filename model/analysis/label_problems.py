"""Suspected wrong labels: cross-validated predictions that confidently disagree with the given label.

Confident learning (Northcutt, Jiang & Chuang, "Confident Learning: Estimating Uncertainty in Dataset
Labels", JAIR 2021), through ``cleanlab``: a classifier that never saw an image's label predicts it
(k-fold cross-validation), and a label the out-of-fold prediction gives a low probability is
suspect. The classifier is a logistic regression on the frozen ImageNet embeddings: cheap enough for
every image, and independent of the model being trained, so a label it doubts is not merely one our
own network got wrong.

Ranking: cleanlab's self-confidence label-quality score (the out-of-fold probability of the given
label), taken per head; an image's score is its worst head. ``flagged`` marks what cleanlab's
``find_label_issues`` (per-class confident thresholds) counts as an issue, which is robust to class
imbalance; the ranking orders everything for review.
"""

from __future__ import annotations

import logging
import warnings
from dataclasses import dataclass

import numpy as np
from cleanlab.filter import find_label_issues
from cleanlab.rank import get_label_quality_scores
from sklearn.exceptions import ConvergenceWarning
from sklearn.linear_model import LogisticRegression
from sklearn.model_selection import StratifiedKFold, cross_val_predict
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler
from threadpoolctl import threadpool_limits

from model.schema import LabelSchema

logger = logging.getLogger(__name__)

FOLDS = 5


@dataclass
class Suspects:
    """Per item (N rows; NaN / -1 where not ranked): worst head's quality, that head, the suggested class.

    ``quality[h]`` is the out-of-fold probability of head h's given label; ``probe_accuracy`` is the
    cross-validated accuracy of the linear probe per head (a floor for what a trained model should reach).
    """

    score: np.ndarray  # (N,) min over heads of the quality, NaN if not ranked
    worst_head: np.ndarray  # (N,) head index
    suggested: np.ndarray  # (N,) class index the probe prefers on the worst head
    flagged: np.ndarray  # (N,) bool, cleanlab counts it as a label issue on some head
    quality: np.ndarray  # (N, heads)
    probe_accuracy: dict[str, float]

    def ranking(self) -> np.ndarray:
        """Indices of ranked items, most suspect first."""
        ranked = np.flatnonzero(~np.isnan(self.score))
        return ranked[np.argsort(self.score[ranked], kind="stable")]


def out_of_fold_probs(
    features: np.ndarray, y: np.ndarray, n_classes: int, folds: int = FOLDS, seed: int = 0
) -> np.ndarray:
    """(N, n_classes) probabilities from k-fold cross-validation, so no image's own label informs its prediction.

    Classes with fewer members than folds reduce the folds (at least 2); columns of absent classes stay 0.
    """
    present, y_local = np.unique(y, return_inverse=True)
    out = np.zeros((len(y), n_classes))
    if present.size < 2:
        out[:, present] = 1.0
        return out
    k = int(max(2, min(folds, np.bincount(y_local).min())))
    clf = make_pipeline(StandardScaler(), LogisticRegression(max_iter=1000))
    # One BLAS thread: these fits are small, and on a busy machine threaded BLAS is many times slower.
    with threadpool_limits(1), warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        probs = cross_val_predict(
            clf, features, y_local, cv=StratifiedKFold(k, shuffle=True, random_state=seed), method="predict_proba"
        )
    out[:, present] = probs
    return out


def suspected_labels(
    schema: LabelSchema, embeddings: np.ndarray, labels: np.ndarray, usable: np.ndarray, seed: int = 0
) -> Suspects:
    """Rank the usable labeled items (``labels`` (N, heads), -1 = no label) by how doubtful their labels are."""
    n, n_heads = labels.shape
    quality = np.full((n, n_heads), np.nan)
    suggestion = np.full((n, n_heads), -1)
    flagged = np.zeros(n, dtype=bool)
    accuracy: dict[str, float] = {}
    features = _normalise(embeddings)
    for j, head in enumerate(schema.heads):
        rows = np.flatnonzero(usable & (labels[:, j] >= 0))
        y = labels[rows, j]
        if len(rows) < 4 or np.unique(y).size < 2:
            logger.info("suspected labels: head %s has too few labeled images or classes to cross-validate", head.name)
            continue
        probs = out_of_fold_probs(features[rows], y, len(head.classes), seed=seed)
        present = np.unique(y)
        y_local = np.searchsorted(present, y)
        quality[rows, j] = get_label_quality_scores(y_local, probs[:, present], method="self_confidence")
        suggestion[rows, j] = probs.argmax(axis=1)
        if present.size >= 2 and np.bincount(y_local).min() >= 2:
            flagged[rows] |= find_label_issues(y_local, probs[:, present])
        accuracy[head.name] = float((probs.argmax(axis=1) == y).mean())
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # all-NaN rows: items not ranked
        score = np.nanmin(quality, axis=1)
    worst = np.where(np.isnan(quality).all(axis=1), -1, np.argmin(np.nan_to_num(quality, nan=np.inf), axis=1))
    suggested = np.where(worst >= 0, suggestion[np.arange(n), np.maximum(worst, 0)], -1)
    return Suspects(
        score=score, worst_head=worst, suggested=suggested, flagged=flagged, quality=quality, probe_accuracy=accuracy
    )


def _normalise(embeddings: np.ndarray) -> np.ndarray:
    """L2-normalised rows (NaN rows, i.e. unreadable images, become zeros; they are never selected)."""
    x = np.nan_to_num(embeddings.astype(np.float64))
    norms = np.linalg.norm(x, axis=1, keepdims=True)
    return x / np.maximum(norms, 1e-12)
