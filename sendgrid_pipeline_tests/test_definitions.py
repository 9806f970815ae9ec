"""The code location loads with what the README promises; one real CLI run materializes.

The definitions are checked in process (as `dg check defs` and `dagster definitions validate`
load them); only one test starts the Dagster CLI, and gives it its settings as a process
environment.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import dagster as dg
import pytest

from sendgrid_pipeline import definitions as location
from sendgrid_pipeline.errors import ConfigError
from sendgrid_pipeline.pipeline import EXPORT_JOB, load_validated_config
from sendgrid_pipeline.sendgrid.resource import SendGridResource
from sendgrid_pipeline.settings import Settings
from sendgrid_pipeline_tests.devkit.dev import write_instance_config
from sendgrid_pipeline_tests.helpers import definitions

REPO = Path(__file__).resolve().parents[1]
ASSETS = [
    "segment_membership",
    "sendgrid_contacts",
    "sendgrid_erasures",
    "sendgrid_list_sync",
    "sendgrid_unsubscribes",
    "unified_profiles",
]


def test_definitions_hold_the_assets_checks_job_schedule_and_sensors(data_dir) -> None:
    defs = definitions(data_dir)
    keys = sorted(k.to_user_string() for k in defs.resolve_all_asset_keys())
    assert keys == ASSETS
    graph = defs.resolve_asset_graph()
    contacts = graph.get(dg.AssetKey("sendgrid_contacts"))
    assert contacts.partitions_def.get_partition_keys() == [
        "newsletter_eu",
        "vip_program",
        "winback_campaign",
    ]
    for root in ("unified_profiles", "segment_membership"):  # so one run holds every asset
        assert graph.get(dg.AssetKey(root)).partitions_def == contacts.partitions_def
    checks = {k.name for k in graph.asset_check_keys}
    assert checks >= {"sendgrid_contacts_email_valid", "sendgrid_contacts_within_profile_cap"}
    assert defs.resolve_job_def(EXPORT_JOB) is not None
    assert defs.resolve_schedule_def("sendgrid_refresh_schedule").cron_schedule == "0 6 * * *"
    assert {s.name for s in defs.sensors} == {
        "profile_source_changed_sensor",
        "export_request_sensor",
        "erasure_request_sensor",
    }
    for key in graph.get_all_asset_keys():
        node = graph.get(key)
        assert node.description and node.owners == ["team:data-engineering"]
        consent = key.to_user_string() == "sendgrid_unsubscribes"  # its own job, not the export
        erasures = key.to_user_string() == "sendgrid_erasures"  # its own job and sensor
        group = "sendgrid_compliance" if erasures else "sendgrid_export"
        assert node.group_name == ("sendgrid_consent" if consent else group)


def test_every_setting_comes_from_its_documented_variable(tmp_path: Path) -> None:
    settings = Settings.from_env(
        {
            "SENDGRID_PIPELINE_DATA_DIR": str(tmp_path / "data"),
            "SENDGRID_PIPELINE_STATE_DIR": str(tmp_path / "state"),
            "SENDGRID_PIPELINE_STORAGE_DIR": str(tmp_path / "storage"),
            "SENDGRID_BASE_URL": "https://api.eu.sendgrid.com",
            "SENDGRID_POLL_INTERVAL_SECONDS": "0.5",
            "SENDGRID_REFRESH_CRON": "30 2 * * 1",
            "SENDGRID_REFRESH_TIMEZONE": "Europe/Paris",
            "SENDGRID_API_KEY": "SG.never-read-into-the-settings",
        }
    )
    assert settings == Settings(
        data_dir=tmp_path / "data",
        state_dir=tmp_path / "state",
        storage_dir=tmp_path / "storage",
        sendgrid_base_url="https://api.eu.sendgrid.com",
        poll_interval_seconds=0.5,
        refresh_cron="30 2 * * 1",
        refresh_timezone="Europe/Paris",
    )
    assert "never-read" not in repr(settings)


def test_unset_or_empty_variables_give_the_documented_defaults() -> None:
    for environ in ({}, dict.fromkeys(("SENDGRID_PIPELINE_DATA_DIR", "SENDGRID_BASE_URL"), "")):
        settings = Settings.from_env(environ)
        assert settings.data_dir == REPO / "data"
        assert settings.state_dir == REPO / "data" / "state"
        assert settings.storage_dir == str(REPO / "data" / "storage")
        assert settings.sendgrid_base_url == "https://api.sendgrid.com"
        assert settings.poll_interval_seconds == 1.0
        assert (settings.refresh_cron, settings.refresh_timezone) == ("0 6 * * *", "UTC")


def test_a_poll_interval_that_is_not_a_number_names_the_variable() -> None:
    with pytest.raises(ConfigError, match="SENDGRID_POLL_INTERVAL_SECONDS='soon'"):
        Settings.from_env({"SENDGRID_POLL_INTERVAL_SECONDS": "soon"})


def test_the_code_location_wires_the_settings_and_keeps_the_key_an_env_var(data_dir) -> None:
    settings = Settings(
        data_dir=data_dir,
        storage_dir=data_dir / "elsewhere",
        sendgrid_base_url="https://api.eu.sendgrid.com",
        refresh_cron="30 2 * * 1",
        refresh_timezone="Europe/Paris",
    )
    defs = location.location_definitions(settings)
    dg.Definitions.validate_loadable(defs)
    schedule = defs.resolve_schedule_def("sendgrid_refresh_schedule")
    assert (schedule.cron_schedule, schedule.execution_timezone) == ("30 2 * * 1", "Europe/Paris")
    resources = defs.resources
    sendgrid = resources["sendgrid"]
    assert isinstance(sendgrid, SendGridResource)
    assert sendgrid.base_url == "https://api.eu.sendgrid.com"
    assert sendgrid.api_key == dg.EnvVar("SENDGRID_API_KEY")  # resolved per run, never stored
    assert resources["sync_state"].directory == str(data_dir / "state")
    assert resources["io_manager"].base_dir == str(data_dir / "elsewhere")
    assert resources["profile_source"].directory == str(data_dir / "profiles")


def test_the_module_is_lazy_definitions_that_load_in_process() -> None:
    """What `dagster dev -m`, `dagster job execute -m` and `dg check defs` load."""
    assert not isinstance(location.defs, dg.Definitions)  # nothing is built at import
    defs = location.defs()  # the environment's settings: here, the repository's data/
    dg.Definitions.validate_loadable(defs)
    repository = defs.get_repository_def()
    assert sorted(k.to_user_string() for k in repository.asset_graph.get_all_asset_keys()) == (
        ASSETS
    )
    assert sorted(s.name for s in repository.schedule_defs) == [
        "sendgrid_refresh_schedule",
        "sendgrid_unsubscribes_schedule",
    ]
    assert {s.name for s in repository.sensor_defs} == {
        "profile_source_changed_sensor",
        "export_request_sensor",
        "erasure_request_sensor",
    }


def test_the_cli_materializes_one_destination(tmp_path, data_dir, sandbox) -> None:
    """The one real CLI run: settings and key through the process environment, as deployed."""
    home = tmp_path / "dagster_home"
    write_instance_config(home)
    env = {
        **os.environ,
        "DAGSTER_HOME": str(home),
        "DAGSTER_DISABLE_TELEMETRY": "1",
        "SENDGRID_PIPELINE_DATA_DIR": str(data_dir),
        "SENDGRID_BASE_URL": sandbox.base_url,
        "SENDGRID_API_KEY": sandbox.api_key,
        "SENDGRID_POLL_INTERVAL_SECONDS": "0.02",
    }
    command = [
        *(sys.executable, "-m", "dagster", "asset", "materialize"),
        *("-m", "sendgrid_pipeline.definitions", "--select", "group:sendgrid_export"),
        *("--partition", "vip_program"),
    ]
    done = subprocess.run(command, cwd=REPO, env=env, capture_output=True, text=True, timeout=180)
    output = done.stdout + done.stderr
    assert done.returncode == 0, output
    assert "RUN_SUCCESS" in output
    for compliance in ("sendgrid_unsubscribes", "sendgrid_erasures"):  # groups of their own
        assert f'"{compliance}"' not in output
    list_id = load_validated_config(data_dir).destination("vip_program").list_id
    assert len(sandbox.list_member_emails(list_id)) > 100
    assert (data_dir / "state" / "sync_state.sqlite").is_file()  # the default: <data dir>/state


def test_a_process_that_loaded_the_location_exits_without_walking_its_objects() -> None:
    """Every run process loads the location; at exit the collector's final passes over
    Dagster's and pandas' objects are skipped (gc.freeze), and the process still exits 0."""
    import subprocess
    import sys

    probe = (
        "import atexit, gc\n"
        "atexit.register(lambda: print('frozen at exit:', gc.get_freeze_count() > 0))\n"
        "import sendgrid_pipeline.definitions\n"
        "print('frozen before exit:', gc.get_freeze_count() > 0)\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", probe], capture_output=True, text=True, timeout=120, check=True
    )
    assert done.stdout.splitlines() == ["frozen before exit: False", "frozen at exit: True"]
