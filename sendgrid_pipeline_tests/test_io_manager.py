"""Step outputs between runs: concurrent writers of one output never trip over each other, a
missing input fails at once naming where it was looked for, and the reports sit beside."""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import dagster as dg
import polars as pl
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from sendgrid_pipeline.io_manager import (
    INPUT_COLUMNS_METADATA,
    SHARED_OUTPUT_METADATA,
    DestinationParquetIOManager,
    ReportStore,
    environment_resource,
)

KEY = dg.AssetKey("unified_profiles")


def test_two_runs_writing_the_same_output_at_once_both_succeed(tmp_path: Path) -> None:
    manager = DestinationParquetIOManager(base_dir=str(tmp_path))
    frames = [pl.DataFrame({"customer_id": [f"C{w}-{i}" for i in range(20_000)]}) for w in range(8)]

    def write(frame: pl.DataFrame) -> None:
        for _ in range(5):
            manager._write(KEY, None, frame)

    with ThreadPoolExecutor(max_workers=8) as pool:
        list(pool.map(write, frames))  # a shared temporary name made some of these raise
    target = tmp_path / "unified_profiles.parquet"
    assert any(pl.read_parquet(target).equals(frame) for frame in frames)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["unified_profiles.parquet"]


def test_partitions_are_objects_under_the_asset_key(tmp_path: Path) -> None:
    manager = DestinationParquetIOManager(base_dir=(tmp_path / "out").as_uri())
    frame = pl.DataFrame({"destination": ["a", "a", "b"], "email": ["x@a", "y@a", "z@b"]})
    context = dg.build_output_context(
        asset_key=dg.AssetKey("sendgrid_contacts"),
        partition_key=None,
        asset_partitions_def=dg.StaticPartitionsDefinition(["a", "b", "c"]),
    )
    # several partitions in one run: one object each, an empty one for a destination with none
    for key in ("a", "b", "c"):
        manager._write(context.asset_key, key, frame.filter(pl.col("destination") == key))
    folder = tmp_path / "out" / "sendgrid_contacts"
    assert sorted(p.name for p in folder.iterdir()) == ["a.parquet", "b.parquet", "c.parquet"]
    assert pl.read_parquet(folder / "c.parquet").height == 0
    assert manager._read(context.asset_key, "a")["email"].to_list() == ["x@a", "y@a"]


def test_a_missing_input_fails_at_once_naming_its_place(tmp_path: Path) -> None:
    manager = DestinationParquetIOManager(base_dir=str(tmp_path / "storage"))
    with pytest.raises(dg.Failure) as raised:
        manager._read(dg.AssetKey("sendgrid_contacts"), "eu_newsletter")
    failure = raised.value
    assert failure.allow_retries is False
    where = str(tmp_path / "storage" / "sendgrid_contacts" / "eu_newsletter.parquet")
    assert where in failure.description
    assert "materialize sendgrid_contacts for destination 'eu_newsletter' first" in (
        failure.description
    )


def test_one_location_per_base(tmp_path: Path) -> None:
    first = DestinationParquetIOManager(base_dir=str(tmp_path))
    second = DestinationParquetIOManager(base_dir=str(tmp_path))
    assert first.location is second.location  # one client per base and settings
    assert first.location is not DestinationParquetIOManager(base_dir=str(tmp_path / "x")).location


@pytest.mark.parametrize(
    ("storage", "reports"),
    [
        ("{tmp}/data/storage", "{tmp}/data"),  # the default layout: <data dir>/reports
        ("{tmp}/outputs", "{tmp}/outputs"),
        ("file://{tmp}/storage", "file://{tmp}/storage"),
        ("s3://bucket/storage", "s3://bucket/storage"),
    ],
)
def test_reports_sit_beside_the_step_outputs(tmp_path: Path, storage: str, reports: str) -> None:
    manager = DestinationParquetIOManager(
        base_dir=storage.format(tmp=tmp_path),
        storage_options={"aws_region": "eu-west-1"},
        environment=environment_resource({"AWS_REGION": "us-east-1"}),
    )
    store = ReportStore.beside(manager)
    assert store.base_dir == reports.format(tmp=tmp_path)
    assert store.storage_options == {"aws_region": "eu-west-1"}
    assert store.environment is manager.environment


def test_a_local_report_is_a_path_and_an_object_store_one_a_url(tmp_path: Path) -> None:
    store = ReportStore(base_dir=str(tmp_path))
    path = store.write_report("eu_newsletter.csv", b"destination,customer_id,reason\n")
    assert path == str(tmp_path / "reports" / "rejected" / "eu_newsletter.csv")
    assert Path(path).read_bytes() == b"destination,customer_id,reason\n"
    assert store.metadata_value(path) == dg.MetadataValue.path(path)
    remote = "s3://bucket/reports/rejected/eu_newsletter.csv"
    assert ReportStore(base_dir="s3://bucket").metadata_value(remote) == dg.MetadataValue.url(
        remote
    )


# -- the shared roots: partitioned by destination, one object per run ------------------------------
ORDER = ["a", "b", "c", "d"]


