"""The Dagster floor of `make bench`: the pipeline's asset graph with bodies that do nothing.

Same asset keys, dependencies, partitioning (one static partition per destination on the last
two assets) and in-process executor as sendgrid_pipeline.pipeline, so materializing it with the
same CLI command measures what Dagster itself costs a run: interpreter and Dagster start-up,
loading a code location, the run and event storage, four steps handing an empty value
on through the default IO manager, two root assets (erasures, suppressions) beside them,
teardown. Nothing else is imported, so none of the pipeline's own import time is in it.

    dagster asset materialize -m sendgrid_pipeline_tests.devkit.floor --select '*' --partition bench
"""

from __future__ import annotations

import os

import dagster as dg

PARTITIONS = dg.StaticPartitionsDefinition(
    os.environ.get("SENDGRID_BENCH_FLOOR_PARTITIONS", "bench").split(",")
)


@dg.asset(name="unified_profiles", backfill_policy=dg.BackfillPolicy.single_run())
def unified_profiles() -> dict:
    return {}


@dg.asset(name="segment_membership", backfill_policy=dg.BackfillPolicy.single_run())
def segment_membership(unified_profiles: object) -> dict:
    return {}


@dg.asset(
    name="sendgrid_contacts",
    partitions_def=PARTITIONS,
    backfill_policy=dg.BackfillPolicy.single_run(),
)
def sendgrid_contacts(segment_membership: object) -> dict:
    return {}


@dg.asset(
    name="sendgrid_list_sync",
    partitions_def=PARTITIONS,
    backfill_policy=dg.BackfillPolicy.single_run(),
)
def sendgrid_list_sync(sendgrid_contacts: object) -> dict:
    return {}


@dg.asset(name="sendgrid_erasures")
def sendgrid_erasures() -> None:
    """The pipeline's erasure asset has no upstream asset either: one more step per run."""


@dg.asset(name="sendgrid_unsubscribes")
def sendgrid_unsubscribes() -> None:
    """Likewise the suppressions asset: `--select '*'` materializes it in every run."""


defs = dg.Definitions(
    assets=[
        unified_profiles,
        segment_membership,
        sendgrid_contacts,
        sendgrid_list_sync,
        sendgrid_erasures,
        sendgrid_unsubscribes,
    ],
    executor=dg.in_process_executor,
)
