"""Erasure request files: what is read, resolved and refused (hypothesis over many files)."""

from __future__ import annotations

import csv
import io
import tempfile
from pathlib import Path

import polars as pl
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from sendgrid_pipeline.erasure import (
    ErasureFileError,
    ErasureRefused,
    ListHits,
    check_erasure_brake,
    read_erasure_file,
    resolve_subjects,
)
from sendgrid_pipeline_tests.test_transform import make_destination

KNOWN = pl.DataFrame(
    {
        "customer_id": ["C1", "C2", "C3", "C3"],
        "email": ["ann@example.com", "bob@example.com", "cy@example.com", "cy2@example.com"],
    }
)
LONG_LOCAL = "l" * 64
VALID = [
    "ann@example.com",
    " Bob@Example.COM ",  # trimmed and lowercased
    "new.person+tag@sub.example.org",
    f"{LONG_LOCAL}@{'d' * 63}.{'e' * 63}.{'f' * 57}.com",  # 254 characters
    "o'brien@example.ie",
]
INVALID = ["not-an-address", "a@b", f"{'l' * 65}@example.com", "jö@example.com", "a b@example.com"]
IDS = ["C1", "C2", "C3", "C404", ""]


def write(rows: list[dict[str, str]], columns: list[str]) -> Path:
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=columns, lineterminator="\n")
    writer.writeheader()
    writer.writerows(rows)
    path = Path(tempfile.mkdtemp()) / "request.csv"
    path.write_text(buffer.getvalue(), encoding="utf-8")
    return path


row_strategy = st.fixed_dictionaries(
    {
        "email": st.sampled_from([*VALID, ""]),
        "customer_id": st.sampled_from(IDS),
        "action": st.sampled_from(["", "erase", "ERASE", "withdraw"]),
    }
)


@settings(max_examples=80, deadline=None)
@given(
    st.lists(row_strategy, max_size=12),
    st.sampled_from([["email"], ["customer_id"], ["email", "customer_id", "action"]]),
)
def test_valid_files_read_and_resolve_every_person_once(rows, columns) -> None:
    rows = [{c: r[c] for c in columns} for r in rows]
    rows = [r for r in rows if r.get("email") or r.get("customer_id")]  # a row names someone
    frame = read_erasure_file(write(rows, columns))
    assert frame.height == len(rows)
    assert frame["row"].to_list() == list(range(1, len(rows) + 1))
    emails = frame["email"].drop_nulls()
    assert (emails == emails.str.strip_chars().str.to_lowercase()).all()
    erase = frame.filter(pl.col("action") == "erase")
    people, unknown = resolve_subjects(erase, KNOWN)
    assert people["email"].is_unique().all()
    assert set(erase["email"].drop_nulls()) <= set(people["email"])
    for cid in set(erase["customer_id"].drop_nulls()) & {"C1", "C2", "C3"}:
        wanted = set(KNOWN.filter(pl.col("customer_id") == cid)["email"])
        assert wanted <= set(people["email"])
    expected_unknown = erase.filter(
        (pl.col("customer_id") == "C404") & pl.col("email").is_null()
    ).height
    assert unknown.height == expected_unknown


@settings(max_examples=40, deadline=None)
@given(
    st.lists(st.sampled_from(VALID), max_size=5),
    st.sampled_from(INVALID),
    st.lists(st.sampled_from(VALID), max_size=5),
)
def test_a_bad_email_names_its_row_and_field_masked(before, bad, after) -> None:
    rows = [{"email": e} for e in [*before, bad, *after]]
    with pytest.raises(ErasureFileError) as error:
        read_erasure_file(write(rows, ["email"]))
    message = str(error.value)
    assert f"request.csv: row {len(before) + 1}, field email" in message
    assert bad not in message  # shown masked
    assert "nothing was erased" in message


def test_an_empty_file_is_nothing_to_do_and_odd_files_are_refused(tmp_path: Path) -> None:
    assert read_erasure_file(write([], ["email"])).height == 0
    empty = tmp_path / "empty.csv"
    empty.write_text("")
    with pytest.raises(ErasureFileError, match="needs a column email and/or customer_id"):
        read_erasure_file(empty)
    latin = tmp_path / "latin.csv"
    latin.write_bytes("email\nj\xf6@example.com\n".encode("latin-1"))
    with pytest.raises(ErasureFileError, match=r"latin\.csv"):
        read_erasure_file(latin)
    link = tmp_path / "link.csv"
    link.symlink_to(latin)
    with pytest.raises(ErasureFileError, match="not a regular file"):
        read_erasure_file(link)


def test_the_brake_counts_people_per_list_and_in_total() -> None:
    eu = make_destination(name="eu", max_erasure_share=0.05)
    small = [ListHits(eu, members=100, hits=9)]  # 9%, but under 10 people
    check_erasure_brake(["x"] * 9, small, allowed=False)
    big = [ListHits(eu, members=100, hits=10)]
    with pytest.raises(ErasureRefused, match="10 of the 100 contacts"):
        check_erasure_brake(["x"] * 10, big, allowed=False)
    check_erasure_brake(["x"] * 10, big, allowed=True)
    with pytest.raises(ErasureRefused, match="1001 people in one run"):
        check_erasure_brake(["x"] * 1001, [], allowed=False)
