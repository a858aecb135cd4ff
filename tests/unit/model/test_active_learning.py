import json
import subprocess
import sys

import numpy as np
import pytest

from model.al.bands import AUTOMATIC, DEFERRED, MANUAL
from model.al.certify import labels_needed
from model.al.cycle import MIN_CALIBRATION_LABELS, is_calibration_holdout, plan_cycle
from model.al.strategies import PoolView


def _pool(n: int = 500, seed: int = 0) -> PoolView:
    rng = np.random.default_rng(seed)
    probs = rng.dirichlet(np.ones(3), size=n)
    return PoolView(
        rng.permutation(np.linspace(0.0, 2.0, n)), {"a": probs, "b": probs[:, ::-1]}, rng.normal(size=(n, 4))
    )


def _calibration(n: int, seed: int = 1) -> tuple[np.ndarray, np.ndarray]:
    """Right below predicted loss 0.8, wrong above: the certifiable band ends near 0.8."""
    loss = np.random.default_rng(seed).uniform(0.0, 2.0, n)
    return loss, loss < 0.8


def test_manual_takes_the_highest_predicted_losses_first():
    pool = _pool()
    loss, correct = _calibration(300)
    plan = plan_cycle(pool, loss, correct, k=10, audit_size=5, strategy="loss", rng=np.random.default_rng(0))
    assert plan.manual.tolist() == np.argsort(-pool.predicted_loss)[:10].tolist()
    assert np.all(np.diff(pool.predicted_loss[plan.manual]) < 0)


def test_automatic_is_exactly_the_certified_band_minus_manual_and_audit():
    pool = _pool()
    loss, correct = _calibration(300)
    plan = plan_cycle(pool, loss, correct, k=20, audit_size=15, rng=np.random.default_rng(0))
    t = plan.certificate.threshold
    assert t is not None and 0.5 < t < 0.9  # a few wrong labels past 0.8 still leave the bound >= 0.95
    in_band = set(np.flatnonzero(pool.predicted_loss <= t).tolist())
    assert set(plan.automatic.tolist()) == in_band - set(plan.audit.tolist()) - set(plan.manual.tolist())
    assert np.all(pool.predicted_loss[plan.deferred] > t)
    assert plan.estimates[AUTOMATIC] is not None and plan.estimates[AUTOMATIC].expected_accuracy > 0.9
    assert plan.estimates[DEFERRED].expected_accuracy < plan.estimates[AUTOMATIC].expected_accuracy


def test_audit_is_drawn_from_the_certified_band_and_never_auto_accepted():
    pool = _pool()
    loss, correct = _calibration(300)
    plan = plan_cycle(pool, loss, correct, k=20, audit_size=15, rng=np.random.default_rng(3))
    audit, auto, manual = (set(a.tolist()) for a in (plan.audit, plan.automatic, plan.manual))
    assert len(audit) == 15 and not audit & auto and not audit & manual
    assert np.all(pool.predicted_loss[plan.audit] <= plan.certificate.threshold)
    assert set(plan.audit_candidates.tolist()) == auto | audit
    # every pool image has exactly one band; people label the manual picks and the audit
    assert sorted(auto | audit | manual | set(plan.deferred.tolist())) == list(range(len(pool)))
    assert set(np.flatnonzero(plan.bands == MANUAL).tolist()) == manual | audit
    assert set(np.flatnonzero(plan.bands == AUTOMATIC).tolist()) == auto


def test_nothing_automatic_when_calibration_labels_are_few():
    pool = _pool()
    needed = labels_needed(0.95, 0.05)
    loss = np.linspace(0.0, 0.1, needed - 5)
    plan = plan_cycle(pool, loss, np.ones(len(loss), bool), k=10, audit_size=8, rng=np.random.default_rng(0))
    assert plan.certificate.threshold is None and plan.automatic.size == 0
    assert plan.certificate.more_labels_needed == 5
    # the audit then comes from the lowest-loss half of the non-manual pool
    assert plan.audit.size == 8 and not set(plan.audit.tolist()) & set(plan.manual.tolist())
    assert np.all(pool.predicted_loss[plan.audit] <= np.median(pool.predicted_loss))
    summary = plan.summary()
    json.dumps(summary)
    assert summary["counts"]["automatic"] == 0 and summary["more_labels_needed"] == 5
    assert "nothing certified" in summary["message"]


