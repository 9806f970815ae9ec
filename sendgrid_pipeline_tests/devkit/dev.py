"""`make dev`: the SendGrid sandbox and the Dagster UI together, on loopback.

Run history persists in DAGSTER_HOME (.dagster_home in the repository). The sandbox keeps no
data between starts, so its sync state lives beside it and is cleared on every start. Once the
UI answers, it says whether the code location loaded and which of the schedule and sensors
are running (all but the suppressions schedule start RUNNING; a stop made in the UI or CLI
persists).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

import yaml

from sendgrid_pipeline.settings import Settings
from sendgrid_pipeline_tests.devkit.sandbox import SandboxServer

REPO = Path(__file__).resolve().parents[2]
SANDBOX_KEY = "SG.sandbox-local-dev-key"
HOST = "127.0.0.1"
READY_TIMEOUT_SECONDS = 180
STOP_GRACE_SECONDS = 30
LOCATION_TIMEOUT_SECONDS = 120
INSTANCE_CONFIG = "telemetry:\n  enabled: false\n"
AUTOMATION_QUERY = """
{ workspaceOrError { __typename ... on Workspace { locationEntries {
    name loadStatus
    locationOrLoadError { __typename
      ... on PythonError { message }
      ... on RepositoryLocation { repositories {
        schedules { name cronSchedule executionTimezone scheduleState { status } }
        sensors { name sensorState { status } }
      } }
    }
} } } }
"""


def write_instance_config(home: Path | str) -> Path:
    """Create a DAGSTER_HOME with a dagster.yaml that turns telemetry off; keep one that exists.

    The one place that writes it (the Makefile, `make dev` and the demo's own instance).
    """
    path = Path(home) / "dagster.yaml"
    path.parent.mkdir(parents=True, exist_ok=True)
    if not path.exists():  # keep an instance config someone wrote by hand
        path.write_text(INSTANCE_CONFIG)
    return path


class _Stop(Exception):
    """SIGINT, SIGTERM or SIGHUP arrived: stop dagster dev and the sandbox."""


def _raise_stop(signum: int, _frame: object) -> None:
    raise _Stop(signal.Signals(signum).name)


def _port_is_free(port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as both servers do
        try:
            probe.bind((HOST, port))
        except OSError:
            return False
    return True


def _wait_until_ready(url: str, ui: subprocess.Popen) -> bool:
    """True once the webserver answers; False if it exited or took too long."""
    deadline = time.monotonic() + READY_TIMEOUT_SECONDS
    while time.monotonic() < deadline and ui.poll() is None:
        try:
            with urllib.request.urlopen(f"{url}/server_info", timeout=2):
                return True
        except (urllib.error.URLError, OSError):
            time.sleep(0.5)
    return False


def _graphql(url: str, query: str) -> dict:
    request = urllib.request.Request(
        f"{url}/graphql",
        data=json.dumps({"query": query}).encode(),
        headers={"Content-Type": "application/json"},
    )
    with urllib.request.urlopen(request, timeout=10) as answer:
        return json.load(answer)["data"]


def automation_report(url: str, ui: subprocess.Popen, home: Path, data: Path) -> list[str]:
    """What the UI shows once the code location is loaded: its load error, or which of the
    schedule and sensors are running, with the command that turns them on or off."""
    deadline = time.monotonic() + LOCATION_TIMEOUT_SECONDS
    entries: list[dict] = []
    while time.monotonic() < deadline and ui.poll() is None:
        try:
            workspace = _graphql(url, AUTOMATION_QUERY)["workspaceOrError"]
            entries = workspace.get("locationEntries") or []
        except (urllib.error.URLError, OSError, ValueError, KeyError, TypeError):
            entries = []
        if entries and all(e["loadStatus"] == "LOADED" for e in entries):
            break
        time.sleep(0.5)
    states: list[str] = []
    for entry in entries:
        location = entry.get("locationOrLoadError") or {}
        if location.get("__typename") == "PythonError":
            message = location.get("message", "").strip()
            return [
                f"The code location {entry['name']} did not load:",
                *(f"  {line}" for line in message.splitlines()),
                "Fix what it names, then reload the location (UI: Deployment > Reload).",
            ]
        for repository in location.get("repositories") or []:
            for schedule in repository.get("schedules") or []:
                when = f"{schedule['cronSchedule']} {schedule.get('executionTimezone') or 'UTC'}"
                status = schedule["scheduleState"]["status"]
                states.append(f"  schedule {schedule['name']} ({when}): {status}")
            for sensor in repository.get("sensors") or []:
                states.append(f"  sensor {sensor['name']}: {sensor['sensorState']['status']}")
    if not states:
        return ["The code location has not loaded yet: see the UI's Deployment page."]
    return [
        "Schedules and sensors (as each one is now; a stop or start persists in DAGSTER_HOME):",
        *states,
        "  turn one off or on in the UI (Overview > Automation), or from a shell:",
        f"  DAGSTER_HOME={_shown_path(home)} {_shown_path(Path(sys.executable).parent)}/dagster "
        "{schedule|sensor} {stop|start} <name> -w workspace.yaml",
        f"Export requests: drop a JSON file into {_shown_path(data / 'requests')}/",
    ]


def _shown_path(path: Path) -> str:
    """A path relative to the repository when it is inside it (as the README writes them)."""
    try:
        return str(path.resolve().relative_to(REPO)) or "."
    except ValueError:
        return str(path)


def _stop(ui: subprocess.Popen) -> int:
    """SIGINT to dagster dev's process group (its clean shutdown), then SIGKILL if it hangs."""
    for signum in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):  # a second Ctrl+C: no effect
        signal.signal(signum, signal.SIG_IGN)
    if ui.poll() is None:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(ui.pid, signal.SIGINT)
        with contextlib.suppress(subprocess.TimeoutExpired):
            ui.wait(timeout=STOP_GRACE_SECONDS)
    # Whatever of the group is left (code server, webserver, daemon, run workers) goes too.
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(ui.pid, signal.SIGKILL)
    return ui.wait()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sandbox-port", type=int, default=4010)
    parser.add_argument("--ui-port", type=int, default=3000)
    parser.add_argument(
        "--init-home",
        action="store_true",
        help="only create DAGSTER_HOME and its dagster.yaml (telemetry off), then exit",
    )
    args = parser.parse_args(argv)
    home = Path(os.environ.get("DAGSTER_HOME") or REPO / ".dagster_home").resolve()
    if args.init_home:
        write_instance_config(home)
        return 0

    busy = [
        f"{name} port {port} is in use (choose another: make dev {var}=...)"
        for name, port, var in (
            ("sandbox", args.sandbox_port, "SANDBOX_PORT"),
            ("UI", args.ui_port, "UI_PORT"),
        )
        if not _port_is_free(port)
    ]
    if busy:
        print("\n".join(busy), file=sys.stderr)
        return 2

    write_instance_config(home)
    data = Settings.from_env().data_dir  # what the code location will read, from our environment
    state = home / "sandbox-sync-state"
    shutil.rmtree(state, ignore_errors=True)

    # Set explicitly: a shell that starts us in the background leaves SIGINT ignored.
    for signum in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
        signal.signal(signum, _raise_stop)
    try:
        lists = SandboxServer.lists_from_destinations_file(data / "destinations.yaml")
    except (OSError, ValueError, yaml.YAMLError) as error:  # the UI shows the config error
        first = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
        print(f"The sandbox starts with no lists: destinations.yaml is unreadable ({first}).")
        lists = {}
    sandbox = SandboxServer(
        api_key=SANDBOX_KEY, lists=lists, host=HOST, port=args.sandbox_port, job_delay_seconds=0.5
    )
    ui: subprocess.Popen | None = None
    try:
        sandbox.start()
        env = {
            **os.environ,
            "DAGSTER_HOME": str(home),
            "DAGSTER_DISABLE_TELEMETRY": "1",
            "SENDGRID_BASE_URL": sandbox.base_url,
            "SENDGRID_API_KEY": SANDBOX_KEY,
            "SENDGRID_POLL_INTERVAL_SECONDS": "0.2",
            "SENDGRID_PIPELINE_STATE_DIR": str(state),
        }
        ui_url = f"http://{HOST}:{args.ui_port}"
        print(f"SendGrid sandbox: {sandbox.base_url}  (API key: {SANDBOX_KEY})")
        print(f"Dagster UI:       {ui_url}  (DAGSTER_HOME={home})")
        print("Starting dagster dev; press Ctrl+C to stop both.", flush=True)
        # Its own process group, so a hang at shutdown can be ended with all its children.
        ui = subprocess.Popen(
            [
                *(sys.executable, "-m", "dagster", "dev"),
                *("-w", str(REPO / "workspace.yaml")),
                *("-h", HOST, "-p", str(args.ui_port)),
            ],
            cwd=REPO,
            env=env,
            start_new_session=True,
        )
        if _wait_until_ready(ui_url, ui):
            report = automation_report(ui_url, ui, home, data)
            print("\n".join(report), flush=True)
            print(f"Ready: open {ui_url}  (sandbox API key: {SANDBOX_KEY})", flush=True)
        elif ui.poll() is None:
            print(f"dagster dev has not answered in {READY_TIMEOUT_SECONDS}s; still waiting.")
        return ui.wait()
    except _Stop:
        return _stop(ui) if ui is not None else 130
    finally:
        if ui is not None and ui.poll() is None:
            _stop(ui)
        sandbox.stop()


if __name__ == "__main__":
    sys.exit(main())
