"""A live Label Studio project as a Label Studio export, with its images fetched to local files.

``weather-al analyze --url --api-key --project`` reads a project through the SDK instead of an export
file. ``model/`` knows nothing of Label Studio's API, so this module does the Label Studio part: it
lists the tasks with all their annotations, downloads each image the way a training run does
(:class:`backend.labelstudio.fetch.ImageFetcher`: the token only to Label Studio's origin, size cap, timeouts,
local files read under LOCAL_FILES_DOCUMENT_ROOT), and hands back the tasks in export format with each
image field replaced by the absolute path of the local copy.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from backend.labelstudio.client import LabelStudioProject
from backend.labelstudio.fetch import ImageFetcher
from model.schema import LabelSchema

#: The image fields hold absolute paths, so they resolve under the file system root.
DOCUMENT_ROOT = Path("/")


@dataclass
class ProjectExport:
    """The project's label config, its tasks in export format, and the tasks whose image could not be fetched."""

    label_config: str
    tasks: list[dict[str, Any]]
    document_root: Path = DOCUMENT_ROOT
    errors: dict[str, str] = field(default_factory=dict)


def read_project_export(
    url: str, api_key: str, project_id: int, cache_dir: Path, document_root: Path | None = None
) -> ProjectExport:
    """Every task of ``project_id`` with its annotations; images are fetched into ``cache_dir``.

    ``document_root``: Label Studio's LOCAL_FILES_DOCUMENT_ROOT when it is on this machine (default:
    the LOCAL_FILES_DOCUMENT_ROOT setting), so that local-storage images are read, not downloaded.
    """
    from backend.settings import get_settings
    from backend.worker.images import fetch_all

    ls = LabelStudioProject(url, api_key, project_id)
    label_config = ls.label_config()
    key = LabelSchema.from_xml(label_config).image_key
    tasks = ls.tasks()
    settings = get_settings()
    root = document_root if document_root is not None else settings.local_files_document_root
    # the settings' limits; no cache bound: cache_dir is the analysis's own copy of the project's images
    fetcher = ImageFetcher(
        url,
        ls.download_token(),
        Path(cache_dir),
        root,
        max_bytes=settings.max_image_bytes,
        timeout=settings.fetch_timeout,
        deadline=settings.fetch_deadline,
    )
    wanted = [(int(t["id"]), (t.get("data") or {}).get(key)) for t in tasks]
    paths = fetch_all(fetcher, [(tid, u) for tid, u in wanted if u])
    errors = {}
    for task in tasks:
        tid = int(task["id"])
        if tid in paths:
            task["data"][key] = str(paths[tid].resolve())
        elif (task.get("data") or {}).get(key):
            errors[str(tid)] = f"could not fetch the image {task['data'][key]} (the reason is in the log)"
    return ProjectExport(label_config=label_config, tasks=tasks, errors=errors)
