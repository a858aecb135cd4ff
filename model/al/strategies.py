"""Selection strategies: which unlabeled images go to people next.

Each strategy only turns per-image model outputs (a :class:`PoolView`) into a ranked list of pool
indices; scoring the pool and running the labeling loop live elsewhere. All strategies share the
:class:`Strategy` interface so that a benchmark can compare them on the same data and seeds.

- ``loss``: Yoo & Kweon, "Learning Loss for Active Learning", CVPR 2019.
- ``loss+diversity``: the ``loss`` ranking re-ranked by k-center greedy, the core-set selection of
  Sener & Savarese, "Active Learning for Convolutional Neural Networks: A Core-Set Approach", ICLR 2018.
- ``confidence``: the cycle's risk score (model/al/confidence.py: by default minus the learned confidence
  that every head is right), highest first: uncertainty sampling on the one score that also ranks the
  queue and bands the pool.
- ``random``, ``entropy``, ``margin``: the usual baselines.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Protocol

import numpy as np


@dataclass
class PoolView:
    """What the strategies may look at for the N images of an unlabeled pool.

    predicted_loss: (N,) output of the loss-prediction module (higher = the model expects to be wrong).
    probs: head name -> (N, C) class probabilities, C >= 2.
    embeddings: (N, D) image embeddings, or None when the scorer did not keep them.
    risk: (N,) the cycle's risk score (model.al.confidence.RiskScore), set by model.al.cycle.plan_cycle.
    """

    predicted_loss: np.ndarray
    probs: dict[str, np.ndarray] = field(default_factory=dict)
    embeddings: np.ndarray | None = None
    risk: np.ndarray | None = None

    def __post_init__(self) -> None:
        self.predicted_loss = np.asarray(self.predicted_loss, dtype=np.float64)
        if self.predicted_loss.ndim != 1:
            raise ValueError(f"predicted_loss must be 1-D (N,), got shape {self.predicted_loss.shape}")
        # a NaN sorts anywhere and an inf always first: either would pick the batch, so refuse them as certify does
        if not np.all(np.isfinite(self.predicted_loss)):
            raise ValueError("predicted_loss has NaN or infinite values; the model's scores are unusable (retrain it)")
        n = len(self)
        self.probs = {head: np.asarray(p, dtype=np.float64) for head, p in self.probs.items()}
        for head, p in self.probs.items():
            if p.ndim != 2 or p.shape[0] != n or p.shape[1] < 2:
                raise ValueError(f"probs[{head!r}] must have shape (N={n}, C>=2), got {p.shape}")
            if not np.all(np.isfinite(p)):
                raise ValueError(
                    f"probs[{head!r}] has NaN or infinite values; the model's scores are unusable (retrain it)"
                )
        if self.embeddings is not None:
            self.embeddings = np.asarray(self.embeddings, dtype=np.float64)
            if self.embeddings.ndim != 2 or self.embeddings.shape[0] != n:
                raise ValueError(f"embeddings must have shape (N={n}, D), got {self.embeddings.shape}")
        if self.risk is not None:
            self.risk = np.asarray(self.risk, dtype=np.float64)
            if self.risk.shape != (n,) or not np.all(np.isfinite(self.risk)):
                raise ValueError(f"risk must be {n} finite values, got shape {self.risk.shape}")

    def subset(self, idx: np.ndarray) -> PoolView:
        """The view of the images ``idx``, in that order."""
        return PoolView(
            self.predicted_loss[idx],
            {h: p[idx] for h, p in self.probs.items()},
            None if self.embeddings is None else self.embeddings[idx],
            None if self.risk is None else self.risk[idx],
        )

    @staticmethod
    def concat(a: PoolView, b: PoolView) -> PoolView:
        """``a``'s images, then ``b``'s (same heads; embeddings and risk kept when both have them)."""

        def both(x: np.ndarray | None, y: np.ndarray | None) -> np.ndarray | None:
            return None if x is None or y is None else np.concatenate([x, y])

        return PoolView(
            np.concatenate([a.predicted_loss, b.predicted_loss]),
            {h: np.concatenate([p, b.probs[h]]) for h, p in a.probs.items()},
            both(a.embeddings, b.embeddings),
            both(a.risk, b.risk),
        )

    def __len__(self) -> int:
        return int(self.predicted_loss.shape[0])


class Strategy(Protocol):
    """Ranks a pool. ``select`` returns at most k distinct indices into the pool, first = most wanted."""

    name: str

    def select(self, pool: PoolView, k: int, rng: np.random.Generator) -> np.ndarray: ...


def _check_k(k: int) -> None:
    if k < 0:
        raise ValueError(f"k must be >= 0, got {k}")


def _top(values: np.ndarray, k: int) -> np.ndarray:
    """Indices of the k largest values, largest first; ties keep pool order (deterministic)."""
    return np.argsort(-values, kind="stable")[:k]


def _require_probs(pool: PoolView, strategy: str) -> None:
    if not pool.probs:
        raise ValueError(f"the {strategy!r} strategy needs class probabilities; PoolView.probs is empty")


@dataclass
class LossStrategy:
    """Top-k by predicted loss, highest first, among a random subset of the pool.

    Yoo & Kweon (CVPR 2019) draw a random subset (10,000 on CIFAR-10) before ranking: it keeps
    consecutive batches from piling into one region of the pool. ``subset_size=None`` ranks the whole
    pool. The subset is never smaller than k.
    """

    subset_size: int | None = 10_000
    name: str = field(default="loss", init=False)

    def select(self, pool: PoolView, k: int, rng: np.random.Generator) -> np.ndarray:
        _check_k(k)
        n = len(pool)
        if self.subset_size is None or max(self.subset_size, k) >= n:
            candidates: np.ndarray = np.arange(n)
        else:
            candidates = rng.choice(n, size=max(self.subset_size, k), replace=False)
        return candidates[_top(pool.predicted_loss[candidates], k)]


@dataclass
class LossDiversityStrategy:
    """The ``loss`` ranking, re-ranked so that near-duplicates do not fill a batch.

    Take the ``candidate_factor * k`` highest predicted losses (the ``loss`` strategy), then pick k of
    them by k-center greedy (Sener & Savarese, ICLR 2018) on L2-normalised embeddings: start from the
    highest loss, then repeatedly add the candidate farthest from everything picked so far. Distance
    ties go to the higher loss. The result is in pick order, so any prefix is itself spread out.
    """

    candidate_factor: int = 4
    subset_size: int | None = 10_000
    name: str = field(default="loss+diversity", init=False)

    def select(self, pool: PoolView, k: int, rng: np.random.Generator) -> np.ndarray:
        _check_k(k)
        if pool.embeddings is None:
            raise ValueError("the 'loss+diversity' strategy needs embeddings; score the pool with embeddings kept")
        candidates = LossStrategy(self.subset_size).select(pool, self.candidate_factor * k, rng)
        if len(candidates) == 0:
            return candidates[:0]
        emb = pool.embeddings[candidates]
        emb = emb / np.maximum(np.linalg.norm(emb, axis=1, keepdims=True), 1e-12)
        picked = [0]  # candidates are loss-ranked: position 0 is the highest loss
        min_dist = np.linalg.norm(emb - emb[0], axis=1)
        min_dist[0] = -np.inf
        for _ in range(min(k, len(candidates)) - 1):
            nxt = int(np.argmax(min_dist))  # first maximum = highest loss among equally distant
            picked.append(nxt)
            min_dist = np.minimum(min_dist, np.linalg.norm(emb - emb[nxt], axis=1))
            min_dist[picked] = -np.inf
        return candidates[np.asarray(picked)]


@dataclass
class RandomStrategy:
    """Uniform random sample without replacement: the baseline every method must beat."""

    name: str = field(default="random", init=False)

    def select(self, pool: PoolView, k: int, rng: np.random.Generator) -> np.ndarray:
        _check_k(k)
        return rng.choice(len(pool), size=min(k, len(pool)), replace=False)


@dataclass
class EntropyStrategy:
    """Highest predictive entropy first, summed over heads (the heads are labeled together)."""

    name: str = field(default="entropy", init=False)

    def select(self, pool: PoolView, k: int, rng: np.random.Generator) -> np.ndarray:
        _check_k(k)
        _require_probs(pool, self.name)
        entropy = sum(-(p * np.log(np.clip(p, 1e-12, 1.0))).sum(axis=1) for p in pool.probs.values())
        return _top(entropy, k)


@dataclass
class MarginStrategy:
    """Smallest top-1 minus top-2 probability margin first.

    The margin of an image is the MINIMUM over heads: one head near its decision boundary is enough
    to make the image worth labeling, whatever the other heads say.
    """

    name: str = field(default="margin", init=False)

    def select(self, pool: PoolView, k: int, rng: np.random.Generator) -> np.ndarray:
        _check_k(k)
        _require_probs(pool, self.name)
        margins = []
        for p in pool.probs.values():
            top2 = np.sort(p, axis=1)[:, -2:]
            margins.append(top2[:, 1] - top2[:, 0])
        return _top(-np.min(margins, axis=0), k)


@dataclass
class ConfidenceStrategy:
    """Highest risk score first: the images the cycle's confidence (model/al/confidence.py) trusts least."""

    name: str = field(default="confidence", init=False)

    def select(self, pool: PoolView, k: int, rng: np.random.Generator) -> np.ndarray:
        _check_k(k)
        if pool.risk is None:
            raise ValueError(
                "the 'confidence' strategy needs the cycle's risk score (set by model.al.cycle.plan_cycle)"
            )
        return _top(pool.risk, k)


_STRATEGIES: dict[str, type] = {
    "loss": LossStrategy,
    "loss+diversity": LossDiversityStrategy,
    "random": RandomStrategy,
    "entropy": EntropyStrategy,
    "margin": MarginStrategy,
    "confidence": ConfidenceStrategy,
}
#: The names ``get_strategy`` accepts, in the registry's order (the one list of strategies)
STRATEGY_NAMES: tuple[str, ...] = tuple(_STRATEGIES)


def get_strategy(name: str, **kwargs) -> Strategy:
    """The strategy called ``name`` (one of STRATEGY_NAMES), built with ``kwargs``."""
    try:
        cls = _STRATEGIES[name]
    except KeyError:
        raise ValueError(f"unknown selection strategy {name!r}; choose one of {', '.join(STRATEGY_NAMES)}") from None
    return cls(**kwargs)
