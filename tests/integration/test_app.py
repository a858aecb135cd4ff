"""The web process against a real Redis: protocol replies, folding of training requests, faults, auth."""

from __future__ import annotations

import base64
import inspect
import json
import logging
import os
import re
import shutil
import subprocess
import sys
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import numpy as np
import pytest
import redis
from gunicorn.app.base import BaseApplication
from pydantic import ValidationError
from rq import SimpleWorker, Worker
from rq.serializers import JSONSerializer
from tiny_data import write_tiny_set

from backend.cli import main
from backend.labelstudio.predictions import CALIBRATION_FILE, task_scores
from backend.queue import KEY, Broker
from backend.settings import Settings, get_settings
from backend.store import ModelStore
from backend.web import server
from backend.web.app import create_app
from backend.worker.run import quiet_maintenance
from model.al.confidence import Confidence, RiskScore
from model.data.examples import Example, read_manifest
from model.nn.checkpoint import TrainedModel
from model.schema import DEFAULT_LABEL_CONFIG, LabelSchema
from model.training.trainer import TrainConfig, train

REDIS_URL = os.environ.get("TEST_REDIS_URL", "redis://127.0.0.1:6379/15")
LABEL_CONFIG = DEFAULT_LABEL_CONFIG.read_text()


@pytest.fixture()
def broker() -> Broker:
    b = Broker(REDIS_URL)
    if not b.ping():
        pytest.fail(f"these tests need a real Redis at {REDIS_URL} (.ci/run starts one)")
    b.conn.flushdb()
    yield b
    b.conn.flushdb()


@pytest.fixture(scope="module")
def trained_store(tmp_path_factory) -> tuple[Path, Path, str]:
    """A model store with one current version for project 7, and the images it can predict."""
    root = tmp_path_factory.mktemp("store")
    data = write_tiny_set(root / "docs" / "imgs", 27)
    schema = LabelSchema.from_file()
    result = train(
        read_manifest(data.manifest, schema),
        TrainConfig(image_size=48, epochs=1, min_steps=5, workers=0),
        progress=False,
        version="v1-test",
    )
    store = ModelStore(root / "models")
    store.save_version("7", result.model, trained_on={"train": []})
    store.promote("7", "v1-test")
    return root / "models", root / "docs", "v1-test"


def make_client(tmp_path: Path, broker: Broker | None, **overrides):
    settings = Settings(
        model_dir=overrides.pop("model_dir", tmp_path / "models"),
        redis_url=broker.url if broker else None,
        label_studio_api_key=None,
        **overrides,
    )
    return create_app(settings, broker=broker).test_client()


class FakeLabelStudio(ThreadingHTTPServer):
    """Label Studio's annotation listing, ``GET /api/tasks/<id>/annotations/``, as the worker's webhook checks read it.

    ``annotations`` maps a task id to what Label Studio holds on it; any other task is a 404, as in Label Studio.
    """

    def __init__(self) -> None:
        super().__init__(("127.0.0.1", 0), _FakeLabelStudioHandler)
        self.annotations: dict[int, list[dict]] = {}
        self.asked: list[tuple[int, str]] = []  # (task id, Authorization header)
        self.url = f"http://127.0.0.1:{self.server_address[1]}"


class _FakeLabelStudioHandler(BaseHTTPRequestHandler):
    server: FakeLabelStudio

    def do_GET(self) -> None:  # noqa: N802 (http.server's name)
        match = re.fullmatch(r"/api/tasks/(\d+)/annotations/(\?.*)?", self.path)
        task = int(match.group(1)) if match else None
        self.server.asked.append((task, self.headers.get("Authorization", "")))
        found = task in self.server.annotations
        body = json.dumps(self.server.annotations[task] if found else {"detail": "Not found."}).encode()
        self.send_response(200 if found else 404)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args) -> None:
        pass


@pytest.fixture()
def label_studio(tmp_path, monkeypatch) -> FakeLabelStudio:
    """A fake Label Studio that the worker's checks reach through the real SDK, with the worker's settings."""
    fake = FakeLabelStudio()
    threading.Thread(target=fake.serve_forever, daemon=True).start()
    monkeypatch.setenv("LABEL_STUDIO_URL", fake.url)
    monkeypatch.setenv("LABEL_STUDIO_API_KEY", "worker-token")
    monkeypatch.setenv("MODEL_DIR", str(tmp_path / "models"))
    monkeypatch.setenv("REDIS_URL", REDIS_URL)
    get_settings.cache_clear()
    yield fake
    get_settings.cache_clear()
    fake.shutdown()
    fake.server_close()


