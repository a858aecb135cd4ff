"""One active-learning cycle: from a scored pool and the calibration labels to the three bands.

Shared by the simulator (model/sim/simulate.py) and the Label Studio worker, so that both make the same
decision: numpy arrays in, a :class:`CyclePlan` out.

- manual: the selection strategy's top ``k`` (model/al/strategies.py), for people, most wanted first.
- automatic: the certified band (predicted loss <= the threshold certified by model/al/certify.py)
  minus the manual picks and minus the audit sample; its pre-labels may be accepted in bulk.
- audit: a uniform random sample for people to verify (model/al/bands.py). It is drawn from the
  certified band when there is one; while nothing is certified it is drawn from the lowest-loss half
  of the non-manual pool, where the band will appear first, so the calibration labels grow where
  certification needs them instead of where the model is hopeless.
- deferred: the rest waits for a better model.

Calibration labels (the ``calib_*`` arrays) are the labels chosen independently of the model's
scores: the random seed set's holdout half (:func:`is_calibration_holdout`) and the audit samples.
They never train the model (certifying on training images overstates precision) and labels picked
by a strategy never calibrate (they are the model's worst cases). Caveat: an audit sample is uniform
within the band of the model that drew it; a later model's band differs, so later certificates see
old-band images more densely than the rest. Simulations measure what this costs (the benchmark's
repeated-audit check), and the random holdout keeps every region of the pool represented.
"""

from __future__ import annotations

import hashlib
import logging
import time
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from numpy.typing import ArrayLike

from model.al.bands import AUTOMATIC, DEFERRED, MANUAL, assign_bands, draw_audit_sample
from model.al.calibration import BandEstimate, CorrectnessCalibrator, band_estimate, score_from_loss
from model.al.certify import Certificate, certify_threshold
from model.al.strategies import PoolView, Strategy, get_strategy

logger = logging.getLogger(__name__)

MIN_CALIBRATION_LABELS = 20
"""Fewer calibration labels than this fit no calibrator: an isotonic fit on a handful of labels
claims certainty it does not have (e.g. five right answers give P(right) = 1 everywhere)."""

UNCERTIFIED_AUDIT_SHARE = 0.5
"""While nothing is certified, the audit is drawn from this lowest-loss share of the non-manual pool."""


def is_calibration_holdout(key: str, fraction: float = 0.5) -> bool:
    """Whether the random-origin label of ``key`` is held out of training for calibration only.

    A stable hash (SHA-1 of the key, first 8 bytes as a fraction of 2**64) rather than a random draw:
    the same image stays on the same side in every cycle, every process and every restart, so a
    calibration image can never leak into training later. Audit labels are calibration labels always;
    this decides only for the random seed set.
    """
    if not 0.0 <= fraction <= 1.0:
        raise ValueError(f"fraction must be in [0, 1], got {fraction}")
    digest = hashlib.sha1(str(key).encode("utf-8")).digest()
    return int.from_bytes(digest[:8], "big") / 2.0**64 < fraction


@dataclass
class CyclePlan:
    """The decision of one cycle over a pool of N images; index arrays point into that pool.

    bands: per pool image who labels it now: MANUAL (people: the strategy's picks and the audit
    sample), AUTOMATIC (the model, bulk-acceptable) or DEFERRED (nobody yet). ``manual`` holds only
    the strategy's picks, in priority order; ``audit`` the audit sample; ``automatic`` the certified
    band minus both; ``audit_candidates`` the set the audit was drawn from.
    scores: the Label Studio score per pool image, decreasing in predicted loss (calibration.py).
    estimates: band name -> expected accuracy from the calibrator, None without one (or when empty).
    timings: seconds spent in "select" and "certify".
    """

    certificate: Certificate
    calibrator: CorrectnessCalibrator | None
    scores: np.ndarray
    bands: np.ndarray
    manual: np.ndarray
    automatic: np.ndarray
    audit: np.ndarray
    audit_candidates: np.ndarray
    audit_source: str
    deferred: np.ndarray
    estimates: dict[str, BandEstimate | None]
    timings: dict[str, float] = field(default_factory=dict)

    @property
    def can_rank(self) -> bool:
        """False when the calibration labels show that the predicted loss does not yet tell right from wrong
        (a flat calibrator): then no order is shown, and Label Studio should sample uniformly. Without a
        calibrator (too few labels to tell) the predicted loss orders the queue, as the method says."""
        return self.calibrator is None or self.calibrator.ranks()

    def summary(self) -> dict[str, Any]:
        """JSON-ready: counts, the certificate, expected accuracy per band, and a one-line message."""
        cert = self.certificate
        counts = {
            "pool": int(len(self.bands)),
            "manual": int(len(self.manual)),
            "automatic": int(len(self.automatic)),
            "audit": int(len(self.audit)),
            "deferred": int(len(self.deferred)),
        }
        expected = {band: (None if est is None else est.expected_accuracy) for band, est in self.estimates.items()}
        if cert.threshold is None:
            message = (
                f"nothing certified: {cert.message}; audit of {counts['audit']} drawn from the {self.audit_source}"
            )
        else:
            message = (
                f"{counts['automatic']} of {counts['pool']} images auto-labeled at predicted loss <= "
                f"{cert.threshold:.4g} (precision >= {cert.lower_bound:.3f} with confidence {1 - cert.delta:g}); "
                f"{counts['manual']} for people, {counts['audit']} to audit, {counts['deferred']} deferred"
            )
        if not self.can_rank:
            message = (
                "this model cannot rank yet (on the calibration labels its predicted loss does not tell right "
                f"from wrong), so the queue is sampled uniformly; {message}"
            )
        return {
            "counts": counts,
            "can_rank": self.can_rank,
            "threshold": cert.threshold,
            "lower_bound": cert.lower_bound,
            "calibration_precision": cert.precision,
            "n_calibration": cert.n_calibration,
            "more_labels_needed": cert.more_labels_needed,
            "target": cert.target,
            "delta": cert.delta,
            "expected_accuracy": expected,
            "audit_source": self.audit_source,
            "message": message,
        }


