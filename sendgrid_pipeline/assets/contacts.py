"""sendgrid_contacts: each destination's contacts, mapped, normalized, validated, deduplicated."""

import warnings
from collections.abc import Iterator
from pathlib import Path

import dagster as dg
import pandas as pd
import polars as pl
from dagster_pandas import PandasColumn, create_dagster_pandas_dataframe_type
from dagster_pandas.data_frame import create_table_schema_metadata_from_dataframe

from sendgrid_pipeline.assets.common import (
    GROUP,
    OWNERS,
    add_partition_metadata,
    partition_check_results,
    table_metadata,
)
from sendgrid_pipeline.assets.profiles import SNAPSHOT_METADATA
from sendgrid_pipeline.checks import (
    CAP_CHECK,
    CONTACTS_SCHEMA,
    EMAIL_CHECK,
    SendGridContactsType,
    contact_check_results,
    record_passed,
)
from sendgrid_pipeline.config import SENDGRID_FIELD_MAX_LENGTH, Destination, PipelineConfig
from sendgrid_pipeline.erasure_ledger import erasure_ledger
from sendgrid_pipeline.io_manager import INPUT_COLUMNS_METADATA, ReportStore
from sendgrid_pipeline.object_storage import StorageLocation
from sendgrid_pipeline.privacy import mask_email_expr
from sendgrid_pipeline.state import SyncStateResource
from sendgrid_pipeline.suppressions import suppressed_contacts
from sendgrid_pipeline.transform import (
    contacts_profile_columns,
    destination_contacts,
    empty_do_not_export,
)

REJECTION_REASONS = [
    "erased",
    "suppressed",
    "missing_email",
    "invalid_email",
    "email_too_long",
    "duplicate_email",
    *(f"{f}_too_long" for f, limit in SENDGRID_FIELD_MAX_LENGTH.items() if f != "email" and limit),
]

# The rejected-rows report is a pandas-facing artifact (analysts open it in pandas/Excel):
# dagster-pandas validates its contract before it is written.
with warnings.catch_warnings():  # the dagster-pandas type factory is marked beta
    warnings.simplefilter("ignore", dg.BetaWarning)
    RejectedRowsReport = create_dagster_pandas_dataframe_type(
        name="RejectedRowsReport",
        description="Rows a destination cannot send, each with a reason code.",
        columns=[
            PandasColumn.string_column("destination", non_nullable=True),
            PandasColumn.string_column("customer_id", non_nullable=True),
            PandasColumn.string_column("reason", non_nullable=True),
        ],
    )


def rejected_report(rejected: pl.DataFrame) -> pd.DataFrame:
    """The report, validated with its dagster-pandas type.

    Columns are built as pandas strings explicitly: an empty frame must keep its declared
    types (pandas would make empty columns float64 and fail the contract on clean data).
    """
    report = pd.DataFrame(
        {name: pd.Series(rejected[name].to_list(), dtype="string") for name in rejected.columns}
    )
    check = RejectedRowsReport.type_check(None, report)
    if not check.success:
        raise ValueError(f"rejected-rows report violates its contract: {check.description}")
    return report


def write_rejected_report(path: Path, rejected: pl.DataFrame) -> pd.DataFrame:
    """Validate the report with its dagster-pandas type and write it as CSV to a file."""
    report = rejected_report(rejected)
    path.parent.mkdir(parents=True, exist_ok=True)
    report.to_csv(path, index=False)
    return report


def store_rejected_report(
    reports: ReportStore, key: str, rejected: pl.DataFrame
) -> tuple[pd.DataFrame, str]:
    """Validate the report and store it as reports/rejected/<key>.csv; returns it and its URL
    (a path on a local base)."""
    report = rejected_report(rejected)
    url = reports.write_report(f"{key}.csv", report.to_csv(index=False).encode("utf-8"))
    return report, url


def do_not_export_frames(
    sync_state: SyncStateResource,
    destinations: list[Destination],
    data_dir: Path | StorageLocation | None = None,
) -> dict[str, pl.DataFrame]:
    """Per destination: the people it must not export (transform.DO_NOT_EXPORT_SCHEMA).

    Every source of exclusions adds its rows here, with its own reason: erasures (the
    erasure ledger, reason `erased`) apply to every destination; SendGrid's suppressions of
    the destination's account (suppressions/ under `data_dir`: the report store's location,
    where sendgrid_unsubscribes writes them; reason `suppressed`) to those with
    exclude_suppressed: true.
    """
    erased = erasure_ledger(sync_state).blocked()
    frames = {d.name: empty_do_not_export() for d in destinations}
    for name, frame in frames.items():
        frames[name] = pl.concat([frame, erased], how="vertical_relaxed")
    for destination in destinations:
        if destination.exclude_suppressed and data_dir is not None:
            suppressed = suppressed_contacts(data_dir, destination.api_key_env)
            frames[destination.name] = pl.concat(
                [frames[destination.name], suppressed], how="vertical_relaxed"
            )
    return frames


