"""Shared fixtures: a copy of the sample data, a real sandbox on loopback, a loopback-only net."""

from __future__ import annotations

import ipaddress
import os
import shutil
import socket
from collections.abc import Iterator
from pathlib import Path

import pytest

REPO_DATA = Path(__file__).resolve().parents[1] / "data"
os.environ["DAGSTER_DISABLE_TELEMETRY"] = "1"

_real_connect = socket.socket.connect


def _loopback_only(self: socket.socket, address):  # never let a test reach another host
    if self.family in (socket.AF_INET, socket.AF_INET6):
        host = address[0]
        if host != "localhost" and not ipaddress.ip_address(host).is_loopback:
            raise ConnectionRefusedError(f"tests may only connect to loopback, not {host}")
    return _real_connect(self, address)


socket.socket.connect = _loopback_only


@pytest.fixture
def data_dir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A private copy of the sample data directory, with state and storage inside it."""
    target = tmp_path / "data"
    shutil.copytree(REPO_DATA, target, ignore=shutil.ignore_patterns("state", "storage", "reports"))
    monkeypatch.setenv("SENDGRID_PIPELINE_DATA_DIR", str(target))
    monkeypatch.setenv("SENDGRID_PIPELINE_STATE_DIR", str(target / "state"))
    monkeypatch.setenv("SENDGRID_PIPELINE_STORAGE_DIR", str(target / "storage"))
    return target


@pytest.fixture
def sandbox(data_dir: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator:
    """A real SendGrid sandbox on a free loopback port, with the destinations' lists."""
    from sendgrid_pipeline_tests.devkit.sandbox import SandboxServer

    lists = SandboxServer.lists_from_destinations_file(data_dir / "destinations.yaml")
    with SandboxServer(lists=lists, job_delay_seconds=0.02) as server:
        monkeypatch.setenv("SENDGRID_BASE_URL", server.base_url)
        monkeypatch.setenv("SENDGRID_API_KEY", server.api_key)
        monkeypatch.setenv("SENDGRID_POLL_INTERVAL_SECONDS", "0.02")
        yield server
