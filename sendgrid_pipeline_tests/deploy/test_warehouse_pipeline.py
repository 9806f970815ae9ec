"""The whole pipeline on profiles from a PostgreSQL table (needs `postgres_dsn`, see conftest.py).

The sample profiles (data/profiles/profiles.csv) are loaded into a table; an export from it
must give the sandbox the same lists as an export from the file, and the profile sensor must
request a refresh when the table changes, and only then. The source is passed to the
resources directly (no environment variable): profile_source.yaml's wiring is tested in
test_profile_source_config.py, and the dg.EnvVar in a run in test_warehouse_source.py.
"""

from __future__ import annotations

import re
import shutil
from dataclasses import replace
from pathlib import Path
from typing import Any

import dagster as dg
import psycopg2
import pytest

from sendgrid_pipeline.config import load_config
from sendgrid_pipeline.errors import ConfigError
from sendgrid_pipeline.pipeline import build_definitions, load_validated_config
from sendgrid_pipeline.warehouse import SqlProfileSource
from sendgrid_pipeline_tests.devkit.sample_data import read_profiles_csv
from sendgrid_pipeline_tests.devkit.sandbox import SandboxServer
from sendgrid_pipeline_tests.helpers import export, resources_for, step_failure_messages

SENSOR = "profile_source_changed_sensor"
# Differ from one sync to the next whatever the profiles: ids and times the sandbox sets.
VOLATILE = {"id", "created_at", "updated_at", "_metadata"}


def _execute(dsn: str, *statements: str) -> None:
    connection = psycopg2.connect(dsn)
    connection.autocommit = True
    try:
        with connection.cursor() as cursor:
            for statement in statements:
                cursor.execute(statement)
    finally:
        connection.close()


@pytest.fixture
def warehouse(postgres_dsn: str, data_dir: Path) -> SqlProfileSource:
    """The sample profiles in table analytics.unified_profiles, as a profile source."""
    _execute(postgres_dsn, "CREATE SCHEMA analytics")
    profiles = read_profiles_csv(data_dir / "profiles" / "profiles.csv")
    profiles.write_database(
        "analytics.unified_profiles", postgres_dsn, engine="adbc", if_table_exists="replace"
    )
    return SqlProfileSource(
        uri=postgres_dsn, table="analytics.unified_profiles", updated_at_column="updated_at"
    )


def lists_on(sandbox: SandboxServer, data_dir: Path) -> dict[str, dict[str, dict[str, Any]]]:
    """Each destination's list: email -> the contact's fields (ids and times left out)."""
    lists = {}
    for destination in load_config(data_dir).destinations:
        members = {}
        for email in sandbox.list_member_emails(destination.list_id):
            contact = sandbox.contact(email) or {}
            members[email] = {k: v for k, v in contact.items() if k not in VOLATILE}
        lists[destination.name] = members
    return lists


def test_an_export_from_the_table_gives_the_same_lists_as_the_files(
    data_dir: Path, sandbox: SandboxServer, warehouse: SqlProfileSource, tmp_path: Path
) -> None:
    from_files = export(data_dir, sandbox)
    assert from_files.success, step_failure_messages(from_files)
    expected = lists_on(sandbox, data_dir)
    assert all(expected.values())

    # A second data directory without any profile file: its profiles can only be the table's.
    other = tmp_path / "warehouse_data"
    shutil.copytree(data_dir, other, ignore=shutil.ignore_patterns("state", "storage"))
    shutil.rmtree(other / "profiles")
    config = load_validated_config(other, profile_source=warehouse)  # checked on its columns
    lists = SandboxServer.lists_from_destinations_file(other / "destinations.yaml")
    with SandboxServer(lists=lists, job_delay_seconds=0.02) as second:
        resources = replace(resources_for(other, second), profile_source=warehouse)
        dg.Definitions.validate_loadable(build_definitions(config, resources))
        run = export(other, second, resources=resources)
        assert run.success, step_failure_messages(run)
        assert lists_on(second, other) == expected

    events = [
        e.materialization
        for e in run.get_asset_materialization_events()
        if e.materialization.asset_key == dg.AssetKey("unified_profiles")
    ]
    # one read, recorded on each destination's partition with the same figures
    assert sorted(e.partition for e in events) == sorted(config.destination_names)
    event = events[0]
    metadata = event.metadata
    assert metadata["source"].value.startswith("table analytics.unified_profiles on postgresql://")
    assert metadata["origins"].value == "table analytics.unified_profiles"
    assert metadata["dagster/row_count"].value == 3000


