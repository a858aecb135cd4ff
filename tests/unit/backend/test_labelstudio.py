"""Issue 11 item 16: Label Studio calls are retried only when that is safe, and a bounded number of times.

Against a fake Label Studio over HTTP (tests/fake_label_studio.py) and the real SDK client, so that the SDK's
own retries and exception types are in play: a 4xx or a bug is not retried, a 5xx on a read is retried
ATTEMPTS times in all (not ATTEMPTS x the SDK's 3), and a POST that committed before its answer was lost is
not committed twice (predictions, conversions, views).
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from fake_label_studio import FakeLabelStudio, serve

import backend.labelstudio.client as labelstudio
from backend.labelstudio.client import ATTEMPTS, LabelStudioError, LabelStudioProject, from_version, retry


@pytest.fixture(autouse=True)
def no_backoff(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(labelstudio, "FIRST_WAIT_S", 0.0)


@pytest.fixture
def fake() -> Iterator[FakeLabelStudio]:
    yield from serve()


@pytest.fixture
def ls(fake: FakeLabelStudio) -> LabelStudioProject:
    return LabelStudioProject(fake.url, "test-token", fake.project_id)


def test_a_4xx_is_not_retried(fake: FakeLabelStudio, ls: LabelStudioProject) -> None:
    fake.faults["project"].append(400)
    with pytest.raises(LabelStudioError, match="refused to read project 1: HTTP 400"):
        ls.project()
    assert fake.count("GET", "project") == 1


def test_a_bug_is_not_retried() -> None:
    calls = []

    def buggy() -> None:
        calls.append(1)
        raise KeyError("id")

    with pytest.raises(KeyError):
        retry(buggy, "do something")
    assert len(calls) == 1


@pytest.mark.parametrize("fault", [500, 429, "drop"])
def test_a_transient_failure_of_a_read_is_retried(fake: FakeLabelStudio, ls: LabelStudioProject, fault: object) -> None:
    fake.add_task(1)
    fake.faults["tasks"].extend([fault, fault])
    assert [t["id"] for t in ls.tasks()] == [1]
    assert fake.count("GET", "tasks") == 3 + 1  # two failures, then a page and the pager's empty last page


def test_a_5xx_on_a_read_costs_a_bounded_number_of_requests(fake: FakeLabelStudio, ls: LabelStudioProject) -> None:
    """Before: our 5 tries each ran the SDK's 3, 15 requests for one call."""
    fake.faults["project"].extend([500] * 20)
    with pytest.raises(LabelStudioError, match=f"after {ATTEMPTS} attempts"):
        ls.project()
    assert fake.count("GET", "project") == ATTEMPTS


@pytest.mark.parametrize("fault", ["commit-drop", "commit-500", "drop", 500])
def test_an_import_is_never_committed_twice(fake: FakeLabelStudio, ls: LabelStudioProject, fault: object) -> None:
    """The import's answer lost after Label Studio stored it (or nothing stored): each task ends with one
    prediction of the version, not two."""
    for tid in (1, 2, 3):
        fake.add_task(tid)
    fake.add_prediction(1, "v0")  # an older version's prediction does not count as imported
    fake.faults["import"].append(fault)
    ls.import_predictions([{"task": tid, "model_version": "v1", "score": 0.5, "result": []} for tid in (1, 2, 3)])
    held = {tid: sum(p["model_version"] == "v1" for p in fake.tasks[tid]["predictions"]) for tid in (1, 2, 3)}
    assert held == {1: 1, 2: 1, 3: 1}
    committed_first = str(fault).startswith("commit")
    assert fake.count("POST", "import") == (1 if committed_first else 2)


def test_an_import_retried_sends_only_what_is_missing(fake: FakeLabelStudio, ls: LabelStudioProject) -> None:
    for tid in (1, 2):
        fake.add_task(tid)
    fake.add_prediction(1, "v1")  # e.g. stored by an earlier try of the same import
    fake.faults["import"].append("drop")
    ls.import_predictions([{"task": tid, "model_version": "v1", "score": 0.5, "result": []} for tid in (1, 2)])
    assert [len(fake.tasks[tid]["predictions"]) for tid in (1, 2)] == [1, 1]


def test_an_import_needs_model_versions(ls: LabelStudioProject) -> None:
    with pytest.raises(ValueError, match="model_version"):
        ls.import_predictions([{"task": 1, "score": 0.5, "result": []}])


@pytest.mark.parametrize("fault", ["commit-drop", "commit-500"])
def test_a_conversion_that_committed_is_not_repeated(
    fake: FakeLabelStudio, ls: LabelStudioProject, fault: object
) -> None:
    for tid in (1, 2):
        fake.add_task(tid)
        fake.add_prediction(tid, "v1")
    fake.faults["convert"].append(fault)
    ls.accept_predictions([1, 2], "v1")
    assert [len(fake.tasks[tid]["annotations"]) for tid in (1, 2)] == [1, 1]
    assert fake.count("POST", "convert") == 1


def test_a_view_created_before_its_answer_was_lost_is_updated_not_created_twice(
    fake: FakeLabelStudio, ls: LabelStudioProject
) -> None:
    fake.faults["create-view"].append("commit-drop")
    vid = ls.ensure_view("Queue", ["tasks:predictions_score"])
    assert list(fake.views) == [vid] and fake.views[vid]["data"]["title"] == "Queue"
    assert fake.count("POST", "create-view") == 1 and fake.count("PATCH", "update-view") == 1


def test_delete_reports_what_is_gone(fake: FakeLabelStudio, ls: LabelStudioProject) -> None:
    """A retried DELETE whose first try went through answers 404: gone all the same. One that keeps failing
    is left out, and the others are still deleted."""
    fake.add_task(1)
    a, b, c = (fake.add_annotation(1)["id"] for _ in range(3))
    fake.faults["delete"].extend(["commit-drop", "ok", *[500] * ATTEMPTS])  # a: gone, then 404; b: 500s; c: fine
    assert ls.delete_annotations([a, b, c]) == [a, c]
    assert fake.annotation_ids(1) == [b]


def test_from_version_matches_annotations_by_their_parent_prediction() -> None:
    task = {
        "id": 1,
        "predictions": [{"id": 10, "model_version": "v1"}, {"id": 11, "model_version": "v0"}, 12],
        "annotations": [
            {"id": 1, "parent_prediction": 10},
            {"id": 2, "parent_prediction": 11},
            {"id": 3, "parent_prediction": None},
            {"id": 4, "parent_prediction": 12},
        ],
    }
    assert [a["id"] for a in from_version(task, "v1")] == [1]