def profiles_snapshot(context: dg.AssetExecutionContext) -> str | None:
    """When the profiles this run's contacts come from were read (see unified_profiles).

    The materialization of this run when it computed the profiles, else the latest one (the
    profiles the input manager loads); None for profiles materialized before snapshots.
    """
    key = dg.AssetKey("unified_profiles")
    event = None
    for record in context.instance.all_logs(
        context.run_id, of_type=dg.DagsterEventType.ASSET_MATERIALIZATION
    ):
        materialization = record.asset_materialization
        if materialization is not None and materialization.asset_key == key:
            event = materialization
    if event is None:
        latest = context.instance.get_latest_materialization_event(key)
        event = latest.asset_materialization if latest is not None else None
    value = event.metadata.get(SNAPSHOT_METADATA) if event is not None else None
    return str(value.value) if value is not None else None


def _emails_passed(results: list[dg.AssetCheckResult]) -> bool:
    return all(r.passed for r in results if r.check_name == EMAIL_CHECK)


def build_contacts_asset(
    config: PipelineConfig, partitions: dg.PartitionsDefinition
) -> dg.AssetsDefinition:
    @dg.asset(
        name="sendgrid_contacts",
        group_name=GROUP,
        owners=OWNERS,
        kinds={"polars", "sendgrid"},
        partitions_def=partitions,
        backfill_policy=dg.BackfillPolicy.single_run(),
        ins={
            "unified_profiles": dg.AssetIn(
                metadata={
                    INPUT_COLUMNS_METADATA: contacts_profile_columns(list(config.destinations))
                }
            )
        },
        dagster_type=SendGridContactsType,
        check_specs=[
            dg.AssetCheckSpec(
                EMAIL_CHECK,
                asset="sendgrid_contacts",
                blocking=True,
                partitions_def=partitions,  # one result per destination, on its partition
                description="Every email is present, valid, lowercase and unique (Pandera).",
            ),
            dg.AssetCheckSpec(
                CAP_CHECK,
                asset="sendgrid_contacts",
                blocking=True,
                partitions_def=partitions,  # one result per destination, on its partition
                description="At most profile_cap contacts per destination (default 100,000); "
                "a failure stops the sync before anything is sent.",
            ),
        ],
        description="Per destination: the union of its segments, mapped to SendGrid fields, "
        "normalized (trimmed, lowercase emails), validated against SendGrid's limits and "
        "deduplicated by email (the smallest customer_id wins). Rows that cannot be sent are "
        "written to a rejected-rows report with a reason, never dropped silently.",
    )
    def sendgrid_contacts(
        context: dg.AssetExecutionContext,
        unified_profiles: pl.DataFrame,
        segment_membership: pl.DataFrame,
        report_store: ReportStore,
        sync_state: SyncStateResource,
    ) -> Iterator[dg.Output | dg.AssetCheckEvaluation]:
        accepted_frames = []
        per_destination = {}
        check_results = {}
        excluded = do_not_export_frames(
            sync_state,
            [config.destination(key) for key in context.partition_keys],
            report_store.location,  # where sendgrid_unsubscribes stores the suppressions
        )
        for key in context.partition_keys:
            destination = config.destination(key)
            result = destination_contacts(
                unified_profiles, segment_membership, destination, excluded[key]
            )
            accepted_frames.append(result.accepted)
            check_results[key] = contact_check_results(result.accepted, destination.profile_cap)
            report, report_url = store_rejected_report(report_store, key, result.rejected)
            by_reason = dict(result.rejected.group_by("reason").len().iter_rows())
            masked = result.rejected.head(20).with_columns(mask_email_expr("email"))
            context.log.info(
                "%s: %d profiles in segments, %d contacts, %d rejected %s",
                key,
                result.profiles_in_segments,
                result.accepted.height,
                result.rejected.height,
                by_reason or "",
            )
            per_destination[key] = {
                "dagster/row_count": result.accepted.height,
                "profiles_in_segments": result.profiles_in_segments,
                "contacts": result.accepted.height,
                "rejected": result.rejected.height,
                **{f"rejected_{r}": int(by_reason.get(r, 0)) for r in REJECTION_REASONS},
                **{f"rejected_{r}": int(n) for r, n in by_reason.items()},
                "segments": ", ".join(destination.segments),
                "excluded_segments": ", ".join(destination.exclude_segments) or "(none)",
                "profile_cap": destination.profile_cap,
                "rejected_sample (masked)": table_metadata(masked),
                "rejected_report": report_store.metadata_value(report_url),
                "rejected_report_schema": create_table_schema_metadata_from_dataframe(report),
            }
        accepted = pl.concat(accepted_frames, how="diagonal_relaxed")
        accepted = accepted.with_columns(
            pl.lit(profiles_snapshot(context), dtype=pl.String).alias(SNAPSHOT_METADATA)
        )
        if all(_emails_passed(results) for results in check_results.values()):
            # Each destination's rows passed a stricter schema (email checks, unique emails)
            # and destinations differ: the output's type check need not validate them again.
            record_passed(CONTACTS_SCHEMA, accepted)
        # Every figure goes on its own destination's partition: the Output itself carries none,
        # since its metadata would be shown on every partition of the run.
        add_partition_metadata(context, per_destination)
        yield dg.Output(accepted)
        # After the Output, so each result points at its partition's new materialization.
        yield from partition_check_results(context, check_results)

    return sendgrid_contacts
