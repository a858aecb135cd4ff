"""The model store: concurrent writers on one or several machines lose nothing; a corrupt file stops nothing."""

from __future__ import annotations

import errno
import fcntl
import json
import logging
import multiprocessing as mp
import os
from pathlib import Path

import pytest

from backend.queue import Broker
from backend.store import ModelStore, StateLockUnavailable


def _add_machine_labels(root: str, ids: list[int]) -> None:
    store = ModelStore(Path(root))
    for i in ids:
        store.mark_machine_labeled("3", [i])
        store.modify_state("3", lambda s: s.update(events=s.get("events", 0) + 1))


def test_state_updates_from_two_processes_are_not_lost(tmp_path):
    ctx = mp.get_context("spawn")  # fork can copy a lock held by another thread and hang
    procs = [ctx.Process(target=_add_machine_labels, args=(str(tmp_path), list(range(k, 120, 2)))) for k in (0, 1)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(60)
        assert p.exitcode == 0
    state = ModelStore(tmp_path).state("3")
    assert state["machine_task_ids"] == list(range(120))
    assert state["events"] == 120


def test_version_numbers_count_versions_not_the_record_folders_beside_them(tmp_path):
    store = ModelStore(tmp_path)
    assert store.accept_records("3") == []  # makes the accepts/ folder, as a cycle's first look at accepts does
    assert store.new_version_name("3").startswith("v1-")
    (store.project_dir("3") / "v1-20260101T000000").mkdir()
    assert store.new_version_name("3").startswith("v2-")


def test_marking_reports_only_what_changed(tmp_path):
    store = ModelStore(tmp_path)
    assert store.mark_machine_labeled("3", [5, 1, 5]) == [1, 5]
    assert store.mark_machine_labeled("3", [1, 2]) == [2]
    assert store.mark_machine_labeled("3", [2, 9], labeled=False) == [2]
    assert store.state("3")["machine_task_ids"] == [1, 5]


# --- corrupt files (issue 11, item 13) --------------------------------------------------------------------------

GARBAGE = {
    "empty": b"",
    "truncated": b'{"machine_task_ids": [1, 2',
    "a list": b"[]",
    "wrong type": b'{"runs": "many"}',
    "probes not task ids": b'{"probe_task_ids": ["22"]}',
    "not UTF-8": b"\xff\xfe\x00garbage",
}


def _version(root: Path, project: str, name: str, promoted: bool, trained_on: dict[str, list[int]]) -> Path:
    """A version folder as the store sees one (meta.json, trained_on.json), without training a model."""
    d = root / project / name
    d.mkdir(parents=True)
    (d / "meta.json").write_text(json.dumps({"version": name, "promoted": promoted, "n_labeled": 10}))
    (d / "trained_on.json").write_text(json.dumps(trained_on))
    return d


def _accept(root: Path, project: str, record_id: str, task_ids: list[int], undone: bool) -> None:
    d = root / project / "accepts"
    d.mkdir(parents=True, exist_ok=True)
    (d / f"{record_id}.json").write_text(json.dumps({"id": record_id, "task_ids": task_ids, "undone": undone}))


def _aside(path: Path) -> list[Path]:
    return sorted(path.parent.glob(f"{path.name}.corrupt-*"))


@pytest.mark.parametrize("garbage", GARBAGE.values(), ids=GARBAGE.keys())
def test_corrupt_state_is_moved_aside_and_rebuilt_from_records_and_versions(tmp_path, caplog, garbage):
    store = ModelStore(tmp_path)
    _version(tmp_path, "3", "v1-a", True, {"all": [1, 2, 3, 4], "calibration": [2, 4]})
    _version(tmp_path, "3", "v2-b", True, {"all": [1, 2, 3, 4, 20, 21, 22], "calibration": [2, 4, 20], "probes": [22]})
    (tmp_path / "3" / "CURRENT").write_text("v2-b")
    _accept(tmp_path, "3", "r1", [30, 31], undone=False)
    _accept(tmp_path, "3", "r2", [40], undone=True)
    (tmp_path / "3" / "accepts" / "r3.json").write_text("{not json")
    (tmp_path / "3" / "state.json").write_bytes(garbage)

    state = store.state("3")
    assert state == {
        "machine_task_ids": [30, 31],
        "random_task_ids": [1, 2, 3, 4],
        "audit_task_ids": [20],
        "probe_task_ids": [22],
    }
    assert json.loads((tmp_path / "3" / "state.json").read_text()) == state  # rebuilt once, not on every read
    (aside,) = _aside(tmp_path / "3" / "state.json")
    assert aside.read_bytes() == garbage
    assert [p.name for p in _aside(tmp_path / "3" / "accepts" / "r3.json")]  # the broken record is out of the way
    assert any(
        "state.json" in r.getMessage() and "moved aside" in r.getMessage()
        for r in caplog.records
        if r.levelno == logging.ERROR
    )
    assert store.mark_machine_labeled("3", [32]) == [32]  # later updates work on the rebuilt state
    assert store.state("3")["machine_task_ids"] == [30, 31, 32]


def test_an_update_replaces_a_corrupt_state_instead_of_failing(tmp_path):
    store = ModelStore(tmp_path)
    store.project_dir("3")
    (tmp_path / "3" / "state.json").write_text('{"runs": {"promoted": "two"}}')
    store.modify_state("3", lambda s: s.setdefault("runs", {}).update(failed=1))
    assert store.state("3") == {
        "machine_task_ids": [],
        "random_task_ids": [],
        "audit_task_ids": [],
        "probe_task_ids": [],
        "runs": {"failed": 1},
    }
    assert len(_aside(tmp_path / "3" / "state.json")) == 1


def test_a_version_with_corrupt_meta_is_skipped_and_current_falls_back(tmp_path, caplog):
    store = ModelStore(tmp_path)
    _version(tmp_path, "3", "v1-a", True, {"all": [1]})
    broken = _version(tmp_path, "3", "v2-b", True, {"all": [1, 2]})
    (tmp_path / "3" / "CURRENT").write_text("v2-b")
    (broken / "meta.json").write_text('{"version": "v2-b", "promo')

    assert [v["version"] for v in store.versions("3")] == ["v1-a"]
    assert store.current_version("3") == "v1-a"
    assert [p.read_text() for p in _aside(broken / "meta.json")] == ['{"version": "v2-b", "promo']
    with pytest.raises(FileNotFoundError, match="meta.json"):
        store.load("3", "v2-b")
    with pytest.raises(FileNotFoundError, match="not complete"):
        store.promote("3", "v2-b")
    assert any("CURRENT names version 'v2-b'" in r.getMessage() for r in caplog.records)
    (tmp_path / "3" / "CURRENT").write_bytes(b"../../etc\xff")
    assert store.current_version("3") == "v1-a"


def test_corrupt_metrics_and_trained_on_are_moved_aside(tmp_path):
    store = ModelStore(tmp_path)
    d = _version(tmp_path, "3", "v1-a", True, {"train": [1, 2]})
    (d / "metrics.json").write_text("[1, 2")
    (d / "trained_on.json").write_text('{"train": "1,2"}')
    assert store.versions("3")[0]["metrics"] == {}
    with pytest.raises(FileNotFoundError, match="trained_on.json"):
        store.trained_on("3", "v1-a")
    assert len(_aside(d / "metrics.json")) == 1 and len(_aside(d / "trained_on.json")) == 1


def test_metrics_and_versions_answer_for_every_project_when_one_has_corrupt_files(tmp_path, broker):
    from test_app import make_client

    store = ModelStore(tmp_path / "models")
    store.update_state("4", human_labeled=40, runs={"promoted": 2})
    _accept(tmp_path / "models", "5", "r1", [7, 8, 9], undone=False)
    (tmp_path / "models" / "5" / "state.json").write_text("\x00\x00\x00")
    broken = _version(tmp_path / "models", "6", "v1-a", True, {"all": [1]})
    (broken / "meta.json").write_text("")
    (tmp_path / "models" / "6" / "CURRENT").write_text("v1-a")
    (tmp_path / "models" / "6" / "state.json").write_text('{"machine_task_ids": {"1": 2}}')

    c = make_client(tmp_path, broker)
    r = c.get("/metrics")
    assert r.status_code == 200
    text = r.get_data(as_text=True)
    assert 'weather_al_human_labeled{project="4"} 40.0' in text
    assert 'weather_al_training_runs{project="4",result="promoted"} 2.0' in text
    assert 'weather_al_machine_labeled{project="5"} 3.0' in text
    assert 'weather_al_machine_labeled{project="6"} 0.0' in text
    versions = c.get("/versions")
    assert versions.status_code == 200 and versions.get_json()["projects"]["6"] == []
    assert store.state("5")["machine_task_ids"] == [7, 8, 9]
    assert _aside(tmp_path / "models" / "5" / "state.json") and _aside(broken / "meta.json")


# --- several machines (issue 11, item 18) -----------------------------------------------------------------------

REDIS_URL = os.environ.get("TEST_REDIS_URL", "redis://127.0.0.1:6379/15")


@pytest.fixture()
def broker() -> Broker:
    b = Broker(REDIS_URL)
    if not b.ping():
        pytest.fail(f"these tests need a real Redis at {REDIS_URL} (.ci/run starts one)")
    return b


def _add_from_another_machine(root: str, redis_url: str, ids: list[int], flock: str) -> None:
    """One process of a deployment whose filesystem does not serialise flock across machines.

    "ignored": the lock succeeds but excludes no one elsewhere (NFS mounted with local locks: each
    machine only sees its own); "refused": the filesystem answers ENOLCK (NFS without a lock daemon).
    """

    def ignored(fd, op) -> None:
        return None

    def refused(fd, op) -> None:
        raise OSError(errno.ENOLCK, os.strerror(errno.ENOLCK))

    fcntl.flock = ignored if flock == "ignored" else refused
    store = ModelStore(Path(root), redis_url)
    for i in ids:
        store.mark_machine_labeled("3", [i])


@pytest.mark.parametrize("flock", ["ignored", "refused"])
def test_redis_lock_serialises_state_where_flock_does_not(tmp_path, broker, flock):
    ctx = mp.get_context("spawn")
    procs = [
        ctx.Process(target=_add_from_another_machine, args=(str(tmp_path), REDIS_URL, list(range(k, 400, 2)), flock))
        for k in (0, 1)
    ]
    for p in procs:
        p.start()
    for p in procs:
        p.join(120)
        assert p.exitcode == 0
    assert ModelStore(tmp_path, broker.conn).state("3")["machine_task_ids"] == list(range(400))


def test_an_unreachable_redis_changes_nothing_and_says_so(tmp_path):
    store = ModelStore(tmp_path, "redis://:hunter2@127.0.0.1:1/0")
    with pytest.raises(StateLockUnavailable, match="Redis") as info:
        store.mark_machine_labeled("3", [1])
    assert "hunter2" not in str(info.value)
    assert not (tmp_path / "3" / "state.json").exists()


def test_a_corrupt_accept_record_is_moved_aside_and_the_others_still_listed(tmp_path, caplog):
    """`weather-al undo-accept` lists the records: one unreadable record must not hide the others."""
    from backend.worker.accepts import list_accepts, write_accept_record

    store = ModelStore(tmp_path)
    good = write_accept_record(store, "3", "v1", [1, 2], {}, source="test")
    (store.record_dir("3", "accepts") / "20200101T000000000000.json").write_text('{"task_ids": [1,')
    with caplog.at_level(logging.ERROR):
        assert [r["id"] for r in list_accepts(store, "3")] == [good["id"]]
    assert list((store.record_dir("3", "accepts")).glob("*.corrupt-*")) and "moved aside" in caplog.text
