"""Training requests against a real Redis: one waiting and one running run per project, whatever fails.

Issue 11 items 3 (a failed enqueue must leave no "waiting" mark behind) and 8 (several workers never hold
more than one waiting run of a project).
"""

from __future__ import annotations

import os

import pytest
import redis
from rq import SimpleWorker
from rq.registry import ScheduledJobRegistry
from rq.serializers import JSONSerializer

from backend.queue import KEY, Broker, QueueUnavailable

REDIS_URL = os.environ.get("TEST_REDIS_URL", "redis://127.0.0.1:6379/15")


def waiting(b: Broker, project: str = "5") -> str | None:
    mark = b.conn.get(KEY.format(project, "waiting"))
    return mark.decode() if mark else None


def waiting_jobs(b: Broker) -> list[str]:
    """Training jobs that will still run: queued now, or scheduled for later."""
    return b.queue.job_ids + ScheduledJobRegistry(queue=b.queue).get_job_ids()


def work(b: Broker) -> None:
    SimpleWorker([b.queue], connection=b.conn, serializer=JSONSerializer).work(burst=True)


def test_a_failed_enqueue_leaves_no_mark_and_the_next_event_queues(broker, monkeypatch):
    def refuse(*args, **kwargs):
        raise redis.ConnectionError("Redis went away mid-enqueue")

    monkeypatch.setattr(broker.queue, "enqueue", refuse)
    with pytest.raises(QueueUnavailable):
        broker.request_training("5", "test")
    assert waiting(broker) is None
    monkeypatch.undo()
    assert broker.request_training("5", "test") == "queued"
    assert len(broker.queue) == 1 and waiting(broker) == broker.queue.job_ids[0]


def test_a_mark_whose_job_is_gone_or_over_is_replaced(broker):
    broker.conn.set(KEY.format("5", "waiting"), "train-5-99")  # its job was lost (e.g. Redis restarted without it)
    assert broker.request_training("5", "test") == "queued"
    job = broker.queue.jobs[0]
    job.cancel()  # over: it will never read the project
    assert broker.request_training("5", "test") == "queued"
    assert waiting(broker) != job.id and len(broker.queue) == 1


def test_events_fold_while_waiting_and_queue_exactly_one_while_running(broker):
    assert [broker.request_training("5", "e") for _ in range(3)] == ["queued", "folded", "folded"]
    first = broker.queue.job_ids[0]
    lock = broker.lock("5", 30)
    assert lock.acquire(blocking=False)  # the job has started and holds the lock
    broker.start_run("5", first)
    assert [broker.request_training("5", "e") for _ in range(3)] == ["queued", "folded", "folded"]
    assert len(broker.queue) == 2
    broker.start_run("5", first)  # a late clear by the first job leaves its successor's mark alone
    assert waiting(broker) == broker.queue.job_ids[1]
    lock.release()


def test_several_workers_never_hold_more_than_one_waiting_run(broker):
    """While a run holds the lock, each new run defers itself instead of parking a worker on the lock."""
    running = broker.lock("5", 30)
    assert running.acquire(blocking=False)
    assert broker.request_training("5", "e") == "queued"
    for _ in range(3):  # a free worker picks the waiting run each time
        work(broker)
        assert len(broker.queue) == 0
        assert waiting_jobs(broker) == [waiting(broker)]  # handed its mark to its one scheduled copy
        assert broker.request_training("5", "e") == "folded"
    other = broker.request_training("6", "e")  # other projects are not starved
    assert other == "queued" and waiting(broker, "6") in broker.queue.job_ids
    running.release()


def test_a_run_dropped_when_another_already_waits(broker):
    """A retried or stray run that finds the lock taken and another run waiting adds nothing."""
    running = broker.lock("5", 30)
    assert running.acquire(blocking=False)
    assert broker.request_training("5", "e") == "queued"
    assert broker.defer_run("5", "train-5-stray") is None
    assert len(waiting_jobs(broker)) == 1
    running.release()


def test_each_run_logs_one_json_line_a_lead_can_grep(broker, caplog, monkeypatch):
    """Issue 12: the cycle summary as one JSON object per run in the worker's log (here a run that fails at once,
    since no Label Studio token is set: the failure is logged the same way)."""
    import json
    import logging

    monkeypatch.delenv("LABEL_STUDIO_API_KEY", raising=False)
    monkeypatch.delenv("LABEL_STUDIO_ACCESS_TOKEN", raising=False)
    assert broker.request_training("5", "START_TRAINING") == "queued"
    job_id = waiting(broker)
    with caplog.at_level(logging.INFO, logger="backend.worker.cycle"):
        work(broker)
    messages = [r.getMessage() for r in caplog.records if r.name == "backend.worker.cycle"]
    lines = [m for m in messages if m.startswith("cycle ")]
    assert len(lines) == 1
    record = json.loads(lines[0].removeprefix("cycle "))
    assert record["project"] == 5 and record["job"] == job_id and record["result"] == "failed"
    assert "LABEL_STUDIO_API_KEY" in record["error"]
