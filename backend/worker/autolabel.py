"""The Label Studio side of the three bands: views, bulk accept of the certified band, and its undo.

Views (Data Manager tabs) after every training:
- "Active learning queue": unlabeled tasks, ascending score = most likely wrong first;
- "Auto-annotation candidates": unlabeled tasks of the certified band, audit and probe tasks excluded;
- "Audit sample": a random sample of the candidates for people to verify ("Label Tasks As Displayed");
- "Random probes": tasks drawn uniformly at random from the pool for people to label; the certificate
  is computed on them alone.

A certificate holds for the pool its probes were drawn from and nothing else (model.al.certify), so the
worker records each version's pool (``record_pool``) and a bulk accept converts only tasks of that pool:
never a task imported or unlabeled after the certification, nor a task a person labeled, an audit task or
a probe. It is recorded (model version, threshold, certified bound, task ids, annotation ids; see
``accepts``) so that ``weather-al undo-accept`` can take it back.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Iterable, Mapping
from typing import Any

from backend.labelstudio.client import (
    AUDIT_VIEW,
    CANDIDATES_VIEW,
    PROBES_VIEW,
    QUEUE_VIEW,
    LabelStudioError,
    LabelStudioProject,
    as_dict,
    from_version,
    range_filter,
    task_id_filters,
    unlabeled_filter,
)
from backend.store import ModelStore
from backend.worker.accepts import ACCEPTS, edited_by_a_person, list_accepts, write_accept_record
from model.al.certify import Certificate, pool_digest
from model.atomic import write_json_atomic

logger = logging.getLogger(__name__)

#: The task ids of the pool a version's cycle scored and certified, in that version's folder
POOL_FILE = "pool.json"


def record_pool(store: ModelStore, pid: str, version: str, task_ids: Iterable[int]) -> str:
    """Record the pool ``version``'s cycle scores; returns its digest (model.al.certify.pool_digest), which the
    cycle's certificate names. A bulk accept under that certificate reads the pool back (``certified_pool``)."""
    ids = sorted(int(t) for t in task_ids)
    write_json_atomic(store.version_dir(pid, version) / POOL_FILE, {"task_ids": ids})
    return pool_digest(str(t) for t in ids)


def certified_pool(store: ModelStore, pid: str, version: str, certificate: Certificate) -> set[int] | None:
    """The task ids of the pool ``certificate`` speaks for, if it is the pool ``version``'s cycle scored; else None,
    with the reason logged (a certificate for another pool, one that certifies nothing, no record of the pool)."""
    path = store.version_dir(pid, version) / POOL_FILE
    try:
        ids = [int(t) for t in json.loads(path.read_text())["task_ids"]]
    except (OSError, ValueError, KeyError, TypeError) as exc:
        logger.error(
            "project %s: no readable record of the pool version %s certified (%s: %s); nothing accepted: train "
            "again (Start Training) to certify the pool as it is now",
            pid,
            version,
            path.name,
            exc,
        )
        return None
    digest = pool_digest(str(t) for t in ids)
    if not certificate.speaks_for(digest):
        logger.error(
            "project %s: the certificate speaks for pool %s (threshold %s), not for pool %s that version %s scored; "
            "nothing accepted: a certificate holds only for the pool its probes were drawn from",
            pid,
            certificate.pool,
            certificate.threshold,
            digest,
            version,
        )
        return None
    return set(ids)


def update_views(
    ls: LabelStudioProject, certified: Mapping[int, float], audit_ids: list[int], probe_ids: list[int]
) -> dict[str, int]:
    """Bring the four tabs up to date. ``certified``: the certified band's task ids and their scores (empty when
    nothing is certified); ``audit_ids``, ``probe_ids``: the audit and probe tasks still waiting for a person.

    Label Studio's filters have no "id in list" for an "and" of thousands, so the candidates tab is the band's
    score range AND its id range: a task imported since the certification has a larger id (Label Studio
    numbers tasks in import order) and is never listed; ``accept_band`` checks membership exactly.
    """
    queue = ls.ensure_view(
        QUEUE_VIEW, ["tasks:predictions_score"], {"conjunction": "and", "items": [unlabeled_filter()]}
    )
    if certified:
        band = [
            range_filter("predictions_score", min(certified.values()), 1.0),
            range_filter("id", min(certified), max(certified)),
        ]
    else:
        band = [range_filter("predictions_score", 2.0, 1.0)]  # nothing scores above 1: an empty tab
    waiting = sorted(set(audit_ids) | set(probe_ids))
    candidates = ls.ensure_view(
        CANDIDATES_VIEW,
        ["tasks:predictions_score"],
        {"conjunction": "and", "items": [*band, unlabeled_filter(), *task_id_filters(waiting, "not_equal")]},
    )
    return {
        "queue": queue,
        "candidates": candidates,
        "audit": _task_list_view(ls, AUDIT_VIEW, audit_ids),
        "probes": _task_list_view(ls, PROBES_VIEW, probe_ids),
    }


