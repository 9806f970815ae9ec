"""<data dir>/profile_source.yaml: which profile source the pipeline reads, checked at load time.

No database here: a warehouse that cannot be reached (or whose URI variable is not set) must
still let the code location load. The exports from a PostgreSQL table are in
deploy/test_warehouse_pipeline.py.
"""

from __future__ import annotations

import logging
from dataclasses import replace
from pathlib import Path

import dagster as dg
import pytest

from sendgrid_pipeline.config import load_config
from sendgrid_pipeline.definitions import location_definitions
from sendgrid_pipeline.delta_source import DeltaProfileSource
from sendgrid_pipeline.errors import ConfigError
from sendgrid_pipeline.pipeline import (
    build_definitions,
    configured_profile_source,
    load_validated_config,
)
from sendgrid_pipeline.profile_source import FileProfileSource, ProfileSource
from sendgrid_pipeline.settings import Settings
from sendgrid_pipeline.warehouse import SqlProfileSource
from sendgrid_pipeline_tests.helpers import export, resources_for, step_failure_messages

URI_ENV = "SENDGRID_PIPELINE_TEST_PROFILE_DB_URI_NEVER_SET"  # no test sets it
# Nothing listens on port 1 of loopback: the connection is refused at once.
UNREACHABLE = "postgresql://reader:Sup3rSecretPw@127.0.0.1:1/warehouse"

SQL_SOURCE = f"""\
# where the profiles come from
profile_source:
  kind: sql
  uri_env: {URI_ENV}
  table: analytics.unified_profiles
  updated_at_column: updated_at
  engine: adbc
"""


def write_source(data_dir: Path, text: str) -> Path:
    path = data_dir / "profile_source.yaml"
    path.write_text(text)
    return path


def config_error(data_dir: Path, text: str) -> str:
    path = write_source(data_dir, text)
    with pytest.raises(ConfigError) as error:
        load_config(data_dir)
    message = str(error.value)
    assert str(path) in message
    return message


# -- parsing ---------------------------------------------------------------------------------------
def test_without_the_file_the_profile_files_are_the_source(data_dir: Path) -> None:
    config = load_config(data_dir)
    assert config.profile_source.kind == "files"
    source = configured_profile_source(config)
    assert isinstance(source, FileProfileSource)
    assert source.directory == str(data_dir / "profiles")


def test_kind_files_is_the_files(data_dir: Path) -> None:
    write_source(data_dir, "profile_source:\n  kind: files\n")
    assert isinstance(configured_profile_source(load_config(data_dir)), FileProfileSource)


def test_a_sql_source_holds_the_variable_name_never_a_uri(data_dir: Path) -> None:
    write_source(data_dir, SQL_SOURCE)
    config = load_config(data_dir)
    spec = config.profile_source
    assert (spec.kind, spec.uri_env, spec.table) == ("sql", URI_ENV, "analytics.unified_profiles")
    source = configured_profile_source(config)
    assert isinstance(source, SqlProfileSource)
    assert source.uri == dg.EnvVar(URI_ENV)  # resolved where it is used, never stored
    assert (source.table, source.updated_at_column, source.engine) == (
        "analytics.unified_profiles",
        "updated_at",
        "adbc",
    )


def test_a_sql_query_source(data_dir: Path) -> None:
    write_source(
        data_dir,
        f"profile_source:\n  kind: sql\n  uri_env: {URI_ENV}\n  query: |\n"
        "    SELECT * FROM crm.customers\n    WHERE NOT deleted\n  connect_timeout: 3\n",
    )
    source = configured_profile_source(load_config(data_dir))
    assert isinstance(source, SqlProfileSource)
    assert source.query == "SELECT * FROM crm.customers\nWHERE NOT deleted\n"
    assert (source.table, source.connect_timeout) == (None, 3)


def test_a_delta_source_relative_to_the_data_directory(data_dir: Path) -> None:
    write_source(data_dir, "profile_source:\n  kind: delta\n  table_uri: lake/profiles\n")
    source = configured_profile_source(load_config(data_dir))
    assert isinstance(source, DeltaProfileSource)
    assert source.table_uri == str(data_dir / "lake" / "profiles")
    write_source(data_dir, "profile_source:\n  kind: delta\n  table_uri: s3://lake/profiles\n")
    source = configured_profile_source(load_config(data_dir))
    assert isinstance(source, DeltaProfileSource)
    assert source.table_uri == "s3://lake/profiles"


# -- errors: the file and line, the key, a near miss -----------------------------------------------
def test_an_unknown_key_names_its_line_and_a_near_miss(data_dir: Path) -> None:
    message = config_error(data_dir, SQL_SOURCE.replace("  table: analytics", "  tabel: analytics"))
    assert ":5: profile_source: unknown key 'tabel' (did you mean 'table'?)" in message


def test_a_misspelled_top_key(data_dir: Path) -> None:
    message = config_error(data_dir, "profile_sources:\n  kind: sql\n")
    assert "expected a top-level 'profile_source:' mapping" in message
    assert "did you mean 'profile_source:'?" in message


def test_another_top_level_key_is_refused(data_dir: Path) -> None:
    message = config_error(data_dir, "profile_source:\n  kind: files\nkind: sql\n")
    assert ":3: unknown top-level key 'kind'" in message


def test_the_top_key_must_be_a_mapping(data_dir: Path) -> None:
    message = config_error(data_dir, "profile_source: sql\n")
    assert ":1: expected a top-level 'profile_source:' mapping" in message
    assert "not str" in message


def test_an_unknown_kind(data_dir: Path) -> None:
    message = config_error(data_dir, "profile_source:\n  kind: snowflake\n")
    assert ":2: profile_source: kind: Input should be 'files', 'sql' or 'delta'" in message


