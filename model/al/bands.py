"""The three bands of an unlabeled pool, and random audit samples.

- manual: chosen by a selection strategy; people label these first.
- automatic: predicted loss at or under a certified threshold (model/al/certify.py); pre-labels that
  may be accepted in bulk.
- deferred: everything else waits for a better model in the next cycle.
"""

from __future__ import annotations

import numpy as np
from numpy.typing import ArrayLike

MANUAL, AUTOMATIC, DEFERRED = "manual", "automatic", "deferred"


def assign_bands(predicted_loss: ArrayLike, manual_indices: ArrayLike, threshold: float | None) -> np.ndarray:
    """One band name per pool image. Manual wins over automatic; no threshold means nothing automatic."""
    loss = np.asarray(predicted_loss, dtype=np.float64)
    if loss.ndim != 1:
        raise ValueError(f"predicted_loss must be 1-D, got shape {loss.shape}")
    manual = np.asarray(manual_indices, dtype=np.int64).reshape(-1)
    if manual.size and (manual.min() < 0 or manual.max() >= loss.size):
        raise ValueError(f"manual_indices must lie in [0, {loss.size}), got min {manual.min()}, max {manual.max()}")
    bands = np.full(loss.size, DEFERRED, dtype=object)  # a fixed-width str dtype would truncate
    if threshold is not None:
        bands[loss <= threshold] = AUTOMATIC
    bands[manual] = MANUAL
    return bands


def draw_audit_sample(candidate_indices: ArrayLike, size: int, rng: np.random.Generator) -> np.ndarray:
    """A uniform random sample without replacement of ``size`` candidates (all of them if fewer).

    Only uniform samples are valid calibration labels for model/al/certify.py. A sample drawn from the
    automatic band checks that band, but it over-represents low losses: do not feed it to
    certify_threshold for looser thresholds or for another model's losses.
    """
    if size < 0:
        raise ValueError(f"size must be >= 0, got {size}")
    candidates = np.asarray(candidate_indices, dtype=np.int64).reshape(-1)
    return rng.choice(candidates, size=min(size, candidates.size), replace=False)
