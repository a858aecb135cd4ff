"""The integration tests' real Redis (TEST_REDIS_URL, default db 15 of 127.0.0.1:6379; .ci/run starts one)."""

from __future__ import annotations

import os
from collections.abc import Iterator

import pytest

from backend.queue import Broker
from backend.settings import get_settings

REDIS_URL = os.environ.get("TEST_REDIS_URL", "redis://127.0.0.1:6379/15")


@pytest.fixture()
def broker(tmp_path, monkeypatch) -> Iterator[Broker]:
    """An emptied Redis that the backend's settings name too (REDIS_URL, and MODEL_DIR under tmp_path)."""
    b = Broker(REDIS_URL)
    if not b.ping():
        pytest.fail(f"these tests need a real Redis at {REDIS_URL} (.ci/run starts one)")
    b.conn.flushdb()
    monkeypatch.setenv("REDIS_URL", REDIS_URL)
    monkeypatch.setenv("MODEL_DIR", str(tmp_path / "models"))
    get_settings.cache_clear()
    yield b
    get_settings.cache_clear()
    b.conn.flushdb()
