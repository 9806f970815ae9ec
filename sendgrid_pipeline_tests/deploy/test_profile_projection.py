"""A profile source reads only the columns asked for (`read_located(..., columns=...)`): files
(CSV and Parquet), a PostgreSQL query or table, and a Delta table. A projected read equals the
full read's columns, never touches the others, and a missing column is named in the error.

The SQL tests need a PostgreSQL server (`postgres_dsn`, see conftest.py: skipped without one,
required in CI).
"""

from __future__ import annotations

from pathlib import Path

import polars as pl
import psycopg2
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from polars.testing import assert_frame_equal

from sendgrid_pipeline.delta_source import DeltaProfileSource
from sendgrid_pipeline.errors import ProfileDataError
from sendgrid_pipeline.profile_source import INFER_ROWS, FileProfileSource
from sendgrid_pipeline.warehouse import SqlProfileSource
from sendgrid_pipeline_tests.devkit.sample_data import read_profiles_csv

REPO = Path(__file__).resolve().parents[2]
SAMPLE_DIR = REPO / "data" / "profiles"
TEXT_COLUMNS = {"postal_code", "email", "first_name", "city", "orders_count"}
ALL_COLUMNS = list(read_profiles_csv(SAMPLE_DIR / "profiles.csv").columns)


def _execute(dsn: str, *statements: str) -> None:
    connection = psycopg2.connect(dsn)
    connection.autocommit = True
    try:
        with connection.cursor() as cursor:
            for statement in statements:
                cursor.execute(statement)
    finally:
        connection.close()


def _expected(full: pl.DataFrame, columns: set[str]) -> pl.DataFrame:
    return full.select([c for c in full.columns if c in columns | {"customer_id"}])


# -- files ---------------------------------------------------------------------------------------
@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.sets(st.sampled_from(ALL_COLUMNS)))
def test_files_projection_is_the_full_read_s_columns(columns: set[str]) -> None:
    source = FileProfileSource(directory=str(SAMPLE_DIR))
    located = source.read_located(TEXT_COLUMNS, columns)
    assert_frame_equal(located.frame, _expected(source.read(TEXT_COLUMNS), columns))
    assert located.describe(4) == "profiles.csv row 5"


def test_csv_projection_does_not_parse_the_other_columns(tmp_path: Path) -> None:
    """A value that does not fit its column fails a full read, not a read without it."""
    many = INFER_ROWS + 20  # types are inferred from the first INFER_ROWS rows
    rows = "\n".join(f"C{n},p{n}@example.com,{n}" for n in range(many))
    (tmp_path / "a.csv").write_text(f"customer_id,email,orders\n{rows}\nC99,z@example.com,many\n")
    source = FileProfileSource(directory=str(tmp_path))
    with pytest.raises(ProfileDataError, match=rf"a\.csv.*row {many + 1}.*column 'orders'"):
        source.read(set())
    frame = source.read({"email"}, {"email"})
    assert frame.columns == ["customer_id", "email"]
    assert frame.height == many + 1 and frame["email"][-1] == "z@example.com"
    # the projected column's own errors still name the file, the row and the column
    (tmp_path / "a.csv").write_text(
        "customer_id,email,orders\n" + rows + "\nC99,z@example.com,1\nC100,x,y\n"
    )
    with pytest.raises(ProfileDataError, match=rf"a\.csv.*row {many + 2}.*column 'orders'"):
        source.read(set(), {"orders"})


