"""The scheduled refresh: every destination in one run, the shared roots computed once."""

from typing import Any

import dagster as dg

from sendgrid_pipeline.settings import (
    DEFAULT_REFRESH_CRON,
    DEFAULT_REFRESH_TIMEZONE,
    REFRESH_CRON_ENV,
    REFRESH_TIMEZONE_ENV,
)

# What dg.define_asset_job returns (its class is not part of the public API).
AssetJob = Any
RANGE_START_TAG = "dagster/asset_partition_range_start"
RANGE_END_TAG = "dagster/asset_partition_range_end"


def refresh_all_tags(partition_keys: list[str]) -> dict[str, str]:
    """Run tags that select every destination partition in a single run."""
    return {RANGE_START_TAG: partition_keys[0], RANGE_END_TAG: partition_keys[-1]}


def build_refresh_schedule(
    job: AssetJob,
    partition_keys: list[str],
    note: str = "",
    cron: str = DEFAULT_REFRESH_CRON,
    timezone: str = DEFAULT_REFRESH_TIMEZONE,
) -> dg.ScheduleDefinition:
    """The daily refresh, RUNNING by default; `note`: what the configuration left out."""

    @dg.schedule(
        name="sendgrid_refresh_schedule",
        job=job,
        cron_schedule=cron,
        execution_timezone=timezone,
        default_status=dg.DefaultScheduleStatus.RUNNING,
        description=(f"{note}\n\n" if note else "")
        + f"Scheduled refresh ({cron}, {timezone}; set {REFRESH_CRON_ENV} and "
        f"{REFRESH_TIMEZONE_ENV} to change): one run that reads the profiles and segments "
        "once and syncs every destination. Running by default: stop it with the toggle here, "
        "or `dagster schedule stop sendgrid_refresh_schedule -w workspace.yaml`.",
    )
    def sendgrid_refresh_schedule(context: dg.ScheduleEvaluationContext) -> dg.RunRequest:
        return dg.RunRequest(
            tags={**refresh_all_tags(partition_keys), "sendgrid/trigger": "schedule"},
        )

    return sendgrid_refresh_schedule
