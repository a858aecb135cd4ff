"""One cycle's plan (model.al.cycle): roles of labels, bands, probes that certify and nothing else."""

import json
import subprocess
import sys

import numpy as np
import pytest

from model.al.bands import AUTOMATIC, DEFERRED, MANUAL
from model.al.certify import labels_needed, pool_digest
from model.al.cycle import MIN_CALIBRATION_LABELS, Labeled, is_calibration_holdout, plan_cycle
from model.al.strategies import PoolView


def _view(loss: np.ndarray, seed: int = 0) -> PoolView:
    """Two heads whose max-softmax falls as ``loss`` rises (so the learned confidence and the predicted loss
    agree on what is risky), with embeddings."""
    rng = np.random.default_rng(seed)
    n = len(loss)
    logits = rng.normal(0, 0.3, (n, 3))
    logits[:, 0] += 3.0 - 2.0 * loss
    probs = np.exp(logits) / np.exp(logits).sum(axis=1, keepdims=True)
    return PoolView(loss, {"a": probs, "b": probs[:, ::-1]}, rng.normal(size=(n, 4)))


def _pool(n: int = 500, seed: int = 0) -> PoolView:
    return _view(np.random.default_rng(seed).permutation(np.linspace(0.0, 2.0, n)), seed)


def _labeled(n: int, seed: int = 1) -> Labeled:
    """Right below predicted loss 0.8, wrong above: the certifiable band ends near 0.8."""
    loss = np.random.default_rng(seed).uniform(0.0, 2.0, n)
    return Labeled(_view(loss, seed), loss < 0.8)


def _plan(pool, fit=None, probes=None, **kwargs):
    kwargs = {"k": 10, "audit_size": 5, "score": "loss", "rng": np.random.default_rng(0)} | kwargs
    return plan_cycle(
        pool, fit if fit is not None else _labeled(300), probes if probes is not None else _labeled(300, 2), **kwargs
    )


def test_manual_takes_the_highest_predicted_losses_first():
    pool = _pool()
    plan = _plan(pool, probes=Labeled.none(pool), strategy="loss")
    assert plan.manual.tolist() == np.argsort(-pool.predicted_loss)[:10].tolist()
    assert np.all(np.diff(pool.predicted_loss[plan.manual]) < 0)


def test_automatic_is_exactly_the_certified_band_minus_manual_audit_and_new_probes():
    pool = _pool()
    plan = _plan(pool, k=20, audit_size=15, probe_size=12)
    t = plan.certificate.threshold
    assert t is not None and 0.5 < t < 0.9  # a few wrong labels past 0.8 still leave the bound >= 0.95
    in_band = set(np.flatnonzero(pool.predicted_loss <= t).tolist())
    people = set(plan.audit.tolist()) | set(plan.manual.tolist()) | set(plan.probes.tolist())
    assert set(plan.automatic.tolist()) == in_band - people
    assert np.all(pool.predicted_loss[plan.deferred] > t)
    assert plan.estimates[AUTOMATIC] is not None and plan.estimates[AUTOMATIC].expected_accuracy > 0.9
    assert plan.estimates[DEFERRED].expected_accuracy < plan.estimates[AUTOMATIC].expected_accuracy


def test_audit_is_drawn_from_the_certified_band_and_new_probes_from_all_that_stays_unlabeled():
    pool = _pool()
    plan = _plan(pool, k=20, audit_size=15, probe_size=40, rng=np.random.default_rng(3))
    audit, auto, manual, probes = (set(a.tolist()) for a in (plan.audit, plan.automatic, plan.manual, plan.probes))
    assert len(audit) == 15 and not audit & auto and not audit & manual
    assert np.all(pool.predicted_loss[plan.audit] <= plan.certificate.threshold)
    assert len(probes) == 40 and not probes & (audit | manual)
    assert np.any(pool.predicted_loss[plan.probes] > plan.certificate.threshold)  # probes reach past the band
    # every pool image has exactly one band; people label the manual picks, the audit and the new probes
    assert sorted(auto | audit | manual | probes | set(plan.deferred.tolist())) == list(range(len(pool)))
    assert set(np.flatnonzero(plan.bands == MANUAL).tolist()) == manual | audit | probes
    assert set(np.flatnonzero(plan.bands == AUTOMATIC).tolist()) == auto
    right, checked = plan.audit_check
    assert checked > 50 and right / checked > 0.95  # the fit labels in the band: a check beside the certificate
    probes = _labeled(300, 2)  # the probes _plan certified on
    assert (
        plan.probes_in_band.tolist()
        == np.flatnonzero(probes.view.predicted_loss <= plan.certificate.threshold).tolist()
    )


