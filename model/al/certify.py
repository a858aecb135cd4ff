"""Certify a risk threshold under which pre-labels can be accepted without review.

The band of a threshold t is {images with risk score <= t} (model/al/confidence.py: by default minus
the learned confidence's logit; the loss module's predicted loss when asked for); its precision is the
fraction of them whose prediction is right on ALL heads. We want the loosest t whose precision is at
least ``target`` with confidence 1 - delta, for the pool the probes were drawn from.

- Each threshold is tested with a one-sided exact binomial bound (Clopper & Pearson, "The use of
  confidence or fiducial limits illustrated in the case of the binomial", Biometrika 1934).
- Many thresholds are tested without splitting delta by fixed-sequence testing (Bauer, "Multiple
  testing in clinical trials", Stat. Med. 1991; Angelopoulos, Bates, Candes, Jordan & Lei, "Learn then
  Test", 2021): walk from strict to loose, each test at the walk's level, stop at the first failure. A
  walk's family-wise error stays <= its level because the order is fixed before looking at correctness:
  the candidate thresholds depend only on the probes' risk scores.
- A single walk must start at a band of labels_needed probes (59 at 0.95 / 0.05) and find ALL of them
  right: one wrong prediction among the lowest-risk probes ends it, even under a band that holds 97 %. In
  the full benchmark that made the certified share flip between 100 % and 18 % (or 84 % and 0 %) from one
  cycle to the next. So several walks run, starting at bands of s, 2s, 4s, ... probes, each at level
  delta / m (Bonferroni over the m walks, so the family-wise error stays <= delta), and the loosest
  threshold any walk certifies wins. A later start tolerates a few errors at the lowest risks; m is as
  large as the probes allow (:func:`walk_starts`), fixed by their count before any is looked at, and is 1,
  the single walk at delta, while fewer than 2 x labels_needed(delta / 2) probes stand.

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


def walk_starts(n_probes: int, target: float, delta: float) -> tuple[list[int], float]:
    """The band sizes the walks of :func:`certify_threshold` start at for ``n_probes`` probes, and each walk's level.

    m walks at delta / m, starting at s = labels_needed(target, delta / m) and doubling (s, 2s, ..., 2^(m-1) s):
    the most walks whose last start still fits in the probes, at least one. Doubling spreads the starts evenly
    on the scale that matters, the number of errors a band can hold and still pass.
    """
    m = 1
    while labels_needed(target, delta / (m + 1)) * 2**m <= n_probes:
        m += 1
    first = labels_needed(target, delta / m)
    return [first * 2**j for j in range(m)], delta / m


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
    pool: str | None = None,
) -> Certificate:
    """The loosest risk threshold whose band precision is >= target with confidence 1 - delta.

    risk, correct: one entry per probe (see the module docstring: a uniform random sample of the pool
    ``pool`` names, never trained or fitted on); correct = the prediction was right on all heads.
    Candidate thresholds are the sorted unique probe risks, strict to loose. Each walk (:func:`walk_starts`)
    tests them from the first whose band holds its start's count of probes; a candidate passes when the
    Clopper-Pearson lower bound on its band precision, at the walk's level, is >= target, and the walk's
    first failure ends it (fixed-sequence testing), even if a looser threshold would pass again. The
    certificate is the loosest threshold any walk passed.
    """
    scores = np.asarray(risk, dtype=np.float64)
    ok = np.asarray(correct, dtype=bool)
    if scores.ndim != 1 or scores.shape != ok.shape:
        raise ValueError(f"risk and correct must be 1-D of equal length, got {scores.shape} and {ok.shape}")
    if not np.all(np.isfinite(scores)):
        raise ValueError("risk contains NaN or infinity; rescore the probes")
    n_cal = int(scores.shape[0])
    starts, level = walk_starts(n_cal, target, delta)

    def refuse(message: str, more: int | None) -> Certificate:
        logger.info("no certified threshold: %s", message)
        return Certificate(None, None, None, n_cal, 0, target, delta, more, message, pool)

    if n_cal < starts[0]:
        more = starts[0] - n_cal
        return refuse(
            f"{n_cal} probes; certifying precision >= {target} at confidence {1 - delta:g} needs a band of at "
            f"least {starts[0]}, so label at least {more} more probes (images drawn at random from the pool)",
            more,
        )
    order = np.argsort(scores, kind="stable")
    sorted_risk = scores[order]
    cum_correct = np.cumsum(ok[order])
    thresholds = np.unique(sorted_risk)
    band_sizes = np.searchsorted(sorted_risk, thresholds, side="right")
    successes = cum_correct[band_sizes - 1]
    passes = _cp_lower(successes, band_sizes, level) >= target
    best, best_start = -1, starts[0]  # index of the loosest threshold any walk passed, and that walk's start
    for start in starts:
        first = int(np.searchsorted(band_sizes, start))  # band_sizes rise: the walk's first candidate
        failed = np.flatnonzero(~passes[first:])
        last = first + (int(failed[0]) if failed.size else len(thresholds) - first) - 1
        if last >= first and last > best:
            best, best_start = last, start
    if best < 0:
        first = int(np.searchsorted(band_sizes, starts[0]))
        size, right = int(band_sizes[first]), int(successes[first])
        return refuse(
            f"the {size} lowest-risk probes are {right / size:.3f} right (lower bound "
            f"{clopper_pearson_lower(right, size, level):.3f} < target {target}), and no walk from a larger band "
            f"({', '.join(map(str, starts[1:])) or 'none with these probes'}) passed either; the model is not "
            "provably precise enough yet",
            None,
        )
    walks = f"the walk from the {best_start} lowest-risk probes, one of {len(starts)} at {level:.3g} each"
    lower = float(_cp_lower(successes[best], band_sizes[best], level))
    cert = Certificate(
        threshold=float(thresholds[best]),
        lower_bound=lower,
        precision=float(successes[best] / band_sizes[best]),
        n_calibration=n_cal,
        n_in_band=int(band_sizes[best]),
        target=target,
        delta=delta,
        more_labels_needed=None,
        message=(
            f"risk <= {thresholds[best]:.4g} certified: precision >= {lower:.3f} with confidence "
            f"{1 - delta:g} ({successes[best]}/{band_sizes[best]} probes right; {walks})"
        ),
        pool=pool,
    )
    logger.info(cert.message)
    return cert
