"""Helpers the tests share: run the export job in process and read what happened."""

from __future__ import annotations

from pathlib import Path

import dagster as dg

from sendgrid_pipeline.pipeline import EXPORT_JOB, build_definitions, load_validated_config


def export(
    data_dir: Path,
    partitions: list[str] | None = None,
    tags: dict[str, str] | None = None,
    instance: dg.DagsterInstance | None = None,
    selection: list[str] | None = None,
) -> dg.ExecuteInProcessResult:
    """Run the export job in process over some (default: all) destinations, in one run."""
    config = load_validated_config(data_dir)
    keys = partitions or config.destination_names
    job = build_definitions(config).resolve_job_def(EXPORT_JOB)
    run_tags = {
        "dagster/asset_partition_range_start": keys[0],
        "dagster/asset_partition_range_end": keys[-1],
        **(tags or {}),
    }
    return job.execute_in_process(
        instance=instance or dg.DagsterInstance.ephemeral(),
        tags=run_tags,
        asset_selection=[dg.AssetKey(a) for a in selection] if selection else None,
        raise_on_error=False,
    )


def step_failure_messages(result: dg.ExecuteInProcessResult) -> str:
    """Every step failure's message with its causes, as the UI shows them."""
    messages = []
    for event in result.all_events:
        if event.event_type_value == "STEP_FAILURE":
            error = event.event_specific_data.error
            while error is not None:
                messages.append(error.message)
                error = error.cause
    return "\n".join(messages)
