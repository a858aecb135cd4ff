"""Every call the backend makes to Label Studio, through label-studio-sdk, in one place.

Facts this relies on (measured on Label Studio 1.23.2 with SDK 2.1.2, see shared/docs/label-studio.md):
the Data Manager's score and "Uncertainty sampling" only see predictions whose ``model_version``
equals ``project.model_version``, so after importing a version's predictions we set it; bulk
``predictions_to_annotations`` creates annotations without triggering training.
"""

from __future__ import annotations

import logging
import time
from typing import Any, Callable, Iterable, TypeVar

from label_studio_sdk import LabelStudio
from label_studio_sdk.core.request_options import RequestOptions

logger = logging.getLogger(__name__)

T = TypeVar("T")
QUEUE_VIEW = "Active learning queue"
CANDIDATES_VIEW = "Auto-annotation candidates"
AUDIT_VIEW = "Audit sample"
UNCERTAINTY = "Uncertainty sampling"
UNIFORM = "Uniform sampling"

_INTERNAL_COLUMNS = ["tasks:inner_id", "tasks:annotations_results", "tasks:annotations_ids", "tasks:predictions_model_versions",
                     "tasks:file_upload", "tasks:storage_filename", "tasks:created_at", "tasks:updated_at", "tasks:updated_by",
                     "tasks:avg_lead_time", "tasks:draft_exists"]
#: Columns hidden in the backend's tabs when it creates them: Label Studio's defaults for its own
#: "Default" tab (1.23.2), except that the prediction score stays visible, since the ranking is what
#: these tabs are about. A tab created through the API without this shows every column, and the
#: score and the images end up off-screen.
HIDDEN_COLUMNS: dict[str, list[str]] = {
    "explore": [*_INTERNAL_COLUMNS, "tasks:predictions_results"],
    "labeling": ["tasks:id", "tasks:completed_at", "tasks:cancelled_annotations", "tasks:total_predictions", "tasks:annotators",
                 "tasks:predictions_results", *_INTERNAL_COLUMNS],
}


class LabelStudioError(RuntimeError):
    """Label Studio could not be reached or refused a call, after retries."""


def retry(call: Callable[[], T], what: str, attempts: int = 5, first_wait: float = 1.0) -> T:
    """Run ``call`` with exponential backoff; Label Studio restarts or hiccups should not fail a run."""
    wait = first_wait
    for attempt in range(1, attempts + 1):
        try:
            return call()
        except Exception as exc:  # the SDK raises httpx and ApiError types; both mean "try again"
            status = getattr(exc, "status_code", None)
            if status is not None and 400 <= int(status) < 500 and int(status) not in (408, 429):
                raise LabelStudioError(f"Label Studio refused to {what}: HTTP {status}: {getattr(exc, 'body', exc)}") from exc
            if attempt == attempts:
                raise LabelStudioError(f"could not {what} after {attempts} attempts: {type(exc).__name__}: {exc}") from exc
            logger.warning("could not %s (%s: %s); retrying in %.0f s", what, type(exc).__name__, exc, wait)
            time.sleep(wait)
            wait *= 2
    raise AssertionError("unreachable")


def as_dict(obj: Any) -> Any:
    """SDK models to plain dicts (the SDK returns pydantic models, some nested)."""
    if hasattr(obj, "model_dump"):
        return obj.model_dump(mode="json")
    if isinstance(obj, list):
        return [as_dict(o) for o in obj]
    return obj


class LabelStudioProject:
    """One Label Studio project seen through the SDK."""

    def __init__(self, url: str, api_key: str, project_id: int) -> None:
        if not api_key:
            raise LabelStudioError("LABEL_STUDIO_API_KEY is not set; the worker needs a token to read annotations (Account & Settings > Access Token)")
        self.url = url.rstrip("/")
        self.client = LabelStudio(base_url=self.url, api_key=api_key, timeout=60)
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
        """Every task with its annotations (as plain dicts)."""
        def fetch() -> list[dict[str, Any]]:
            return [as_dict(t) for t in self.client.tasks.list(project=self.id, fields="all", page_size=500)]
        return retry(fetch, f"list the tasks of project {self.id}")

    def import_predictions(self, predictions: list[dict[str, Any]], batch: int = 500) -> None:
        for start in range(0, len(predictions), batch):
            chunk = predictions[start:start + batch]
            retry(lambda: self.client.projects.import_predictions(id=self.id, request=chunk), f"import {len(chunk)} predictions")

    def use_version(self, version: str, sampling: str = UNCERTAINTY) -> None:
        retry(lambda: self.client.projects.update(id=self.id, model_version=version, sampling=sampling), f"set model version {version}")

    def set_sampling(self, sampling: str) -> None:
        retry(lambda: self.client.projects.update(id=self.id, sampling=sampling), f"set sampling to {sampling}")

    def ensure_view(self, title: str, ordering: list[str], filters: dict[str, Any] | None = None) -> int:
        """Create or update the Data Manager tab ``title``; returns its id.

        Only the title, ordering and filters are ours: an update keeps what people set in the tab
        (columns, widths), which Label Studio would otherwise drop since it replaces ``data`` whole.
        """
        data: dict[str, Any] = {"title": title, "ordering": ordering}
        data["filters"] = filters or {"conjunction": "and", "items": []}
        views = retry(lambda: self.client.views.list(project=self.id), "list views")
        for v in views:
            vd = as_dict(v)
            if (vd.get("data") or {}).get("title") == title:
                merged = {**vd["data"], **data}
                retry(lambda: self.client.views.update(id=str(vd["id"]), data=merged, project=self.id), f"update view {title!r}")
                return int(vd["id"])
        new = {"hiddenColumns": HIDDEN_COLUMNS, **data}
        created = retry(lambda: self.client.views.create(project=self.id, data=new), f"create view {title!r}")
        return int(as_dict(created)["id"])

    def accept_predictions(self, task_ids: Iterable[int], version: str) -> None:
        """Turn the given tasks' predictions of ``version`` into annotations (Label Studio's bulk action)."""
        ids = list(task_ids)
        if not ids:
            return
        retry(lambda: self.client.actions.create(
            id="predictions_to_annotations", project=self.id,
            selected_items={"all": False, "included": ids},
            request_options=RequestOptions(additional_body_parameters={"model_version": version}),
        ), f"convert {len(ids)} predictions to annotations")

    def delete_annotations(self, annotation_ids: Iterable[int]) -> None:
        for aid in annotation_ids:
            retry(lambda: self.client.annotations.delete(id=aid), f"delete annotation {aid}")


def score_range_filter(low: float, high: float = 1.0) -> dict[str, Any]:
    return {"filter": "filter:tasks:predictions_score", "operator": "in", "type": "Number", "value": {"min": low, "max": high}}


def unlabeled_filter() -> dict[str, Any]:
    return {"filter": "filter:tasks:total_annotations", "operator": "equal", "type": "Number", "value": 0}


def task_id_filters(ids: Iterable[int], operator: str) -> list[dict[str, Any]]:
    """One filter item per task id; Label Studio's filters have no "id in list" operator."""
    return [{"filter": "filter:tasks:id", "operator": operator, "type": "Number", "value": int(i)} for i in ids]
