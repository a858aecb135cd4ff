"""Evaluation of the classifier and of its loss prediction module.

Per head: accuracy, macro-F1, per-class precision and recall, the confusion matrix. The loss module is
judged on the same images against the plain max-softmax-probability (MSP) baseline of Hendrycks &
Gimpel (ICLR 2017): Spearman correlation of predicted with true loss, and the AUROC of each score for
finding the images where some head is wrong.
"""

from __future__ import annotations

from typing import Any

import numpy as np
from scipy.stats import spearmanr
from sklearn.metrics import accuracy_score, confusion_matrix, f1_score, precision_recall_fscore_support, roc_auc_score

from model.training.scoring import ScoreResult


def evaluate(result: ScoreResult) -> dict[str, Any]:
    """Metrics of a scored, fully labeled set, as a JSON-ready dict."""
    labeled = (result.targets >= 0).all(axis=1)
    result = result.subset(np.flatnonzero(labeled))
    heads: dict[str, Any] = {}
    for j, head in enumerate(result.schema.heads):
        y_true, y_pred = result.targets[:, j], result.probs[head.name].argmax(axis=1)
        labels = list(range(len(head.classes)))
        prec, rec, _, support = precision_recall_fscore_support(y_true, y_pred, labels=labels, zero_division=0)
        heads[head.name] = {
            "accuracy": float(accuracy_score(y_true, y_pred)) if len(y_true) else float("nan"),
            "macro_f1": float(f1_score(y_true, y_pred, labels=labels, average="macro", zero_division=0)),
            "per_class": {
                c: {"precision": float(prec[k]), "recall": float(rec[k]), "support": int(support[k])}
                for k, c in enumerate(head.classes)
            },
            "confusion_matrix": {
                "classes": list(head.classes),
                "matrix": confusion_matrix(y_true, y_pred, labels=labels).tolist(),
            },
        }
    return {"n": len(result), "heads": heads, "loss_module": loss_module_metrics(result)}


def msp_confidence(result: ScoreResult) -> np.ndarray:
    """Max-softmax probability of all heads together: the product of each head's top probability."""
    conf = np.ones(len(result))
    for p in result.probs.values():
        conf *= p.max(axis=1)
    return conf


def loss_module_metrics(result: ScoreResult) -> dict[str, Any]:
    """How well predicted loss ranks true loss and finds errors, beside MSP."""
    wrong = ~result.all_correct()
    true_loss = result.true_loss()
    out: dict[str, Any] = {"n": len(result), "error_rate": float(wrong.mean()) if len(result) else float("nan")}
    out["spearman"] = float(spearmanr(result.predicted_loss, true_loss).statistic) if len(result) > 2 else float("nan")
    out["msp_spearman"] = (
        float(spearmanr(-msp_confidence(result), true_loss).statistic) if len(result) > 2 else float("nan")
    )
    both = 0 < wrong.sum() < len(wrong)
    out["auroc"] = float(roc_auc_score(wrong, result.predicted_loss)) if both else float("nan")
    out["msp_auroc"] = float(roc_auc_score(wrong, -msp_confidence(result))) if both else float("nan")
    return out


def mean_macro_f1(metrics: dict[str, Any]) -> float:
    """The mean over heads of macro-F1: the single figure used for early stopping and promotion."""
    return float(np.mean([h["macro_f1"] for h in metrics["heads"].values()]))
