"""Shared fixtures: the weather schema and a tiny labeled image set (see tiny_data.py)."""

from __future__ import annotations

import pytest

from model.schema import LabelSchema
from tiny_data import TinyData, write_tiny_set


@pytest.fixture(scope="session")
def schema() -> LabelSchema:
    """The weather project's schema, from the shipped label_config.xml."""
    return LabelSchema.from_file()


@pytest.fixture(scope="session")
def tiny_set(tmp_path_factory: pytest.TempPathFactory) -> TinyData:
    """36 small labeled scenes (4 of each label combination); read-only for tests."""
    return write_tiny_set(tmp_path_factory.mktemp("tiny"), 36)