def plan_cycle(
    pool: PoolView,
    calib_loss: ArrayLike,
    calib_correct: ArrayLike,
    k: int,
    audit_size: int,
    strategy: str | Strategy = "loss",
    target: float = 0.95,
    delta: float = 0.05,
    rng: np.random.Generator | None = None,
    estimate_k: int = 100,
) -> CyclePlan:
    """Split ``pool`` into manual, automatic, audit and deferred for one cycle.

    calib_loss, calib_correct: the CURRENT model's predicted loss on each calibration image and
    whether it got every head right; calibration images are labeled, so they are not in ``pool``.
    Only labels chosen independently of the model's scores belong here (see the module docstring).
    k: how many images the strategy sends to people; audit_size: how many to verify at random.
    estimate_k: bucket size of the best/worst-case estimates (calibration.band_estimate).
    """
    rng = rng if rng is not None else np.random.default_rng()
    chooser = get_strategy(strategy) if isinstance(strategy, str) else strategy
    calib_loss = np.asarray(calib_loss, dtype=np.float64).reshape(-1)
    calib_correct = np.asarray(calib_correct, dtype=bool).reshape(-1)
    if calib_loss.shape != calib_correct.shape:
        raise ValueError(
            f"calib_loss and calib_correct must have equal lengths, got {calib_loss.shape} and {calib_correct.shape}"
        )
    loss = pool.predicted_loss
    n = len(pool)

    t0 = time.perf_counter()
    manual = np.asarray(chooser.select(pool, min(k, n), rng), dtype=np.int64)
    t_select = time.perf_counter() - t0

    t0 = time.perf_counter()
    certificate = certify_threshold(calib_loss, calib_correct, target=target, delta=delta)
    calibrator = (
        CorrectnessCalibrator().fit(calib_loss, calib_correct) if len(calib_loss) >= MIN_CALIBRATION_LABELS else None
    )
    bands = assign_bands(loss, manual, certificate.threshold)
    not_manual = np.flatnonzero(bands != MANUAL)
    if certificate.threshold is not None:
        candidates, source = np.flatnonzero(bands == AUTOMATIC), "certified band"
    else:
        share = int(np.ceil(UNCERTIFIED_AUDIT_SHARE * len(not_manual)))
        candidates = not_manual[np.argsort(loss[not_manual], kind="stable")[:share]]
        source = f"lowest-loss {UNCERTIFIED_AUDIT_SHARE:.0%} of the pool (nothing certified yet)"
    audit = np.sort(draw_audit_sample(candidates, audit_size, rng))
    bands[audit] = MANUAL
    automatic = np.flatnonzero(bands == AUTOMATIC)
    deferred = np.flatnonzero(bands == DEFERRED)
    estimates: dict[str, BandEstimate | None] = {
        name: (band_estimate(calibrator, loss[idx], estimate_k) if calibrator is not None and len(idx) else None)
        for name, idx in ((MANUAL, manual), (AUTOMATIC, automatic), (DEFERRED, deferred))
    }
    t_certify = time.perf_counter() - t0

    plan = CyclePlan(
        certificate=certificate,
        calibrator=calibrator,
        scores=score_from_loss(loss, calibrator),
        bands=bands,
        manual=manual,
        automatic=automatic,
        audit=audit,
        audit_candidates=np.sort(candidates),
        audit_source=source,
        deferred=deferred,
        estimates=estimates,
        timings={"select": t_select, "certify": t_certify},
    )
    logger.info("cycle plan: %s", plan.summary()["message"])
    return plan
