"""Issue 11 items 4 and 6: a bulk accept and its undo agree with what Label Studio actually holds; issue 14: a
bulk accept converts only tasks of the pool its certificate speaks for, never an audit or probe task.

Item 4: a conversion that fails after Label Studio committed some or all of it leaves those tasks
machine-labeled and recorded (so they never train as people's labels, and undo finds them); only the
tasks Label Studio did not convert are un-marked. Item 6: undo finds the accept's annotations by their
ids and their prediction's model version, not by comparing Label Studio's clock with the worker's, and
un-marks only the tasks whose machine annotation it deleted.

Against a fake Label Studio over HTTP (tests/fake_label_studio.py) and the real SDK client.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from dataclasses import replace
from datetime import timedelta
from pathlib import Path

import pytest
from fake_label_studio import FakeLabelStudio, serve

import backend.labelstudio.client as labelstudio
from backend.labelstudio.client import (
    ATTEMPTS,
    AUDIT_VIEW,
    CANDIDATES_VIEW,
    PROBES_VIEW,
    LabelStudioError,
    LabelStudioProject,
)
from backend.store import ModelStore
from backend.worker.accepts import list_accepts, record_label_studio_accept, write_accept_record
from backend.worker.autolabel import accept_band, record_pool, undo_accept, update_views
from model.al.certify import Certificate, pool_digest

PID = "1"
POOL = list(range(1, 7))  # the pool v1's cycle scored and certified: the fake's six open tasks
CERTIFICATE = Certificate(
    threshold=0.3,
    lower_bound=0.96,
    precision=1.0,
    n_calibration=120,
    n_in_band=60,
    target=0.95,
    delta=0.05,
    more_labels_needed=None,
    message="test",
    pool=pool_digest(str(t) for t in POOL),
)


@pytest.fixture(autouse=True)
def no_backoff(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(labelstudio, "FIRST_WAIT_S", 0.0)


@pytest.fixture
def fake() -> Iterator[FakeLabelStudio]:
    """Six open tasks with a v1 prediction each; Label Studio's clock one second behind the worker's."""
    for running in serve(clock_skew=timedelta(seconds=-1)):
        for tid in range(1, 7):
            running.add_task(tid)
            running.add_prediction(tid, "v1")
        yield running


@pytest.fixture
def ls(fake: FakeLabelStudio) -> LabelStudioProject:
    return LabelStudioProject(fake.url, "test-token", fake.project_id)


@pytest.fixture
def store(tmp_path: Path) -> ModelStore:
    """A store where version v1 recorded its pool, as the worker does before it certifies."""
    models = ModelStore(tmp_path / "models")
    models.version_dir(PID, "v1").mkdir()
    assert record_pool(models, PID, "v1", POOL) == CERTIFICATE.pool
    return models


def machine(store: ModelStore) -> list[int]:
    return store.state(PID).get("machine_task_ids", [])


def test_a_conversion_that_failed_after_converting_part_keeps_and_records_what_it_made(
    fake: FakeLabelStudio, ls: LabelStudioProject, store: ModelStore
) -> None:
    fake.convert_budget = 2  # Label Studio converts two tasks, then answers 500 to every try
    with pytest.raises(LabelStudioError, match=f"after {ATTEMPTS} attempts"):
        accept_band(ls, store, PID, "v1", [1, 2, 3, 4, 5, 6], CERTIFICATE)
    converted = [tid for tid in fake.tasks if fake.tasks[tid]["annotations"]]
    assert converted == [1, 2]
    assert machine(store) == converted  # the machine labels never train; the others are open again
    (record,) = list_accepts(store, PID)
    assert record["task_ids"] == converted and record["version"] == "v1"
    assert record["annotation_ids"] == sorted(a for tid in converted for a in fake.annotation_ids(tid))

    assert undo_accept(ls, store, PID, record["id"]) == {"deleted": 2, "kept": []}
    assert not any(t["annotations"] for t in fake.tasks.values()) and machine(store) == []


def test_a_conversion_that_committed_and_then_was_refused_keeps_every_machine_label(
    fake: FakeLabelStudio, ls: LabelStudioProject, store: ModelStore
) -> None:
    fake.faults["convert"].append("commit-400")
    with pytest.raises(LabelStudioError, match="refused"):
        accept_band(ls, store, PID, "v1", [1, 2, 3], CERTIFICATE)
    assert machine(store) == [1, 2, 3]
    (record,) = list_accepts(store, PID)
    assert record["task_ids"] == [1, 2, 3] and len(record["annotation_ids"]) == 3


def test_a_failed_conversion_that_made_nothing_unmarks_everything(
    fake: FakeLabelStudio, ls: LabelStudioProject, store: ModelStore
) -> None:
    fake.faults["convert"].append(400)
    with pytest.raises(LabelStudioError):
        accept_band(ls, store, PID, "v1", [1, 2, 3], CERTIFICATE)
    assert machine(store) == [] and list_accepts(store, PID) == []


def test_undo_does_not_compare_clocks(fake: FakeLabelStudio, ls: LabelStudioProject, store: ModelStore) -> None:
    """Label Studio's clock is a second behind the worker's (see ``fake``): before, undo skipped every
    annotation as older than the accept, deleted nothing, and un-marked the tasks anyway."""
    outcome = accept_band(ls, store, PID, "v1", [1, 2, 3], CERTIFICATE)
    assert outcome["accepted"] == 3 and machine(store) == [1, 2, 3]
    assert undo_accept(ls, store, PID, outcome["record"]) == {"deleted": 3, "kept": []}
    assert not any(t["annotations"] for t in fake.tasks.values()) and machine(store) == []
    assert list_accepts(store, PID)[0]["undone"] is True


def test_undo_leaves_another_version_s_annotation_and_its_mark(
    fake: FakeLabelStudio, ls: LabelStudioProject, store: ModelStore
) -> None:
    """A record without annotation ids (an older one) is undone by model version: task 2 holds a machine
    label from v0's prediction, which another accept made; it stays, and stays machine-labeled."""
    fake.add_annotation(1, parent_prediction=fake.tasks[1]["predictions"][0]["id"])
    other = fake.add_annotation(2, parent_prediction=fake.add_prediction(2, "v0")["id"])
    person = fake.add_annotation(3)
    store.mark_machine_labeled(PID, [1, 2])
    record = write_accept_record(store, PID, "v1", [1, 2, 3], {}, source="test", created_at="2000-01-01T00:00:00Z")
    assert undo_accept(ls, store, PID, record["id"]) == {"deleted": 1, "kept": []}
    assert fake.annotation_ids(1) == [] and fake.annotation_ids(2) == [other["id"]]
    assert fake.annotation_ids(3) == [person["id"]]  # a person's own label on a task of the record
    assert machine(store) == [2]


