"""Polars frames between steps as Parquet files (no pickling of large frames).

Destination-partitioned outputs carry a `destination` column; a run over several partitions
writes one file per partition, and loading several partitions concatenates them.
"""

from __future__ import annotations

import os
import uuid
from pathlib import Path

import dagster as dg
import polars as pl
from pydantic import Field

PARTITION_COLUMN = "destination"


class DestinationParquetIOManager(dg.ConfigurableIOManager):
    """Stores each asset (partition) as <base_dir>/<asset key>/<partition>.parquet."""

    base_dir: str = Field(description="Directory for the Parquet files.")

    def _path(self, key: dg.AssetKey, partition: str | None) -> Path:
        folder = Path(self.base_dir, *key.path)
        return folder / f"{partition}.parquet" if partition else folder.with_suffix(".parquet")

    def handle_output(self, context: dg.OutputContext, obj: pl.DataFrame) -> None:
        if obj is None:
            return
        if not isinstance(obj, pl.DataFrame):
            raise TypeError(f"{context.asset_key.to_user_string()}: expected a polars DataFrame")
        if not context.has_asset_partitions:
            self._write(self._path(context.asset_key, None), obj)
            return
        keys = context.asset_partition_keys
        if len(keys) == 1:
            self._write(self._path(context.asset_key, keys[0]), obj)
            return
        for (key,), part in obj.partition_by(PARTITION_COLUMN, as_dict=True).items():
            self._write(self._path(context.asset_key, str(key)), part)
        missing = set(keys) - set(obj[PARTITION_COLUMN].unique().to_list())
        for key in missing:  # a destination with no rows still gets its (empty) file
            self._write(self._path(context.asset_key, key), obj.clear())

    def load_input(self, context: dg.InputContext) -> pl.DataFrame:
        if not context.has_asset_partitions:
            return self._read(context.asset_key, None)
        keys = context.asset_partition_keys
        return pl.concat([self._read(context.asset_key, k) for k in keys], how="vertical")

    def _read(self, key: dg.AssetKey, partition: str | None) -> pl.DataFrame:
        """A stored output, or an immediate, non-retried failure that says what to run."""
        path = self._path(key, partition)
        if not path.is_file():
            which = f" for destination {partition!r}" if partition else ""
            raise dg.Failure(
                description=f"No stored output of {key.to_user_string()}{which} at {path}: "
                f"materialize {key.to_user_string()}{which} first (or select it together "
                "with this asset in one run).",
                allow_retries=False,
            )
        return pl.read_parquet(path)

    @staticmethod
    def _write(path: Path, frame: pl.DataFrame) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        # a temporary name of its own: two runs writing the same output never share it
        tmp = path.with_name(f".{path.name}.{os.getpid()}.{uuid.uuid4().hex}.tmp")
        try:
            frame.write_parquet(tmp, compression="lz4", statistics=False)
            os.replace(tmp, path)  # readers never see a half-written file
        finally:
            tmp.unlink(missing_ok=True)