def _task_list_view(ls: LabelStudioProject, title: str, task_ids: list[int]) -> int:
    """A tab listing exactly ``task_ids``, by id (none: a filter on task 0, which Label Studio never numbers)."""
    items = task_id_filters(task_ids, "equal") or task_id_filters([0], "equal")
    return ls.ensure_view(title, ["tasks:id"], {"conjunction": "or", "items": items})


def accept_band(
    ls: LabelStudioProject, store: ModelStore, pid: str, version: str, task_ids: list[int], certificate: Certificate
) -> dict[str, Any]:
    """Convert the certified predictions to annotations, skipping human-labeled, audit and probe tasks and every
    task outside the pool ``certificate`` speaks for; record it.

    The pool is the one ``version``'s cycle recorded (``record_pool``): a certificate for another pool accepts
    nothing, and a task that was not in the pool (imported, or unlabeled again, after the certification) is
    skipped and logged: the certificate says nothing about it.

    The tasks are marked machine-labeled before Label Studio converts them, so that the ANNOTATIONS_CREATED
    webhook this conversion sends finds them known and does not record the same accept twice.

    Afterwards, what Label Studio holds decides, whether the conversion succeeded or failed (a failed one may
    have committed: the answer was lost, or an error came after the write): tasks that now carry an annotation
    from this version's prediction stay machine-labeled and are recorded with those annotation ids (they must
    never train as people's labels, and undo deletes exactly them); only the others are un-marked. Then a
    failure is raised.
    """
    pool = certified_pool(store, pid, version, certificate)
    if pool is None:
        return {"record": None, "accepted": 0, "outside_pool": len(task_ids)}
    outside = sorted(set(task_ids) - pool)
    if outside:
        logger.warning(
            "project %s: %d of %d tasks to accept were not in the pool version %s certified (imported or unlabeled "
            "again since); skipped, the certificate says nothing about them: %s",
            pid,
            len(outside),
            len(task_ids),
            version,
            outside[:20],
        )
    state = store.state(pid)
    protected = set(state.get("audit_task_ids", [])) | set(state.get("probe_task_ids", []))
    tasks = {int(t["id"]): t for t in ls.tasks()}
    chosen = [
        t for t in task_ids if t in pool and t in tasks and not tasks[t].get("annotations") and t not in protected
    ]
    store.mark_machine_labeled(pid, chosen)
    try:
        ls.accept_predictions(chosen, version)
    except Exception:
        _settle(ls, store, pid, version, chosen, certificate, failed=True)
        raise
    return {**_settle(ls, store, pid, version, chosen, certificate, failed=False), "outside_pool": len(outside)}


def _settle(
    ls: LabelStudioProject,
    store: ModelStore,
    pid: str,
    version: str,
    chosen: list[int],
    certificate: Certificate,
    failed: bool,
) -> dict[str, Any]:
    """Record what the conversion of ``chosen`` created in Label Studio and un-mark the tasks it did not touch.

    If Label Studio cannot be read back, every chosen task stays marked and is recorded without annotation
    ids (undo then finds them by model version): a machine label taken for a person's would train the
    model, while a stale mark on an unlabeled task costs nothing and undo clears it.
    """
    source = "worker (AUTO_ACCEPT" + (", failed)" if failed else ")")
    try:
        created = _created_annotations(ls.tasks(), chosen, version)
    except LabelStudioError as exc:
        logger.error(
            "project %s: cannot read back what the bulk accept of %s created (%s); all %d tasks stay "
            "machine-labeled and recorded: check them in Label Studio, undo-accept takes them back",
            pid,
            version,
            exc,
            len(chosen),
        )
        record = write_accept_record(store, pid, version, chosen, certificate.to_dict(), source=source)
        return {"record": record["id"], "accepted": len(chosen)}
    store.mark_machine_labeled(pid, [t for t in chosen if t not in created], labeled=False)
    if not created:
        return {"record": None, "accepted": 0}
    record = write_accept_record(
        store,
        pid,
        version,
        sorted(created),
        certificate.to_dict(),
        source=source,
        annotation_ids=sorted(a for ids in created.values() for a in ids),
    )
    if failed:
        logger.error(
            "project %s: the bulk accept of %s failed, but Label Studio converted %d of %d tasks; they stay "
            "machine-labeled (record %s)",
            pid,
            version,
            len(created),
            len(chosen),
            record["id"],
        )
    else:
        logger.info(
            "project %s: accepted %d certified predictions of %s (record %s)", pid, len(created), version, record["id"]
        )
    return {"record": record["id"], "accepted": len(created)}


