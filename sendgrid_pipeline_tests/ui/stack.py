"""`dagster dev` plus the SendGrid sandbox on loopback, as the UI tests need them.

`prepare()` makes the private data copy and DAGSTER_HOME, `run_demo()` runs the demo over them as
`make demo` would (before anything else starts), and `start()` starts the sandbox and the UI.
Each process runs in its own session (process group), so stopping it also stops whatever it
spawned (code server, webserver, daemon, run workers); nothing outlives the tests.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import requests

from sendgrid_pipeline_tests.devkit.dev import write_instance_config
from sendgrid_pipeline_tests.devkit.sandbox.__main__ import command as sandbox_command

REPO = Path(__file__).resolve().parents[2]
REPO_DATA = REPO / "data"
ARTIFACTS = REPO / "artifacts"
SANDBOX_KEY = "SG.ui-test-key"
TERMINAL_RUN_STATUSES = {"SUCCESS", "FAILURE", "CANCELED"}

WORKSPACE_QUERY = """
{ workspaceOrError { __typename ... on Workspace { locationEntries {
    name loadStatus
    locationOrLoadError { __typename ... on PythonError { message } }
} } } }
"""
RUN_QUERY = """
query ($runId: ID!) { runOrError(runId: $runId) { __typename ... on Run { status } } }
"""


class StackError(RuntimeError):
    """The stack did not start or answer as expected; the message carries the log's tail."""


def free_port() -> int:
    """A port that is free on 127.0.0.1 right now (the caller binds it at once)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def _tail(path: Path, lines: int = 40) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return "(no log)"


def _stop_group(process: subprocess.Popen, first: signal.Signals, grace: float) -> None:
    """Signal the process's group, wait up to `grace` seconds, then SIGKILL the group."""
    if process.poll() is None:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(process.pid, first)
        with contextlib.suppress(subprocess.TimeoutExpired):
            process.wait(timeout=grace)
    # Children may outlive a leader that exited: the group id stays theirs until they go.
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(process.pid, signal.SIGKILL)
    with contextlib.suppress(subprocess.TimeoutExpired):
        process.wait(timeout=10)


@contextlib.contextmanager
def _sigint_not_ignored() -> Iterator[None]:
    """Let the processes started here take SIGINT as Ctrl+C, even when the tests ignore it.

    A shell that runs the tests in the background starts them with SIGINT ignored, children
    inherit that, and `dagster dev` (which treats SIGTERM as SIGINT) could then only be killed,
    after the whole grace period. A handler set here is reset to the default in the child.
    """
    if (
        threading.current_thread() is not threading.main_thread()
        or signal.getsignal(signal.SIGINT) is not signal.SIG_IGN
    ):
        yield
        return
    signal.signal(signal.SIGINT, signal.default_int_handler)
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, signal.SIG_IGN)


