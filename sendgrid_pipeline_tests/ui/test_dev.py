"""`make dev` (devkit.dev): it serves the UI and the sandbox, and stops all it started.

A stop that leaves `dagster dev` or its children running would hold the ports and the
DAGSTER_HOME of the next `make dev`, so each test checks that every descendant is gone.
"""

from __future__ import annotations

import contextlib
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import requests

from sendgrid_pipeline_tests.ui.stack import REPO, REPO_DATA, free_port

DEV_KEY = "SG.sandbox-local-dev-key"
READY_TIMEOUT = 180
STOP_TIMEOUT = 60


def descendants(pid: int) -> set[int]:
    """Every live process below `pid`, from /proc (Linux)."""
    children: dict[int, list[int]] = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        with contextlib.suppress(OSError, ValueError, IndexError):
            fields = stat.read_text().rsplit(")", 1)[1].split()
            children.setdefault(int(fields[1]), []).append(int(stat.parent.name))
    found: set[int] = set()
    todo = [pid]
    while todo:
        for child in children.get(todo.pop(), []):
            if child not in found:
                found.add(child)
                todo.append(child)
    return found


def alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (OSError, IndexError):
        return False
    return state != "Z"


@pytest.mark.parametrize("stop_signal", [signal.SIGINT, signal.SIGTERM], ids=["ctrl-c", "term"])
def test_dev_serves_ui_and_sandbox_and_stops_everything(
    tmp_path: Path, stop_signal: signal.Signals
) -> None:
    data = tmp_path / "data"
    shutil.copytree(REPO_DATA, data, ignore=shutil.ignore_patterns("state", "storage", "reports"))
    sandbox_port, ui_port = free_port(), free_port()
    log = tmp_path / "dev.log"
    env = {
        **os.environ,
        "DAGSTER_HOME": str(tmp_path / "dagster_home"),
        "SENDGRID_PIPELINE_DATA_DIR": str(data),
        "SENDGRID_PIPELINE_STORAGE_DIR": str(data / "storage"),
        "PYTHONUNBUFFERED": "1",
    }
    with log.open("wb") as out:
        dev = subprocess.Popen(
            [
                *(sys.executable, "-m", "sendgrid_pipeline_tests.devkit.dev"),
                *("--sandbox-port", str(sandbox_port), "--ui-port", str(ui_port)),
            ],
            cwd=REPO,
            env=env,
            stdin=subprocess.DEVNULL,
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    started: set[int] = set()
    try:
        deadline = time.monotonic() + READY_TIMEOUT
        ready = f"Ready: open http://127.0.0.1:{ui_port}"
        while ready not in log.read_text(errors="replace"):
            assert dev.poll() is None, f"dev exited {dev.returncode}:\n{log.read_text()}"
            assert time.monotonic() < deadline, f"not ready in time:\n{log.read_text()}"
            time.sleep(0.5)
        output = log.read_text(errors="replace")
        assert f"SendGrid sandbox: http://127.0.0.1:{sandbox_port}  (API key: {DEV_KEY})" in output
        assert re.search(rf"DAGSTER_HOME={re.escape(str(tmp_path))}/dagster_home\)", output)
        assert (
            "telemetry:\n  enabled: false" in (tmp_path / "dagster_home/dagster.yaml").read_text()
        )

        ui = f"http://127.0.0.1:{ui_port}"
        assert requests.get(f"{ui}/server_info", timeout=10).ok
        lists = requests.get(
            f"http://127.0.0.1:{sandbox_port}/v3/marketing/lists",
            headers={"Authorization": f"Bearer {DEV_KEY}"},
            timeout=10,
        )
        assert lists.ok and len(lists.json()["result"]) == 3
        started = descendants(dev.pid)
        assert len(started) >= 3, "dagster dev, its webserver and daemon should be running"

        os.kill(dev.pid, stop_signal)
        dev.wait(timeout=STOP_TIMEOUT)
        deadline = time.monotonic() + 15
        while any(alive(pid) for pid in started) and time.monotonic() < deadline:
            time.sleep(0.2)
        assert not [pid for pid in started if alive(pid)], f"left running:\n{log.read_text()}"
        for port in (sandbox_port, ui_port):
            with pytest.raises(requests.ConnectionError):
                requests.get(f"http://127.0.0.1:{port}/", timeout=5)
    finally:  # whatever happened above, nothing this test started outlives it
        for pid in {dev.pid, *started, *descendants(dev.pid)}:
            with contextlib.suppress(ProcessLookupError):
                if not alive(pid):
                    continue
                os.kill(pid, signal.SIGKILL)
        with contextlib.suppress(subprocess.TimeoutExpired):
            dev.wait(timeout=10)
