"""Exact and near duplicates, within and across the labeled and unlabeled parts.

A duplicate wastes a label (two images, one lesson), leaks into validation (the same picture on both
sides of the split inflates the score), and, labeled differently, is a label error for sure.

- Exact: the same file content (SHA-256 of the bytes).
- Near: a pair whose perceptual hashes differ in at most ``max_hamming`` of 64 bits AND whose
  embeddings have a cosine similarity of at least ``min_cosine``. Each signal alone has known false
  positives: pHash collides on flat or repetitive images (two plain frames of different colour hash
  alike), and ImageNet embeddings put different pictures of one kind close together (two noise
  frames, two dark night scenes). A pair must look alike in layout and in content. Flat images
  (contrast under ``flat_contrast``) have no meaningful pHash and are matched only exactly.
  Defaults: 10 bits, the usual pHash cut-off for "similar" (Zauner 2010 reports re-encodings and
  mild edits well under it), and cosine 0.9.

Pairs are grouped by connected components, so a group lists every copy of one picture.
"""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from scipy.sparse import coo_matrix
from scipy.sparse.csgraph import connected_components

MAX_HAMMING = 10
MIN_COSINE = 0.9
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


def hamming_candidates(hashes: np.ndarray, candidates: np.ndarray, max_hamming: int) -> list[tuple[int, int, int]]:
    """(i, j, distance) with i < j among ``candidates`` whose 64-bit hashes differ in at most ``max_hamming`` bits.

    All pairs, in row chunks so memory stays at ``_CHUNK`` x N bytes: 10,000 hashes take about a second.
    """
    h = hashes[candidates].astype(np.uint64)
    found = []
    for start in range(0, len(h), _CHUNK):
        block = np.bitwise_count(h[start:start + _CHUNK, None] ^ h[None, :])
        rows, cols = np.nonzero(block <= max_hamming)
        keep = cols > rows + start
        for r, c in zip(rows[keep], cols[keep]):
            found.append((int(candidates[r + start]), int(candidates[c]), int(block[r, c])))
    return found


def near_groups(
    phash: np.ndarray,
    embeddings: np.ndarray,
    usable: np.ndarray,
    contrast: np.ndarray,
    exact: list[DuplicateGroup],
    max_hamming: int = MAX_HAMMING,
    min_cosine: float = MIN_COSINE,
    flat_contrast: float = FLAT_CONTRAST,
) -> list[DuplicateGroup]:
    """Groups of near-duplicate items; pairs that are exact copies of each other are left to ``exact``."""
    same_file = {}
    for g in exact:
        for i in g.members:
            same_file[i] = g.members[0]
    candidates = np.flatnonzero(usable & (contrast >= flat_contrast) & ~np.isnan(embeddings).any(axis=1))
    unit = embeddings / np.maximum(np.linalg.norm(embeddings, axis=1, keepdims=True), 1e-12)
    pairs = []
    for i, j, d in hamming_candidates(phash, candidates, max_hamming):
        if i in same_file and same_file.get(j) == same_file[i]:
            continue
        cosine = float(unit[i] @ unit[j])
        if cosine >= min_cosine:
            pairs.append((i, j, d, cosine))
    if not pairs:
        return []
    n = len(phash)
    a = np.array([p[0] for p in pairs])
    b = np.array([p[1] for p in pairs])
    _, component = connected_components(coo_matrix((np.ones(len(pairs)), (a, b)), shape=(n, n)), directed=False)
    groups: dict[int, DuplicateGroup] = {}
    for p in pairs:
        c = int(component[p[0]])
        group = groups.setdefault(c, DuplicateGroup("near", []))
        group.pairs.append(p)
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