def run_queued_checks(broker: Broker) -> None:
    """Run every queued job in this process, as a worker would (the webhook checks here)."""
    SimpleWorker([broker.queue], connection=broker.conn, serializer=JSONSerializer).work(burst=True)


def converted(
    aid: int, task: int, project: int = 7, updated_by: int | None = None, created_at: str = "2026-11-28T10:00:00Z"
) -> dict:
    """An annotation as Label Studio lists it after "Create Annotations From Predictions" (``updated_by``: a person
    saved it since)."""
    return {
        "id": aid,
        "task": task,
        "project": project,
        "parent_prediction": 500 + task,
        "updated_by": updated_by,
        "created_at": created_at,
        "result": [],
        "was_cancelled": False,
    }


def test_health_setup_and_versions(tmp_path, broker):
    c = make_client(tmp_path, broker)
    h = c.get("/health").get_json()
    assert h["status"] == "UP" and h["redis"] == "up"
    r = c.post(
        "/setup",
        json={
            "project": "3.1700000000",
            "schema": LABEL_CONFIG,
            "hostname": "http://localhost:8080",
            "access_token": "x",
        },
    )
    assert r.status_code == 200 and r.get_json() == {"model_version": "untrained"}
    assert c.get("/versions").get_json()["versions"] == []


def test_predict_without_model_returns_one_empty_item_per_task(tmp_path, broker):
    c = make_client(tmp_path, broker)
    r = c.post(
        "/predict",
        json={
            "tasks": [{"id": 1, "data": {"image": "/x.jpg"}}, {"id": 2, "data": {"image": "/y.jpg"}}],
            "project": "3.17",
            "label_config": LABEL_CONFIG,
        },
    )
    assert r.status_code == 200
    assert r.get_json()["results"] == [[], []]


def test_webhook_folds_events_while_a_run_waits(tmp_path, broker):
    c = make_client(tmp_path, broker, train_every=2)
    first = c.post("/webhook", json={"action": "START_TRAINING", "project": {"id": 5}}).get_json()
    second = c.post("/webhook", json={"action": "START_TRAINING", "project": {"id": 5}}).get_json()
    assert (first["status"], second["status"]) == ("queued", "folded")
    assert len(broker.queue) == 1
    # the job clears its waiting mark as it starts: the next event queues exactly one more run
    broker.start_run("5")
    counted = c.post(
        "/webhook", json={"action": "ANNOTATION_CREATED", "project": {"id": 5}, "annotation": {"id": 1}}
    ).get_json()
    queued = c.post(
        "/webhook", json={"action": "ANNOTATION_UPDATED", "project": {"id": 5}, "annotation": {"id": 1}}
    ).get_json()
    assert (counted["status"], queued["status"]) == ("counted", "queued")
    assert len(broker.queue) == 2
    job = broker.queue.jobs[0]
    assert job.func_name == "backend.worker.cycle.train_project" and job.args == [5]


def test_unknown_action_is_ignored_with_200(tmp_path, broker):
    r = make_client(tmp_path, broker).post("/webhook", json={"action": "PROJECT_UPDATED", "project": {"id": 5}})
    assert r.status_code == 200 and r.get_json()["status"] == "ignored"
    assert len(broker.queue) == 0


@pytest.mark.parametrize(
    "path,body,status",
    [
        ("/predict", b"{not json", 400),
        ("/predict", b'{"project": "3.1"}', 400),
        ("/predict", b'{"tasks": [], "project": "abc"}', 400),
        ("/setup", b'{"project": "3.1", "schema": "<View><Text name=\\"t\\" value=\\"$t\\"/></View>"}', 422),
        ("/setup", b'{"project": "3.1", "schema": "<View"}', 422),
        ("/webhook", b'{"project": {"id": 1}}', 400),
        ("/webhook", b"[1, 2]", 400),
    ],
)
def test_bad_requests_get_a_4xx_with_a_message_and_no_trace(tmp_path, broker, path, body, status):
    r = make_client(tmp_path, broker).post(path, data=body, content_type="application/json")
    assert r.status_code == status
    msg = r.get_json()["error"]
    assert msg and "Traceback" not in msg and 'File "' not in msg


