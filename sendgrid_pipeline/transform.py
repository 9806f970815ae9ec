"""Pure polars transforms: segment membership and a destination's contacts.

Kept free of Dagster so they can be tested, benchmarked and reused directly.
"""

from __future__ import annotations

from dataclasses import dataclass

import polars as pl

from sendgrid_pipeline.config import SENDGRID_FIELD_MAX_LENGTH, Destination, Segment

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


def segment_membership(profiles: pl.DataFrame, segments: tuple[Segment, ...]) -> pl.DataFrame:
    """Long table (customer_id, segment_id) of every profile in every segment."""
    lazy = profiles.lazy().select("customer_id", *_rule_columns(profiles, segments))
    parts = [
        lazy.filter(segment.expression.fill_null(False)).select(
            "customer_id", pl.lit(segment.id).alias("segment_id")
        )
        for segment in segments
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


def destination_contacts(
    profiles: pl.DataFrame, membership: pl.DataFrame, destination: Destination
) -> DestinationContacts:
    """Union of the destination's segments, mapped, normalized, validated and deduplicated."""
    mapping = destination.field_mapping.as_dict()
    members = (
        membership.lazy()
        .filter(pl.col("segment_id").is_in(list(destination.segments)))
        .select("customer_id")
        .unique()
    )
    mapped = (
        profiles.lazy()
        .join(members, on="customer_id", how="semi")
        .select(
            pl.lit(destination.name).alias("destination"),
            pl.col("customer_id"),
            *[_normalized(column, field) for field, column in mapping.items()],
        )
        .collect()
    )
    mapped = mapped.with_columns(_rejection_reason(list(mapping)).alias("_reason"))
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


def _normalized(column: str, field: str) -> pl.Expr:
    """Trim every value, empty -> null; emails lowercased as SendGrid stores them."""
    value = pl.col(column).cast(pl.String).str.strip_chars()
    value = pl.when(value == "").then(None).otherwise(value)
    if field == "email":
        value = value.str.to_lowercase()
    return value.alias(field)


def _rejection_reason(fields: list[str]) -> pl.Expr:
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
    return reason.otherwise(pl.lit(None, pl.String))


def contact_json(accepted: pl.DataFrame, fields: list[str]) -> pl.Series:
    """One JSON object per contact, exactly as sent; an empty string clears a field."""
    values = [pl.col(f) if f == "email" else pl.col(f).fill_null("").alias(f) for f in fields]
    return accepted.select(pl.struct(values).struct.json_encode().alias("contact_json")).to_series()
