"""Profiles from a warehouse: a PostgreSQL query or table, and a Delta Lake table.

The SQL tests need a PostgreSQL server (`postgres_dsn`, see conftest.py: skipped without one,
required in CI); the Delta tests write their table under tmp_path and need no server.
"""

from __future__ import annotations

import datetime as dt
import os
import shutil
import socket
import subprocess
import sys
import uuid
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

import dagster as dg
import polars as pl
import psycopg2
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from polars.testing import assert_frame_equal

from sendgrid_pipeline.delta_source import DeltaProfileSource
from sendgrid_pipeline.errors import ProfileDataError
from sendgrid_pipeline.profile_source import FileProfileSource
from sendgrid_pipeline.warehouse import SqlProfileSource, mask_uri
from sendgrid_pipeline_tests.devkit.sample_data import (
    CSV_SCHEMA_OVERRIDES,
    generate_profiles,
    read_profiles_csv,
)

REPO = Path(__file__).resolve().parents[2]
SAMPLE_DIR = REPO / "data" / "profiles"
# Text the config maps: postal codes keep their leading zeros; orders_count shows a number
# column read as text, exactly as stored.
TEXT_COLUMNS = {"postal_code", "email", "first_name", "city", "orders_count"}
PASSWORD = "s3cr@t:pw/Zq9"  # characters that need percent-encoding in a URI
ENCODED_PASSWORD = "s3cr%40t%3Apw%2FZq9"


def _with_password(dsn: str, password: str = ENCODED_PASSWORD) -> str:
    """The test server trusts loopback, so any password connects; it must never be shown."""
    parts = urlsplit(dsn)
    user, host = parts.netloc.rsplit("@", 1)
    return urlunsplit(parts._replace(netloc=f"{user}:{password}@{host}"))


def _execute(dsn: str, *statements: str) -> None:
    connection = psycopg2.connect(dsn)
    connection.autocommit = True
    try:
        with connection.cursor() as cursor:
            for statement in statements:
                cursor.execute(statement)
    finally:
        connection.close()


def _load(dsn: str, table: str, frame: pl.DataFrame) -> None:
    frame.write_database(table, dsn, engine="adbc", if_table_exists="replace")


def _assert_secret_free(text: str) -> None:
    for secret in (PASSWORD, ENCODED_PASSWORD, "s3cr", "Zq9"):
        assert secret not in text, text


@pytest.fixture
def sample() -> pl.DataFrame:
    return read_profiles_csv(SAMPLE_DIR / "profiles.csv")


@pytest.fixture
def loaded(postgres_dsn: str, sample: pl.DataFrame) -> str:
    """The database URL, with the sample profiles in table `profiles` (in file order)."""
    _load(postgres_dsn, "profiles", sample)
    return postgres_dsn


# -- the same profiles as the files ----------------------------------------------------------------
def test_table_reads_the_same_frame_as_the_files(loaded: str) -> None:
    files = FileProfileSource(directory=str(SAMPLE_DIR)).read(TEXT_COLUMNS)
    located = SqlProfileSource(uri=loaded, table="profiles").read_located(TEXT_COLUMNS)
    by_id = ["customer_id"]
    assert_frame_equal(located.frame.sort(by_id), files.sort(by_id))
    postal = located.frame["postal_code"]
    assert postal.str.starts_with("0").sum() > 0  # leading zeros kept, as stored
    assert located.frame["orders_count"].dtype == pl.String
    assert located.describe(11) == "table profiles row 12"


def test_query_reads_the_same_frame_as_the_files(loaded: str) -> None:
    files = FileProfileSource(directory=str(SAMPLE_DIR)).read(TEXT_COLUMNS)
    source = SqlProfileSource(
        uri=loaded, query="SELECT * FROM profiles ORDER BY customer_id -- newest first?\n;"
    )
    located = source.read_located(TEXT_COLUMNS)
    assert_frame_equal(located.frame, files.sort("customer_id"))
    assert located.describe(0) == "query row 1"
    assert located.origins == ("query",)
    with pytest.raises(IndexError):
        located.describe(located.frame.height)


def test_connectorx_engine_reads_the_same_frame(loaded: str) -> None:
    """The optional engine: connectorx returns Arrow through pyarrow, so both must be there."""
    pytest.importorskip("connectorx")
    pytest.importorskip("pyarrow")
    adbc = SqlProfileSource(uri=loaded, table="profiles")
    connectorx = SqlProfileSource(uri=loaded, table="profiles", engine="connectorx")
    frame = connectorx.read(TEXT_COLUMNS)
    assert_frame_equal(frame.sort("customer_id"), adbc.read(TEXT_COLUMNS).sort("customer_id"))
    assert frame.schema == connectorx.schema(TEXT_COLUMNS)


