"""`weather-al simulate` on a tiny synthetic pool: the real training path, two strategies, two cycles."""

import csv
import json

import numpy as np
import pytest

from backend.cli import main
from model.schema import LabelSchema
from model.sim.scenes import generate
from model.sim.simulate import SimulationData, result_columns, simulate
from model.training.trainer import TrainConfig

POOL, TEST, SEED_SIZE, K, AUDIT, PROBES, CYCLES = 40, 12, 20, 6, 4, 3, 2
# a few optimizer steps: the test checks the loop, not what the model learns
TINY_TRAINING = dict(image_size=48, epochs=1, min_steps=2, workers=0, device="cpu")


@pytest.fixture(scope="module")
def scenes(tmp_path_factory):
    return generate(tmp_path_factory.mktemp("scenes"), POOL + TEST, seed=3, size=(128, 72), progress=False, workers=1)


def test_simulate_command_writes_results_and_report(scenes, tmp_path):
    out = tmp_path / "sim"
    config = tmp_path / "config.json"
    config.write_text(json.dumps(TINY_TRAINING))
    argv = [
        "simulate",
        "--data",
        str(scenes.manifest_path),
        "--out",
        str(out),
        "--pool",
        str(POOL),
        "--test",
        str(TEST),
        "--seed-size",
        str(SEED_SIZE),
        "--k",
        str(K),
        "--audit",
        str(AUDIT),
        "--probes",
        str(PROBES),
        "--cycles",
        str(CYCLES),
        "--seeds",
        "0",
        "--strategies",
        "loss,random",
        "--config",
        str(config),
    ]
    assert main(argv) == 0
    with (out / "results.csv").open(newline="") as fh:
        reader = csv.DictReader(fh)
        rows = list(reader)
    assert reader.fieldnames == result_columns(LabelSchema.from_file())
    assert [(r["strategy"], int(r["cycle"])) for r in rows] == [
        (s, c) for s in ("loss", "random") for c in range(CYCLES + 1)
    ]
    for r in rows:
        cycle = int(r["cycle"])
        assert int(r["probe_labels"]) <= PROBES * cycle and int(r["audit_labels"]) <= AUDIT * cycle
        if cycle == 1:  # the tiny pool runs out after that
            assert int(r["probe_labels"]) == PROBES and int(r["audit_labels"]) == AUDIT
        # every label a person gave has one role: training, fit (holdout, audits) or probe
        assert int(r["train_labels"]) + int(r["calibration_labels"]) + int(r["probes"]) == int(r["labels_by_people"])
        assert int(r["labels_by_people"]) == int(r["labels"]) + int(r["audit_labels"]) + int(r["probe_labels"])
        assert 0.0 <= float(r["macro_f1"]) <= 1.0 and float(r["time_train"]) > 0
        assert r["threshold"] == "" and float(r["auto_share"] or 0) == 0  # a handful of probes certify nothing
        assert int(r["more_labels_needed"]) > 0 and r["score"] in ("confidence", "joint max-softmax")
    html = (out / "report.html").read_text()
    assert html.count("data:image/png;base64,") == 4 and "<table>" in html


def _tiny_run(sim: SimulationData, strategy: str, seed: int, out, **kwargs):
    """One run on the tiny pool, audits and probes revealing the truth, no report."""
    return simulate(
        sim,
        [strategy],
        [seed],
        out,
        seed_size=SEED_SIZE,
        k=K,
        audit_size=AUDIT,
        train_config=TrainConfig(**TINY_TRAINING),
        calibration_labels="truth",
        progress=False,
        report=False,
        **kwargs,
    )


def test_probes_never_train_or_fit_until_the_strategy_picks_them(scenes, tmp_path):
    """Issue 14: the probes certify and nothing else; a probe the strategy picks trains from then on."""
    sim = SimulationData.from_manifest(scenes.manifest_path, pool_size=POOL, test_size=TEST)
    result = _tiny_run(sim, "random", 0, tmp_path, cycles=CYCLES, probe_size=PROBES)
    trace = result.traces[0]
    probes = set(trace.probe_ids.tolist())
    fit = set(trace.holdout_ids.tolist()) | set(trace.audit_ids.tolist())
    assert probes and not probes & set(trace.train_ids.tolist()) and not probes & fit
    moved = sum(r["probes_to_train"] for r in result.rows[:-1])  # the last plan's picks are not revealed
    last = result.rows[-1]
    assert 0 < last["probe_labels"] <= PROBES * CYCLES and len(probes) == last["probe_labels"] - moved
    assert last["train_labels"] == len(trace.train_ids) and last["probes"] == len(probes)


