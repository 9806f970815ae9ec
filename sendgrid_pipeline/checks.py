"""Pandera (polars) schemas for the frames, and the asset-check results built on them."""

from __future__ import annotations

import threading
import warnings
from collections import OrderedDict

import dagster as dg
import pandera.polars as pa
import polars as pl
from dagster_pandera import pandera_schema_to_dagster_type
from pandera.errors import SchemaErrors

from sendgrid_pipeline.transform import EMAIL_PATTERN

EMAIL_CHECK = "sendgrid_contacts_email_valid"
CAP_CHECK = "sendgrid_contacts_within_profile_cap"


def _is_lowercase(data: pa.PolarsData) -> pl.LazyFrame:
    column = pl.col(data.key)
    return data.lazyframe.select((column == column.str.to_lowercase()).alias(data.key))


PROFILES_SCHEMA = pa.DataFrameSchema(
    {"customer_id": pa.Column(pl.String, nullable=False, unique=True)},
    name="UnifiedProfiles",
    description="Unified customer profiles: one row per customer_id (unique, never null).",
    strict=False,
)

MEMBERSHIP_SCHEMA = pa.DataFrameSchema(
    {
        "customer_id": pa.Column(pl.String, nullable=False),
        "segment_id": pa.Column(pl.String, nullable=False),
    },
    name="SegmentMembership",
    description="Which profile is in which segment (one row per pair).",
    unique=["customer_id", "segment_id"],
)


def _email_column(*extra: pa.Check) -> pa.Column:
    return pa.Column(
        pl.String,
        nullable=False,
        checks=[
            pa.Check.str_matches(EMAIL_PATTERN, name="valid_email_syntax"),
            pa.Check.str_length(max_value=254, name="within_sendgrid_max_length"),
            pa.Check(_is_lowercase, name="lowercase"),
            *extra,
        ],
    )


CONTACTS_SCHEMA = pa.DataFrameSchema(
    {
        "destination": pa.Column(pl.String, nullable=False),
        "customer_id": pa.Column(pl.String, nullable=False),
        "email": _email_column(),
    },
    name="SendGridContacts",
    description="Contacts ready for SendGrid: email present, valid, lowercase, unique per "
    "destination; one row per contact.",
    unique=["destination", "email"],
    strict=False,
)

# Frames that passed a schema in this process, by content: (schema name, fingerprint). A run
# checks the same frame several times (the output's type check, then each step that loads it
# as an input): what passed once passes again, so each later check only fingerprints it.
_PASSED: OrderedDict[tuple[str, tuple[object, ...]], None] = OrderedDict()
_PASSED_KEPT = 32
_PASSED_LOCK = threading.Lock()  # steps of a run may share a process (in-process executor)


def frame_fingerprint(frame: pl.DataFrame) -> tuple[object, ...]:
    """The frame's content: height, columns and types, and a hash of every row in order."""
    order_sensitive = frame.hash_rows() * pl.int_range(1, frame.height + 1, eager=True).cast(
        pl.UInt64
    )
    return (frame.height, tuple(frame.schema.items()), int(order_sensitive.sum() or 0))


def record_passed(schema: pa.DataFrameSchema, frame: pl.DataFrame) -> None:
    """Remember that `frame` passed `schema` (validated by it, or by a stricter schema)."""
    key = (str(schema.name), frame_fingerprint(frame))
    with _PASSED_LOCK:
        _PASSED[key] = None
        while len(_PASSED) > _PASSED_KEPT:
            _PASSED.popitem(last=False)


def _memoized_dagster_type(schema: pa.DataFrameSchema) -> dg.DagsterType:
    """dagster-pandera's type for `schema` (its metadata and its validation), skipping the
    validation of a frame whose very content already passed in this process."""
    with warnings.catch_warnings():  # dagster-pandera marks this beta; the pinned set is tested
        warnings.simplefilter("ignore", dg.BetaWarning)
        pandera_type = pandera_schema_to_dagster_type(schema)

    def type_check(context: dg.TypeCheckContext, value: object) -> dg.TypeCheck:
        if isinstance(value, pl.DataFrame):
            key = (str(schema.name), frame_fingerprint(value))
            if key in _PASSED:
                return dg.TypeCheck(
                    success=True,
                    description=f"{schema.name}: the same rows passed earlier in this run",
                )
            result = pandera_type.type_check(context, value)
            if result.success:
                record_passed(schema, value)
            return result
        return pandera_type.type_check(context, value)

    return dg.DagsterType(
        type_check_fn=type_check,
        name=pandera_type.unique_name,
        description=pandera_type.description,
        metadata=pandera_type.metadata,
        typing_type=pl.DataFrame,
    )


