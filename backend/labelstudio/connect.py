"""``weather-al connect``: set a Label Studio project up for the loop, so a lead does not click through settings."""

from __future__ import annotations

import logging
from pathlib import Path

from label_studio_sdk import LabelStudio

from backend.labelstudio.client import UNIFORM, as_dict, retry

logger = logging.getLogger(__name__)


def connect(
    url: str,
    api_key: str,
    project: int,
    backend_url: str,
    title: str = "weather-al",
    local_storage: Path | None = None,
    basic_auth: tuple[str, str] | None = None,
) -> dict:
    """Connect the backend to ``project``: optional local storage, the ML backend row, uniform sampling.

    Uniform sampling until the first model exists makes the seed set a random sample, which is what
    certifies automatic annotation later. The worker switches to uncertainty sampling itself.
    """
    # max_retries=0: ``retry`` is the one retry policy (see there); each create below looks first, inside its try,
    # so a create whose answer was lost is found on the next try instead of made twice
    ls = LabelStudio(base_url=url.rstrip("/"), api_key=api_key, max_retries=0)
    p = as_dict(retry(lambda: ls.projects.get(id=project), f"read project {project}"))
    out: dict = {"project": project, "title": p.get("title")}
    if local_storage is not None:

        def storage() -> dict:
            storages = [as_dict(s) for s in ls.import_storage.local.list(project=project)]
            found = next((s for s in storages if s.get("path") == str(local_storage)), None)
            return found or as_dict(
                ls.import_storage.local.create(
                    project=project, path=str(local_storage), title="images", use_blob_urls=True
                )
            )

        out["local_storage"] = retry(storage, "create local storage").get("id")
    kwargs = {}
    if basic_auth:
        kwargs = {"auth_method": "BASIC_AUTH", "basic_auth_user": basic_auth[0], "basic_auth_pass": basic_auth[1]}

    def ml_backend() -> dict:
        backends = [as_dict(b) for b in ls.ml.list(project=project)]
        found = next((b for b in backends if (b.get("url") or "").rstrip("/") == backend_url.rstrip("/")), None)
        return found or as_dict(
            ls.ml.create(url=backend_url, project=project, title=title, is_interactive=False, **kwargs)
        )

    row = retry(ml_backend, "connect the ML backend")
    out["ml_backend"] = row.get("id")
    if not p.get("model_version") or p.get("model_version") == title:
        retry(
            lambda: ls.projects.update(id=project, sampling=UNIFORM, show_collab_predictions=True),
            "set uniform sampling",
        )
    logger.info("project %s connected to %s (ML backend id %s)", project, backend_url, row.get("id"))
    return out
