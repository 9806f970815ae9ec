"""segment_membership: which profile is in which segment.

Partitioned by destination (like unified_profiles) so that a run over several destinations
holds it; the membership is one object for every destination, computed and stored once per run.
Each destination's partition shows the figures of that destination's own segments only.
"""

from pathlib import Path

import dagster as dg
import polars as pl

from sendgrid_pipeline.assets.common import (
    GROUP,
    OWNERS,
    add_partition_metadata,
    table_metadata,
)
from sendgrid_pipeline.checks import SegmentMembershipType
from sendgrid_pipeline.config import PipelineConfig
from sendgrid_pipeline.errors import ProfileDataError
from sendgrid_pipeline.io_manager import INPUT_COLUMNS_METADATA, SHARED_OUTPUT_METADATA
from sendgrid_pipeline.profile_source import as_text, csv_error, csv_header
from sendgrid_pipeline.transform import segment_membership as compute_membership
from sendgrid_pipeline.transform import segment_profile_columns


def read_membership_file(path: Path) -> pl.DataFrame:
    """A CDP's membership export: any CSV/Parquet file with a customer_id column.

    Ids are text, trimmed of surrounding whitespace (a Parquet integer id 42 is '42', never
    '42.0'); empty ids are dropped.
    """
    try:
        if path.suffix.lower() == ".parquet":
            lazy = pl.scan_parquet(path)
            schema = lazy.collect_schema()
            if "customer_id" not in schema:
                shown = ", ".join(repr(c) for c in schema.names()[:20])
                raise ProfileDataError(
                    f"{path}: the membership file has no customer_id column; its columns: {shown}"
                )
            ids = lazy.select(as_text("customer_id", schema["customer_id"]))
        else:
            csv_header(path, "membership file")
            ids = pl.scan_csv(path, infer_schema=False).select("customer_id")
        trimmed = pl.col("customer_id").str.strip_chars()
        return ids.select(trimmed).filter(trimmed.is_not_null() & (trimmed != "")).collect()
    except ProfileDataError:
        raise
    except pl.exceptions.PolarsError as error:
        if path.suffix.lower() == ".csv":
            raise csv_error(path, error, "membership file") from None
        raise ProfileDataError(f"{path}: cannot read the membership file: {error}") from None
    except OSError as error:
        raise ProfileDataError(f"{path}: cannot read the membership file: {error}") from None


def unmatched_ids(ids: pl.DataFrame, profiles: pl.DataFrame) -> pl.Series:
    """The distinct membership ids that match no profile's customer_id."""
    return (
        ids.lazy()
        .select("customer_id")
        .unique(maintain_order=True)
        .join(profiles.lazy().select("customer_id"), on="customer_id", how="anti")
        .collect()["customer_id"]
    )


def overlaps(membership: pl.DataFrame, segments: pl.Series) -> pl.DataFrame:
    """Members shared by each pair of segments (the diagonal is each segment's size)."""
    if segments.len() == 1:  # no pairs: the size alone, without joining a million members
        size = membership.filter(pl.col("segment_id") == segments[0]).height
        return pl.DataFrame({"segment": segments, segments[0]: [size]})
    pairs = membership.join(membership, on="customer_id", suffix="_other")
    counts = pairs.group_by("segment_id", "segment_id_other").len("shared")
    wide = counts.pivot(on="segment_id_other", index="segment_id", values="shared")
    ordered = pl.DataFrame({"segment_id": segments})
    present = [s for s in segments if s in wide.columns]
    return (
        ordered.join(wide, on="segment_id", how="left")
        .select("segment_id", *present)
        .fill_null(0)
        .rename({"segment_id": "segment"})
    )