SendGridContactsType = _memoized_dagster_type(CONTACTS_SCHEMA)
UnifiedProfilesType = _memoized_dagster_type(PROFILES_SCHEMA)
SegmentMembershipType = _memoized_dagster_type(MEMBERSHIP_SCHEMA)


def capped_contacts_schema(cap: int) -> pa.DataFrameSchema:
    """The contacts schema plus a destination's profile cap, expressed element-wise.

    A dataframe-level boolean check beside failing string checks makes pandera's lazy
    validation crash; a per-row check (row index < cap) reports both cleanly.
    """

    def within_cap(data: pa.PolarsData) -> pl.LazyFrame:
        return data.lazyframe.select(pl.int_range(pl.len()).lt(cap).alias(data.key))

    return CONTACTS_SCHEMA.update_column(
        "email",
        checks=[
            *CONTACTS_SCHEMA.columns["email"].checks,
            pa.Check(within_cap, name="within_profile_cap"),
        ],
    )


def _failure_cases(schema: pa.DataFrameSchema, frame: pl.DataFrame) -> pl.DataFrame | None:
    """Pandera's failure cases (one row per failing value and check); None when valid."""
    try:
        schema.validate(frame, lazy=True)
    except SchemaErrors as errors:
        return errors.failure_cases.with_columns(
            pl.col("check").str.replace(r"^str_matches\(.*", "valid_email_syntax")
        )
    return None


def validation_failures(schema: pa.DataFrameSchema, frame: pl.DataFrame) -> pl.DataFrame:
    """Pandera's failure cases as a small frame (check, count); empty when valid."""
    cases = _failure_cases(schema, frame)
    if cases is None:
        return pl.DataFrame(schema={"check": pl.String, "failures": pl.Int64})
    return (
        cases.group_by("check")
        .agg(pl.len().alias("failures"))
        .sort("check")
        .with_columns(pl.col("failures").cast(pl.Int64))
    )


def contact_check_results(contacts: pl.DataFrame, cap: int) -> list[dg.AssetCheckResult]:
    """The blocking checks over one destination's contacts, with that destination's figures."""
    cases = _failure_cases(capped_contacts_schema(cap), contacts)
    if cases is None:
        cases = pl.DataFrame(schema={"check": pl.String, "index": pl.Int32})
    email_cases = cases.filter(pl.col("check") != "within_profile_cap")
    over_cap = cases.height - email_cases.height
    by_check = dict(email_cases.group_by("check").len().sort("check").iter_rows())
    failing_rows = email_cases["index"].drop_nulls().n_unique()
    email_problems = [f"{n} row(s) fail {check}" for check, n in by_check.items()]
    return [
        dg.AssetCheckResult(
            check_name=EMAIL_CHECK,
            passed=not email_problems,
            severity=dg.AssetCheckSeverity.ERROR,
            description="; ".join(email_problems) or "every email is present, valid and unique",
            metadata={
                "contacts": contacts.height,
                "failing_rows": failing_rows,
                **{f"failing_{check}": int(n) for check, n in by_check.items()},
            },
        ),
        dg.AssetCheckResult(
            check_name=CAP_CHECK,
            passed=not over_cap,
            severity=dg.AssetCheckSeverity.ERROR,
            description=(
                f"{contacts.height} contacts exceed the cap of {cap} by {contacts.height - cap}"
                if over_cap
                else f"{contacts.height} contacts, within the cap of {cap}"
            ),
            metadata={"contacts": contacts.height, "profile_cap": cap},
        ),
    ]
