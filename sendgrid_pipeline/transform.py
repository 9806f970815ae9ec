"""Pure polars transforms: segment membership and a destination's contacts.

Kept free of Dagster so they can be tested, benchmarked and reused directly.
"""

from __future__ import annotations

from dataclasses import dataclass

import polars as pl

from sendgrid_pipeline.config import (
    IDENTIFIER_FIELDS,
    MAX_ALTERNATE_EMAILS,
    SENDGRID_FIELD_MAX_LENGTH,
    CustomField,
    Destination,
    Segment,
    value_expression,
)

# Lowercase ASCII addresses SendGrid accepts: dot-atom local part, a dotted host name.
EMAIL_PATTERN = (
    r"^[a-z0-9!#$%&'*+/=?^_`{|}~-]+(\.[a-z0-9!#$%&'*+/=?^_`{|}~-]+)*"
    r"@([a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?\.)+[a-z]{2,63}$"
)
MAX_LOCAL_PART = 64

REJECTION_SCHEMA = {
    "destination": pl.String,
    "customer_id": pl.String,
    "email": pl.String,
    "reason": pl.String,
    "detail": pl.String,
}


@dataclass(frozen=True)
class DestinationContacts:
    """What a destination will send, and every row that cannot be sent, with its reason."""

    accepted: pl.DataFrame
    rejected: pl.DataFrame
    profiles_in_segments: int


def segment_membership(
    profiles: pl.DataFrame,
    segments: tuple[Segment, ...],
    files: dict[str, pl.DataFrame] | None = None,
) -> pl.DataFrame:
    """Long table (customer_id, segment_id) of every profile in every segment.

    Rule segments are evaluated over the profiles; file segments (`files`: segment id ->
    customer ids exported by a CDP) keep the ids that have a profile.
    """
    files = files or {}
    ruled = [s for s in segments if s.rule is not None]
    lazy = profiles.lazy().select("customer_id", *_rule_columns(profiles, tuple(ruled)))
    ids = profiles.lazy().select("customer_id")
    parts = [
        lazy.filter(segment.expression.fill_null(False)).select(
            "customer_id", pl.lit(segment.id).alias("segment_id")
        )
        for segment in ruled
    ] + [
        files[s.id]
        .lazy()
        .select(pl.col("customer_id").cast(pl.String))
        .unique()
        .join(ids, on="customer_id", how="semi")
        .select("customer_id", pl.lit(s.id).alias("segment_id"))
        for s in segments
        if s.rule is None
    ]
    if not parts:
        return pl.DataFrame(schema={"customer_id": pl.String, "segment_id": pl.String})
    return pl.concat(parts).collect()


def _rule_columns(profiles: pl.DataFrame, segments: tuple[Segment, ...]) -> list[str]:
    """Only the columns segment rules use, so the other columns are never copied."""
    used: set[str] = set()
    for segment in segments:
        used.update(segment.expression.meta.root_names())
    return [c for c in profiles.columns if c in used and c != "customer_id"]


def destination_members(membership: pl.DataFrame, destination: Destination) -> pl.LazyFrame:
    """customer_ids in any included segment and in no excluded one."""
    segment = pl.col("segment_id")
    included = membership.lazy().filter(segment.is_in(list(destination.segments)))
    excluded = membership.lazy().filter(segment.is_in(list(destination.exclude_segments)))
    return (
        included.select("customer_id")
        .unique()
        .join(excluded.select("customer_id"), on="customer_id", how="anti")
    )


