"""unified_profiles: the profile source, read once and validated.

Partitioned by destination like the assets downstream, so that one run (or one backfill) over
several destinations holds every asset, but the profiles are one object: read once per run,
stored once, the same for every destination (see io_manager.SHARED_OUTPUT_METADATA).
"""

from datetime import UTC, datetime

import dagster as dg
import polars as pl

from sendgrid_pipeline.assets.common import GROUP, OWNERS
from sendgrid_pipeline.checks import PROFILES_SCHEMA, UnifiedProfilesType, record_passed
from sendgrid_pipeline.config import PipelineConfig
from sendgrid_pipeline.errors import ProfileDataError
from sendgrid_pipeline.io_manager import SHARED_OUTPUT_METADATA
from sendgrid_pipeline.profile_source import Located, ProfileSource

SHOWN = 10  # offending customer_ids listed in an error
# When the profiles were read (ISO 8601, UTC): travels with the contacts to the sync, which
# refuses a plan from profiles older than the last applied plan's (a stale run).
SNAPSHOT_METADATA = "profiles_snapshot"


def build_profiles_asset(
    config: PipelineConfig, partitions: dg.PartitionsDefinition | None = None
) -> dg.AssetsDefinition:
    """The profiles asset; with `partitions` (the destinations), one read for all of them."""

    @dg.asset(
        name="unified_profiles",
        group_name=GROUP,
        owners=OWNERS,
        kinds={"polars"},
        partitions_def=partitions,
        # computed once in a run over several destinations, backfills and ranges included
        backfill_policy=dg.BackfillPolicy.single_run(),
        metadata={SHARED_OUTPUT_METADATA: True},
        dagster_type=UnifiedProfilesType,
        description="Unified customer profiles from the profile source (CSV/Parquet files by "
        "default; a SQL warehouse or a Delta table as profile_source.yaml says), one row per "
        "customer_id. Validated with a Pandera polars schema. Partitioned by destination only "
        "so that a run over several destinations holds it: the profiles are read once per run "
        "and are the same for every destination.",
    )
    def unified_profiles(
        context: dg.AssetExecutionContext, profile_source: ProfileSource
    ) -> dg.Output[pl.DataFrame]:
        snapshot = datetime.now(UTC)  # before the read: a change during it counts as newer
        located = profile_source.read_located(config.mapped_columns())
        frame = located.frame
        source = profile_source.label  # never a secret: a URI's password is masked
        if "customer_id" not in frame.columns:
            raise ProfileDataError(f"{source}: the profiles have no customer_id column")
        for warning in config.validate_against_profiles(frame.schema, source):
            context.log.warning(warning)  # e.g. an exclusion rule that can be null
        check_customer_ids(located, source)
        if frame.schema["customer_id"] == pl.String:  # all PROFILES_SCHEMA asks: no 2nd pass
            record_passed(PROFILES_SCHEMA, frame)
        context.log.info("read %d profiles from %s", frame.height, source)
        # The same figures on every partition the run materializes: they describe the one read.
        scope = (
            "every profile: one read shared by the destinations "
            + ", ".join(context.partition_keys)
            if context.assets_def.partitions_def is not None
            else "every profile"
        )
        return dg.Output(
            frame,
            metadata={
                "dagster/row_count": frame.height,
                "dagster/column_schema": dg.TableSchema(
                    columns=[dg.TableColumn(n, str(t)) for n, t in frame.schema.items()]
                ),
                "source": dg.MetadataValue.text(source),
                "figures_cover": dg.MetadataValue.text(scope),
                "origins": ", ".join(located.origins),  # the files, a table, a Delta version
                SNAPSHOT_METADATA: snapshot.isoformat(timespec="microseconds"),
            },
        )

    return unified_profiles


def check_customer_ids(located: Located, source: str) -> None:
    """Every profile has a customer_id, used once; an error names each offending row."""
    ids = located.frame.get_column("customer_id")
    if ids.null_count() == 0 and ids.n_unique() == ids.len():
        return  # the usual case, found without marking each row
    flagged = (
        located.frame.lazy()
        .select("customer_id")
        .with_row_index("index")
        .filter(pl.col("customer_id").is_null() | pl.col("customer_id").is_duplicated())
        .collect()
    )
    if not flagged.height:
        return
    missing = flagged.filter(pl.col("customer_id").is_null())["index"]
    repeated = (
        flagged.filter(pl.col("customer_id").is_not_null())
        .group_by("customer_id", maintain_order=True)
        .agg(pl.col("index").head(3), pl.len().alias("rows"))
    )
    problems = [f"no customer_id in {located.describe(i)}" for i in missing.head(SHOWN)]
    for customer_id, indexes, rows in repeated.head(SHOWN).iter_rows():
        where = " and ".join(located.describe(i) for i in indexes)
        more = f" and {rows - len(indexes)} more rows" if rows > len(indexes) else ""
        problems.append(f"{customer_id!r} in {where}{more}")
    counts = []
    if missing.len():
        counts.append(_count(missing.len(), "row without one", "rows without one"))
    if repeated.height:
        counts.append(_count(repeated.height, "id on several rows", "ids on several rows"))
    raise ProfileDataError(
        f"{source}: customer_id must be present and unique ({', '.join(counts)}; "
        f"{located.row_note}): " + "; ".join(problems)
    )


def _count(n: int, one: str, many: str) -> str:
    return f"{n} {one if n == 1 else many}"
