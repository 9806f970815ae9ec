"""Profile and membership files are read exactly, and every error names the file, row, column."""

from __future__ import annotations

import datetime as dt
import logging
import re
import tempfile
from pathlib import Path

import dagster as dg
import polars as pl
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from sendgrid_pipeline.assets.profiles import check_customer_ids
from sendgrid_pipeline.assets.segments import read_membership_file
from sendgrid_pipeline.errors import ProfileDataError
from sendgrid_pipeline.profile_source import FileProfileSource, LocatedProfiles
from sendgrid_pipeline_tests.helpers import export, step_failure_messages

CSV_ROW = "(1-based data row, header not counted)"


def _source(directory: Path) -> FileProfileSource:
    return FileProfileSource(directory=str(directory))


def _read_error(directory: Path) -> str:
    with pytest.raises(ProfileDataError) as raised:
        _source(directory).read({"email"})
    return str(raised.value)


def _good_csv(directory: Path, name: str = "a.csv") -> Path:
    path = directory / name
    path.write_text("customer_id,email,orders\nC1,a@example.com,1\nC2,b@example.com,2\n")
    return path


# --- one bad file among good ones: the error names it, its row and its column ---------------


def test_a_semicolon_separated_file_is_named_with_the_format_expected(tmp_path: Path) -> None:
    _good_csv(tmp_path)
    (tmp_path / "b.csv").write_text("customer_id;email;orders\nC3;c@example.com;3\n")
    message = _read_error(tmp_path)
    assert str(tmp_path / "b.csv") in message
    assert "semicolon-separated" in message
    assert "expected a comma-separated UTF-8 CSV" in message


def test_a_tab_separated_file_is_named_too(tmp_path: Path) -> None:
    (tmp_path / "a.csv").write_text("customer_id\temail\nC3\tc@example.com\n")
    message = _read_error(tmp_path)
    assert f"{tmp_path / 'a.csv'}: the header (line 1) is tab-separated" in message


def test_a_file_without_customer_id_is_named_with_its_columns(tmp_path: Path) -> None:
    _good_csv(tmp_path)
    (tmp_path / "b.csv").write_text("id,email\nC3,c@example.com\n")
    message = _read_error(tmp_path)
    assert f"{tmp_path / 'b.csv'}: the profile file has no customer_id column" in message
    assert "its columns: 'id', 'email'" in message


def test_a_misspelt_customer_id_column_is_pointed_out(tmp_path: Path) -> None:
    (tmp_path / "a.csv").write_text("Customer ID,email\nC3,c@example.com\n")
    assert "'Customer ID' must be spelled exactly customer_id" in _read_error(tmp_path)


def test_a_parquet_file_without_customer_id_is_named(tmp_path: Path) -> None:
    _good_csv(tmp_path)
    pl.DataFrame({"id": ["C3"]}).write_parquet(tmp_path / "b.parquet")
    message = _read_error(tmp_path)
    assert f"{tmp_path / 'b.parquet'}: the profile file has no customer_id column" in message


def test_a_latin1_file_names_the_row_and_column_within_the_file(tmp_path: Path) -> None:
    _good_csv(tmp_path)
    text = "customer_id,email,first_name\nC3,c@example.com,Ann\nC4,d@example.com,Seán\n"
    (tmp_path / "b.csv").write_bytes(text.encode("latin-1"))
    message = _read_error(tmp_path)
    assert f"{tmp_path / 'b.csv'}: cannot read the profile file: row 2 {CSV_ROW}" in message
    assert "column 'first_name': not UTF-8 text ('Se\ufffdn'" in message
    assert "expected a comma-separated UTF-8 CSV" in message


def test_a_latin1_header_is_named(tmp_path: Path) -> None:
    (tmp_path / "a.csv").write_bytes("customer_id,prénom\nC1,Ann\n".encode("latin-1"))
    message = _read_error(tmp_path)
    assert f"{tmp_path / 'a.csv'}: the header (line 1) is not UTF-8 text" in message
    assert "expected a comma-separated UTF-8 CSV" in message


