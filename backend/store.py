"""The model store: ``MODEL_DIR/<project>/<version>/`` plus a ``CURRENT`` pointer per project.

A version is written into a hidden temporary folder and renamed into place only when complete, so a
worker killed mid-training leaves no half-written version behind; ``CURRENT`` is replaced atomically,
so the web process (which re-reads it on every request, a few bytes) serves a promoted model at once
without a restart. Any number of workers on other machines may share the store over a network
filesystem: every write is a rename, and given Redis, the read-modify-write of a project's state is
serialised there, since ``flock`` may not be honoured across machines (or at all) on such filesystems.

Every file here is a cache of Label Studio plus a few ids, so a corrupt one (truncated, not JSON, the
wrong shape) is moved aside as ``<name>.corrupt-<UTC time>`` with a logged error and what can be
rebuilt is rebuilt: one bad file never stops ``/metrics`` or the project's runs.
"""

from __future__ import annotations

import errno
import fcntl
import json
import logging
import os
import re
import shutil
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import redis

from backend.queue import KEY
from model.atomic import write_json_atomic, write_text_atomic
from model.nn.checkpoint import META_FILE, METRICS_FILE, TrainedModel

logger = logging.getLogger(__name__)

#: A project id is ASCII digits, at most this many: ``str.isdigit`` also accepts "²" and "٣٣", and an
#: unbounded id becomes a path name the OS refuses.
MAX_PROJECT_ID_DIGITS = 12
_PROJECT_ID_RE = re.compile(rf"[0-9]{{1,{MAX_PROJECT_ID_DIGITS}}}")
#: What CURRENT may name: a version folder (``new_version_name``), never a path.
_VERSION_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,199}")
_VERSION_NAME = re.compile(r"v[0-9]+-")  # the folders new_version_name makes

CURRENT = "CURRENT"
#: The folder of a project's bulk-accept records (written by ``accepts``, read here to rebuild the state)
ACCEPTS = "accepts"
STATE = "state.json"
TRAINED_ON = "trained_on.json"

#: A state update holds its Redis lock for milliseconds; the lease only frees the lock of a process that died
#: holding it, and a waiter gives up (with an error) after the wait.
STATE_LOCK_LEASE_S = 30
STATE_LOCK_WAIT_S = 60

#: The types the readers of state.json rely on; a file breaking them is corrupt. Other keys are free.
_STATE_TYPES: dict[str, type] = {
    "machine_task_ids": list,
    "random_task_ids": list,
    "audit_task_ids": list,
    "probe_task_ids": list,
    "human_labeled": int,
    "runs": dict,
    "last_cycle": dict,
}


def is_project_id(text: str) -> bool:
    """Whether ``text`` is a valid project id: 1 to MAX_PROJECT_ID_DIGITS ASCII digits."""
    return isinstance(text, str) and _PROJECT_ID_RE.fullmatch(text) is not None


class StateLockUnavailable(RuntimeError):
    """The project's state lock in Redis could not be taken or was lost: nothing was written."""