def test_redis_down_webhook_503_health_reports_predict_still_serves(tmp_path, trained_store):
    models, docs, version = trained_store
    down = Broker("redis://127.0.0.1:1/0")
    c = make_client(tmp_path, down, model_dir=models, local_files_document_root=docs)
    assert c.get("/health").get_json()["redis"] == "down"
    r = c.post("/webhook", json={"action": "START_TRAINING", "project": {"id": 7}})
    assert r.status_code == 503 and "Redis" in r.get_json()["error"]
    p = c.post(
        "/predict",
        json={
            "tasks": [{"id": 1, "data": {"image": "/data/local-files/?d=imgs/images/0000.jpg"}}],
            "project": "7.1",
            "label_config": LABEL_CONFIG,
        },
    )
    assert p.status_code == 200 and p.get_json()["results"][0]["model_version"] == version


def test_predict_broken_image_costs_only_its_task_and_cache_hits(tmp_path, trained_store, broker):
    models, docs, version = trained_store
    (docs / "imgs" / "broken.jpg").write_bytes(b"\xff\xd8\xff\xe0 not really a jpeg")
    c = make_client(tmp_path, broker, model_dir=models, local_files_document_root=docs)
    tasks = [
        {"id": 11, "data": {"image": "/data/local-files/?d=imgs/images/0001.jpg"}},
        {"id": 12, "data": {"image": "/data/local-files/?d=imgs/broken.jpg"}},
        {"id": 13, "data": {"image": "/data/local-files/?d=../../etc/passwd"}},
        {"id": 14, "data": {"image": "/data/local-files/?d=imgs/images/0002.jpg"}},
    ]
    res = c.post("/predict", json={"tasks": tasks, "project": "7.1", "label_config": LABEL_CONFIG}).get_json()[
        "results"
    ]
    assert len(res) == 4 and res[1] == [] and res[2] == []
    schema = LabelSchema.from_file()
    for item in (res[0], res[3]):
        assert item["model_version"] == version and 0.0 <= item["score"] <= 1.0
        got = {r["from_name"]: r["value"]["choices"][0] for r in item["result"]}
        assert set(got) == set(schema.head_names)
        assert all(got[h.name] in h.classes for h in schema.heads)
    # the same task again is served from the cache: identical, even after its file is gone
    shutil.copy(docs / "imgs" / "images" / "0001.jpg", tmp_path / "keep.jpg")
    (docs / "imgs" / "images" / "0001.jpg").unlink()
    again = c.post("/predict", json={"tasks": tasks[:1], "project": "7.1", "label_config": LABEL_CONFIG}).get_json()[
        "results"
    ]
    shutil.copy(tmp_path / "keep.jpg", docs / "imgs" / "images" / "0001.jpg")
    assert again == res[:1]


@pytest.mark.parametrize("recorded", [True, False], ids=["risk score recorded", "older version"])
def test_predict_scores_with_the_versions_own_risk_score(tmp_path, trained_store, broker, recorded):
    """Issue 14: /predict gives a task the score the worker's bulk import gave it: P(every head right) of the risk
    score the version's cycle fitted (its calibration.json); a version certified before risk scores existed has
    none there and keeps the predicted loss, the score it was imported with."""
    models, docs, version = trained_store
    shutil.copytree(models, tmp_path / "models")
    version_dir = tmp_path / "models" / "7" / version
    n_features = 1 + 3 * len(LabelSchema.from_file().heads)  # predicted loss, then 3 per head
    confidence = RiskScore("confidence", Confidence(np.linspace(-2.0, 2.0, n_features), 0.5, use_loss_module=True))
    if recorded:
        (version_dir / CALIBRATION_FILE).write_text(
            json.dumps({"risk_score": confidence.to_dict(), "calibrator": None})
        )
    images = ["0001.jpg", "0002.jpg", "0003.jpg"]
    result = TrainedModel.load(version_dir).score(
        [Example(key=str(i), source=str(docs / "imgs" / "images" / name)) for i, name in enumerate(images)], workers=0
    )
    expected = task_scores(result, confidence if recorded else RiskScore("loss"), None)
    assert not np.allclose(expected, task_scores(result, RiskScore("loss") if recorded else confidence, None))
    c = make_client(tmp_path, broker, local_files_document_root=docs)
    tasks = [
        {"id": 21 + i, "data": {"image": f"/data/local-files/?d=imgs/images/{name}"}} for i, name in enumerate(images)
    ]
    res = c.post("/predict", json={"tasks": tasks, "project": "7.1", "label_config": LABEL_CONFIG}).get_json()[
        "results"
    ]
    assert [item["score"] for item in res] == pytest.approx(expected.tolist(), abs=1e-4)


