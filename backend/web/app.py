"""The web process: Label Studio's ML backend protocol on Flask 3.

``/setup`` and ``/health`` answer from memory and the model store (Label Studio waits 3 s and 1 s);
``/webhook`` only counts and enqueues (Label Studio waits 1 s, and without Redis on its side a slow
webhook slows every submit); training runs in ``weather-al worker``. Malformed requests get a 4xx with
a message, never a stack trace; bodies over MAX_REQUEST_BYTES and /predict calls over MAX_PREDICT_TASKS
get a 413 that says which limit to mind.

A webhook's body is a claim, not a fact: anyone who reaches the port may post one. What it says about
bulk accepts and edits changes which labels train, so the worker checks it against Label Studio first
(``backend/worker/webhook_checks.py``, queued by name: the web process never imports the Label Studio SDK).
"""

from __future__ import annotations

import hmac
import logging
import time
from typing import Any

import redis
from flask import Flask, Response, g, jsonify, request
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, Counter, Histogram, generate_latest
from prometheus_client.core import GaugeMetricFamily
from rq import Retry
from werkzeug.datastructures import Authorization
from werkzeug.exceptions import HTTPException, RequestEntityTooLarge

from backend.labelstudio.fetch import FetchError
from backend.queue import Broker, QueueUnavailable
from backend.settings import Settings, project_settings
from backend.store import MAX_PROJECT_ID_DIGITS, ModelStore, is_project_id
from backend.web.predictor import Predictor, SchemaMismatch
from backend.worker.progress import running_cycles
from model.schema import LabelSchema, SchemaError

logger = logging.getLogger(__name__)

TRAIN_ACTIONS = {"START_TRAINING"}
# Label Studio 1.23 reports a deletion as ANNOTATIONS_DELETED (plural), even of one annotation
ANNOTATION_ACTIONS = {"ANNOTATION_CREATED", "ANNOTATION_UPDATED", "ANNOTATIONS_DELETED"}
BULK_ACCEPT_ACTION = "ANNOTATIONS_CREATED"  # sent only by "Create Annotations From Predictions"
#: The worker's checks of a webhook's claims (backend/worker/webhook_checks.py)
CHECK_BULK_ACCEPT = "backend.worker.webhook_checks.check_bulk_accept"
CHECK_EDIT = "backend.worker.webhook_checks.check_edit"
#: Label Studio's object ids are positive 64-bit integers
MAX_OBJECT_ID = 2**63 - 1
NO_QUEUE = "no queue configured: set REDIS_URL or run `weather-al serve` (it embeds Redis)"


class BadRequest(Exception):
    def __init__(self, message: str, status: int = 400) -> None:
        super().__init__(message)
        self.status = status


def project_id(value: Any) -> str:
    """Label Studio names a project ``"<id>.<created ts>"`` in /setup and /predict, or sends a dict or int.

    Only ASCII digits of bounded length pass (``str.isdigit`` takes "²" and "٣٣", and a 5,000-digit id is
    a path name the OS refuses), without leading zeros, so that each project has exactly one folder.
    """
    if isinstance(value, dict):
        value = value.get("id")
    if isinstance(value, int) and not isinstance(value, bool):
        value = str(value)
    text = value.split(".", 1)[0] if isinstance(value, str) else ""
    if not is_project_id(text):
        raise BadRequest(
            f"'project' must be a Label Studio project id like \"3.1700000000\" (at most "
            f"{MAX_PROJECT_ID_DIGITS} digits), got {_shown(value)}"
        )
    return str(int(text))


def object_id(value: Any, what: str) -> int:
    """A Label Studio task or annotation id: a positive integer (a task may come as ``{"id": ...}``)."""
    if isinstance(value, dict):
        value = value.get("id")
    if isinstance(value, bool) or not isinstance(value, int) or not 0 < value <= MAX_OBJECT_ID:
        raise BadRequest(f"{what} must be a positive integer id, got {_shown(value)}")
    return value


def _shown(value: Any) -> str:
    """A value for a message, cut short: it came from the request and may be megabytes long."""
    text = repr(value)
    return text if len(text) <= 60 else text[:60] + "..."


