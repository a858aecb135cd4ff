"""The Label Studio side of the three bands: views, bulk accept of the certified band, and its undo.

Views (Data Manager tabs) after every training:
- "Active learning queue": unlabeled tasks, ascending score = highest predicted loss first;
- "Auto-annotation candidates": unlabeled tasks in the certified band, audit sample excluded;
- "Audit sample": a random sample of the candidates for people to verify ("Label Tasks As Displayed").

A bulk accept never touches a task a person labeled or an audit task, and is recorded (model version,
threshold, certified bound, task ids; see ``accepts``) so that ``weather-al undo-accept`` can take it back.
"""

from __future__ import annotations

import json
import logging
from datetime import datetime, timezone
from typing import Any

from model.certify import Certificate
from model.checkpoint import write_json_atomic

from .accepts import ACCEPTS, edited_by_a_person, list_accepts, write_accept_record
from .labelstudio import (AUDIT_VIEW, CANDIDATES_VIEW, QUEUE_VIEW, LabelStudioProject, as_dict, score_range_filter,
                          task_id_filters, unlabeled_filter)
from .store import ModelStore

logger = logging.getLogger(__name__)


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


def undo_accept(ls: LabelStudioProject, store: ModelStore, pid: str, record_id: str) -> dict[str, Any]:
    """Delete the annotations a bulk accept created (those made from a prediction, on its tasks).

    An annotation a person saved since the accept (``edited_by_a_person``) is theirs now and stays.
    Returns the number deleted and the ids of the tasks kept that way.
    """
    path = store.record_dir(pid, ACCEPTS) / f"{record_id}.json"
    if not path.is_file():
        known = ", ".join(r["id"] for r in list_accepts(store, pid)) or "none"
        raise FileNotFoundError(f"no bulk-accept record {record_id} in project {pid} (records: {known})")
    record = json.loads(path.read_text())
    if record.get("undone"):
        return {"deleted": 0, "kept": []}
    ids = set(record["task_ids"])
    doomed, kept = [], []
    for task in ls.tasks():
        if int(task["id"]) in ids:
            for ann in task.get("annotations") or []:
                ann = as_dict(ann)
                if ann.get("parent_prediction") is None or (ann.get("created_at") or "") < record["created_at"][:19]:
                    continue
                if edited_by_a_person(ann):
                    kept.append(int(task["id"]))
                else:
                    doomed.append(int(ann["id"]))
    ls.delete_annotations(doomed)
    record["undone"] = True
    record["kept_edited_task_ids"] = sorted(kept)
    write_json_atomic(path, record)
    store.mark_machine_labeled(pid, sorted(ids), labeled=False)
    logger.info("project %s: undid bulk accept %s (%d annotations deleted, %d kept: a person saved them since)",
                pid, record_id, len(doomed), len(kept))
    return {"deleted": len(doomed), "kept": sorted(kept)}
