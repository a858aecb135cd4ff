"""P(all heads right | predicted loss), and the Label Studio score derived from it.

Isotonic regression turns a score into a probability with one assumption only: the probability of
being right does not increase with predicted loss (Zadrozny & Elkan, "Transforming classifier scores
into accurate multiclass probability estimates", KDD 2002). Fit it on calibration labels (chosen
independently of the model's scores, see model/al/certify.py) to estimate the accuracy of any band
without ground truth.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
from numpy.typing import ArrayLike
from scipy.special import expit
from sklearn.isotonic import IsotonicRegression

TIE_BREAK_WEIGHT = 1e-6


def _finite_1d(values: ArrayLike, what: str) -> np.ndarray:
    array = np.asarray(values, dtype=np.float64)
    if array.ndim != 1:
        raise ValueError(f"{what} must be 1-D, got shape {array.shape}")
    if not np.all(np.isfinite(array)):
        raise ValueError(f"{what} contains NaN or infinity; rescore those images")
    return array


class CorrectnessCalibrator:
    """Non-increasing isotonic fit of P(all heads right) against predicted loss.

    Predictions interpolate linearly between the fitted breakpoints and are constant beyond them,
    exactly as sklearn's IsotonicRegression(out_of_bounds="clip") does; only the breakpoints are kept,
    so the calibrator round-trips through JSON.
    """

    def __init__(self, x_thresholds: ArrayLike | None = None, y_thresholds: ArrayLike | None = None) -> None:
        self.x_thresholds = None if x_thresholds is None else np.asarray(x_thresholds, dtype=np.float64)
        self.y_thresholds = None if y_thresholds is None else np.asarray(y_thresholds, dtype=np.float64)

    def fit(self, predicted_loss: ArrayLike, correct: ArrayLike) -> CorrectnessCalibrator:
        loss = _finite_1d(predicted_loss, "predicted_loss")
        ok = np.asarray(correct, dtype=np.float64)
        if ok.shape != loss.shape or loss.size == 0:
            raise ValueError(f"need equal, non-zero lengths, got predicted_loss {loss.shape} and correct {ok.shape}")
        iso = IsotonicRegression(increasing=False, y_min=0.0, y_max=1.0, out_of_bounds="clip").fit(loss, ok)
        self.x_thresholds, self.y_thresholds = iso.X_thresholds_, iso.y_thresholds_
        return self

    def predict(self, predicted_loss: ArrayLike) -> np.ndarray:
        if self.x_thresholds is None or self.y_thresholds is None:
            raise RuntimeError("CorrectnessCalibrator is not fitted; call fit() or from_dict() first")
        return np.interp(_finite_1d(predicted_loss, "predicted_loss"), self.x_thresholds, self.y_thresholds)

    def ranks(self) -> bool:
        """Whether the fit tells images apart: more than one level of P(right).

        A flat fit means the calibration labels show no link between predicted loss and errors: the
        best non-increasing function of the loss is a constant, so ordering images by loss means nothing yet.
        """
        if self.y_thresholds is None:
            raise RuntimeError("CorrectnessCalibrator is not fitted; call fit() or from_dict() first")
        return bool(np.ptp(self.y_thresholds) > 0)

    def to_dict(self) -> dict[str, Any]:
        if self.x_thresholds is None or self.y_thresholds is None:
            raise RuntimeError("CorrectnessCalibrator is not fitted; nothing to save")
        return {"x_thresholds": self.x_thresholds.tolist(), "y_thresholds": self.y_thresholds.tolist()}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> CorrectnessCalibrator:
        return cls(data["x_thresholds"], data["y_thresholds"])


def score_from_loss(predicted_loss: ArrayLike, calibrator: CorrectnessCalibrator | None) -> np.ndarray:
    """The Label Studio prediction score in [0, 1]: strictly decreasing in predicted loss.

    Base: the calibrated P(all heads right) when a calibrator exists, else 1 / (1 + exp(loss)).
    Isotonic fits are step functions, so a tie-break is mixed in with weight TIE_BREAK_WEIGHT:
    0.5 - arctan(loss) / pi, strictly decreasing with heavy tails so that it still separates large
    losses. It is a fixed function of the loss (not a rank), so scores from separately scored chunks
    sort together: ascending score == descending predicted loss across the whole project.
    """
    loss = _finite_1d(predicted_loss, "predicted_loss")
    if calibrator is None:
        base = expit(-loss)  # 1 / (1 + exp(loss)), without overflow
    else:
        base = calibrator.predict(loss)
    tie_break = 0.5 - np.arctan(loss) / np.pi
    return (1.0 - TIE_BREAK_WEIGHT) * base + TIE_BREAK_WEIGHT * tie_break


@dataclass
class BandEstimate:
    """Expected accuracy of a band, and the mean P(right) of its k lowest / k highest losses."""

    expected_accuracy: float | None
    best_case: float | None
    worst_case: float | None
    n: int


def band_estimate(calibrator: CorrectnessCalibrator, predicted_loss_of_band: ArrayLike, k: int = 100) -> BandEstimate:
    """Estimate a band's accuracy from its predicted losses alone (no ground truth needed).

    expected_accuracy is the mean calibrated P(right) over the band; best_case and worst_case average
    it over the k lowest-loss and the k highest-loss images (k is capped at the band size). An empty
    band gives None for all three.
    """
    if k < 1:
        raise ValueError(f"k must be >= 1, got {k}")
    probs = np.sort(calibrator.predict(predicted_loss_of_band))[::-1]  # highest P = lowest loss first
    if probs.size == 0:
        return BandEstimate(None, None, None, 0)
    k = min(k, probs.size)
    return BandEstimate(
        expected_accuracy=float(probs.mean()),
        best_case=float(probs[:k].mean()),
        worst_case=float(probs[-k:].mean()),
        n=int(probs.size),
    )
