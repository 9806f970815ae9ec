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
    FieldMapping,
    Segment,
    value_expression,
)

# Lowercase ASCII addresses SendGrid accepts: dot-atom local part, a dotted host name.
EMAIL_PATTERN = (
    r"^[a-z0-9!#$%&'*+/=?^_`{|}~-]+(\.[a-z0-9!#$%&'*+/=?^_`{|}~-]+)*"
    r"@([a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?\.)+([a-z]{2,63}|xn--[a-z0-9-]{1,59})$"
)
# Control characters never reach SendGrid: tabs and line breaks become a space, others go.
LINE_BREAKS = r"[\t\n\r]+"
CONTROL_CHARACTERS = r"[\x00-\x08\x0b\x0c\x0e-\x1f\x7f-\x9f]"
MAX_LOCAL_PART = 64

# The people a destination must not export, whatever their segments say: one row per email
# and/or customer id (either may be null), with the reason reported for the rows it drops
# (`erased`: the erasure ledger; other sources add their own reasons). See `destination_contacts`.
DO_NOT_EXPORT_SCHEMA = {"email": pl.String, "customer_id": pl.String, "reason": pl.String}
DO_NOT_EXPORT_DETAIL = "on the do-not-export list"
# When several reasons match one profile, the first of these wins (others: alphabetical).
ERASED = "erased"
DO_NOT_EXPORT_PRIORITY = (ERASED,)

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


def _root_names(expressions: list[pl.Expr]) -> list[str]:
    return list(dict.fromkeys(name for e in expressions for name in e.meta.root_names()))


def segment_profile_columns(segments: tuple[Segment, ...]) -> list[str]:
    """The profile columns membership needs: customer_id and those the rules use."""
    rules = [s.expression for s in segments if s.rule is not None]
    return list(dict.fromkeys(["customer_id", *_root_names(rules)]))


def contacts_profile_columns(destinations: list[Destination]) -> list[str]:
    """The profile columns contacts need: customer_id and those the field mappings use."""
    sources = [
        source
        for d in destinations
        for source in [
            *d.field_mapping.as_dict().values(),
            *(c.source for c in d.field_mapping.custom_fields.values()),
        ]
    ]
    return list(
        dict.fromkeys(["customer_id", *_root_names([value_expression(s) for s in sources])])
    )


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


def empty_do_not_export() -> pl.DataFrame:
    return pl.DataFrame(schema=DO_NOT_EXPORT_SCHEMA)


def _do_not_export_reasons(do_not_export: pl.DataFrame) -> tuple[pl.LazyFrame, pl.LazyFrame]:
    """(email -> reason, customer_id -> reason), one reason per key by priority.

    Emails are compared as the mapped email is: trimmed and lowercased.
    """
    priority = pl.col("reason").replace_strict(
        {r: i for i, r in enumerate(DO_NOT_EXPORT_PRIORITY)},
        default=len(DO_NOT_EXPORT_PRIORITY),
        return_dtype=pl.Int32,
    )
    rows = (
        do_not_export.lazy()
        .select(
            pl.col("email").cast(pl.String).str.strip_chars().str.to_lowercase(),
            pl.col("customer_id").cast(pl.String),
            pl.col("reason").cast(pl.String),
        )
        .sort(priority, "reason")
    )

    def first_reason(key: str, alias: str) -> pl.LazyFrame:
        return (
            rows.filter(pl.col(key).is_not_null())
            .group_by(key, maintain_order=True)
            .agg(pl.col("reason").first().alias(alias))
        )

    return first_reason("email", "_dne_email"), first_reason("customer_id", "_dne_id")


def _erased_by_alternate(mapped: pl.DataFrame, by_email: pl.LazyFrame) -> pl.LazyFrame:
    """customer_id -> `erased` for profiles whose alternate emails hold an erased address.

    An erased address is the person's, whichever field carries it: the profile is not sent at
    all (sending it without that address would still export the person). Other reasons (a
    suppression) concern the address SendGrid mails, the primary one, and are not matched here.
    """
    schema = {"customer_id": pl.String, "_dne_alternate": pl.String}
    if "alternate_emails" not in mapped.columns:
        return pl.LazyFrame(schema=schema)
    erased = by_email.filter(pl.col("_dne_email") == ERASED).select("email")
    return (
        mapped.lazy()
        .select("customer_id", pl.col("alternate_emails").alias("email"))
        .explode("email")
        .join(erased, on="email", how="semi")
        .select("customer_id", pl.lit(ERASED, pl.String).alias("_dne_alternate"))
        .unique("customer_id")
    )