def test_schema_change_is_a_409_that_says_retrain(tmp_path, trained_store, broker):
    models, docs, _ = trained_store
    other = LABEL_CONFIG.replace('<Choice value="snow"/>', '<Choice value="snow"/><Choice value="fog"/>')
    r = make_client(tmp_path, broker, model_dir=models, local_files_document_root=docs).post(
        "/predict", json={"tasks": [{"id": 1, "data": {"image": "/x"}}], "project": "7.1", "label_config": other}
    )
    assert r.status_code == 409 and "retrain" in r.get_json()["error"]


def test_basic_auth_guards_every_endpoint_but_health(tmp_path, broker):
    c = make_client(tmp_path, broker, basic_auth_user="lead", basic_auth_pass="s3cret")
    assert c.get("/health").status_code == 200
    for method, path in (
        ("post", "/setup"),
        ("post", "/predict"),
        ("post", "/webhook"),
        ("get", "/versions"),
        ("get", "/metrics"),
    ):
        assert getattr(c, method)(path, json={}).status_code == 401
    good = {"Authorization": "Basic " + base64.b64encode(b"lead:s3cret").decode()}
    assert c.get("/versions", headers=good).status_code == 200
    bad = {"Authorization": "Basic " + base64.b64encode(b"lead:wrong").decode()}
    assert c.get("/versions", headers=bad).status_code == 401


def test_metrics_exports_requests_and_store_counters(tmp_path, broker):
    store = ModelStore(tmp_path / "models")
    store.update_state("4", human_labeled=40, machine_task_ids=list(range(120)), runs={"promoted": 2})
    c = make_client(tmp_path, broker)
    c.get("/health")
    text = c.get("/metrics").get_data(as_text=True)
    assert 'weather_al_requests_total{endpoint="/health",status="200"} 1.0' in text
    assert 'weather_al_human_labeled{project="4"} 40.0' in text
    assert 'weather_al_machine_labeled{project="4"} 120.0' in text
    assert 'weather_al_training_runs{project="4",result="promoted"} 2.0' in text


def test_queue_unreachable_raises_clear_error():
    b = Broker("redis://:hunter2@127.0.0.1:1/0")
    with pytest.raises(Exception) as info:
        b.request_training("1", "test")
    assert "hunter2" not in str(info.value) and "Redis" in str(info.value)
    assert KEY.format("1", "waiting") == "weather-al:1:waiting"
    assert isinstance(b.conn, redis.Redis)


