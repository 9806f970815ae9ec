"""A PostgreSQL server for the deployment tests: required in CI, skipped elsewhere without one.

`.ci/run` starts a throwaway server on loopback and names it in
SENDGRID_PIPELINE_TEST_POSTGRES_DSN; each test gets a database of its own on it.
"""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator
from urllib.parse import urlsplit, urlunsplit

import pytest

TEST_SERVER_ENV = "SENDGRID_PIPELINE_TEST_POSTGRES_DSN"


@pytest.fixture
def postgres_dsn() -> Iterator[str]:
    """The URL of a new, empty database, dropped after the test."""
    server = os.environ.get(TEST_SERVER_ENV)
    if not server:
        if os.environ.get("CI"):
            pytest.fail(f"CI must provide a PostgreSQL server in {TEST_SERVER_ENV} (.ci/run does)")
        pytest.skip(f"no PostgreSQL server: set {TEST_SERVER_ENV} (CI starts one)")
    import psycopg2

    name = f"t_{uuid.uuid4().hex[:12]}"
    admin = psycopg2.connect(server)
    admin.autocommit = True
    with admin.cursor() as cursor:
        cursor.execute(f'CREATE DATABASE "{name}"')
    parts = urlsplit(server)
    try:
        yield urlunsplit(parts._replace(path=f"/{name}"))
    finally:
        with admin.cursor() as cursor:
            cursor.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        admin.close()