def credentials_match(auth: Authorization | None, user: str, password: str) -> bool:
    """Constant-time comparison of basic-auth credentials, as UTF-8 bytes.

    ``hmac.compare_digest`` raises TypeError on a str with non-ASCII characters, which a caller could send.
    Both parts are always compared, so the time taken does not say whether the user name was right.
    """
    if auth is None or auth.type != "basic":
        return False
    user_ok = hmac.compare_digest((auth.username or "").encode(), user.encode())
    password_ok = hmac.compare_digest((auth.password or "").encode(), password.encode())
    return user_ok and password_ok


def create_app(settings: Settings, broker: Broker | None = None, store: ModelStore | None = None) -> Flask:
    settings.check_basic_auth()  # a Settings changed with model_copy(update=...) skipped its validators: no half pair
    app = Flask("weather-al")
    app.config["MAX_CONTENT_LENGTH"] = settings.max_request_bytes
    broker = broker or (Broker(settings.redis_url) if settings.redis_url else None)
    store = store or ModelStore(settings.model_dir, broker.conn if broker else None)
    predictor = Predictor(settings, store)
    registry = CollectorRegistry()
    requests_total = Counter("weather_al_requests_total", "HTTP requests", ["endpoint", "status"], registry=registry)
    latency = Histogram(
        "weather_al_request_seconds",
        "HTTP request latency",
        ["endpoint"],
        registry=registry,
        buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 100),
    )
    registry.register(_StoreCollector(store))
    if broker is not None:
        registry.register(_ProgressCollector(broker))

    def json_body() -> dict[str, Any]:
        try:
            data = request.get_json(silent=True)
        except RecursionError:
            raise BadRequest(
                "the request body is JSON nested too deeply to read; Label Studio sends flat objects"
            ) from None
        if not isinstance(data, dict):
            raise BadRequest("the request body must be a JSON object")
        return data

    def queued_check(func: str, *args: Any) -> None:
        """Queue a check of a webhook's claims ahead of any waiting training run, which would otherwise read
        the annotations before the check says which are machine labels. Retried for about an hour if Label
        Studio is away."""
        if broker is None:
            raise BadRequest(NO_QUEUE, 503)
        try:
            broker.queue.enqueue(
                func,
                *args,
                at_front=True,
                job_timeout=600,
                result_ttl=86400,
                failure_ttl=7 * 86400,
                retry=Retry(max=5, interval=[10, 60, 300, 900, 3600]),
            )
        except redis.RedisError as exc:
            logger.error("cannot queue %s: %s: %s", func, type(exc).__name__, exc)
            raise BadRequest(
                "training queue unavailable (cannot reach Redis); Label Studio's next event is "
                "checked once Redis is back",
                503,
            ) from None

    @app.before_request
    def _auth_and_clock() -> Response | None:
        g.start = time.perf_counter()
        if (
            settings.basic_auth_enabled
            and request.path != "/health"
            and not credentials_match(
                request.authorization, settings.basic_auth_user or "", settings.basic_auth_pass or ""
            )
        ):
            resp = jsonify(
                {"error": "authentication required: use the BASIC_AUTH_USER/BASIC_AUTH_PASS set on the backend"}
            )
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

    @app.errorhandler(RequestEntityTooLarge)
    def _too_large(exc: RequestEntityTooLarge):
        return jsonify(
            {
                "error": f"the request body is over MAX_REQUEST_BYTES ({settings.max_request_bytes} bytes): "
                "select fewer tasks per request, or raise MAX_REQUEST_BYTES on the backend"
            }
        ), 413

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
        return jsonify(
            {
                "status": "UP",
                "model_class": "WeatherAL",
                "redis": "up" if redis_up else "down",
                "queue": "ok" if redis_up else "training requests cannot be queued until Redis is back",
            }
        )

    @app.post("/setup")
    def setup():
        data = json_body()
        pid = project_id(data.get("project"))
        if "schema" in data:
            _schema(data["schema"])
        try:
            extra = project_settings(data.get("extra_params"))
        except ValueError as exc:
            raise BadRequest(f"{exc} (Settings > Model > Edit > Extra params)", 422) from None
        if extra != (
            store.state(pid).get("extra_params") or {}
        ):  # Label Studio calls /setup before every predict batch
            store.update_state(pid, extra_params=extra)
            logger.info("project %s: Extra params now %s", pid, extra or "none (the backend's settings)")
        return jsonify({"model_version": store.current_version(pid) or "untrained"})

    @app.post("/predict")
    def predict():
        data = json_body()
        tasks = _tasks(data.get("tasks"), settings.max_predict_tasks)
        pid = project_id(data.get("project") or (tasks[0].get("project") if tasks else None))
        schema = _schema(data["label_config"]) if data.get("label_config") else None
        params = data.get("params") or {}
        if not isinstance(params, dict):
            raise BadRequest(f"'params' must be an object, got {_shown(params)}")
        try:
            fetcher = predictor.fetcher(_text(params, data, "hostname"), _text(params, data, "access_token"))
        except FetchError as exc:
            raise BadRequest(f"cannot download this request's images: {exc}") from None
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
            raise BadRequest("'action' is missing or not a string")
        if action == BULK_ACCEPT_ACTION:
            return bulk_accept(data)
        if action not in TRAIN_ACTIONS | ANNOTATION_ACTIONS:
            return jsonify(
                {"status": "ignored", "action": action, "message": f"action {action} does not affect training"}
            )
        pid = project_id(data.get("project"))
        edit = _edit_claim(action, data.get("annotation"))
        if broker is None:
            raise BadRequest(NO_QUEUE, 503)
        state = store.state(pid)  # one read: Label Studio waits 1 s for a webhook
        if edit is not None and edit[0] in state.get("machine_task_ids", []):
            queued_check(CHECK_EDIT, int(pid), *edit)
            logger.info(
                "project %s: task %s is machine-labeled and was saved; the worker checks who saved it", pid, edit[0]
            )
        try:
            if action in TRAIN_ACTIONS:
                outcome = broker.request_training(pid, action)
            elif broker.count_annotation(pid, every := settings.for_project(state.get("extra_params")).train_every):
                outcome = broker.request_training(pid, f"{every} annotation events")
            else:
                outcome = "counted"
        except QueueUnavailable as exc:
            logger.error("project %s: %s", pid, exc)
            raise BadRequest(
                f"training queue unavailable: {exc}; the event will be picked up by the next one once Redis is back",
                503,
            ) from None
        return jsonify({"status": outcome, "action": action, "project": pid})

    def bulk_accept(data: dict[str, Any]):
        """Label Studio's "Create Annotations From Predictions": the worker records what Label Studio confirms."""
        pid = project_id(data.get("project"))
        annotations = data.get("annotation")
        annotations = [annotations] if isinstance(annotations, dict) else annotations
        if not isinstance(annotations, list) or not all(isinstance(a, dict) for a in annotations):
            raise BadRequest(f"{BULK_ACCEPT_ACTION} needs 'annotation': a list of annotations, each with its 'task'")
        tasks = [object_id(a.get("task"), "each annotation's 'task'") for a in annotations]
        converted = {t for t, a in zip(tasks, annotations) if a.get("parent_prediction") is not None}
        claimed = sorted(converted - set(store.state(pid).get("machine_task_ids", [])))
        if not claimed:
            return jsonify(
                {
                    "status": "known",
                    "action": BULK_ACCEPT_ACTION,
                    "project": pid,
                    "message": "these tasks were already recorded as machine-labeled",
                }
            )
        queued_check(CHECK_BULK_ACCEPT, int(pid), claimed)
        return jsonify(
            {
                "status": "checking",
                "action": BULK_ACCEPT_ACTION,
                "project": pid,
                "tasks": len(claimed),
                "message": "the worker records these tasks as machine-labeled once Label Studio confirms them",
            }
        ), 202

    @app.get("/versions")
    def versions():
        if request.args.get("project"):
            projects = [project_id(request.args["project"])]
        else:
            projects = [p.name for p in store.root.iterdir() if p.is_dir() and is_project_id(p.name)]
        # a project without a folder has no versions: a GET creates no folder
        detail = {pid: store.versions(pid) if (store.root / pid).is_dir() else [] for pid in projects}
        names = [v["version"] for vs in detail.values() for v in vs]
        return jsonify({"versions": names, "projects": detail})

    @app.get("/metrics")
    def metrics():
        return Response(generate_latest(registry), mimetype=CONTENT_TYPE_LATEST)

    return app


