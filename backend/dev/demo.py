"""``weather-al demo``: the whole product on this machine, from nothing.

It starts a real Label Studio (its own venv), Redis (embedded unless ``REDIS_URL`` names one), the
backend and a worker; creates a project from ``label_config.xml`` over synthetic scenes; labels the
random seed set with a simulated annotator (it reveals the scenes' labels); trains; and shows the
ranked queue, the certified candidates, the audit sample and the random probes. Then it prints the URL and login for a
person to continue by hand, or, with ``--cycles N --no-wait``, runs N more cycles unattended and prints
a table per cycle before stopping everything it started.

The pieces (``Stack``, ``create_scene_project``, ``SimulatedAnnotator``) are also what the end-to-end
tests use, so the demo and the tests exercise the same path.
"""

from __future__ import annotations

import csv
import json
import logging
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import redis
from label_studio_sdk import LabelStudio
from tqdm.auto import tqdm

from backend.dev.local_label_studio import LocalLabelStudio, start_label_studio
from backend.labelstudio.client import AUDIT_VIEW, CANDIDATES_VIEW, PROBES_VIEW, QUEUE_VIEW, UNIFORM, as_dict
from backend.labelstudio.connect import connect
from backend.labelstudio.predictions import choices_result
from backend.labelstudio.tasks import resolve_local_url
from backend.queue import start_embedded_redis
from backend.store import ModelStore
from backend.worker.progress import read_progress
from model.schema import DEFAULT_LABEL_CONFIG, LabelSchema

logger = logging.getLogger(__name__)


def free_port(preferred: int | None = None) -> int:
    if preferred:
        with socket.socket() as s:
            try:
                s.bind(("127.0.0.1", preferred))
                return preferred
            except OSError:
                pass
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_for_backend(url: str, logs: Path, timeout: float = 120) -> None:
    """Wait until the backend at ``url`` answers /health; ``logs`` is where to look when it does not."""
    import requests

    deadline = time.time() + timeout
    while time.time() < deadline:
        try:
            if requests.get(f"{url}/health", timeout=1).ok:
                return
        except requests.RequestException:
            pass
        time.sleep(0.5)
    raise RuntimeError(f"the backend did not answer on {url} within {timeout:.0f} s; see {logs}")


#: Signals that stop the demo as Ctrl-C does: ``timeout``, systemd and ``docker stop`` send SIGTERM, a
#: closed terminal SIGHUP. Their default action ends Python at once, without running ``finally``
#: blocks, and would leave Label Studio, Redis, the backend and the worker running (each in a
#: session of its own, out of reach of a signal to the demo's process group).
STOP_SIGNALS = (signal.SIGTERM, signal.SIGHUP)


@contextmanager
def stop_signals_interrupt() -> Iterator[None]:
    """Within the block, SIGTERM and SIGHUP raise KeyboardInterrupt, so clean-up runs as on Ctrl-C."""

    def interrupt(signum: int, frame: object) -> None:
        raise KeyboardInterrupt(f"stopped by {signal.Signals(signum).name}")

    previous = {sig: signal.signal(sig, interrupt) for sig in STOP_SIGNALS}
    try:
        yield
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)


@dataclass
class RunningLabelStudio:
    """A Label Studio that is already running (``weather-al demo --label-studio-url``); the demo never stops it."""

    url: str
    token: str
    document_root: Path  # its LOCAL_FILES_DOCUMENT_ROOT: the scenes are written under it
    username: str = "your account"
    password: str = ""