def test_bulk_accept_in_label_studio_is_recorded_once_as_machine_labels(tmp_path, broker, trained_store, label_studio):
    models, _, version = trained_store
    store_dir = tmp_path / "models"
    shutil.copytree(models, store_dir)
    (store_dir / "7" / version / "calibration.json").write_text(
        '{"certificate": {"threshold": 0.2, "lower_bound": 0.96, "target": 0.95, "delta": 0.05}}'
    )
    for t in (1, 2, 3):
        label_studio.annotations[t] = [converted(100 + t, t, created_at=f"2026-11-28T10:00:0{t}Z")]
    c = make_client(tmp_path, broker, model_dir=store_dir)
    annotations = [
        {"id": 100 + t, "task": t, "parent_prediction": 500 + t, "created_at": f"2026-11-28T10:00:0{t}Z"}
        for t in (3, 1, 2)
    ]
    body = {
        "action": "ANNOTATIONS_CREATED",
        "project": {"id": 7},
        "annotation": annotations,
        "task": [{"id": t} for t in (1, 2, 3)],
    }

    r = c.post("/webhook", json=body)
    assert r.status_code == 202 and r.get_json()["status"] == "checking" and r.get_json()["tasks"] == 3
    store = ModelStore(store_dir)
    assert store.state("7").get("machine_task_ids", []) == []  # nothing is recorded before Label Studio confirms it
    assert [job.func_name for job in broker.queue.jobs] == ["backend.worker.webhook_checks.check_bulk_accept"]
    run_queued_checks(broker)
    assert sorted(task for task, _ in label_studio.asked) == [1, 2, 3]
    assert {auth for _, auth in label_studio.asked} == {"Token worker-token"}
    assert len(broker.queue) == 0  # machine labels never train, so they do not count towards a retrain
    assert store.state("7")["machine_task_ids"] == [1, 2, 3]
    (record,) = [p for p in (store_dir / "7" / "accepts").glob("*.json")]
    saved = json.loads(record.read_text())
    assert saved["task_ids"] == [1, 2, 3] and saved["version"] == version and saved["certified_lower_bound"] == 0.96
    assert saved["created_at"] == "2026-11-28T10:00:01Z"  # the first annotation's time, so undo finds them all
    assert 'weather_al_machine_labeled{project="7"} 3.0' in c.get("/metrics").get_data(as_text=True)

    again = c.post("/webhook", json=body).get_json()  # e.g. the worker's own AUTO_ACCEPT, already recorded
    assert again["status"] == "known" and len(list((store_dir / "7" / "accepts").glob("*.json"))) == 1
    assert len(broker.queue) == 0  # and nothing to check
    bad = c.post("/webhook", json={"action": "ANNOTATIONS_CREATED", "project": {"id": 7}, "annotation": [{"id": 1}]})
    assert bad.status_code == 400 and "task" in bad.get_json()["error"]


def test_a_forged_bulk_accept_marks_only_what_label_studio_confirms(tmp_path, broker, label_studio):
    """Anyone who reaches /webhook can claim a bulk accept; a person's label it names must keep training."""
    label_studio.annotations.update(
        {
            1: [converted(101, 1, updated_by=5)],  # a person submitted the pre-label in the editor: theirs, it trains
            2: [],  # not labeled at all
            3: [converted(103, 3, project=8)],  # converted, but in another project
            4: [converted(104, 4)],  # really converted and untouched
        }
    )
    c = make_client(tmp_path, broker)
    claim = [{"id": 900 + t, "task": t, "parent_prediction": 1} for t in (1, 2, 3, 4, 5)]  # task 5 does not exist
    r = c.post("/webhook", json={"action": "ANNOTATIONS_CREATED", "project": {"id": 7}, "annotation": claim})
    assert r.status_code == 202
    run_queued_checks(broker)
    store = ModelStore(tmp_path / "models")
    assert store.state("7")["machine_task_ids"] == [4]
    (record,) = list((tmp_path / "models" / "7" / "accepts").glob("*.json"))
    assert json.loads(record.read_text())["task_ids"] == [4]
    assert broker.queue.failed_job_registry.count == 0  # a 404 for task 5 is an answer, not a failure

    nothing = [{"id": 901, "task": 2, "parent_prediction": 1}]
    r = c.post("/webhook", json={"action": "ANNOTATIONS_CREATED", "project": {"id": 7}, "annotation": nothing})
    assert r.status_code == 202
    run_queued_checks(broker)
    assert store.state("7")["machine_task_ids"] == [4]
    assert len(list((tmp_path / "models" / "7" / "accepts").glob("*.json"))) == 1


def test_the_web_process_does_not_load_the_label_studio_sdk():
    """The webhook checks run in the worker: the SDK costs the web process 1.8 s and 86 MB at start-up."""
    code = (
        "import sys, backend.web.app; print([m for m in sys.modules if m.startswith(('label_studio_sdk', 'backend.'))])"
    )
    out = subprocess.run(
        [sys.executable, "-c", code],
        capture_output=True,
        text=True,
        check=True,
        cwd=Path(__file__).resolve().parents[2],
    ).stdout
    assert "label_studio_sdk" not in out and "backend.worker.webhook_checks" not in out and "backend.web.app" in out


