"""One active-learning cycle: from a scored pool and the labels people gave to the bands.

Shared by the simulator (model/sim/simulate.py) and the Label Studio worker, so that both make the same
decision: numpy arrays in, a :class:`CyclePlan` out.

Labels people give have one of four roles, and each role's labels are used for one thing only:

- train: the random seed set's training half and the strategy's picks. They train the classifier.
- fit: the seed set's holdout half (:func:`is_calibration_holdout`) and the audits. They fit the cycle's
  risk score (model/al/confidence.py: the learned confidence that every head is right) and its
  monotone calibration to P(every head right), the Label Studio score. Never trained on.
- probes: a uniform random sample of the unlabeled pool, topped up every cycle, that nothing is trained
  or fitted on; the certificate (model/al/certify.py) is computed on them alone.
- audit: a uniform random sample of the certified band (or, while nothing is certified, of the
  lowest-risk half of the pool): a quality check of the band people see, then fit labels.

Why the probes stay an honest sample of the pool the certificate speaks for: they were drawn uniformly
from it, and every later decision that takes images out of the pool treats probes and pool alike. The
strategy ranks pool and probes together; a probe it picks leaves the probes for training (its label is
there already: nobody labels it twice, and no label is wasted), exactly as a pool image it picks leaves
the pool. New probes are drawn uniformly from what stays unlabeled, so survivors plus new ones are again
a uniform sample of the remaining pool (a uniform m-subset plus a uniform n-subset of the rest is a
uniform (m + n)-subset). No model ever trains on a probe while it certifies, and no certificate is
reused: each cycle certifies its own model on the pool it scores, and the certificate names that pool.
When people accept the certified band in bulk, its images leave the pool; the probes in that band
(``CyclePlan.probes_in_band``) must leave the probes with them, by the same rule, and train from then on.
The one asymmetry left is the audit draw (pool images only), which is uniform within the band and so
leaves the band's precision unchanged in expectation; the benchmark measures the miss rate as run.

The bands of the pool:
- manual: the strategy's top ``k`` (model/al/strategies.py), for people, most wanted first; plus the audit
  and the new probes, which people label too.
- automatic: the certified band (risk <= the certified threshold) minus the manual band; its pre-labels
  may be accepted in bulk.
- deferred: the rest waits for a better model.
"""

from __future__ import annotations

import hashlib
import logging
import time
from dataclasses import dataclass, field, replace
from typing import Any

import numpy as np

from model.al.bands import AUTOMATIC, DEFERRED, MANUAL, assign_bands, draw_audit_sample
from model.al.calibration import BandEstimate, CorrectnessCalibrator, band_estimate, score_from_loss
from model.al.certify import Certificate, certify_threshold
from model.al.confidence import RiskScore, fit_risk_score
from model.al.strategies import PoolView, Strategy, get_strategy

logger = logging.getLogger(__name__)

MIN_CALIBRATION_LABELS = 20
"""Fewer fit labels than this fit no calibrator: a curve fitted on a handful of labels claims certainty it
does not have (e.g. five right answers put P(right) near 1 everywhere)."""

UNCERTIFIED_AUDIT_SHARE = 0.5
"""While nothing is certified, the audit is drawn from this lowest-risk share of the non-manual pool."""


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
class Labeled:
    """Labeled images as the current model sees them: its outputs, and whether it got every head right."""

    view: PoolView
    correct: np.ndarray

    def __post_init__(self) -> None:
        self.correct = np.asarray(self.correct, dtype=bool).reshape(-1)
        if len(self.correct) != len(self.view):
            raise ValueError(f"{len(self.view)} labeled images but {len(self.correct)} correctness values")

    @classmethod
    def none(cls, like: PoolView) -> Labeled:
        """No labeled images (with ``like``'s heads)."""
        return cls(like.subset(np.zeros(0, dtype=np.int64)), np.zeros(0, dtype=bool))


