"""P(all heads right | risk), and the Label Studio score derived from it.

The risk is the cycle's risk score (model/al/confidence.py; the predicted loss in older versions). The
calibration is Platt's: P(right) = sigmoid(a + b * risk) with b <= 0, fitted by maximum likelihood on
the fit labels (chosen independently of the strategies, see model/al/cycle.py) to estimate the accuracy
of any band without ground truth (Platt, "Probabilistic outputs for support vector machines", 1999).
Two parameters rather than an isotonic step function because fit labels are scarce (50 to a few hundred
per project): isotonic regression overfits below about a thousand calibration labels (Niculescu-Mizil &
Caruana, "Predicting good probabilities with supervised learning", ICML 2005), and its plateaus gave
every task at the head of the first queue the same score (0.750 in one demo, 0.500 in another), an order
that tells a person nothing. A logistic curve falls strictly with the risk wherever the labels show a
link, so the queue's scores spread. Calibrators saved by older versions (isotonic breakpoints) still load.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
from numpy.typing import ArrayLike
from scipy.special import expit, logit

TIE_BREAK_WEIGHT = 1e-6
EVIDENCE_P = 0.05
"""A calibrator ranks when the fit labels show, at this one-sided level, that wrong images have higher risk."""


def _finite_1d(values: ArrayLike, what: str) -> np.ndarray:
    array = np.asarray(values, dtype=np.float64)
    if array.ndim != 1:
        raise ValueError(f"{what} must be 1-D, got shape {array.shape}")
    if not np.all(np.isfinite(array)):
        raise ValueError(f"{what} contains NaN or infinity; rescore those images")
    return array


class CorrectnessCalibrator:
    """P(all heads right) as a non-increasing logistic function of the risk (module docstring: why Platt).

    ``p_value``: one-sided Mann-Whitney U test that the wrong fit labels have higher risk than the right ones
    (1.0 when only one kind is present), kept so that :meth:`ranks` needs no labels. A calibrator built
    from isotonic breakpoints (``x_thresholds``, ``y_thresholds``: what older versions saved) interpolates
    them as before.
    """

    def __init__(
        self,
        intercept: float | None = None,
        slope: float | None = None,
        p_value: float | None = None,
        x_thresholds: ArrayLike | None = None,
        y_thresholds: ArrayLike | None = None,
    ) -> None:
        self.intercept, self.slope, self.p_value = intercept, slope, p_value
        self.x_thresholds = None if x_thresholds is None else np.asarray(x_thresholds, dtype=np.float64)
        self.y_thresholds = None if y_thresholds is None else np.asarray(y_thresholds, dtype=np.float64)

    def fit(self, risk: ArrayLike, correct: ArrayLike) -> CorrectnessCalibrator:
        from scipy.stats import mannwhitneyu
        from sklearn.linear_model import LogisticRegression

        x = _finite_1d(risk, "risk")
        ok = np.asarray(correct, dtype=bool)
        if ok.shape != x.shape or x.size == 0:
            raise ValueError(f"need equal, non-zero lengths, got risk {x.shape} and correct {ok.shape}")
        rate = float(np.clip(ok.mean(), 0.5 / x.size, 1 - 0.5 / x.size))  # all right (or wrong): near 1 (0)
        self.intercept, self.slope, self.p_value = float(logit(rate)), 0.0, 1.0
        if ok.all() or not ok.any():
            return self
        self.p_value = float(mannwhitneyu(x[~ok], x[ok], alternative="greater").pvalue)
        fitted = LogisticRegression(C=1e4, max_iter=1000).fit(x.reshape(-1, 1), ok)
        if fitted.coef_[0, 0] < 0:  # the best non-increasing fit; a rising one means no link: the constant rate
            self.intercept, self.slope = float(fitted.intercept_[0]), float(fitted.coef_[0, 0])
        return self

    def predict(self, risk: ArrayLike) -> np.ndarray:
        x = _finite_1d(risk, "risk")
        if self.slope is not None and self.intercept is not None:
            return expit(self.intercept + self.slope * x)
        if self.x_thresholds is not None and self.y_thresholds is not None:
            return np.interp(x, self.x_thresholds, self.y_thresholds)
        raise RuntimeError("CorrectnessCalibrator is not fitted; call fit() or from_dict() first")

    def ranks(self) -> bool:
        """Whether the fit labels show that the risk tells right from wrong (EVIDENCE_P), so that ordering the
        queue by it means something. An older isotonic calibrator ranks when it has more than one level."""
        if self.slope is not None:
            return self.slope < 0 and self.p_value is not None and self.p_value < EVIDENCE_P
        if self.y_thresholds is None:
            raise RuntimeError("CorrectnessCalibrator is not fitted; call fit() or from_dict() first")
        return bool(np.ptp(self.y_thresholds) > 0)

    def to_dict(self) -> dict[str, Any]:
        if self.slope is not None:
            return {"intercept": self.intercept, "slope": self.slope, "p_value": self.p_value}
        if self.x_thresholds is None or self.y_thresholds is None:
            raise RuntimeError("CorrectnessCalibrator is not fitted; nothing to save")
        return {"x_thresholds": self.x_thresholds.tolist(), "y_thresholds": self.y_thresholds.tolist()}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> CorrectnessCalibrator:
        return cls(**data)


def score_from_loss(predicted_loss: ArrayLike, calibrator: CorrectnessCalibrator | None) -> np.ndarray:
    """The Label Studio prediction score in [0, 1]: strictly decreasing in the risk (``predicted_loss``).

    Base: the calibrated P(all heads right) when a calibrator exists, else 1 / (1 + exp(risk)).
    A flat calibrator, or an older isotonic one, has ties, so a tie-break is mixed in with weight TIE_BREAK_WEIGHT:
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