def test_schema_matches_the_files_and_the_read(loaded: str) -> None:
    source = SqlProfileSource(uri=loaded, table="profiles")
    files = FileProfileSource(directory=str(SAMPLE_DIR))
    assert source.schema(TEXT_COLUMNS) == files.schema(TEXT_COLUMNS)
    assert source.schema(TEXT_COLUMNS) == source.read(TEXT_COLUMNS).schema
    assert source.schema()["orders_count"] == pl.Int64  # only mapped columns become text
    assert source.schema()["customer_id"] == pl.String


def test_schema_reads_no_row(loaded: str) -> None:
    """LIMIT 0: the server plans the query but evaluates no row (the read would divide by 0)."""
    query = "SELECT customer_id, 1 / (orders_count - orders_count) AS boom FROM profiles"
    source = SqlProfileSource(uri=loaded, query=query)
    assert source.schema() == pl.Schema({"customer_id": pl.String, "boom": pl.Int64})
    with pytest.raises(ProfileDataError, match="division by zero"):
        source.read(set())


def test_types_become_the_files_types(postgres_dsn: str) -> None:
    """Narrow integers Int64, numeric Float64, other types their text; text columns cast."""
    query = """
        SELECT '00123'::varchar(10) AS customer_id, 7::int2 AS small, 8::int4 AS medium,
               2.50::numeric(6, 2) AS amount, 1.5::float4 AS ratio, 'x'::char(3) AS code,
               '1 day'::interval AS period, '{"a": 1}'::jsonb AS extra,
               'a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11'::uuid AS ref,
               42::int8 AS zip, '2026-01-02 03:04:05'::timestamp AS seen,
               NULL::text AS nothing
    """
    source = SqlProfileSource(uri=postgres_dsn, query=query)
    frame = source.read({"zip"})
    assert frame.schema == source.schema({"zip"})
    assert frame.row(0, named=True) == {
        "customer_id": "00123",
        "small": 7,
        "medium": 8,
        "amount": 2.5,
        "ratio": 1.5,
        "code": "x",  # char(n) as text drops its padding, as PostgreSQL does
        "period": "1 day",
        "extra": '{"a": 1}',
        "ref": "a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11",
        "zip": "42",
        "seen": dt.datetime(2026, 1, 2, 3, 4, 5),
        "nothing": None,
    }
    assert frame.schema["small"] == pl.Int64 and frame.schema["amount"] == pl.Float64


def test_an_empty_result_has_the_schema(loaded: str) -> None:
    source = SqlProfileSource(uri=loaded, query="SELECT * FROM profiles WHERE false")
    frame = source.read(TEXT_COLUMNS)
    assert frame.height == 0 and frame.schema == source.schema(TEXT_COLUMNS)


# -- the change fingerprint ------------------------------------------------------------------------
@pytest.mark.parametrize("updated_at_column", [None, "updated_at"])
def test_fingerprint_changes_on_insert_update_delete_only(
    loaded: str, updated_at_column: str | None
) -> None:
    source = SqlProfileSource(uri=loaded, table="profiles", updated_at_column=updated_at_column)
    seen = [source.fingerprint()]
    assert source.fingerprint() == seen[-1]  # nothing changed
    source.read(TEXT_COLUMNS)
    assert source.fingerprint() == seen[-1]  # reading changes nothing

    _execute(loaded, "INSERT INTO profiles (customer_id, updated_at) VALUES ('Z1', now())")
    seen.append(source.fingerprint())
    _execute(
        loaded,
        "UPDATE profiles SET city = 'Lyon', updated_at = now() + interval '1 hour' "
        "WHERE customer_id = 'C0000001'",
    )
    seen.append(source.fingerprint())
    _execute(loaded, "DELETE FROM profiles WHERE customer_id = 'C0000002'")
    seen.append(source.fingerprint())
    assert len(set(seen)) == len(seen), seen
    _execute(loaded, "VACUUM ANALYZE profiles")  # maintenance is not a change
    assert source.fingerprint() == seen[-1]


def test_fingerprint_without_updated_at_sees_any_change(loaded: str) -> None:
    source = SqlProfileSource(uri=loaded, table="profiles")
    before = source.fingerprint()
    _execute(loaded, "UPDATE profiles SET city = 'Lyon' WHERE customer_id = 'C0000001'")
    assert source.fingerprint() != before


