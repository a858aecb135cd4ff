"""Checks of a webhook's claims against Label Studio, run by the worker before anything changes.

Anyone who reaches ``/webhook`` can post to it (basic auth is optional, as in Label Studio's own
backends), so an ``ANNOTATIONS_CREATED`` or ``ANNOTATION_UPDATED`` body only says where to look. Which
tasks count as machine-labeled decides which labels train, so these jobs read the tasks' real
annotations through the SDK and act on those alone: a bulk accept is recorded for annotations that
really were converted from a prediction and that no person has saved since, and a machine label is
released only when a person really saved it. The web process enqueues these jobs by name and never
imports this module: the SDK costs it 1.8 s and 86 MB at start-up.
"""

from __future__ import annotations

import logging
from typing import Any

from backend.labelstudio.client import LabelStudioProject
from backend.settings import get_settings
from backend.store import ModelStore
from backend.worker.accepts import (
    edited_by_a_person,
    is_machine_label,
    record_label_studio_accept,
    release_edited_machine_label,
)

logger = logging.getLogger(__name__)


def check_bulk_accept(project_id: int, task_ids: list[int]) -> dict[str, Any]:
    """Record the bulk accept an ``ANNOTATIONS_CREATED`` webhook reported, as far as Label Studio confirms it.

    Only a task of this project holding an annotation with ``parent_prediction`` and no ``updated_by``
    becomes machine-labeled; every other claimed task is named in a warning and left as it was.
    """
    ls, store = _connect(project_id)
    pid = str(project_id)
    converted = [a for tid in task_ids for a in ls.annotations(tid) if is_machine_label(a)]
    refused = sorted(set(task_ids) - {a["task"] for a in converted})
    if refused:
        logger.warning(
            "project %s: ANNOTATIONS_CREATED named %d task(s) that hold no untouched annotation converted from a "
            "prediction in Label Studio; not recorded as machine-labeled: %s",
            pid,
            len(refused),
            refused[:20],
        )
    record = record_label_studio_accept(store, pid, converted) if converted else None
    return {
        "project": pid,
        "record": record["id"] if record else None,
        "machine_labeled": len(record["task_ids"]) if record else 0,
        "refused": refused,
    }


def check_edit(project_id: int, task_id: int, annotation_id: int) -> dict[str, Any]:
    """Release the machine label an ``ANNOTATION_UPDATED`` webhook says a person saved, if Label Studio agrees."""
    ls, store = _connect(project_id)
    pid = str(project_id)
    real = next((a for a in ls.annotations(task_id) if a.get("id") == annotation_id), None)
    if real is None or not edited_by_a_person(real):
        logger.warning(
            "project %s: ANNOTATION_UPDATED named annotation %s of task %s, which Label Studio does not show "
            "as saved by a person; the task stays machine-labeled",
            pid,
            annotation_id,
            task_id,
        )
        return {"project": pid, "task": task_id, "released": False}
    released = release_edited_machine_label(store, pid, real)
    if released:
        logger.info("project %s: a person saved the machine label of task %s; it is theirs now", pid, task_id)
    return {"project": pid, "task": task_id, "released": released}


def _connect(project_id: int) -> tuple[LabelStudioProject, ModelStore]:
    settings = get_settings()
    return (
        LabelStudioProject(settings.label_studio_url, settings.label_studio_api_key or "", project_id),
        ModelStore(settings.model_dir, settings.redis_url),
    )  # the Redis that serialises state across machines
