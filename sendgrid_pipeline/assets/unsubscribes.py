"""sendgrid_unsubscribes: consent coming back from SendGrid, as a frame the CDP can consume.

Not part of the export: it has its own job and schedule, and the sync does not wait for it. A
destination with `exclude_suppressed: true` reads the stored frame in its contacts step. The
frame lives on the report store's base (`<data dir>/suppressions/` locally, `<base>/suppressions/`
on an object store), where every run pod finds it.
"""

import datetime as dt

import dagster as dg
import polars as pl

from sendgrid_pipeline.assets.common import OWNERS, table_metadata
from sendgrid_pipeline.config import PipelineConfig, value_expression
from sendgrid_pipeline.errors import ProfileDataError
from sendgrid_pipeline.io_manager import ReportStore
from sendgrid_pipeline.privacy import mask_email_expr
from sendgrid_pipeline.profile_source import ProfileSource
from sendgrid_pipeline.schedules import AssetJob
from sendgrid_pipeline.sendgrid.resource import SendGridResource
from sendgrid_pipeline.suppressions import (
    GROUP_KIND,
    SCHEMA,
    Account,
    AccountRead,
    accounts,
    email_customer_ids,
    load_frame,
    load_watermarks,
    merge,
    read_account,
    store,
    with_customer_ids,
)

CONSENT_GROUP = "sendgrid_consent"
UNSUBSCRIBES_JOB = "sendgrid_unsubscribes_job"
UNSUBSCRIBES_SCHEDULE = "sendgrid_unsubscribes_schedule"
UNSUBSCRIBES_CRON = "17 * * * *"  # hourly, off the hour
KINDS = ("unsubscribe", "bounce", "spam_report", "invalid_email", "block", GROUP_KIND)


def _counts(frame: pl.DataFrame) -> dict[str, int]:
    found = dict(frame.group_by("kind").len().iter_rows())
    return {kind: int(found.get(kind, 0)) for kind in KINDS}


def build_unsubscribes_asset(config: PipelineConfig) -> dg.AssetsDefinition:
    """The asset over every configured account (destinations sharing api_key_env)."""

    @dg.asset(
        name="sendgrid_unsubscribes",
        group_name=CONSENT_GROUP,
        owners=OWNERS,
        kinds={"polars", "sendgrid", "parquet"},
        description="Each SendGrid account's suppressions (global unsubscribes, bounces, spam "
        "reports, invalid emails, optionally blocks, and the unsubscribes of the configured "
        "unsubscribe groups), read incrementally by time and kept in suppressions/"
        "sendgrid_unsubscribes.parquet on the report storage (the data directory by default, "
        "the storage base on an object store): one row per account, kind, group and "
        "lowercase email, with the customer ids the profiles give that email. Destinations with "
        "exclude_suppressed: true stop exporting these contacts.",
    )
    def sendgrid_unsubscribes(
        context: dg.AssetExecutionContext,
        sendgrid: SendGridResource,
        profile_source: ProfileSource,
        report_store: ReportStore,
    ) -> dg.MaterializeResult:
        now = dt.datetime.now(dt.UTC).replace(microsecond=0)
        location = report_store.location  # shared by every run pod when on an object store
        previous = load_frame(location)
        watermarks = load_watermarks(location)
        configured = accounts(config)
        reads: dict[str, AccountRead] = {}
        requests = 0
        for account in configured:
            client = sendgrid.client(account.api_key_env)
            reads[account.api_key_env] = read = read_account(
                client, account, watermarks.get(account.api_key_env, {}), now
            )
            requests += client.stats.requests
            for kind, (start, end) in read.windows.items():
                context.log.info(
                    "%s %s: %d records created %s..%s",
                    account.api_key_env,
                    kind,
                    read.frame.filter(pl.col("kind") == kind).height,
                    "the beginning" if start is None else start,
                    end,
                )
        frame = merge(previous, reads, configured)
        ids, resolved = _customer_ids(context, profile_source, configured)
        frame = with_customer_ids(frame, ids)
        new = frame.join(
            previous.select("account", "kind", "group_id", "email"),
            on=["account", "kind", "group_id", "email"],
            how="anti",
            nulls_equal=True,
        )
        url = store(
            location,
            frame,
            {
                **{a: m for a, m in watermarks.items() if a in reads},
                **{a: r.watermarks for a, r in reads.items()},
            },
        )
        context.log.info(
            "%d suppressions stored (%d new since the last run) in %s",
            frame.height,
            new.height,
            url,
        )
        sample = new.head(10).select(
            "account", "kind", "group_id", mask_email_expr("email"), "created", "customer_id"
        )
        return dg.MaterializeResult(
            metadata={
                "dagster/row_count": frame.height,
                "path": report_store.metadata_value(url),
                "new_since_last_run": new.height,
                **{f"count_{kind}": n for kind, n in _counts(frame).items()},
                **{f"new_{kind}": n for kind, n in _counts(new).items()},
                "emails": frame["email"].n_unique(),
                "with_customer_id": frame.filter(pl.col("customer_id").is_not_null()).height,
                "customer_ids_resolved": resolved,
                "accounts": ", ".join(a.api_key_env for a in configured),
                "sendgrid_requests": requests,
                "new_sample (masked)": table_metadata(sample),
                "window_end": dg.MetadataValue.timestamp(now.timestamp()),
            }
        )

    return sendgrid_unsubscribes


def _customer_ids(
    context: dg.AssetExecutionContext, source: ProfileSource, configured: list[Account]
) -> tuple[dict[str, pl.DataFrame], bool]:
    """Each account's email -> customer ids, from the profile source itself (not the asset).

    Profiles that cannot be read leave the ids empty with a warning: the suppressions are
    still worth keeping, and the exclusion matches by email.
    """
    columns = {
        name
        for account in configured
        for source_text in account.email_sources
        for name in _root_names(source_text)
    }
    try:  # only customer_id and the mapped email columns are read
        profiles = source.read(columns, columns)
    except ProfileDataError as error:
        context.log.warning(f"customer ids left empty: {error}")
        return {}, False
    if "customer_id" not in profiles.columns:
        context.log.warning(f"customer ids left empty: {source.label} has no customer_id column")
        return {}, False
    return {a.api_key_env: email_customer_ids(profiles, a) for a in configured}, True


def _root_names(source_text: str) -> list[str]:
    return value_expression(source_text).meta.root_names()


def build_unsubscribes_job_and_schedule(
    executor: dg.ExecutorDefinition,
) -> tuple[AssetJob, dg.ScheduleDefinition]:
    """Its own job, and an hourly schedule that is off until switched on."""
    job = dg.define_asset_job(
        UNSUBSCRIBES_JOB,
        selection=dg.AssetSelection.assets("sendgrid_unsubscribes"),
        executor_def=executor,
        description="Reads each SendGrid account's suppressions into "
        "suppressions/sendgrid_unsubscribes.parquet on the report storage (incremental by time).",
    )
    schedule = dg.ScheduleDefinition(
        name=UNSUBSCRIBES_SCHEDULE,
        job=job,
        cron_schedule=UNSUBSCRIBES_CRON,
        execution_timezone="UTC",
        default_status=dg.DefaultScheduleStatus.STOPPED,
        description=f"Reads the accounts' suppressions hourly ({UNSUBSCRIBES_CRON}, UTC). "
        "Stopped by default: switch it on here, or `dagster schedule start "
        f"{UNSUBSCRIBES_SCHEDULE} -w workspace.yaml`.",
    )
    return job, schedule


__all__ = ["SCHEMA", "build_unsubscribes_asset", "build_unsubscribes_job_and_schedule"]
