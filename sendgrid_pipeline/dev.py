"""`make dev`: the SendGrid sandbox and the Dagster UI together, on loopback.

Run history persists in DAGSTER_HOME (.dagster_home in the repository). The sandbox keeps no
data between starts, so its sync state lives beside it and is cleared on every start.
"""

from __future__ import annotations

import argparse
import os
import shutil
import signal
import subprocess
import sys
from pathlib import Path

from sendgrid_pipeline.config import data_dir
from sendgrid_pipeline.sandbox import SandboxServer

REPO = Path(__file__).resolve().parents[1]
SANDBOX_KEY = "SG.sandbox-local-dev-key"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sandbox-port", type=int, default=4010)
    parser.add_argument("--ui-port", type=int, default=3000)
    args = parser.parse_args(argv)

    home = Path(os.environ.get("DAGSTER_HOME") or REPO / ".dagster_home").resolve()
    home.mkdir(parents=True, exist_ok=True)
    (home / "dagster.yaml").write_text("telemetry:\n  enabled: false\n")
    state = home / "sandbox-sync-state"
    shutil.rmtree(state, ignore_errors=True)

    lists = SandboxServer.lists_from_destinations_file(data_dir() / "destinations.yaml")
    sandbox = SandboxServer(
        api_key=SANDBOX_KEY, lists=lists, port=args.sandbox_port, job_delay_seconds=0.5
    ).start()
    env = {
        **os.environ,
        "DAGSTER_HOME": str(home),
        "DAGSTER_DISABLE_TELEMETRY": "1",
        "SENDGRID_BASE_URL": sandbox.base_url,
        "SENDGRID_API_KEY": SANDBOX_KEY,
        "SENDGRID_POLL_INTERVAL_SECONDS": "0.2",
        "SENDGRID_PIPELINE_STATE_DIR": str(state),
    }
    print(f"SendGrid sandbox: {sandbox.base_url}  (API key: {SANDBOX_KEY})")
    print(f"Dagster UI:       http://127.0.0.1:{args.ui_port}  (DAGSTER_HOME={home})")
    print("Press Ctrl+C to stop both.", flush=True)
    ui = subprocess.Popen(
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
            str(args.ui_port),
        ],
        cwd=REPO,
        env=env,
    )
    try:
        return ui.wait()
    except KeyboardInterrupt:
        ui.send_signal(signal.SIGINT)
        return ui.wait()
    finally:
        sandbox.stop()


if __name__ == "__main__":
    sys.exit(main())
