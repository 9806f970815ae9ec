"""Shared names and metadata helpers for the asset modules."""

from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from typing import Any

import dagster as dg
import polars as pl

# Not exported at the top level in Dagster 1.13: the pointer from a check's evaluation to the
# materialization it checked (what dg.AssetCheckResult fills in for a single-partition step).
from dagster._core.definitions.asset_checks.asset_check_evaluation import (
    AssetCheckEvaluationTargetMaterializationData,
)

from sendgrid_pipeline.errors import PipelineError

GROUP = "sendgrid_export"
OWNERS = ["team:data-engineering"]
DRY_RUN_TAG = "sendgrid/dry_run"
ALLOW_MASS_REMOVAL_TAG = "sendgrid/allow_mass_removal"
RECONCILE_TAG = "sendgrid/reconcile"
# The roots every destination shares: partitioned by destination so that one run holds every
# asset, but one object per run (io_manager.SHARED_OUTPUT_METADATA).
SHARED_ROOTS = (dg.AssetKey("unified_profiles"), dg.AssetKey("segment_membership"))
# The assets computed per destination, downstream of the roots.
PER_DESTINATION = (dg.AssetKey("sendgrid_contacts"), dg.AssetKey("sendgrid_list_sync"))


def _column_type(dtype: pl.DataType) -> str:
    if dtype == pl.Boolean:
        return "bool"
    if dtype.is_integer():
        return "int"
    if dtype.is_float():
        return "float"
    return "string"


def table_metadata(frame: pl.DataFrame) -> dg.MetadataValue:
    """A small frame as a typed table (sortable in the UI, readable through the API).

    Values other than numbers and booleans are shown as text: a table cell holds scalars only.
    """
    columns = [dg.TableColumn(name, _column_type(dtype)) for name, dtype in frame.schema.items()]
    text = [
        pl.col(name).cast(pl.String)
        for name, column in zip(frame.columns, columns, strict=True)
        if column.type == "string"
    ]
    rows = frame.with_columns(text).to_dicts() if text else frame.to_dicts()
    return dg.MetadataValue.table(
        [dg.TableRecord(row) for row in rows], dg.TableSchema(columns=columns)
    )


def tag_is_true(context: dg.AssetExecutionContext, tag: str) -> bool:
    return str(context.run.tags.get(tag, "")).lower() in {"1", "true", "yes"}


def add_partition_metadata(
    context: dg.AssetExecutionContext,
    per_destination: Mapping[str, Mapping[str, Any]],
) -> None:
    """Each destination's figures on its own partition's materialization, and nowhere else.

    Metadata given to the step's Output lands on every partition the run materializes, so in a
    run over several destinations it would show one destination (or the run's total) as every
    destination's figure. Partition-scoped asset metadata is written to that partition only.
    """
    for destination, metadata in per_destination.items():
        context.add_asset_metadata(dict(metadata), partition_key=destination)


def partition_check_results(
    context: dg.AssetExecutionContext | dg.AssetCheckExecutionContext,
    results: Mapping[str, Sequence[dg.AssetCheckResult]],
) -> Iterator[dg.Output | dg.AssetCheckEvaluation]:
    """Each destination's check results, attached to that destination's partition.

    A dg.AssetCheckResult names no partition: Dagster attaches it to the step's partition only
    when the step covers exactly one, so over several destinations it would record a single
    result on no partition, and every partition's check would show as skipped. An evaluation
    names its partition and the partition's materialization it checked (without that target the
    UI takes the result as out of date). The checks' outputs are emitted once, as Dagster does
    for a result, so assets that wait on a blocking check still run when it passes. A failed
    blocking check of ERROR severity still fails the step after every result is recorded.
    """
    op_context = context.op_execution_context
    assets_def = op_context.assets_def
    selected = op_context.selected_asset_check_keys
    evaluations: list[dg.AssetCheckEvaluation] = []
    emitted: set[dg.AssetCheckKey] = set()
    for partition, partition_results in results.items():
        for result in partition_results:
            if result.check_name is None:
                raise ValueError("a per-partition check result must name its check")
            asset_key = result.asset_key or assets_def.key
            check_key = dg.AssetCheckKey(asset_key, result.check_name)
            if check_key not in selected:
                continue
            if check_key not in emitted:
                emitted.add(check_key)
                yield dg.Output(
                    None, output_name=assets_def.get_output_name_for_asset_check_key(check_key)
                )
            spec = assets_def.get_spec_for_check_key(check_key)
            evaluations.append(
                dg.AssetCheckEvaluation(
                    asset_key=check_key.asset_key,
                    check_name=check_key.name,
                    passed=result.passed,
                    metadata=result.metadata,
                    target_materialization_data=_latest_materialization(
                        context.instance, check_key.asset_key, partition
                    ),
                    severity=result.severity,
                    description=result.description,
                    blocking=spec.blocking,
                    partition=partition,
                )
            )
    yield from evaluations


def _latest_materialization(
    instance: dg.DagsterInstance, asset_key: dg.AssetKey, partition: str
) -> AssetCheckEvaluationTargetMaterializationData | None:
    """The partition's latest materialization, which the check's result is about."""
    records = instance.fetch_materializations(
        dg.AssetRecordsFilter(asset_key=asset_key, asset_partitions=[partition]), limit=1
    ).records
    if not records:
        return None
    record = records[0]
    return AssetCheckEvaluationTargetMaterializationData(
        storage_id=record.storage_id,
        run_id=record.event_log_entry.run_id,
        timestamp=record.timestamp,
    )


@contextmanager
def retry_only_transient() -> Iterator[None]:
    """Let the step's RetryPolicy retry exactly what may pass on a second try.

    A PipelineError is retried when it says so (`retryable`: 429, 5xx, timeouts, a job still
    running) and fails at once otherwise (a refused request, a bad config). Any other exception
    is a bug of ours: it is never retried (Dagster would retry it by default), and its message
    and traceback are kept as the cause.
    """
    try:
        yield
    except (dg.Failure, dg.DagsterError):
        raise
    except PipelineError as error:
        raise dg.Failure(
            description=f"{type(error).__name__}: {error}", allow_retries=error.retryable
        ) from error
    except Exception as error:  # re-raised at once as a failure that is not retried
        raise dg.Failure(
            description=f"{type(error).__name__}: {error}", allow_retries=False
        ) from error
