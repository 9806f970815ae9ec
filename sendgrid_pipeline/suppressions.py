"""Consent coming back: each SendGrid account's suppressions, kept incrementally in one Parquet.

Both files live on the report store's storage base (io_manager.ReportStore): with the default
local layout that is the data directory, so `<data dir>/suppressions/...`; deployed with an
object store, `<base>/suppressions/...`, which every run pod reaches. Each is replaced whole
(a local temporary file renamed into place, or one PUT): a reader never sees half of one.

`suppressions/sendgrid_unsubscribes.parquet` holds one row per account, kind,
group and address (lowercase), with the customer ids the profiles give that address. Beside it,
`sendgrid_unsubscribes.watermarks.json` records, per account and kind, the end of the last
time window read completely; the next run asks from there less OVERLAP_SECONDS (SendGrid may
record a suppression a little after its `created` time) and de-duplicates. The window's end,
not the newest `created` seen, is the watermark: a quiet list would otherwise be re-read from
its last suppression on every run.

Unsubscribe groups have no times and no paging: each run reads a configured group whole and
replaces its rows (an address that resubscribed leaves the frame). Global lists are read by
time only, so a suppression deleted in SendGrid stays in the frame (SendGrid offers no
"deleted since" read); delete the two files to read everything again.
"""

from __future__ import annotations

import datetime as dt
import json
import logging
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path

import polars as pl

from sendgrid_pipeline.config import Destination, PipelineConfig, value_expression
from sendgrid_pipeline.errors import PipelineError
from sendgrid_pipeline.object_storage import (
    ObjectNotFoundError,
    ObjectStorageError,
    StorageLocation,
)
from sendgrid_pipeline.sendgrid.client import SendGridClient
from sendgrid_pipeline.sendgrid.suppressions import read_group_suppressions, read_suppressions
from sendgrid_pipeline.transform import as_text

OVERLAP_SECONDS = 3600
GROUP_KIND = "group_unsubscribe"
SUPPRESSED_REASON = "suppressed"
FOLDER = "suppressions"  # under the storage base
FILE_NAME = "sendgrid_unsubscribes.parquet"
WATERMARKS_NAME = "sendgrid_unsubscribes.watermarks.json"
FILE_PATH = f"{FOLDER}/{FILE_NAME}"
WATERMARKS_PATH = f"{FOLDER}/{WATERMARKS_NAME}"
UTC_TIME = pl.Datetime("us", "UTC")

SCHEMA: dict[str, pl.DataType] = {
    "account": pl.String(),  # the destinations' api_key_env: names the account, never the key
    "kind": pl.String(),  # unsubscribe, bounce, spam_report, invalid_email, block, group_...
    "group_id": pl.Int64(),  # group_unsubscribe only
    "email": pl.String(),  # lowercase, trimmed
    "created": UTC_TIME,  # SendGrid's time; for a group unsubscribe, when first read
    "reason": pl.String(),
    "status": pl.String(),
    "first_seen": UTC_TIME,  # when this pipeline first read the row
    "customer_id": pl.String(),  # the smallest customer_id with this email (null: none)
    "customer_ids": pl.List(pl.String()),  # every customer_id with this email
}
KEY = ["account", "kind", "group_id", "email"]

log = logging.getLogger(__name__)


class SuppressionStateError(PipelineError):
    """The suppressions file or its watermarks cannot be read; names the file."""


@dataclass(frozen=True)
class Account:
    """One SendGrid account (destinations sharing api_key_env) and what to read from it."""

    api_key_env: str
    kinds: tuple[str, ...]
    group_ids: tuple[int, ...]
    destinations: tuple[str, ...]
    email_sources: tuple[str, ...]  # the destinations' email mappings (column or expression)


def accounts(config: PipelineConfig) -> list[Account]:
    """The configured accounts, in the order their first destination appears."""
    grouped: dict[str, list[Destination]] = {}
    for destination in config.destinations:
        grouped.setdefault(destination.api_key_env, []).append(destination)
    return [
        Account(
            api_key_env=env,
            kinds=group[0].suppression_kinds,
            group_ids=group[0].suppression_group_ids,
            destinations=tuple(d.name for d in group),
            email_sources=tuple(dict.fromkeys(d.field_mapping.email for d in group)),
        )
        for env, group in grouped.items()
    ]


def _location(where: StorageLocation | Path) -> StorageLocation:
    """The storage base of the files: a location, or a local directory (tests, scripts)."""
    return where if isinstance(where, StorageLocation) else StorageLocation(where)


def suppressions_path(where: StorageLocation | Path) -> str:
    """The suppressions file's URL (a path on a local base), for messages and metadata."""
    return _location(where).url_for(FILE_PATH)


def watermarks_path(where: StorageLocation | Path) -> str:
    return _location(where).url_for(WATERMARKS_PATH)


def empty_frame() -> pl.DataFrame:
    return pl.DataFrame(schema=SCHEMA)