def destination_contacts(
    profiles: pl.DataFrame, membership: pl.DataFrame, destination: Destination
) -> DestinationContacts:
    """The destination's members, mapped, normalized, validated and deduplicated."""
    mapping = destination.field_mapping
    reserved = mapping.as_dict()
    custom = mapping.custom_fields
    mapped = (
        profiles.lazy()
        .join(destination_members(membership, destination), on="customer_id", how="semi")
        .select(
            pl.lit(destination.name).alias("destination"),
            pl.col("customer_id"),
            *[_normalized(source, field) for field, source in reserved.items()],
            *[
                e
                for name, field in custom.items()
                for e in _custom_value(name, field, profiles.lazy())
            ],
        )
        .collect()
    )
    mapped = mapped.with_columns(_rejection_reason(list(reserved), custom).alias("_reason")).drop(
        [f"_raw.{name}" for name in custom]
    )
    invalid = mapped.filter(pl.col("_reason").is_not_null())
    valid = mapped.filter(pl.col("_reason").is_null()).drop("_reason")

    # Deterministic dedup: for each email keep the smallest customer_id.
    valid = valid.sort("email", "customer_id").with_columns(
        pl.col("customer_id").first().over("email").alias("_kept")
    )
    kept = valid.filter(pl.col("customer_id") == pl.col("_kept")).drop("_kept")
    duplicates = valid.filter(pl.col("customer_id") != pl.col("_kept")).with_columns(
        pl.lit("duplicate_email").alias("reason"),
        (pl.lit("same email as kept profile ") + pl.col("_kept")).alias("detail"),
    )
    rejected = pl.concat(
        [
            invalid.select(
                "destination",
                "customer_id",
                "email",
                pl.col("_reason").alias("reason"),
                pl.lit(None, pl.String).alias("detail"),
            ),
            duplicates.select(list(REJECTION_SCHEMA)),
        ]
    ).sort("customer_id")
    return DestinationContacts(
        accepted=kept.sort("email"),
        rejected=rejected.cast(REJECTION_SCHEMA),
        profiles_in_segments=mapped.height,
    )


def _normalized(source: str, field: str) -> pl.Expr:
    """Trim every value, empty -> null; emails lowercased as SendGrid stores them."""
    if field == "alternate_emails":
        return _alternate_emails(source)
    value = value_expression(source).cast(pl.String).str.strip_chars()
    value = pl.when(value == "").then(None).otherwise(value)
    if field == "email":
        value = value.str.to_lowercase()
    return value.alias(field)


def _alternate_emails(source: str) -> pl.Expr:
    """A list column, or text separated by commas or semicolons -> a clean list of emails."""
    raw = value_expression(source)
    as_list = (
        pl.when(raw.is_null())
        .then(pl.lit(None, pl.List(pl.String)))
        .otherwise(raw.cast(pl.String).str.split(","))
    )
    cleaned = as_list.list.eval(
        pl.element()
        .str.replace_all(";", ",")
        .str.split(",")
        .explode()
        .str.strip_chars()
        .str.to_lowercase()
        .filter(pl.element() != "")
    ).list.unique(maintain_order=True)
    return cleaned.alias("alternate_emails")


def _custom_value(name: str, field: CustomField, profiles: pl.LazyFrame) -> list[pl.Expr]:
    """A custom field's value converted to its SendGrid type, plus the raw value for checks.

    Dates go out as MM/DD/YYYY; text is parsed as YYYY-MM-DD or MM/DD/YYYY.
    """
    raw = value_expression(field.source)
    column = f"custom_fields.{name}"
    if field.type == "Number":
        value = raw.cast(pl.Float64, strict=False)
    elif field.type == "Date":
        dtype = profiles.select(raw.alias("v")).collect_schema()["v"]
        if dtype.is_temporal():
            value = raw.dt.strftime("%m/%d/%Y")
        else:
            text = raw.cast(pl.String).str.strip_chars()
            value = pl.coalesce(
                text.str.to_date("%Y-%m-%d", strict=False),
                text.str.to_date("%m/%d/%Y", strict=False),
            ).dt.strftime("%m/%d/%Y")
    else:
        value = raw.cast(pl.String).str.strip_chars()
        value = pl.when(value == "").then(None).otherwise(value)
    return [value.alias(column), raw.cast(pl.String).alias(f"_raw.{name}")]


