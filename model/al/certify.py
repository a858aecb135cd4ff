"""Certify a risk threshold under which pre-labels can be accepted without review.

The band of a threshold t is {images with risk score <= t} (model/al/confidence.py: by default minus
the learned confidence's logit; the loss module's predicted loss when asked for); its precision is the
fraction of them whose prediction is right on ALL heads. We want the loosest t whose precision is at
least ``target`` with confidence 1 - delta, for the pool the probes were drawn from.

- Each threshold is tested with a one-sided exact binomial bound (Clopper & Pearson, "The use of
  confidence or fiducial limits illustrated in the case of the binomial", Biometrika 1934).
- Many thresholds are tested without splitting delta by fixed-sequence testing (Bauer, "Multiple
  testing in clinical trials", Stat. Med. 1991; Angelopoulos, Bates, Candes, Jordan & Lei, "Learn then
  Test", 2021): walk from strict to loose, each test at level delta, stop at the first failure. The
  family-wise error stays <= delta because the order is fixed before looking at correctness: the
  candidate thresholds depend only on the probes' risk scores.

THE LABELS MUST BE PROBES: a uniform random sample of the very pool the certificate speaks for, that
the model did not train on and the risk score was not fitted on (model/al/cycle.py keeps them so).
Labels that active learning picked make the model look worse, labels that fitted the confidence make
it look better, and audits drawn from an earlier model's band over-represent that band: 13-18 % of
bands certified on such labels missed the target in the benchmark that led here (issue 14).
A certificate records which pool it is for (:func:`pool_digest`), and holds for that pool only.
"""

from __future__ import annotations

import hashlib
import logging
import math
from collections.abc import Iterable
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np
from numpy.typing import ArrayLike
from scipy.stats import beta

logger = logging.getLogger(__name__)


def _cp_lower(successes: np.ndarray, n: np.ndarray, delta: float) -> np.ndarray:
    """Vectorised one-sided Clopper-Pearson lower bound: the delta quantile of Beta(s, n - s + 1)."""
    successes = np.asarray(successes, dtype=np.float64)
    n = np.asarray(n, dtype=np.float64)
    safe_s = np.maximum(successes, 1.0)  # Beta(0, .) is undefined; the bound is 0 there anyway
    return np.where(successes > 0, beta.ppf(delta, safe_s, n - successes + 1.0), 0.0)


def clopper_pearson_lower(successes: int, n: int, delta: float) -> float:
    """One-sided lower confidence bound on a binomial proportion: P(p >= bound) >= 1 - delta.

    Clopper & Pearson (1934). 0 when n == 0 or successes == 0. With s == n it is delta ** (1 / n),
    e.g. 59 right out of 59 gives 0.9505 at delta = 0.05.
    """
    if not 0 < delta < 1:
        raise ValueError(f"delta must be in (0, 1), got {delta}")
    if n < 0 or not 0 <= successes <= n:
        raise ValueError(f"need 0 <= successes <= n, got successes={successes}, n={n}")
    if n == 0:
        return 0.0
    return float(_cp_lower(np.array(successes), np.array(n), delta))


def labels_needed(target: float, delta: float) -> int:
    """The smallest n such that n labels, all right, give a Clopper-Pearson lower bound >= target.

    Solves delta ** (1 / n) >= target, i.e. n >= log(delta) / log(target); 59 at target .95, delta .05.
    No band with fewer labels can ever be certified.
    """
    if not 0 < target < 1:
        raise ValueError(f"target must be in (0, 1), got {target}")
    if not 0 < delta < 1:
        raise ValueError(f"delta must be in (0, 1), got {delta}")
    n = max(1, math.ceil(math.log(delta) / math.log(target)))
    while clopper_pearson_lower(n, n, delta) < target:  # guard against rounding in the closed form
        n += 1
    while n > 1 and clopper_pearson_lower(n - 1, n - 1, delta) >= target:
        n -= 1
    return n


def pool_digest(keys: Iterable[str]) -> str:
    """A short fingerprint of a pool (its images' keys, in any order): what a certificate speaks for."""
    h = hashlib.sha256()
    for key in sorted(str(k) for k in keys):
        h.update(key.encode("utf-8") + b"\0")
    return h.hexdigest()[:16]