def test_annotation_deletion_counts_towards_a_retrain(tmp_path, broker):
    c = make_client(tmp_path, broker, train_every=1)
    r = c.post("/webhook", json={"action": "ANNOTATIONS_DELETED", "project": {"id": 5}, "annotation": [{"id": 1}]})
    assert r.status_code == 200 and r.get_json()["status"] != "ignored"
    assert len(broker.queue) == 1


def test_rq_maintenance_lines_stay_out_of_an_info_log(caplog: pytest.LogCaptureFixture) -> None:
    assert "cleaning registries" in inspect.getsource(Worker.clean_registries)  # the line the filter knows is RQ's own
    log = logging.getLogger("rq.worker")
    log.addFilter(quiet_maintenance)
    try:
        with caplog.at_level(logging.INFO, logger="rq.worker"):
            log.info("Worker %s: cleaning registries for queue: %s", "w1", "training")
            log.info("Worker %s: cleaning group registries", "w1")
            log.info("Worker %s: done, quitting", "w1")
        assert [r.getMessage() for r in caplog.records] == ["Worker w1: done, quitting"]
        caplog.clear()
        with caplog.at_level(logging.DEBUG, logger="rq.worker"):
            log.info("Worker %s: cleaning registries for queue: %s", "w1", "training")
        assert len(caplog.records) == 1
    finally:
        log.removeFilter(quiet_maintenance)


def test_a_person_saving_a_machine_label_makes_it_theirs(tmp_path, broker, label_studio):
    store = ModelStore(tmp_path / "models")
    store.mark_machine_labeled("7", [1, 2, 3])
    label_studio.annotations.update({2: [converted(102, 2, updated_by=1)], 3: [converted(103, 3)]})
    c = make_client(tmp_path, broker)
    body = {"action": "ANNOTATION_UPDATED", "project": {"id": 7}, "annotation": {"id": 102, "task": 2, "updated_by": 1}}
    r = c.post("/webhook", json=body)
    assert r.status_code == 200 and r.get_json()["status"] != "ignored"  # a person's label counts towards a retrain
    assert store.state("7")["machine_task_ids"] == [1, 2, 3]  # not before Label Studio confirms it
    run_queued_checks(broker)
    assert store.state("7")["machine_task_ids"] == [1, 3]
    assert 'weather_al_machine_labeled{project="7"} 2.0' in c.get("/metrics").get_data(as_text=True)
    person = dict(
        body, annotation={"id": 9, "task": 40, "updated_by": 1}
    )  # an update of a person's own label changes nothing
    assert c.post("/webhook", json=person).status_code == 200 and store.state("7")["machine_task_ids"] == [1, 3]
    assert len(broker.queue) == 0  # and costs no call to Label Studio

    # a forged update of an untouched machine label (Label Studio shows no updated_by) releases nothing
    forged = dict(body, annotation={"id": 103, "task": 3, "updated_by": 1})
    assert c.post("/webhook", json=forged).status_code == 200
    run_queued_checks(broker)
    assert store.state("7")["machine_task_ids"] == [1, 3]
    # nor does naming another task's annotation
    label_studio.annotations[1] = [converted(101, 1)]
    assert c.post("/webhook", json=dict(body, annotation={"id": 102, "task": 1, "updated_by": 1})).status_code == 200
    run_queued_checks(broker)
    assert store.state("7")["machine_task_ids"] == [1, 3]


def test_half_a_basic_auth_pair_refuses_to_start(tmp_path, monkeypatch, capsys):
    with pytest.raises(ValidationError, match="BASIC_AUTH_USER is set but BASIC_AUTH_PASS is not"):
        Settings(basic_auth_user="x")
    half = Settings(model_dir=tmp_path / "models").model_copy(update={"basic_auth_pass": "s3cret"})  # skips validators
    with pytest.raises(ValueError, match="BASIC_AUTH_PASS is set but BASIC_AUTH_USER is not"):
        create_app(half)
    with pytest.raises(ValueError, match="BASIC_AUTH_PASS is set but BASIC_AUTH_USER is not"):
        server.serve(half)
    assert not (tmp_path / "models" / "redis.db").exists()  # refused before the embedded Redis started
    monkeypatch.setenv("BASIC_AUTH_USER", "lead")
    monkeypatch.delenv("BASIC_AUTH_PASS", raising=False)
    get_settings.cache_clear()
    try:
        assert main(["serve"]) == 2
    finally:
        get_settings.cache_clear()
    assert "BASIC_AUTH_USER is set but BASIC_AUTH_PASS is not" in capsys.readouterr().err
    monkeypatch.setenv("BASIC_AUTH_PASS", "hunter2")
    monkeypatch.delenv("BASIC_AUTH_USER")
    get_settings.cache_clear()
    try:
        assert main(["serve"]) == 2
    finally:
        get_settings.cache_clear()
    assert "hunter2" not in (err := capsys.readouterr().err) and "BASIC_AUTH_USER is not" in err  # never the password