@dataclass
class CyclePlan:
    """The decision of one cycle over a pool of N images; index arrays point into that pool.

    bands: per pool image who labels it now: MANUAL (people: the strategy's picks, the audit and the new
    probes), AUTOMATIC (the model, bulk-acceptable) or DEFERRED (nobody yet). ``manual`` holds only the
    strategy's picks from the pool, in priority order; ``probes_to_train`` the probes (indices into the
    probes passed in) the strategy picked, whose labels train from now on; ``audit`` the audit sample;
    ``probes`` the new probes; ``automatic`` the certified band minus the manual band; ``audit_candidates``
    the set the audit was drawn from; ``probes_in_band`` the probes passed in whose risk is within the
    certified threshold: if the band is accepted, they leave the probes as its images leave the pool.
    risk_score: the function that scored, ranked and banded (model.al.confidence.RiskScore); risk: its
    value per pool image. scores: the Label Studio score per pool image, decreasing in risk.
    estimates: band name -> expected accuracy from the calibrator, None without one (or when empty).
    audit_check: (right, labeled) among the fit labels (holdout and earlier audits) in the certified band:
    a check beside the certificate, optimistic because the risk score was fitted on them.
    timings: seconds spent in "select" and "certify".
    """

    certificate: Certificate
    calibrator: CorrectnessCalibrator | None
    risk_score: RiskScore
    risk: np.ndarray
    scores: np.ndarray
    bands: np.ndarray
    manual: np.ndarray
    probes_to_train: np.ndarray
    automatic: np.ndarray
    audit: np.ndarray
    probes: np.ndarray
    audit_candidates: np.ndarray
    audit_source: str
    deferred: np.ndarray
    estimates: dict[str, BandEstimate | None]
    probes_in_band: np.ndarray = field(default_factory=lambda: np.zeros(0, dtype=np.int64))
    audit_check: tuple[int, int] | None = None
    timings: dict[str, float] = field(default_factory=dict)

    @property
    def can_rank(self) -> bool:
        """False when the fit labels show that the risk score does not yet tell right from wrong (a flat
        calibrator): then no order is shown, and Label Studio should sample uniformly. Without a
        calibrator (too few labels to tell) the risk score orders the queue."""
        return self.calibrator is None or self.calibrator.ranks()

    def summary(self) -> dict[str, Any]:
        """JSON-ready: counts, the certificate, expected accuracy per band, and a one-line message."""
        cert = self.certificate
        counts = {
            "pool": int(len(self.bands)),
            "manual": int(len(self.manual)),
            "automatic": int(len(self.automatic)),
            "audit": int(len(self.audit)),
            "probes": int(len(self.probes)),
            "probes_to_train": int(len(self.probes_to_train)),
            "deferred": int(len(self.deferred)),
        }
        expected = {band: (None if est is None else est.expected_accuracy) for band, est in self.estimates.items()}
        if cert.threshold is None:
            message = (
                f"nothing certified: {cert.message}; audit of {counts['audit']} drawn from the {self.audit_source}"
            )
        else:
            message = (
                f"{counts['automatic']} of {counts['pool']} images auto-labeled at risk <= {cert.threshold:.4g} "
                f"(precision >= {cert.lower_bound:.3f} with confidence {1 - cert.delta:g}, on "
                f"{cert.n_calibration} random probes); {counts['manual']} for people, {counts['audit']} to audit, "
                f"{counts['probes']} new probes, {counts['deferred']} deferred"
            )
            if self.audit_check is not None and self.audit_check[1]:
                message += (
                    f"; audit check: {self.audit_check[0]}/{self.audit_check[1]} earlier labels in the band right"
                )
        if not self.can_rank:
            message = (
                "this model cannot rank yet (on the labels it was checked on, its risk score does not tell right "
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
            "audit_check": None if self.audit_check is None else list(self.audit_check),
            "score": self.risk_score.source,
            "pool": cert.pool,
            "message": message,
        }


