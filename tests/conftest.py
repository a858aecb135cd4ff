"""Shared fixtures: the weather schema and a tiny labeled image set (see tiny_data.py)."""

from __future__ import annotations

import os

# Idle OpenMP threads must sleep, not spin: on a loaded machine (CI runners, several jobs on 2 cores)
# spinning threads wait for descheduled peers at every op; a 2-thread training step of a small net ran
# ~30x slower than with one thread. Must be set before anything imports torch.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import pytest  # noqa: E402
from tiny_data import TinyData, write_tiny_set  # noqa: E402

from model.schema import LabelSchema  # noqa: E402


@pytest.fixture(scope="session")
def schema() -> LabelSchema:
    """The weather project's schema, from the shipped label_config.xml."""
    return LabelSchema.from_file()


@pytest.fixture(scope="session")
def tiny_set(tmp_path_factory: pytest.TempPathFactory) -> TinyData:
    """36 small labeled scenes (4 of each label combination); read-only for tests."""
    return write_tiny_set(tmp_path_factory.mktemp("tiny"), 36)
