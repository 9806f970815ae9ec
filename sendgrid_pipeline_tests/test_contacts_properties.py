"""Property-based tests of the contacts stage over profile frames nobody designed.

Generated frames include zero rows, zero rejected rows, every row rejected, all-null columns,
numbers and floats feeding text fields, non-finite numbers, control characters, long and
unicode values. The expectations are computed independently, in plain Python.
"""

from __future__ import annotations

import json
import math
import re
from pathlib import Path

import polars as pl
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from sendgrid_pipeline.assets.contacts import write_rejected_report
from sendgrid_pipeline.checks import CONTACTS_SCHEMA
from sendgrid_pipeline.config import CustomField, Destination, FieldMapping, Segment
from sendgrid_pipeline.transform import (
    REJECTION_SCHEMA,
    contact_json,
    destination_contacts,
    number_custom_fields,
    segment_membership,
)

EMAIL = re.compile(
    r"^[a-z0-9!#$%&'*+/=?^_`{|}~-]+(\.[a-z0-9!#$%&'*+/=?^_`{|}~-]+)*@"
    r"([a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?\.)+([a-z]{2,63}|xn--[a-z0-9-]{1,59})$"
)
CUSTOM_IDS = {"store_code": "e1_T", "score": "e2_N", "visits": "e3_N"}
DESTINATION = Destination(
    name="generated",
    display_name="Generated",
    list_id="0000-generated",
    consent=True,
    field_mapping=FieldMapping(
        email="email",
        first_name="first_name",
        postal_code="postal_code",
        custom_fields={
            "store_code": CustomField(source="store_code", type="Text"),
            "score": CustomField(source="score", type="Number"),
            "visits": CustomField(source="visits", type="Number"),
        },
    ),
    segments=("everyone",),
)
EVERYONE = (Segment(id="everyone", name="Everyone", rule="TRUE"),)

# -- generators ----------------------------------------------------------------------------
local_parts = st.from_regex(r"[A-Za-z0-9._%+'-]{1,70}", fullmatch=True)
domains = st.sampled_from(
    ["example.com", "Example.ORG", "mail.example.co.uk", "xn--e1afmkfd.xn--p1ai", "x.io", "b"]
)
good_emails = st.builds(lambda local, domain: f"{local}@{domain}", local_parts, domains)
emails = st.one_of(
    good_emails,
    good_emails.map(lambda e: f"  {e.upper()} "),  # padded, mixed case
    st.builds(lambda n: "a" * n + "@example.com", st.integers(90, 260)),  # long
    st.text(max_size=30),  # anything at all
    st.none(),
)
texts = st.one_of(
    st.none(),
    st.text(max_size=70),  # unicode, control characters, whitespace, long
    st.sampled_from(["", "   ", "Zoë", "O'Sullivan", "a\x00b", "line\nbreak", "tab\there"]),
)
floats = st.one_of(st.none(), st.floats(allow_nan=True, allow_infinity=True, width=64))
integers = st.one_of(st.none(), st.integers(-(2**62), 2**62))


@st.composite
def profile_frames(draw: st.DrawFn) -> pl.DataFrame:
    """A frame of profiles; code and postal columns take a text, integer or float type."""
    size = draw(st.integers(0, 25))
    column = lambda values: draw(st.lists(values, min_size=size, max_size=size))  # noqa: E731
    code_kind = draw(st.sampled_from(["text", "int", "float", "null"]))
    codes = {
        "text": (st.one_of(st.none(), st.from_regex(r"0[0-9]{0,6}", fullmatch=True)), pl.String),
        "int": (integers, pl.Int64),
        "float": (floats, pl.Float64),
        "null": (st.none(), pl.String),
    }[code_kind]
    score_kind = draw(st.sampled_from(["int", "float", "text"]))
    scores = {
        "int": (integers, pl.Int64),
        "float": (floats, pl.Float64),
        "text": (
            st.one_of(texts, st.from_regex(r" ?[+-]?[0-9]{1,5}(\.[0-9]{1,3})? ?", fullmatch=True)),
            pl.String,
        ),
    }[score_kind]
    return pl.DataFrame(
        {
            "customer_id": [f"C{i:05d}" for i in range(size)],
            "email": column(emails),
            "first_name": column(texts),
            "postal_code": column(codes[0]),
            "store_code": column(codes[0]),
            "score": column(scores[0]),
            "visits": column(integers),
        },
        schema={
            "customer_id": pl.String,
            "email": pl.String,
            "first_name": pl.String,
            "postal_code": codes[1],
            "store_code": codes[1],
            "score": scores[1],
            "visits": pl.Int64,
        },
    )


# -- an independent statement of what each value becomes -----------------------------------
REJECT = object()


def expected_text(value: object) -> object:
    """None when absent, REJECT when it cannot be sent, else the exact text sent."""
    if value is None:
        return None
    if isinstance(value, float):
        if not math.isfinite(value):
            return REJECT
        if value == int(value) and abs(value) < 2**53:
            return str(int(value))
        return value  # compared numerically: float formatting differs between libraries
    if isinstance(value, int):
        return str(value)
    text = re.sub(r"[\t\n\r]+", " ", str(value))
    text = re.sub(r"[\x00-\x08\x0b\x0c\x0e-\x1f\x7f-\x9f]", "", text).strip()
    return text or None


def expected_number(value: object) -> object:
    if value is None:
        return None
    if isinstance(value, int):
        return value
    if isinstance(value, float):
        return value if math.isfinite(value) else REJECT
    text = str(value).strip()
    if not text:
        return None
    try:
        number = float(text) if re.fullmatch(r"[+-]?[0-9.]+", text) else None
    except ValueError:
        number = None
    if number is None or not math.isfinite(number):
        return REJECT
    return int(text) if re.fullmatch(r"[+-]?[0-9]{1,18}", text) else number