@dataclass
class Certificate:
    """The outcome of :func:`certify_threshold`; JSON-serialisable through to_dict()/from_dict().

    threshold: the certified risk threshold (band = risk <= threshold), None if none.
    lower_bound: Clopper-Pearson lower bound on the band's precision at that threshold.
    precision: empirical precision of the probes in the band.
    n_calibration: how many probes were tested.
    more_labels_needed: how many more probes could make certification possible at all, None when the
        count is not what is missing.
    pool: :func:`pool_digest` of the pool the probes were drawn from, None when the caller named none.
    """

    threshold: float | None
    lower_bound: float | None
    precision: float | None
    n_calibration: int
    n_in_band: int
    target: float
    delta: float
    more_labels_needed: int | None
    message: str
    pool: str | None = None

    def speaks_for(self, pool: str) -> bool:
        """Whether this certificate holds for the pool of digest ``pool``: only the one its probes came from."""
        return self.threshold is not None and self.pool is not None and self.pool == pool

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Certificate:
        return cls(**data)


def certify_threshold(
    risk: ArrayLike,
    correct: ArrayLike,
    target: float = 0.95,
    delta: float = 0.05,
    min_in_band: int | None = None,
    pool: str | None = None,
) -> Certificate:
    """The loosest risk threshold whose band precision is >= target with confidence 1 - delta.

    risk, correct: one entry per probe (see the module docstring: a uniform random sample of the pool
    ``pool`` names, never trained or fitted on); correct = the prediction was right on all heads.
    Candidate thresholds are the sorted unique probe risks, strict to loose. Testing starts at the first
    candidate whose band holds at least ``min_in_band`` probes (default and minimum:
    :func:`labels_needed`, since smaller bands can never pass); a larger start tolerates a few errors
    among the lowest risks at the price of never certifying a tighter band. Each candidate passes when
    the Clopper-Pearson lower bound on its band precision is >= target; the first failure ends the walk
    (fixed-sequence testing), even if a looser threshold would pass again.
    """
    scores = np.asarray(risk, dtype=np.float64)
    ok = np.asarray(correct, dtype=bool)
    if scores.ndim != 1 or scores.shape != ok.shape:
        raise ValueError(f"risk and correct must be 1-D of equal length, got {scores.shape} and {ok.shape}")
    if not np.all(np.isfinite(scores)):
        raise ValueError("risk contains NaN or infinity; rescore the probes")
    n_cal = int(scores.shape[0])
    start = max(labels_needed(target, delta), min_in_band or 0)

    def refuse(message: str, more: int | None) -> Certificate:
        logger.info("no certified threshold: %s", message)
        return Certificate(None, None, None, n_cal, 0, target, delta, more, message, pool)

    if n_cal < start:
        more = start - n_cal
        return refuse(
            f"{n_cal} probes; certifying precision >= {target} at confidence {1 - delta:g} needs a band of at "
            f"least {start}, so label at least {more} more probes (images drawn at random from the pool)",
            more,
        )
    order = np.argsort(scores, kind="stable")
    sorted_risk = scores[order]
    cum_correct = np.cumsum(ok[order])
    thresholds = np.unique(sorted_risk)
    band_sizes = np.searchsorted(sorted_risk, thresholds, side="right")
    tested = band_sizes >= start
    thresholds, band_sizes = thresholds[tested], band_sizes[tested]
    successes = cum_correct[band_sizes - 1]
    lower = _cp_lower(successes, band_sizes, delta)
    failures = np.flatnonzero(lower < target)
    n_passed = int(failures[0]) if failures.size else len(thresholds)
    if n_passed == 0:
        return refuse(
            f"the {band_sizes[0]} lowest-risk probes are {successes[0] / band_sizes[0]:.3f} right "
            f"(lower bound {lower[0]:.3f} < target {target}); the model is not provably precise enough yet",
            None,
        )
    i = n_passed - 1
    cert = Certificate(
        threshold=float(thresholds[i]),
        lower_bound=float(lower[i]),
        precision=float(successes[i] / band_sizes[i]),
        n_calibration=n_cal,
        n_in_band=int(band_sizes[i]),
        target=target,
        delta=delta,
        more_labels_needed=None,
        message=(
            f"risk <= {thresholds[i]:.4g} certified: precision >= {lower[i]:.3f} with confidence "
            f"{1 - delta:g} ({successes[i]}/{band_sizes[i]} probes right)"
        ),
        pool=pool,
    )
    logger.info(cert.message)
    return cert
