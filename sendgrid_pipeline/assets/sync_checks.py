"""Checks on sendgrid_list_sync: what SendGrid reports against what the sync state records."""

from collections.abc import Iterator

import dagster as dg

from sendgrid_pipeline.assets.common import partition_check_results
from sendgrid_pipeline.config import PipelineConfig
from sendgrid_pipeline.errors import ConfigError
from sendgrid_pipeline.sendgrid.errors import SendGridError, UnsafeUrlError
from sendgrid_pipeline.sendgrid.resource import SendGridResource
from sendgrid_pipeline.state import StateStoreError, SyncStateResource

SYNC_ASSET = dg.AssetKey("sendgrid_list_sync")
LIST_SIZE_CHECK = "sendgrid_list_size_matches_sync_state"

# What reading one destination's figures may fail with; the other destinations are still checked.
READ_ERRORS = (SendGridError, StateStoreError, ConfigError, UnsafeUrlError)


def list_size_result(destination: str, reported: int, recorded: int) -> dg.AssetCheckResult:
    """Compare SendGrid's contact_count for the list with the members the sync state records."""
    metadata = {
        "sendgrid_contact_count": reported,
        "sync_state_members": recorded,
        "difference": reported - recorded,
    }
    if reported == recorded:
        description = f"SendGrid reports {reported} contacts on the list, as the sync state records"
    else:
        description = (
            f"SendGrid reports {reported} contacts on {destination}'s list; the sync state "
            f"records {recorded}. SendGrid's counts lag behind its imports and removals (often "
            "by minutes), so a difference right after a sync is expected and goes away on its "
            "own; one that stays means the list was changed outside this pipeline or the record "
            "is out of date, and a sync with reconcile reads the list's true membership."
        )
    return dg.AssetCheckResult(
        asset_key=SYNC_ASSET,
        check_name=LIST_SIZE_CHECK,
        passed=reported == recorded,
        severity=dg.AssetCheckSeverity.WARN,
        description=description,
        metadata=metadata,
    )


def unreadable_result(destination: str, error: Exception) -> dg.AssetCheckResult:
    return dg.AssetCheckResult(
        asset_key=SYNC_ASSET,
        check_name=LIST_SIZE_CHECK,
        passed=False,
        severity=dg.AssetCheckSeverity.WARN,
        description=f"Could not compare {destination}'s list size: {error}",
    )


def build_list_size_check(
    config: PipelineConfig, partitions: dg.PartitionsDefinition
) -> dg.AssetChecksDefinition:
    @dg.asset_check(
        asset=SYNC_ASSET,
        name=LIST_SIZE_CHECK,
        partitions_def=partitions,  # one result per destination, on its partition
        blocking=False,
        description="Per destination: the list's size as SendGrid reports it (contact_count) "
        "equals the members the sync state records. Warns (never fails) on a difference: "
        "SendGrid's counts lag behind its jobs.",
    )
    def sendgrid_list_size_matches_sync_state(
        context: dg.AssetCheckExecutionContext,
        sendgrid: SendGridResource,
        sync_state: SyncStateResource,
    ) -> Iterator[dg.Output | dg.AssetCheckEvaluation]:
        store = sync_state.store()
        results: dict[str, list[dg.AssetCheckResult]] = {}
        for key in context.partition_keys:
            destination = config.destination(key)
            try:
                listed = sendgrid.client(destination.api_key_env).get_list(destination.list_id)
                reported = int(listed.get("contact_count") or 0)
                recorded = store.members(key, destination.list_id).height
            except READ_ERRORS as error:
                context.log.warning("%s: %s", key, error)
                results[key] = [unreadable_result(key, error)]
                continue
            results[key] = [list_size_result(key, reported, recorded)]
        yield from partition_check_results(context, results)

    return sendgrid_list_size_matches_sync_state