def test_a_small_pool_draws_at_most_half_of_what_stays_unlabeled_as_probes():
    pool = _pool(n=90)
    plan = _plan(pool, k=17, audit_size=10, probe_size=60)
    left = len(pool) - len(plan.manual) - len(plan.audit)
    assert len(plan.probes) == left // 2 and len(plan.automatic) + len(plan.deferred) == left - left // 2
    assert len(_plan(_pool(), k=17, audit_size=10, probe_size=60).probes) == 60  # a large pool: as asked


def test_certification_refuses_when_probes_are_few_and_says_how_many_more():
    pool = _pool()
    needed = labels_needed(0.95, 0.05)
    few = Labeled(_view(np.linspace(0.0, 0.1, needed - 5)), np.ones(needed - 5, bool))
    plan = _plan(pool, probes=few, k=10, audit_size=8)
    assert plan.certificate.threshold is None and plan.automatic.size == 0
    assert plan.certificate.more_labels_needed == 5 and "5 more probes" in plan.certificate.message
    # the audit then comes from the lowest-risk half of the non-manual pool
    assert plan.audit.size == 8 and not set(plan.audit.tolist()) & set(plan.manual.tolist())
    assert np.all(pool.predicted_loss[plan.audit] <= np.median(pool.predicted_loss))
    summary = plan.summary()
    json.dumps(summary)
    assert summary["counts"]["automatic"] == 0 and summary["more_labels_needed"] == 5
    assert "nothing certified" in summary["message"]
    # many fit labels, all right, do not stand in for probes: without probes nothing is certified
    none = _plan(pool, fit=Labeled(_view(np.zeros(500)), np.ones(500, bool)), probes=Labeled.none(pool))
    assert none.certificate.threshold is None and none.certificate.more_labels_needed == needed


def test_the_confidence_is_fitted_on_fit_labels_never_on_the_probes_that_certify_it():
    pool = _pool()
    fit = _labeled(300)
    probes = _labeled(300, 2)
    flipped = Labeled(probes.view, ~probes.correct)
    a = _plan(pool, fit=fit, probes=probes, score="confidence")
    b = _plan(pool, fit=fit, probes=flipped, score="confidence")
    assert a.risk_score.source == "confidence" and a.risk_score.confidence is not None
    assert np.array_equal(a.risk, b.risk) and np.array_equal(a.scores, b.scores)  # the probes' labels fit nothing
    assert a.certificate.threshold is not None and b.certificate.threshold is None  # but they decide the certificate
    refit = _plan(pool, fit=Labeled(fit.view, ~fit.correct), probes=probes, score="confidence")
    assert not np.array_equal(refit.risk, a.risk)  # the fit labels are what the confidence learns from


def test_scores_are_a_monotone_calibration_of_the_risk_score():
    pool = _pool()
    plan = _plan(pool, score="confidence")
    order = np.argsort(plan.risk)
    assert np.all(np.diff(plan.scores[order]) < 0)  # strictly falling as the risk rises: ranks like the risk
    assert plan.calibrator is not None
    right = plan.calibrator.predict(plan.risk[order])
    assert np.all(np.diff(right) <= 0) and right[0] > 0.9 and right[-1] < 0.1
    assert plan.summary()["score"] == "confidence"


def test_without_a_fittable_confidence_the_joint_max_softmax_ranks():
    pool = _pool()
    fit = Labeled(_view(np.zeros(30)), np.ones(30, bool))  # no wrong example: nothing to fit
    plan = _plan(pool, fit=fit, score="confidence")
    assert plan.risk_score.source == "joint max-softmax"
    joint = -sum(np.log(p.max(axis=1)) for p in pool.probs.values())
    assert np.allclose(plan.risk, joint)


