"""A learned confidence that every head is right, from the loss module and the heads' own outputs.

Measured so far, the loss prediction module (Yoo & Kweon, CVPR 2019) alone finds wrong predictions worse
than the classifier's max-softmax (AUROC 0.52-0.82 against 0.75-0.92, issue 14), as the field reports:
the softmax response is the strongest failure detector overall (Jaeger et al., "A Call to Reflect on
Evaluation Practices for Failure Detection in Image Classification", ICLR 2023), and a confidence
function learned for auto-labeling covers more data at the same error than a fixed score (Colander:
Vishwakarma et al., NeurIPS 2024). So the confidence is a logistic regression over cheap per-image
features: the loss module's predicted loss and, per head, the log of max-softmax, margin (top-1 minus
top-2) and entropy. Max-softmax enters as a log so that the product over heads, the joint max-softmax
that finds errors best in the measurements so far, is one of the functions the regression can express
(in a first reduced benchmark, with raw per-head max-softmax it fell below the joint score in 8 of 8
cycles). Fitted on labels the classifier did not train on, its output estimates P(every head right);
it is monotone in one linear score, so it orders images and can be thresholded like any score.

``use_loss_module=False`` fits the same function without the predicted loss, to measure what the
module adds (issue 14 asks for its contribution, with and without it).

:class:`RiskScore` is the one function that scores, ranks and bands a cycle's images (model/al/cycle.py):
the learned confidence by default, fitted each cycle on labels chosen independently of the strategies
(the seed set's holdout half and the audits) and never on the probes that certify it; the paper's
predicted loss when asked for (``score="loss"``). The joint max-softmax (the product over heads), the
strongest fixed failure detector in the measurements above, stands in for the confidence until the
learned function beats it out of fold on the fit labels themselves, by more than a standard error: with
a few dozen fit labels a seven-feature regression overfits and can find errors worse than the
max-softmax it contains (in a small benchmark, AUROC 0.45 against 0.75 after 50 fit labels). The score
says which one it is.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

MIN_EACH_CLASS = 2  # right and wrong examples each, below which nothing is fitted
CV_FOLDS = 5  # folds of the out-of-fold comparison with the joint max-softmax
RISK_SCORES = ("confidence", "loss")
"""What scores, ranks and bands: the learned confidence (default) or the loss module's predicted loss."""
JOINT_MAX_SOFTMAX = "joint max-softmax"


def confidence_features(
    predicted_loss: np.ndarray, probs: dict[str, np.ndarray], use_loss_module: bool = True
) -> np.ndarray:
    """(N, F) features: predicted loss (optional), then per head log max-softmax, margin and entropy."""
    columns = [np.asarray(predicted_loss, dtype=np.float64)] if use_loss_module else []
    for p in probs.values():
        top = np.sort(np.asarray(p, dtype=np.float64), axis=1)
        columns += [np.log(np.clip(top[:, -1], 1e-12, 1.0)), top[:, -1] - (top[:, -2] if top.shape[1] > 1 else 0.0)]
        columns.append(-(top * np.log(np.clip(top, 1e-12, 1.0))).sum(axis=1))
    return np.stack(columns, axis=1) if columns else np.zeros((len(predicted_loss), 0))


@dataclass
class Confidence:
    """P(every head right) = sigmoid(features . weights + bias), the features of :func:`confidence_features`.

    Kept as a plain linear function (the fitted scaler folded into the weights) so that it is saved with
    a model version as a few numbers and read back by the web process that answers ``/predict``.
    """

    weights: np.ndarray
    bias: float
    use_loss_module: bool

    def logit(self, predicted_loss: np.ndarray, probs: dict[str, np.ndarray]) -> np.ndarray:
        """The linear score whose sigmoid is the confidence: it orders images exactly as the confidence does."""
        if len(predicted_loss) == 0:
            return np.zeros(0)
        return confidence_features(predicted_loss, probs, self.use_loss_module) @ self.weights + self.bias

    def predict(self, predicted_loss: np.ndarray, probs: dict[str, np.ndarray]) -> np.ndarray:
        return 1.0 / (1.0 + np.exp(-self.logit(predicted_loss, probs)))

    def to_dict(self) -> dict[str, Any]:
        return {"weights": self.weights.tolist(), "bias": self.bias, "use_loss_module": self.use_loss_module}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Confidence:
        return cls(np.asarray(data["weights"], dtype=np.float64), float(data["bias"]), bool(data["use_loss_module"]))


def fit_confidence(
    predicted_loss: np.ndarray,
    probs: dict[str, np.ndarray],
    correct: np.ndarray,
    use_loss_module: bool = True,
) -> Confidence | None:
    """Fit on images whose correctness is known (``correct``: every head right), which must be images the
    classifier did not train on; None when fewer than MIN_EACH_CLASS right or wrong ones are known."""
    from sklearn.linear_model import LogisticRegression  # scikit-learn loads in a second: not for every CLI call
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    correct = np.asarray(correct, dtype=bool)
    if correct.sum() < MIN_EACH_CLASS or (~correct).sum() < MIN_EACH_CLASS:
        return None
    scaler, regression = StandardScaler(), LogisticRegression(C=1.0, max_iter=1000)
    make_pipeline(scaler, regression).fit(confidence_features(predicted_loss, probs, use_loss_module), correct)
    scale = np.where(scaler.scale_ > 0, scaler.scale_, 1.0)
    weights = regression.coef_[0] / scale
    bias = float(regression.intercept_[0] - weights @ scaler.mean_)
    return Confidence(weights=weights, bias=bias, use_loss_module=use_loss_module)


