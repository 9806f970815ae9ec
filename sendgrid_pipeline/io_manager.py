"""Polars frames between steps as Parquet objects (no pickling of large frames), and reports.

Both live on a storage base (see object_storage.py): a directory by default, or a `file://`,
`s3://`, `gs://` or `az://` URL in a deployment where every run pod must reach them.
Destination-partitioned outputs carry a `destination` column; a run over several partitions
writes one object per partition, and loading several partitions concatenates them.

The shared roots (unified_profiles, segment_membership) are partitioned by destination too, so
that one run or one backfill over several destinations holds every asset, but their output is
the same for every destination: it is stored ONCE per run, as <asset key>.parquet (whatever
the run's partitions), and loaded once for any subset of partitions. Such an asset says so
with SHARED_OUTPUT_METADATA on its definition.

Connection settings: `storage_options` (config, shown in the UI: no credentials there) over
the provider variables the settings read from the environment, passed in as
`environment_resource(...)`: a value Dagster hands over when a run starts, never config.
"""

# (no `from __future__ import annotations`: Dagster reads the resources' field types)
import threading
from collections.abc import Mapping
from pathlib import Path, PurePosixPath
from typing import Self
from urllib.parse import urlsplit

import dagster as dg
import polars as pl
from pydantic import Field

from sendgrid_pipeline.object_storage import ObjectNotFoundError, StorageLocation

PARTITION_COLUMN = "destination"
# Definition metadata of a partitioned asset whose output is one object for all partitions.
SHARED_OUTPUT_METADATA = "sendgrid/one_output_for_all_destinations"
# Input metadata: the only columns a step reads of its input (e.g. the profile columns its
# segments or field mappings use), so it never loads, nor holds, the others.
INPUT_COLUMNS_METADATA = "sendgrid/columns_read"
REJECTED_REPORTS = "reports/rejected"  # under a report store's base

_LOCATIONS: dict[tuple, StorageLocation] = {}
_LOCATIONS_LOCK = threading.Lock()


def environment_resource(environment: Mapping[str, str]) -> dg.ResourceDefinition:
    """The storage provider variables (Settings.storage_environment) as a value the storage
    resources depend on: Dagster passes it when a run starts and never shows it."""
    return dg.ResourceDefinition.hardcoded_resource(
        dict(environment), "Object-store settings from the environment (never shown)."
    )


def storage_location(
    base: str,
    storage_options: Mapping[str, str] | None = None,
    environment: Mapping[str, str] | None = None,
) -> StorageLocation:
    """The location of a base, one per base and settings in a process (one store client each)."""
    key = (
        base,
        tuple(sorted((storage_options or {}).items())),
        tuple(sorted((environment or {}).items())),
    )
    with _LOCATIONS_LOCK:
        location = _LOCATIONS.get(key)
        if location is None:
            location = StorageLocation(base, storage_options, environment=environment)
            _LOCATIONS[key] = location
        return location


def is_shared_output(metadata: Mapping[str, object] | None) -> bool:
    """Whether an asset's definition metadata marks one stored output for all its partitions."""
    value = (metadata or {}).get(SHARED_OUTPUT_METADATA)
    return bool(getattr(value, "value", value))


def input_columns(metadata: Mapping[str, object] | None) -> list[str] | None:
    """The columns an input's metadata asks for (INPUT_COLUMNS_METADATA); None: all of them."""
    value = (metadata or {}).get(INPUT_COLUMNS_METADATA)
    value = getattr(value, "value", value)
    return [str(c) for c in value] if isinstance(value, list | tuple) else None