def test_fingerprint_depends_on_the_source(loaded: str) -> None:
    table = SqlProfileSource(uri=loaded, table="profiles").fingerprint()
    query = SqlProfileSource(uri=loaded, query="SELECT * FROM profiles").fingerprint()
    assert table != query  # another source is another baseline


# -- table or query --------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("fields", "message"),
    [
        ({}, "exactly one of 'query' and 'table'"),
        ({"query": "SELECT 1", "table": "profiles"}, "exactly one of 'query' and 'table'"),
        ({"query": "  "}, "exactly one of 'query' and 'table'"),
        ({"table": "profiles; DROP TABLE profiles"}, "is not a table name"),
        ({"table": "profiles p"}, "is not a table name"),
    ],
)
def test_exactly_one_of_query_and_table(fields: dict[str, str], message: str) -> None:
    with pytest.raises(Exception, match=message):
        SqlProfileSource(uri="postgresql://u@localhost/db", **fields)


def test_qualified_and_quoted_table_names(postgres_dsn: str) -> None:
    _execute(
        postgres_dsn,
        "CREATE SCHEMA crm",
        'CREATE TABLE crm."Profiles" (customer_id text, "Postal Code" text)',
        "INSERT INTO crm.\"Profiles\" VALUES ('C1', '01234')",
    )
    source = SqlProfileSource(uri=postgres_dsn, table='crm."Profiles"')
    frame = source.read({"Postal Code"})
    assert frame.to_dicts() == [{"customer_id": "C1", "Postal Code": "01234"}]
    assert source.read_located(set()).describe(0) == 'table crm."Profiles" row 1'


def test_queries_with_ctes_percent_signs_and_parameters_of_their_own(loaded: str) -> None:
    query = """
        WITH gmail AS (SELECT * FROM profiles WHERE email ILIKE '%@gmail.com%')
        SELECT customer_id, postal_code, '%s %(x)s ?' AS literal FROM gmail LIMIT 5
    """
    frame = SqlProfileSource(uri=loaded, query=query).read({"postal_code"})
    assert frame.height == 5
    assert frame["literal"].to_list() == ["%s %(x)s ?"] * 5


def test_the_query_can_only_read(loaded: str) -> None:
    for query in (
        "SELECT 1 AS customer_id; DROP TABLE profiles",
        "WITH gone AS (DELETE FROM profiles RETURNING *) SELECT * FROM gone",
    ):
        with pytest.raises(ProfileDataError, match="the query failed"):
            SqlProfileSource(uri=loaded, query=query).read(set())
    assert SqlProfileSource(uri=loaded, table="profiles").read(set()).height == 3000


# -- errors: clear, naming the source, never the password ------------------------------------------
def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def _error_of(source: SqlProfileSource, call: str = "read") -> ProfileDataError:
    with pytest.raises(ProfileDataError) as raised:
        if call == "read":
            source.read(TEXT_COLUMNS)
        else:
            getattr(source, call)()
    message = str(raised.value)
    _assert_secret_free(message)
    _assert_secret_free(repr(raised.value))
    return raised.value


@pytest.mark.parametrize("call", ["read", "schema", "fingerprint"])
def test_unreachable_server(call: str) -> None:
    uri = f"postgresql://sendgrid:{ENCODED_PASSWORD}@127.0.0.1:{_free_port()}/profiles"
    error = _error_of(SqlProfileSource(uri=uri, table="profiles", connect_timeout=2), call)
    assert str(error).startswith(
        f"table profiles on postgresql://sendgrid:***@127.0.0.1:{urlsplit(uri).port}/profiles: "
        "cannot connect: "
    )
    assert "Connection refused" in str(error)
    assert error.retryable  # the server may come back; the run's retry policy decides


def test_unknown_database(postgres_dsn: str) -> None:
    uri = _with_password(urlunsplit(urlsplit(postgres_dsn)._replace(path="/no_such_db")))
    error = _error_of(SqlProfileSource(uri=uri, table="profiles"))
    assert 'database "no_such_db" does not exist' in str(error)
    assert not error.retryable