def _long_csv(path: Path, rows: int, last_value: str) -> None:
    """customer_id and an integer `orders` column for `rows` rows, then one more row."""
    numbers = pl.int_range(rows, eager=True).cast(pl.String)
    frame = pl.DataFrame({"customer_id": "C" + numbers, "orders": numbers})
    last = pl.DataFrame({"customer_id": ["LAST"], "orders": [last_value]})
    pl.concat([frame, last]).write_csv(path)


def test_a_type_that_changes_deep_into_a_file_names_row_column_and_value(tmp_path: Path) -> None:
    _good_csv(tmp_path)
    _long_csv(tmp_path / "b.csv", 20_000, "twelve")
    message = _read_error(tmp_path)
    assert f"{tmp_path / 'b.csv'}: cannot read the profile file: row 20001 {CSV_ROW}" in message
    assert "column 'orders': 'twelve' is not an integer" in message
    assert "first 10000 data rows" in message


def test_integers_then_decimals_deep_into_a_file_read_as_float(tmp_path: Path) -> None:
    _long_csv(tmp_path / "a.csv", 20_000, "12.5")
    frame = _source(tmp_path).read(set())
    assert frame.schema["orders"] == pl.Float64
    assert frame.height == 20_001 and frame["orders"][-1] == 12.5


def test_a_ragged_row_is_named(tmp_path: Path) -> None:
    (tmp_path / "a.csv").write_text('customer_id,email\nC1,"a,b@example.com"\nC2,x,y\n')
    message = _read_error(tmp_path)
    assert f"{tmp_path / 'a.csv'}: cannot read the profile file: row 2 {CSV_ROW}" in message
    assert "has 3 fields but the header has 2 columns" in message


# --- files that disagree on a column's type -------------------------------------------------


def test_parquet_files_disagreeing_on_a_type_name_both_files(tmp_path: Path) -> None:
    pl.DataFrame({"customer_id": ["C1"], "lifetime_value": [10]}).write_parquet(
        tmp_path / "a.parquet"
    )
    pl.DataFrame({"customer_id": ["C2"], "lifetime_value": ["n/a"]}).write_parquet(
        tmp_path / "b.parquet"
    )
    message = _read_error(tmp_path)
    assert (
        f"{tmp_path}: column 'lifetime_value' is Int64 in a.parquet but String in b.parquet"
        in message
    )
    with pytest.raises(ProfileDataError, match=r"is Int64 in a\.parquet but String in b\.parquet"):
        _source(tmp_path).schema()


def test_numeric_types_widen_across_files(tmp_path: Path) -> None:
    pl.DataFrame({"customer_id": ["C1"], "value": [10]}).write_parquet(tmp_path / "a.parquet")
    pl.DataFrame({"customer_id": ["C2"], "value": [2.5]}).write_parquet(tmp_path / "b.parquet")
    (tmp_path / "c.csv").write_text("customer_id,value\nC3,7\n")
    frame = _source(tmp_path).read(set())
    assert frame.schema["value"] == pl.Float64
    assert _source(tmp_path).schema()["value"] == pl.Float64
    assert dict(frame.iter_rows()) == {"C1": 10.0, "C2": 2.5, "C3": 7.0}


def test_a_csv_file_is_read_with_a_parquet_files_type(tmp_path: Path) -> None:
    pl.DataFrame({"customer_id": ["C1"], "joined": [dt.date(2024, 5, 1)]}).write_parquet(
        tmp_path / "a.parquet"
    )
    (tmp_path / "b.csv").write_text("customer_id,joined\nC2,\nC3,2025-01-31\n")
    frame = _source(tmp_path).read(set())
    assert frame.schema["joined"] == pl.Date
    assert frame["joined"].to_list() == [dt.date(2024, 5, 1), None, dt.date(2025, 1, 31)]

    (tmp_path / "b.csv").write_text("customer_id,joined\nC2,2025-01-31\nC3,soon\n")
    message = _read_error(tmp_path)
    assert f"{tmp_path / 'b.csv'}: cannot read the profile file: row 2 {CSV_ROW}" in message
    assert "column 'joined': 'soon' is not date, the type of column 'joined' in a.parquet" in (
        message
    )