def _shared_root_defs(base: Path, seen: list[int]) -> dg.Definitions:
    """A shared root (marked as unified_profiles is) and a per-destination asset below it."""
    partitions = dg.StaticPartitionsDefinition(ORDER)

    @dg.asset(partitions_def=partitions, metadata={SHARED_OUTPUT_METADATA: True})
    def root(context) -> pl.DataFrame:
        return pl.DataFrame(
            {"customer_id": ["C1", "C2", "C3"], "keys": len(context.partition_keys)}
        )

    @dg.asset(partitions_def=partitions)
    def per_destination(context, root: pl.DataFrame) -> pl.DataFrame:
        seen.append(root.height)
        return pl.concat(
            [
                root.select("customer_id").with_columns(destination=pl.lit(k))
                for k in context.partition_keys
            ]
        )

    return dg.Definitions(
        assets=[root, per_destination],
        resources={"io_manager": DestinationParquetIOManager(base_dir=str(base))},
    )


@settings(
    max_examples=6, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(bounds=st.tuples(st.integers(0, 3), st.integers(0, 3)).map(sorted))
def test_a_shared_root_is_stored_once_and_loaded_once_for_any_range(
    tmp_path_factory: pytest.TempPathFactory, bounds: list[int]
) -> None:
    base = tmp_path_factory.mktemp("storage")
    seen: list[int] = []
    defs = _shared_root_defs(base, seen)
    start, end = ORDER[bounds[0]], ORDER[bounds[1]]
    keys = ORDER[bounds[0] : bounds[1] + 1]
    job = defs.resolve_implicit_global_asset_job_def()
    with dg.instance_for_test() as instance:
        result = job.execute_in_process(
            instance=instance,
            tags={
                "dagster/asset_partition_range_start": start,
                "dagster/asset_partition_range_end": end,
            },
        )
        assert result.success
        # the root's materialization is recorded on every partition of the run ...
        recorded = instance.get_materialized_partitions(dg.AssetKey("root"))
        assert recorded == set(keys)
    # ... but its output is one object, written once, and read once (not once per partition)
    assert sorted(p.name for p in base.iterdir()) == ["per_destination", "root.parquet"]
    assert pl.read_parquet(base / "root.parquet")["keys"].to_list() == [len(keys)] * 3
    assert seen == [3]
    stored = sorted(p.name for p in (base / "per_destination").iterdir())
    assert stored == [f"{k}.parquet" for k in keys]


@pytest.mark.parametrize("as_url", [False, True])
def test_an_input_reads_only_the_columns_its_metadata_names(tmp_path: Path, as_url: bool) -> None:
    """The profiles' consumers load only the columns they use (a column the file lacks is
    left for the step's own error), through a real run and its io manager."""
    base = tmp_path / "storage"
    seen: dict[str, list[str]] = {}

    @dg.asset(name="profiles")
    def profiles() -> pl.DataFrame:
        return pl.DataFrame(
            {"customer_id": ["1", "2"], "email": ["a@x.io", "b@x.io"], "big": [1, 2]}
        )

    @dg.asset(
        ins={
            "profiles": dg.AssetIn(
                metadata={INPUT_COLUMNS_METADATA: ["email", "gone", "customer_id"]}
            )
        }
    )
    def narrow(profiles: pl.DataFrame) -> None:
        seen["narrow"] = profiles.columns

    @dg.asset(ins={"profiles": dg.AssetIn()})
    def whole(profiles: pl.DataFrame) -> None:
        seen["whole"] = profiles.columns

    manager = DestinationParquetIOManager(base_dir=base.as_uri() if as_url else str(base))
    result = dg.materialize([profiles, narrow, whole], resources={"io_manager": manager})
    assert result.success
    assert seen == {"narrow": ["email", "customer_id"], "whole": ["customer_id", "email", "big"]}


def test_the_export_reads_only_the_profile_columns_it_uses() -> None:
    """segment_membership reads its rules' columns, sendgrid_contacts its mappings' ones."""
    from sendgrid_pipeline.assets.contacts import build_contacts_asset
    from sendgrid_pipeline.assets.segments import build_segments_asset
    from sendgrid_pipeline.config import load_config
    from sendgrid_pipeline.transform import contacts_profile_columns, segment_profile_columns

    config = load_config(Path(__file__).parents[1] / "data")
    partitions = dg.StaticPartitionsDefinition([d.name for d in config.destinations])
    read = {}
    for asset in (
        build_segments_asset(config, partitions),
        build_contacts_asset(config, partitions),
    ):
        (input_def,) = [d for d in asset.node_def.input_defs if d.name == "unified_profiles"]
        read[asset.key.path[-1]] = input_def.metadata[INPUT_COLUMNS_METADATA]
    assert read["segment_membership"] == segment_profile_columns(config.segments)
    assert read["sendgrid_contacts"] == contacts_profile_columns(list(config.destinations))
    assert "email_opt_in" in read["segment_membership"]  # a rule column
    assert "email_opt_in" not in read["sendgrid_contacts"]  # mapped by no destination
    assert "email" in read["sendgrid_contacts"] and "customer_id" in read["sendgrid_contacts"]
