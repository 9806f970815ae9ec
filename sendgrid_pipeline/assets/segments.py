"""segment_membership: which profile is in which segment."""

from pathlib import Path

import dagster as dg
import polars as pl

from sendgrid_pipeline.assets.common import GROUP, OWNERS, markdown_table
from sendgrid_pipeline.checks import SegmentMembershipType
from sendgrid_pipeline.config import PipelineConfig
from sendgrid_pipeline.errors import ProfileDataError
from sendgrid_pipeline.transform import segment_membership as compute_membership


def read_membership_file(path: Path) -> pl.DataFrame:
    """A CDP's membership export: any CSV/Parquet file with a customer_id column."""
    try:
        frame = (
            pl.read_parquet(path, columns=["customer_id"])
            if path.suffix.lower() == ".parquet"
            else pl.read_csv(
                path, columns=["customer_id"], schema_overrides={"customer_id": pl.String}
            )
        )
    except (pl.exceptions.PolarsError, OSError) as error:
        raise ProfileDataError(f"{path}: cannot read the membership file: {error}") from None
    return frame.select(pl.col("customer_id").cast(pl.String)).drop_nulls()


def overlaps(membership: pl.DataFrame, segments: pl.Series) -> pl.DataFrame:
    """Members shared by each pair of segments (the diagonal is each segment's size)."""
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


def build_segments_asset(config: PipelineConfig) -> dg.AssetsDefinition:
    described = "\n".join(
        f"- `{s.id}`: {s.name}: `{s.rule or 'members listed in ' + str(s.membership_file)}`"
        for s in config.segments
    )

    @dg.asset(
        name="segment_membership",
        group_name=GROUP,
        owners=OWNERS,
        kinds={"polars"},
        dagster_type=SegmentMembershipType,
        description="Members of every segment (customer_id, segment_id). Segments are SQL "
        f"boolean expressions over profile columns (data/segments.yaml):\n{described}",
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
        sizes = membership.group_by("segment_id").len("members")
        size_of = dict(sizes.iter_rows())
        table = pl.DataFrame(
            {
                "segment": [s.id for s in config.segments],
                "name": [s.name for s in config.segments],
                "members": [size_of.get(s.id, 0) for s in config.segments],
            }
        )
        for segment, members in zip(table["segment"], table["members"], strict=True):
            context.log.info("segment %s: %d members", segment, members)
        return dg.Output(
            membership,
            metadata={
                "dagster/row_count": membership.height,
                "profiles_in_any_segment": membership["customer_id"].n_unique(),
                "segments": markdown_table(table),
                "segment_overlaps": markdown_table(overlaps(membership, table["segment"])),
                **{
                    f"segment_{s}": int(n)
                    for s, n in table.select("segment", "members").iter_rows()
                },
            },
        )

    return segment_membership
