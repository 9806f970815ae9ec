"""Shared names and metadata helpers for the asset modules."""

from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from typing import Any

import dagster as dg
import polars as pl

GROUP = "sendgrid_export"
OWNERS = ["team:data-engineering"]
DRY_RUN_TAG = "sendgrid/dry_run"
ALLOW_MASS_REMOVAL_TAG = "sendgrid/allow_mass_removal"
RECONCILE_TAG = "sendgrid/reconcile"


def markdown_table(frame: pl.DataFrame) -> dg.MetadataValue:
    """A small frame as a markdown table (the UI renders it in the metadata panel)."""
    if frame.height == 0:
        return dg.MetadataValue.md("_(none)_")
    header = "| " + " | ".join(frame.columns) + " |"
    rule = "|" + "---|" * frame.width
    rows = [
        "| " + " | ".join("" if v is None else str(v) for v in row) + " |"
        for row in frame.iter_rows()
    ]
    return dg.MetadataValue.md("\n".join([header, rule, *rows]))


def tag_is_true(context: dg.AssetExecutionContext, tag: str) -> bool:
    return str(context.run.tags.get(tag, "")).lower() in {"1", "true", "yes"}


def per_partition_metadata(
    context: dg.AssetExecutionContext,
    per_destination: Mapping[str, Mapping[str, Any]],
) -> dict[str, Any]:
    """Materialization metadata for one destination, or for a run over several.

    Over several partitions, each destination's figures are also logged as an observation of
    its own partition, so the UI's per-partition plots stay meaningful.
    """
    if len(per_destination) == 1:
        return dict(next(iter(per_destination.values())))
    for destination, metadata in per_destination.items():
        context.log_event(
            dg.AssetObservation(
                asset_key=context.asset_key, partition=destination, metadata=dict(metadata)
            )
        )
    numeric = sorted(
        {
            key
            for metadata in per_destination.values()
            for key, value in metadata.items()
            if isinstance(value, int | float) and not isinstance(value, bool)
        }
    )
    summary = pl.DataFrame(
        [{"destination": d, **{k: m.get(k) for k in numeric}} for d, m in per_destination.items()]
    )
    # Totals are prefixed: every partition of the run carries this metadata, and a bare
    # "contacts" here would plot the run's total as if it were one destination's figure.
    totals = {
        f"run_total_{key}": sum(m.get(key, 0) or 0 for m in per_destination.values())
        for key in numeric
    }
    return {"destinations": markdown_table(summary), **totals}


@contextmanager
def retry_only_transient() -> Iterator[None]:
    """Let the step's RetryPolicy retry only what may pass on a second try.

    Errors that say so (`retryable`: 429, 5xx, timeouts, a job still running) are retried;
    everything else (a refused request, a bad config, a bug of ours) fails at once, with its
    message and traceback kept as the cause.
    """
    try:
        yield
    except (dg.Failure, dg.DagsterError):
        raise
    except Exception as error:
        raise dg.Failure(
            description=f"{type(error).__name__}: {error}",
            allow_retries=bool(getattr(error, "retryable", False)),
        ) from error
