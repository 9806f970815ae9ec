"""`make dev`: the SendGrid sandbox and the Dagster UI together, on loopback.

Run history persists in DAGSTER_HOME (.dagster_home in the repository). The sandbox keeps no
data between starts, so its sync state lives beside it and is cleared on every start.
"""

from __future__ import annotations

import argparse
import contextlib
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

from sendgrid_pipeline.config import data_dir
from sendgrid_pipeline.sandbox import SandboxServer

REPO = Path(__file__).resolve().parents[1]
SANDBOX_KEY = "SG.sandbox-local-dev-key"
HOST = "127.0.0.1"
READY_TIMEOUT_SECONDS = 180
STOP_GRACE_SECONDS = 30


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
    args = parser.parse_args(argv)

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

    home = Path(os.environ.get("DAGSTER_HOME") or REPO / ".dagster_home").resolve()
    home.mkdir(parents=True, exist_ok=True)
    instance_yaml = home / "dagster.yaml"
    if not instance_yaml.exists():  # keep an instance config someone wrote by hand
        instance_yaml.write_text("telemetry:\n  enabled: false\n")
    state = home / "sandbox-sync-state"
    shutil.rmtree(state, ignore_errors=True)

    # Set explicitly: a shell that starts us in the background leaves SIGINT ignored.
    for signum in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
        signal.signal(signum, _raise_stop)
    lists = SandboxServer.lists_from_destinations_file(data_dir() / "destinations.yaml")
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