def _rejection_reason(fields: list[str], custom: dict[str, CustomField]) -> pl.Expr:
    """The first reason a row cannot be sent, or null when it can."""
    email = pl.col("email")
    local_length = email.str.split("@").list.first().str.len_chars()
    reason = (
        pl.when(email.is_null())
        .then(pl.lit("missing_email"))
        .when(email.str.len_chars() > SENDGRID_FIELD_MAX_LENGTH["email"])
        .then(pl.lit("email_too_long"))
        .when(~email.str.contains(EMAIL_PATTERN) | (local_length > MAX_LOCAL_PART))
        .then(pl.lit("invalid_email"))
    )
    for field in fields:
        limit = SENDGRID_FIELD_MAX_LENGTH.get(field, 0)
        if field != "email" and limit:
            reason = reason.when(pl.col(field).str.len_chars() > limit).then(
                pl.lit(f"{field}_too_long")
            )
    if "alternate_emails" in fields:
        alternates = pl.col("alternate_emails")
        bad = alternates.list.eval(
            ~pl.element().str.contains(EMAIL_PATTERN) | (pl.element().str.len_chars() > 254)
        ).list.any()
        reason = (
            reason.when(alternates.list.len() > MAX_ALTERNATE_EMAILS)
            .then(pl.lit("too_many_alternate_emails"))
            .when(bad)
            .then(pl.lit("invalid_alternate_email"))
        )
    for name, field in custom.items():
        if field.type in ("Number", "Date"):
            lost = pl.col(f"_raw.{name}").is_not_null() & pl.col(f"custom_fields.{name}").is_null()
            problem = "not_a_number" if field.type == "Number" else "not_a_date"
            reason = reason.when(lost).then(pl.lit(f"{name}_{problem}"))
    return reason.otherwise(pl.lit(None, pl.String))


def _json_value(column: str) -> pl.Expr:
    """The JSON text of a column's value (strings escaped), via a one-field struct."""
    encoded = pl.struct(pl.col(column).alias("v")).struct.json_encode()
    return encoded.str.slice(5, encoded.str.len_chars() - 6)


def contact_json(
    accepted: pl.DataFrame, fields: list[str], custom_ids: dict[str, str] | None = None
) -> pl.Series:
    """One JSON object per contact, exactly as sent.

    An empty reserved text field is sent as "" (which clears it in SendGrid); an absent
    identifier, alternate_emails or custom value is left out (it cannot be cleared that way).
    Custom fields are keyed by their SendGrid id, as the API requires.
    """
    parts = []
    for field in fields:
        value = pl.col(field)
        if field == "email":
            parts.append(pl.lit('"email":') + _json_value(field))
        elif field == "alternate_emails":
            present = value.list.len() > 0
            parts.append(pl.when(present).then(pl.lit(f'"{field}":') + _json_value(field)))
        elif field in IDENTIFIER_FIELDS:
            present = value.is_not_null()
            parts.append(pl.when(present).then(pl.lit(f'"{field}":') + _json_value(field)))
        else:
            filled = pl.struct(value.fill_null("").alias("v")).struct.json_encode()
            parts.append(pl.lit(f'"{field}":') + filled.str.slice(5, filled.str.len_chars() - 6))
    custom_parts = [
        pl.when(pl.col(f"custom_fields.{name}").is_not_null()).then(
            pl.lit(f'"{field_id}":') + _json_value(f"custom_fields.{name}")
        )
        for name, field_id in (custom_ids or {}).items()
    ]
    if custom_parts:
        inner = pl.concat_str(custom_parts, separator=",", ignore_nulls=True)
        parts.append(pl.lit('"custom_fields":{') + inner + pl.lit("}"))
    body = pl.concat_str(parts, separator=",", ignore_nulls=True)
    return accepted.select((pl.lit("{") + body + pl.lit("}")).alias("contact_json")).to_series()