@pytest.mark.parametrize(
    "host,auth,warns",
    [
        ("0.0.0.0", False, True),
        ("::", False, True),
        ("192.168.1.20", False, True),
        ("backend.example", False, True),
        ("0.0.0.0", True, False),
        ("127.0.0.1", False, False),
        ("127.0.0.2", False, False),
        ("::1", False, False),
        ("localhost", False, False),
    ],
)
def test_serving_open_on_the_network_warns_how_to_fix_it(tmp_path, caplog, monkeypatch, host, auth, warns):
    pair = {"basic_auth_user": "lead", "basic_auth_pass": "s3cret"} if auth else {}
    settings = Settings(model_dir=tmp_path / "models", host=host, port=9123, **pair)
    binds = []
    monkeypatch.setattr(BaseApplication, "run", lambda self: binds.append(self.cfg.bind))
    with caplog.at_level(logging.WARNING, logger="backend.web.server"):
        server._run_gunicorn(settings)
    assert binds == [[f"[{host}]:9123" if ":" in host else f"{host}:9123"]]
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert bool(warnings) == warns
    if warns:
        assert "BASIC_AUTH_USER" in warnings[0] and "BASIC_AUTH_PASS" in warnings[0] and "HOST=127.0.0.1" in warnings[0]
    assert all("s3cret" not in r.getMessage() for r in caplog.records)


def test_setup_applies_the_connect_dialogs_extra_params(tmp_path, broker):
    """Label Studio's connect dialog has an *Extra params* field; it was ignored. Now the per-project settings
    given there apply to that project (here TRAIN_EVERY), and anything else is a clear 422."""
    c = make_client(tmp_path, broker, train_every=20)
    body = {
        "project": "5.1700000000",
        "schema": LABEL_CONFIG,
        "extra_params": {"TRAIN_EVERY": 2, "target_precision": 0.9},
    }
    assert c.post("/setup", json=body).status_code == 200
    store = ModelStore(tmp_path / "models")
    assert store.state("5")["extra_params"] == {"train_every": 2, "target_precision": 0.9}
    event = {"action": "ANNOTATION_CREATED", "project": {"id": 5}, "annotation": {"id": 1}}
    assert [c.post("/webhook", json=event).get_json()["status"] for _ in range(2)] == ["counted", "queued"]
    other = {"action": "ANNOTATION_CREATED", "project": {"id": 6}, "annotation": {"id": 1}}
    assert {c.post("/webhook", json=other).get_json()["status"] for _ in range(2)} == {"counted"}  # 20 there
    for bad, words in [
        ({"TRAIN_EVRY": 3}, "unknown Extra params ['TRAIN_EVRY']"),
        ({"TRAIN_EVERY": 0}, "TRAIN_EVERY"),
        ("not json", "JSON object"),
        ({"LABEL_STUDIO_URL": "http://evil"}, "unknown Extra params"),
        ({"STRATEGY": "best"}, "unknown selection strategy 'best'; choose one of loss, "),
        ({"RISK_SCORE": "entropy"}, "unknown risk score 'entropy'; choose one of confidence, loss"),
        ({"PROBE_SIZE": -1}, "PROBE_SIZE"),
    ]:
        r = c.post("/setup", json={**body, "extra_params": bad})
        assert r.status_code == 422 and words in r.get_json()["error"], r.get_json()
    assert store.state("5")["extra_params"] == {
        "train_every": 2,
        "target_precision": 0.9,
    }  # a refused change changes nothing
    assert c.post("/setup", json={**body, "extra_params": "{}"}).status_code == 200
    assert store.state("5")["extra_params"] == {}