def test_the_strategy_ranks_probes_with_the_pool_and_a_picked_probe_trains():
    pool = _pool()
    probes = Labeled(_view(np.array([5.0, 0.1, 4.0])), np.array([False, True, False]))  # two riskier than any image
    plan = _plan(pool, probes=probes, k=10, strategy="loss")
    assert plan.probes_to_train.tolist() == [0, 2]
    assert len(plan.manual) == 8 and plan.manual.tolist() == np.argsort(-pool.predicted_loss)[:8].tolist()
    assert plan.summary()["counts"]["probes_to_train"] == 2


def test_a_certificate_names_its_pool_and_holds_for_no_other():
    pool = _pool()
    keys = [f"task-{i}" for i in range(len(pool))]
    plan = _plan(pool, pool_id=pool_digest(keys))
    cert = plan.certificate
    assert cert.threshold is not None and cert.speaks_for(pool_digest(reversed(keys)))
    assert not cert.speaks_for(pool_digest(keys[:-1] + ["task-new"]))  # a new task: another pool
    assert not _plan(pool).certificate.speaks_for(pool_digest(keys))  # a certificate without a pool holds for none
    assert plan.summary()["pool"] == pool_digest(keys)


def test_no_calibrator_under_the_minimum_and_scores_fall_with_risk():
    pool = _pool()
    plan = _plan(pool, fit=_labeled(MIN_CALIBRATION_LABELS - 1), k=5, audit_size=0)
    assert plan.calibrator is None and all(e is None for e in plan.estimates.values())
    order = np.argsort(pool.predicted_loss)
    assert np.all(np.diff(plan.scores[order]) < 0)
    plan = _plan(pool, k=5, audit_size=0)
    assert plan.calibrator is not None
    assert np.all(np.diff(plan.scores[order]) < 0)
    summary = plan.summary()
    assert json.loads(json.dumps(summary))["counts"] == {
        "pool": 500,
        "manual": 5,
        "automatic": len(plan.automatic),
        "audit": 0,
        "probes": 0,
        "probes_to_train": 0,
        "deferred": len(plan.deferred),
    }
    assert summary["threshold"] == plan.certificate.threshold and summary["lower_bound"] >= 0.95


def test_other_strategies_plug_in_by_name():
    pool = _pool()
    for name in ("random", "entropy", "margin", "loss+diversity", "confidence"):
        plan = _plan(pool, k=7, audit_size=3, strategy=name, score="confidence")
        assert len(set(plan.manual.tolist())) + len(plan.probes_to_train) == 7  # probes compete with the pool
    top = _plan(pool, probes=Labeled.none(pool), k=7, strategy="confidence", score="confidence")
    assert top.manual.tolist() == np.argsort(-top.risk, kind="stable")[:7].tolist()
    with pytest.raises(ValueError, match="unknown selection strategy"):
        _plan(pool, strategy="nope")
    with pytest.raises(ValueError, match="unknown score"):
        _plan(pool, score="nope")
    with pytest.raises(ValueError, match="correctness values"):
        Labeled(pool, np.ones(3, bool))


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
    """Issue 14, cold start: fit labels with no link between the risk score and errors (here every one of them
    right, or right only where the predicted loss is high) fit a flat calibrator: the plan says it cannot rank."""
    pool = _pool()
    loss = np.random.default_rng(4).uniform(0.0, 2.0, 60)
    for correct in (np.ones(60, bool), loss > 1.0):  # all right; or right only where the loss is *high*
        plan = _plan(pool, fit=Labeled(_view(loss), correct))
        assert plan.calibrator is not None and not plan.calibrator.ranks()
        assert not plan.can_rank and not plan.summary()["can_rank"]
        assert "cannot rank yet" in plan.summary()["message"]
    ranking = _plan(pool, fit=_labeled(60))
    assert ranking.can_rank and ranking.summary()["can_rank"] and "cannot rank" not in ranking.summary()["message"]
    few = _plan(pool, fit=_labeled(MIN_CALIBRATION_LABELS - 1))
    assert few.calibrator is None and few.can_rank  # too few labels to tell: the score's own order stands