class DagsterDevStack:
    """A private data copy, DAGSTER_HOME, sandbox and `dagster dev`, all under `root`."""

    def __init__(self, root: Path, startup_timeout: float = 240.0) -> None:
        self.root = root
        self.startup_timeout = startup_timeout
        self.data_dir = root / "data"
        self.dagster_home = root / "dagster_home"
        self.logs = root / "logs"
        self.sandbox_url = ""
        self.ui_url = ""
        self.demo_output = ""  # what the demo printed
        self.home_after_demo: list[str] = []  # what the demo left in DAGSTER_HOME
        self._processes: list[tuple[str, subprocess.Popen, signal.Signals]] = []

    # -- lifecycle -----------------------------------------------------------------------------
    def prepare(self) -> DagsterDevStack:
        """The private data copy, DAGSTER_HOME (telemetry off) and the log folder; no process."""
        if self.data_dir.exists():
            return self
        shutil.copytree(
            REPO_DATA,
            self.data_dir,
            ignore=shutil.ignore_patterns("state", "storage", "reports", "archive", "rejected"),
        )
        write_instance_config(self.dagster_home)  # what `make install` does for .dagster_home
        self.logs.mkdir(parents=True)
        return self

    def run_demo(self, timeout: float = 300.0) -> str:
        """`make demo` before the stack starts: over the same data copy, with DAGSTER_HOME set to
        the stack's own, as the Makefile exports it. Returns what the demo printed."""
        if self._processes:
            raise StackError("run the demo before the stack starts, as a user would")
        self.prepare()
        log = self.logs / "demo.log"
        env = {
            **os.environ,
            "DAGSTER_HOME": str(self.dagster_home),
            "DAGSTER_DISABLE_TELEMETRY": "1",
        }
        with log.open("wb") as out:
            demo = subprocess.Popen(
                [
                    sys.executable,
                    "-m",
                    "sendgrid_pipeline_tests.devkit.demo",
                    "--data-dir",
                    str(self.data_dir),
                ],
                cwd=REPO,
                env=env,
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        try:
            code = demo.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            raise StackError(f"the demo took over {timeout:.0f}s:\n{_tail(log)}") from None
        finally:
            _stop_group(demo, signal.SIGTERM, grace=5)
        if code != 0:
            raise StackError(f"the demo exited with {code}:\n{_tail(log)}")
        self.home_after_demo = sorted(
            str(path.relative_to(self.dagster_home)) for path in self.dagster_home.rglob("*")
        )
        self.demo_output = log.read_text(errors="replace")
        return self.demo_output

    def start(self) -> DagsterDevStack:
        deadline = time.monotonic() + self.startup_timeout
        self.prepare()
        try:
            self._start_sandbox(deadline)
            self._start_dagster(deadline)
        except BaseException:
            self.stop()
            raise
        return self

    def stop(self) -> None:
        """Stop everything started, newest first; keep the logs beside the screenshots."""
        while self._processes:
            _name, process, first = self._processes.pop()
            _stop_group(process, first, grace=30)
        if self.logs.is_dir():
            target = ARTIFACTS / "logs"
            target.mkdir(parents=True, exist_ok=True)
            for log in self.logs.glob("*.log"):
                shutil.copy(log, target / log.name)

    def __enter__(self) -> DagsterDevStack:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # -- processes -----------------------------------------------------------------------------
    def env(self) -> dict[str, str]:
        return {
            **os.environ,
            "DAGSTER_HOME": str(self.dagster_home),
            "DAGSTER_DISABLE_TELEMETRY": "1",
            "SENDGRID_PIPELINE_DATA_DIR": str(self.data_dir),
            "SENDGRID_PIPELINE_STATE_DIR": str(self.data_dir / "state"),
            "SENDGRID_PIPELINE_STORAGE_DIR": str(self.data_dir / "storage"),
            "SENDGRID_BASE_URL": self.sandbox_url,
            "SENDGRID_API_KEY": SANDBOX_KEY,
            "SENDGRID_POLL_INTERVAL_SECONDS": "0.1",
            "PYTHONUNBUFFERED": "1",
        }

    def _spawn(self, name: str, args: list[str], first: signal.Signals) -> subprocess.Popen:
        log = (self.logs / f"{name}.log").open("wb")
        with log, _sigint_not_ignored():
            process = subprocess.Popen(
                args,
                cwd=REPO,
                env=self.env(),
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        self._processes.append((name, process, first))
        return process

    def _check_alive(self, name: str, process: subprocess.Popen) -> None:
        if process.poll() is not None:
            raise StackError(
                f"{name} exited with {process.returncode}:\n{_tail(self.logs / f'{name}.log')}"
            )

    def _start_sandbox(self, deadline: float) -> None:
        process = self._spawn(
            "sandbox",
            sandbox_command(SANDBOX_KEY, self.data_dir / "destinations.yaml"),
            signal.SIGTERM,
        )
        log = self.logs / "sandbox.log"
        while time.monotonic() < deadline:
            self._check_alive("sandbox", process)
            for line in log.read_text(errors="replace").splitlines():
                if line.startswith("SENDGRID_BASE_URL="):
                    self.sandbox_url = line.split("=", 1)[1].strip()
                    return
            time.sleep(0.2)
        raise StackError(f"the sandbox printed no base URL in time:\n{_tail(log)}")

    def _start_dagster(self, deadline: float) -> None:
        port = free_port()
        self.ui_url = f"http://127.0.0.1:{port}"
        process = self._spawn(
            "dagster-dev",
            [
                sys.executable,
                "-m",
                "dagster",
                "dev",
                "-w",
                str(REPO / "workspace.yaml"),
                "-h",
                "127.0.0.1",
                "-p",
                str(port),
            ],
            signal.SIGINT,  # dagster dev shuts its webserver, daemon and code server down on it
        )
        problem = "no answer yet"
        while time.monotonic() < deadline:
            self._check_alive("dagster-dev", process)
            try:
                problem = self._location_problem()
            except requests.RequestException as error:
                problem = f"webserver not answering: {error}"
            if problem is None:
                return
            if problem.startswith("load error"):
                raise StackError(f"{problem}\n{_tail(self.logs / 'dagster-dev.log')}")
            time.sleep(1)
        raise StackError(
            f"dagster dev not ready in {self.startup_timeout:.0f}s ({problem}):\n"
            f"{_tail(self.logs / 'dagster-dev.log')}"
        )

    def _location_problem(self) -> str | None:
        """None once the code location has loaded; else what is still missing."""
        body = self.graphql(WORKSPACE_QUERY, timeout=10)
        entries = body["workspaceOrError"].get("locationEntries") or []
        if not entries:
            return "no code location yet"
        for entry in entries:
            loaded = entry.get("locationOrLoadError") or {}
            if loaded.get("__typename") == "PythonError":
                return f"load error in {entry['name']}: {loaded['message']}"
            if entry["loadStatus"] != "LOADED" or not loaded:
                return f"{entry['name']} is {entry['loadStatus']}"
        return None

    # -- APIs ----------------------------------------------------------------------------------
    def graphql(
        self, query: str, variables: dict[str, Any] | None = None, timeout: float = 30
    ) -> dict[str, Any]:
        """POST to the webserver's /graphql; raise on transport or GraphQL errors."""
        response = requests.post(
            f"{self.ui_url}/graphql",
            json={"query": query, "variables": variables or {}},
            timeout=timeout,
        )
        response.raise_for_status()
        body = response.json()
        if body.get("errors"):
            raise StackError(f"GraphQL errors: {body['errors']}")
        return body["data"]

    def wait_for_run(self, run_id: str, timeout: float) -> str:
        """Poll the run until it finishes; its final status (SUCCESS, FAILURE, CANCELED)."""
        deadline = time.monotonic() + timeout
        status = "unknown"
        while time.monotonic() < deadline:
            run = self.graphql(RUN_QUERY, {"runId": run_id})["runOrError"]
            status = run.get("status", run["__typename"])
            if status in TERMINAL_RUN_STATUSES:
                return status
            time.sleep(1)
        raise StackError(f"run {run_id} still {status} after {timeout:.0f}s")

    def sandbox_list_count(self, list_id: str) -> int:
        """How many contacts the sandbox's list holds (what SendGrid would show)."""
        response = requests.get(
            f"{self.sandbox_url}/v3/marketing/lists/{list_id}/contacts/count",
            headers={"Authorization": f"Bearer {SANDBOX_KEY}"},
            timeout=10,
        )
        response.raise_for_status()
        return int(response.json()["contact_count"])