def test_calibration_labels_never_train_and_manual_picks_never_calibrate(scenes, tmp_path):
    sim = SimulationData.from_manifest(scenes.manifest_path, pool_size=POOL, test_size=TEST)
    assert sim.has_truth and len(sim.pool) == POOL and len(sim.test) == TEST
    assert not {e.key for e in sim.pool} & {e.key for e in sim.test}
    result = _tiny_run(sim, "loss", 1, tmp_path, cycles=1)
    trace = result.traces[0]
    calibration = set(trace.holdout_ids.tolist()) | set(trace.audit_ids.tolist())
    assert not calibration & set(trace.train_ids.tolist())
    assert len(trace.audit_ids) == AUDIT
    assert len(trace.train_ids) + len(trace.holdout_ids) == SEED_SIZE + K  # simulate's default probes: none picked yet
    assert np.isfinite(trace.pool_risk).all() and len(trace.test_true_loss) == TEST
    with pytest.raises(ValueError, match="unknown or no strategies"):
        simulate(sim, ["best"], [0], tmp_path)


def test_parallel_runs_record_every_cycle_in_run_order(scenes, tmp_path):
    sim = SimulationData.from_manifest(scenes.manifest_path, pool_size=POOL, test_size=TEST)
    kwargs = dict(
        seed_size=SEED_SIZE,
        k=K,
        cycles=1,
        audit_size=AUDIT,
        train_config=TrainConfig(**TINY_TRAINING),
        progress=False,
        report=False,
    )
    serial = simulate(sim, ["random", "loss"], [0, 1], tmp_path / "serial", **kwargs)
    rows_when_finished: dict[tuple[str, int], int] = {}
    seen: list[tuple[str, int]] = []
    parallel = simulate(
        sim,
        ["random", "loss"],
        [0, 1],
        tmp_path / "parallel",
        jobs=2,
        on_row=lambda row: seen.append((row["strategy"], row["seed"])),
        on_run=lambda trace, settings: rows_when_finished.setdefault(
            (trace.strategy, trace.seed), seen.count((trace.strategy, trace.seed))
        ),
        **kwargs,
    )

    def counts(row):
        return tuple(
            row[c]
            for c in ("strategy", "seed", "cycle", "labels", "train_labels", "calibration_labels", "audit_labels")
        )

    assert [counts(r) for r in parallel.rows] == [counts(r) for r in serial.rows]
    assert [(t.strategy, t.seed) for t in parallel.traces] == [("random", 0), ("loss", 0), ("random", 1), ("loss", 1)]
    assert rows_when_finished == {run: 2 for run in seen}  # each run handed back once, after all its rows
    with (tmp_path / "parallel" / "results.csv").open(newline="") as fh:
        assert len(list(csv.DictReader(fh))) == 4 * 2
    for a, b in zip(serial.traces, parallel.traces):
        assert np.array_equal(a.holdout_ids, b.holdout_ids)
        if a.strategy == "random":  # its picks do not depend on the model: a worker draws what the serial run drew
            assert np.array_equal(a.train_ids, b.train_ids)
    assert not list((tmp_path / "parallel").glob(".decoded-*"))  # the decoded pixels are cleaned up


def test_simulate_takes_any_label_config(scenes, tmp_path):
    """A one-head project (weather only) simulates with its own heads, through the feature cache asked for."""
    config = tmp_path / "weather_only.xml"
    config.write_text(
        '<View><Image name="image" value="$image"/>'
        '<Choices name="weather" toName="image" choice="single">'
        '<Choice value="clear"/><Choice value="rain"/><Choice value="snow"/></Choices></View>'
    )
    training = tmp_path / "training.json"
    training.write_text(json.dumps(TINY_TRAINING))
    out, cache = tmp_path / "sim", tmp_path / "features"
    argv = ["simulate", "--data", str(scenes.manifest_path), "--out", str(out), "--pool", str(POOL)]
    argv += ["--test", str(TEST), "--seed-size", str(SEED_SIZE), "--k", str(K), "--audit", str(AUDIT)]
    argv += ["--cycles", "1", "--seeds", "0", "--strategies", "margin", "--config", str(training)]
    argv += ["--label-config", str(config), "--feature-cache", str(cache)]
    assert main(argv) == 0
    with (out / "results.csv").open(newline="") as fh:
        reader = csv.DictReader(fh)
        rows = list(reader)
    assert reader.fieldnames == result_columns(LabelSchema.from_file(config))
    assert "f1_weather" in reader.fieldnames and "f1_timeofday" not in reader.fieldnames
    assert len(rows) == 2 and all(0.0 <= float(r["macro_f1"]) <= 1.0 for r in rows)
    assert list(cache.rglob("*.bin"))  # the features were kept where the command line said
