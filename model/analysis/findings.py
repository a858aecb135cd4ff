"""Everything an analysis found, and its JSON summary (what ``summary.json`` holds).

Lists in the summary are ranked, most worth a look first; long rankings are cut at a few hundred
entries, counts are always complete.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from typing import Any, cast

import numpy as np

from model.analysis.duplicates import DuplicateGroup, describe_group
from model.analysis.image_stats import APPEARANCE, ImageStats
from model.analysis.inputs import AnalysisInput
from model.analysis.label_problems import Suspects
from model.analysis.outliers import OutlierScores

MAX_SUSPECTS = 500
MAX_OUTLIERS = 200
EXTREMES = 5


@dataclass
class Findings:
    data: AnalysisInput
    labels: np.ndarray  # (N, heads), -1 = no usable label
    stats: ImageStats
    usable: np.ndarray  # (N,) readable and embedded
    unreadable: dict[int, str]  # item index -> reason
    distribution: dict[str, Any]
    exact: list[DuplicateGroup]
    near: list[DuplicateGroup]
    suspects: Suspects
    outliers: OutlierScores
    human: dict[str, Any]
    projection: np.ndarray  # (N, 2) first two principal components of the embeddings, NaN where not usable
    disagreements: list[dict[str, Any]]
    model: dict[str, Any] | None = None
    timings: dict[str, float] = field(default_factory=dict)
    settings: dict[str, Any] = field(default_factory=dict)

    @property
    def keys(self) -> list[str]:
        return [it.key for it in self.data.items]

    @property
    def labeled(self) -> np.ndarray:
        # numpy's stubs type any() with an axis as "bool or array"; with axis=1 it is an array
        return cast(np.ndarray, (self.labels >= 0).any(axis=1))

    def class_name(self, head: int, index: int) -> str:
        return self.data.schema.heads[head].classes[index] if index >= 0 else ""

    def suspect_rows(self, limit: int = MAX_SUSPECTS) -> list[dict[str, Any]]:
        schema, keys, s = self.data.schema, self.keys, self.suspects
        rows = []
        for i in s.ranking()[:limit]:
            j = int(s.worst_head[i])
            rows.append(
                {
                    "key": keys[i],
                    "head": schema.heads[j].name,
                    "given": self.class_name(j, int(self.labels[i, j])),
                    "suggested": self.class_name(j, int(s.suggested[i])),
                    "quality": float(f"{s.score[i]:.4g}"),
                    "flagged": bool(s.flagged[i]),
                }
            )
        return rows

    def outlier_rows(self, limit: int = MAX_OUTLIERS) -> list[dict[str, Any]]:
        o, keys = self.outliers, self.keys
        return [
            {
                "key": keys[i],
                "score": round(float(o.score[i]), 3),
                "embedding_z": round(float(o.embedding[i]), 3),
                "statistics_z": round(float(o.statistics[i]), 3),
                "most_extreme_statistic": o.statistic[i],
            }
            for i in o.ranking()[:limit]
        ]

    def extremes(self, k: int = EXTREMES) -> dict[str, dict[str, list[str]]]:
        """Per appearance statistic, the keys of the ``k`` lowest and highest readable images."""
        out = {}
        readable = np.flatnonzero(self.stats.readable)
        for name in APPEARANCE:
            values = self.stats.column(name)[readable]
            order = readable[np.argsort(values, kind="stable")]
            out[name] = {
                "lowest": [self.keys[i] for i in order[:k]],
                "highest": [self.keys[i] for i in order[::-1][:k]],
            }
        return out

    def image_overview(self) -> dict[str, Any]:
        st, ok = self.stats, self.stats.readable
        sizes = Counter(f"{w}x{h}" for w, h, r in zip(st.width, st.height, ok) if r)

        def spread(values: np.ndarray) -> dict[str, float] | None:
            v = values[ok]
            v = v[~np.isnan(v)] if v.dtype.kind == "f" else v
            return (
                None
                if v.size == 0
                else {
                    q: round(float(x), 4)
                    for q, x in zip(("min", "p5", "median", "p95", "max"), np.percentile(v, [0, 5, 50, 95, 100]))
                }
            )

        return {
            "formats": dict(Counter(f for f, r in zip(st.format, ok) if r)),
            "modes": dict(Counter(m for m, r in zip(st.mode, ok) if r)),
            "sizes": dict(sizes.most_common(20)),
            "n_sizes": len(sizes),
            "aspect": spread(st.aspect),
            "file_bytes": spread(st.file_bytes.astype(float)),
            **{name: spread(st.column(name)) for name in APPEARANCE},
            "extremes": self.extremes(),
        }

    def summary(self) -> dict[str, Any]:
        keys, names = self.keys, self.data.schema.head_names
        exact = [describe_group(g, keys, self.labels, names) for g in self.exact]
        near = [describe_group(g, keys, self.labels, names) for g in self.near]
        groups = exact + near
        return {
            "source": self.data.source,
            "settings": self.settings,
            "n_items": len(keys),
            "n_labeled": int(self.labeled.sum()),
            "n_unlabeled": int((~self.labeled).sum()),
            "n_unreadable": len(self.unreadable),
            "unreadable": [{"key": keys[i], "reason": r} for i, r in sorted(self.unreadable.items())],
            "distribution": self.distribution,
            "images": self.image_overview(),
            "label_problems": {
                "issues": [x.to_dict() for x in self.data.label_issues],
                "disagreements": self.disagreements,
                "n_flagged": int(self.suspects.flagged.sum()),
                "probe_accuracy": self.suspects.probe_accuracy,
                "suspects": self.suspect_rows(),
            },
            "duplicates": {
                "exact": exact,
                "near": near,
                "n_exact_groups": len(exact),
                "n_near_groups": len(near),
                "n_redundant_images": sum(len(g["members"]) - 1 for g in groups),
                "n_across_parts": sum(g["across_parts"] for g in groups),
                "n_conflicting_labels": sum(bool(g["conflicting_heads"]) for g in groups),
            },
            "outliers": self.outlier_rows(),
            "human_baseline": self.human,
            "model": self.model,
            "timings_s": {k: round(v, 2) for k, v in self.timings.items()},
        }
