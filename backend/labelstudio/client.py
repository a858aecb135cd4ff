"""Every call the backend makes to Label Studio, through label-studio-sdk, in one place.

Facts this relies on (measured on Label Studio 1.23.2 with SDK 2.1.2, see shared/docs/label-studio.md):
the Data Manager's score and "Uncertainty sampling" only see predictions whose ``model_version``
equals ``project.model_version``, so after importing a version's predictions we set it; bulk
``predictions_to_annotations`` creates annotations without triggering training.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterable
from functools import partial
from typing import Any, TypeVar, cast

import httpx
from label_studio_sdk import LabelStudio
from label_studio_sdk.core.api_error import ApiError
from label_studio_sdk.core.request_options import RequestOptions

logger = logging.getLogger(__name__)

T = TypeVar("T")
X = TypeVar("X")
QUEUE_VIEW = "Active learning queue"
CANDIDATES_VIEW = "Auto-annotation candidates"
AUDIT_VIEW = "Audit sample"
PROBES_VIEW = "Random probes"
UNCERTAINTY = "Uncertainty sampling"
UNIFORM = "Uniform sampling"

_INTERNAL_COLUMNS = [
    "tasks:inner_id",
    "tasks:annotations_results",
    "tasks:annotations_ids",
    "tasks:predictions_model_versions",
    "tasks:file_upload",
    "tasks:storage_filename",
    "tasks:created_at",
    "tasks:updated_at",
    "tasks:updated_by",
    "tasks:avg_lead_time",
    "tasks:draft_exists",
]
#: Columns hidden in the backend's tabs when it creates them: Label Studio's defaults for its own
#: "Default" tab (1.23.2), except that the prediction score stays visible, since the ranking is what
#: these tabs are about. A tab created through the API without this shows every column, and the
#: score and the images end up off-screen.
HIDDEN_COLUMNS: dict[str, list[str]] = {
    "explore": [*_INTERNAL_COLUMNS, "tasks:predictions_results"],
    "labeling": [
        "tasks:id",
        "tasks:completed_at",
        "tasks:cancelled_annotations",
        "tasks:total_predictions",
        "tasks:annotators",
        "tasks:predictions_results",
        *_INTERNAL_COLUMNS,
    ],
}


class LabelStudioError(RuntimeError):
    """Label Studio could not be reached or refused a call, after retries."""


#: Tries per call, and the wait before the second (doubled each time: 1, 2, 4, 8 s).
ATTEMPTS = 5
FIRST_WAIT_S = 1.0


def is_transient(exc: BaseException) -> bool:
    """Whether ``exc`` may pass by itself: a transport error (connection refused or dropped, a timeout) or
    HTTP 5xx/429. A 4xx is an answer (a bad id, a bad token) and any other exception is a bug: both would
    fail the same way again."""
    if isinstance(exc, httpx.TransportError):
        return True
    status = exc.status_code if isinstance(exc, ApiError) else None
    return status is not None and (status == 429 or status >= 500)


def describe(exc: BaseException) -> str:
    """An error in a line: the status and body of an HTTP error (not its headers), else type and message."""
    if isinstance(exc, ApiError):
        return f"HTTP {exc.status_code}: {exc.body}"
    return f"{type(exc).__name__}: {exc}"


def retry(call: Callable[[], T], what: str) -> T:
    """Run ``call`` up to ATTEMPTS times with exponential backoff: Label Studio restarting should not fail a run.

    Only transient errors (``is_transient``) are tried again; a 4xx becomes a LabelStudioError at once and
    anything else propagates unchanged. ``call`` must be safe to repeat: a read, a PATCH or a DELETE is; a
    POST only once made so (``resumable``). The SDK has retries of its own (two by default, on connection
    errors and 5xx/408/409/429); the client ``LabelStudioProject`` builds turns them off, so that one call
    costs at most ATTEMPTS tries (a try being a request, or one paged listing), not ATTEMPTS x 3, and waits
    at most 1 + 2 + 4 + 8 s between them. A client built elsewhere with the SDK's default stacks its own.
    """
    wait = FIRST_WAIT_S
    for attempt in range(1, ATTEMPTS + 1):
        try:
            return call()
        except Exception as exc:  # sorted below: only a transient error is tried again
            if not is_transient(exc):
                if isinstance(exc, ApiError):
                    raise LabelStudioError(f"Label Studio refused to {what}: {describe(exc)}") from exc
                raise
            if attempt == ATTEMPTS:
                raise LabelStudioError(
                    f"could not {what} after {ATTEMPTS} attempts: {describe(exc)}; "
                    "is Label Studio up and healthy at LABEL_STUDIO_URL?"
                ) from exc
            logger.warning("could not %s (%s); retrying in %.0f s", what, describe(exc), wait)
            time.sleep(wait)
            wait *= 2
    raise AssertionError("unreachable")


def resumable(
    send: Callable[[list[X]], Any], items: list[X], pending: Callable[[list[X]], list[X]]
) -> Callable[[], None]:
    """Make a non-idempotent POST over ``items`` safe for ``retry``.

    The first try sends every item. A try that failed may still have committed on the server (the answer was
    lost, or a 5xx came after the write), so every later try first asks Label Studio which items are still
    ``pending`` and sends only those; nothing is created twice.
    """
    sent = False

    def attempt() -> None:
        nonlocal sent
        todo = pending(items) if sent else items
        sent = True
        if todo:
            send(todo)

    return attempt


def as_dict(obj: Any) -> Any:
    """SDK models to plain dicts (the SDK returns pydantic models, some nested)."""
    if hasattr(obj, "model_dump"):
        return obj.model_dump(mode="json")
    if isinstance(obj, list):
        return [as_dict(o) for o in obj]
    return obj


def from_version(task: dict[str, Any], version: str) -> list[dict[str, Any]]:
    """``task``'s annotations made from one of its predictions of ``version``.

    Label Studio sets an annotation's ``parent_prediction`` to the id of the prediction it was converted
    from; a task listed with ``fields="all"`` carries its predictions as dicts with ``id`` and
    ``model_version``. A prediction given as a bare id says nothing of its version and matches nothing.
    """
    parents = {
        p["id"]
        for p in task.get("predictions") or []
        if isinstance(p, dict) and p.get("model_version") == version and p.get("id") is not None
    }
    return [a for a in (as_dict(a) for a in task.get("annotations") or []) if a.get("parent_prediction") in parents]


class LabelStudioProject:
    """One Label Studio project seen through the SDK; every call goes through ``retry``."""

    def __init__(self, url: str, api_key: str, project_id: int) -> None:
        if not api_key:
            raise LabelStudioError(
                "LABEL_STUDIO_API_KEY is not set; the worker needs a token to read annotations "
                "(Account & Settings > Access Token)"
            )
        self.url = url.rstrip("/")
        # max_retries=0: ``retry`` is the one retry policy, so a call's requests stay bounded (see there)
        self.client = LabelStudio(base_url=self.url, api_key=api_key, timeout=60, max_retries=0)
        self.id = int(project_id)

    def download_token(self) -> str:
        """The token to download task images with: the legacy token, or a fresh JWT access token for a PAT.

        The SDK keeps the refreshed access token privately; this is the only place that reaches for it.
        """
        header = self.client._client_wrapper.get_headers()["Authorization"]
        return header.split(" ", 1)[1]

    def project(self) -> dict[str, Any]:
        return as_dict(retry(lambda: self.client.projects.get(id=self.id), f"read project {self.id}"))

    def label_config(self) -> str:
        return self.project()["label_config"]

    def tasks(self) -> list[dict[str, Any]]:
        """Every task with its annotations and predictions (as plain dicts)."""
        return retry(self._list_tasks, f"list the tasks of project {self.id}")

    def _list_tasks(self) -> list[dict[str, Any]]:
        """One try at listing every task; a failure on any page fails the whole listing."""
        # the SDK types its pager's items as Never
        pages: Iterable[Any] = self.client.tasks.list(project=self.id, fields="all", page_size=500)
        return [as_dict(t) for t in pages]

    def annotations(self, task_id: int) -> list[dict[str, Any]]:
        """The annotations Label Studio holds on ``task_id`` if the task belongs to this project; else none."""
        try:
            found = as_dict(
                retry(lambda: self.client.annotations.list(id=task_id), f"read the annotations of task {task_id}")
            )
        except LabelStudioError as exc:
            if getattr(exc.__cause__, "status_code", None) != 404:
                raise
            found = []
        return [a for a in found if a.get("project") == self.id and a.get("task") == task_id]

    def import_predictions(self, predictions: list[dict[str, Any]], batch: int = 500) -> None:
        """Import predictions (each with ``task`` and ``model_version``) in batches, never one twice.

        A retried batch first drops the predictions whose task already holds one of that model version,
        which is how an import whose answer was lost shows up.
        """
        if any(not p.get("model_version") for p in predictions):
            raise ValueError(
                "every prediction to import needs its model_version, "
                "so that a retried import can tell which are already there"
            )
        for start in range(0, len(predictions), batch):
            chunk = predictions[start : start + batch]
            send = resumable(
                # the SDK types the request as its PredictionRequest models; it sends plain dicts as they are
                lambda todo: self.client.projects.import_predictions(id=self.id, request=cast(Any, todo)),
                chunk,
                self._not_imported,
            )
            retry(send, f"import {len(chunk)} predictions")

    def _not_imported(self, predictions: list[dict[str, Any]]) -> list[dict[str, Any]]:
        """The ``predictions`` whose task holds none of their model version yet (one try at listing)."""
        held = {
            (int(t["id"]), p.get("model_version"))
            for t in self._list_tasks()
            for p in t.get("predictions") or []
            if isinstance(p, dict)
        }
        return [p for p in predictions if (int(p["task"]), p["model_version"]) not in held]

    def use_version(self, version: str, sampling: str = UNCERTAINTY) -> None:
        retry(
            lambda: self.client.projects.update(id=self.id, model_version=version, sampling=sampling),
            f"set model version {version}",
        )

    def set_sampling(self, sampling: str) -> None:
        retry(lambda: self.client.projects.update(id=self.id, sampling=sampling), f"set sampling to {sampling}")

    def ensure_view(self, title: str, ordering: list[str], filters: dict[str, Any] | None = None) -> int:
        """Create or update the Data Manager tab ``title``; returns its id.

        Only the title, ordering and filters are ours: an update keeps what people set in the tab
        (columns, widths), which Label Studio would otherwise drop since it replaces ``data`` whole.
        Each try lists the tabs again, so a create whose answer was lost becomes an update, not a twin.
        """
        data: dict[str, Any] = {"title": title, "ordering": ordering}
        data["filters"] = filters or {"conjunction": "and", "items": []}
        return retry(lambda: self._put_view(data), f"create or update view {title!r}")

    def _put_view(self, data: dict[str, Any]) -> int:
        for v in self.client.views.list(project=self.id):
            vd = as_dict(v)
            if (vd.get("data") or {}).get("title") == data["title"]:
                self.client.views.update(id=str(vd["id"]), data={**vd["data"], **data}, project=self.id)
                return int(vd["id"])
        created = self.client.views.create(project=self.id, data={"hiddenColumns": HIDDEN_COLUMNS, **data})
        return int(as_dict(created)["id"])

    def accept_predictions(self, task_ids: Iterable[int], version: str) -> None:
        """Turn the given tasks' predictions of ``version`` into annotations (Label Studio's bulk action).

        A retry converts only the tasks that hold no annotation from that version's prediction yet, so a
        conversion whose answer was lost does not stack a second machine annotation on a task.
        """
        ids = list(task_ids)
        if not ids:
            return

        def convert(todo: list[int]) -> None:
            self.client.actions.create(
                id="predictions_to_annotations",
                project=self.id,
                selected_items={"all": False, "included": todo},
                request_options=RequestOptions(additional_body_parameters={"model_version": version}),
            )

        def unconverted(todo: list[int]) -> list[int]:
            done = {int(t["id"]) for t in self._list_tasks() if from_version(t, version)}
            return [t for t in todo if t not in done]

        retry(resumable(convert, ids, unconverted), f"convert {len(ids)} predictions to annotations")

    def delete_annotations(self, annotation_ids: Iterable[int]) -> list[int]:
        """Delete annotations; returns the ids gone afterwards (deleted now, or already: a 404).

        One that cannot be deleted is logged and left out of the result, and the others are still tried,
        so that a caller un-marks exactly what is gone.
        """
        gone = []
        for aid in annotation_ids:
            try:
                retry(partial(self._delete_annotation, aid), f"delete annotation {aid}")
            except LabelStudioError as exc:
                logger.error("%s", exc)
                continue
            gone.append(aid)
        return gone

    def _delete_annotation(self, aid: int) -> None:
        try:
            self.client.annotations.delete(id=aid)
        except ApiError as exc:
            if exc.status_code != 404:  # a retried DELETE whose first try went through
                raise


def range_filter(column: str, low: float, high: float) -> dict[str, Any]:
    """Tasks whose Number ``column`` (e.g. ``predictions_score``, ``id``) lies in [low, high]."""
    return {"filter": f"filter:tasks:{column}", "operator": "in", "type": "Number", "value": {"min": low, "max": high}}


def unlabeled_filter() -> dict[str, Any]:
    return {"filter": "filter:tasks:total_annotations", "operator": "equal", "type": "Number", "value": 0}


def task_id_filters(ids: Iterable[int], operator: str) -> list[dict[str, Any]]:
    """One filter item per task id; Label Studio's filters have no "id in list" operator."""
    return [{"filter": "filter:tasks:id", "operator": operator, "type": "Number", "value": int(i)} for i in ids]