def expected_email(value: object) -> str | None:
    if value is None:
        return None
    email = str(value).strip().lower()
    if not email or len(email) > 254 or not EMAIL.match(email):
        return None
    return email if len(email.split("@")[0]) <= 64 else None


def row_is_sendable(row: dict) -> bool:
    if expected_email(row["email"]) is None:
        return False
    for name in ("first_name",):
        text = expected_text(row[name])
        if text is REJECT or (isinstance(text, str) and len(text) > 50):
            return False
    if expected_text(row["postal_code"]) is REJECT or expected_text(row["store_code"]) is REJECT:
        return False
    return expected_number(row["score"]) is not REJECT


def contacts_of(profiles: pl.DataFrame):
    membership = segment_membership(profiles, EVERYONE)
    return destination_contacts(profiles, membership, DESTINATION)


# -- properties ----------------------------------------------------------------------------
SETTINGS = settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])


@SETTINGS
@given(profile_frames())
def test_every_row_ends_in_exactly_one_place(profiles: pl.DataFrame) -> None:
    result = contacts_of(profiles)
    sent = set(result.accepted["customer_id"])
    rejected = set(result.rejected["customer_id"])
    assert sent.isdisjoint(rejected)
    assert sent | rejected == set(profiles["customer_id"])
    assert result.accepted.height + result.rejected.height == profiles.height
    assert result.profiles_in_segments == profiles.height
    assert result.rejected["reason"].null_count() == 0
    assert result.rejected.schema == pl.Schema(REJECTION_SCHEMA)


@SETTINGS
@given(profile_frames())
def test_who_is_sent_matches_an_independent_rule(profiles: pl.DataFrame) -> None:
    result = contacts_of(profiles)
    best: dict[str, str] = {}
    for row in profiles.iter_rows(named=True):
        if row_is_sendable(row):
            email = expected_email(row["email"])
            if email not in best or row["customer_id"] < best[email]:
                best[email] = row["customer_id"]
    assert dict(result.accepted.select("email", "customer_id").iter_rows()) == best
    duplicates = result.rejected.filter(pl.col("reason") == "duplicate_email")
    assert duplicates.height == sum(
        1 for row in profiles.iter_rows(named=True) if row_is_sendable(row)
    ) - len(best)
    for email, detail in duplicates.select("email", "detail").iter_rows():
        assert detail == f"same email as kept profile {best[email]}"
    assert result.accepted["email"].to_list() == sorted(best)


@SETTINGS
@given(profile_frames())
def test_what_is_sent_is_the_text_a_user_expects(profiles: pl.DataFrame) -> None:
    result = contacts_of(profiles)
    fields = list(DESTINATION.field_mapping.as_dict())
    encoded = contact_json(
        result.accepted, fields, CUSTOM_IDS, number_custom_fields(DESTINATION.field_mapping)
    )
    source = {row["customer_id"]: row for row in profiles.iter_rows(named=True)}
    for customer_id, body in zip(result.accepted["customer_id"], encoded, strict=True):
        contact = json.loads(body)  # always valid JSON, whatever the input
        row = source[customer_id]
        assert contact["email"] == expected_email(row["email"])
        for field in ("first_name", "postal_code"):
            want = expected_text(row[field])
            got = contact[field]
            if isinstance(want, float):
                assert float(got) == want
            else:
                assert got == (want or "")  # empty reserved text is sent as "" (clears it)
        custom = contact.get("custom_fields", {})
        want_code = expected_text(row["store_code"])
        if isinstance(want_code, float):
            assert float(custom["e1_T"]) == want_code
        else:
            assert custom.get("e1_T") == want_code
        for name, field_id in (("score", "e2_N"), ("visits", "e3_N")):
            want = expected_number(row[name])
            assert custom.get(field_id) == want
            if isinstance(want, int):
                assert type(custom[field_id]) is int  # integers stay integers
        assert not re.search(r"[\x00-\x1f\x7f]", body.encode().decode("unicode_escape", "ignore"))


@SETTINGS
@given(profiles=profile_frames())
def test_contacts_and_report_keep_their_contracts(
    tmp_path_factory: pytest.TempPathFactory, profiles: pl.DataFrame
) -> None:
    result = contacts_of(profiles)
    CONTACTS_SCHEMA.validate(result.accepted, lazy=True)  # raises on any violation
    path = Path(tmp_path_factory.mktemp("report")) / "generated.csv"
    report = write_rejected_report(path, result.rejected)
    assert len(report) == result.rejected.height
    assert pl.read_csv(path, infer_schema=False).height == result.rejected.height


def test_clean_frame_rejects_nothing_and_an_empty_frame_is_fine(tmp_path: Path) -> None:
    clean = pl.DataFrame(
        {
            "customer_id": ["C1", "C2"],
            "email": ["a@example.com", "b@xn--e1afmkfd.xn--p1ai"],
            "first_name": ["Ann", "Bo"],
            "postal_code": [75001.0, None],  # what pandas writes for integers with nulls
            "store_code": ["01234", "00007"],
            "score": [1.5, None],
            "visits": [3, None],
        }
    )
    result = contacts_of(clean)
    assert result.rejected.height == 0 and result.accepted.height == 2
    assert write_rejected_report(tmp_path / "clean.csv", result.rejected).empty
    empty = contacts_of(clean.clear())
    assert empty.accepted.height == 0 and empty.rejected.height == 0
    CONTACTS_SCHEMA.validate(empty.accepted, lazy=True)
