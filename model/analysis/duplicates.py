"""Exact and near duplicates, within and across the labeled and unlabeled parts.

A duplicate wastes a label (two images, one lesson), leaks into validation (the same picture on both
sides of the split inflates the score), and, labeled differently, is a label error for sure.

- Exact: the same file content (SHA-256 of the bytes).
- Near: candidate pairs come from two searches, then one check confirms them.
  Candidates: perceptual hashes within ``max_hamming`` of 64 bits (pHash is built to survive
  re-encoding, resizing, brightness changes and small crops; 10 bits is its usual cut-off), or
  embeddings with a cosine similarity of at least ``min_cosine`` (they survive larger crops and
  shifts). Neither is precise alone: pHash collides on images that share a coarse layout (two road
  scenes with the horizon at one height), and ImageNet embeddings put different pictures of one kind
  close together (two noise frames, two dark night scenes) while moving a lot under heavy JPEG
  compression of small, noisy images.
  Checks, both required: the 16x16 colour thumbnails, each channel normalised to zero mean and unit
  variance (so brightness and contrast changes cancel), correlate at least ``min_correlation`` -- the
  tiny image comparison of Torralba, Fergus & Freeman ("80 Million Tiny Images", PAMI 2008) -- so the
  pictures look alike; and the embeddings' cosine is at least ``content_cosine``, so they show the
  same things (two road scenes with the sun and the horizon in one place pass the first check, not
  this one). The content bar is lenient because compression of small, noisy images moves ImageNet
  features a lot. Flat images (contrast under ``flat_contrast``) have no meaningful hash or
  normalised thumbnail and are matched only exactly.

Pairs are grouped by connected components, so a group lists every copy of one picture.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from scipy.sparse import coo_matrix
from scipy.sparse.csgraph import connected_components

MAX_HAMMING = 10
MIN_COSINE = 0.95
MIN_CORRELATION = 0.95
CONTENT_COSINE = 0.8
FLAT_CONTRAST = 0.01
_CHUNK = 2048


@dataclass
class DuplicateGroup:
    """Items showing one picture; ``pairs`` holds (i, j, hamming, cosine) evidence for near groups."""

    kind: str  # "exact" or "near"
    members: list[int]
    pairs: list[tuple[int, int, int, float]] = field(default_factory=list)


def exact_groups(sha256: list[str | None]) -> list[DuplicateGroup]:
    """Groups of items with identical file content (None digests, i.e. unreadable files, are ignored)."""
    by_digest: dict[str, list[int]] = defaultdict(list)
    for i, digest in enumerate(sha256):
        if digest:
            by_digest[digest].append(i)
    return [DuplicateGroup("exact", members) for members in by_digest.values() if len(members) > 1]


def _pairs_within(
    n: int, block: Callable[[int, int], np.ndarray], accept: Callable[[np.ndarray], np.ndarray]
) -> Iterator[tuple[int, int, Any]]:
    """(i, j, value) with i < j over all pairs of ``n`` items whose value ``accept`` keeps.

    ``block(a, b)`` gives the values of rows a:b against all n items; rows go ``_CHUNK`` at a time, so
    memory stays at ``_CHUNK`` x n values: 10,000 items take about a second.
    """
    for start in range(0, n, _CHUNK):
        values = block(start, min(start + _CHUNK, n))
        rows, cols = np.nonzero(accept(values))
        keep = cols > rows + start
        for r, c in zip(rows[keep], cols[keep]):
            yield int(r + start), int(c), values[r, c]


def hamming_candidates(hashes: np.ndarray, candidates: np.ndarray, max_hamming: int) -> list[tuple[int, int, int]]:
    """(i, j, distance) with i < j among ``candidates`` whose 64-bit hashes differ in at most ``max_hamming`` bits."""
    h = hashes[candidates].astype(np.uint64)
    return [
        (int(candidates[i]), int(candidates[j]), int(d))
        for i, j, d in _pairs_within(
            len(h), lambda a, b: np.bitwise_count(h[a:b, None] ^ h[None, :]), lambda d: d <= max_hamming
        )
    ]


def cosine_candidates(unit: np.ndarray, candidates: np.ndarray, min_cosine: float) -> list[tuple[int, int]]:
    """(i, j) with i < j among ``candidates`` whose unit embeddings have a dot product of at least ``min_cosine``."""
    x = unit[candidates].astype(np.float32)
    return [
        (int(candidates[i]), int(candidates[j]))
        for i, j, _ in _pairs_within(len(x), lambda a, b: x[a:b] @ x.T, lambda c: c >= min_cosine)
    ]


def normalised_thumbnails(tiny: np.ndarray) -> np.ndarray:
    """(N, 768) rows whose dot product is the correlation of two 16x16x3 thumbnails.

    Each channel goes to zero mean and unit variance (so brightness and contrast changes cancel) and
    each row to unit length.
    """
    t = tiny.reshape(len(tiny), -1, 3).astype(np.float64)
    t = (t - t.mean(axis=1, keepdims=True)) / np.maximum(t.std(axis=1, keepdims=True), 1e-6)
    return t.reshape(len(tiny), -1) / np.sqrt(t.shape[1] * 3)


def near_groups(
    phash: np.ndarray,
    embeddings: np.ndarray,
    tiny: np.ndarray,
    usable: np.ndarray,
    contrast: np.ndarray,
    exact: list[DuplicateGroup],
    max_hamming: int = MAX_HAMMING,
    min_cosine: float = MIN_COSINE,
    min_correlation: float = MIN_CORRELATION,
    content_cosine: float = CONTENT_COSINE,
    flat_contrast: float = FLAT_CONTRAST,
) -> list[DuplicateGroup]:
    """Groups of near-duplicate items; pairs that are exact copies of each other are left to ``exact``."""
    same_file = {i: g.members[0] for g in exact for i in g.members}
    candidates = np.flatnonzero(usable & (contrast >= flat_contrast) & ~np.isnan(embeddings).any(axis=1))
    unit = embeddings / np.maximum(np.linalg.norm(embeddings, axis=1, keepdims=True), 1e-12)
    hashed = {(i, j): d for i, j, d in hamming_candidates(phash, candidates, max_hamming)}
    found = sorted(set(hashed) | set(cosine_candidates(unit, candidates, min_cosine)))
    if not found:
        return []
    involved = np.unique(np.array(found, dtype=np.int64).reshape(-1))
    thumbs = dict(zip(involved.tolist(), normalised_thumbnails(tiny[involved])))  # each thumbnail normalised once
    pairs = []
    for i, j in found:
        if i in same_file and same_file.get(j) == same_file[i]:
            continue
        cosine = float(unit[i] @ unit[j])
        if cosine >= content_cosine and float(thumbs[i] @ thumbs[j]) >= min_correlation:
            pairs.append((i, j, hashed.get((i, j), int(np.bitwise_count(phash[i] ^ phash[j]))), cosine))
    if not pairs:
        return []
    n = len(phash)
    a = np.array([p[0] for p in pairs])
    b = np.array([p[1] for p in pairs])
    _, component = connected_components(coo_matrix((np.ones(len(pairs)), (a, b)), shape=(n, n)), directed=False)
    groups: dict[int, DuplicateGroup] = {}
    for p in pairs:
        groups.setdefault(int(component[p[0]]), DuplicateGroup("near", [])).pairs.append(p)
    for group in groups.values():
        group.members = sorted({i for p in group.pairs for i in p[:2]})
    return list(groups.values())


def describe_group(group: DuplicateGroup, keys: list[str], labels: np.ndarray, head_names: list[str]) -> dict[str, Any]:
    """JSON-ready: members, whether the group spans the labeled and unlabeled parts, whether labels conflict."""
    rows = labels[group.members]
    labeled = (rows >= 0).any(axis=1)
    conflict = [h for j, h in enumerate(head_names) if len({int(v) for v in rows[:, j] if v >= 0}) > 1]
    out: dict[str, Any] = {
        "members": [keys[i] for i in group.members],
        "labeled": int(labeled.sum()),
        "unlabeled": int((~labeled).sum()),
        "across_parts": bool(labeled.any() and (~labeled).any()),
        "conflicting_heads": conflict,
    }
    if group.pairs:
        out["pairs"] = [{"a": keys[i], "b": keys[j], "hamming": d, "cosine": round(c, 4)} for i, j, d, c in group.pairs]
    return out
