"""sendgrid_list_sync: make each destination's SendGrid list hold exactly its contacts."""

from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any
from urllib.parse import urlsplit

import dagster as dg
import polars as pl
from pydantic import Field

from sendgrid_pipeline.assets.common import (
    ALLOW_MASS_REMOVAL_TAG,
    DRY_RUN_TAG,
    GROUP,
    OWNERS,
    RECONCILE_TAG,
    partition_check_results,
    retry_only_transient,
    table_metadata,
    tag_is_true,
)
from sendgrid_pipeline.assets.profiles import SNAPSHOT_METADATA
from sendgrid_pipeline.assets.sync_checks import LIST_SIZE_CHECK, list_size_result
from sendgrid_pipeline.config import Destination, PipelineConfig
from sendgrid_pipeline.erasure_ledger import erasure_ledger
from sendgrid_pipeline.errors import PipelineError
from sendgrid_pipeline.io_manager import ReportStore
from sendgrid_pipeline.sendgrid.resource import SendGridResource
from sendgrid_pipeline.state import SyncStateResource
from sendgrid_pipeline.sync.account_limit import check_new_contacts
from sendgrid_pipeline.sync.apply import (
    DestinationSync,
    SyncOptions,
    SyncRefused,
    SyncReport,
    masked_rejections,
)
from sendgrid_pipeline.sync.custom_fields import resolve_custom_field_ids

SENDGRID_LIST_URL = "https://mc.sendgrid.com/contacts/lists/{list_id}"
SENDGRID_API_HOSTS = ("api.sendgrid.com", "api.eu.sendgrid.com")
# At most one sync step at a time across the deployment (the pool's limit, 1, is set on the
# instance); the per-list lock in the sync state still guards every other way in.
SYNC_POOL = "sendgrid_list_sync"


class SyncConfig(dg.Config):
    """Launchpad options; the run tags sendgrid/dry_run and sendgrid/allow_mass_removal too."""

    dry_run: bool = Field(default=False, description="Plan and report, send nothing.")
    allow_mass_removal: bool = Field(
        default=False, description="Override the removal brake for this run."
    )
    reconcile: bool = Field(
        default=False,
        description="Read the list's true membership (exports API) before planning.",
    )


def preflight(destination: Destination, contacts: pl.DataFrame) -> None:
    """Refuse before any request when consent is missing or the cap is exceeded."""
    if not destination.consent:
        raise SyncRefused(
            f"Destination {destination.name!r} has no consent: exporting would send personal "
            "data out of this system's compliance boundary to SendGrid, a third party. An "
            "administrator must agree to data privacy and compliance by setting consent: true "
            "for this destination in destinations.yaml. Nothing was sent."
        )
    cap = destination.profile_cap
    if contacts.height > cap:
        raise SyncRefused(
            f"Destination {destination.name!r}: {contacts.height} contacts exceed its "
            f"profile_cap of {cap} by {contacts.height - cap}. "
            "Narrow its segments or raise profile_cap (SendGrid contracts limit contacts too). "
            "Nothing was sent."
        )


def rejected_too_many(destination: Destination, report: SyncReport) -> str:
    """A sync that lost more than max_rejected_share of the destination's contacts failed.

    Measured against every contact the list should hold, so an upload whose jobs all fail
    fails, while a later sync that retries the same few bad rows does not.
    """
    rejected = report.rejected.height
    contacts = report.plan.adds + report.plan.updates + report.plan.unchanged
    if not rejected or not contacts:
        return ""
    share = rejected / contacts
    if share <= destination.max_rejected_share:
        return ""
    return (
        f"SendGrid rejected {rejected} of the destination's {contacts} contacts ({share:.0%}; "
        f"max_rejected_share {destination.max_rejected_share:.0%}); {report.upserted} were "
        "accepted in this sync. The list is not in sync: see the rejected rows report for "
        "SendGrid's reasons."
    )


def witnessed_generation(context: dg.AssetExecutionContext, key: str) -> int | None:
    """The state generation the destination's last sync reported to Dagster, if any."""
    records = context.instance.fetch_materializations(
        dg.AssetRecordsFilter(asset_key=context.asset_key, asset_partitions=[key]), limit=1
    ).records
    if not records or records[0].asset_materialization is None:
        return None
    value = records[0].asset_materialization.metadata.get("state_generation")
    return int(value.value) if value is not None else None