def load_frame(where: StorageLocation | Path) -> pl.DataFrame:
    """The stored suppressions (empty before the first run)."""
    location = _location(where)
    url = location.url_for(FILE_PATH)
    try:
        frame = location.read_parquet(FILE_PATH)
    except ObjectNotFoundError:
        return empty_frame()
    except ObjectStorageError as error:  # names the URL, never a credential
        raise SuppressionStateError(
            f"{error}; cannot read the stored suppressions: if {url} is damaged, delete it and "
            "its watermarks file to read every suppression again"
        ) from None
    missing = [name for name in SCHEMA if name not in frame.columns]
    if missing:
        raise SuppressionStateError(f"{url}: missing columns {missing}")
    return frame.select(list(SCHEMA)).cast(SCHEMA)


def load_watermarks(where: StorageLocation | Path) -> dict[str, dict[str, int]]:
    """account -> kind -> end of the last window read completely (unix seconds)."""
    location = _location(where)
    url = location.url_for(WATERMARKS_PATH)
    try:
        data = location.read_bytes(WATERMARKS_PATH)
    except ObjectNotFoundError:
        return {}
    except ObjectStorageError as error:
        raise SuppressionStateError(f"{error}; cannot read the suppressions' watermarks") from None
    try:
        document = json.loads(data.decode("utf-8"))
        return {
            str(account): {str(kind): int(mark) for kind, mark in marks.items()}
            for account, marks in document["accounts"].items()
        }
    except (ValueError, KeyError, TypeError, AttributeError) as error:
        raise SuppressionStateError(
            f"{url}: not a watermarks file ({type(error).__name__}); delete it to read every "
            "suppression again"
        ) from None


def store(
    where: StorageLocation | Path, frame: pl.DataFrame, watermarks: dict[str, dict[str, int]]
) -> str:
    """Write the frame, then the watermarks (each replaced whole): a crash between them
    re-reads a window, no more. Returns the frame's URL (a path on a local base)."""
    location = _location(where)
    document = json.dumps({"accounts": watermarks}, indent=2, sort_keys=True)
    try:
        location.write_parquet(frame, FILE_PATH)
        location.write_bytes(WATERMARKS_PATH, document.encode("utf-8"))
    except ObjectStorageError as error:
        failure = SuppressionStateError(f"{error}; the suppressions were not stored")
        failure.retryable = True  # nothing was lost: the next run reads the same windows
        raise failure from None
    return location.url_for(FILE_PATH)


@dataclass
class AccountRead:
    """What one run read from one account."""

    frame: pl.DataFrame  # rows in SCHEMA, without customer ids yet
    watermarks: dict[str, int]
    windows: dict[str, tuple[int | None, int]] = field(default_factory=dict)


def _as_rows(
    records: pl.DataFrame, account: str, kind: str, group_id: int | None, now: dt.datetime
) -> pl.DataFrame:
    return records.select(
        pl.lit(account, pl.String).alias("account"),
        pl.lit(kind, pl.String).alias("kind"),
        pl.lit(group_id, pl.Int64).alias("group_id"),
        pl.col("email").str.strip_chars().str.to_lowercase(),
        pl.from_epoch(pl.col("created"), time_unit="s").dt.replace_time_zone("UTC").cast(UTC_TIME)
        if "created" in records.columns
        else pl.lit(now, UTC_TIME).alias("created"),
        pl.col("reason")
        if "reason" in records.columns
        else pl.lit(None, pl.String).alias("reason"),
        pl.col("status")
        if "status" in records.columns
        else pl.lit(None, pl.String).alias("status"),
        pl.lit(now, UTC_TIME).alias("first_seen"),
        pl.lit(None, pl.String).alias("customer_id"),
        pl.lit(None, pl.List(pl.String)).alias("customer_ids"),
    )


def read_account(
    client: SendGridClient,
    account: Account,
    watermarks: dict[str, int],
    now: dt.datetime,
    page_size: int | None = None,
) -> AccountRead:
    """Read each configured kind from its watermark (less the overlap) to `now`, and each group."""
    end = int(now.timestamp())
    frames = [empty_frame()]
    marks: dict[str, int] = {}
    windows: dict[str, tuple[int | None, int]] = {}
    for kind in account.kinds:
        mark = watermarks.get(kind)
        start = None if mark is None else max(0, min(mark, end) - OVERLAP_SECONDS)
        options = {} if page_size is None else {"page_size": page_size}
        records = read_suppressions(client, kind, start, end, **options)
        frames.append(_as_rows(records, account.api_key_env, kind, None, now).cast(SCHEMA))
        marks[kind] = end
        windows[kind] = (start, end)
    for group_id in account.group_ids:
        emails = pl.DataFrame(
            {"email": read_group_suppressions(client, group_id)}, schema={"email": pl.String}
        )
        frames.append(_as_rows(emails, account.api_key_env, GROUP_KIND, group_id, now).cast(SCHEMA))
    return AccountRead(pl.concat(frames), marks, windows)