@dataclass
class Stack:
    """Label Studio, Redis, the backend and a worker, started and stopped together."""

    workdir: Path
    document_root: Path
    label_studio: LocalLabelStudio | RunningLabelStudio | None = None
    backend_url: str = ""
    redis_url: str = ""
    env: dict[str, str] = field(default_factory=dict)
    processes: list[subprocess.Popen] = field(default_factory=list)
    _redis: Any = None
    _owns_label_studio: bool = True  # a Label Studio handed to ``start`` belongs to the caller, who stops it

    @classmethod
    def start(
        cls,
        workdir: Path,
        ls_port: int | None = 8080,
        backend_port: int | None = 9090,
        extra_env: dict[str, str] | None = None,
        label_studio: LocalLabelStudio | RunningLabelStudio | None = None,
    ) -> Stack:
        workdir.mkdir(parents=True, exist_ok=True)
        stack = cls(
            workdir=workdir,
            document_root=label_studio.document_root if label_studio else workdir / "files",
            _owns_label_studio=label_studio is None,
        )
        stack.document_root.mkdir(parents=True, exist_ok=True)
        try:
            stack.label_studio = label_studio or start_label_studio(
                workdir / "label-studio", stack.document_root, port=free_port(ls_port)
            )
            stack.redis_url = os.environ.get("REDIS_URL") or ""
            if not stack.redis_url:
                stack._redis, stack.redis_url = start_embedded_redis(workdir / "redis")
            port = free_port(backend_port)
            stack.backend_url = f"http://127.0.0.1:{port}"
            stack.env = {
                **os.environ,
                "LABEL_STUDIO_URL": stack.label_studio.url,
                "LABEL_STUDIO_API_KEY": stack.label_studio.token,
                "MODEL_DIR": str(workdir / "models"),
                "REDIS_URL": stack.redis_url,
                "PORT": str(port),
                "LOCAL_FILES_DOCUMENT_ROOT": str(stack.document_root),
                **(extra_env or {}),
            }
            logs = workdir / "logs"
            logs.mkdir(exist_ok=True)
            stack._spawn(["serve", "--no-worker"], logs / "backend.log")
            stack._spawn(["worker"], logs / "worker.log")
            wait_for_backend(stack.backend_url, logs)
        except BaseException:
            stack.stop()
            raise
        return stack

    def _spawn(self, args: list[str], log: Path) -> subprocess.Popen:
        fh = open(log, "ab")
        p = subprocess.Popen(
            [sys.executable, "-m", "backend.cli", *args],
            env=self.env,
            stdout=fh,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        self.processes.append(p)
        return p

    def client(self) -> LabelStudio:
        assert self.label_studio is not None, "Stack.start sets label_studio"
        return LabelStudio(base_url=self.label_studio.url, api_key=self.label_studio.token)

    def restart_worker(self) -> subprocess.Popen:
        return self._spawn(["worker"], self.workdir / "logs" / "worker.log")

    def stop(self) -> None:
        for p in self.processes:
            if p.poll() is None:
                p.terminate()
        for p in self.processes:
            try:
                p.wait(timeout=5)
            except subprocess.TimeoutExpired:
                # a busy RQ worker waits for its job; a second SIGTERM makes it kill the work-horse (which runs in
                # its own process group, out of reach of a signal to the worker) and exit
                p.terminate()
                try:
                    p.wait(timeout=15)
                except subprocess.TimeoutExpired:
                    p.kill()
        if isinstance(self.label_studio, LocalLabelStudio) and self._owns_label_studio:  # the one start started
            self.label_studio.stop()
        if self._redis is not None:
            self._redis.shutdown()


def create_scene_project(
    ls: LabelStudio, scenes: Path, document_root: Path, title: str = "Weather (demo)"
) -> tuple[int, dict[int, dict[str, str]]]:
    """A project over the synthetic scenes in ``scenes`` (under ``document_root``), with local storage.

    Returns the project id and the annotator's answers per task id (the manifest's labels: what a
    careful person would say, label noise included).
    """
    project = ls.projects.create(title=title, label_config=DEFAULT_LABEL_CONFIG.read_text())
    assert project.id is not None  # a created project has its id
    ls.import_storage.local.create(project=project.id, path=str(scenes.resolve()), title="scenes", use_blob_urls=True)
    tasks = json.loads((scenes / "tasks.json").read_text())
    created = ls.projects.import_tasks(id=project.id, request=tasks, return_task_ids=True)
    ids = list(as_dict(created)["task_ids"])
    answers_by_path = _manifest_answers(scenes)
    answers = {}
    for tid, task in zip(ids, tasks):
        path = resolve_local_url(task["data"]["image"], document_root)
        answers[int(tid)] = answers_by_path[str(path)]
    return project.id, answers


def _manifest_answers(scenes: Path) -> dict[str, dict[str, str]]:
    with (scenes / "manifest.csv").open(newline="") as fh:
        return {str((scenes / row.pop("image")).resolve()): row for row in csv.DictReader(fh)}


class SimulatedAnnotator:
    """Labels tasks through the API with the scenes' labels, as a person clicking Submit would."""

    def __init__(self, ls: LabelStudio, answers: dict[int, dict[str, str]], schema: LabelSchema | None = None) -> None:
        self.ls = ls
        self.answers = answers
        self.schema = schema or LabelSchema.from_file()

    def label(self, task_ids: list[int]) -> None:
        for tid in task_ids:
            self.ls.annotations.create(
                id=int(tid), result=choices_result(self.schema, self.answers[int(tid)]), ground_truth=False
            )


def wait_for_version(ls: LabelStudio, project: int, previous: str | None, timeout: float = 1800) -> str:
    """Wait until the worker points the project at a new model version; returns it."""
    deadline = time.time() + timeout
    while time.time() < deadline:
        v = ls.projects.get(id=project).model_version
        if v and v != previous and v.startswith("v"):
            return v
        time.sleep(2)
    raise TimeoutError(f"no new model version in project {project} after {timeout:.0f} s; see the worker log")


def finished_runs(model_dir: Path, project: int) -> int:
    """Training runs of ``project`` the workers have finished, whatever their outcome (from the store)."""
    from backend.store import ModelStore

    return sum((ModelStore(model_dir).state(str(project)).get("runs") or {}).values())


def wait_for_run(
    ls: LabelStudio,
    project: int,
    model_dir: Path,
    runs_before: int,
    timeout: float = 1800,
    redis_url: str | None = None,
) -> str | None:
    """Wait until one more training run has finished; returns the project's model version then.

    With ``redis_url`` (the workers' Redis), a bar per phase of the running cycle shows how far it has got.
    """
    deadline = time.time() + timeout
    bars = PhaseBars(redis.Redis.from_url(redis_url), project) if redis_url else None
    try:
        while time.time() < deadline:
            if finished_runs(model_dir, project) > runs_before:
                return ls.projects.get(id=project).model_version
            if bars is None:
                time.sleep(2)
                continue
            bars.update()
            time.sleep(0.5)
    finally:
        if bars is not None:
            bars.close()
    raise TimeoutError(f"no training run of project {project} finished within {timeout:.0f} s; see the worker log")


class PhaseBars:
    """A tqdm bar per phase of a project's running cycle, from the progress the worker writes to Redis."""

    UNITS = {"training": "epoch"}  # features and scoring count images

    def __init__(self, conn: redis.Redis, project: int) -> None:
        self.conn, self.project = conn, str(project)
        self._bar: tqdm | None = None
        self._shown: tuple[str, str, float] | None = None  # (job, phase, started) of the bar

    def update(self) -> None:
        """Move the bar to the last progress written; a new phase ends the old bar where its phase ended."""
        try:
            progress = read_progress(self.conn, self.project)
        except redis.RedisError as exc:  # the bars wait; the run's end is read from the model store
            logger.debug("cannot read the cycle's progress: %s", exc)
            return
        if progress is None:
            return
        shown = (progress.job, progress.phase, progress.started)
        if shown != self._shown or self._bar is None:
            ended = self._shown is not None and self._shown[::2] == (progress.job, progress.previous_started)
            if self._bar is not None and ended:  # the phase shown is the one that just ended: show where it did
                self._bar.n = progress.previous_done
                self._bar.refresh()
            self.close()
            self._shown = shown
            self._bar = tqdm(
                total=progress.total,
                desc=f"{progress.phase} {progress.version}".strip(),
                unit=self.UNITS.get(progress.phase, "image"),
            )
        self._bar.total = progress.total
        self._bar.n = progress.done
        self._bar.refresh()

    def close(self) -> None:
        if self._bar is not None:
            self._bar.close()
            self._bar = None


def view_tasks(ls: LabelStudio, project: int, title: str) -> list[dict[str, Any]]:
    views = [as_dict(v) for v in ls.views.list(project=project)]
    view = next((v for v in views if (v.get("data") or {}).get("title") == title), None)
    if view is None:
        return []
    pages: Iterable[Any] = ls.tasks.list(project=project, view=view["id"], fields="all")  # the SDK types items Never
    return [as_dict(t) for t in pages]


def waiting(ls: LabelStudio, project: int, title: str) -> list[int]:
    """The ids of the tasks of the view ``title`` that no one has labeled yet."""
    return [int(t["id"]) for t in view_tasks(ls, project, title) if not t.get("annotations")]


def run_demo(
    workdir: Path,
    n: int,
    seed_size: int,
    cycles: int,
    wait: bool,
    k: int,
    epochs: int | None,
    seed: int = 0,
    label_studio: RunningLabelStudio | None = None,
) -> None:
    workdir = workdir.resolve()
    print(f"weather-al demo: working in {workdir}")
    # 60 probes a cycle unless PROBE_SIZE says otherwise, not the default 30: a band is certified at 0.95 with
    # confidence 0.95 only on at least 59 probes inside it, all right (model.al.certify.labels_needed), so with 30 a
    # cycle no 600-task demo could show a certified band in its three cycles
    extra = {
        "MIN_LABELS": "10",
        "MANUAL_BATCH": str(k),
        "PROBE_SIZE": os.environ.get("PROBE_SIZE", "60"),
        "TRAIN_EVERY": str(10**6),
        "AUTO_ACCEPT": "true",
    }
    if epochs:
        extra["EPOCHS"] = str(epochs)
    with stop_signals_interrupt():
        _run_demo(workdir, extra, n, seed_size, cycles, wait, k, seed, label_studio)


def _run_demo(
    workdir: Path,
    extra: dict[str, str],
    n: int,
    seed_size: int,
    cycles: int,
    wait: bool,
    k: int,
    seed: int,
    label_studio: RunningLabelStudio | None,
) -> None:
    from model.sim.scenes import generate

    """The demo after its settings: Stack.start stops what it started if it is interrupted, the rest here."""
    stack = Stack.start(workdir, extra_env=extra, label_studio=label_studio)
    assert stack.label_studio is not None  # start sets it
    try:
        scenes = stack.document_root / "scenes"
        if not (scenes / "tasks.json").is_file():
            print(f"writing {n} synthetic scenes ...")
            generate(scenes, n, seed=seed, document_root=stack.document_root)
        ls = stack.client()
        project, answers = create_scene_project(ls, scenes, stack.document_root)
        connect(stack.label_studio.url, stack.label_studio.token, project, stack.backend_url, local_storage=None)
        annotator = SimulatedAnnotator(ls, answers)
        import random

        rng = random.Random(seed)
        seed_ids = rng.sample(sorted(answers), min(seed_size, len(answers)))
        print(f"the simulated annotator labels a random seed set of {len(seed_ids)} tasks ...")
        annotator.label(seed_ids)
        ml = ls.ml.list(project=project)[0]
        models = Path(stack.env["MODEL_DIR"])
        print("training the first model (Start Training) ...")
        started = time.monotonic()
        ls.ml.train(id=ml.id)
        version = wait_for_run(ls, project, models, 0, redis_url=stack.redis_url)
        seconds = time.monotonic() - started
        store = ModelStore(models)

        def machine_ids() -> set[int]:
            return set(store.state(str(project)).get("machine_task_ids", []))

        rows = [cycle_row(ls, project, answers, version, 0, machine_ids(), seconds)]
        show_queue(ls, project)
        for c in range(1, cycles + 1):
            queue = [int(t["id"]) for t in view_tasks(ls, project, QUEUE_VIEW)[:k]]
            audit, probes = (waiting(ls, project, view) for view in (AUDIT_VIEW, PROBES_VIEW))
            annotator.label(list(dict.fromkeys(queue + audit + probes)))  # a task in two lists is labeled once
            runs = finished_runs(models, project)
            print(
                f"cycle {c}: the simulated annotator labeled {len(queue)} queued, {len(audit)} audit "
                f"and {len(probes)} probe tasks; retraining ..."
            )
            started = time.monotonic()
            ls.ml.train(id=ml.id)
            version = wait_for_run(ls, project, models, runs, redis_url=stack.redis_url)
            rows.append(cycle_row(ls, project, answers, version, c, machine_ids(), time.monotonic() - started))
        print_table(rows)
        url = f"{stack.label_studio.url}/projects/{project}/data"
        login = (
            f"{stack.label_studio.username} / {stack.label_studio.password}"
            if stack.label_studio.password
            else stack.label_studio.username
        )
        print(f"\nLabel Studio: {url}\nlogin: {login}")
        if wait:
            print(
                "Open the project, pick the 'Active learning queue' tab and click 'Label All Tasks'. "
                "Ctrl-C stops everything."
            )
            while True:
                time.sleep(3600)
    except KeyboardInterrupt:
        pass
    finally:
        stack.stop()


def cycle_row(
    ls: LabelStudio,
    project: int,
    answers: dict[int, dict[str, str]],
    version: str | None,
    cycle: int,
    machine_ids: set[int],
    seconds: float = float("nan"),
) -> dict[str, Any]:
    """People's labels, the model's labels (the bulk accepts the backend recorded), their measured precision,
    macro-F1 of the current predictions, and ``seconds`` from Start Training to the run's end (predictions in
    Label Studio)."""
    from sklearn.metrics import f1_score

    schema = LabelSchema.from_file()
    human = machine = right = 0
    pred: dict[str, list[str]] = {h: [] for h in schema.head_names}
    true: dict[str, list[str]] = {h: [] for h in schema.head_names}
    pages: Iterable[Any] = ls.tasks.list(project=project, fields="all")  # the SDK types its pager's items as Never
    for t in (as_dict(t) for t in pages):
        tid = int(t["id"])
        anns = [a for a in t.get("annotations") or [] if not a.get("was_cancelled")]
        if anns and tid not in machine_ids:
            human += 1
        elif anns:
            machine += 1
            got = {r["from_name"]: r["value"]["choices"][0] for r in anns[-1]["result"]}
            right += all(got[h] == answers[tid][h] for h in schema.head_names)
        preds = [p for p in t.get("predictions") or [] if p.get("model_version") == version]
        if preds:
            got = {r["from_name"]: r["value"]["choices"][0] for r in preds[-1]["result"]}
            for h in schema.head_names:
                pred[h].append(got[h])
                true[h].append(answers[tid][h])
    f1 = [f1_score(true[h], pred[h], average="macro") for h in schema.head_names if true[h]]
    return {
        "cycle": cycle,
        "version": version,
        "human": human,
        "machine": machine,
        "precision": right / machine if machine else float("nan"),
        "macro_f1": sum(f1) / len(f1) if f1 else float("nan"),
        "seconds": seconds,
    }


def print_table(rows: list[dict[str, Any]]) -> None:
    print(
        f"\n{'cycle':>5} {'version':<22} {'by people':>9} {'by model':>9} {'precision':>9} {'macro-F1':>8} "
        f"{'seconds':>7}"
    )
    for r in rows:
        print(
            f"{r['cycle']:>5} {r['version']:<22} {r['human']:>9} {r['machine']:>9} "
            f"{r['precision']:>9.3f} {r['macro_f1']:>8.3f} {r['seconds']:>7.0f}"
        )


def show_queue(ls: LabelStudio, project: int) -> None:
    queue = view_tasks(ls, project, QUEUE_VIEW)
    if as_dict(ls.projects.get(id=project)).get("sampling") == UNIFORM:
        print(
            f"\nThis model cannot rank yet (on the labels it was checked on its risk score does not tell right from "
            f"wrong), so Label Studio samples the {len(queue)} queued tasks uniformly."
        )
    else:
        print(f"\nActive learning queue (most likely wrong first), top 5 of {len(queue)}:")
        for t in queue[:5]:
            score = t.get("predictions_score")
            print(f"  task {t['id']}: score {'none' if score is None else format(score, '.3f')}")
    print(
        f"Auto-annotation candidates: {len(view_tasks(ls, project, CANDIDATES_VIEW))} tasks; "
        f"audit sample: {len(view_tasks(ls, project, AUDIT_VIEW))} tasks; "
        f"random probes: {len(view_tasks(ls, project, PROBES_VIEW))} tasks"
    )
