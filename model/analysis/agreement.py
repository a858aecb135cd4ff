"""The human baseline: how often annotators agree on tasks labeled more than once, and the model beside them.

Karpathy's recipe ("A Recipe for Training Neural Networks", 2019) asks for a human baseline before
any tuning: a model can hardly beat the agreement of the people whose labels it learns from, and a
head on which people disagree often needs clearer instructions more than more labels.

Per head, over the tasks with at least two annotations that answer that head, this reports the raw
agreement and Cohen's kappa (Cohen, 1960; agreement corrected for chance) between the first and the
second annotation of each task (a task's annotators differ from task to task, so "first" and "second"
are the two roles), plus the share of all annotation pairs that agree. The model is judged with the
same two numbers against the labels, so the three sit side by side.
"""

from __future__ import annotations

import math
import warnings
from itertools import combinations
from typing import Any

import numpy as np
from sklearn.metrics import accuracy_score, cohen_kappa_score

from model.analysis.inputs import Item
from model.schema import LabelSchema


def kappa(a: np.ndarray, b: np.ndarray) -> float | None:
    """Cohen's kappa, None when it is undefined (no pairs, or both raters always gave one same class)."""
    if len(set(a.tolist()) | set(b.tolist())) < 2:
        return None
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # sklearn warns before returning NaN for the undefined cases
        value = cohen_kappa_score(a, b)
    return None if math.isnan(value) else float(value)


def annotator_agreement(items: list[Item], schema: LabelSchema) -> dict[str, Any]:
    """Per head: tasks compared, raw agreement and kappa of first vs second annotation, pairwise agreement."""
    out: dict[str, Any] = {}
    for head in schema.heads:
        first, second, pairs_agree, pairs = [], [], 0, 0
        for item in items:
            values = [a.values.get(head.name) for a in item.annotations]
            values = [v for v in values if v is not None]
            if len(values) < 2:
                continue
            first.append(values[0])
            second.append(values[1])
            for x, y in combinations(values, 2):
                pairs += 1
                pairs_agree += x == y
        a, b = np.array(first, dtype=object), np.array(second, dtype=object)
        out[head.name] = {
            "n_tasks": len(first),
            "raw_agreement": float((a == b).mean()) if len(a) else None,
            "kappa": kappa(a.astype(str), b.astype(str)),
            "pairwise_agreement": pairs_agree / pairs if pairs else None,
        }
    return out


def disagreements(items: list[Item], schema: LabelSchema) -> list[dict[str, Any]]:
    """Tasks where annotators gave different values on some head, with every value given."""
    found = []
    for item in items:
        for head in schema.head_names:
            values = [a.values.get(head) for a in item.annotations if a.values.get(head) is not None]
            if len(set(values)) > 1:
                found.append(
                    {
                        "key": item.key,
                        "head": head,
                        "values": values,
                        "annotators": [a.annotator for a in item.annotations if a.values.get(head) is not None],
                    }
                )
    return found


def model_agreement(schema: LabelSchema, labels: np.ndarray, predicted: dict[str, np.ndarray]) -> dict[str, Any]:
    """Per head: the model's accuracy and kappa against the labels (``labels`` (N, heads), -1 = none)."""
    out: dict[str, Any] = {}
    for j, head in enumerate(schema.heads):
        has = labels[:, j] >= 0
        y, p = labels[has, j], predicted[head.name][has]
        out[head.name] = {
            "n": int(has.sum()),
            "accuracy": float(accuracy_score(y, p)) if has.any() else None,
            "kappa": kappa(y, p),
        }
    return out
