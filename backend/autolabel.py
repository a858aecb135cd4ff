"""The Label Studio side of the three bands: views, bulk accept of the certified band, and its undo.

Views (Data Manager tabs) after every training:
- "Active learning queue": unlabeled tasks, ascending score = highest predicted loss first;
- "Auto-annotation candidates": unlabeled tasks in the certified band, audit sample excluded;
- "Audit sample": a random sample of the candidates for people to verify ("Label Tasks As Displayed").

A bulk accept never touches a task a person labeled or an audit task, and is recorded (model version,
threshold, certified bound, task ids) so that ``weather-al undo-accept`` can take it back.
"""

from __future__ import annotations

import json
import logging
from datetime import datetime, timezone
from typing import Any

from model.certify import Certificate
from model.checkpoint import write_json_atomic

from .labelstudio import (AUDIT_VIEW, CANDIDATES_VIEW, QUEUE_VIEW, LabelStudioProject, as_dict, score_range_filter,
                          task_id_filters, unlabeled_filter)
from .predictions import read_calibration
from .store import ModelStore

logger = logging.getLogger(__name__)

ACCEPTS = "accepts"


def update_views(ls: LabelStudioProject, certified_score_floor: float | None, audit_ids: list[int]) -> dict[str, int]:
    queue = ls.ensure_view(QUEUE_VIEW, ["tasks:predictions_score"], {"conjunction": "and", "items": [unlabeled_filter()]})
    floor = certified_score_floor if certified_score_floor is not None else 2.0  # nothing scores above 1
    candidates = ls.ensure_view(CANDIDATES_VIEW, ["tasks:predictions_score"], {
        "conjunction": "and",
        "items": [score_range_filter(floor, 1.0), unlabeled_filter(), *task_id_filters(audit_ids, "not_equal")],
    })
    audit_items = task_id_filters(audit_ids, "equal") or task_id_filters([0], "equal")
    audit = ls.ensure_view(AUDIT_VIEW, ["tasks:id"], {"conjunction": "or", "items": audit_items})
    return {"queue": queue, "candidates": candidates, "audit": audit}


def accept_band(ls: LabelStudioProject, store: ModelStore, pid: str, version: str, task_ids: list[int], certificate: Certificate) -> dict[str, Any]:
    """Convert the certified predictions to annotations, skipping human-labeled and audit tasks; record it.

    The tasks are marked machine-labeled before Label Studio converts them, so that the ANNOTATIONS_CREATED
    webhook this conversion sends finds them known and does not record the same accept twice.
    """
    state = store.state(pid)
    protected = set(state.get("audit_task_ids", []))
    tasks = {int(t["id"]): t for t in ls.tasks()}
    chosen = [t for t in task_ids if t in tasks and not tasks[t].get("annotations") and t not in protected]
    store.mark_machine_labeled(pid, chosen)
    started = datetime.now(timezone.utc).isoformat()  # undo deletes what this accept created from here on
    try:
        ls.accept_predictions(chosen, version)
    except Exception:
        store.mark_machine_labeled(pid, chosen, labeled=False)
        raise
    record = write_accept_record(store, pid, version, chosen, certificate.to_dict(), source="worker (AUTO_ACCEPT)", created_at=started)
    logger.info("project %s: accepted %d certified predictions of %s (record %s)", pid, len(chosen), version, record["id"])
    return {"record": record["id"], "accepted": len(chosen)}


def record_label_studio_accept(store: ModelStore, pid: str, annotations: list[dict[str, Any]]) -> dict[str, Any] | None:
    """Record a bulk accept a person ran in Label Studio (Create Annotations From Predictions).

    Label Studio reports it as one ANNOTATIONS_CREATED webhook, the only event it sends in bulk. Tasks
    already known as machine-labeled (the worker's own AUTO_ACCEPT) are not recorded again. The record
    names the project's current version and that version's certificate, since the candidates view lists
    the current version's certified band.
    """
    task_ids = sorted({_task_id(a) for a in annotations if a.get("parent_prediction") is not None})
    new = store.mark_machine_labeled(pid, task_ids)
    if not new:
        return None
    version = store.current_version(pid) or "unknown"
    certificate = read_calibration(store.version_dir(pid, version)).get("certificate") or {}
    started = min((a.get("created_at") or "" for a in annotations), default="") or None
    record = write_accept_record(store, pid, version, new, certificate, source="Label Studio", created_at=started)
    logger.info("project %s: recorded a bulk accept of %d predictions made in Label Studio (record %s)", pid, len(new), record["id"])
    return record


def _task_id(annotation: dict[str, Any]) -> int:
    task = annotation.get("task")
    return int(task["id"] if isinstance(task, dict) else task)


def write_accept_record(store: ModelStore, pid: str, version: str, task_ids: list[int], certificate: dict[str, Any],
                        source: str, created_at: str | None = None) -> dict[str, Any]:
    """The record ``weather-al undo-accept`` reads: model version, threshold, certified bound, task ids."""
    now = datetime.now(timezone.utc)
    record = {
        "id": now.strftime("%Y%m%dT%H%M%S%f"), "created_at": created_at or now.isoformat(), "source": source,
        "version": version, "threshold": certificate.get("threshold"),
        "certified_lower_bound": certificate.get("lower_bound"), "target": certificate.get("target"),
        "delta": certificate.get("delta"), "task_ids": sorted(task_ids), "undone": False,
    }
    write_json_atomic(store.record_dir(pid, ACCEPTS) / f"{record['id']}.json", record)
    return record


def list_accepts(store: ModelStore, pid: str) -> list[dict[str, Any]]:
    return [json.loads(p.read_text()) for p in sorted(store.record_dir(pid, ACCEPTS).glob("*.json"))]


def undo_accept(ls: LabelStudioProject, store: ModelStore, pid: str, record_id: str) -> int:
    """Delete the annotations a bulk accept created (those made from a prediction, on its tasks)."""
    path = store.record_dir(pid, ACCEPTS) / f"{record_id}.json"
    if not path.is_file():
        known = ", ".join(r["id"] for r in list_accepts(store, pid)) or "none"
        raise FileNotFoundError(f"no bulk-accept record {record_id} in project {pid} (records: {known})")
    record = json.loads(path.read_text())
    if record.get("undone"):
        return 0
    ids = set(record["task_ids"])
    doomed = []
    for task in ls.tasks():
        if int(task["id"]) in ids:
            for ann in task.get("annotations") or []:
                ann = as_dict(ann)
                if ann.get("parent_prediction") is not None and (ann.get("created_at") or "") >= record["created_at"][:19]:
                    doomed.append(int(ann["id"]))
    ls.delete_annotations(doomed)
    record["undone"] = True
    write_json_atomic(path, record)
    store.mark_machine_labeled(pid, sorted(ids), labeled=False)
    logger.info("project %s: undid bulk accept %s (%d annotations deleted)", pid, record_id, len(doomed))
    return len(doomed)