def list_location(base_url: str, list_id: str) -> dict:
    """A link to the list in SendGrid's UI, only when the API really is SendGrid's."""
    host = urlsplit(base_url).hostname or ""
    if host in SENDGRID_API_HOSTS:
        return {"sendgrid_list": dg.MetadataValue.url(SENDGRID_LIST_URL.format(list_id=list_id))}
    return {"sendgrid_api": f"{base_url.rstrip('/')} (not SendGrid: no list page to link)"}


def account_metadata(report: SyncReport) -> dict:
    """The account's counts as numbers, so Dagster plots them across runs, and the limit check
    (a dry run shows a would-be refusal here)."""
    account = report.account
    if account is None:
        return {}
    figures = {
        "account_contact_count": account.contact_count,
        "account_billable_count": account.billable_count,
        "account_new_contacts_max": account.new_contacts,
        "account_contact_limit": account.limit,
    }
    return {
        **{name: value for name, value in figures.items() if value is not None},
        "account_limit_check": account.summary(),
    }


def report_metadata(report: SyncReport, base_url: str) -> dict:
    """The figures a data engineer reads first come first (the UI keeps this order)."""
    planned = report.plan.counts()
    return {
        "list_id": report.list_id,
        **list_location(base_url, report.list_id),
        "list_contact_count": report.list_count_after,
        "upserted": report.upserted,
        "removed": report.removed,
        "rejected_by_sendgrid": report.rejected.height,
        "dry_run": report.dry_run,
        **{f"planned_{action}": n for action, n in planned.items()},
        "created": report.created,
        "updated": report.updated,
        "recovered_jobs": report.recovered_jobs,
        "uncertain_before": report.uncertain,
        "adopted": report.adopted,
        "reconciled": report.reconciled or "no",
        "unmanaged_kept": report.plan.unmanaged_kept,
        "jobs": len(report.job_ids),
        "list_contact_count_before": report.list_count_before,
        **account_metadata(report),
        "duration_seconds": round(report.seconds, 3),
        # the state's change count, so the next sync can tell a state restored from an older
        # backup (its count is lower than this) and reconcile
        "state_generation": report.state_generation,
        "job_ids": ", ".join(report.job_ids[:50]) or "(none)",
        "plan_sample (masked)": table_metadata(report.sample),
        "rejected_by_sendgrid_sample (masked)": table_metadata(masked_rejections(report.rejected)),
    }


def write_sendgrid_rejections(reports: ReportStore, key: str, rejected: pl.DataFrame) -> str:
    """Rows SendGrid itself refused, beside the contacts asset's rejected-rows report
    (reports/rejected/<key>.sendgrid.csv); returns its URL (a path on a local base)."""
    return reports.write_report(f"{key}.sendgrid.csv", rejected.write_csv().encode("utf-8"))


@dataclass(frozen=True)
class RunChoices:
    """What the run asked for, from the launchpad config or the run's tags."""

    dry_run: bool = False
    allow_mass_removal: bool = False
    reconcile: bool = False


def run_choices(context: dg.AssetExecutionContext, config: SyncConfig) -> RunChoices:
    """The launchpad's options or the run tags; a launchpad dry run is tagged so it shows."""
    choices = RunChoices(
        dry_run=config.dry_run or tag_is_true(context, DRY_RUN_TAG),
        allow_mass_removal=config.allow_mass_removal
        or tag_is_true(context, ALLOW_MASS_REMOVAL_TAG),
        reconcile=config.reconcile or tag_is_true(context, RECONCILE_TAG),
    )
    if choices.dry_run and not tag_is_true(context, DRY_RUN_TAG):
        # chosen in the launchpad: make it visible in the runs list as well
        context.instance.add_run_tags(context.run_id, {DRY_RUN_TAG: "true"})
    return choices


@dataclass
class DestinationOutcome:
    """One destination's sync: its metadata and check when it synced, a failure when it did
    not. A sync can have both: it synced, but its rejected rows fail it (on_rejected_rows)."""

    destination: str
    metadata: dict[str, Any] | None = None
    check: dg.AssetCheckResult | None = None
    failure: str = ""
    retryable: bool = False  # whether the failure may pass on a retry


