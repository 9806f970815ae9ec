"""The Dagster floor of `make bench`: the pipeline's asset graph with bodies that do nothing.

Same asset keys, dependencies, group, partitioning (one static partition per destination on
every asset) and in-process executor as the export in sendgrid_pipeline.pipeline, so
materializing it with the same CLI command measures what Dagster itself costs a run:
interpreter and Dagster start-up, loading a code location, the run and event storage, four
steps, teardown. Nothing else is imported, so none of the pipeline's own import time is in it.

    dagster asset materialize -m sendgrid_pipeline_tests.devkit.floor \
        --select group:sendgrid_export --partition bench
"""

from __future__ import annotations

import os

import dagster as dg

PARTITIONS = dg.StaticPartitionsDefinition(
    os.environ.get("SENDGRID_BENCH_FLOOR_PARTITIONS", "bench").split(",")
)


GROUP = "sendgrid_export"  # the pipeline's export group: the bench selects it by name


def _floor_asset(name: str, *upstream: str):
    """A do-nothing asset with the pipeline's key, group, partitions and backfill policy."""

    @dg.asset(
        name=name,
        group_name=GROUP,
        partitions_def=PARTITIONS,
        backfill_policy=dg.BackfillPolicy.single_run(),
        deps=list(upstream),
    )
    def _nothing() -> None:
        return None

    return _nothing


defs = dg.Definitions(
    assets=[
        _floor_asset("unified_profiles"),
        _floor_asset("segment_membership", "unified_profiles"),
        _floor_asset("sendgrid_contacts", "segment_membership"),
        _floor_asset("sendgrid_list_sync", "sendgrid_contacts"),
    ],
    executor=dg.in_process_executor,
)