def _tasks(value: Any, limit: int) -> list[dict[str, Any]]:
    """/predict's tasks: at most ``limit`` objects, each with its integer id and, if any, an object as ``data``."""
    if not isinstance(value, list) or not all(isinstance(t, dict) for t in value):
        raise BadRequest("'tasks' must be a list of task objects")
    if len(value) > limit:
        raise BadRequest(
            f"{len(value)} tasks in one /predict, over MAX_PREDICT_TASKS ({limit}): select fewer tasks, "
            "or raise MAX_PREDICT_TASKS on the backend",
            413,
        )
    for task in value:
        object_id(task.get("id"), "each task's 'id'")
        if task.get("data") is not None and not isinstance(task["data"], dict):
            raise BadRequest(
                f'task {task["id"]}: \'data\' must be an object like {{"image": "..."}}, got {_shown(task["data"])}'
            )
    return value


def _text(params: dict[str, Any], data: dict[str, Any], key: str) -> str | None:
    """A string setting sent in ``params`` or at the top level of /predict's body (Label Studio versions differ)."""
    value = params.get(key) or data.get(key)
    if value is not None and not isinstance(value, str):
        raise BadRequest(f"'{key}' must be a string, got {_shown(value)}")
    return value


def _edit_claim(action: str, annotation: Any) -> tuple[int, int] | None:
    """(task, annotation id) when the webhook says an annotation was saved, for the worker to check; validates
    ``annotation`` for every annotation action."""
    if annotation is not None and not isinstance(annotation, (dict, list)):
        raise BadRequest(f"'annotation' must be an object, got {_shown(annotation)}")
    if action != "ANNOTATION_UPDATED" or not isinstance(annotation, dict) or annotation.get("task") is None:
        return None
    return object_id(annotation["task"], "'annotation.task'"), object_id(annotation.get("id"), "'annotation.id'")


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
        machine = GaugeMetricFamily(
            "weather_al_machine_labeled", "tasks labeled by bulk accept of certified predictions", labels=["project"]
        )
        for d in self.store.root.iterdir():
            if not (d.is_dir() and is_project_id(d.name)):
                continue
            state = self.store.state(d.name)
            for result, n in (state.get("runs") or {}).items():
                runs.add_metric([d.name, result], n)
            human.add_metric([d.name], state.get("human_labeled", 0))
            machine.add_metric([d.name], len(state.get("machine_task_ids", [])))
        yield runs
        yield human
        yield machine


class _ProgressCollector:
    """The running training cycle of each project: its phase, how far it has got, and since when.

    Read from Redis at scrape time (the worker writes it, backend/worker/progress.py); a project that is not
    training has no series. Redis being away costs these series, never the scrape.
    """

    def __init__(self, broker: Broker) -> None:
        self.broker = broker

    def collect(self):
        labels = ["project", "phase", "job", "version"]
        done = GaugeMetricFamily(
            "weather_al_cycle_phase_done",
            "epochs trained or images done in the running cycle's phase",
            labels=labels,
        )
        total = GaugeMetricFamily(
            "weather_al_cycle_phase_total", "the running cycle's epochs or images planned in its phase", labels=labels
        )
        started = GaugeMetricFamily(
            "weather_al_cycle_phase_started_timestamp_seconds", "when the running cycle's phase started", labels=labels
        )
        try:
            cycles = running_cycles(self.broker)
        except redis.RedisError as exc:
            logger.warning("/metrics: cannot read the running cycles' progress from Redis: %s", exc)
            cycles = []
        for p in cycles:
            values = [p.project, p.phase, p.job, p.version]
            done.add_metric(values, p.done)
            total.add_metric(values, p.total)
            started.add_metric(values, p.started)
        yield done
        yield total
        yield started
