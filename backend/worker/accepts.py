"""The records of bulk accepts: which certified predictions became annotations, from which model.

A record (model version, threshold, certified bound, task ids) is written for the worker's own
``AUTO_ACCEPT`` and for a person's "Create Annotations From Predictions" in Label Studio alike; it is
what ``weather-al undo-accept`` reads. Kept apart from ``autolabel`` so that the web process, which
records a person's accept from a webhook, does not import the Label Studio SDK.
"""

from __future__ import annotations

import logging
from datetime import datetime, timezone
from typing import Any

from backend.labelstudio.predictions import read_calibration
from backend.store import ACCEPTS, ModelStore
from model.atomic import write_json_atomic

logger = logging.getLogger(__name__)


def record_label_studio_accept(store: ModelStore, pid: str, annotations: list[dict[str, Any]]) -> dict[str, Any] | None:
    """Record a bulk accept a person ran in Label Studio (Create Annotations From Predictions).

    Label Studio reports it as one ANNOTATIONS_CREATED webhook, the only event it sends in bulk. Tasks
    already known as machine-labeled (the worker's own AUTO_ACCEPT) are not recorded again. The record
    names the project's current version and that version's certificate, since the candidates view lists
    the current version's certified band. It names the annotations the webhook reports, when every one of
    them carries its id, so that undo deletes exactly those (the version is a guess: a person may convert
    another version's predictions).
    """
    task_ids = sorted({_task_id(a) for a in annotations if a.get("parent_prediction") is not None})
    new = store.mark_machine_labeled(pid, task_ids)
    if not new:
        return None
    version = store.current_version(pid) or "unknown"
    certificate = read_calibration(store.version_dir(pid, version)).get("certificate") or {}
    started = min((a.get("created_at") or "" for a in annotations), default="") or None
    record = write_accept_record(
        store,
        pid,
        version,
        new,
        certificate,
        source="Label Studio",
        created_at=started,
        annotation_ids=_annotation_ids(annotations, set(new)),
    )
    logger.info(
        "project %s: recorded a bulk accept of %d predictions made in Label Studio (record %s)",
        pid,
        len(new),
        record["id"],
    )
    return record


def edited_by_a_person(annotation: dict[str, Any]) -> bool:
    """Whether someone saved this annotation after it was created.

    Label Studio records who saved an annotation through its API (the editor's Update button, an SDK
    update) in ``updated_by``; a bulk conversion of predictions leaves it empty. A machine label a
    person corrected or confirmed this way is a person's label: it trains the model, and an undo
    keeps it.
    """
    return bool(annotation.get("updated_by"))


def is_machine_label(annotation: dict[str, Any]) -> bool:
    """A machine label: converted from a prediction (bulk accept) and saved by no person since."""
    return annotation.get("parent_prediction") is not None and not edited_by_a_person(annotation)


def release_edited_machine_label(store: ModelStore, pid: str, annotation: dict[str, Any]) -> bool:
    """Label Studio's ANNOTATION_UPDATED on a machine-labeled task: a person saved it, so it is theirs now.

    The task stops counting as machine-labeled in /metrics (it already trains, see ``edited_by_a_person``).
    Returns whether it was a machine label. Reads before it writes: most updates are of people's labels.
    """
    task = _task_id(annotation)
    if task not in store.state(pid).get("machine_task_ids", []):
        return False
    return bool(store.mark_machine_labeled(pid, [task], labeled=False))


def _annotation_ids(annotations: list[dict[str, Any]], task_ids: set[int]) -> list[int] | None:
    """The ids of the converted annotations on ``task_ids``; None unless each has an integer id."""
    ours = [a for a in annotations if a.get("parent_prediction") is not None and _task_id(a) in task_ids]
    if not all(isinstance(a.get("id"), int) and not isinstance(a["id"], bool) for a in ours):
        return None
    return sorted(a["id"] for a in ours)


def _task_id(annotation: dict[str, Any]) -> int:
    task: Any = annotation.get("task")  # its id, or the task itself, as Label Studio sends it
    return int(task["id"] if isinstance(task, dict) else task)


def write_accept_record(
    store: ModelStore,
    pid: str,
    version: str,
    task_ids: list[int],
    certificate: dict[str, Any],
    source: str,
    created_at: str | None = None,
    annotation_ids: list[int] | None = None,
) -> dict[str, Any]:
    """The record ``weather-al undo-accept`` reads: model version, threshold, certified bound, task ids.

    ``annotation_ids`` names the annotations the accept created, when known; undo deletes exactly those.
    Without them (None) undo takes the annotations on the tasks made from a prediction of ``version``.
    ``created_at`` is for people reading the record; undo does not compare clocks.
    """
    now = datetime.now(timezone.utc)
    record = {
        "id": now.strftime("%Y%m%dT%H%M%S%f"),
        "created_at": created_at or now.isoformat(),
        "source": source,
        "version": version,
        "threshold": certificate.get("threshold"),
        "certified_lower_bound": certificate.get("lower_bound"),
        "target": certificate.get("target"),
        "delta": certificate.get("delta"),
        "task_ids": sorted(task_ids),
        "annotation_ids": annotation_ids,
        "undone": False,
    }
    write_json_atomic(store.record_dir(pid, ACCEPTS) / f"{record['id']}.json", record)
    return record


def list_accepts(store: ModelStore, pid: str) -> list[dict[str, Any]]:
    return store.accept_records(pid)


def probes_of_accepted_bands(store: ModelStore, pid: str) -> set[int]:
    """The probes that lay in a band accepted in bulk (each version's calibration lists its ``probes_in_band``).

    An accepted band leaves the pool; its probes must leave the probes by the same rule, or the remaining
    probes would over-represent what the band left behind, the easy images, and later certificates would be
    too optimistic (model/al/cycle.py). They keep their people's labels and train from then on.
    """
    retired: set[int] = set()
    for record in list_accepts(store, pid):
        calibration = read_calibration(store.version_dir(pid, str(record.get("version"))))
        retired.update(int(t) for t in calibration.get("probes_in_band", []))
    return retired
