"""A training run's cycle with a fake Label Studio: lock loss, crash recovery, human labels, project settings.

Issue 11 items 5 (a person's label always wins and trains), 7 (a run that lost its lock writes nothing) and
14 (a crash at any write leaves Label Studio's model version and the store's CURRENT agreeing after recovery);
issue 14: the strategy and risk-score settings reach the cycle's plan, and the random probes keep their role
(never trained or fitted on, until the strategy picks one).
"""

from __future__ import annotations

import json
import logging
import os
import time
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
from tiny_data import write_tiny_set

from backend.labelstudio.client import UNCERTAINTY, UNIFORM
from backend.labelstudio.predictions import CALIBRATION_FILE
from backend.queue import Broker
from backend.settings import Settings, get_settings
from backend.store import ModelStore
from backend.worker import cycle as jobs
from backend.worker.accepts import write_accept_record
from backend.worker.cycle import run_cycle
from backend.worker.lease import LockLost, RunLease
from backend.worker.progress import CycleProgress, read_progress
from backend.worker.project_data import read_project
from model.al.cycle import Labeled, plan_cycle, probe_draw
from model.al.strategies import PoolView
from model.schema import DEFAULT_LABEL_CONFIG, LabelSchema
from model.training.trainer import TrainConfig

REDIS_URL = os.environ.get("TEST_REDIS_URL", "redis://127.0.0.1:6379/15")
SCHEMA = LabelSchema.from_file()
WRITES = ["import_predictions", "promote", "use_version"]


def annotation(
    aid: int,
    labels: dict[str, str],
    updated_at: str,
    parent_prediction: int | None = None,
    updated_by: int | None = None,
) -> dict:
    return {
        "id": aid,
        "updated_at": updated_at,
        "created_at": updated_at,
        "parent_prediction": parent_prediction,
        "updated_by": updated_by,
        "result": [
            {"type": "choices", "from_name": h, "to_name": SCHEMA.image_name, "value": {"choices": [v]}}
            for h, v in labels.items()
        ],
    }


class FakeLabelStudio:
    """The calls a cycle makes; ``fail_at`` names the write that raises (a crash there)."""

    def __init__(self, tasks: list[dict], fail_at: str | None = None) -> None:
        self.tasks_ = tasks
        self.fail_at = fail_at
        self.model_version: str | None = None
        self.sampling: str | None = None
        self.imported: list[dict] = []

    def label_config(self) -> str:
        return DEFAULT_LABEL_CONFIG.read_text()

    def tasks(self) -> list[dict]:
        return self.tasks_

    def project(self) -> dict:
        return {"model_version": self.model_version}

    def download_token(self) -> str:
        return "token"

    def set_sampling(self, sampling: str) -> None:
        self.sampling = sampling

    def import_predictions(self, predictions: list[dict]) -> None:
        self._maybe_fail("import_predictions")
        self.imported += predictions

    def use_version(self, version: str, sampling: str) -> None:
        self._maybe_fail("use_version")
        self.model_version, self.sampling = version, sampling

    def _maybe_fail(self, step: str) -> None:
        if self.fail_at == step:
            self.fail_at = None
            raise RuntimeError(f"crash at {step}")


@pytest.fixture()
def project(tmp_path, monkeypatch):
    """Project 3: 14 labeled and 12 unlabeled tiny images (enough for 3 probes a cycle, model.al.cycle.probe_draw),
    tiny training, images read from disk."""
    data = write_tiny_set(tmp_path / "imgs", 26)
    heads = [h.name for h in SCHEMA.heads]
    tasks = [
        {
            "id": i + 1,
            "data": {SCHEMA.image_key: str(data.root / rel)},
            "annotations": [annotation(100 + i, dict(zip(heads, (tod, wx))), "2026-01-01T00:00:00Z")] if i < 14 else [],
        }
        for i, (rel, tod, wx) in enumerate(data.rows)
    ]
    monkeypatch.setenv("MODEL_DIR", str(tmp_path / "models"))
    get_settings.cache_clear()
    monkeypatch.setattr(jobs, "training_config", lambda s: TrainConfig(image_size=48, epochs=1, min_steps=3, workers=0))
    monkeypatch.setattr(jobs, "fetch_all", lambda fetcher, items: {tid: Path(url) for tid, url in items})
    monkeypatch.setattr(jobs, "update_views", lambda *a, **k: {})
    fake = FakeLabelStudio(tasks)
    monkeypatch.setattr(jobs, "LabelStudioProject", lambda *a: fake)
    settings = Settings(
        model_dir=tmp_path / "models", min_labels=5, manual_batch=2, audit_size=1, label_studio_api_key=None
    )
    yield fake, settings, ModelStore(tmp_path / "models")
    get_settings.cache_clear()


