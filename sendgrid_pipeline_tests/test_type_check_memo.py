"""The frames' Dagster types validate a content once per process, and never wave a different
content through: whatever was remembered, each check's verdict is pandera's verdict."""

from __future__ import annotations

import dagster as dg
import polars as pl
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from sendgrid_pipeline import checks
from sendgrid_pipeline.checks import (
    CONTACTS_SCHEMA,
    SendGridContactsType,
    frame_fingerprint,
    record_passed,
)

EMAILS = st.one_of(
    st.from_regex(r"[a-z]{1,8}@[a-z]{1,8}\.(com|de|io)", fullmatch=True),
    st.sampled_from(["", "no-at-sign", "UPPER@example.com", "a@b", " spaced@example.com"]),
    st.text(max_size=12),
)


def contact_frames() -> st.SearchStrategy[pl.DataFrame]:
    rows = st.lists(st.tuples(st.sampled_from(["a", "b"]), EMAILS), max_size=12)
    return rows.map(
        lambda pairs: pl.DataFrame(
            {
                "destination": [d for d, _ in pairs],
                "customer_id": [str(n) for n in range(len(pairs))],
                "email": [e for _, e in pairs],
            },
            schema={"destination": pl.String, "customer_id": pl.String, "email": pl.String},
        )
    )


def pandera_passes(frame: pl.DataFrame) -> bool:
    try:
        CONTACTS_SCHEMA.validate(frame, lazy=True)
    except Exception:
        return False
    return True


def type_check(frame: pl.DataFrame) -> dg.TypeCheck:
    return SendGridContactsType.type_check(None, frame)  # type: ignore[arg-type]


@pytest.fixture(autouse=True)
def _forget_passed():
    checks._PASSED.clear()
    yield
    checks._PASSED.clear()


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(first=contact_frames(), second=contact_frames())
def test_each_verdict_is_panderas_whatever_passed_before(first, second):
    assert type_check(first).success == pandera_passes(first)
    assert type_check(second).success == pandera_passes(second)
    # the same content again: same verdict, whether remembered or not
    assert type_check(first.clone()).success == pandera_passes(first)


@settings(max_examples=100, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(frame=contact_frames(), data=st.data())
def test_one_changed_cell_is_validated_again(frame, data):
    """A frame that passed, with one email replaced, is checked on its own merits."""
    if frame.height == 0 or not pandera_passes(frame):
        return
    assert type_check(frame).success
    row = data.draw(st.integers(0, frame.height - 1))
    email = data.draw(EMAILS)
    changed = frame.with_columns(
        pl.when(pl.int_range(pl.len()) == row)
        .then(pl.lit(email))
        .otherwise(pl.col("email"))
        .alias("email")
    )
    assert type_check(changed).success == pandera_passes(changed)


def test_fingerprint_sees_order_types_and_columns():
    frame = pl.DataFrame(
        {"destination": ["a", "a"], "customer_id": ["1", "2"], "email": ["x", "y"]}
    )
    assert frame_fingerprint(frame) == frame_fingerprint(frame.clone())
    assert frame_fingerprint(frame) != frame_fingerprint(frame.reverse())
    assert frame_fingerprint(frame) != frame_fingerprint(frame.rename({"email": "mail"}))
    assert frame_fingerprint(frame.head(0)) != frame_fingerprint(
        frame.head(0).with_columns(pl.col("email").cast(pl.Categorical))
    )


def test_a_remembered_frame_is_not_validated_again(monkeypatch):
    good = pl.DataFrame(
        {"destination": ["a"], "customer_id": ["1"], "email": ["someone@example.com"]}
    )
    calls = []
    original = CONTACTS_SCHEMA.__class__.validate

    def counting(self, *args, **kwargs):
        calls.append(self.name)
        return original(self, *args, **kwargs)

    monkeypatch.setattr(CONTACTS_SCHEMA.__class__, "validate", counting)
    assert type_check(good).success
    assert type_check(good.clone()).success
    assert calls == ["SendGridContacts"]  # the second check only fingerprinted it
    record_passed(CONTACTS_SCHEMA, good.with_columns(pl.lit("b").alias("destination")))
    assert type_check(good.with_columns(pl.lit("b").alias("destination"))).success
    assert calls == ["SendGridContacts"]


def test_what_is_remembered_is_bounded():
    for n in range(100):
        record_passed(CONTACTS_SCHEMA, pl.DataFrame({"n": [n]}))
    assert len(checks._PASSED) == checks._PASSED_KEPT


def test_a_materialization_validates_the_contacts_once(tmp_path, monkeypatch):
    """In a real run the contacts are checked by the blocking check, the output's type and
    the sync's input type; pandera runs over them once per destination, not three times."""
    from sendgrid_pipeline.checks import capped_contacts_schema

    calls: list[str] = []
    original = CONTACTS_SCHEMA.__class__.validate

    def counting(self, *args, **kwargs):
        calls.append(str(self.name))
        return original(self, *args, **kwargs)

    monkeypatch.setattr(CONTACTS_SCHEMA.__class__, "validate", counting)

    @dg.asset(dagster_type=SendGridContactsType)
    def contacts() -> pl.DataFrame:
        frame = pl.DataFrame(
            {"destination": ["a"], "customer_id": ["1"], "email": ["someone@example.com"]}
        )
        capped_contacts_schema(10).validate(frame, lazy=True)  # the blocking check's run
        record_passed(CONTACTS_SCHEMA, frame)
        return frame

    @dg.asset(ins={"contacts": dg.AssetIn(dagster_type=SendGridContactsType)})
    def downstream(contacts: pl.DataFrame) -> None:
        assert contacts.height == 1

    result = dg.materialize([contacts, downstream], resources={"io_manager": dg.mem_io_manager})
    assert result.success
    assert calls == ["SendGridContacts"]  # the capped schema keeps the contacts schema's name
