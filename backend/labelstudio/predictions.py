"""Scores to Label Studio predictions: one Choices result per head, the score, the model version.

Used by ``/predict`` (Label Studio asks) and by the training job (bulk import), so both give the same
item for the same task and version.

The score is the calibrated probability that every head is right, P(correct | predicted loss), fitted
by isotonic regression on labels chosen independently of the model; before a calibration exists it is
``model.al.calibration.score_from_loss``'s documented monotone map. Either way it decreases with the
predicted loss, so "lowest score first" (Label Studio's uncertainty sampling) means "highest predicted
loss first".
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np

from model.al.calibration import CorrectnessCalibrator, score_from_loss
from model.schema import LabelSchema
from model.training.scoring import ScoreResult

CALIBRATION_FILE = "calibration.json"


def read_calibration(version_dir: Path) -> dict[str, Any]:
    """What the worker wrote after certifying a version: calibrator, certificate, band summary ({} if none)."""
    p = version_dir / CALIBRATION_FILE
    return json.loads(p.read_text()) if p.is_file() else {}


def load_calibrator(version_dir: Path) -> CorrectnessCalibrator | None:
    data = read_calibration(version_dir).get("calibrator")
    return CorrectnessCalibrator.from_dict(data) if data else None


def choices_result(schema: LabelSchema, labels: dict[str, str]) -> list[dict[str, Any]]:
    return [
        {"from_name": h.name, "to_name": schema.image_name, "type": "choices", "value": {"choices": [labels[h.name]]}}
        for h in schema.heads
    ]


def prediction_items(
    result: ScoreResult, version: str, calibrator: CorrectnessCalibrator | None
) -> list[dict[str, Any]]:
    """One Label Studio prediction per scored image, in ``result`` order."""
    scores = score_from_loss(result.predicted_loss, calibrator) if len(result) else np.zeros(0)
    return [
        {
            "result": choices_result(result.schema, result.labels_of(i)),
            "score": float(scores[i]),
            "model_version": version,
        }
        for i in range(len(result))
    ]