def test_csv_files_that_disagree_read_the_column_as_the_exact_text(tmp_path: Path) -> None:
    (tmp_path / "a.csv").write_text("customer_id,code\nC1,007\nC2,010\n")
    (tmp_path / "b.csv").write_text("customer_id,code\nC3,A7\n")
    frame = _source(tmp_path).read(set())
    assert frame["code"].to_list() == ["007", "010", "A7"]
    assert _source(tmp_path).schema()["code"] == pl.String


def test_a_column_empty_in_one_file_takes_the_other_files_type(tmp_path: Path) -> None:
    (tmp_path / "a.csv").write_text("customer_id,joined,score\nC1,2024-05-01,1.5\n")
    (tmp_path / "b.csv").write_text("customer_id,joined,score\nC2,,\n")
    pl.DataFrame(
        {"customer_id": ["C3"], "score": pl.Series([None], dtype=pl.String)}
    ).write_parquet(tmp_path / "c.parquet")
    frame = _source(tmp_path).read(set())
    assert frame.schema["joined"] == pl.Date and frame.schema["score"] == pl.Float64
    assert frame["joined"].to_list() == [dt.date(2024, 5, 1), None, None]


def test_numeric_customer_ids_in_parquet_are_text_without_a_decimal_point(tmp_path: Path) -> None:
    pl.DataFrame({"customer_id": [1, 22]}).write_parquet(tmp_path / "a.parquet")
    pl.DataFrame({"customer_id": [333.0]}).write_parquet(tmp_path / "b.parquet")
    assert _source(tmp_path).read(set())["customer_id"].to_list() == ["1", "22", "333"]


# --- customer_id problems name the file and the row within it --------------------------------


def test_a_duplicate_across_two_files_names_both(tmp_path: Path) -> None:
    _good_csv(tmp_path)
    (tmp_path / "b.csv").write_text("customer_id,email\nC3,c@example.com\nC2,b2@example.com\n")
    located = _source(tmp_path).read_located({"email"})
    with pytest.raises(ProfileDataError) as raised:
        check_customer_ids(located, str(tmp_path))
    message = str(raised.value)
    assert "customer_id must be present and unique (1 id on several rows" in message
    assert "'C2' in a.csv row 2 and b.csv row 2" in message


def test_a_missing_customer_id_names_the_file_and_row(tmp_path: Path) -> None:
    _good_csv(tmp_path)
    (tmp_path / "b.csv").write_text("customer_id,email\nC3,c@example.com\n,d@example.com\n")
    located = _source(tmp_path).read_located({"email"})
    with pytest.raises(ProfileDataError, match=r"no customer_id in b\.csv row 2"):
        check_customer_ids(located, str(tmp_path))


# --- membership files ---------------------------------------------------------------------


def test_membership_ids_are_trimmed_and_empty_ones_dropped(tmp_path: Path) -> None:
    path = tmp_path / "members.csv"
    path.write_text('customer_id,score\n" C0000001 ",1\nC0000002\t,2\n,3\n"   ",4\n')
    assert read_membership_file(path)["customer_id"].to_list() == ["C0000001", "C0000002"]


def test_parquet_membership_ids_are_text_without_a_decimal_point(tmp_path: Path) -> None:
    ints, floats = tmp_path / "ints.parquet", tmp_path / "floats.parquet"
    pl.DataFrame({"customer_id": [7, 30]}).write_parquet(ints)
    pl.DataFrame({"customer_id": [7.0, None, 30.0]}).write_parquet(floats)
    assert read_membership_file(ints)["customer_id"].to_list() == ["7", "30"]
    assert read_membership_file(floats)["customer_id"].to_list() == ["7", "30"]
    assert read_membership_file(ints).schema["customer_id"] == pl.String