def _created_annotations(tasks: list[dict[str, Any]], task_ids: list[int], version: str) -> dict[int, list[int]]:
    """Per task of ``task_ids`` that holds any, the ids of its annotations made from ``version``'s prediction."""
    wanted = set(task_ids)
    found = {int(t["id"]): [int(a["id"]) for a in from_version(t, version)] for t in tasks if int(t["id"]) in wanted}
    return {tid: ids for tid, ids in found.items() if ids}


def undo_accept(ls: LabelStudioProject, store: ModelStore, pid: str, record_id: str) -> dict[str, Any]:
    """Delete the annotations a bulk accept created, and un-mark exactly the tasks they were deleted from.

    The accept's annotations are found by what they are, not by when they were made (Label Studio's clock
    and the worker's need not agree): the annotation ids in the record, or, for a record without them, the
    annotations on its tasks made from a prediction of its model version. An annotation a person saved
    since (``edited_by_a_person``) is theirs now and stays. Returns the number deleted and the ids of the
    tasks kept that way. If some cannot be deleted, their tasks stay machine-labeled, the record stays
    open for another undo, and a LabelStudioError says so.
    """
    path = store.record_dir(pid, ACCEPTS) / f"{record_id}.json"
    if not path.is_file():
        known = ", ".join(r["id"] for r in list_accepts(store, pid)) or "none"
        raise FileNotFoundError(f"no bulk-accept record {record_id} in project {pid} (records: {known})")
    record = json.loads(path.read_text())
    if record.get("undone"):
        return {"deleted": 0, "kept": []}
    ids = set(record["task_ids"])
    tasks = [t for t in ls.tasks() if int(t["id"]) in ids]
    doomed: dict[int, int] = {}  # annotation id -> task id
    kept = []
    for tid, ann in _accept_annotations(tasks, record):
        if edited_by_a_person(ann):
            kept.append(tid)
        else:
            doomed[int(ann["id"])] = tid
    deleted = ls.delete_annotations(sorted(doomed))
    failed = sorted(set(doomed) - set(deleted))
    bare = {int(t["id"]) for t in tasks if not t.get("annotations")}  # nothing machine-made left (e.g. never converted)
    store.mark_machine_labeled(pid, sorted(bare | {doomed[a] for a in deleted}), labeled=False)
    record["undone"] = not failed
    record["kept_edited_task_ids"] = sorted(kept)
    write_json_atomic(path, record)
    if failed:
        raise LabelStudioError(
            f"undo of bulk accept {record_id}: {len(failed)} of {len(doomed)} annotations could not "
            f"be deleted ({failed[:10]}); their tasks stay machine-labeled; run undo-accept again"
        )
    logger.info(
        "project %s: undid bulk accept %s (%d annotations deleted, %d kept: a person saved them since)",
        pid,
        record_id,
        len(deleted),
        len(kept),
    )
    return {"deleted": len(deleted), "kept": sorted(kept)}


def _accept_annotations(tasks: list[dict[str, Any]], record: dict[str, Any]) -> list[tuple[int, dict[str, Any]]]:
    """(task id, annotation) for each annotation on the record's ``tasks`` that its accept created."""
    recorded = None if record.get("annotation_ids") is None else set(record["annotation_ids"])
    found = []
    for task in tasks:
        tid = int(task["id"])
        if recorded is None:
            found += [(tid, a) for a in from_version(task, record["version"])]
        else:
            found += [
                (tid, a)
                for a in map(as_dict, task.get("annotations") or [])
                if a.get("id") in recorded and a.get("parent_prediction") is not None
            ]
    return found
