"""``weather-al worker``: the worker process, an RQ worker on the training queue (JSON jobs, never pickles)."""

from __future__ import annotations

import logging

from backend.settings import Settings, get_settings

logger = logging.getLogger(__name__)


def work(settings: Settings | None = None, burst: bool = False) -> None:
    """An RQ worker on the training queue (JSON jobs)."""
    from rq import Worker
    from rq.serializers import JSONSerializer

    from backend.queue import QUEUE_NAME, Broker

    settings = settings or get_settings()
    if not settings.redis_url:
        raise ValueError(
            "REDIS_URL is not set: a worker needs the Redis that `weather-al serve` or your deployment uses"
        )
    from backend.worker import cycle  # noqa: F401  imported once here, so each forked work-horse starts with torch loaded

    broker = Broker(settings.redis_url)
    if not broker.ping():
        raise ValueError("cannot reach Redis at REDIS_URL; start it or fix the URL")
    # RQ's scheduler (it runs the delayed retries of failed runs) belongs to whichever worker holds a lock that
    # expires 61 s after its holder dies; the others try to take it over only during maintenance, by default
    # every 10 minutes and no sooner than an idle dequeue times out (worker_ttl - 15 s). A worker killed with
    # SIGKILL would leave retries stalled for that long, so a replacement checks every minute instead.
    logging.getLogger("rq.worker").addFilter(quiet_maintenance)
    Worker(
        [QUEUE_NAME], connection=broker.conn, serializer=JSONSerializer, worker_ttl=75, maintenance_interval=60
    ).work(burst=burst, with_scheduler=True)


def quiet_maintenance(record: logging.LogRecord) -> bool:
    """Keep RQ's "cleaning registries" lines out of a log above DEBUG: with maintenance every minute they
    would fill it."""
    noisy = "cleaning" in str(record.msg) and "registries" in str(record.msg)
    return not noisy or logging.getLogger(record.name).isEnabledFor(logging.DEBUG)
