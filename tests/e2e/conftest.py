"""Fixtures for end-to-end tests: ONE real Label Studio per test session (a fresh start costs ~1 min).

When a test of the session fails, or the server will not start, its log is copied to
./test-artifacts/label-studio.log so that CI keeps what the server said.
"""

from __future__ import annotations

import logging
import shutil
from collections.abc import Iterator
from pathlib import Path

import pytest

from backend.dev.local_label_studio import LOG_FILENAME, LocalLabelStudio, start_label_studio

logger = logging.getLogger(__name__)

ARTIFACTS_DIR = "test-artifacts"


@pytest.fixture(scope="session")
def document_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """LOCAL_FILES_DOCUMENT_ROOT of the session's Label Studio: `/data/local-files/?d=<path>` is
    resolved under it, and local storages must be folders inside it."""
    return tmp_path_factory.mktemp("document_root")


def _keep_log(config: pytest.Config, log_path: Path) -> None:
    if not log_path.exists():
        return
    target = config.rootpath / ARTIFACTS_DIR / log_path.name
    target.parent.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(log_path, target)
    logger.warning("Label Studio log kept at %s", target)


@pytest.fixture(scope="session")
def label_studio(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory, document_root: Path
) -> Iterator[LocalLabelStudio]:
    """A running Label Studio (fresh data dir, legacy token enabled), stopped after the session."""
    data_dir = tmp_path_factory.mktemp("label_studio")
    failures_before = request.session.testsfailed
    try:
        server = start_label_studio(data_dir, document_root)
    except Exception:
        _keep_log(request.config, data_dir / LOG_FILENAME)
        raise
    try:
        yield server
    finally:
        server.stop()
        if request.session.testsfailed > failures_before:
            _keep_log(request.config, server.log_path)