class ModelStore:
    def __init__(self, root: Path, redis_conn: redis.Redis | str | None = None) -> None:
        """``redis_conn`` (a connection or URL): lock project state there, for processes on several machines.

        Every process sharing ``root`` with others on other machines must pass the same Redis; a process
        without one locks with ``flock`` only, which serialises it with the processes on its own machine.
        """
        self.root = Path(root)
        self.root.mkdir(parents=True, exist_ok=True)
        self._cache: dict[str, TrainedModel] = {}
        self._lock = threading.Lock()
        self._redis = (
            redis.Redis.from_url(redis_conn, socket_connect_timeout=1.0, socket_timeout=5.0)
            if isinstance(redis_conn, str)
            else redis_conn
        )
        self._reported: set[str] = set()  # problems already logged by this process, so a request loop logs once

    def project_dir(self, project: str) -> Path:
        if not is_project_id(str(project)):
            raise ValueError(f"project id must be 1 to {MAX_PROJECT_ID_DIGITS} ASCII digits, got {str(project)[:40]!r}")
        d = self.root / str(project)
        d.mkdir(parents=True, exist_ok=True)
        return d

    # versions -------------------------------------------------------------------------------
    def versions(self, project: str) -> list[dict[str, Any]]:
        """Complete versions of a project, oldest first, with their metadata and metrics.

        A version whose meta.json is corrupt is moved aside (logged) and left out: it cannot be served.
        """
        current = self.current_version(project)
        out = []
        for name, meta in self._complete_versions(project):
            metrics = (
                _read_object(
                    self.version_dir(project, name) / METRICS_FILE,
                    f"version {name} of project {project} is listed without metrics",
                )
                or {}
            )
            out.append(
                {
                    "version": name,
                    "created_at": meta.get("created_at"),
                    "n_labeled": meta.get("n_labeled"),
                    "current": name == current,
                    "promoted": bool(meta.get("promoted")),
                    "metrics": metrics.get("summary", {}),
                }
            )
        return out

    def _complete_versions(self, project: str) -> list[tuple[str, dict[str, Any]]]:
        """(name, meta) of each version with a readable meta.json, oldest first."""
        out = []
        for d in sorted(self.project_dir(project).iterdir(), key=lambda p: p.stat().st_mtime):
            if d.is_dir() and not d.name.startswith("."):
                meta = self._meta(project, d.name)
                if meta is not None:
                    out.append((d.name, meta))
        return out

    def _meta(self, project: str, version: str) -> dict[str, Any] | None:
        """A version's meta.json; None if the version is incomplete, or its meta.json was corrupt (moved aside)."""
        return _read_object(
            self.version_dir(project, version) / META_FILE,
            f"version {version} of project {project} can no longer be listed, served or promoted; "
            "the previous promoted version is served if CURRENT named it; train again to replace it",
        )

    def new_version_name(self, project: str) -> str:
        """``v<n>-<UTC time>``, n counting the version folders there are (complete or not, never the record
        folders such as accepts/ that live beside them)."""
        n = 1 + sum(1 for d in self.project_dir(project).iterdir() if d.is_dir() and _VERSION_NAME.match(d.name))
        return f"v{n}-{datetime.now(timezone.utc).strftime('%Y%m%dT%H%M%S')}"

    def version_dir(self, project: str, version: str) -> Path:
        return self.project_dir(project) / version

    def save_version(self, project: str, model: TrainedModel, trained_on: dict[str, list[int]]) -> Path:
        """Write a complete version folder atomically (temporary folder, then rename).

        ``trained_on`` names the task ids the run used, by role (train, validation, calibration, probes, all).
        """
        final = self.version_dir(project, model.version)
        tmp = self.project_dir(project) / f".tmp-{model.version}-{os.getpid()}"
        shutil.rmtree(tmp, ignore_errors=True)
        model.save(tmp)
        write_json_atomic(tmp / TRAINED_ON, trained_on)
        os.replace(tmp, final)
        return final

    def current_version(self, project: str) -> str | None:
        """The version CURRENT names; if that one cannot be loaded, the newest other promoted one (logged once).

        CURRENT itself is left as it is: the next promotion replaces it.
        """
        try:
            named = (self.project_dir(project) / CURRENT).read_text(encoding="utf-8").strip()
        except FileNotFoundError:
            return None
        except ValueError:  # not UTF-8: CURRENT was damaged
            named = "?"
        if not named:
            return None
        if _VERSION_RE.fullmatch(named) and self._meta(project, named) is not None:
            return named
        promoted = [name for name, meta in self._complete_versions(project) if meta.get("promoted")]
        fallback = promoted[-1] if promoted else None
        self._report_once(
            f"project {project}: CURRENT names version {named[:80]!r}, which cannot be loaded "
            f"(incomplete, or its meta.json was corrupt and moved aside); serving "
            f"{fallback or 'no model'} instead until the next promotion"
        )
        return fallback

    def _report_once(self, message: str, level: int = logging.ERROR) -> None:
        if message not in self._reported:
            self._reported.add(message)
            logger.log(level, message)

    def promote(self, project: str, version: str) -> None:
        meta = self._meta(project, version)
        if meta is None:
            raise FileNotFoundError(f"version {version} of project {project} is not complete")
        meta["promoted"] = True
        write_json_atomic(self.version_dir(project, version) / META_FILE, meta)
        write_text_atomic(self.project_dir(project) / CURRENT, version)
        logger.info("project %s: version %s is now current", project, version)

    def load(self, project: str, version: str) -> TrainedModel:
        key = f"{project}/{version}"
        with self._lock:
            model = self._cache.get(key)
            if model is None:
                if self._meta(project, version) is None:
                    raise FileNotFoundError(
                        f"version {version} of project {project} cannot be loaded: its meta.json "
                        "is missing or was corrupt (moved aside, see the log); train again"
                    )
                _read_object(
                    self.version_dir(project, version) / METRICS_FILE,
                    f"version {version} of project {project} is served without its metrics",
                )
                model = TrainedModel.load(self.version_dir(project, version))
                # keep one model per project in memory: the web process serves the current one
                for k in [k for k in self._cache if k.split("/")[0] == str(project)]:
                    del self._cache[k]
                self._cache[key] = model
            return model

    def load_current(self, project: str) -> TrainedModel | None:
        version = self.current_version(project)
        return self.load(project, version) if version else None

    def trained_on(self, project: str, version: str) -> dict[str, list[int]]:
        """The task ids a version used, by role; FileNotFoundError if missing or corrupt (then moved aside)."""
        path = self.version_dir(project, version) / TRAINED_ON
        data = _read_object(
            path, f"the next run compares version {version} of project {project} on all labels", _id_lists_problem
        )
        if data is None:
            raise FileNotFoundError(f"{path} is missing or was corrupt (moved aside, see the log)")
        return data

    def clean_incomplete(self, project: str) -> None:
        """Remove temporary folders left by a worker that died mid-write."""
        for d in self.project_dir(project).glob(".tmp-*"):
            shutil.rmtree(d, ignore_errors=True)

    # per-project state ----------------------------------------------------------------------
    def state(self, project: str) -> dict[str, Any]:
        """The project's state; a corrupt state.json is moved aside and rebuilt (see ``_rebuild_state``)."""
        state, problem = _parse_object(self.project_dir(project) / STATE, _state_problem)
        if problem is None:
            return state or {}
        with self._state_locked(project) as still_held:
            return self._read_state_locked(project, still_held)

    def _read_state_locked(self, project: str, still_held: Callable[[], None]) -> dict[str, Any]:
        """Under the state lock, so that a corrupt file is never confused with one a writer just put in place."""
        path = self.project_dir(project) / STATE
        state, problem = _parse_object(path, _state_problem)
        if problem is None:
            return state or {}
        _move_aside(
            path,
            problem,
            "rebuilt the machine-labeled tasks from the bulk-accept records and the seed, "
            "labeled audit and labeled probe tasks from the versions' trained_on.json; run counters "
            "restart at zero, audit and probe tasks still unlabeled are forgotten (the 'Audit sample' "
            "and 'Random probes' views in Label Studio list them)",
        )
        state = self._rebuild_state(project)
        still_held()
        write_json_atomic(path, state)
        return state

    def _rebuild_state(self, project: str) -> dict[str, Any]:
        """The state's ids that the store can rebuild; the rest the next run reads again from Label Studio.

        Machine-labeled tasks: those of bulk-accept records not undone. Seed tasks (``random_task_ids``):
        all those the first promoted version used, as only seed tasks existed before a model did. Labeled
        audit tasks: the current version's calibration tasks that are not seed tasks. Labeled probes: the
        current version's probes (those its cycle then moved to training stay probes until the strategy
        picks them again; with a strategy that picks likely-wrong tasks that errs on the safe side).
        """
        machine = {t for r in self.accept_records(project) if not r.get("undone") for t in r["task_ids"]}
        promoted = [name for name, meta in self._complete_versions(project) if meta.get("promoted")]
        seed = set(self._trained_on_or_empty(project, promoted[0]).get("all", [])) if promoted else set()
        current = self.current_version(project)
        roles = self._trained_on_or_empty(project, current) if current else {}
        return {
            "machine_task_ids": sorted(machine),
            "random_task_ids": sorted(seed),
            "audit_task_ids": sorted(set(roles.get("calibration", [])) - seed),
            "probe_task_ids": sorted(roles.get("probes", [])),
        }

    def _trained_on_or_empty(self, project: str, version: str) -> dict[str, list[int]]:
        try:
            return self.trained_on(project, version)
        except FileNotFoundError:
            return {}

    @contextmanager
    def _state_locked(self, project: str) -> Iterator[Callable[[], None]]:
        """Serialise read-modify-write of state.json: in Redis across machines (when given), flock on this one.

        Yields a check to call just before writing: it raises if the Redis lease ran out meanwhile (a stall
        of over STATE_LOCK_LEASE_S), since another process may have written since this one read.
        flock still guards the processes of this machine that run without Redis (``weather-al undo-accept``
        beside an embedded Redis); where the filesystem refuses it (NFS without a lock daemon), the Redis
        lock alone serialises.
        """
        if self._redis is None:
            with self._flocked(project, required=True):
                yield lambda: None
            return
        lock = self._redis.lock(
            KEY.format(project, "state-lock"),
            timeout=STATE_LOCK_LEASE_S,
            sleep=0.01,
            blocking_timeout=STATE_LOCK_WAIT_S,
            thread_local=False,
        )
        try:
            acquired = lock.acquire()
        except redis.RedisError as exc:
            raise StateLockUnavailable(
                f"project {project}: cannot reach Redis for the state lock ({exc}); nothing "
                "was changed: retry once Redis answers"
            ) from exc
        if not acquired:
            raise StateLockUnavailable(
                f"project {project}: the state lock in Redis stayed taken for "
                f"{STATE_LOCK_WAIT_S} s; nothing was changed: retry, and look for a stuck "
                "process"
            )

        def still_held() -> None:
            try:
                held = lock.owned()
            except redis.RedisError as exc:
                raise StateLockUnavailable(
                    f"project {project}: lost Redis mid-update ({exc}); the update was not "
                    "written: retry once Redis answers"
                ) from exc
            if not held:
                raise StateLockUnavailable(
                    f"project {project}: the state lock expired mid-update (over "
                    f"{STATE_LOCK_LEASE_S} s); the update was not written: retry"
                )

        try:
            with self._flocked(project, required=False):
                yield still_held
        finally:
            try:
                lock.release()
            except redis.RedisError:  # expired or unreachable: the lease frees it
                pass

    @contextmanager
    def _flocked(self, project: str, required: bool) -> Iterator[None]:
        with open(self.project_dir(project) / ".state.lock", "a") as fh:
            try:
                fcntl.flock(fh, fcntl.LOCK_EX)
            except OSError as exc:
                if required or exc.errno not in (errno.ENOLCK, errno.EOPNOTSUPP):
                    raise OSError(
                        exc.errno,
                        f"cannot lock {fh.name} ({exc.strerror}): on a network filesystem, "
                        "set REDIS_URL for every process so state is locked in Redis",
                    ) from exc
                self._report_once(
                    f"flock is not supported under {self.root} ({exc.strerror}); the Redis lock alone "
                    "serialises state updates, so give every process REDIS_URL",
                    logging.WARNING,
                )
                yield
                return
            try:
                yield
            finally:
                fcntl.flock(fh, fcntl.LOCK_UN)

    def update_state(self, project: str, **changes: Any) -> dict[str, Any]:
        return self.modify_state(project, lambda state: state.update(changes))

    def modify_state(self, project: str, change: Callable[[dict[str, Any]], Any]) -> dict[str, Any]:
        """Apply ``change`` to the project's state in place, under the state lock; returns the new state."""
        with self._state_locked(project) as still_held:
            state = self._read_state_locked(project, still_held)
            change(state)
            still_held()
            write_json_atomic(self.project_dir(project) / STATE, state)
        return state

    def mark_machine_labeled(self, project: str, task_ids: list[int], labeled: bool = True) -> list[int]:
        """Add (or, with ``labeled=False``, remove) tasks labeled by bulk accept; returns the ids that changed.

        Machine labels never train the model and are counted apart in /metrics.
        """
        changed: list[int] = []

        def change(state: dict[str, Any]) -> None:
            machine = set(state.get("machine_task_ids", []))
            changed.extend(sorted(set(task_ids) - machine if labeled else set(task_ids) & machine))
            state["machine_task_ids"] = sorted(machine ^ set(changed))  # adds the new ids, or drops the present ones

        self.modify_state(project, change)
        return changed

    def accept_records(self, project: str) -> list[dict[str, Any]]:
        """The project's bulk-accept records, oldest first; a corrupt one is moved aside (and logged), not returned."""
        records = [
            _read_object(
                p, f"bulk accept {p.stem} of project {project} can no longer be undone by record id", _record_problem
            )
            for p in sorted(self.record_dir(project, ACCEPTS).glob("*.json"))
        ]
        return [r for r in records if r is not None]

    def record_dir(self, project: str, kind: str) -> Path:
        d = self.project_dir(project) / kind
        d.mkdir(exist_ok=True)
        return d


