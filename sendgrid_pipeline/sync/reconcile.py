"""Rebuild a destination's record from the list's true membership (the exports API).

Runs when the state has no record of the list (first sync, or a lost state file), when the
list holds fewer contacts than we recorded (edited in SendGrid), or on request. Contacts on
the list that are in the destination's segments are ours to manage from then on; the others
are left alone unless the destination owns its list (`owns_list: true`).
"""

from __future__ import annotations

import io

import polars as pl

from sendgrid_pipeline.sendgrid.client import SendGridClient
from sendgrid_pipeline.state import MEMBER_SCHEMA
from sendgrid_pipeline.transform import as_text, contact_json, number_text


def read_list_members(
    client: SendGridClient,
    list_id: str,
    fields: list[str],
    custom_ids: dict[str, str] | None = None,
    number_fields: set[str] | frozenset[str] = frozenset(),
    fallback: pl.DataFrame | None = None,
) -> pl.DataFrame:
    """email, contact_id, contact_json (as we would send it) for every contact on a list.

    Fields an export does not carry (identifiers, alternate_emails, a custom field it
    leaves out) are taken from `fallback` (the desired contacts), so a reconcile does not
    make every contact look changed.
    """
    export_id = client.start_export([list_id], file_type="json")
    parts = []
    for url in client.wait_for_export(export_id):
        content = client.download(url)
        if content.strip():
            parts.append(pl.read_ndjson(io.BytesIO(content), infer_schema_length=None))
    columns = {"contact_id": pl.String, **{f: pl.String for f in fields}}
    if not parts:
        return pl.DataFrame(schema={k: v for k, v in MEMBER_SCHEMA.items() if k != "managed"})
    exported = pl.concat(parts, how="diagonal_relaxed")
    absent = [f for f in fields if f not in exported.columns and f != "email"]
    exported = exported.with_columns(
        [
            (pl.col(c).cast(pl.String) if c in exported.columns else pl.lit(None, t)).alias(c)
            for c, t in columns.items()
        ]
    ).with_columns(pl.col("email").str.strip_chars().str.to_lowercase())
    exported = exported.filter(pl.col("email").is_not_null() & (pl.col("email") != ""))
    if "alternate_emails" in fields:
        exported = exported.with_columns(
            pl.col("alternate_emails").cast(pl.List(pl.String), strict=False)
        )
    custom_ids = custom_ids or {}
    if custom_ids:
        exported = exported.with_columns(_custom_columns(exported, custom_ids, number_fields))
        absent += [f"custom_fields.{n}" for n in custom_ids if not _exports_custom(exported, n)]
    if fallback is not None and absent:
        known = fallback.select("email", *[c for c in absent if c in fallback.columns])
        exported = exported.drop([c for c in absent if c in known.columns]).join(
            known, on="email", how="left"
        )
    return exported.select("email", "contact_id").with_columns(
        contact_json(exported, fields, custom_ids, number_fields)
    )


def _exports_custom(exported: pl.DataFrame, name: str) -> bool:
    dtype = exported.schema.get("custom_fields")
    return isinstance(dtype, pl.Struct) and name in {f.name for f in dtype.fields}


def _custom_columns(
    exported: pl.DataFrame, custom_ids: dict[str, str], number_fields: set[str] | frozenset[str]
) -> list[pl.Expr]:
    """Exports key custom fields by name; numbers become the literal we would send."""
    has = "custom_fields" in exported.columns and isinstance(
        exported.schema["custom_fields"], pl.Struct
    )
    names = {f.name for f in exported.schema["custom_fields"].fields} if has else set()
    columns = []
    for name in custom_ids:
        value = pl.col("custom_fields").struct.field(name) if name in names else pl.lit(None)
        dtype = exported.schema["custom_fields"].to_schema().get(name) if has else None
        if name in number_fields:
            value = number_text(value, dtype or pl.String)
        elif dtype is not None and dtype != pl.String:
            value = as_text(value, dtype)
        columns.append(value.alias(f"custom_fields.{name}"))
    return columns


def reconciled_members(
    on_list: pl.DataFrame,
    recorded: pl.DataFrame,
    desired_emails: pl.Series,
    owns_list: bool,
) -> pl.DataFrame:
    """The record the state should hold: exactly the list, with who manages each member."""
    known = recorded.select("email", pl.col("managed").alias("was_managed"))
    in_segments = pl.col("email").is_in(desired_emails.implode())
    managed = pl.coalesce("was_managed", in_segments | pl.lit(owns_list))
    return (
        on_list.join(known, on="email", how="left")
        .with_columns(managed.alias("managed"))
        .select(list(MEMBER_SCHEMA))
    )
