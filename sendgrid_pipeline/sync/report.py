"""What a sync planned and what SendGrid confirmed, and the rows it could not sync."""

from __future__ import annotations

from dataclasses import dataclass, field

import polars as pl

from sendgrid_pipeline.privacy import mask_email_expr
from sendgrid_pipeline.sync.account_limit import AccountCheck
from sendgrid_pipeline.sync.plan import SyncPlan

REJECTED_SCHEMA = {"email": pl.String, "reason": pl.String, "detail": pl.String}


@dataclass
class SyncReport:
    """What a sync planned and what SendGrid confirmed."""

    destination: str
    list_id: str
    plan: SyncPlan
    dry_run: bool = False
    upserted: int = 0
    created: int = 0
    updated: int = 0
    removed: int = 0
    attempted: int = 0  # rows sent in upserts (this run and settled earlier ones)
    recovered_jobs: int = 0
    uncertain: int = 0  # members whose last change could not be confirmed before this sync
    adopted: int = 0  # members already on the list that are ours to manage from now on
    reconciled: str = ""  # why the record was rebuilt from the list, or "" when it was not
    job_ids: list[str] = field(default_factory=list)
    rejected: pl.DataFrame = field(default_factory=lambda: pl.DataFrame(schema=REJECTED_SCHEMA))
    list_count_before: int = 0
    list_count_after: int = 0
    state_generation: int = 0
    recorded_members: int = 0  # what the state records on the list after this sync
    sample: pl.DataFrame = field(default_factory=pl.DataFrame)  # masked, with customer ids
    seconds: float = 0.0
    account: AccountCheck | None = None  # the account's counts and its contact limit check


def no_rejections() -> pl.DataFrame:
    return pl.DataFrame(schema=REJECTED_SCHEMA)


def rejections(rows: pl.DataFrame, reason: str, detail: str | pl.Expr) -> pl.DataFrame:
    """`rows` (with an email column) as rejected rows with one reason."""
    detail_expr = pl.lit(detail) if isinstance(detail, str) else detail
    return rows.select(
        "email", pl.lit(reason).alias("reason"), detail_expr.cast(pl.String).alias("detail")
    )


def masked_rejections(rejected: pl.DataFrame, limit: int = 20) -> pl.DataFrame:
    """A sample of rejected rows fit for metadata: emails masked."""
    return rejected.head(limit).with_columns(mask_email_expr("email"))