@pytest.mark.parametrize("step", WRITES)
def test_a_crash_at_any_write_leaves_label_studio_and_current_agreeing_after_recovery(project, monkeypatch, step):
    fake, settings, store = project
    first = run_cycle("3", settings, store, None)
    assert fake.model_version == store.current_version("3") == first["version"]
    real_promote = ModelStore.promote

    def promote(self, *args):
        fake._maybe_fail("promote")
        real_promote(self, *args)

    monkeypatch.setattr(ModelStore, "promote", promote)
    monkeypatch.setattr(jobs, "should_promote", lambda *a: (True, {"reason": "test"}))
    fake.fail_at = step
    with pytest.raises(RuntimeError, match=f"crash at {step}"):
        run_cycle("3", settings, store, None)
    current = store.current_version("3")
    # the new version's audit sample and state were recorded before anything pointed at it
    assert store.state("3")["last_cycle"]["version"] != first["version"]
    monkeypatch.setattr(jobs, "train", lambda *a, **k: (_ for _ in ()).throw(RuntimeError("stop after recovery")))
    with pytest.raises(RuntimeError, match="stop after recovery"):
        run_cycle("3", settings, store, None)
    assert fake.model_version == store.current_version("3") == current


def test_a_run_that_lost_its_lock_writes_nothing(project):
    fake, settings, store = project
    broker = Broker(REDIS_URL)
    if not broker.ping():
        pytest.fail(f"this test needs a real Redis at {REDIS_URL}")
    broker.conn.flushdb()
    lease = RunLease(broker.lock("3", 8), 8, "3")
    assert lease.lock.acquire(blocking=False)
    lease.start()
    broker.conn.delete("weather-al:3:lock")  # expired, as after a long Redis outage; another run may take it
    deadline = time.monotonic() + 5
    while not lease.lost.is_set() and time.monotonic() < deadline:
        time.sleep(0.1)
    with pytest.raises(LockLost, match="lock was lost"):
        run_cycle("3", settings, store, broker, lease.check)
    lease.stop()
    assert store.current_version("3") is None and fake.model_version is None and not fake.imported
    assert not [d for d in store.project_dir("3").iterdir() if d.is_dir()]
    broker.conn.flushdb()


def test_project_extra_params_apply_to_its_runs(project):
    fake, settings, store = project
    store.update_state("3", extra_params={"MIN_LABELS": 50})
    out = run_cycle("3", settings, store, None)
    assert out["result"] == "waiting_for_labels" and "50" in out["message"]


@pytest.mark.parametrize("where", ["deployment", "project"])
def test_the_strategy_and_risk_score_settings_reach_the_worker(project, monkeypatch, where):
    """Issue 14: the manual band is chosen by the STRATEGY setting, the tasks scored by RISK_SCORE and PROBE_SIZE
    probes drawn (the deployment's settings, or the project's own)."""
    fake, settings, store = project
    if where == "deployment":
        settings = settings.model_copy(update={"strategy": "margin", "risk_score": "loss", "probe_size": 2})
    else:
        store.update_state("3", extra_params={"STRATEGY": "margin", "RISK_SCORE": "loss", "PROBE_SIZE": 2})
    used: list[tuple[str, str, int]] = []

    def recording_plan(*args, **kwargs):
        used.append((kwargs["strategy"], kwargs["score"], kwargs["probe_size"]))
        return plan_cycle(*args, **kwargs)

    monkeypatch.setattr(jobs, "plan_cycle", recording_plan)
    out = run_cycle("3", settings, store, None)
    assert out["result"] == "promoted" and used == [("margin", "loss", 2)]
    counts = out["summary"]["counts"]
    assert out["summary"]["score"] == "loss" and counts["probes"] == probe_draw(
        2, counts["pool"] - counts["manual"] - counts["audit"]
    )
    version_dir = store.version_dir("3", out["version"])
    assert json.loads((version_dir / CALIBRATION_FILE).read_text())["risk_score"] == {
        "source": "loss",
        "confidence": None,
    }


