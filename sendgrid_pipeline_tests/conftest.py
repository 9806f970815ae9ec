"""Shared fixtures: a copy of the sample data, a real sandbox on loopback, a loopback-only net.

No fixture sets an environment variable: tests wire the pipeline with explicit resources
(`helpers.resources_for`), and give a child process its environment as a dict.
"""

from __future__ import annotations

import ipaddress
import shutil
import socket
from collections.abc import Iterator
from pathlib import Path

import pytest

REPO_DATA = Path(__file__).resolve().parents[1] / "data"

_real_connect = socket.socket.connect


def _loopback_only(self: socket.socket, address):  # never let a test reach another host
    if self.family in (socket.AF_INET, socket.AF_INET6):
        host = address[0]
        if host != "localhost" and not ipaddress.ip_address(host).is_loopback:
            raise ConnectionRefusedError(f"tests may only connect to loopback, not {host}")
    return _real_connect(self, address)


socket.socket.connect = _loopback_only


@pytest.fixture
def data_dir(tmp_path: Path) -> Path:
    """A private copy of the sample data directory; tests keep state and storage inside it."""
    target = tmp_path / "data"
    shutil.copytree(REPO_DATA, target, ignore=shutil.ignore_patterns("state", "storage", "reports"))
    return target


@pytest.fixture
def sandbox(data_dir: Path) -> Iterator:
    """A real SendGrid sandbox on a free loopback port, with the destinations' lists."""
    from sendgrid_pipeline_tests.devkit.sandbox import SandboxServer

    lists = SandboxServer.lists_from_destinations_file(data_dir / "destinations.yaml")
    with SandboxServer(lists=lists, job_delay_seconds=0.02) as server:
        yield server
