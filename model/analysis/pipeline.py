"""``analyze``: run every analysis over one data set and write ``report.html`` and ``summary.json``.

Order matters only for cost: the statistics pass finds the unreadable files first, so the
embedding pass (the expensive one) never decodes them; everything after works on arrays.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
from tqdm.auto import tqdm

from model.analysis.agreement import annotator_agreement, disagreements, model_agreement
from model.analysis.distribution import class_distribution
from model.analysis.duplicates import exact_groups, near_groups
from model.analysis.embeddings import EMBEDDING_SIZE, embed
from model.analysis.findings import Findings
from model.analysis.image_stats import image_statistics
from model.analysis.inputs import AnalysisInput
from model.analysis.label_problems import suspected_labels
from model.analysis.outliers import outlier_scores
from model.analysis.report import write_report
from model.training.trainer import TrainConfig

if TYPE_CHECKING:
    from model.nn.checkpoint import TrainedModel

logger = logging.getLogger(__name__)

PHASES = ("reading images", "embedding", "duplicates", "label ranking", "outliers", "human baseline", "model", "report")


@dataclass
class AnalysisResult:
    findings: Findings
    summary: dict[str, Any]
    report_path: Path
    summary_path: Path


def analyze(
    data: AnalysisInput,
    out_dir: str | Path,
    model: TrainedModel | None = None,
    image_size: int = EMBEDDING_SIZE,
    max_ratio: float | None = None,
    workers: int | None = None,
    progress: bool = True,
) -> AnalysisResult:
    """Analyse ``data``; with ``model``, also score its labeled images for the comparison with the human baseline.

    ``max_ratio``: the undersampling the class-distribution section simulates (default: the trainer's default).
    """
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    schema, items = data.schema, data.items
    max_ratio = TrainConfig().max_ratio if max_ratio is None else max_ratio
    labels = np.array([[-1 if v is None else v for v in it.labels] for it in items], dtype=np.int64).reshape(
        len(items), len(schema.heads)
    )
    timings: dict[str, float] = {}
    phases = [p for p in PHASES if p != "model" or model is not None]
    bar = tqdm(total=len(phases), desc="analysis", unit="phase", disable=not progress)

    @contextmanager
    def phase(name: str) -> Iterator[None]:
        bar.set_postfix_str(name)
        start = time.perf_counter()
        yield
        timings[name] = time.perf_counter() - start
        logger.info("%s: %.1f s", name, timings[name])
        bar.update()

    with phase("reading images"):
        stats = image_statistics(items, workers=workers, progress=progress)
        unreadable = {i: e for i, e in enumerate(stats.error) if e is not None}
    with phase("embedding"):
        readable = np.flatnonzero(stats.readable)
        embeddings, failed = embed(items, schema, readable, image_size=image_size, workers=workers, progress=progress)
        unreadable.update(failed)  # a decode at another size can still fail
        usable = stats.readable & ~np.isnan(embeddings).any(axis=1)
    with phase("duplicates"):
        exact = exact_groups(stats.sha256)
        near = near_groups(stats.phash, embeddings, stats.tiny, usable, stats.contrast, exact)
    with phase("label ranking"):
        suspects = suspected_labels(schema, embeddings, labels, usable)
    with phase("outliers"):
        outliers = outlier_scores(embeddings, labels, usable, stats)
        projection = project_2d(embeddings, usable)
    with phase("human baseline"):
        human = annotator_agreement(items, schema)
        disagreeing = disagreements(items, schema)
    model_summary = None
    if model is not None:
        with phase("model"):
            model_summary = _score_model(model, data, labels, usable, workers, progress)
    findings = Findings(
        data=data,
        labels=labels,
        stats=stats,
        usable=usable,
        unreadable=unreadable,
        distribution=class_distribution(schema, labels, max_ratio),
        exact=exact,
        near=near,
        suspects=suspects,
        outliers=outliers,
        human=human,
        projection=projection,
        disagreements=disagreeing,
        model=model_summary,
        timings=timings,
        settings={
            "embedding_backbone": "efficientnet_lite0 (ImageNet)",
            "embedding_size": image_size,
            "max_ratio": max_ratio,
        },
    )
    with phase("report"):
        report_path = write_report(findings, out_dir / "report.html")
    bar.close()
    summary = findings.summary()
    summary_path = out_dir / "summary.json"
    summary_path.write_text(json.dumps(summary, indent=2), encoding="utf-8")
    return AnalysisResult(findings=findings, summary=summary, report_path=report_path, summary_path=summary_path)


def project_2d(embeddings: np.ndarray, usable: np.ndarray) -> np.ndarray:
    """First two principal components of the usable embeddings (for the report's scatter plot); NaN elsewhere."""
    from sklearn.decomposition import PCA

    out = np.full((len(embeddings), 2), np.nan)
    rows = np.flatnonzero(usable)
    if len(rows) >= 3:
        out[rows] = PCA(2, random_state=0).fit_transform(embeddings[rows])
    return out


def _score_model(
    model: TrainedModel,
    data: AnalysisInput,
    labels: np.ndarray,
    usable: np.ndarray,
    workers: int | None,
    progress: bool,
) -> dict[str, Any]:
    """The model's accuracy and kappa against the labels, per head, on the usable labeled images."""
    if model.schema.heads != data.schema.heads:
        raise ValueError(
            f"the model's heads {[(h.name, h.classes) for h in model.schema.heads]} differ from the data's "
            f"{[(h.name, h.classes) for h in data.schema.heads]}; pass the label config the model was trained with"
        )
    rows = np.flatnonzero(usable & (labels >= 0).any(axis=1))
    result = model.score([data.items[i].example() for i in rows], workers=workers, progress=progress, desc="model")
    position = {data.items[i].key: k for k, i in enumerate(rows)}
    order = np.array([position[k] for k in result.keys], dtype=np.int64)
    predicted = {h: p.argmax(axis=1) for h, p in result.probs.items()}
    return {
        "version": model.version,
        "note": "measured on the labeled images of this data set, which may include the model's own training images",
        "heads": model_agreement(data.schema, labels[rows][order], predicted),
    }
