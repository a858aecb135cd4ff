"""Scores to Label Studio predictions: one Choices result per head, the score, the model version.

Used by ``/predict`` (Label Studio asks) and by the training job (bulk import), so both give the same
item for the same task and version.

The score is the calibrated probability that every head is right, P(every head right | risk), of the
version's risk score (model.al.confidence.RiskScore: by default the learned confidence over the loss
module's predicted loss and the heads' outputs; the predicted loss alone with ``RISK_SCORE=loss``). The
risk score and its calibration (Platt's, model.al.calibration) were fitted on labels the classifier did
not train on and that no certificate is computed on; before a calibration exists the score is
``model.al.calibration.score_from_loss``'s documented monotone map. Either way it decreases with the
risk, so "lowest score first" (Label Studio's uncertainty sampling) means "most likely wrong first", the
order the queue and the bands use.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np

from model.al.calibration import CorrectnessCalibrator, score_from_loss
from model.al.confidence import RiskScore
from model.schema import LabelSchema
from model.training.scoring import ScoreResult

CALIBRATION_FILE = "calibration.json"


def read_calibration(version_dir: Path) -> dict[str, Any]:
    """What the worker wrote after certifying a version: risk score, calibrator, certificate, band summary
    ({} if none)."""
    p = version_dir / CALIBRATION_FILE
    return json.loads(p.read_text()) if p.is_file() else {}


def load_calibrator(version_dir: Path) -> CorrectnessCalibrator | None:
    data = read_calibration(version_dir).get("calibrator")
    return CorrectnessCalibrator.from_dict(data) if data else None


def load_risk_score(version_dir: Path) -> RiskScore:
    """The risk score a version's cycle fitted; the predicted loss for a version certified before the risk
    score existed (its calibration.json has none), which is what scored it then."""
    data = read_calibration(version_dir).get("risk_score")
    return RiskScore.from_dict(data) if data else RiskScore("loss")


def choices_result(schema: LabelSchema, labels: dict[str, str]) -> list[dict[str, Any]]:
    return [
        {"from_name": h.name, "to_name": schema.image_name, "type": "choices", "value": {"choices": [labels[h.name]]}}
        for h in schema.heads
    ]


def task_scores(result: ScoreResult, risk_score: RiskScore, calibrator: CorrectnessCalibrator | None) -> np.ndarray:
    """The Label Studio score of each scored image, in ``result`` order: P(every head right) of its risk."""
    if not len(result):
        return np.zeros(0)
    return score_from_loss(risk_score(result.predicted_loss, result.probs), calibrator)


def prediction_items(
    result: ScoreResult, version: str, calibrator: CorrectnessCalibrator | None, risk_score: RiskScore
) -> list[dict[str, Any]]:
    """One Label Studio prediction per scored image, in ``result`` order."""
    scores = task_scores(result, risk_score, calibrator)
    return [
        {
            "result": choices_result(result.schema, result.labels_of(i)),
            "score": float(scores[i]),
            "model_version": version,
        }
        for i in range(len(result))
    ]