def contacts_snapshot(contacts: pl.DataFrame) -> datetime | None:
    """The profiles snapshot the contacts were built from (None: unknown, not checked)."""
    if SNAPSHOT_METADATA not in contacts.columns:
        return None
    values = contacts.get_column(SNAPSHOT_METADATA).drop_nulls().unique()
    if values.is_empty():
        return None
    return min(datetime.fromisoformat(v) for v in values)  # the oldest one decides


def run_destination_sync(
    context: dg.AssetExecutionContext,
    destination: Destination,
    contacts: pl.DataFrame,
    choices: RunChoices,
    sendgrid: SendGridResource,
    sync_state: SyncStateResource,
) -> SyncReport:
    """Preflight, resolve custom fields, then plan and apply the destination's sync."""
    preflight(destination, contacts)
    options = SyncOptions(
        dry_run=choices.dry_run,
        max_removal_share=destination.max_removal_share,
        allow_mass_removal=choices.allow_mass_removal or destination.allow_mass_removal,
        reconcile=choices.reconcile,
        witnessed_generation=witnessed_generation(context, destination.name),
        profiles_snapshot=contacts_snapshot(contacts),
        reconcile_every=(
            timedelta(days=destination.reconcile_every_days)
            if destination.reconcile_every_days
            else None
        ),
    )
    client = sendgrid.client(destination.api_key_env)

    def limit_before_creating(missing: list[str]) -> None:
        """Fields are created before the plan exists: the contact limit is checked first,
        with every contact not yet recorded on the list counted as new."""
        recorded = sync_state.store().for_list(destination.name, destination.list_id).members()
        new_contacts = contacts.join(recorded.select("email"), on="email", how="anti").height
        check_new_contacts(client, destination, new_contacts, choices.dry_run, context.log)

    custom_ids = resolve_custom_field_ids(
        client,
        destination,
        context.log,
        choices.dry_run,
        before_creating=limit_before_creating if destination.max_contacts is not None else None,
    )
    sync = DestinationSync(
        client,
        sync_state.store(),
        destination,
        context.log,
        options,
        custom_ids=custom_ids,
        run_id=context.run_id,
        blocked_emails=lambda: erasure_ledger(sync_state).blocked()["email"],
    )
    return sync.run(contacts)


def sync_destination(
    context: dg.AssetExecutionContext,
    reports: ReportStore,
    destination: Destination,
    contacts: pl.DataFrame,
    choices: RunChoices,
    sendgrid: SendGridResource,
    sync_state: SyncStateResource,
) -> DestinationOutcome:
    """One destination's sync, as metadata or a failure, so it never stops the others.

    Only a PipelineError is a destination's failure; anything else is a bug of ours and
    propagates to fail the step at once (never retried, see retry_only_transient).
    """
    key = destination.name
    try:
        report = run_destination_sync(context, destination, contacts, choices, sendgrid, sync_state)
    except PipelineError as error:
        context.log.error("%s: %s", key, error)
        return DestinationOutcome(key, failure=str(error), retryable=error.retryable)
    context.log.info(
        "%s: %s; upserted %d (created %d, updated %d), removed %d, rejected %d; "
        "list now has %d contacts",
        key,
        "DRY RUN, nothing sent" if choices.dry_run else "synced",
        report.upserted,
        report.created,
        report.updated,
        report.removed,
        report.rejected.height,
        report.list_count_after,
    )
    outcome = DestinationOutcome(key)
    too_many = rejected_too_many(destination, report)
    if too_many:
        context.log.error("%s: %s", key, too_many)
        outcome.failure = too_many
    else:
        outcome.metadata = report_metadata(report, sendgrid.base_url)
        outcome.check = list_size_result(key, report.list_count_after, report.recorded_members)
    if report.rejected.height:
        path = write_sendgrid_rejections(reports, key, report.rejected)
        if outcome.metadata is not None:
            outcome.metadata["rejected_by_sendgrid_report"] = reports.metadata_value(path)
        context.log.warning(
            "%s: SendGrid rejected %d row(s); they are not recorded as synced and are "
            "retried on the next sync. Details: %s",
            key,
            report.rejected.height,
            path,
        )
        if destination.on_rejected_rows == "fail" and not outcome.failure:
            outcome.failure = (
                f"SendGrid rejected {report.rejected.height} row(s) (on_rejected_rows: "
                f"fail); every other contact was synced. Details: {path}"
            )
    return outcome


