"""Smoke test of the real Label Studio the e2e suite runs against: project from the repo's label
config, local-file tasks behind a Local Storage, and who may download their images.

The backend reads task images through exactly these URLs with the legacy token, so a change in how
Label Studio serves or guards local files shows up here first.
"""

from __future__ import annotations

import io
from dataclasses import dataclass
from pathlib import Path

import pytest
import requests
from label_studio_sdk import LabelStudio
from label_studio_sdk.core.api_error import ApiError
from PIL import Image

from backend.dev.local_label_studio import LocalLabelStudio

pytestmark = pytest.mark.e2e

LABEL_CONFIG = Path(__file__).resolve().parents[2] / "label_config.xml"
STORAGE_FOLDER = "smoke"
COLORS = ((200, 40, 40), (40, 200, 40), (40, 40, 200))


def _jpeg(color: tuple[int, int, int]) -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", (16, 12), color).save(buffer, format="JPEG")
    return buffer.getvalue()


def _local_files_url(relative_path: str) -> str:
    return f"/data/local-files/?d={relative_path}"


@dataclass
class SmokeProject:
    id: int
    task_ids: list[int]
    images: dict[str, bytes]  # path relative to the document root -> the JPEG bytes written there


@pytest.fixture(scope="module")
def client(label_studio: LocalLabelStudio) -> LabelStudio:
    return LabelStudio(base_url=label_studio.url, api_key=label_studio.token)


@pytest.fixture(scope="module")
def smoke_project(client: LabelStudio, document_root: Path) -> SmokeProject:
    folder = document_root / STORAGE_FOLDER
    folder.mkdir()
    images = {}
    for index, color in enumerate(COLORS):
        relative = f"{STORAGE_FOLDER}/{index}.jpg"
        images[relative] = _jpeg(color)
        (document_root / relative).write_bytes(images[relative])
    project = client.projects.create(title="weather-al smoke", label_config=LABEL_CONFIG.read_text())
    client.import_storage.local.create(project=project.id, path=str(folder), use_blob_urls=True, title="smoke")
    imported = client.projects.import_tasks(
        id=project.id, request=[{"image": _local_files_url(path)} for path in images], return_task_ids=True
    )
    return SmokeProject(id=project.id, task_ids=list(imported.task_ids), images=images)


def _get(server: LocalLabelStudio, url: str, token: str | None) -> requests.Response:
    headers = {"Authorization": f"Token {token}"} if token else {}
    return requests.get(server.url + url, headers=headers, timeout=10, allow_redirects=False)


def test_project_keeps_the_label_config_and_the_task_urls(client: LabelStudio, smoke_project: SmokeProject) -> None:
    project = client.projects.get(id=smoke_project.id)
    assert set(project.parsed_label_config) == {"timeofday", "weather"}
    tasks = list(client.tasks.list(project=smoke_project.id))
    assert sorted(task.id for task in tasks) == sorted(smoke_project.task_ids)
    assert sorted(task.data["image"] for task in tasks) == sorted(map(_local_files_url, smoke_project.images))


def test_task_images_download_with_the_token(
    client: LabelStudio, label_studio: LocalLabelStudio, smoke_project: SmokeProject
) -> None:
    for task in client.tasks.list(project=smoke_project.id):
        response = _get(label_studio, task.data["image"], label_studio.token)
        assert response.status_code == 200, task.data["image"]
        assert response.headers["Content-Type"] == "image/jpeg"
        relative = task.data["image"].split("?d=", 1)[1]
        assert response.content == smoke_project.images[relative]


@pytest.mark.parametrize("token", [None, "0" * 40], ids=["no-token", "wrong-token"])
def test_task_images_are_refused_without_a_valid_token(
    label_studio: LocalLabelStudio, smoke_project: SmokeProject, token: str | None
) -> None:
    for path in smoke_project.images:
        response = _get(label_studio, _local_files_url(path), token)
        assert response.status_code == 401, path


def test_files_outside_every_storage_are_not_served(
    label_studio: LocalLabelStudio, smoke_project: SmokeProject, document_root: Path
) -> None:
    outside = document_root / "no-storage" / "x.jpg"
    outside.parent.mkdir(exist_ok=True)
    outside.write_bytes(_jpeg((0, 0, 0)))
    for path in ("no-storage/x.jpg", f"{STORAGE_FOLDER}/missing.jpg"):
        assert _get(label_studio, _local_files_url(path), label_studio.token).status_code == 404, path


def test_paths_escaping_the_document_root_are_not_served(
    label_studio: LocalLabelStudio, smoke_project: SmokeProject, document_root: Path
) -> None:
    secret = _jpeg((1, 2, 3))
    (document_root.parent / "secret.jpg").write_bytes(secret)
    for path in ("../secret.jpg", f"{STORAGE_FOLDER}/../../secret.jpg"):
        response = _get(label_studio, _local_files_url(path), label_studio.token)
        # 1.23.2 answers 500 ("joined path ... outside of the base path"), not 404: only pin "refused".
        assert response.status_code >= 400, path
        assert secret not in response.content


def test_local_storage_must_lie_inside_the_document_root(
    client: LabelStudio, smoke_project: SmokeProject, tmp_path: Path
) -> None:
    with pytest.raises(ApiError) as refused:
        client.import_storage.local.create(project=smoke_project.id, path=str(tmp_path))
    assert refused.value.status_code == 400
    assert "LOCAL_FILES_DOCUMENT_ROOT" in str(refused.value.body)
