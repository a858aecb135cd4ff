"""The active-learning benchmark resumes: finished runs are kept and skipped, runs cut short are run again.

simulate() is replaced by a fake that makes rows and traces from nothing, so no model trains here.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from model.schema import LabelSchema
from model.sim.results import RunStore, RunTrace, SimulationResult
from model.sim.simulate import result_columns

BENCHMARKS = Path(__file__).resolve().parents[3] / "benchmarks"
CYCLES = 2


@pytest.fixture
def bench(monkeypatch):
    monkeypatch.syspath_prepend(str(BENCHMARKS))
    import bench_active_learning

    return bench_active_learning


class FakeSimulate:
    """simulate()'s contract as the benchmark uses it: on_row per cycle, on_run per finished run (seeds
    outermost); ``kill_at`` stops a run."""

    def __init__(self, kill_at: tuple[str, int] | None = None) -> None:
        self.calls: list[tuple[list[str], list[int]]] = []
        self.kill_at = kill_at

    def __call__(self, data, strategies, seeds, out_dir, *, cycles, on_row, on_run, **kwargs) -> SimulationResult:
        self.calls.append((list(strategies), list(seeds)))
        columns = result_columns(LabelSchema.from_file())
        settings = {
            "pool": 40,
            "test": 10,
            "seed_size": 20,
            "k": 5,
            "audit_size": 3,
            "probe_size": 4,
            "score": "confidence",
            "cycles": cycles,
            "seeds": seeds,
            "calibration_labels": "truth",
            "target": 0.95,
            "delta": 0.05,
            "has_truth": True,
            "train_config": {"image_size": 48, "backbone": "resnet18", "epochs": 1, "device": "cpu"},
        }
        traces = []
        for seed in seeds:
            for strategy in strategies:
                for cycle in range(cycles + 1):
                    if (strategy, seed) == self.kill_at and cycle == 1:
                        raise KeyboardInterrupt  # the benchmark is killed in this run's second cycle
                    row = {c: 0.5 for c in columns}
                    row.update(strategy=strategy, seed=seed, cycle=cycle, labels=100 + 50 * cycle, time_train=10.0)
                    row.update(labels_by_people=120 + 70 * cycle)
                    on_row(row)
                traces.append(_trace(strategy, seed))
                on_run(traces[-1], settings)
        return SimulationResult(rows=[], traces=traces, settings=settings, results_path=Path(out_dir) / "results.csv")


def _trace(strategy: str, seed: int, pool: int = 40) -> RunTrace:
    rng = np.random.default_rng(seed)
    return RunTrace(
        strategy=strategy,
        seed=seed,
        pool_risk=rng.random(pool),
        correct_calibration=rng.random(pool) > 0.1,
        correct_labels=rng.random(pool) > 0.1,
        correct_truth=rng.random(pool) > 0.1,
        train_ids=np.arange(0, 10),
        holdout_ids=np.arange(10, 20),
        audit_ids=np.arange(20, 23),
        probe_ids=np.arange(23, 30),
        test_predicted_loss=rng.random(10),
        test_true_loss=rng.random(10),
    )


def _main(bench, monkeypatch, tmp_path, fake: FakeSimulate, *extra: str) -> int:
    monkeypatch.setattr(bench, "simulate", fake)
    monkeypatch.setattr(bench, "synthetic_set", lambda directory, n: directory / "manifest.csv")
    monkeypatch.setattr(bench.SimulationData, "from_manifest", lambda *a, **kw: None)
    argv = ["--out", str(tmp_path / "out"), "--cache-dir", str(tmp_path / "cache"), "--data", str(tmp_path)]
    argv += ["--cycles", str(CYCLES), "--seeds", "0,1", "--strategies", "random,margin"]
    argv += ["--draws", "2", "--feature-cache", str(tmp_path / "features"), *extra]
    return bench.main(argv)


def test_a_rerun_skips_finished_runs_and_runs_the_one_cut_short(bench, monkeypatch, tmp_path):
    killed = FakeSimulate(kill_at=("random", 1))
    with pytest.raises(KeyboardInterrupt):
        _main(bench, monkeypatch, tmp_path, killed)
    assert killed.calls == [(["random", "margin"], [0, 1])]  # one call; each run kept as it ends
    (store_root,) = (tmp_path / "cache").iterdir()
    store = RunStore(store_root)
    assert [store.is_finished(s, d) for d, s in [(0, "random"), (0, "margin"), (1, "random")]] == [True, True, False]

    rerun = FakeSimulate()
    assert _main(bench, monkeypatch, tmp_path, rerun) == 0
    assert rerun.calls == [(["random", "margin"], [1])]
    text = (tmp_path / "out" / "benchmark.md").read_text()
    assert "| random | 1 |" in text and "| margin | 0 |" in text  # the tables cover every run, old and new
    assert (tmp_path / "out" / "report.html").is_file()
    assert len((tmp_path / "out" / "results.csv").read_text().splitlines()) == 1 + 4 * (CYCLES + 1)

    again = FakeSimulate()
    assert _main(bench, monkeypatch, tmp_path, again) == 0
    assert again.calls == []
    fresh = FakeSimulate()
    assert _main(bench, monkeypatch, tmp_path, fresh, "--fresh") == 0
    assert fresh.calls == [(["random", "margin"], [0, 1])]


def test_other_settings_keep_their_runs_apart(bench, monkeypatch, tmp_path):
    _main(bench, monkeypatch, tmp_path, FakeSimulate())
    other = FakeSimulate()
    _main(bench, monkeypatch, tmp_path, other, "--k", "7")
    assert other.calls == [(["random", "margin"], [0, 1])] and len(list((tmp_path / "cache").iterdir())) == 2


def test_calls_are_as_few_products_as_the_runs_left_allow(bench):
    todo = [(s, d) for d in (0, 1, 2) for s in ("a", "b", "c")]
    assert bench.batches(todo) == [(["a", "b", "c"], [0, 1, 2])]
    assert bench.batches([("b", 0), ("a", 1), ("b", 1), ("a", 2), ("b", 2)]) == [(["b"], [0]), (["a", "b"], [1, 2])]


def test_time_left_from_mean_times_per_cycle(bench):
    def row(strategy, seed, cycle, seconds):
        return (
            {"strategy": strategy, "seed": seed, "cycle": cycle}
            | {p: 0.0 for p in bench.PHASES}
            | {"time_train": seconds}
        )

    earlier = [row("loss", 0, 0, 10.0), row("loss", 0, 1, 20.0)]  # a run cut short in an earlier session
    progress = bench.Progress(earlier, [("loss", 0), ("random", 0)], cycles=2, jobs=1)
    # 2 runs x cycles 0, 1, 2 at 10, 20 and (not timed yet: as cycle 1) 20 s
    assert progress.seconds_left() == pytest.approx(100.0)
    line = progress.cycle_done(row("loss", 0, 0, 30.0))  # cycle 0 now means 20 s
    assert line.startswith("loss seed 0: cycle 0/2 in 30 s; 5 cycle(s) to go")
    assert progress.seconds_left() == pytest.approx(20 + 20 + 20 + 20 + 20)
    assert bench.Progress([], [("loss", 0)], cycles=2, jobs=1).seconds_left() is None


def test_probe_redraws_measure_what_the_bound_promises(bench):
    """The miss-rate check draws probes uniformly from what the run left unlabeled: a band that is truly
    precise certifies and never misses; on a pool under the target, the bound keeps misses to about delta."""
    n = 4000
    risk = np.linspace(0.0, 1.0, n)
    rng = np.random.default_rng(0)
    precise = _trace("confidence", 0, pool=n)
    precise.pool_risk, precise.probe_ids = risk, np.arange(100, 400)
    precise.correct_calibration = precise.correct_truth = risk < 0.5  # right exactly in the low-risk half
    check = bench.probe_redraw_check(precise, draws=50, target=0.95, delta=0.05)
    assert check["probes"] == 300 and check["nothing_certified"] < 5
    assert check["miss_rate"] == 0 and check["min_precision"] >= 0.95 and 0.3 < check["mean_share"] < 0.55
    # its own probes are the lowest-risk ones left (risk up to 0.1): certified, the band is what lies under them
    assert check["own_precision_truth"] == 1.0 and 0 < check["own_share"] < 0.1

    noisy = _trace("random", 0, pool=n)
    noisy.pool_risk, noisy.probe_ids = rng.permutation(risk), np.arange(100, 400)
    noisy.correct_calibration = noisy.correct_truth = rng.random(n) < 0.93  # under the target everywhere
    check = bench.probe_redraw_check(noisy, draws=200, target=0.95, delta=0.05)
    assert check["miss_rate"] <= 0.1 and check["nothing_certified"] > 150