def label_tasks(fake: FakeLabelStudio, task_ids: list[int]) -> None:
    """A person labels ``task_ids`` (each with the first class of every head)."""
    first = {h.name: h.classes[0] for h in SCHEMA.heads}
    for tid in task_ids:
        fake.tasks_[tid - 1]["annotations"] = [annotation(500 + tid, first, "2026-01-02T00:00:00Z")]


def test_probes_are_never_trained_or_fitted_on_and_a_picked_probe_trains(project, monkeypatch):
    """Issue 14: the probes a cycle draws, once people label them, certify the next model and nothing else: they are
    neither in its training set (train or validation) nor in the labels that fit its risk score (calibration), nor
    in the promotion comparison; one the strategy picks moves to training, and new probes are drawn."""
    fake, settings, store = project
    settings = settings.model_copy(update={"probe_size": 3})
    first = run_cycle("3", settings, store, None)
    drawn = store.state("3")["probe_task_ids"]
    assert len(drawn) == 3 and first["summary"]["counts"]["probes"] == 3
    assert not set(drawn) & {tid for tid in range(1, 15)}  # from the unlabeled pool
    label_tasks(fake, drawn)
    plans, compared = [], []
    picked = drawn[1]

    def plan_picking_a_probe(pool, fit, probes, **kwargs):
        plan = plan_cycle(pool, fit, probes, **kwargs)
        plans.append((fit, probes, plan))
        return replace(plan, probes_to_train=np.array([1]))  # the strategy picks the second probe

    def recording_promote(store, pid, current, model, examples, tolerance):
        compared.extend(int(e.key) for e in examples)
        return True, {"reason": "test"}

    monkeypatch.setattr(jobs, "plan_cycle", plan_picking_a_probe)
    monkeypatch.setattr(jobs, "should_promote", recording_promote)
    second = run_cycle("3", settings, store, None)
    roles = store.trained_on("3", second["version"])
    assert roles["probes"] == sorted(drawn)
    assert not set(drawn) & set(roles["train"] + roles["validation"] + roles["calibration"] + compared)
    ((fit, probes, plan),) = plans
    assert len(probes.correct) == 3 and len(fit.correct) == len(roles["calibration"])
    assert plan.certificate.n_calibration == 3 and plan.certificate.pool is not None
    probe_ids = store.state("3")["probe_task_ids"]
    assert picked not in probe_ids and set(drawn) - {picked} <= set(probe_ids)

    third = run_cycle("3", settings, store, None)  # the picked probe trains now; the others still certify
    roles = store.trained_on("3", third["version"])
    assert picked in roles["train"] + roles["validation"] and picked not in roles["probes"]
    assert set(drawn) - {picked} <= set(roles["probes"])


def test_probes_in_an_accepted_band_leave_the_probes_and_train(project, monkeypatch):
    """Issue 14: accepting a band in bulk takes its tasks out of the pool; the probes inside that band must leave
    the probes by the same rule (else the rest over-represent what the band left behind), and train from then on."""
    fake, settings, store = project
    settings = settings.model_copy(update={"probe_size": 3})
    run_cycle("3", settings, store, None)
    drawn = store.state("3")["probe_task_ids"]
    label_tasks(fake, drawn)

    def plan_with_a_probe_in_band(pool, fit, probes, **kwargs):
        return replace(plan_cycle(pool, fit, probes, **kwargs), probes_in_band=np.array([0]))

    monkeypatch.setattr(jobs, "plan_cycle", plan_with_a_probe_in_band)
    second = run_cycle("3", settings, store, None)
    in_band = drawn[0]  # the probes reach plan_cycle in task order
    calibration = json.loads((store.version_dir("3", second["version"]) / CALIBRATION_FILE).read_text())
    assert calibration["probes_in_band"] == [in_band]
    monkeypatch.setattr(jobs, "plan_cycle", plan_cycle)
    third = run_cycle("3", settings, store, None)  # nothing accepted: the probe still certifies
    assert in_band in store.trained_on("3", third["version"])["probes"]

    write_accept_record(store, "3", second["version"], [1], calibration["certificate"], source="test")
    fourth = run_cycle("3", settings, store, None)
    roles = store.trained_on("3", fourth["version"])
    assert in_band not in roles["probes"] and in_band in roles["train"] + roles["validation"]
    assert set(drawn[1:]) <= set(roles["probes"])


