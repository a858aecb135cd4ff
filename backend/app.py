"""The web process: Label Studio's ML backend protocol on Flask 3.

``/setup`` and ``/health`` answer from memory and the model store (Label Studio waits 3 s and 1 s);
``/webhook`` only counts and enqueues (Label Studio waits 1 s, and without Redis on its side a slow
webhook slows every submit); training runs in ``weather-al worker``. Malformed requests get a 4xx with
a message, never a stack trace.
"""

from __future__ import annotations

import hmac
import logging
import time
from typing import Any

from flask import Flask, Response, g, jsonify, request
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, Counter, Histogram, generate_latest
from prometheus_client.core import GaugeMetricFamily
from werkzeug.exceptions import HTTPException

from model.schema import LabelSchema, SchemaError

from .accepts import record_label_studio_accept, release_edited_machine_label
from .predictor import Predictor, SchemaMismatch
from .queue import Broker, QueueUnavailable
from .settings import Settings
from .store import ModelStore

logger = logging.getLogger(__name__)

TRAIN_ACTIONS = {"START_TRAINING"}
# Label Studio 1.23 reports a deletion as ANNOTATIONS_DELETED (plural), even of one annotation
ANNOTATION_ACTIONS = {"ANNOTATION_CREATED", "ANNOTATION_UPDATED", "ANNOTATIONS_DELETED"}
BULK_ACCEPT_ACTION = "ANNOTATIONS_CREATED"  # sent only by "Create Annotations From Predictions"


class BadRequest(Exception):
    def __init__(self, message: str, status: int = 400) -> None:
        super().__init__(message)
        self.status = status


def project_id(value: Any) -> str:
    """Label Studio names a project ``"<id>.<created ts>"`` in /setup and /predict, or sends a dict or int."""
    if isinstance(value, dict):
        value = value.get("id")
    text = str(value if value is not None else "").split(".", 1)[0]
    if not text.isdigit():
        raise BadRequest(f"'project' must be a Label Studio project id like \"3.1700000000\", got {value!r}")
    return text


