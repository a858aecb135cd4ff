"""A Label Studio project's tasks split the way a cycle needs them: people's labels, unlabeled tasks.

Machine labels (bulk accepts not edited since) never train; a person's annotation always wins over a
machine one on the same task.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import Any

from backend.labelstudio.tasks import annotation_choices, latest_annotation
from backend.worker.accepts import is_machine_label
from model.schema import LabelSchema

logger = logging.getLogger(__name__)


@dataclass
class ProjectData:
    """The project's tasks split the way a cycle needs them."""

    schema: LabelSchema
    labeled: list[tuple[int, str, tuple[int, ...]]] = field(default_factory=list)  # (task id, url, labels)
    unlabeled: list[tuple[int, str]] = field(default_factory=list)
    annotated_at: dict[int, str] = field(default_factory=dict)
    problems: list[str] = field(default_factory=list)


def read_project(tasks: list[dict[str, Any]], schema: LabelSchema, machine_ids: set[int]) -> ProjectData:
    """Split tasks into human-labeled and unlabeled; bulk-accepted (machine) labels never train the model.

    A machine label a person has saved since (corrected or confirmed in the editor) is theirs and trains.
    A person's annotation always wins over a machine one on the same task (a person labeled between the
    listing and the bulk conversion, or a lead converted predictions on labeled tasks): it trains.
    """
    data = ProjectData(schema)
    both: list[int] = []
    for task in tasks:
        tid = int(task["id"])
        url = (task.get("data") or {}).get(schema.image_key)
        if not url:
            data.problems.append(f"task {tid}: no '{schema.image_key}' in its data; skipped")
            continue
        annotations = task.get("annotations") or []
        people = [a for a in annotations if not is_machine_label(a)]
        ann = latest_annotation(people) or latest_annotation(annotations)
        if ann is None:
            data.unlabeled.append((tid, url))
            continue
        if is_machine_label(ann):
            if tid in machine_ids:
                continue  # the bulk accept's own annotation, untouched since
        elif latest_annotation([a for a in annotations if is_machine_label(a)]) is not None:
            both.append(tid)
        choices = annotation_choices(ann, schema)
        try:
            labels = tuple(schema.head(h).index(v) for h, v in choices.items() if v is not None)
        except KeyError as exc:
            data.problems.append(f"task {tid}: {exc.args[0]}; skipped")
            continue
        if len(labels) != len(schema.heads):
            missing = [h for h, v in choices.items() if v is None]
            data.problems.append(f"task {tid}: annotation has no choice for {missing}; skipped")
            continue
        data.labeled.append((tid, url, labels))
        data.annotated_at[tid] = ann.get("created_at") or ""
    if both:
        logger.warning(
            "%d task(s) carry both a person's annotation and one converted from a prediction; the person's trains: %s",
            len(both),
            both[:20],
        )
    return data
