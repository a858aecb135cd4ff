"""The model store's per-project state: concurrent writers from several processes lose nothing."""

from __future__ import annotations

import multiprocessing as mp
from pathlib import Path

from backend.store import ModelStore


def _add_machine_labels(root: str, ids: list[int]) -> None:
    store = ModelStore(Path(root))
    for i in ids:
        store.mark_machine_labeled("3", [i])
        store.modify_state("3", lambda s: s.update(events=s.get("events", 0) + 1))


def test_state_updates_from_two_processes_are_not_lost(tmp_path):
    ctx = mp.get_context("fork")
    procs = [ctx.Process(target=_add_machine_labels, args=(str(tmp_path), list(range(k, 120, 2)))) for k in (0, 1)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(60)
        assert p.exitcode == 0
    state = ModelStore(tmp_path).state("3")
    assert state["machine_task_ids"] == list(range(120))
    assert state["events"] == 120


def test_marking_reports_only_what_changed(tmp_path):
    store = ModelStore(tmp_path)
    assert store.mark_machine_labeled("3", [5, 1, 5]) == [1, 5]
    assert store.mark_machine_labeled("3", [1, 2]) == [2]
    assert store.mark_machine_labeled("3", [2, 9], labeled=False) == [2]
    assert store.state("3")["machine_task_ids"] == [1, 5]
