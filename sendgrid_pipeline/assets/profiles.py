"""unified_profiles: the profile source, read once and validated."""

import dagster as dg
import polars as pl

from sendgrid_pipeline.assets.common import GROUP, OWNERS
from sendgrid_pipeline.checks import UnifiedProfilesType
from sendgrid_pipeline.config import PipelineConfig
from sendgrid_pipeline.errors import ProfileDataError
from sendgrid_pipeline.profile_source import FileProfileSource


def build_profiles_asset(config: PipelineConfig) -> dg.AssetsDefinition:
    @dg.asset(
        name="unified_profiles",
        group_name=GROUP,
        owners=OWNERS,
        kinds={"polars"},
        dagster_type=UnifiedProfilesType,
        description="Unified customer profiles from the profile source (CSV/Parquet files by "
        "default), one row per customer_id. Validated with a Pandera polars schema.",
    )
    def unified_profiles(
        context: dg.AssetExecutionContext, profile_source: FileProfileSource
    ) -> dg.Output[pl.DataFrame]:
        frame = profile_source.read(config.mapped_columns())
        source = str(profile_source.path)
        if "customer_id" not in frame.columns:
            raise ProfileDataError(f"{source}: the profiles have no customer_id column")
        config.validate_against_profiles(frame.schema, source)
        problems = (
            frame.lazy()
            .with_row_index("row")
            .filter(pl.col("customer_id").is_null() | pl.col("customer_id").is_duplicated())
            .select("row", "customer_id")
            .head(10)
            .collect()
        )
        if problems.height:
            listed = ", ".join(f"row {r + 1}: {c!r}" for r, c in problems.iter_rows())
            raise ProfileDataError(
                f"{source}: customer_id must be present and unique; offending rows: {listed}"
            )
        context.log.info("read %d profiles from %s", frame.height, source)
        files = [f.name for f in profile_source.files()]
        return dg.Output(
            frame,
            metadata={
                "dagster/row_count": frame.height,
                "dagster/column_schema": dg.TableSchema(
                    columns=[dg.TableColumn(n, str(t)) for n, t in frame.schema.items()]
                ),
                "source": dg.MetadataValue.path(source),
                "files": ", ".join(files),
            },
        )

    return unified_profiles