def merge(
    previous: pl.DataFrame, reads: dict[str, AccountRead], configured: Iterable[Account]
) -> pl.DataFrame:
    """The stored rows updated with this run's reads, for the accounts as configured now.

    A row keeps its first `first_seen` (and a group unsubscribe its first `created`); a record
    read again keeps SendGrid's newest `created`, reason and status. A group's rows are the
    group as read now. Rows of accounts, kinds or groups no longer configured are dropped.
    """
    wanted = pl.DataFrame(
        [
            {"account": a.api_key_env, "kind": kind, "group_id": None}
            for a in configured
            for kind in a.kinds
        ]
        + [
            {"account": a.api_key_env, "kind": GROUP_KIND, "group_id": g}
            for a in configured
            for g in a.group_ids
        ],
        schema={"account": pl.String, "kind": pl.String, "group_id": pl.Int64},
    )
    keep = previous.join(wanted, on=["account", "kind", "group_id"], how="semi", nulls_equal=True)
    fresh = pl.concat([r.frame for r in reads.values()]) if reads else empty_frame()
    # groups read now (even empty) are replaced by what was read; everything else accumulates
    read_groups = wanted.filter(
        (pl.col("kind") == GROUP_KIND) & pl.col("account").is_in(list(reads))
    )
    keep_old = keep.join(
        read_groups,
        on=["account", "kind", "group_id"],
        how="anti",
        nulls_equal=True,
    )
    known = keep.select(
        *KEY, pl.col("first_seen").alias("_first"), pl.col("created").alias("_created")
    )
    fresh = (
        fresh.join(known, on=KEY, how="left", nulls_equal=True)
        .with_columns(
            pl.coalesce("_first", "first_seen").alias("first_seen"),
            pl.when(pl.col("kind") == GROUP_KIND)
            .then(pl.coalesce("_created", "created"))
            .otherwise("created")
            .alias("created"),
        )
        .drop("_first", "_created")
    )
    combined = pl.concat([keep_old.cast(SCHEMA), fresh.cast(SCHEMA)])
    earliest = combined.group_by(KEY).agg(pl.col("first_seen").min().alias("_first"))
    return (
        combined.sort("created", descending=True, nulls_last=True)
        .unique(KEY, keep="first", maintain_order=True)
        .join(earliest, on=KEY, how="left", nulls_equal=True)
        .with_columns(pl.col("_first").alias("first_seen"))
        .drop("_first")
        .sort("account", "kind", "group_id", "email", nulls_last=True)
        .select(list(SCHEMA))
    )


def email_customer_ids(profiles: pl.DataFrame, account: Account) -> pl.DataFrame:
    """(email, customer_id, customer_ids) for the account's mapped emails, lowercase, trimmed."""
    parts = []
    for source in account.email_sources:
        raw = value_expression(source)
        root = raw.meta.root_names()
        dtype = profiles.schema[root[0]] if len(root) == 1 else pl.String()
        parts.append(
            profiles.lazy().select(
                as_text(raw, dtype).str.strip_chars().str.to_lowercase().alias("email"),
                pl.col("customer_id").cast(pl.String),
            )
        )
    if not parts:
        return pl.DataFrame(
            schema={
                "email": pl.String,
                "customer_id": pl.String,
                "customer_ids": pl.List(pl.String),
            }
        )
    return (
        pl.concat(parts)
        .filter(pl.col("email").is_not_null() & (pl.col("email") != ""))
        .unique()
        .group_by("email")
        .agg(
            pl.col("customer_id").min().alias("customer_id"),
            pl.col("customer_id").sort().alias("customer_ids"),
        )
        .collect()
    )


def with_customer_ids(frame: pl.DataFrame, ids_by_account: dict[str, pl.DataFrame]) -> pl.DataFrame:
    """Fill customer_id/customer_ids from each account's profiles (recomputed every run)."""
    parts = []
    for account, rows in frame.partition_by("account", as_dict=True, maintain_order=True).items():
        ids = ids_by_account.get(account[0])  # type: ignore[index]
        rows = rows.drop("customer_id", "customer_ids")
        if ids is None:
            rows = rows.with_columns(
                pl.lit(None, pl.String).alias("customer_id"),
                pl.lit(None, pl.List(pl.String)).alias("customer_ids"),
            )
        else:
            rows = rows.join(ids, on="email", how="left")
        parts.append(rows.select(list(SCHEMA)).cast(SCHEMA))
    return pl.concat(parts) if parts else empty_frame()


def suppressed_contacts(where: StorageLocation | Path, api_key_env: str) -> pl.DataFrame:
    """Do-not-export rows (email, customer_id, reason 'suppressed') of one account.

    `where`: the storage base the sendgrid_unsubscribes asset writes to (the report store's).
    Matched by email only (customer_id stays null): SendGrid suppresses an address, so a
    customer who moves to a new address may be exported at that one.
    """
    location = _location(where)
    if not location.exists(FILE_PATH):
        log.warning(
            f"{location.url_for(FILE_PATH)} does not exist yet: nothing is excluded as "
            "suppressed until the sendgrid_unsubscribes asset has run"
        )
    frame = load_frame(location)
    return (
        frame.filter(pl.col("account") == api_key_env)
        .select(
            "email",
            pl.lit(None, pl.String).alias("customer_id"),
            pl.lit(SUPPRESSED_REASON, pl.String).alias("reason"),
        )
        .unique("email", keep="first", maintain_order=True)
    )
