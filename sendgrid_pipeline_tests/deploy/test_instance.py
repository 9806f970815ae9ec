"""deploy/dagster.yaml works as shipped: a real CLI run on a PostgreSQL-backed instance."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path
from urllib.parse import urlsplit

from sendgrid_pipeline.config import load_config
from sendgrid_pipeline.schedules import refresh_all_tags

REPO = Path(__file__).resolve().parents[2]


def instance_env(home: Path, dsn: str) -> dict[str, str]:
    """The variables deploy/dagster.yaml reads, for a PostgreSQL database named by `dsn`."""
    shutil.copy(REPO / "deploy" / "dagster.yaml", home / "dagster.yaml")
    url = urlsplit(dsn)
    return {
        "DAGSTER_HOME": str(home),
        "DAGSTER_POSTGRES_HOST": url.hostname or "",
        "DAGSTER_POSTGRES_PORT": str(url.port or 5432),
        "DAGSTER_POSTGRES_USER": url.username or "",
        "DAGSTER_POSTGRES_PASSWORD": url.password or "",
        "DAGSTER_POSTGRES_DB": url.path.lstrip("/"),
    }


def test_a_cli_run_on_the_deployment_instance_materializes_every_destination(
    tmp_path, postgres_dsn, data_dir, sandbox
) -> None:
    home = tmp_path / "dagster_home"
    home.mkdir()
    env = {
        **os.environ,
        **instance_env(home, postgres_dsn),
        "DAGSTER_DISABLE_TELEMETRY": "1",
        "SENDGRID_PIPELINE_DATA_DIR": str(data_dir),
        "SENDGRID_PIPELINE_STATE_DIR": str(tmp_path / "state"),
        "SENDGRID_PIPELINE_STORAGE_DIR": str(tmp_path / "storage"),
        "SENDGRID_BASE_URL": sandbox.base_url,
        "SENDGRID_API_KEY": sandbox.api_key,
        "SENDGRID_POLL_INTERVAL_SECONDS": "0.02",
    }
    destinations = load_config(data_dir).destination_names
    tags = json.dumps(refresh_all_tags(destinations))  # one run over every destination
    command = ["job", "execute", "-m", "sendgrid_pipeline.definitions", "-j", "sendgrid_export_job"]
    done = subprocess.run(
        [sys.executable, "-m", "dagster", *command, "--tags", tags],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]

    # What the instance recorded, read back through the same deployment configuration.
    report = subprocess.run(
        [sys.executable, "-c", READ_BACK],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert report.returncode == 0, report.stderr[-3000:]
    storage, materialized = report.stdout.strip().splitlines()
    assert storage == "PostgresRunStorage"
    assert materialized.split(",") == sorted(destinations)


READ_BACK = """
import dagster as dg
instance = dg.DagsterInstance.get()
print(type(instance.run_storage).__name__)
print(",".join(sorted(instance.get_materialized_partitions(dg.AssetKey("sendgrid_list_sync")))))
"""