@pytest.mark.parametrize(
    ("uri", "shown"),
    [
        (f"mysql://root:{ENCODED_PASSWORD}@db/x", "mysql://root:***@db/x"),
        (f"host=db password={PASSWORD}", "(value not shown)"),
        ("", "(value not shown)"),
    ],
)
def test_not_a_postgresql_uri(uri: str, shown: str) -> None:
    error = _error_of(SqlProfileSource(uri=uri, table="profiles"), "schema")
    assert str(error) == (
        f"SqlProfileSource: the uri {shown} is not a PostgreSQL URI; expected "
        "postgresql://user:password@host:5432/database"
    )


def test_malformed_uri_is_masked() -> None:
    uri = f"postgresql://sendgrid:{ENCODED_PASSWORD}@[::1/db"
    error = _error_of(SqlProfileSource(uri=uri, table="profiles"), "schema")
    assert "not a valid database URI" in str(error)
    assert "sendgrid:***@" in str(error)


def test_sql_errors_name_the_source(loaded: str) -> None:
    uri = _with_password(loaded)
    masked = mask_uri(uri)
    assert masked.startswith("postgresql://sendgrid:***@127.0.0.1:")
    cases = [
        (SqlProfileSource(uri=uri, table="missing"), 'relation "missing" does not exist'),
        (SqlProfileSource(uri=uri, query="SELECT 1 FORM profiles"), "LINE 1: "),
        (
            SqlProfileSource(
                uri=uri, query="SELECT customer_id, city AS customer_id FROM profiles"
            ),
            "'customer_id' appear more than once",
        ),
        (
            SqlProfileSource(uri=uri, query="SELECT city FROM profiles"),
            "the query has no customer_id column; its columns: 'city'",
        ),
    ]
    for source, expected in cases:
        for call in ("read", "schema"):
            error = _error_of(source, call)
            assert str(error).startswith(f"{source.origin} on {masked}: "), error
            assert expected in str(error)
            assert not error.retryable


def test_missing_updated_at_column(loaded: str) -> None:
    source = SqlProfileSource(
        uri=_with_password(loaded), table="profiles", updated_at_column="modified"
    )
    error = _error_of(source, "fingerprint")
    assert "updated_at_column 'modified' is not a column of the table profiles" in str(error)


def test_the_uri_is_never_in_a_repr_or_a_label(loaded: str) -> None:
    source = SqlProfileSource(uri=_with_password(loaded), table="profiles")
    _assert_secret_free(repr(source))
    _assert_secret_free(str(source))
    _assert_secret_free(source.label)
    assert source.read(set()).height == 3000  # the password-bearing URI does connect


def test_secret_query_parameters_are_masked() -> None:
    uri = f"postgresql://db/x?user=app&password={ENCODED_PASSWORD}&sslmode=require"
    assert mask_uri(uri) == "postgresql://db/x?user=app&password=***&sslmode=require"


# -- in Dagster, with the URI in an environment variable -------------------------------------------
# Run in a child process given the variable in its environment (this process's is never set):
# the URI as a dg.EnvVar resolved outside a run and inside one, and the code location's own
# wiring from profile_source.yaml (the variable's name) to the run that reads the table.
ENV_VAR_CHILD = """
import sys
from dataclasses import replace
from pathlib import Path

import dagster as dg

from sendgrid_pipeline.config import load_config
from sendgrid_pipeline.definitions import location_definitions
from sendgrid_pipeline.pipeline import configured_profile_source
from sendgrid_pipeline.settings import Settings
from sendgrid_pipeline.warehouse import SqlProfileSource
from sendgrid_pipeline_tests.helpers import export, resources_for, step_failure_messages

source = SqlProfileSource(uri=dg.EnvVar("PROFILE_WAREHOUSE_URI"), table="profiles")
print("schema", source.schema({"postal_code"})["postal_code"])  # outside a run


@dg.asset
def profiles(profile_source: SqlProfileSource) -> dg.MaterializeResult:
    return dg.MaterializeResult(metadata={"rows": profile_source.read(set()).height})


result = dg.materialize([profiles], resources={"profile_source": source})
[event] = result.get_asset_materialization_events()
print("rows", event.materialization.metadata["rows"].value)
print("label", source.label)

data_dir = Path(sys.argv[1])
defs = location_definitions(Settings(data_dir=data_dir))  # checked against the table
print("deployed", defs.resources["profile_source"].uri == dg.EnvVar("PROFILE_WAREHOUSE_URI"))
configured = configured_profile_source(load_config(data_dir))
wired = replace(resources_for(data_dir), profile_source=configured)
run = export(data_dir, None, selection=["unified_profiles"], resources=wired)
assert run.success, step_failure_messages(run)
# one read, recorded on every destination's partition with the same figures
counts = {e.materialization.metadata["dagster/row_count"].value
          for e in run.get_asset_materialization_events()}
print("run", *counts)
"""


