"""A sandbox with one list, and a private sync state for each sync test on both stores.

`state_at` is where the state lives: an SQLite file, or a PostgreSQL database of its own (the
`postgres_dsn` fixture: skipped without a server, required under CI=true). Tests of the SQLite
file itself (damaging it, a full disk, its lock file) use `sqlite_state_path` and say so.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from sendgrid_pipeline_tests.deploy.conftest import postgres_dsn  # noqa: F401 (a fixture)
from sendgrid_pipeline_tests.devkit.sandbox import SandboxServer
from sendgrid_pipeline_tests.sync.support import LIST_ID


@pytest.fixture
def sandbox() -> Iterator[SandboxServer]:
    with SandboxServer(lists={LIST_ID: "Test list"}, job_delay_seconds=0.01) as server:
        yield server


@pytest.fixture
def sqlite_state_path(tmp_path: Path) -> Path:
    return tmp_path / "state" / "sync_state.sqlite"


@pytest.fixture(params=["sqlite", "postgres"])
def state_at(request, tmp_path: Path) -> Path | str:
    """The state of one test: an SQLite file path, or a PostgreSQL URL (see open_store)."""
    if request.param == "sqlite":
        return tmp_path / "state" / "sync_state.sqlite"
    return request.getfixturevalue("postgres_dsn")
