"""Kept simulation runs: a RunTrace and rows survive a save and a load, and only a finished run counts as finished."""

import numpy as np
import pytest

from model.sim.results import RunStore, RunTrace, load_rows, save_rows

ARRAYS = (
    "pool_risk",
    "correct_calibration",
    "correct_labels",
    "correct_truth",
    "train_ids",
    "holdout_ids",
    "audit_ids",
    "probe_ids",
    "test_predicted_loss",
    "test_true_loss",
)


def _trace(strategy: str = "loss", seed: int = 1, pool: int = 12) -> RunTrace:
    rng = np.random.default_rng(seed)
    loss = rng.random(pool)
    loss[3] = np.nan  # an unreadable image
    return RunTrace(
        strategy=strategy,
        seed=seed,
        pool_risk=loss,
        correct_calibration=rng.random(pool) > 0.3,
        correct_labels=rng.random(pool) > 0.3,
        correct_truth=rng.random(pool) > 0.2,
        train_ids=np.array([0, 1, 2], dtype=np.int64),
        holdout_ids=np.array([4, 5], dtype=np.int64),
        audit_ids=np.array([6, 7, 8], dtype=np.int64),
        probe_ids=np.array([9, 10], dtype=np.int64),
        test_predicted_loss=rng.random(5).astype(np.float32),
        test_true_loss=rng.random(5).astype(np.float32),
    )


def _row(strategy: str, seed: int, cycle: int) -> dict:
    return {"strategy": strategy, "seed": seed, "cycle": cycle, "macro_f1": np.float64(0.5), "threshold": None}


def _assert_same(a: RunTrace, b: RunTrace) -> None:
    assert (a.strategy, a.seed) == (b.strategy, b.seed)
    for name in ARRAYS:
        np.testing.assert_array_equal(getattr(a, name), getattr(b, name))
        assert getattr(a, name).dtype == getattr(b, name).dtype, name


def test_run_trace_round_trip(tmp_path):
    trace = _trace()
    trace.save(tmp_path / "trace.npz")
    assert [p.name for p in tmp_path.iterdir()] == ["trace.npz"]  # no temporary file left behind
    _assert_same(RunTrace.load(tmp_path / "trace.npz"), trace)


def test_run_trace_without_audits_or_probes_round_trips(tmp_path):
    trace = _trace()
    trace.audit_ids = trace.probe_ids = np.zeros(0, dtype=np.int64)
    trace.save(tmp_path / "t.npz")
    loaded = RunTrace.load(tmp_path / "t.npz")
    assert loaded.audit_ids.size == 0 and loaded.probe_ids.size == 0


def test_rows_keep_their_types(tmp_path):
    rows = [_row("loss", 0, 0) | {"auto_share": float("nan")}]
    save_rows(tmp_path / "rows.json", rows)
    back = load_rows(tmp_path / "rows.json")
    assert back[0]["macro_f1"] == 0.5 and isinstance(back[0]["cycle"], int) and back[0]["threshold"] is None
    assert np.isnan(back[0]["auto_share"])


def test_a_finished_run_is_kept_and_loaded(tmp_path):
    store = RunStore(tmp_path)
    store.start("loss", 1)
    for cycle in range(3):
        store.save_row(_row("loss", 1, cycle))
    assert not store.is_finished("loss", 1)
    store.finish(_trace("loss", 1), {"commit": "abc123"})

    later = RunStore(tmp_path)  # a later session
    assert later.is_finished("loss", 1)
    run = later.load("loss", 1)
    assert [r["cycle"] for r in run.rows] == [0, 1, 2]
    assert run.meta == {"commit": "abc123"}
    _assert_same(run.trace, _trace("loss", 1))


def test_a_run_cut_short_is_not_finished_but_its_rows_time_later_sessions(tmp_path):
    store = RunStore(tmp_path)
    store.start("random", 0)
    store.save_row(_row("random", 0, 0))  # killed here, before the run's last cycle and its trace
    later = RunStore(tmp_path)
    assert not later.is_finished("random", 0)
    assert [(r["strategy"], r["cycle"]) for r in later.recorded_rows()] == [("random", 0)]


def test_a_run_cut_short_after_its_trace_is_not_finished(tmp_path):
    store = RunStore(tmp_path)
    store.start("margin", 0)
    store.save_row(_row("margin", 0, 0))
    _trace("margin", 0).save(store.folder("margin", 0) / RunStore.TRACE)  # done.json not yet written
    assert not RunStore(tmp_path).is_finished("margin", 0)


def test_starting_a_finished_run_again_forgets_it(tmp_path):
    store = RunStore(tmp_path)
    store.start("loss", 0)
    store.save_row(_row("loss", 0, 0))
    store.finish(_trace("loss", 0), {})
    store.start("loss", 0)  # --fresh: run it again
    assert not store.is_finished("loss", 0)
    assert store.recorded_rows() == []


def test_finishing_a_run_without_rows_is_refused(tmp_path):
    store = RunStore(tmp_path)
    store.start("loss", 0)
    with pytest.raises(ValueError, match="no saved rows"):
        store.finish(_trace("loss", 0), {})
    assert not store.is_finished("loss", 0)