def test_no_calibrator_under_the_minimum_and_scores_fall_with_loss():
    pool = _pool()
    loss, correct = _calibration(MIN_CALIBRATION_LABELS - 1)
    plan = plan_cycle(pool, loss, correct, k=5, audit_size=0, rng=np.random.default_rng(0))
    assert plan.calibrator is None and all(e is None for e in plan.estimates.values())
    order = np.argsort(pool.predicted_loss)
    assert np.all(np.diff(plan.scores[order]) < 0)
    loss, correct = _calibration(300)
    plan = plan_cycle(pool, loss, correct, k=5, audit_size=0, rng=np.random.default_rng(0))
    assert plan.calibrator is not None
    assert np.all(np.diff(plan.scores[order]) < 0)
    summary = plan.summary()
    assert json.loads(json.dumps(summary))["counts"] == {
        "pool": 500,
        "manual": 5,
        "automatic": len(plan.automatic),
        "audit": 0,
        "deferred": len(plan.deferred),
    }
    assert summary["threshold"] == plan.certificate.threshold and summary["lower_bound"] >= 0.95


def test_other_strategies_plug_in_by_name():
    pool = _pool()
    loss, correct = _calibration(300)
    for name in ("random", "entropy", "margin", "loss+diversity"):
        plan = plan_cycle(pool, loss, correct, k=7, audit_size=3, strategy=name, rng=np.random.default_rng(0))
        assert len(set(plan.manual.tolist())) == 7
    with pytest.raises(ValueError, match="unknown selection strategy"):
        plan_cycle(pool, loss, correct, k=7, audit_size=3, strategy="nope")
    with pytest.raises(ValueError, match="equal lengths"):
        plan_cycle(pool, loss, correct[:-1], k=7, audit_size=3)


def test_holdout_hash_is_stable_and_holds_out_about_the_fraction():
    keys = [f"images/{i:06d}.jpg" for i in range(20000)]
    half = np.array([is_calibration_holdout(k) for k in keys])
    assert abs(half.mean() - 0.5) < 0.015
    fifth = np.array([is_calibration_holdout(k, 0.2) for k in keys])
    assert abs(fifth.mean() - 0.2) < 0.015
    assert not np.any(
        fifth & ~half
    )  # a smaller fraction holds out a subset: raising it never moves labels into training
    assert not any(is_calibration_holdout(k, 0.0) for k in keys[:100]) and all(
        is_calibration_holdout(k, 1.0) for k in keys[:100]
    )
    # the same answer in another process (Python's hash() would differ there)
    code = (
        "from model.al.cycle import is_calibration_holdout as h; "
        "print(''.join('1' if h(f'images/{i:06d}.jpg') else '0' for i in range(200)))"
    )
    other = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.strip()
    assert other == "".join("1" if h else "0" for h in half[:200])
    with pytest.raises(ValueError, match="fraction"):
        is_calibration_holdout("x", 1.5)


def test_a_model_whose_loss_does_not_tell_right_from_wrong_shows_no_order():
    """Issue 14, cold start: calibration labels with no link between predicted loss and errors (here every one of
    them right, or right and wrong at random) fit a flat calibrator: the plan says it cannot rank, and why."""
    pool = _pool()
    rng = np.random.default_rng(4)
    loss = rng.uniform(0.0, 2.0, 60)
    for correct in (np.ones(60, bool), loss > 1.0):  # all right; or right only where the loss is *high*
        plan = plan_cycle(pool, loss, correct, k=10, audit_size=5, rng=np.random.default_rng(0))
        assert plan.calibrator is not None and not plan.calibrator.ranks()
        assert not plan.can_rank and not plan.summary()["can_rank"]
        assert "cannot rank yet" in plan.summary()["message"]
    loss, correct = _calibration(60)
    ranking = plan_cycle(pool, loss, correct, k=10, audit_size=5, rng=np.random.default_rng(0))
    assert ranking.can_rank and ranking.summary()["can_rank"] and "cannot rank" not in ranking.summary()["message"]
    n = MIN_CALIBRATION_LABELS - 1
    few = plan_cycle(pool, loss[:n], correct[:n], k=10, audit_size=5, rng=np.random.default_rng(0))
    assert few.calibrator is None and few.can_rank  # too few labels to tell: the method's own order stands