@dataclass
class RiskScore:
    """How likely each image's pre-label is wrong, as one number: higher = more likely wrong.

    ``source`` says which function it is: "confidence" (minus the learned confidence's logit),
    JOINT_MAX_SOFTMAX (minus the sum over heads of log max-softmax: the confidence was asked for but
    could not be fitted yet) or "loss" (the loss module's predicted loss, Yoo & Kweon's score).
    """

    source: str
    confidence: Confidence | None = None

    def __call__(self, predicted_loss: np.ndarray, probs: dict[str, np.ndarray]) -> np.ndarray:
        predicted_loss = np.asarray(predicted_loss, dtype=np.float64)
        if self.source == "loss":
            return predicted_loss
        if self.confidence is not None:
            return -self.confidence.logit(predicted_loss, probs)
        risk = np.zeros(len(predicted_loss))
        for p in probs.values():
            risk -= np.log(np.clip(np.asarray(p, dtype=np.float64).max(axis=1), 1e-12, 1.0))
        return risk

    def to_dict(self) -> dict[str, Any]:
        return {"source": self.source, "confidence": None if self.confidence is None else self.confidence.to_dict()}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> RiskScore:
        conf = data.get("confidence")
        return cls(source=str(data["source"]), confidence=None if conf is None else Confidence.from_dict(conf))


def fit_risk_score(
    score: str, predicted_loss: np.ndarray, probs: dict[str, np.ndarray], correct: np.ndarray
) -> RiskScore:
    """The cycle's risk score (``score``, one of RISK_SCORES), fitted on the images of ``correct`` when it is
    the confidence: labels the classifier did not train on and that will never certify this score.

    The learned confidence is kept only when its out-of-fold AUROC on these labels beats the joint
    max-softmax's on the same labels (:func:`learned_beats_max_softmax`); otherwise the joint max-softmax.
    """
    if score not in RISK_SCORES:
        raise ValueError(f"unknown score {score!r}; choose one of {', '.join(RISK_SCORES)}")
    if score == "loss":
        return RiskScore("loss")
    confidence = (  # fitted on all the labels only once the out-of-fold comparison says it is worth it
        fit_confidence(predicted_loss, probs, correct)
        if learned_beats_max_softmax(predicted_loss, probs, correct)
        else None
    )
    return RiskScore(JOINT_MAX_SOFTMAX) if confidence is None else RiskScore("confidence", confidence)


def learned_beats_max_softmax(
    predicted_loss: np.ndarray, probs: dict[str, np.ndarray], correct: np.ndarray, folds: int = CV_FOLDS
) -> bool:
    """Whether the learned confidence, fitted on all folds but one and judged on that one, finds the wrong
    images of ``correct`` better (AUROC) than the joint max-softmax does on the same fold, by more than one
    standard error of the mean difference over the folds: the one-standard-error rule of model selection
    (Breiman, Friedman, Olshen & Stone, "Classification and Regression Trees", 1984), which keeps the simpler
    score unless the data show the richer one is better. In the first full benchmark a plain "at least as
    good out of fold" picked the regression in cycles where it then found errors worse on the test set.
    Folds are stratified and fixed, so the same labels give the same answer."""
    from sklearn.model_selection import StratifiedKFold

    correct = np.asarray(correct, dtype=bool)
    n_splits = min(folds, int(correct.sum()), int((~correct).sum()))
    if n_splits < 2:
        return False
    joint = -RiskScore(JOINT_MAX_SOFTMAX)(predicted_loss, probs)
    gains = []
    splits = StratifiedKFold(n_splits=n_splits, shuffle=True, random_state=0).split(np.zeros(len(correct)), correct)
    for fit, held in splits:
        conf = fit_confidence(predicted_loss[fit], {h: p[fit] for h, p in probs.items()}, correct[fit])
        if conf is None:
            return False
        learned = conf.logit(predicted_loss[held], {h: p[held] for h, p in probs.items()})
        gains.append(error_auroc(learned, correct[held]) - error_auroc(joint[held], correct[held]))
    gain = np.asarray(gains)
    return bool(gain.mean() > gain.std(ddof=1) / np.sqrt(len(gain)))


def error_auroc(confidence: np.ndarray, correct: np.ndarray) -> float:
    """AUROC of low confidence for finding wrong predictions; NaN when only one kind is present."""
    from sklearn.metrics import roc_auc_score

    wrong = ~np.asarray(correct, dtype=bool)
    if not 0 < wrong.sum() < len(wrong):
        return float("nan")
    return float(roc_auc_score(wrong, -np.asarray(confidence)))
