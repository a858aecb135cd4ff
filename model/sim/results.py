"""What a simulation returns: its rows, and per run what the last model saw. Plain data, read by the report."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np


@dataclass
class RunTrace:
    """What the last model of one run saw, for analyses after the fact (scatter, repeated audits).

    Pool-sized arrays are indexed like SimulationData.pool; NaN loss = the image could not be read.
    train_ids, holdout_ids, audit_ids: the labels the last model's plan knew (its own picks excluded).
    audit_draws: per revealed audit, (candidate pool indices, sample size) it was drawn with.
    """

    strategy: str
    seed: int
    pool_loss: np.ndarray
    correct_calibration: np.ndarray
    correct_labels: np.ndarray
    correct_truth: np.ndarray
    train_ids: np.ndarray
    holdout_ids: np.ndarray
    audit_ids: np.ndarray
    audit_draws: list[tuple[np.ndarray, int]]
    test_predicted_loss: np.ndarray
    test_true_loss: np.ndarray


@dataclass
class SimulationResult:
    rows: list[dict[str, Any]]
    traces: list[RunTrace]
    settings: dict[str, Any]
    results_path: Path
    report_path: Path | None = None
    columns: list[str] = field(default_factory=list)