def segment_figures(
    membership: pl.DataFrame,
    segments: list[str],
    names: dict[str, str],
    unmatched: dict[str, int],
) -> dict[str, object]:
    """The metadata of a set of segments: sizes, overlaps, members in any, unmatched ids."""
    own = membership.filter(pl.col("segment_id").is_in(segments))
    size_of = dict(own.group_by("segment_id").len("members").iter_rows())
    table = pl.DataFrame(
        {
            "segment": segments,
            "name": [names[s] for s in segments],
            "members": [int(size_of.get(s, 0)) for s in segments],
        },
        schema={"segment": pl.String, "name": pl.String, "members": pl.Int64},
    )
    return {
        "dagster/row_count": own.height,
        # one row per (customer, segment): with one segment, each row is a profile
        "profiles_in_any_segment": own.height
        if len(segments) == 1
        else own["customer_id"].n_unique(),
        "segments": table_metadata(table),
        # a matrix with a column per segment
        "segment_overlaps": table_metadata(overlaps(own, table["segment"])),
        **{f"segment_{s}": int(n) for s, n in table.select("segment", "members").iter_rows()},
        **{f"segment_{s}_unmatched_ids": unmatched[s] for s in segments if s in unmatched},
    }


def build_segments_asset(
    config: PipelineConfig, partitions: dg.PartitionsDefinition | None = None
) -> dg.AssetsDefinition:
    """The membership asset; with `partitions` (the destinations), computed once for all,
    each destination's partition showing its own segments' figures."""
    described = "\n".join(
        f"- `{s.id}`: {s.name}: `{s.rule or 'members listed in ' + str(s.membership_file)}`"
        for s in config.segments
    )

    @dg.asset(
        name="segment_membership",
        group_name=GROUP,
        owners=OWNERS,
        kinds={"polars"},
        partitions_def=partitions,
        # computed once in a run over several destinations, backfills and ranges included
        backfill_policy=dg.BackfillPolicy.single_run(),
        metadata={SHARED_OUTPUT_METADATA: True},
        ins={
            "unified_profiles": dg.AssetIn(
                metadata={INPUT_COLUMNS_METADATA: segment_profile_columns(config.segments)}
            )
        },
        dagster_type=SegmentMembershipType,
        description="Members of every segment (customer_id, segment_id). Segments are SQL "
        f"boolean expressions over profile columns (data/segments.yaml):\n{described}\n\n"
        "Computed once per run for every destination; each destination's partition shows the "
        "figures of its own segments (those it includes or excludes).",
    )
    def segment_membership(
        context: dg.AssetExecutionContext, unified_profiles: pl.DataFrame
    ) -> dg.Output[pl.DataFrame]:
        files = {
            s.id: read_membership_file(config.membership_path(s))
            for s in config.segments
            if s.membership_file is not None
        }
        membership = compute_membership(unified_profiles, config.segments, files)
        unmatched: dict[str, int] = {}
        for segment in config.segments:
            if segment.id not in files:
                continue
            missing = unmatched_ids(files[segment.id], unified_profiles)
            unmatched[segment.id] = missing.len()
            if missing.len():
                context.log.warning(
                    "segment %s: %d of the %d distinct ids in %s match no profile "
                    "(they are left out), e.g. %s",
                    segment.id,
                    missing.len(),
                    files[segment.id]["customer_id"].n_unique(),
                    segment.membership_file,
                    ", ".join(repr(i) for i in missing.head(5)),
                )
            else:
                context.log.info(
                    "segment %s: every id in %s matches a profile",
                    segment.id,
                    segment.membership_file,
                )
        size_of = dict(membership.group_by("segment_id").len("members").iter_rows())
        for segment in config.segments:
            context.log.info("segment %s: %d members", segment.id, size_of.get(segment.id, 0))
        names = {s.id: s.name for s in config.segments}
        if context.assets_def.partitions_def is None:
            every = [s.id for s in config.segments]
            figures = segment_figures(membership, every, names, unmatched)
            return dg.Output(membership, metadata=figures)
        # Each destination's figures on its own partition only (none on the Output, which
        # would show them on every partition of the run).
        add_partition_metadata(
            context,
            {
                key: segment_figures(
                    membership, destination_segments(config, key), names, unmatched
                )
                for key in context.partition_keys
            },
        )
        return dg.Output(membership)

    return segment_membership


def destination_segments(config: PipelineConfig, destination: str) -> list[str]:
    """The segments a destination uses (included, then excluded), in definition order."""
    used = config.destination(destination)
    wanted = set(used.segments) | set(used.exclude_segments)
    return [s.id for s in config.segments if s.id in wanted]
