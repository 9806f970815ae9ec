"""segment_membership: which profile is in which segment."""

import dagster as dg
import polars as pl

from sendgrid_pipeline.assets.common import GROUP, OWNERS, markdown_table
from sendgrid_pipeline.checks import SegmentMembershipType
from sendgrid_pipeline.config import PipelineConfig
from sendgrid_pipeline.transform import segment_membership as compute_membership


def build_segments_asset(config: PipelineConfig) -> dg.AssetsDefinition:
    described = "\n".join(f"- `{s.id}`: {s.name}: `{s.rule}`" for s in config.segments)

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
        membership = compute_membership(unified_profiles, config.segments)
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
                **{
                    f"segment_{s}": int(n)
                    for s, n in table.select("segment", "members").iter_rows()
                },
            },
        )

    return segment_membership
