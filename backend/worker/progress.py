"""How far a project's running training cycle has got: its phase, counts, job and version, in Redis.

A cycle's training and scoring report ``(phase, done, total)`` (model.progress); the worker routes that
here. Each write lands in two places: a small hash per project (``weather-al:<project>:progress``) that
``/metrics`` and ``weather-al demo`` read without knowing the job, and the RQ job's ``meta["progress"]``,
so the job's own status (``Job.fetch(id).meta``, an RQ dashboard) says the same. Scoring 5,000 images
reports after every batch; writes are throttled to ``MIN_INTERVAL_S`` apart, except a new phase and a
phase's last count (``done == total``), which are always written, so what a reader sees is never a
stale "almost done". A failed write costs the display, never the run.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, replace
from typing import Any

import redis
from rq.job import Job, JobStatus

from backend.queue import KEY, TRAIN_TIMEOUT, Broker

logger = logging.getLogger(__name__)

#: The name under ``weather-al:<project>:`` of a project's progress hash, and the job meta's key
PROGRESS = "progress"
#: Throttle: at most one write per this many seconds within a phase (2 Redis calls each)
MIN_INTERVAL_S = 0.5
#: Delete a project's progress only while it is still this job's (a later run may have started writing)
_DELETE_IF_JOB = "if redis.call('hget', KEYS[1], 'job') == ARGV[1] then return redis.call('del', KEYS[1]) end return 0"


@dataclass(frozen=True)
class Progress:
    """One project's running cycle: ``done`` of ``total`` in ``phase`` (model.progress.PHASES), since ``started``."""

    project: str
    phase: str
    done: int
    total: int
    job: str  # the RQ job id of the run ("" when the cycle runs outside RQ)
    version: str  # the model version being trained ("" before the cycle names it)
    started: float  # Unix time the phase started
    # the phase before this one, as it ended: its last count may have been throttled away, and a bar for
    # it shows where it really stopped (early stopping ends training before ``total``)
    previous_started: float  # 0.0: none
    previous_done: int


class CycleProgress:
    """A ``model.progress.Report`` that writes one project's running cycle's progress to Redis.

    ``version`` is set by the cycle once it names the model it trains. ``clock`` is injectable so tests
    can check the throttle without sleeping.
    """

    def __init__(
        self,
        conn: redis.Redis,
        project: str,
        job: Job | None = None,
        interval: float = MIN_INTERVAL_S,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.conn, self.project, self.job = conn, project, job
        self.version = ""
        self.interval, self.clock = interval, clock
        self._key = KEY.format(project, PROGRESS)
        self._last: Progress | None = None  # the last report, written or not
        self._unwritten = False  # the last report was throttled away
        self._last_write = float("-inf")
        self._failing = False

    def __call__(self, phase: str, done: int, total: int) -> None:
        now, last = self.clock(), self._last
        job = self.job.id if self.job else ""
        if last is None or (last.phase, last.total) != (phase, total) or done < last.done:
            # a new phase, or the same one counted again: the one before ends where its last report left it
            previous = (last.started, last.done) if last is not None else (0.0, 0)
            self._last = Progress(self.project, phase, done, total, job, self.version, time.time(), *previous)
            logger.info("project %s: %s, %d to do", self.project, phase, total)
        else:
            self._last = replace(last, done=done, version=self.version)
            if done < total and now - self._last_write < self.interval:
                self._unwritten = True
                return
        self._last_write, self._unwritten = now, False
        self._write(self._last)

    def _write(self, progress: Progress) -> None:
        fields = asdict(progress)
        try:
            with self.conn.pipeline(transaction=False) as pipe:
                pipe.hset(self._key, mapping={k: str(v) for k, v in fields.items()})
                pipe.expire(self._key, TRAIN_TIMEOUT)  # a worker killed outright leaves no progress for long
                pipe.execute()
            self._save_in_job(progress)
        except redis.RedisError as exc:
            if not self._failing:  # once per outage, not once per batch
                logger.warning("project %s: cannot record the cycle's progress in Redis: %s", self.project, exc)
            self._failing = True
            return
        self._failing = False

    def _save_in_job(self, progress: Progress) -> None:
        if self.job is not None:
            self.job.meta[PROGRESS] = asdict(progress)
            self.job.save_meta()

    def clear(self) -> None:
        """The run is over: its progress leaves the project's hash; the job's status keeps where it ended.

        A last count the throttle held back (training stopped early between two writes) is written to the
        job's status first, so that status says where the run really stopped.
        """
        try:
            if self._unwritten and self._last is not None:
                self._save_in_job(self._last)
            self.conn.eval(_DELETE_IF_JOB, 1, self._key, self.job.id if self.job else "")
        except redis.RedisError as exc:
            logger.warning("project %s: cannot clear the cycle's progress in Redis: %s", self.project, exc)


def read_progress(conn: redis.Redis, project: str) -> Progress | None:
    """The running cycle's progress of ``project`` as last written, or None when none is recorded."""
    return _parse(project, conn.hgetall(KEY.format(project, PROGRESS)))


def running_cycles(broker: Broker) -> list[Progress]:
    """Every project's running cycle, by project id; a run whose RQ job is no longer started is left out.

    A work-horse killed outright (out of memory) never clears its progress: its job, failed or abandoned
    by RQ, is what says the numbers are no longer moving.
    """
    head, tail = KEY.format("\0", PROGRESS).split("\0")
    keys = list(broker.conn.scan_iter(match=KEY.format("*", PROGRESS), count=1000))
    with broker.conn.pipeline(transaction=False) as pipe:
        for key in keys:
            pipe.hgetall(key)
        hashes = pipe.execute()
    found = []
    for key, fields in zip(keys, hashes):
        project = _str(key)[len(head) : -len(tail)]
        progress = _parse(project, fields)
        if progress is not None and (not progress.job or _started(broker, progress.job)):
            found.append(progress)
    return sorted(found, key=lambda p: (len(p.project), p.project))  # by number: ids have no leading zeros


def _started(broker: Broker, job_id: str) -> bool:
    job = broker.queue.fetch_job(job_id)
    return job is not None and job.get_status(refresh=False) == JobStatus.STARTED


def _parse(project: str, fields: dict[Any, Any]) -> Progress | None:
    """A progress hash's fields, or None when missing or not as ``CycleProgress`` writes them."""
    text = {_str(k): _str(v) for k, v in fields.items()}
    try:
        return Progress(
            project=project,
            phase=text["phase"],
            done=int(text["done"]),
            total=int(text["total"]),
            job=text["job"],
            version=text["version"],
            started=float(text["started"]),
            previous_started=float(text["previous_started"]),
            previous_done=int(text["previous_done"]),
        )
    except (KeyError, ValueError):
        return None


def _str(value: bytes | str) -> str:
    """A Redis reply as text, from a connection that decodes responses or one that does not."""
    return value.decode() if isinstance(value, bytes) else value