def probe_draw(probe_size: int, unlabeled: int) -> int:
    """How many new probes a cycle draws when ``unlabeled`` images stay unlabeled after its picks and audit.

    ``probe_size``, but never more than half of them: probes are labels people spend so that the rest can
    be accepted in bulk, and beyond half, a small project's people would label more images to certify
    the band than the band could ever spare them (a pool of 87 with 17 picks, 10 audits and 60 probes
    leaves nothing to accept). Halving keeps the draw uniform over what stays unlabeled, so the probes
    stay an honest sample of the pool.
    """
    return min(probe_size, unlabeled // 2)


def plan_cycle(
    pool: PoolView,
    fit: Labeled,
    probes: Labeled,
    k: int,
    audit_size: int,
    probe_size: int = 0,
    strategy: str | Strategy = "confidence",
    score: str = "confidence",
    target: float = 0.95,
    delta: float = 0.05,
    rng: np.random.Generator | None = None,
    estimate_k: int = 100,
    pool_id: str | None = None,
) -> CyclePlan:
    """Split ``pool`` (the unlabeled images) into manual, automatic, audit, new probes and deferred.

    fit: the CURRENT model's outputs on the fit labels (seed holdout and audits) and whether it got them
    right; they fit the risk score ``score`` (model.al.confidence.RISK_SCORES) and its calibrator.
    probes: the same for the probes still standing; they certify, and nothing else.
    k: how many images the strategy picks (pool and probes together); audit_size: how many to audit;
    probe_size: how many new probes to draw (at most half of what stays unlabeled, :func:`probe_draw`).
    pool_id: model.al.certify.pool_digest of the pool, which the certificate records. estimate_k: bucket
    size of the best/worst-case estimates.
    """
    rng = rng if rng is not None else np.random.default_rng()
    chooser = get_strategy(strategy) if isinstance(strategy, str) else strategy
    n = len(pool)

    t0 = time.perf_counter()
    risk_score = fit_risk_score(score, fit.view.predicted_loss, fit.view.probs, fit.correct)

    def scored(view: PoolView) -> PoolView:
        return replace(view, risk=risk_score(view.predicted_loss, view.probs))

    pool, fit_view, probe_view = scored(pool), scored(fit.view), scored(probes.view)
    assert pool.risk is not None and fit_view.risk is not None and probe_view.risk is not None
    risk = pool.risk
    both = PoolView.concat(pool, probe_view)
    picks = np.asarray(chooser.select(both, min(k, len(both)), rng), dtype=np.int64)
    manual, probes_to_train = picks[picks < n], np.sort(picks[picks >= n] - n)
    t_select = time.perf_counter() - t0

    t0 = time.perf_counter()
    certificate = certify_threshold(probe_view.risk, probes.correct, target=target, delta=delta, pool=pool_id)
    calibrator = (
        CorrectnessCalibrator().fit(fit_view.risk, fit.correct) if len(fit.correct) >= MIN_CALIBRATION_LABELS else None
    )
    bands = assign_bands(risk, manual, certificate.threshold)
    not_manual = np.flatnonzero(bands != MANUAL)
    audit_check = None
    probes_in_band: np.ndarray = np.zeros(0, dtype=np.int64)
    if certificate.threshold is not None:
        probes_in_band = np.flatnonzero(probe_view.risk <= certificate.threshold)
        candidates, source = np.flatnonzero(bands == AUTOMATIC), "certified band"
        in_band = fit_view.risk <= certificate.threshold
        audit_check = (int(fit.correct[in_band].sum()), int(in_band.sum()))
    else:
        share = int(np.ceil(UNCERTIFIED_AUDIT_SHARE * len(not_manual)))
        candidates = not_manual[np.argsort(risk[not_manual], kind="stable")[:share]]
        source = f"lowest-risk {UNCERTIFIED_AUDIT_SHARE:.0%} of the pool (nothing certified yet)"
    audit = np.sort(draw_audit_sample(candidates, audit_size, rng))
    bands[audit] = MANUAL
    left = np.flatnonzero(bands != MANUAL)
    new_probes = np.sort(draw_audit_sample(left, probe_draw(probe_size, len(left)), rng))
    bands[new_probes] = MANUAL
    automatic = np.flatnonzero(bands == AUTOMATIC)
    deferred = np.flatnonzero(bands == DEFERRED)
    estimates: dict[str, BandEstimate | None] = {
        name: (band_estimate(calibrator, risk[idx], estimate_k) if calibrator is not None and len(idx) else None)
        for name, idx in ((MANUAL, manual), (AUTOMATIC, automatic), (DEFERRED, deferred))
    }
    t_certify = time.perf_counter() - t0

    plan = CyclePlan(
        certificate=certificate,
        calibrator=calibrator,
        risk_score=risk_score,
        risk=risk,
        scores=score_from_loss(risk, calibrator),
        bands=bands,
        manual=manual,
        probes_to_train=probes_to_train,
        automatic=automatic,
        audit=audit,
        probes=new_probes,
        audit_candidates=np.sort(candidates),
        audit_source=source,
        deferred=deferred,
        estimates=estimates,
        probes_in_band=probes_in_band,
        audit_check=audit_check,
        timings={"select": t_select, "certify": t_certify},
    )
    logger.info("cycle plan: %s", plan.summary()["message"])
    return plan
