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
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from sklearn.linear_model import LogisticRegression
from sklearn.metrics import roc_auc_score
from sklearn.pipeline import Pipeline, make_pipeline
from sklearn.preprocessing import StandardScaler

MIN_EACH_CLASS = 2  # right and wrong examples each, below which nothing is fitted


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
    """P(every head right) as a fitted function of :func:`confidence_features`."""

    model: Pipeline
    use_loss_module: bool

    def predict(self, predicted_loss: np.ndarray, probs: dict[str, np.ndarray]) -> np.ndarray:
        if len(predicted_loss) == 0:
            return np.zeros(0)
        features = confidence_features(predicted_loss, probs, self.use_loss_module)
        return self.model.predict_proba(features)[:, 1]


def fit_confidence(
    predicted_loss: np.ndarray,
    probs: dict[str, np.ndarray],
    correct: np.ndarray,
    use_loss_module: bool = True,
) -> Confidence | None:
    """Fit on images whose correctness is known (``correct``: every head right), which must be images the
    classifier did not train on; None when fewer than MIN_EACH_CLASS right or wrong ones are known."""
    correct = np.asarray(correct, dtype=bool)
    if correct.sum() < MIN_EACH_CLASS or (~correct).sum() < MIN_EACH_CLASS:
        return None
    model = make_pipeline(StandardScaler(), LogisticRegression(C=1.0, max_iter=1000))
    model.fit(confidence_features(predicted_loss, probs, use_loss_module), correct)
    return Confidence(model=model, use_loss_module=use_loss_module)


def error_auroc(confidence: np.ndarray, correct: np.ndarray) -> float:
    """AUROC of low confidence for finding wrong predictions; NaN when only one kind is present."""
    wrong = ~np.asarray(correct, dtype=bool)
    if not 0 < wrong.sum() < len(wrong):
        return float("nan")
    return float(roc_auc_score(wrong, -np.asarray(confidence)))
