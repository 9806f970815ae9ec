"""The code location loads, and the Dagster CLI sees what the README promises."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import dagster as dg
import pytest

from sendgrid_pipeline.pipeline import EXPORT_JOB, build_definitions, load_validated_config

REPO = Path(__file__).resolve().parents[1]
ASSETS = ["segment_membership", "sendgrid_contacts", "sendgrid_list_sync", "unified_profiles"]


def test_definitions_hold_the_assets_checks_job_schedule_and_sensors(data_dir) -> None:
    defs = build_definitions(load_validated_config(data_dir))
    keys = sorted(k.to_user_string() for k in defs.resolve_all_asset_keys())
    assert keys == ASSETS
    graph = defs.resolve_asset_graph()
    contacts = graph.get(dg.AssetKey("sendgrid_contacts"))
    assert contacts.partitions_def.get_partition_keys() == [
        "newsletter_eu",
        "vip_program",
        "winback_campaign",
    ]
    checks = {k.name for k in graph.asset_check_keys}
    assert checks >= {"sendgrid_contacts_email_valid", "sendgrid_contacts_within_profile_cap"}
    assert defs.resolve_job_def(EXPORT_JOB) is not None
    assert defs.resolve_schedule_def("sendgrid_refresh_schedule").cron_schedule == "0 6 * * *"
    assert {s.name for s in defs.sensors} == {
        "profile_source_changed_sensor",
        "export_request_sensor",
    }
    for key in graph.get_all_asset_keys():
        node = graph.get(key)
        assert node.description and node.owners == ["team:data-engineering"]
        assert node.group_name == "sendgrid_export"


def test_schedule_cron_and_timezone_come_from_the_environment(data_dir, monkeypatch) -> None:
    monkeypatch.setenv("SENDGRID_REFRESH_CRON", "30 2 * * 1")
    monkeypatch.setenv("SENDGRID_REFRESH_TIMEZONE", "Europe/Paris")
    schedule = build_definitions(load_validated_config(data_dir)).resolve_schedule_def(
        "sendgrid_refresh_schedule"
    )
    assert schedule.cron_schedule == "30 2 * * 1"
    assert schedule.execution_timezone == "Europe/Paris"


@pytest.fixture(scope="module")
def cli_env(tmp_path_factory) -> dict[str, str]:
    home = tmp_path_factory.mktemp("dagster_home")
    (home / "dagster.yaml").write_text("telemetry:\n  enabled: false\n")
    return {**os.environ, "DAGSTER_HOME": str(home), "DAGSTER_DISABLE_TELEMETRY": "1"}


def dagster(cli_env: dict[str, str], *args: str) -> str:
    command = [sys.executable, "-m", "dagster", *args]
    done = subprocess.run(
        command, cwd=REPO, env=cli_env, capture_output=True, text=True, timeout=180
    )
    assert done.returncode == 0, done.stdout + done.stderr
    return done.stdout + done.stderr


def test_cli_lists_the_four_assets(cli_env) -> None:
    output = dagster(cli_env, "asset", "list", "-m", "sendgrid_pipeline.definitions")
    assert [line for line in output.splitlines() if line in ASSETS] == ASSETS


def test_cli_validates_the_workspace(cli_env) -> None:
    output = dagster(cli_env, "definitions", "validate", "-w", "workspace.yaml")
    assert "All code locations passed validation" in output


def test_cli_lists_the_schedule_and_the_sensors(cli_env) -> None:
    assert "sendgrid_refresh_schedule" in dagster(
        cli_env, "schedule", "list", "-w", "workspace.yaml"
    )
    sensors = dagster(cli_env, "sensor", "list", "-w", "workspace.yaml")
    assert "profile_source_changed_sensor" in sensors and "export_request_sensor" in sensors


def test_cli_materializes_one_destination(cli_env, data_dir, sandbox) -> None:
    env = {**cli_env, **{k: v for k, v in os.environ.items() if k.startswith("SENDGRID_")}}
    output = dagster(
        env,
        "asset",
        "materialize",
        "-m",
        "sendgrid_pipeline.definitions",
        "--select",
        "*",
        "--partition",
        "vip_program",
    )
    assert "RUN_SUCCESS" in output
    list_id = load_validated_config(data_dir).destination("vip_program").list_id
    assert len(sandbox.list_member_emails(list_id)) > 100
