"""`make demo` and `make dev`: what they print, and what they leave behind.

The demo runs for real (its own sandbox, in a subprocess) with DAGSTER_HOME pointing where
`make dev` would keep its run history: afterwards that instance must hold nothing, so the UI
never shows partitions as materialized whose outputs and lists are gone.
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

import dagster as dg

from sendgrid_pipeline_tests.devkit.dev import INSTANCE_CONFIG, write_instance_config
from sendgrid_pipeline_tests.helpers import definitions
from sendgrid_pipeline_tests.ui.stack import free_port

REPO = Path(__file__).resolve().parents[1]
ASSETS = ["unified_profiles", "segment_membership", "sendgrid_contacts", "sendgrid_list_sync"]
DEMO_TIMEOUT = 300
DEV_READY_TIMEOUT = 180


def user_env(tmp_path: Path) -> dict[str, str]:
    """The environment `make` gives the demo: DAGSTER_HOME set, no SendGrid settings."""
    temp = tmp_path / "tmp"
    temp.mkdir(exist_ok=True)
    env = {k: v for k, v in os.environ.items() if not k.startswith("SENDGRID_")}
    return {
        **env,
        "DAGSTER_HOME": str(tmp_path / "dagster_home"),
        "DAGSTER_DISABLE_TELEMETRY": "1",
        "TMPDIR": str(temp),
        "PYTHONUNBUFFERED": "1",
    }


def run_demo(tmp_path: Path, data_dir: Path, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [
            sys.executable,
            "-m",
            "sendgrid_pipeline_tests.devkit.demo",
            "--data-dir",
            str(data_dir),
            *args,
        ],
        cwd=REPO,
        env=user_env(tmp_path),
        capture_output=True,
        text=True,
        timeout=DEMO_TIMEOUT,
    )


# -- make demo -------------------------------------------------------------------------------


def test_the_demo_leaves_the_dev_instance_empty_and_prints_stages_and_tables(
    tmp_path: Path, data_dir: Path
) -> None:
    done = run_demo(tmp_path, data_dir)
    assert done.returncode == 0, done.stdout + done.stderr
    out = done.stdout
    assert "Traceback" not in done.stderr

    # short: a line per stage and the tables, no Dagster log lines
    assert " - dagster - " not in out + done.stderr
    assert len(out.splitlines()) < 60, out
    for asset in ASSETS:
        assert re.search(rf"^  ok  {asset} ", out, re.MULTILINE), out
    assert out.count("destination       in segments") == 2
    assert "count contacts in the SendGrid account, not on the list" in out
    # the unchanged rerun only reads (list counts, the account's contact count): nothing sent
    assert re.search(r"The SendGrid sandbox saw \d+ requests, 0 upserts carrying 0 contacts\.", out)
    assert "make demo VERBOSE=1" in out

    # nothing written to the DAGSTER_HOME that `make dev` uses, no temporary folder left
    home = tmp_path / "dagster_home"
    assert not home.exists()
    assert list((tmp_path / "tmp").iterdir()) == []

    write_instance_config(home)
    with dg.DagsterInstance.from_config(str(home)) as instance:
        assert instance.get_runs() == []
        for asset in ASSETS:
            records = instance.fetch_materializations(dg.AssetKey(asset), limit=1).records
            assert records == [], asset


def test_the_demo_prints_dagster_logs_with_verbose(tmp_path: Path, data_dir: Path) -> None:
    done = run_demo(tmp_path, data_dir, "--verbose")
    assert done.returncode == 0, done.stdout + done.stderr
    logs = done.stdout + done.stderr
    assert " - dagster - INFO - sendgrid_export_job - " in logs
    assert "read 3000 profiles" in logs
    assert "count contacts in the SendGrid account, not on the list" in done.stdout
    assert not (tmp_path / "dagster_home").exists()


def test_the_demo_with_a_broken_config_prints_one_message_and_exits_2(
    tmp_path: Path, data_dir: Path
) -> None:
    path = data_dir / "destinations.yaml"
    path.write_text(path.read_text().replace("    profile_cap:", "    profle_cap:", 1))
    started = time.monotonic()
    done = run_demo(tmp_path, data_dir)
    assert done.returncode == 2
    assert "Traceback" not in done.stderr + done.stdout
    assert done.stderr.splitlines() == [
        f"The configuration in {data_dir} has errors; nothing was run:",
        f"{path}:27: destination 'newsletter_eu': unknown key 'profle_cap' "
        "(did you mean 'profile_cap'?)",
    ]
    assert "sandbox" not in done.stdout  # it stopped before starting anything
    assert time.monotonic() - started < 60
    assert not (tmp_path / "dagster_home").exists()


# -- make dev --------------------------------------------------------------------------------


def test_the_schedule_and_sensors_start_running_and_requests_has_a_folder(data_dir) -> None:
    shutil.rmtree(data_dir / "requests", ignore_errors=True)
    defs = definitions(data_dir)
    assert (data_dir / "requests").is_dir()  # where export requests go, there at load
    schedule = defs.resolve_schedule_def("sendgrid_refresh_schedule")
    assert schedule.default_status == dg.DefaultScheduleStatus.RUNNING
    assert "schedule stop sendgrid_refresh_schedule" in schedule.description
    for name in ("profile_source_changed_sensor", "export_request_sensor"):
        sensor = defs.resolve_sensor_def(name)
        assert sensor.default_status == dg.DefaultSensorStatus.RUNNING, name


def test_init_home_writes_the_instance_config_once_and_keeps_a_hand_written_one(
    tmp_path: Path,
) -> None:
    home = tmp_path / "home"
    command = [sys.executable, "-m", "sendgrid_pipeline_tests.devkit.dev", "--init-home"]
    env = {**os.environ, "DAGSTER_HOME": str(home)}
    subprocess.run(command, cwd=REPO, env=env, check=True, timeout=60)
    assert (home / "dagster.yaml").read_text() == INSTANCE_CONFIG
    (home / "dagster.yaml").write_text("# mine\ntelemetry:\n  enabled: false\n")
    subprocess.run(command, cwd=REPO, env=env, check=True, timeout=60)
    assert (home / "dagster.yaml").read_text().startswith("# mine")


def test_dev_with_a_broken_config_starts_and_prints_why_the_location_did_not_load(
    tmp_path: Path, data_dir: Path
) -> None:
    path = data_dir / "destinations.yaml"
    path.write_text(path.read_text().replace("    display_name:", "   display_name:", 1))
    log = tmp_path / "dev.log"
    env = {**user_env(tmp_path), "SENDGRID_PIPELINE_DATA_DIR": str(data_dir)}
    with log.open("wb") as out:
        dev = subprocess.Popen(
            [
                *(sys.executable, "-m", "sendgrid_pipeline_tests.devkit.dev"),
                *("--sandbox-port", str(free_port()), "--ui-port", str(free_port())),
            ],
            cwd=REPO,
            env=env,
            stdin=subprocess.DEVNULL,
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    try:
        deadline = time.monotonic() + DEV_READY_TIMEOUT
        while "Ready: open" not in log.read_text(errors="replace"):
            assert dev.poll() is None, f"dev exited {dev.returncode}:\n{log.read_text()}"
            assert time.monotonic() < deadline, f"not ready in time:\n{log.read_text()}"
            time.sleep(0.5)
        output = log.read_text(errors="replace")
        assert "The sandbox starts with no lists: destinations.yaml is unreadable" in output
        assert "The code location sendgrid_pipeline did not load:" in output
        assert re.search(rf"{re.escape(str(path))}:13:\d+: malformed YAML", output), output
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(dev.pid, signal.SIGINT)
        try:
            dev.wait(timeout=60)
        finally:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(dev.pid, signal.SIGKILL)
            with contextlib.suppress(subprocess.TimeoutExpired):
                dev.wait(timeout=10)


def test_the_makefile_writes_the_instance_config_through_the_one_helper() -> None:
    makefile = (REPO / "Makefile").read_text()
    assert "enabled: false" not in makefile
    assert "sendgrid_pipeline_tests.devkit.dev --init-home" in makefile
    assert "$(if $(filter 1 yes true,$(VERBOSE)),--verbose)" in makefile