def create_app(settings: Settings, broker: Broker | None = None, store: ModelStore | None = None) -> Flask:
    app = Flask("weather-al")
    broker = broker or (Broker(settings.redis_url) if settings.redis_url else None)
    store = store or ModelStore(settings.model_dir, broker.conn if broker else None)
    predictor = Predictor(settings, store)
    registry = CollectorRegistry()
    requests_total = Counter("weather_al_requests_total", "HTTP requests", ["endpoint", "status"], registry=registry)
    latency = Histogram("weather_al_request_seconds", "HTTP request latency", ["endpoint"], registry=registry,
                        buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 100))
    registry.register(_StoreCollector(store))

    def json_body() -> dict[str, Any]:
        data = request.get_json(silent=True)
        if not isinstance(data, dict):
            raise BadRequest("the request body must be a JSON object")
        return data

    @app.before_request
    def _auth_and_clock() -> Response | None:
        g.start = time.perf_counter()
        if settings.basic_auth_enabled and request.path != "/health":
            auth = request.authorization
            ok = auth is not None and hmac.compare_digest(auth.username or "", settings.basic_auth_user or "") and \
                hmac.compare_digest(auth.password or "", settings.basic_auth_pass or "")
            if not ok:
                resp = jsonify({"error": "authentication required: use the BASIC_AUTH_USER/BASIC_AUTH_PASS set on the backend"})
                resp.status_code = 401
                resp.headers["WWW-Authenticate"] = 'Basic realm="weather-al"'
                return resp
        return None

    @app.after_request
    def _count(resp: Response) -> Response:
        endpoint = request.url_rule.rule if request.url_rule else "unknown"
        requests_total.labels(endpoint, str(resp.status_code)).inc()
        latency.labels(endpoint).observe(time.perf_counter() - g.get("start", time.perf_counter()))
        return resp

    @app.errorhandler(BadRequest)
    def _bad(exc: BadRequest):
        return jsonify({"error": str(exc)}), exc.status

    @app.errorhandler(HTTPException)
    def _http(exc: HTTPException):
        return jsonify({"error": f"{exc.name}: {exc.description}"}), exc.code

    @app.errorhandler(Exception)
    def _unexpected(exc: Exception):
        logger.exception("unexpected error on %s", request.path)
        return jsonify({"error": f"internal error ({type(exc).__name__}); see the backend log"}), 500

    @app.get("/")
    @app.get("/health")
    def health():
        redis_up = broker.ping() if broker else False
        return jsonify({"status": "UP", "model_class": "WeatherAL", "redis": "up" if redis_up else "down",
                        "queue": "ok" if redis_up else "training requests cannot be queued until Redis is back"})

    @app.post("/setup")
    def setup():
        data = json_body()
        pid = project_id(data.get("project"))
        if "schema" in data:
            _schema(data["schema"])
        return jsonify({"model_version": store.current_version(pid) or "untrained"})

    @app.post("/predict")
    def predict():
        data = json_body()
        tasks = data.get("tasks")
        if not isinstance(tasks, list) or not all(isinstance(t, dict) for t in tasks):
            raise BadRequest("'tasks' must be a list of task objects")
        pid = project_id(data.get("project") or (tasks[0].get("project") if tasks else None))
        schema = _schema(data["label_config"]) if data.get("label_config") else None
        params = data.get("params") or {}
        fetcher = predictor.fetcher(params.get("hostname") or data.get("hostname"), params.get("access_token") or data.get("access_token"))
        try:
            results, version = predictor.predict(pid, tasks, schema, fetcher)
        except SchemaMismatch as exc:
            raise BadRequest(str(exc), 409) from None
        return jsonify({"results": results, "model_version": version})

    @app.post("/webhook")
    def webhook():
        data = json_body()
        action = data.get("action")
        if not isinstance(action, str):
            raise BadRequest("'action' is missing")
        if action == BULK_ACCEPT_ACTION:
            return record_bulk_accept(data)
        if action not in TRAIN_ACTIONS | ANNOTATION_ACTIONS:
            return jsonify({"status": "ignored", "action": action, "message": f"action {action} does not affect training"})
        pid = project_id(data.get("project"))
        annotation = data.get("annotation")
        if action == "ANNOTATION_UPDATED" and isinstance(annotation, dict) and annotation.get("task") is not None:
            if release_edited_machine_label(store, pid, annotation):
                logger.info("project %s: a person saved the machine label of task %s; it is theirs now", pid, annotation["task"])
        if broker is None:
            raise BadRequest("no queue configured: set REDIS_URL or run `weather-al serve` (it embeds Redis)", 503)
        try:
            if action in TRAIN_ACTIONS:
                outcome = broker.request_training(pid, action)
            elif broker.count_annotation(pid, settings.train_every):
                outcome = broker.request_training(pid, f"{settings.train_every} annotation events")
            else:
                outcome = "counted"
        except QueueUnavailable as exc:
            logger.error("project %s: %s", pid, exc)
            raise BadRequest(f"training queue unavailable: {exc}; the event will be picked up by the next one once Redis is back", 503) from None
        return jsonify({"status": outcome, "action": action, "project": pid})

    def record_bulk_accept(data: dict[str, Any]):
        pid = project_id(data.get("project"))
        annotations = data.get("annotation")
        annotations = [annotations] if isinstance(annotations, dict) else annotations
        if not isinstance(annotations, list) or not all(isinstance(a, dict) and a.get("task") is not None for a in annotations):
            raise BadRequest(f"{BULK_ACCEPT_ACTION} needs 'annotation': a list of annotations, each with its 'task'")
        record = record_label_studio_accept(store, pid, annotations)
        if record is None:
            return jsonify({"status": "known", "action": BULK_ACCEPT_ACTION, "project": pid,
                            "message": "these tasks were already recorded as machine-labeled"})
        return jsonify({"status": "recorded", "action": BULK_ACCEPT_ACTION, "project": pid, "record": record["id"],
                        "machine_labeled": len(record["task_ids"])})

    @app.get("/versions")
    def versions():
        projects = [request.args["project"]] if request.args.get("project") else [p.name for p in store.root.iterdir() if p.is_dir() and p.name.isdigit()]
        detail = {pid: store.versions(project_id(pid)) for pid in projects}
        names = [v["version"] for vs in detail.values() for v in vs]
        return jsonify({"versions": names, "projects": detail})

    @app.get("/metrics")
    def metrics():
        return Response(generate_latest(registry), mimetype=CONTENT_TYPE_LATEST)

    return app


def _schema(xml: Any) -> LabelSchema:
    if not isinstance(xml, str):
        raise BadRequest("the label config must be an XML string")
    try:
        return LabelSchema.from_xml(xml)
    except SchemaError as exc:
        raise BadRequest(f"this backend cannot serve the project's label config: {exc}", 422) from None


class _StoreCollector:
    """Per-project counters kept by the worker in the model store, exported at scrape time."""

    def __init__(self, store: ModelStore) -> None:
        self.store = store

    def collect(self):
        runs = GaugeMetricFamily("weather_al_training_runs", "training runs finished", labels=["project", "result"])
        human = GaugeMetricFamily("weather_al_human_labeled", "tasks labeled by people", labels=["project"])
        machine = GaugeMetricFamily("weather_al_machine_labeled", "tasks labeled by bulk accept of certified predictions", labels=["project"])
        for d in self.store.root.iterdir():
            if not (d.is_dir() and d.name.isdigit()):
                continue
            state = self.store.state(d.name)
            for result, n in (state.get("runs") or {}).items():
                runs.add_metric([d.name, result], n)
            human.add_metric([d.name], state.get("human_labeled", 0))
            machine.add_metric([d.name], len(state.get("machine_task_ids", [])))
        yield runs
        yield human
        yield machine