def test_the_config_is_checked_against_the_table_columns(
    data_dir: Path, warehouse: SqlProfileSource
) -> None:
    _execute(
        str(warehouse.uri),
        "ALTER TABLE analytics.unified_profiles RENAME COLUMN loyalty_tier TO tier",
    )
    with pytest.raises(ConfigError) as error:
        load_validated_config(data_dir, profile_source=warehouse)
    message = str(error.value)
    assert "the profiles in table analytics.unified_profiles on postgresql://" in message
    assert "loyalty_tier" in message and "tier" in message


def test_duplicate_ids_in_the_table_name_its_rows(
    data_dir: Path, warehouse: SqlProfileSource
) -> None:
    query = (
        "SELECT * FROM analytics.unified_profiles UNION ALL "
        "SELECT * FROM analytics.unified_profiles WHERE customer_id = 'C0000002'"
    )
    source = SqlProfileSource(uri=str(warehouse.uri), query=query)
    result = export(
        data_dir, None, resources=replace(resources_for(data_dir), profile_source=source)
    )  # type: ignore[arg-type]
    assert not result.success
    message = step_failure_messages(result)
    assert "customer_id must be present and unique (1 id on several rows" in message
    assert re.search(r"'C0000002' in query row \d+ and query row \d+", message)
    assert "rows are numbered in the order the query returns them" in message


def test_the_sensor_fires_when_the_table_changes_and_only_then(
    data_dir: Path, warehouse: SqlProfileSource
) -> None:
    sensor = build_definitions(
        load_validated_config(data_dir, profile_source=warehouse),
        replace(resources_for(data_dir), profile_source=warehouse),
    ).resolve_sensor_def(SENSOR)

    def tick(cursor: str | None) -> dg.SensorResult:
        context = dg.build_sensor_context(cursor=cursor, resources={"profile_source": warehouse})
        return sensor.evaluate_tick(context)

    baseline = tick(None)
    assert not baseline.run_requests
    cursor = baseline.cursor
    assert cursor and (baseline.skip_message or "").startswith("baseline recorded")

    unchanged = tick(cursor)
    assert not unchanged.run_requests
    assert unchanged.skip_message == "profiles unchanged"

    _execute(
        str(warehouse.uri),
        "UPDATE analytics.unified_profiles SET city = 'Lyon', updated_at = now() "
        "WHERE customer_id = 'C0000001'",
    )
    changed = tick(cursor)
    [request] = changed.run_requests
    assert request.tags["sendgrid/trigger"] == "profiles"
    assert changed.cursor != cursor
    cursor = changed.cursor

    assert tick(cursor).skip_message == "profiles unchanged"  # nothing since

    _execute(
        str(warehouse.uri),
        "DELETE FROM analytics.unified_profiles WHERE customer_id = 'C0000003'",
    )
    deleted = tick(cursor)
    assert len(deleted.run_requests) == 1
    assert deleted.cursor != cursor
    assert tick(deleted.cursor).skip_message == "profiles unchanged"


def test_reading_the_table_or_maintaining_it_changes_no_fingerprint(
    warehouse: SqlProfileSource,
) -> None:
    """The export's own read, or maintenance that changes no row, requests no refresh."""
    fingerprint = warehouse.fingerprint()
    assert warehouse.read(set()).height == 3000
    _execute(str(warehouse.uri), "VACUUM ANALYZE analytics.unified_profiles")
    assert warehouse.fingerprint() == fingerprint
