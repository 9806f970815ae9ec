"""Checks on sendgrid_list_sync: what SendGrid reports against what the sync state records."""

import dagster as dg

SYNC_ASSET = dg.AssetKey("sendgrid_list_sync")
LIST_SIZE_CHECK = "sendgrid_list_size_matches_sync_state"


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
