"""A small in-process fake of the Label Studio HTTP API the backend calls, with faults to order.

It answers the real label-studio-sdk client (so the SDK's own retries and exception types are part of what a
test sees) for: reading and updating a project, listing tasks with annotations and predictions, importing
predictions, the ``predictions_to_annotations`` action, Data Manager views, and deleting annotations. Shapes
follow Label Studio 1.23.2 (see shared/docs/label-studio.md): an annotation converted from a prediction
carries ``parent_prediction`` = the prediction's id.

A fault is queued per route and consumed by the next request to it:
- ``"drop"``: close the connection without answering, nothing stored (Label Studio went away);
- ``"commit-drop"``: store the change, then close without answering (the answer was lost);
- ``"commit-500"`` / ``"commit-400"``: store the change, then answer that status;
- an int (``500``, ``429``, ``400``): answer that status, nothing stored;
- ``"ok"``: serve the request normally (to fault a later one).
"""

from __future__ import annotations

import json
import threading
from collections import defaultdict, deque
from collections.abc import Iterator
from datetime import datetime, timedelta, timezone
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qs, urlsplit

Fault = str | int


class FakeLabelStudio:
    """One project (``project_id``) whose tasks, predictions, annotations and views live in memory.

    ``clock_skew`` shifts the ``created_at`` it stamps on annotations, as a server whose clock differs from
    the worker's would. ``requests`` lists every (method, route) served, for counting tries.
    """

    def __init__(self, project_id: int = 1, clock_skew: timedelta = timedelta(0)) -> None:
        self.project_id = project_id
        self.clock_skew = clock_skew
        self.tasks: dict[int, dict[str, Any]] = {}
        self.views: dict[int, dict[str, Any]] = {}
        self.project: dict[str, Any] = {
            "id": project_id,
            "title": "fake",
            "label_config": "<View/>",
            "model_version": "",
        }
        self.faults: dict[str, deque[Fault]] = defaultdict(deque)
        self.requests: list[tuple[str, str]] = []
        self.convert_budget: int | None = None  # convert at most this many more tasks; past it, answer 500
        self._ids = iter(range(1000, 10**9))
        self._lock = threading.Lock()
        self.server = ThreadingHTTPServer(("127.0.0.1", 0), self._handler())
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        threading.Thread(target=self.server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True).start()

    # state, for tests to arrange and inspect ----------------------------------------------------
    def add_task(self, task_id: int) -> dict[str, Any]:
        self.tasks[task_id] = {
            "id": task_id,
            "data": {"image": f"/data/upload/{task_id}.jpg"},
            "annotations": [],
            "predictions": [],
            "project": self.project_id,
        }
        return self.tasks[task_id]

    def add_prediction(self, task_id: int, version: str) -> dict[str, Any]:
        pred = {
            "id": next(self._ids),
            "task": task_id,
            "model_version": version,
            "score": 0.9,
            "result": [
                {"from_name": "weather", "to_name": "image", "type": "choices", "value": {"choices": ["clear"]}}
            ],
        }
        self.tasks[task_id]["predictions"].append(pred)
        return pred

    def add_annotation(
        self, task_id: int, parent_prediction: int | None = None, updated_by: int | None = None
    ) -> dict[str, Any]:
        created = (datetime.now(timezone.utc) + self.clock_skew).isoformat().replace("+00:00", "Z")
        ann = {
            "id": next(self._ids),
            "task": task_id,
            "parent_prediction": parent_prediction,
            "updated_by": updated_by,
            "completed_by": 1,
            "created_at": created,
            "result": [],
        }
        self.tasks[task_id]["annotations"].append(ann)
        return ann

    def annotation_ids(self, task_id: int) -> list[int]:
        return [a["id"] for a in self.tasks[task_id]["annotations"]]

    def count(self, method: str, route: str) -> int:
        return sum(1 for m, r in self.requests if m == method and r == route)

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()

    # the API --------------------------------------------------------------------------------------
    def _route(self, method: str, path: str, query: dict[str, str], body: Any) -> tuple[str, Any]:
        """(route name, the change to commit: a callable returning the answer's body)."""
        parts = [p for p in path.split("/") if p]
        if parts[:2] == ["api", "tasks"] and method == "GET":
            return "tasks", lambda: self._page(int(query.get("page", "1")), int(query.get("page_size", "100")))
        if parts[:2] == ["api", "projects"] and len(parts) == 3:
            if method == "PATCH":
                return "project", lambda: self.project.update(body) or self.project
            return "project", lambda: self.project
        if parts[:2] == ["api", "projects"] and parts[3:] == ["import", "predictions"]:
            return "import", lambda: self._import(body)
        if parts[:3] == ["api", "dm", "actions"] and query.get("id") == "predictions_to_annotations":
            return "convert", lambda: self._convert(body["selectedItems"]["included"], body["model_version"])
        if parts[:3] == ["api", "dm", "views"]:
            if method == "GET":
                return "views", lambda: list(self.views.values())
            if method == "POST":
                return "create-view", lambda: self._create_view(body)
            return "update-view", lambda: self.views[int(parts[3])].update(body) or self.views[int(parts[3])]
        if parts[:2] == ["api", "annotations"] and method == "DELETE":
            return "delete", lambda: self._delete(int(parts[2]))
        raise KeyError(f"{method} {path}")

    def _page(self, page: int, size: int) -> dict[str, Any]:
        tasks = sorted(self.tasks.values(), key=lambda t: t["id"])
        chunk = tasks[(page - 1) * size : page * size]
        return {
            "tasks": json.loads(json.dumps(chunk)),
            "total": len(tasks),
            "total_annotations": 0,
            "total_predictions": 0,
        }

    def _import(self, items: list[dict[str, Any]]) -> dict[str, Any]:
        for item in items:
            pred = self.add_prediction(int(item["task"]), item["model_version"])
            pred.update({k: v for k, v in item.items() if k not in ("task", "model_version")})
        return {"created": len(items)}

    def _convert(self, task_ids: list[int], version: str) -> dict[str, Any]:
        todo = task_ids if self.convert_budget is None else task_ids[: self.convert_budget]
        if self.convert_budget is not None:
            self.convert_budget -= len(todo)
        for tid in todo:
            for pred in self.tasks[tid]["predictions"]:
                if pred["model_version"] == version:
                    self.add_annotation(tid, parent_prediction=pred["id"])
        if len(todo) < len(task_ids):
            raise PartialCommit
        return {}

    def _create_view(self, body: dict[str, Any]) -> dict[str, Any]:
        vid = next(self._ids)
        self.views[vid] = {"id": vid, "project": body.get("project"), "data": body["data"]}
        return self.views[vid]

    def _delete(self, aid: int) -> None:
        for task in self.tasks.values():
            if any(a["id"] == aid for a in task["annotations"]):
                task["annotations"] = [a for a in task["annotations"] if a["id"] != aid]
                return None
        raise LookupError(aid)

    def _handler(self) -> type[BaseHTTPRequestHandler]:
        fake = self

        class Handler(BaseHTTPRequestHandler):
            def _serve(self) -> None:
                split = urlsplit(self.path)
                query = {k: v[0] for k, v in parse_qs(split.query).items()}
                raw = self.rfile.read(int(self.headers.get("Content-Length") or 0))
                body = json.loads(raw) if raw else None
                route, commit = fake._route(self.command, split.path, query, body)
                with fake._lock:
                    fake.requests.append((self.command, route))
                    fault = fake.faults[route].popleft() if fake.faults[route] else "ok"
                    fault = None if fault == "ok" else fault
                    if fault in ("drop", 500, 429, 400):
                        return self._fail(fault)
                    try:
                        answer = commit()
                    except LookupError:
                        return self._answer(404, {"detail": "Not found."})
                    except PartialCommit:
                        return self._answer(500, {"detail": "converted part of the selection"})
                if fault is not None:
                    return self._fail("drop" if fault == "commit-drop" else int(str(fault).split("-")[1]))
                self._answer(204 if answer is None else 200, answer)

            def _fail(self, fault: Fault) -> None:
                if fault == "drop":
                    self.close_connection = True
                    return
                self._answer(int(fault), {"detail": f"fault {fault}"})

            def _answer(self, status: int, body: Any) -> None:
                data = b"" if status == 204 else json.dumps(body).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            do_GET = do_POST = do_PATCH = do_DELETE = _serve

            def log_message(self, *args: Any) -> None:
                pass

        return Handler


class PartialCommit(Exception):
    """The fake converted only what ``convert_budget`` allowed of a selection and answers 500."""


def serve(project_id: int = 1, clock_skew: timedelta = timedelta(0)) -> Iterator[FakeLabelStudio]:
    """For a pytest fixture: a running fake, closed afterwards."""
    fake = FakeLabelStudio(project_id, clock_skew)
    try:
        yield fake
    finally:
        fake.close()
