"""A running cycle's progress against a real Redis: what the worker writes, /metrics, the job's status, the demo.

Issue 13 ("progress a person can see"): training and scoring report ``(phase, done, total)``; the worker
writes it, throttled, where /metrics, the RQ job's meta and ``weather-al demo``'s bars read it.
"""

from __future__ import annotations

import logging
import os

from rq import SimpleWorker
from rq.job import Job, JobStatus
from rq.serializers import JSONSerializer

from backend.dev.demo import PhaseBars
from backend.queue import KEY, TRAIN_JOB, Broker
from backend.settings import Settings
from backend.web.app import create_app
from backend.worker import cycle
from backend.worker.progress import PROGRESS, CycleProgress, read_progress, running_cycles

REDIS_URL = os.environ.get("TEST_REDIS_URL", "redis://127.0.0.1:6379/15")


class Clock:
    """A monotonic clock the test moves: the throttle sees time pass only when told."""

    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def started_job(b: Broker, project: int) -> Job:
    """A training job as the worker holds it while it runs."""
    job = b.queue.enqueue(TRAIN_JOB, project, job_id=f"train-{project}-1")
    job.set_status(JobStatus.STARTED)
    return job


def metrics(tmp_path, b: Broker) -> str:
    settings = Settings(model_dir=tmp_path / "models", redis_url=b.url, label_studio_api_key=None)
    return create_app(settings, broker=b).test_client().get("/metrics").get_data(as_text=True)


def test_a_running_cycles_phase_and_counts_show_in_metrics_and_in_the_jobs_status(tmp_path, broker):
    job = started_job(broker, 4)
    progress = CycleProgress(broker.conn, "4", job)
    progress.version = "v20260101-000000-abc"
    progress("training", 3, 20)
    text = metrics(tmp_path, broker)
    labels = 'job="train-4-1",phase="training",project="4",version="v20260101-000000-abc"'
    assert f"weather_al_cycle_phase_done{{{labels}}} 3.0" in text
    assert f"weather_al_cycle_phase_total{{{labels}}} 20.0" in text
    assert f"weather_al_cycle_phase_started_timestamp_seconds{{{labels}}}" in text
    meta = Job.fetch(job.id, connection=broker.conn, serializer=JSONSerializer).meta[PROGRESS]
    assert (meta["phase"], meta["done"], meta["total"], meta["version"]) == ("training", 3, 20, progress.version)

    job.set_status(JobStatus.FAILED)  # a work-horse killed outright never clears its progress: RQ's status says
    assert "weather_al_cycle_phase_done{" not in metrics(tmp_path, broker)
    job.set_status(JobStatus.STARTED)
    progress.clear()
    assert read_progress(broker.conn, "4") is None and running_cycles(broker) == []


def test_throttling_writes_each_phase_start_and_its_last_count(broker, monkeypatch):
    clock = Clock()
    progress = CycleProgress(broker.conn, "4", clock=clock)
    written: list[tuple[str, int, int]] = []
    write = progress._write
    monkeypatch.setattr(progress, "_write", lambda p: (written.append((p.phase, p.done, p.total)), write(p)))
    for done in range(0, 5001, 32):  # scoring 5,000 images in batches of 32, all within one throttle interval
        progress("scoring", done, 5000)
    progress("scoring", 5000, 5000)
    assert written == [("scoring", 0, 5000), ("scoring", 5000, 5000)]
    clock.now += 0.6
    progress("training", 1, 20)  # a new phase: written at once, whatever the clock
    progress("training", 2, 20)  # within the interval: held back
    clock.now += 0.6
    progress("training", 3, 20)
    assert written[2:] == [("training", 1, 20), ("training", 3, 20)]
    shown = read_progress(broker.conn, "4")
    assert shown is not None and (shown.phase, shown.done, shown.total) == ("training", 3, 20)


def test_a_count_the_throttle_held_back_is_where_its_phase_ends(broker):
    """Early stopping ends training between two writes: the next phase says where training stopped."""
    progress = CycleProgress(broker.conn, "4", clock=Clock())
    for epoch in range(1, 8):
        progress("training", epoch, 20)
    training = read_progress(broker.conn, "4")
    assert training is not None and training.done == 1  # epochs 2..7 within one throttle interval
    progress("scoring", 0, 600)
    scoring = read_progress(broker.conn, "4")
    assert scoring is not None and scoring.phase == "scoring"
    assert (scoring.previous_started, scoring.previous_done) == (training.started, 7)


def test_the_worker_clears_a_finished_runs_progress_and_its_job_keeps_where_it_ended(broker, monkeypatch):
    seen = []

    def run_cycle(pid, settings, store, broker_, still_held, progress):
        progress.version = "v-test"
        progress("training", 1, 3)
        progress("training", 2, 3)  # early stopping after epoch 2, held back by the throttle
        seen.append(running_cycles(broker_))
        return {"result": "not_promoted"}

    monkeypatch.setattr(cycle, "run_cycle", run_cycle)
    assert broker.request_training("5", "START_TRAINING") == "queued"
    job_id = broker.conn.get(KEY.format("5", "waiting")).decode()
    SimpleWorker([broker.queue], connection=broker.conn, serializer=JSONSerializer).work(burst=True)
    [(during,)] = seen
    assert (during.project, during.job, during.phase, during.done, during.version) == (
        "5",
        job_id,
        "training",
        1,
        "v-test",
    )
    assert read_progress(broker.conn, "5") is None
    job = Job.fetch(job_id, connection=broker.conn, serializer=JSONSerializer)
    assert job.get_status() == JobStatus.FINISHED
    assert (job.meta[PROGRESS]["done"], job.meta[PROGRESS]["total"]) == (2, 3)


def test_a_progress_write_that_fails_costs_the_display_not_the_run(caplog):
    progress = CycleProgress(Broker("redis://127.0.0.1:1/0").conn, "4", clock=Clock())
    with caplog.at_level(logging.WARNING, logger="backend.worker.progress"):
        progress("scoring", 0, 100)
        progress("scoring", 100, 100)
        progress.clear()
    warnings = [r.getMessage() for r in caplog.records]
    assert len([m for m in warnings if "cannot record" in m]) == 1  # once per outage, not once per batch
    assert len([m for m in warnings if "cannot clear" in m]) == 1


def test_the_demo_shows_a_bar_per_phase_that_ends_where_its_phase_did(broker):
    progress = CycleProgress(broker.conn, "6", clock=Clock())
    bars = PhaseBars(broker.conn, 6)
    bars.update()
    assert bars._bar is None  # nothing running yet
    progress("training", 1, 20)
    bars.update()
    training = bars._bar
    assert training is not None and (training.n, training.total, training.unit) == (1, 20, "epoch")
    progress("training", 9, 20)  # held back by the throttle, then early stopping
    progress("scoring", 64, 600)
    bars.update()
    assert training.n == 9 and training.disable  # closed where training stopped
    assert bars._bar is not None and (bars._bar.n, bars._bar.total, bars._bar.unit) == (64, 600, "image")
    bars.close()
