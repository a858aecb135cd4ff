"""The project lock a training run holds, and what happens when it is lost.

A run writes only while it holds its project's lock: the heartbeat renews it and, when Redis says the lock
is no longer ours (or cannot be reached for half its lifetime), marks the lease lost; the run checks the
lease before every write and stops with ``LockLost`` (issue 11: two workers must never race on a project).
"""

from __future__ import annotations

import logging
import threading
import time
from typing import Any

import redis

logger = logging.getLogger(__name__)


class LockLost(RuntimeError):
    """The run's project lock expired or was taken: another run may be writing the project, so this one stops."""


class RunLease:
    """The project lock a run holds, extended by a heartbeat thread; ``check()`` before every write that matters.

    The lock expires ``ttl`` seconds after its last extension, and then another worker may train the project.
    So the run counts as having lost it once Redis says it is no longer ours, or once it could not be extended
    for half of ``ttl`` (Redis unreachable): past that point it must not write, or two runs race on the
    model version Label Studio and the store point at.
    """

    def __init__(self, lock: Any, ttl: int, pid: str) -> None:
        self.lock, self.ttl, self.pid = lock, ttl, pid
        self.lost = threading.Event()
        self._stop = threading.Event()
        self._why = ""
        self._thread = threading.Thread(target=self._beat, daemon=True)

    def start(self) -> None:
        self._thread.start()

    def check(self) -> None:
        """Raise LockLost if the lock was lost: called just before each write of a run."""
        if self.lost.is_set():
            raise LockLost(
                f"project {self.pid}: the training lock was lost ({self._why}); this run stopped before "
                "writing, and the project's next run trains again"
            )

    def stop(self) -> None:
        self._stop.set()
        try:
            self.lock.release()
        except redis.RedisError:  # expired, taken or unreachable: nothing of ours to release
            pass

    def _beat(self) -> None:
        last_ok = time.monotonic()
        while not self._stop.wait(self.ttl / 4):
            try:
                self.lock.extend(self.ttl, replace_ttl=True)
                last_ok = time.monotonic()
            except redis.exceptions.LockError as exc:
                return self._lose(f"it expired or another run took it: {exc}")
            except redis.RedisError as exc:
                if time.monotonic() - last_ok >= self.ttl / 2:
                    return self._lose(f"Redis unreachable for {time.monotonic() - last_ok:.0f} s: {exc}")
                logger.warning("project %s: could not extend the training lock, will retry: %s", self.pid, exc)

    def _lose(self, why: str) -> None:
        self._why = why
        self.lost.set()
        logger.error("project %s: lost the training lock (%s); the run stops before its next write", self.pid, why)


def _no_check() -> None:
    """The write guard of a run that holds no lock (tests, a one-off command)."""