def test_parquet_projection_ignores_a_type_conflict_elsewhere(tmp_path: Path) -> None:
    """Two Parquet files that disagree on a column fail a full read, not one without it."""
    pl.DataFrame({"customer_id": ["C1"], "email": ["a@x.org"], "score": [1]}).write_parquet(
        tmp_path / "a.parquet"
    )
    pl.DataFrame({"customer_id": [2], "email": ["b@x.org"], "score": ["high"]}).write_parquet(
        tmp_path / "b.parquet"
    )
    (tmp_path / "c.csv").write_text("customer_id,other\nC3,1\n")  # no email: nulls, as in full
    source = FileProfileSource(directory=str(tmp_path))
    with pytest.raises(ProfileDataError, match=r"column 'score' is Int64 in a\.parquet"):
        source.read(set())
    located = source.read_located({"email"}, {"email"})
    assert located.frame.to_dicts() == [
        {"customer_id": "C1", "email": "a@x.org"},
        {"customer_id": "2", "email": "b@x.org"},
        {"customer_id": "C3", "email": None},
    ]
    assert located.describe(2) == "c.csv row 1"


def test_files_missing_column_is_named(tmp_path: Path) -> None:
    (tmp_path / "a.csv").write_text("customer_id,email\nC1,a@x.org\n")
    source = FileProfileSource(directory=str(tmp_path))
    with pytest.raises(ProfileDataError) as raised:
        source.read(set(), {"email", "e_mail"})
    message = str(raised.value)
    assert str(tmp_path) in message and "'e_mail'" in message and "a.csv" in message
    assert "'email'" not in message.split(";")[0]  # only the missing one is named missing


# -- PostgreSQL ------------------------------------------------------------------------------------
def test_sql_projection_selects_only_those_columns(postgres_dsn: str) -> None:
    sample = read_profiles_csv(SAMPLE_DIR / "profiles.csv")
    sample.write_database("profiles", postgres_dsn, engine="adbc", if_table_exists="replace")
    table = SqlProfileSource(uri=postgres_dsn, query="SELECT * FROM profiles ORDER BY 1")
    full = table.read(TEXT_COLUMNS)
    projected = table.read_located(TEXT_COLUMNS, {"email", "postal_code"})
    assert_frame_equal(projected.frame, _expected(full, {"email", "postal_code"}))
    assert projected.describe(0) == "query row 1"
    # a column that fails when computed: only a read that selects it computes it
    query = (
        "SELECT customer_id, email, 1 / (length(email) - length(email)) AS boom "
        'FROM profiles ORDER BY customer_id COLLATE "C"'
    )
    boom = SqlProfileSource(uri=postgres_dsn, query=query)
    with pytest.raises(ProfileDataError, match="division by zero"):
        boom.read(set())
    frame = boom.read({"email"}, {"email"})
    assert frame.columns == ["customer_id", "email"] and frame.height == sample.height
    _execute(postgres_dsn, 'CREATE TABLE "Odd Table" ("customer_id" text, "E-Mail" text)')
    _execute(postgres_dsn, """INSERT INTO "Odd Table" VALUES ('C1', 'a@x.org')""")
    odd = SqlProfileSource(uri=postgres_dsn, table='"Odd Table"')
    assert odd.read({"E-Mail"}, {"E-Mail"}).to_dicts() == [
        {"customer_id": "C1", "E-Mail": "a@x.org"}
    ]
    with pytest.raises(ProfileDataError) as raised:
        odd.read(set(), {"email"})
    message = str(raised.value)
    assert "Odd Table" in message and "no column(s) 'email'" in message and "'E-Mail'" in message


# -- Delta -----------------------------------------------------------------------------------------
def test_delta_projection(tmp_path: Path) -> None:
    path = tmp_path / "profiles_delta"
    read_profiles_csv(SAMPLE_DIR / "profiles.csv").write_delta(path)
    source = DeltaProfileSource(table_uri=str(path))
    full = source.read(TEXT_COLUMNS)
    located = source.read_located(TEXT_COLUMNS, {"email", "orders_count"})
    assert_frame_equal(located.frame, _expected(full, {"email", "orders_count"}))
    assert located.frame["orders_count"].dtype == pl.String  # still read as text
    assert located.describe(4) == "Delta table version 0 row 5"
    with pytest.raises(ProfileDataError) as raised:
        source.read(set(), {"mail"})
    message = str(raised.value)
    assert "profiles_delta" in message and "version 0 has no column(s) 'mail'" in message