def test_undo_unmarks_only_what_it_deleted(fake: FakeLabelStudio, ls: LabelStudioProject, store: ModelStore) -> None:
    outcome = accept_band(ls, store, PID, "v1", [1, 2, 3], CERTIFICATE)
    edited = fake.tasks[1]["annotations"][0]
    edited["updated_by"] = 7  # a person saved the machine label of task 1 since: theirs now
    stuck = fake.annotation_ids(2)[0]
    fake.faults["delete"].extend([500] * ATTEMPTS)  # the first delete (task 2's) keeps failing
    with pytest.raises(LabelStudioError, match="1 of 2 annotations could not be deleted"):
        undo_accept(ls, store, PID, outcome["record"])
    assert [fake.annotation_ids(tid) for tid in (1, 2, 3)] == [[edited["id"]], [stuck], []]
    assert machine(store) == [1, 2]  # 3 deleted; 1 kept as the person's (its webhook releases it); 2 still there
    record = list_accepts(store, PID)[0]
    assert record["undone"] is False and record["kept_edited_task_ids"] == [1]

    assert undo_accept(ls, store, PID, outcome["record"]) == {"deleted": 1, "kept": [1]}  # run again: the rest
    assert fake.annotation_ids(2) == [] and machine(store) == [1] and list_accepts(store, PID)[0]["undone"] is True


def test_a_bulk_accept_made_in_label_studio_is_undone_by_its_annotation_ids(
    fake: FakeLabelStudio, ls: LabelStudioProject, store: ModelStore
) -> None:
    """The webhook's record names the annotations it reports: undo deletes exactly those, even when the
    person converted another version's predictions than the record's guess (the current version)."""
    made = [fake.add_annotation(tid, parent_prediction=fake.add_prediction(tid, "v0")["id"]) for tid in (1, 2)]
    record = record_label_studio_accept(store, PID, [dict(a) for a in made])
    assert record is not None and record["annotation_ids"] == [a["id"] for a in made]
    assert undo_accept(ls, store, PID, record["id"]) == {"deleted": 2, "kept": []}
    assert fake.annotation_ids(1) == fake.annotation_ids(2) == [] and machine(store) == []