def outcome_events(
    context: dg.AssetExecutionContext, outcomes: Sequence[DestinationOutcome], dry_run: bool
) -> Iterator[dg.AssetMaterialization | dg.AssetObservation | dg.Output | dg.AssetCheckEvaluation]:
    """One materialization per destination that synced, each with its own figures.

    Also in a run over several destinations, so the UI plots every destination's history. A
    dry run changes nothing: it is an observation (the plan), never a materialization, so it
    cannot turn a partition green or hide an earlier failure.
    """
    event = dg.AssetObservation if dry_run else dg.AssetMaterialization
    synced = [o for o in outcomes if o.metadata is not None]
    for outcome in synced:
        yield event(context.asset_key, partition=outcome.destination, metadata=outcome.metadata)
    if dry_run:  # nothing synced, nothing to check: the check's output, no result
        assets_def = context.op_execution_context.assets_def
        check_key = dg.AssetCheckKey(context.asset_key, LIST_SIZE_CHECK)
        if check_key in context.op_execution_context.selected_asset_check_keys:
            name = assets_def.get_output_name_for_asset_check_key(check_key)
            yield dg.Output(None, output_name=name)
    else:
        checks = {o.destination: [o.check] for o in synced if o.check is not None}
        yield from partition_check_results(context, checks)


def fail_if_any_failed(outcomes: Sequence[DestinationOutcome]) -> None:
    """After every destination ran: one step failure naming each failed destination.

    Retried when any destination's failure may pass on a retry: the retry runs every
    destination of the step again, and a list already in sync plans nothing.
    """
    failed = [o for o in outcomes if o.failure]
    if not failed:
        return
    synced = ", ".join(o.destination for o in outcomes if o.metadata is not None) or "none"
    raise dg.Failure(
        description="Sync failed for "
        + "; ".join(f"{o.destination}: {o.failure}" for o in failed)
        + f" (synced without error: {synced})",
        allow_retries=any(o.retryable for o in failed),
    )


def build_sync_asset(
    pipeline: PipelineConfig, partitions: dg.PartitionsDefinition
) -> dg.AssetsDefinition:
    @dg.asset(
        name="sendgrid_list_sync",
        group_name=GROUP,
        owners=OWNERS,
        kinds={"sendgrid"},
        partitions_def=partitions,
        pool=SYNC_POOL,
        backfill_policy=dg.BackfillPolicy.single_run(),
        retry_policy=dg.RetryPolicy(
            max_retries=2,
            delay=30,
            backoff=dg.Backoff.EXPONENTIAL,
            jitter=dg.Jitter.PLUS_MINUS,
        ),
        output_required=False,  # it records one materialization per destination instead
        check_specs=[
            dg.AssetCheckSpec(
                LIST_SIZE_CHECK,
                asset="sendgrid_list_sync",
                partitions_def=partitions,
                blocking=False,
                description="After each sync: the list's size as SendGrid reports it equals "
                "the members the sync state records (warns only: SendGrid's counts lag).",
            )
        ],
        description="Plans and applies the change that makes the destination's SendGrid list "
        "hold exactly its contacts: upserts new and changed contacts, removes contacts we "
        "added that left its segments, polls every job to a terminal state and records only "
        "confirmed work. Refuses without consent, over the cap, past the removal brake, or "
        "past the account's contact limit (max_contacts).",
    )
    def sendgrid_list_sync(
        context: dg.AssetExecutionContext,
        config: SyncConfig,
        sendgrid_contacts: pl.DataFrame,
        sendgrid: SendGridResource,
        sync_state: SyncStateResource,
        report_store: ReportStore,
    ) -> Iterator[
        dg.AssetMaterialization | dg.AssetObservation | dg.Output | dg.AssetCheckEvaluation
    ]:
        with retry_only_transient():
            choices = run_choices(context, config)
            outcomes = [
                sync_destination(
                    context,
                    report_store,
                    pipeline.destination(key),
                    sendgrid_contacts.filter(pl.col("destination") == key),
                    choices,
                    sendgrid,
                    sync_state,
                )
                for key in context.partition_keys
            ]
            yield from outcome_events(context, outcomes, choices.dry_run)
            fail_if_any_failed(outcomes)

    return sendgrid_list_sync