def test_a_semicolon_membership_file_is_named(tmp_path: Path) -> None:
    path = tmp_path / "members.csv"
    path.write_text("customer_id;score\nC1;1\n")
    with pytest.raises(ProfileDataError, match=r"members\.csv: the header .* semicolon"):
        read_membership_file(path)


def test_padded_membership_ids_match_and_unmatched_ones_are_reported(data_dir, sandbox) -> None:
    churn = data_dir / "memberships" / "churn_risk.csv"
    churn.write_text('customer_id,churn_score\n" C0000007 ",0.5\nC0000030 ,0.5\nNOPE1,0.5\n')
    instance = dg.DagsterInstance.ephemeral()
    result = export(
        data_dir, sandbox, selection=["unified_profiles", "segment_membership"], instance=instance
    )
    assert result.success, step_failure_messages(result)
    metadata = {}
    for event in result.all_events:
        if event.event_type_value == "ASSET_MATERIALIZATION":
            record = event.event_specific_data.materialization
            # each partition shows its own destination's segments: churn_risk is winback_campaign's
            if (
                record.asset_key.path == ["segment_membership"]
                and record.partition == "winback_campaign"
            ):
                metadata = {k: getattr(v, "value", v) for k, v in record.metadata.items()}
    assert metadata["segment_churn_risk"] == 2
    assert metadata["segment_churn_risk_unmatched_ids"] == 1
    warnings = [
        e.user_message for e in instance.all_logs(result.run_id) if e.level == logging.WARNING
    ]
    assert any(
        re.search(r"segment churn_risk: 1 of the 3 distinct ids .* match no profile", w)
        and "'NOPE1'" in w
        for w in warnings
    ), warnings


# --- properties: whatever is written is read back, exactly -----------------------------------

IDS = st.one_of(
    st.integers(0, 10**15).map(str),
    st.integers(0, 10**6).map(lambda n: f"{n:08d}"),
    st.text(st.characters(exclude_categories=("Cs",)), min_size=1, max_size=300),
)
KINDS: dict[str, tuple[pl.DataType, st.SearchStrategy]] = {
    "int": (pl.Int64(), st.integers(-(2**53), 2**53)),
    "float": (pl.Float64(), st.floats(allow_nan=True, allow_infinity=True)),
    "text": (pl.String(), st.text(st.characters(exclude_categories=("Cs",)), max_size=400)),
    "flag": (pl.Boolean(), st.booleans()),
    "day": (pl.Date(), st.dates(dt.date(1900, 1, 1), dt.date(2100, 12, 31))),
    "empty_int": (pl.Int64(), st.none()),
    "empty_text": (pl.String(), st.none()),
    "empty_untyped": (pl.Null(), st.none()),
}


@st.composite
def profile_files(draw: st.DrawFn) -> tuple[pl.DataFrame, list[tuple[str, pl.DataFrame]]]:
    """A frame of unique customer_ids and typed columns, split over CSV and Parquet files."""
    ids = draw(st.lists(IDS, unique=True, max_size=25))
    kinds = draw(st.lists(st.sampled_from(sorted(KINDS)), unique=True, max_size=5))
    columns: dict[str, pl.Series] = {"customer_id": pl.Series(ids, dtype=pl.String)}
    for kind in kinds:
        dtype, values = KINDS[kind]
        cells = draw(st.lists(st.one_of(st.none(), values), min_size=len(ids), max_size=len(ids)))
        columns[f"c_{kind}"] = pl.Series(cells, dtype=dtype)
    frame = pl.DataFrame(columns)
    count = draw(st.integers(1, 3))
    cuts = sorted(draw(st.lists(st.integers(0, len(ids)), min_size=count - 1, max_size=count - 1)))
    bounds = [0, *cuts, len(ids)]
    files = []
    for index in range(count):
        part = frame.slice(bounds[index], bounds[index + 1] - bounds[index])
        kept = draw(st.lists(st.sampled_from(frame.columns[1:] or ["customer_id"]), unique=True))
        part = part.select("customer_id", *(c for c in frame.columns[1:] if c in kept))
        suffix = draw(st.sampled_from(["csv", "parquet"]))
        files.append((f"part{index}.{suffix}", part))
    return frame, files