class DestinationParquetIOManager(dg.ConfigurableIOManager):
    """Stores each asset (partition) as <base_dir>/<asset key>/<partition>.parquet; an asset
    marked SHARED_OUTPUT_METADATA as one <base_dir>/<asset key>.parquet for all partitions."""

    base_dir: str = Field(
        description="Where the Parquet objects go: a directory or a URL (file://, s3://, "
        "gs://, az://)."
    )
    storage_options: dict[str, str] = Field(
        default_factory=dict,
        description="Object-store options (endpoint, region, ...) over those from the "
        "environment. No credentials here: they stay in the environment.",
    )
    environment: dg.ResourceDependency[Mapping[str, str]] = None  # type: ignore[assignment]

    @property
    def location(self) -> StorageLocation:
        return storage_location(self.base_dir, self.storage_options, self.environment)

    @staticmethod
    def object_path(key: dg.AssetKey, partition: str | None) -> str:
        """The object's path under the base: <asset key>/<partition>.parquet."""
        path = PurePosixPath(*key.path)
        return str(path / f"{partition}.parquet" if partition else path.with_suffix(".parquet"))

    def handle_output(self, context: dg.OutputContext, obj: pl.DataFrame) -> None:
        if obj is None:
            return
        if not isinstance(obj, pl.DataFrame):
            raise TypeError(f"{context.asset_key.to_user_string()}: expected a polars DataFrame")
        if not context.has_asset_partitions or is_shared_output(context.definition_metadata):
            self._write(context.asset_key, None, obj)  # once, whatever the partitions
            return
        keys = context.asset_partition_keys
        if len(keys) == 1:
            self._write(context.asset_key, keys[0], obj)
            return
        for (key,), part in obj.partition_by(PARTITION_COLUMN, as_dict=True).items():
            self._write(context.asset_key, str(key), part)
        missing = set(keys) - set(obj[PARTITION_COLUMN].unique().to_list())
        for key in missing:  # a destination with no rows still gets its (empty) object
            self._write(context.asset_key, key, obj.clear())

    def load_input(self, context: dg.InputContext) -> pl.DataFrame:
        upstream = context.upstream_output
        shared = upstream is not None and is_shared_output(upstream.definition_metadata)
        columns = input_columns(context.definition_metadata)
        if not context.has_asset_partitions or shared:
            return self._read(context.asset_key, None, columns)  # once, for any partitions
        keys = context.asset_partition_keys
        return pl.concat([self._read(context.asset_key, k, columns) for k in keys], how="vertical")

    def _read(
        self, key: dg.AssetKey, partition: str | None, columns: list[str] | None = None
    ) -> pl.DataFrame:
        """A stored output, or an immediate, non-retried failure that says what to run."""
        location = self.location
        relative = self.object_path(key, partition)
        try:
            return location.read_parquet(relative, columns)
        except ObjectNotFoundError:
            which = f" for destination {partition!r}" if partition else ""
            raise dg.Failure(
                description=f"No stored output of {key.to_user_string()}{which} at "
                f"{location.url_for(relative)}: materialize {key.to_user_string()}{which} "
                "first (or select it together with this asset in one run).",
                allow_retries=False,
            ) from None

    def _write(self, key: dg.AssetKey, partition: str | None, frame: pl.DataFrame) -> None:
        # locally: a unique temporary file renamed into place; an object-store PUT is atomic
        self.location.write_parquet(frame, self.object_path(key, partition))


class ReportStore(dg.ConfigurableResource):
    """Where the reports (rejected rows) go: <base_dir>/reports/rejected/<destination>.csv.

    Deployed, the base is the step outputs' own when they are on an object store or a
    directory of their own; with the default `<data dir>/storage`, it is the data directory,
    so the reports stay in `<data dir>/reports/rejected/`.
    """

    base_dir: str = Field(description="A directory or a URL (file://, s3://, gs://, az://).")
    storage_options: dict[str, str] = Field(
        default_factory=dict,
        description="Object-store options over those from the environment; no credentials.",
    )
    environment: dg.ResourceDependency[Mapping[str, str]] = None  # type: ignore[assignment]

    @classmethod
    def beside(cls, io_manager: DestinationParquetIOManager) -> Self:
        """The reports beside the step outputs: a local `.../storage` folder's parent (the
        default layout, `<dir>/storage` and `<dir>/reports`), any other base itself."""
        base_dir = io_manager.base_dir
        if not urlsplit(base_dir).scheme and Path(base_dir).name == "storage":
            base_dir = str(Path(base_dir).parent)
        environment = io_manager.environment
        if environment is not None and not isinstance(environment, dg.ResourceDefinition):
            environment = environment_resource(environment)
        return cls(
            base_dir=base_dir,
            storage_options=dict(io_manager.storage_options),
            environment=environment,
        )

    @property
    def location(self) -> StorageLocation:
        return storage_location(self.base_dir, self.storage_options, self.environment)

    def metadata_value(self, url: str) -> dg.MetadataValue:
        """A report's place in the UI: a path on a local base, a URL on an object store."""
        if self.location.is_local and not url.startswith("file:"):
            return dg.MetadataValue.path(url)
        return dg.MetadataValue.url(url)

    def write_report(self, name: str, data: bytes) -> str:
        """Store `reports/rejected/<name>` (replacing it whole); returns its URL or path."""
        relative = f"{REJECTED_REPORTS}/{name}"
        self.location.write_bytes(relative, data)
        return self.location.url_for(relative)