def test_a_band_certified_on_probes_from_one_pool_is_not_reused_for_another(
    fake: FakeLabelStudio, ls: LabelStudioProject, store: ModelStore, caplog: pytest.LogCaptureFixture
) -> None:
    """A certificate names the pool its probes were drawn from; v1 scored another (task 7 was imported since): its
    certificate accepts nothing there, not even the tasks the two pools share."""
    fake.add_task(7)
    fake.add_prediction(7, "v1")
    record_pool(store, PID, "v1", [*POOL, 7])
    with caplog.at_level(logging.ERROR):
        outcome = accept_band(ls, store, PID, "v1", [1, 2, 7], CERTIFICATE)
    assert outcome["accepted"] == 0 and outcome["record"] is None
    assert not any(t["annotations"] for t in fake.tasks.values()) and machine(store) == []
    assert list_accepts(store, PID) == [] and "holds only for the pool its probes were drawn from" in caplog.text
    uncertified = replace(CERTIFICATE, threshold=None)  # right pool, but it certified nothing
    assert accept_band(ls, store, PID, "v1", [1, 2], uncertified)["accepted"] == 0


def test_a_task_imported_after_the_certification_is_not_accepted(
    fake: FakeLabelStudio, ls: LabelStudioProject, store: ModelStore, caplog: pytest.LogCaptureFixture
) -> None:
    fake.add_task(7)
    fake.add_prediction(7, "v1")  # e.g. from /predict: same version, but not in the pool v1 certified
    with caplog.at_level(logging.WARNING):
        outcome = accept_band(ls, store, PID, "v1", [1, 2, 7], CERTIFICATE)
    assert outcome["accepted"] == 2 and outcome["outside_pool"] == 1
    assert fake.annotation_ids(7) == [] and machine(store) == [1, 2]
    assert "not in the pool version v1 certified" in caplog.text and "[7]" in caplog.text


def test_a_version_without_a_recorded_pool_accepts_nothing(
    fake: FakeLabelStudio, ls: LabelStudioProject, store: ModelStore
) -> None:
    """A version certified before certificates named their pool has no pool.json: nothing of it is accepted."""
    (store.version_dir(PID, "v1") / "pool.json").unlink()
    assert accept_band(ls, store, PID, "v1", [1, 2], CERTIFICATE)["accepted"] == 0
    assert machine(store) == []


def test_audit_and_probe_tasks_are_not_accepted(
    fake: FakeLabelStudio, ls: LabelStudioProject, store: ModelStore
) -> None:
    store.update_state(PID, audit_task_ids=[2], probe_task_ids=[3])
    assert accept_band(ls, store, PID, "v1", [1, 2, 3, 4], CERTIFICATE)["accepted"] == 2
    assert machine(store) == [1, 4] and fake.annotation_ids(2) == fake.annotation_ids(3) == []


def test_the_views_list_the_waiting_probes_and_keep_them_and_later_tasks_out_of_the_candidates(
    fake: FakeLabelStudio, ls: LabelStudioProject
) -> None:
    update_views(ls, certified={4: 0.97, 6: 0.99}, audit_ids=[2], probe_ids=[3, 5])
    views = {v["data"]["title"]: v["data"] for v in fake.views.values()}
    candidates = views[CANDIDATES_VIEW]["filters"]["items"]

    def in_range(column: str, low: float, high: float) -> dict:
        return {
            "filter": f"filter:tasks:{column}",
            "operator": "in",
            "type": "Number",
            "value": {"min": low, "max": high},
        }

    assert in_range("id", 4, 6) in candidates and in_range("predictions_score", 0.97, 1.0) in candidates
    excluded = [f["value"] for f in candidates if f["filter"] == "filter:tasks:id" and f["operator"] == "not_equal"]
    assert excluded == [2, 3, 5]

    def listed(title: str) -> list[int]:
        assert views[title]["filters"]["conjunction"] == "or"
        return [f["value"] for f in views[title]["filters"]["items"] if f["operator"] == "equal"]

    assert listed(AUDIT_VIEW) == [2] and listed(PROBES_VIEW) == [3, 5]
    update_views(ls, certified={}, audit_ids=[], probe_ids=[])  # nothing certified, nothing waiting: empty tabs
    views = {v["data"]["title"]: v["data"] for v in fake.views.values()}
    assert len(views) == 4 and listed(PROBES_VIEW) == [0]
    assert views[CANDIDATES_VIEW]["filters"]["items"][0]["value"] == {"min": 2.0, "max": 1.0}
