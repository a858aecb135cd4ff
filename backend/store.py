"""The model store: ``MODEL_DIR/<project>/<version>/`` plus a ``CURRENT`` pointer per project.

A version is written into a hidden temporary folder and renamed into place only when complete, so a
worker killed mid-training leaves no half-written version behind; ``CURRENT`` is replaced atomically,
so the web process (which re-reads it on every request, a few bytes) serves a promoted model at once
without a restart. Any number of workers on other machines may share the store over a network
filesystem: every write is a rename.
"""

from __future__ import annotations

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

from model.checkpoint import TrainedModel, write_json_atomic

logger = logging.getLogger(__name__)

#: A project id is ASCII digits, at most this many: ``str.isdigit`` also accepts "²" and "٣٣", and an
#: unbounded id becomes a path name the OS refuses.
MAX_PROJECT_ID_DIGITS = 12
_PROJECT_ID_RE = re.compile(rf"[0-9]{{1,{MAX_PROJECT_ID_DIGITS}}}")

CURRENT = "CURRENT"
STATE = "state.json"
TRAINED_ON = "trained_on.json"


def is_project_id(text: str) -> bool:
    """Whether ``text`` is a valid project id: 1 to MAX_PROJECT_ID_DIGITS ASCII digits."""
    return isinstance(text, str) and _PROJECT_ID_RE.fullmatch(text) is not None


class ModelStore:
    def __init__(self, root: Path) -> None:
        self.root = Path(root)
        self.root.mkdir(parents=True, exist_ok=True)
        self._cache: dict[str, TrainedModel] = {}
        self._lock = threading.Lock()

    def project_dir(self, project: str) -> Path:
        if not is_project_id(str(project)):
            raise ValueError(f"project id must be 1 to {MAX_PROJECT_ID_DIGITS} ASCII digits, got {str(project)[:40]!r}")
        d = self.root / str(project)
        d.mkdir(parents=True, exist_ok=True)
        return d

    # versions -------------------------------------------------------------------------------
    def versions(self, project: str) -> list[dict[str, Any]]:
        """Complete versions of a project, oldest first, with their metadata and metrics."""
        current = self.current_version(project)
        out = []
        for d in sorted(self.project_dir(project).iterdir(), key=lambda p: p.stat().st_mtime):
            if d.is_dir() and not d.name.startswith(".") and (d / "meta.json").is_file():
                meta = json.loads((d / "meta.json").read_text())
                metrics = json.loads((d / "metrics.json").read_text()) if (d / "metrics.json").is_file() else {}
                out.append({"version": d.name, "created_at": meta.get("created_at"), "n_labeled": meta.get("n_labeled"),
                            "current": d.name == current, "promoted": bool(meta.get("promoted")), "metrics": metrics.get("summary", {})})
        return out

    def new_version_name(self, project: str) -> str:
        n = 1 + sum(1 for d in self.project_dir(project).iterdir() if d.is_dir() and not d.name.startswith("."))
        return f"v{n}-{datetime.now(timezone.utc).strftime('%Y%m%dT%H%M%S')}"

    def version_dir(self, project: str, version: str) -> Path:
        return self.project_dir(project) / version

    def save_version(self, project: str, model: TrainedModel, trained_on: dict[str, list[int]]) -> Path:
        """Write a complete version folder atomically (temporary folder, then rename).

        ``trained_on`` names the task ids the run used, by role (train, validation, calibration, all).
        """
        final = self.version_dir(project, model.version)
        tmp = self.project_dir(project) / f".tmp-{model.version}-{os.getpid()}"
        shutil.rmtree(tmp, ignore_errors=True)
        model.save(tmp)
        write_json_atomic(tmp / TRAINED_ON, trained_on)
        os.replace(tmp, final)
        return final

    def current_version(self, project: str) -> str | None:
        p = self.project_dir(project) / CURRENT
        try:
            v = p.read_text().strip()
        except FileNotFoundError:
            return None
        return v or None

    def promote(self, project: str, version: str) -> None:
        if not (self.version_dir(project, version) / "meta.json").is_file():
            raise FileNotFoundError(f"version {version} of project {project} is not complete")
        meta_path = self.version_dir(project, version) / "meta.json"
        meta = json.loads(meta_path.read_text())
        meta["promoted"] = True
        write_json_atomic(meta_path, meta)
        write_text_atomic(self.project_dir(project) / CURRENT, version)
        logger.info("project %s: version %s is now current", project, version)

    def load(self, project: str, version: str) -> TrainedModel:
        key = f"{project}/{version}"
        with self._lock:
            model = self._cache.get(key)
            if model is None:
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
        return json.loads((self.version_dir(project, version) / TRAINED_ON).read_text())

    def clean_incomplete(self, project: str) -> None:
        """Remove temporary folders left by a worker that died mid-write."""
        for d in self.project_dir(project).glob(".tmp-*"):
            shutil.rmtree(d, ignore_errors=True)

    # per-project state ----------------------------------------------------------------------
    def state(self, project: str) -> dict[str, Any]:
        p = self.project_dir(project) / STATE
        return json.loads(p.read_text()) if p.is_file() else {}

    @contextmanager
    def _state_locked(self, project: str) -> Iterator[None]:
        """Serialise read-modify-write of state.json between the web process and workers on this host."""
        with open(self.project_dir(project) / ".state.lock", "a") as fh:
            fcntl.flock(fh, fcntl.LOCK_EX)
            try:
                yield
            finally:
                fcntl.flock(fh, fcntl.LOCK_UN)

    def update_state(self, project: str, **changes: Any) -> dict[str, Any]:
        return self.modify_state(project, lambda state: state.update(changes))

    def modify_state(self, project: str, change: Callable[[dict[str, Any]], Any]) -> dict[str, Any]:
        """Apply ``change`` to the project's state in place, under the state lock; returns the new state."""
        with self._state_locked(project):
            state = self.state(project)
            change(state)
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

    def record_dir(self, project: str, kind: str) -> Path:
        d = self.project_dir(project) / kind
        d.mkdir(exist_ok=True)
        return d


def write_text_atomic(path: Path, text: str) -> None:
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_text(text)
    os.replace(tmp, path)
