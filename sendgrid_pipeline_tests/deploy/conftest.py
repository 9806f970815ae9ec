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


# -- an S3 emulator on loopback (moto) ------------------------------------------------------------
MOTO_CREDENTIALS = {
    "aws_access_key_id": "moto-test-key",
    "aws_secret_access_key": "moto-test-secret",
    "aws_region": "us-east-1",
}


@pytest.fixture(scope="session")
def moto_endpoint() -> Iterator[str]:
    """The URL of an in-process S3 emulator on 127.0.0.1 and a free port, for the session."""
    try:
        from moto.server import ThreadedMotoServer
    except ImportError:
        if os.environ.get("CI"):
            pytest.fail("CI must have moto[server] (a dev dependency) for the object-store tests")
        pytest.skip("moto[server] is not installed (a dev dependency)")
    import logging

    logging.getLogger("werkzeug").setLevel(logging.ERROR)  # one log line per request otherwise
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    try:
        yield f"http://{host}:{port}"
    finally:
        server.stop()


@pytest.fixture
def s3_bucket(moto_endpoint: str) -> tuple[str, dict[str, str]]:
    """A new, empty bucket on the emulator: (its name, the storage options that reach it)."""
    import boto3

    name = f"t-{uuid.uuid4().hex[:16]}"
    client = boto3.client(
        "s3",
        endpoint_url=moto_endpoint,
        aws_access_key_id=MOTO_CREDENTIALS["aws_access_key_id"],
        aws_secret_access_key=MOTO_CREDENTIALS["aws_secret_access_key"],
        region_name=MOTO_CREDENTIALS["aws_region"],
    )
    client.create_bucket(Bucket=name)
    return name, {**MOTO_CREDENTIALS, "aws_endpoint_url": moto_endpoint}
