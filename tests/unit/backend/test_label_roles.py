"""Issue 14: each label a person gives has one role in the worker's cycle (backend/worker/cycle.py).

A probe certifies and nothing else: never trained on, never in the fit set, even when it was also drawn as an
audit (an audit that landed on a probe still waiting for its label, or a probe drawn on a waiting audit task).
"""

from __future__ import annotations

from backend.worker.cycle import label_roles
from model.al.cycle import is_calibration_holdout


def test_a_probe_is_never_fitted_on_even_when_it_is_an_audit_too() -> None:
    seed = set(range(1, 41))
    holdout = {t for t in seed if is_calibration_holdout(str(t))}
    assert 0 < len(holdout) < len(seed)  # the seed set splits: half trains, half fits
    audits, probes = {50, 51, 52}, {52, 60, 61, 70}  # 52 is both; 70 still waits for its label
    labeled = seed | audits | {60, 61, 80}  # 80: a strategy pick, trains

    fit, probe = label_roles(labeled, seed, audits, probes)

    assert probe == {52, 60, 61}
    assert fit == holdout | {50, 51}
    assert not fit & probe and 80 not in fit | probe and not (seed - holdout) & (fit | probe)