def test_a_key_of_another_kind(data_dir: Path) -> None:
    message = config_error(data_dir, SQL_SOURCE + "  table_uri: s3://lake/profiles\n")
    assert ":8: profile_source: key 'table_uri' is for kind delta, not sql" in message


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        (
            "profile_source:\n  kind: sql\n  table: profiles\n",
            ":2: profile_source: kind sql needs uri_env",
        ),
        (
            f"profile_source:\n  kind: sql\n  uri_env: {URI_ENV}\n",
            ":2: profile_source: kind sql needs exactly one of 'table' and 'query'",
        ),
        (
            f"profile_source:\n  kind: sql\n  uri_env: {URI_ENV}\n  table: a\n  query: SELECT 1\n",
            "kind sql needs exactly one of 'table' and 'query'",
        ),
        (
            "profile_source:\n  kind: delta\n",
            ":2: profile_source: kind delta needs table_uri",
        ),
        (
            f"profile_source:\n  kind: sql\n  uri_env: {URI_ENV}\n  table: 'profiles; DROP'\n",
            ":4: profile_source: table: 'profiles; DROP' is not a table name",
        ),
        (
            f"profile_source:\n  kind: sql\n  uri_env: {URI_ENV}\n  table: t\n  engine: odbc\n",
            ":5: profile_source: engine: Input should be 'adbc' or 'connectorx'",
        ),
        (
            "profile_source:\n  kind: sql\n  uri_env: my-uri\n  table: t\n",
            ":3: profile_source: uri_env: must be an environment variable name",
        ),
    ],
)
def test_what_each_kind_needs(data_dir: Path, text: str, expected: str) -> None:
    assert expected in config_error(data_dir, text)


def test_a_uri_in_uri_env_is_refused_and_never_echoed(data_dir: Path) -> None:
    message = config_error(
        data_dir,
        f"profile_source:\n  kind: sql\n  uri_env: {UNREACHABLE}\n  table: profiles\n",
    )
    assert ":3: profile_source: uri_env:" in message
    assert "NAME of the environment variable" in message
    assert "Sup3rSecretPw" not in message and "reader" not in message


def test_an_error_in_the_source_stops_loading_even_when_skipping_destinations(
    data_dir: Path,
) -> None:
    write_source(data_dir, "profile_source:\n  kind: delta\n")
    with pytest.raises(ConfigError, match="kind delta needs table_uri"):
        load_validated_config(data_dir, skip_invalid_destinations=True)


def test_malformed_yaml_names_the_line(data_dir: Path) -> None:
    message = config_error(data_dir, "profile_source:\n  kind: sql\n   table: [x\n")
    assert "malformed YAML" in message


# -- load time: an unreachable warehouse never stops the code location -----------------------------
def unreachable() -> SqlProfileSource:
    return SqlProfileSource(uri=UNREACHABLE, table="profiles", connect_timeout=2)


def test_an_unreachable_warehouse_loads_the_config_unchecked(
    data_dir: Path, caplog: pytest.LogCaptureFixture
) -> None:
    with caplog.at_level(logging.WARNING, logger="sendgrid_pipeline.pipeline"):
        config = load_validated_config(data_dir, profile_source=unreachable())
    assert config.destination_names == ["newsletter_eu", "vip_program", "winback_campaign"]
    [record] = [r for r in caplog.records if "not checked against the profile" in r.message]
    assert "table profiles on postgresql://reader:***@127.0.0.1:1/warehouse" in record.message
    assert "cannot connect" in record.message
    assert "Sup3rSecretPw" not in caplog.text


def test_an_unreachable_warehouse_still_loads_the_definitions(data_dir: Path) -> None:
    source = unreachable()
    config = load_validated_config(data_dir, profile_source=source)
    resources = replace(resources_for(data_dir), profile_source=source)
    defs = build_definitions(config, resources)
    dg.Definitions.validate_loadable(defs)
    assert defs.resolve_sensor_def("profile_source_changed_sensor")


def test_the_run_reports_the_unreachable_warehouse(data_dir: Path) -> None:
    resources = replace(resources_for(data_dir), profile_source=unreachable())
    result = export(data_dir, None, resources=resources)  # type: ignore[arg-type]
    assert not result.success
    messages = step_failure_messages(result)
    assert "table profiles on postgresql://reader:***@127.0.0.1:1/warehouse" in messages
    assert "Sup3rSecretPw" not in messages


def test_the_sensor_skips_while_the_warehouse_is_unreachable(data_dir: Path) -> None:
    sensor = build_definitions(
        load_validated_config(data_dir), resources_for(data_dir)
    ).resolve_sensor_def("profile_source_changed_sensor")
    context = dg.build_sensor_context(cursor="abc", resources={"profile_source": unreachable()})
    result = sensor.evaluate_tick(context)
    assert not result.run_requests
    assert "cannot connect" in (result.skip_message or "")
    assert "Sup3rSecretPw" not in (result.skip_message or "")


def test_the_code_location_loads_with_the_uri_variable_unset(
    data_dir: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """profile_source.yaml names a variable nobody set: the location loads, and says why the
    configuration is unchecked; the deployed resource keeps the variable for the run."""
    write_source(data_dir, SQL_SOURCE)
    with caplog.at_level(logging.WARNING, logger="sendgrid_pipeline.pipeline"):
        defs = location_definitions(Settings(data_dir=data_dir))
    dg.Definitions.validate_loadable(defs)
    source = defs.resources["profile_source"]
    assert isinstance(source, SqlProfileSource)
    assert isinstance(source, ProfileSource)
    assert source.uri == dg.EnvVar(URI_ENV)
    assert f"environment variable {URI_ENV}" in caplog.text
    assert "is not set" in caplog.text
