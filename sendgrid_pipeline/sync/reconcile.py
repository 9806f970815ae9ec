"""Rebuild a destination's record from the list's true membership (the exports API).

Runs when the state has no record of the list (first sync, or a lost state file), when the
list holds fewer contacts than we recorded (edited in SendGrid), or on request. Contacts on
the list that are in the destination's segments are ours to manage from then on; the others
are left alone unless the destination owns its list (`owns_list: true`).
"""

from __future__ import annotations

import io
import logging
from datetime import UTC, datetime, timedelta

import polars as pl

from sendgrid_pipeline.config import Destination
from sendgrid_pipeline.sendgrid.client import SendGridClient
from sendgrid_pipeline.state import MEMBER_SCHEMA, ListState
from sendgrid_pipeline.sync.options import SyncOptions
from sendgrid_pipeline.transform import as_text, contact_json, number_custom_fields, number_text

# SendGrid's list counts are eventually consistent: right after our own jobs a list's count
# can still show the membership of some time ago, lower than what we recorded. Until this
# long after the last change we recorded, a low count that has not fallen below the count
# SendGrid reported right after that change is no evidence of a list edited in SendGrid; a
# later sync reads the count again (and `reconcile_every` stays the safety net).
COUNT_SETTLE = timedelta(minutes=10)


class Reconciler:
    """Decides whether one list's record must be rebuilt from the list, and rebuilds it."""

    def __init__(
        self,
        client: SendGridClient,
        state: ListState,
        destination: Destination,
        options: SyncOptions,
        custom_ids: dict[str, str],
        log: logging.Logger | logging.LoggerAdapter,
        count_settle: timedelta = COUNT_SETTLE,
    ) -> None:
        self.client = client
        self.count_settle = count_settle
        self.state = state
        self.destination = destination
        self.options = options
        self.custom_ids = custom_ids
        self.log = log
        self.stale_state = False  # set when the state is older than the last sync

    def reason(self, recorded: pl.DataFrame, list_count: int, uncertain: int) -> str:
        """Why the record cannot be trusted as it is, or "" when it can."""
        if self.options.reconcile:
            return "requested"
        last = self.state.last_reconciled()
        if last is None:
            return "no record of this list yet"
        if uncertain:
            return f"{uncertain} member(s) with an unconfirmed change"
        witnessed = self.options.witnessed_generation
        generation = self.state.generation()
        if witnessed is not None and generation < witnessed:
            self.stale_state = True
            return (
                f"the state is older than the last sync (it records {generation} changes, the "
                f"last sync reported {witnessed}): restored from an older backup?"
            )
        if list_count < recorded.height and not self._count_settling(list_count, recorded):
            return f"the list holds {list_count} contacts but {recorded.height} are recorded"
        every = self.options.reconcile_every
        if every is not None and datetime.now(UTC) - last >= every:
            return f"last reconciled {last:%Y-%m-%d %H:%M} UTC, over {every.days} day(s) ago"
        return ""

    def _count_settling(self, list_count: int, recorded: pl.DataFrame) -> bool:
        """Whether a low count may only lag behind our own recent jobs (see COUNT_SETTLE):
        our last change is recent, and the count is no lower than the one SendGrid reported
        right after it (a count catching up never falls; one that fell was edited)."""
        change = self.state.last_change()
        if change is None:
            return False
        changed_at, count_seen = change
        age = datetime.now(UTC) - changed_at
        if age >= self.count_settle or count_seen is None or list_count < count_seen:
            return False
        self.log.info(
            "%s: the list's count (%d) is below the %d recorded members %.0fs after our last "
            "change, but not below the %d SendGrid reported right after it: taken as its "
            "count still settling, not as an edit of the list",
            self.destination.name,
            list_count,
            recorded.height,
            age.total_seconds(),
            count_seen,
        )
        return True

    def rebuild(self, desired: pl.DataFrame, recorded: pl.DataFrame, reason: str) -> pl.DataFrame:
        """Read the list's true membership and rebuild the record (kept in memory on dry runs)."""
        on_list = read_list_members(
            self.client,
            self.state.list_id,
            list(self.destination.field_mapping.as_dict()),
            self.custom_ids,
            number_custom_fields(self.destination.field_mapping),
            fallback=desired,
        )
        # After a restored backup, members the old record does not know were added since the
        # backup (by us, as a rule): they are ours, and the removal brake still applies.
        rebuilt = reconciled_members(
            on_list,
            recorded,
            desired["email"],
            self.destination.owns_list or self.stale_state,
        )
        if not self.options.dry_run:
            self.state.replace_members(rebuilt)
        self.log.info(
            "%s: reconciled with the list (%s): %d contacts on it, %d managed by us",
            self.destination.name,
            reason,
            rebuilt.height,
            int(rebuilt["managed"].sum()),
        )
        return rebuilt.with_columns(pl.lit(False).alias("uncertain"))


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