def _write(directory: Path, files: list[tuple[str, pl.DataFrame]]) -> None:
    for name, part in files:
        if name.endswith(".csv"):
            part.write_csv(directory / name)
        else:
            part.write_parquet(directory / name)


PROPERTY_SETTINGS = settings(
    max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow]
)


@PROPERTY_SETTINGS
@given(profile_files())
def test_every_row_written_is_read_back_exactly_once(generated) -> None:
    frame, files = generated
    with tempfile.TemporaryDirectory() as directory:
        _write(Path(directory), files)
        source = _source(Path(directory))
        read = source.read({"c_text"})
        assert read.height == frame.height
        assert sorted(read["customer_id"].to_list()) == sorted(frame["customer_id"].to_list())
        assert set(read.columns) == {c for _, part in files for c in part.columns}
        assert set(source.schema({"c_text"})) == set(read.columns)
        texts = [p.select("customer_id", "c_text") for _, p in files if "c_text" in p.columns]
        if texts:  # text columns are exact (an empty CSV cell reads as null)
            written = pl.concat(texts).filter(pl.col("c_text") != "")
            got = read.select("customer_id", "c_text").join(written, on="customer_id")
            assert got.height == written.height
            assert got["c_text"].to_list() == got["c_text_right"].to_list()
        check_customer_ids(source.read_located(set()), directory)  # no false alarm


@PROPERTY_SETTINGS
@given(profile_files(), st.data())
def test_a_customer_id_repeated_in_another_file_is_reported_naming_both(generated, data) -> None:
    frame, files = generated
    if frame.height == 0:
        return
    row = data.draw(st.integers(0, frame.height - 1))
    repeated = frame.slice(row, 1).select("customer_id")
    suffix = data.draw(st.sampled_from(["csv", "parquet"]))
    files = [*files, (f"zz_repeat.{suffix}", repeated)]
    owner = next(name for name, part in files if repeated["customer_id"][0] in part["customer_id"])
    with tempfile.TemporaryDirectory() as directory:
        _write(Path(directory), files)
        located = _source(Path(directory)).read_located(set())
        assert located.frame.height == frame.height + 1
        with pytest.raises(ProfileDataError) as raised:
            check_customer_ids(located, directory)
        message = str(raised.value)
        assert "customer_id must be present and unique" in message
        assert owner in message and "zz_repeat" in message
        assert f"{repeated['customer_id'][0]!r} in {owner} row " in message


@settings(max_examples=200, deadline=None)
@given(st.lists(st.one_of(st.none(), st.sampled_from(["a", "b", "c", "", " a", "A"])), max_size=8))
def test_customer_ids_are_refused_exactly_when_missing_or_repeated(ids: list[str | None]) -> None:
    """The quick path for clean ids and the row-by-row report agree with a plain rule."""
    located = LocatedProfiles(
        frame=pl.DataFrame({"customer_id": ids}, schema={"customer_id": pl.String}),
        files=((Path("profiles.csv"), len(ids)),),
    )
    present = [i for i in ids if i is not None]
    bad = len(present) < len(ids) or len(set(present)) < len(present)
    if bad:
        with pytest.raises(ProfileDataError, match="customer_id must be present and unique"):
            check_customer_ids(located, "profiles")
    else:
        check_customer_ids(located, "profiles")
