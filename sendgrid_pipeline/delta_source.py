"""Profiles from a Delta Lake table, read with `pl.scan_delta` (needs the `deltalake` package).

The same contract as the profile files: `schema` comes from the table's metadata (the Delta
log; no data file is read), `text_columns` and customer_id are read as text (a whole float id
42.0 becomes '42', as for Parquet files), and the change fingerprint is the table version, so
every commit (append, overwrite, delete, merge) changes it and nothing else does. Each read
pins one snapshot: the rows, and the version errors name, come from the same commit.

Cloud tables (s3://, az://, gs://) take their connection settings from the standard
environment variables (`AWS_*`, `GOOGLE_*`, `AZURE_*`) unless `storage_options` gives them
(keys of the Rust object_store crate, as deltalake and polars document them: `aws_region`,
`aws_endpoint_url`, ...). Option values never appear in a repr or a message.
"""

from __future__ import annotations

import hashlib
from typing import Any

import polars as pl
from pydantic import Field

from sendgrid_pipeline.errors import ProfileDataError
from sendgrid_pipeline.profile_source import ProfileSource, as_text
from sendgrid_pipeline.warehouse import LocatedRows, mask_uri


class DeltaProfileSource(ProfileSource):
    """Unified profiles as one Delta Lake table (a local path or an object-store URI)."""

    table_uri: str = Field(
        description="The Delta table: a directory path, or an s3://, az:// or gs:// URI.",
    )
    storage_options: dict[str, str] | None = Field(
        default=None,
        repr=False,
        description="Object-store options (aws_region, aws_endpoint_url, credentials...); "
        "empty takes them from the environment. Never shown.",
    )
    version: int | None = Field(
        default=None,
        ge=0,
        description="Read this table version (time travel); empty reads the latest.",
    )

    @property
    def label(self) -> str:
        """`Delta table /data/profiles_delta` (for messages)."""
        return f"Delta table {mask_uri(self.table_uri)}"

    def _table(self) -> Any:
        """The table's snapshot at `version` (or the latest), as a deltalake.DeltaTable."""
        try:
            from deltalake import DeltaTable
        except ImportError as error:
            raise ProfileDataError(
                f"{self.label}: reading a Delta table needs the deltalake package ({error})"
            ) from None
        try:
            return DeltaTable(
                self.table_uri, version=self.version, storage_options=self.storage_options
            )
        except Exception as error:  # TableNotFoundError, an unknown version, storage errors
            raise ProfileDataError(
                f"{self.label}: cannot open the table: {self._detail(error)}"
            ) from None

    def _scan(self) -> tuple[pl.LazyFrame, int]:
        table = self._table()
        try:
            return pl.scan_delta(table, storage_options=self.storage_options), table.version()
        except Exception as error:
            raise ProfileDataError(
                f"{self.label}: cannot read the table: {self._detail(error)}"
            ) from None

    def fingerprint(self) -> str:
        """The table version: changes on every commit to the table, and only then."""
        version = self._table().version()
        return hashlib.sha256(f"{self.table_uri}\0{version}".encode()).hexdigest()[:16]

    def schema(self, text_columns: set[str] | None = None) -> pl.Schema:
        """Column names and types from the table metadata (no data file is read)."""
        lazy, _ = self._scan()
        return pl.Schema(self._target(self._source_schema(lazy), text_columns or set()))

    def read(self, text_columns: set[str], columns: set[str] | None = None) -> pl.DataFrame:
        """Every profile of the snapshot; `text_columns` (and customer_id) as text; with
        `columns`, only those (and customer_id)."""
        return self.read_located(text_columns, columns).frame

    def read_located(self, text_columns: set[str], columns: set[str] | None = None) -> LocatedRows:
        """Like `read`; a row is named `Delta table version 3 row 12` (in scan order).

        With `columns`, the scan selects only those (the Parquet reads fetch no other column);
        a column the table lacks is an error naming it and the version.
        """
        lazy, version = self._scan()
        source = self._source_schema(lazy)
        if columns is not None:
            wanted = columns | {"customer_id"}
            missing = sorted(wanted - set(source))
            if missing:
                shown = ", ".join(map(repr, list(source)[:20]))
                raise ProfileDataError(
                    f"{self.label}: version {version} has no column(s) "
                    f"{', '.join(map(repr, missing))}; its columns: {shown}"
                )
            lazy = lazy.select([c for c in source if c in wanted])
            source = pl.Schema({c: t for c, t in source.items() if c in wanted})
        texts = [
            as_text(column, dtype)
            for column, dtype in source.items()
            if column in text_columns | {"customer_id"} and dtype != pl.String
        ]
        try:
            frame = (lazy.with_columns(texts) if texts else lazy).collect()
        except (pl.exceptions.PolarsError, OSError) as error:
            raise ProfileDataError(
                f"{self.label}: cannot read version {version}: {self._detail(error)}"
            ) from None
        return LocatedRows(
            frame, f"Delta table version {version}", "rows are numbered in the table's scan order"
        )

    def _source_schema(self, lazy: pl.LazyFrame) -> pl.Schema:
        try:
            schema = lazy.collect_schema()
        except (pl.exceptions.PolarsError, OSError) as error:
            raise ProfileDataError(
                f"{self.label}: cannot read the table schema: {self._detail(error)}"
            ) from None
        if "customer_id" not in schema:
            shown = ", ".join(map(repr, list(schema)[:20]))
            raise ProfileDataError(
                f"{self.label}: the table has no customer_id column; its columns: {shown}"
            )
        return schema

    def _detail(self, error: BaseException) -> str:
        """The error's first line, without any storage option value (credentials)."""
        text = _first_line(error)
        for value in sorted((self.storage_options or {}).values(), key=len, reverse=True):
            if len(value) >= 4:  # short values (a region such as "eu") are no secret
                text = text.replace(value, "***")
        return text

    @staticmethod
    def _target(schema: pl.Schema, text_columns: set[str]) -> dict[str, pl.DataType]:
        text = text_columns | {"customer_id"}
        return {c: pl.String() if c in text else t for c, t in schema.items()}


def _first_line(error: BaseException) -> str:
    text = str(error).strip()
    return text.splitlines()[0] if text else type(error).__name__
