"""A sandbox with one list and a private state file for each sync test."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from sendgrid_pipeline_tests.devkit.sandbox import SandboxServer
from sendgrid_pipeline_tests.sync.support import LIST_ID


@pytest.fixture
def sandbox() -> Iterator[SandboxServer]:
    with SandboxServer(lists={LIST_ID: "Test list"}, job_delay_seconds=0.01) as server:
        yield server


@pytest.fixture
def state_path(tmp_path: Path) -> Path:
    return tmp_path / "state" / "sync_state.sqlite"