def destination_contacts(
    profiles: pl.DataFrame,
    membership: pl.DataFrame,
    destination: Destination,
    do_not_export: pl.DataFrame | None = None,
) -> DestinationContacts:
    """The destination's members, mapped, normalized, validated and deduplicated.

    Every member ends in exactly one place: `accepted` (to send) or `rejected` (with a reason).
    A member whose email or customer id is in `do_not_export` (DO_NOT_EXPORT_SCHEMA) is
    rejected first, with that row's reason and without its email: an erased person's address
    must not reappear in the rejected-rows report.
    """
    mapping = destination.field_mapping
    reserved = mapping.as_dict()
    custom = mapping.custom_fields
    sources = {**reserved, **{f"custom_fields.{n}": c.source for n, c in custom.items()}}
    types = _source_types(profiles, sources)
    mapped_fields = [
        *[_reserved_value(field, source, types[field]) for field, source in reserved.items()],
        *[
            _custom_value(name, field, types[f"custom_fields.{name}"])
            for name, field in custom.items()
        ],
    ]
    mapped = (
        profiles.lazy()
        .join(destination_members(membership, destination), on="customer_id", how="semi")
        .select(
            pl.lit(destination.name, pl.String).alias("destination"),
            pl.col("customer_id").cast(pl.String),
            *[m.value for m in mapped_fields],
            pl.coalesce(
                pl.lit(None, pl.String), *[p for m in mapped_fields for p in m.problems]
            ).alias("_reason"),
        )
        .collect()
    )
    members_in_segments = mapped.height
    excluded = mapped.clear().with_columns(pl.lit(None, pl.String).alias("_dne"))
    if do_not_export is not None and do_not_export.height:
        by_email, by_id = _do_not_export_reasons(do_not_export)
        matched = (
            mapped.lazy()
            .join(by_email, on="email", how="left")
            .join(by_id, on="customer_id", how="left")
            .join(_erased_by_alternate(mapped, by_email), on="customer_id", how="left")
            .with_columns(pl.coalesce("_dne_id", "_dne_email", "_dne_alternate").alias("_dne"))
            .drop("_dne_email", "_dne_id", "_dne_alternate")
            .collect()
        )
        excluded = matched.filter(pl.col("_dne").is_not_null())
        mapped = matched.filter(pl.col("_dne").is_null()).drop("_dne")
    invalid = mapped.filter(pl.col("_reason").is_not_null())
    valid = mapped.filter(pl.col("_reason").is_null()).drop("_reason")

    # Deterministic dedup: for each email keep the smallest customer_id. One sort serves both
    # the dedup and the order of `accepted`; the kept id is joined to the (few) duplicates only.
    valid = valid.sort("email", "customer_id")
    first = pl.col("email").is_first_distinct()
    kept = valid.filter(first)
    duplicates = (
        valid.filter(~first)
        .join(
            kept.select("email", pl.col("customer_id").alias("_kept")),
            on="email",
            how="left",
            maintain_order="left",
        )
        .with_columns(
            pl.lit("duplicate_email").alias("reason"),
            (pl.lit("same email as kept profile ") + pl.col("_kept")).alias("detail"),
        )
    )
    rejected = pl.concat(
        [
            excluded.select(
                "destination",
                "customer_id",
                pl.lit(None, pl.String).alias("email"),
                pl.col("_dne").alias("reason"),
                pl.lit(DO_NOT_EXPORT_DETAIL, pl.String).alias("detail"),
            ),
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
        accepted=kept,  # sorted by email
        rejected=rejected.cast(REJECTION_SCHEMA),
        profiles_in_segments=members_in_segments,
    )


@dataclass(frozen=True)
class _MappedField:
    """A mapped field's value expression and the reasons its value cannot be sent (or null)."""

    value: pl.Expr
    problems: tuple[pl.Expr, ...] = ()


def _source_types(profiles: pl.DataFrame, sources: dict[str, str]) -> dict[str, pl.DataType]:
    """The type of every mapped value (column or SQL expression), read from the schema only."""
    if not sources:
        return {}
    schema = (
        profiles.lazy()
        .select([value_expression(s).alias(f) for f, s in sources.items()])
        .collect_schema()
    )
    return dict(schema)


def as_text(value: pl.Expr, dtype: pl.DataType) -> pl.Expr:
    """A value as the text a person would write: whole floats without `.0`, dates as ISO.

    Floats that are whole numbers below 2**53 print as integers (`75001.0` -> `75001`, what
    pandas writes for integers with nulls); other floats print in their shortest round-trip
    form. Non-finite floats become null here and are rejected by the caller.
    """
    if dtype.is_float():
        whole = value.is_finite() & (value == value.round(0)) & (value.abs() < 2**53)
        return (
            pl.when(whole)
            .then(value.cast(pl.Int64, strict=False).cast(pl.String))
            .when(value.is_finite())
            .then(value.cast(pl.String))
        )
    if dtype == pl.Boolean:
        return pl.when(value).then(pl.lit("true")).when(~value).then(pl.lit("false"))
    if isinstance(dtype, pl.List | pl.Array | pl.Struct):
        return pl.struct(value.alias("v")).struct.json_encode().str.slice(5).str.head(-1)
    return value.cast(pl.String)


def clean_text(text: pl.Expr) -> pl.Expr:
    """Tabs and line breaks become one space, other control characters go; trimmed; "" -> null."""
    cleaned = (
        text.str.replace_all(LINE_BREAKS, " ")
        .str.replace_all(CONTROL_CHARACTERS, "")
        .str.strip_chars()
    )
    return pl.when(cleaned == "").then(None).otherwise(cleaned)


def _non_finite(value: pl.Expr, dtype: pl.DataType) -> pl.Expr:
    return value.is_not_null() & ~value.is_finite() if dtype.is_float() else pl.lit(False)


def _reserved_value(field: str, source: str, dtype: pl.DataType) -> _MappedField:
    """A reserved field's value: clean text (emails lowercased as SendGrid stores them)."""
    raw = value_expression(source)
    if field == "alternate_emails":
        value = _alternate_emails(raw, dtype)
        bad = value.list.eval(
            ~pl.element().str.contains(EMAIL_PATTERN) | (pl.element().str.len_chars() > 254)
        ).list.any()
        problem = (
            pl.when(value.list.len() > MAX_ALTERNATE_EMAILS)
            .then(pl.lit("too_many_alternate_emails"))
            .when(bad)
            .then(pl.lit("invalid_alternate_email"))
        )
        return _MappedField(value, (problem,))
    not_finite = pl.when(_non_finite(raw, dtype)).then(pl.lit(f"{field}_not_finite"))
    if field == "email":
        # Never rewrite an address: stray characters make it invalid rather than someone else's.
        text = as_text(raw, dtype).str.strip_chars().str.to_lowercase()
        value = pl.when(text == "").then(None).otherwise(text)
        local_length = value.str.split("@").list.first().str.len_chars()
        problem = (
            pl.when(value.is_null())
            .then(pl.lit("missing_email"))
            .when(value.str.len_chars() > SENDGRID_FIELD_MAX_LENGTH["email"])
            .then(pl.lit("email_too_long"))
            .when(~value.str.contains(EMAIL_PATTERN) | (local_length > MAX_LOCAL_PART))
            .then(pl.lit("invalid_email"))
        )
        return _MappedField(value.alias(field), (problem,))
    value = clean_text(as_text(raw, dtype))
    problems = [not_finite]
    limit = SENDGRID_FIELD_MAX_LENGTH.get(field, 0)
    if limit:
        problems.append(pl.when(value.str.len_chars() > limit).then(pl.lit(f"{field}_too_long")))
    return _MappedField(value.alias(field), tuple(problems))


def _alternate_emails(raw: pl.Expr, dtype: pl.DataType) -> pl.Expr:
    """A list column, or text separated by commas or semicolons -> a clean list of emails."""
    text = (
        raw.cast(pl.List(pl.String)).list.join(",")
        if isinstance(dtype, pl.List | pl.Array)
        else raw.cast(pl.String)
    )
    as_list = (
        pl.when(text.is_null())
        .then(pl.lit(None, pl.List(pl.String)))
        .otherwise(text.str.replace_all(";", ",").str.split(","))
    )
    cleaned = as_list.list.eval(
        pl.element().str.strip_chars().str.to_lowercase().filter(pl.element() != "")
    ).list.unique(maintain_order=True)
    return cleaned.alias("alternate_emails")


def number_text(value: pl.Expr, dtype: pl.DataType) -> pl.Expr:
    """A Number field's value as the JSON number literal we send (null when not a number).

    Integers stay integers, exactly; whole floats below 2**53 are sent as integers; text is
    parsed after trimming (`"007"` -> 7, `"1.50"` -> 1.5). NaN and infinities are null here
    and rejected by the caller: JSON has no literal for them.
    """
    if dtype.is_integer():
        return value.cast(pl.String)
    if dtype.is_float():
        return as_text(value, dtype)
    if dtype == pl.Boolean or dtype.is_temporal():
        return pl.lit(None, pl.String)
    text = value.cast(pl.String).str.strip_chars()
    integer = text.str.contains(r"^[+-]?[0-9]{1,18}$")
    parsed = text.cast(pl.Float64, strict=False)
    return (
        pl.when(integer)
        .then(text.cast(pl.Int64, strict=False).cast(pl.String))
        .otherwise(as_text(parsed, pl.Float64))
    )


def _custom_value(name: str, field: CustomField, dtype: pl.DataType) -> _MappedField:
    """A custom field's value converted to its SendGrid type, with the reason it cannot be.

    Numbers are kept as their JSON literal (see `number_text`); dates go out as MM/DD/YYYY
    (text is parsed as YYYY-MM-DD or MM/DD/YYYY); text is cleaned like reserved fields.
    """
    raw = value_expression(field.source)
    column = f"custom_fields.{name}"
    present = raw.is_not_null()
    if dtype.is_float() or dtype == pl.String:
        present = present & (as_text(raw, dtype).str.strip_chars() != "").fill_null(True)
    if field.type == "Number":
        value = number_text(raw, dtype)
        problem = pl.when(present & value.is_null()).then(pl.lit(f"{name}_not_a_number"))
        return _MappedField(value.alias(column), (problem,))
    if field.type == "Date":
        if dtype.is_temporal():
            value = raw.dt.strftime("%m/%d/%Y")
        else:
            text = as_text(raw, dtype).str.strip_chars()
            value = pl.coalesce(
                text.str.to_date("%Y-%m-%d", strict=False),
                text.str.to_date("%m/%d/%Y", strict=False),
            ).dt.strftime("%m/%d/%Y")
        problem = pl.when(present & value.is_null()).then(pl.lit(f"{name}_not_a_date"))
        return _MappedField(value.alias(column), (problem,))
    value = clean_text(as_text(raw, dtype))
    problem = pl.when(_non_finite(raw, dtype)).then(pl.lit(f"{name}_not_finite"))
    return _MappedField(value.alias(column), (problem,))


def _json_value(column: str) -> pl.Expr:
    """The JSON text of a column's value (strings escaped), via a one-field struct."""
    encoded = pl.struct(pl.col(column).alias("v")).struct.json_encode()
    return encoded.str.slice(5, encoded.str.len_chars() - 6)


def number_custom_fields(mapping: FieldMapping) -> set[str]:
    """Custom fields whose column holds a JSON number literal (sent unquoted)."""
    return {name for name, field in mapping.custom_fields.items() if field.type == "Number"}


def contact_json(
    accepted: pl.DataFrame,
    fields: list[str],
    custom_ids: dict[str, str] | None = None,
    number_fields: set[str] | frozenset[str] = frozenset(),
) -> pl.Series:
    """One JSON object per contact, exactly as sent.

    An empty reserved text field is sent as "" (which clears it in SendGrid); an absent
    identifier, alternate_emails or custom value is left out (it cannot be cleared that way).
    Custom fields are keyed by their SendGrid id, as the API requires; `number_fields` hold
    JSON number literals (see `number_text`) and go unquoted.
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
            pl.lit(f'"{field_id}":')
            + (
                pl.col(f"custom_fields.{name}")
                if name in number_fields
                else _json_value(f"custom_fields.{name}")
            )
        )
        for name, field_id in (custom_ids or {}).items()
    ]
    if custom_parts:
        inner = pl.concat_str(custom_parts, separator=",", ignore_nulls=True)
        parts.append(pl.lit('"custom_fields":{') + inner + pl.lit("}"))
    body = pl.concat_str(parts, separator=",", ignore_nulls=True)
    return accepted.select((pl.lit("{") + body + pl.lit("}")).alias("contact_json")).to_series()