def test_a_persons_label_wins_over_a_machine_one_and_trains(caplog):
    first, second = ({h.name: h.classes[i] for h in SCHEMA.heads} for i in (0, 1))
    person = annotation(1, first, "2026-01-01T10:00:00Z")
    machine = annotation(2, second, "2026-01-01T11:00:00Z", parent_prediction=9)
    edited = {**machine, "id": 3, "updated_by": 4, "updated_at": "2026-01-01T12:00:00Z"}
    tasks = [
        {"id": 1, "data": {SCHEMA.image_key: "/a.jpg"}, "annotations": [person, machine]},  # converted after
        {"id": 2, "data": {SCHEMA.image_key: "/b.jpg"}, "annotations": [machine, person]},
        {"id": 3, "data": {SCHEMA.image_key: "/c.jpg"}, "annotations": [machine]},  # bulk accept only
        {"id": 4, "data": {SCHEMA.image_key: "/d.jpg"}, "annotations": [person, edited]},
    ]  # a person saved it
    with caplog.at_level(logging.WARNING):
        data = read_project(tasks, SCHEMA, machine_ids={1, 2, 3, 4})
    labeled = {tid: labels for tid, _, labels in data.labeled}
    assert labeled == {1: (0, 0), 2: (0, 0), 4: (1, 1)}
    assert not data.unlabeled
    assert "[1, 2]" in caplog.text and "person's trains" in caplog.text


def test_a_cycle_reports_its_training_and_the_whole_pools_scoring(project):
    """Issue 13: the epochs trained and the images scored reach the project's progress, the pool counted whole
    across its chunks (6 unlabeled tasks in chunks of 4 and 2)."""
    fake, settings, store = project
    broker = Broker(REDIS_URL)
    if not broker.ping():
        pytest.fail(f"this test needs a real Redis at {REDIS_URL}")
    broker.conn.flushdb()
    calls: list[tuple[str, int, int]] = []

    class Recording(CycleProgress):
        def __call__(self, phase: str, done: int, total: int) -> None:
            calls.append((phase, done, total))
            super().__call__(phase, done, total)

    out = run_cycle(
        "3", settings.model_copy(update={"score_chunk": 4}), store, broker, progress=Recording(broker.conn, "3")
    )
    assert out["result"] == "promoted"
    training = [c for c in calls if c[0] == "training"]
    assert training and training[0][1] == 1 and all(total == training[0][2] for _, _, total in training)
    scoring = [(done, total) for phase, done, total in calls if phase == "scoring"]
    assert scoring[0] == (0, 12) and scoring[-1] == (12, 12) and {total for _, total in scoring} == {12}
    assert [done for done, _ in scoring] == sorted(done for done, _ in scoring)  # never backwards across chunks
    features = [(done, total) for phase, done, total in calls if phase == "features"]
    assert features and features[-1][0] == features[-1][1]  # the frozen features were computed, to the end
    assert list((settings.model_dir / "feature-cache").rglob("*.bin"))  # and kept for the next cycle
    shown = read_progress(broker.conn, "3")
    assert shown is not None and (shown.phase, shown.done, shown.total, shown.version) == (
        "scoring",
        12,
        12,
        out["version"],
    )
    broker.conn.flushdb()


@pytest.mark.parametrize("calibration", ["flat", "too few"])
def test_a_model_that_cannot_rank_yet_leaves_label_studio_sampling_uniformly(project, monkeypatch, calibration):
    """Issue 14, cold start: when the fit labels show no link between the risk score and errors (here 30 labels,
    all right and alike: a flat calibrator), Label Studio gets the version with uniform sampling, not an order;
    with too few fit labels to tell (this project's own), the risk score orders the queue."""
    fake, settings, store = project

    def flat_plan(pool, fit, probes, **kwargs):
        flat = PoolView(np.linspace(0, 1, 30), {h: np.full((30, p.shape[1]), 0.9) for h, p in pool.probs.items()})
        return plan_cycle(pool, Labeled(flat, np.ones(30, bool)), probes, **kwargs)

    if calibration == "flat":
        monkeypatch.setattr(jobs, "plan_cycle", flat_plan)
    out = run_cycle("3", settings, store, None)
    assert out["result"] == "promoted" and fake.model_version == out["version"]
    assert fake.sampling == (UNIFORM if calibration == "flat" else UNCERTAINTY)
    assert store.state("3")["last_cycle"]["can_rank"] is (calibration != "flat")