def _parse_object(
    path: Path, problem_of: Callable[[dict[str, Any]], str | None] | None = None
) -> tuple[dict[str, Any] | None, str | None]:
    """(the JSON object in ``path``, None), (None, None) if there is no file, or (None, what is wrong with it)."""
    try:
        raw = path.read_bytes()
    except FileNotFoundError:
        return None, None
    try:
        data = json.loads(raw)  # an empty, truncated or non-UTF-8 file raises a ValueError
    except ValueError as exc:
        return None, f"is not valid JSON ({exc})"
    if not isinstance(data, dict):
        return None, f"holds a JSON {type(data).__name__}, not an object"
    problem = problem_of(data) if problem_of else None
    return (None, problem) if problem else (data, None)


def _read_object(
    path: Path, consequence: str, problem_of: Callable[[dict[str, Any]], str | None] | None = None
) -> dict[str, Any] | None:
    """The JSON object in ``path``; None if there is none, or it was corrupt (then moved aside and logged)."""
    data, problem = _parse_object(path, problem_of)
    if problem is not None:
        _move_aside(path, problem, consequence)
    return data


def _move_aside(path: Path, problem: str, consequence: str) -> None:
    """Keep a corrupt file for a person to read, out of every reader's way."""
    aside = path.with_name(f"{path.name}.corrupt-{datetime.now(timezone.utc).strftime('%Y%m%dT%H%M%S%fZ')}")
    try:
        os.replace(path, aside)
    except FileNotFoundError:  # another process moved it aside first, and logged it
        return
    logger.error(
        "%s %s; moved aside to %s: %s. Read it, then delete it; nothing else to do.",
        path,
        problem[:200],
        aside.name,
        consequence,
    )


def _is_id_list(value: Any) -> bool:
    return isinstance(value, list) and all(isinstance(v, int) for v in value)


def _state_problem(state: dict[str, Any]) -> str | None:
    for key, kind in _STATE_TYPES.items():
        value = state.get(key)
        if value is not None and (not isinstance(value, kind) or (kind is list and not _is_id_list(value))):
            return f"has {key!r} of the wrong type ({type(value).__name__})"
    runs = state.get("runs") or {}
    if not all(isinstance(n, int) for n in runs.values()):
        return "has non-integer run counters"
    return None


def _id_lists_problem(data: dict[str, Any]) -> str | None:
    bad = [k for k, v in data.items() if not _is_id_list(v)]
    return f"has {bad[0]!r} that is not a list of task ids" if bad else None


def _record_problem(record: dict[str, Any]) -> str | None:
    return None if _is_id_list(record.get("task_ids")) else "has no list of task ids"