def test_env_var_uri_at_load_time_and_in_a_run(loaded: str, tmp_path: Path) -> None:
    data_dir = tmp_path / "data"
    shutil.copytree(REPO / "data", data_dir, ignore=shutil.ignore_patterns("state", "storage"))
    shutil.rmtree(data_dir / "profiles")  # the table is the only source of profiles
    (data_dir / "profile_source.yaml").write_text(
        "profile_source:\n  kind: sql\n  uri_env: PROFILE_WAREHOUSE_URI\n  table: profiles\n"
    )
    child = subprocess.run(
        [sys.executable, "-c", ENV_VAR_CHILD, str(data_dir)],
        cwd=REPO,
        env={**os.environ, "PROFILE_WAREHOUSE_URI": _with_password(loaded)},
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert child.returncode == 0, child.stderr[-3000:]
    lines = dict(line.split(" ", 1) for line in child.stdout.splitlines() if " " in line)
    assert lines["schema"] == "String"
    assert lines["rows"] == "3000"
    assert lines["label"].startswith("table profiles on postgresql://")
    assert lines["deployed"] == "True"
    assert lines["run"] == "3000"
    _assert_secret_free(child.stdout + child.stderr)

    unset = SqlProfileSource(uri=dg.EnvVar("PROFILE_WAREHOUSE_URI_NEVER_SET"), table="profiles")
    with pytest.raises(ProfileDataError, match=r"PROFILE_WAREHOUSE_URI_NEVER_SET .* is not set"):
        unset.schema()


# -- property: any frame of the profile types round-trips through a table --------------------------
_TEXT = st.text(st.characters(exclude_categories=["Cs"], exclude_characters="\x00"), max_size=12)
_ROWS = st.lists(
    st.tuples(
        st.from_regex(r"0[0-9]{1,5}", fullmatch=True),  # ids and postal codes: leading zeros
        st.none() | _TEXT,
        st.none() | st.integers(-(2**63), 2**63 - 1),
        st.none() | st.floats(allow_nan=False, allow_infinity=False, width=64),
        st.none() | st.booleans(),
        st.none() | st.dates(dt.date(1, 1, 1), dt.date(9999, 12, 31)),
        st.none()
        | st.datetimes(dt.datetime(1900, 1, 1), dt.datetime(2200, 1, 1)).map(
            lambda moment: moment.replace(tzinfo=dt.UTC)
        ),
    ),
    max_size=20,
    unique_by=lambda row: row[0],
)
_SCHEMA = {
    "customer_id": pl.String(),
    "note": pl.String(),
    "count": pl.Int64(),
    "value": pl.Float64(),
    "opt_in": pl.Boolean(),
    "day": pl.Date(),
    "seen": pl.Datetime("us", "UTC"),
}


@settings(
    max_examples=40,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(rows=_ROWS, as_text=st.sets(st.sampled_from(["count", "opt_in", "day"])))
def test_any_frame_round_trips_through_a_table(
    postgres_dsn: str, rows: list[tuple], as_text: set[str]
) -> None:
    frame = pl.DataFrame(rows, schema=_SCHEMA, orient="row")
    table = f"t_{uuid.uuid4().hex[:8]}"
    _load(postgres_dsn, table, frame)
    source = SqlProfileSource(
        uri=postgres_dsn, query=f'SELECT * FROM {table} ORDER BY customer_id COLLATE "C"'
    )
    got = source.read(as_text)
    expected = frame.sort("customer_id").with_columns(
        pl.col("count").cast(pl.String),
        pl.col("opt_in").replace_strict({True: "true", False: "false"}, return_dtype=pl.String),
        pl.col("day").dt.strftime("%Y-%m-%d"),
    )
    expected = expected.select(
        [expected[c] if c in as_text else frame.sort("customer_id")[c] for c in frame.columns]
    )
    assert_frame_equal(got, expected)
    assert source.schema(as_text) == got.schema
    _execute(postgres_dsn, f"DROP TABLE {table}")


# -- Delta Lake: no server needed ------------------------------------------------------------------
@pytest.fixture
def delta_table(tmp_path: Path, sample: pl.DataFrame) -> Path:
    path = tmp_path / "profiles_delta"
    sample.write_delta(path)
    return path


def test_delta_reads_the_same_frame_as_the_files(delta_table: Path) -> None:
    files = FileProfileSource(directory=str(SAMPLE_DIR))
    source = DeltaProfileSource(table_uri=str(delta_table))
    located = source.read_located(TEXT_COLUMNS)
    assert_frame_equal(located.frame, files.read(TEXT_COLUMNS))
    assert source.schema(TEXT_COLUMNS) == files.schema(TEXT_COLUMNS)
    assert located.describe(4) == "Delta table version 0 row 5"


def test_delta_text_columns_from_numbers(tmp_path: Path) -> None:
    path = tmp_path / "numbers"
    pl.DataFrame({"customer_id": [42.0, 7.5], "zip": [1234, None]}).write_delta(path)
    source = DeltaProfileSource(table_uri=str(path))
    assert source.schema({"zip"}) == pl.Schema({"customer_id": pl.String, "zip": pl.String})
    assert source.read({"zip"}).to_dicts() == [
        {"customer_id": "42", "zip": "1234"},
        {"customer_id": "7.5", "zip": None},
    ]


def test_delta_fingerprint_is_the_version(delta_table: Path, sample: pl.DataFrame) -> None:
    source = DeltaProfileSource(table_uri=str(delta_table))
    first = source.fingerprint()
    source.read(TEXT_COLUMNS)
    assert source.fingerprint() == first
    sample.head(2).write_delta(delta_table, mode="append")
    second = source.fingerprint()
    assert second != first
    assert source.read_located(set()).describe(3000) == "Delta table version 1 row 3001"
    pinned = DeltaProfileSource(table_uri=str(delta_table), version=0)
    assert pinned.read(set()).height == 3000
    assert pinned.fingerprint() == first


def test_delta_errors(tmp_path: Path) -> None:
    missing = DeltaProfileSource(table_uri=str(tmp_path / "nowhere"))
    for call in (missing.fingerprint, missing.schema, lambda: missing.read(set())):
        with pytest.raises(ProfileDataError, match=r"Delta table .*nowhere: cannot open"):
            call()
    path = tmp_path / "no_id"
    pl.DataFrame({"id": [1]}).write_delta(path)
    with pytest.raises(ProfileDataError, match="no customer_id column; its columns: 'id'"):
        DeltaProfileSource(table_uri=str(path)).schema()
    with pytest.raises(ProfileDataError, match="cannot open"):
        DeltaProfileSource(table_uri=str(path), version=5).read(set())


def test_sample_csv_text_columns_are_the_generator_overrides(sample: pl.DataFrame) -> None:
    """The sample table is loaded with the generator's CSV text columns as text."""
    assert all(sample.schema[c] == pl.String for c in CSV_SCHEMA_OVERRIDES)
    assert generate_profiles(5).schema == sample.schema


@pytest.fixture(scope="module")
def s3_options() -> Iterator[dict[str, str]]:
    """Storage options reaching a new bucket on an in-process S3 emulator (moto) on loopback."""
    moto_server = pytest.importorskip("moto.server")
    import boto3

    server = moto_server.ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    options = {
        "aws_access_key_id": "moto-key",
        "aws_secret_access_key": "moto-secret-never-shown",
        "aws_region": "us-east-1",
        "aws_endpoint_url": f"http://{host}:{port}",
        "aws_allow_http": "true",
    }
    boto3.client(
        "s3",
        endpoint_url=options["aws_endpoint_url"],
        aws_access_key_id=options["aws_access_key_id"],
        aws_secret_access_key=options["aws_secret_access_key"],
        region_name=options["aws_region"],
    ).create_bucket(Bucket="profile-lake")
    try:
        yield options
    finally:
        server.stop()


def test_delta_table_on_an_object_store(s3_options: dict[str, str], sample: pl.DataFrame) -> None:
    uri = "s3://profile-lake/profiles"
    sample.write_delta(uri, storage_options=s3_options)
    source = DeltaProfileSource(table_uri=uri, storage_options=s3_options)
    assert "moto-secret" not in repr(source)
    files = FileProfileSource(directory=str(SAMPLE_DIR)).read(TEXT_COLUMNS)
    assert_frame_equal(source.read(TEXT_COLUMNS), files)
    before = source.fingerprint()
    sample.head(1).write_delta(uri, mode="append", storage_options=s3_options)
    assert source.fingerprint() != before
    missing = DeltaProfileSource(table_uri="s3://profile-lake/nowhere", storage_options=s3_options)
    with pytest.raises(ProfileDataError, match="s3://profile-lake/nowhere: cannot open") as raised:
        missing.schema()
    assert "moto-secret" not in str(raised.value)
