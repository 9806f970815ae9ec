"""Where unified profiles come from. A resource, so a warehouse reader can replace the files."""

from __future__ import annotations

import hashlib
from pathlib import Path

import dagster as dg
import polars as pl
from pydantic import Field

from sendgrid_pipeline.config import data_dir
from sendgrid_pipeline.errors import ProfileDataError

PROFILE_SUFFIXES = (".parquet", ".csv")


class FileProfileSource(dg.ConfigurableResource):
    """Unified profiles as Parquet or CSV files in one directory (all files are concatenated)."""

    directory: str = Field(
        default="",
        description="Directory of profile files; empty means <data dir>/profiles.",
    )

    @property
    def path(self) -> Path:
        return Path(self.directory) if self.directory else data_dir() / "profiles"

    def files(self) -> list[Path]:
        """The profile files, in a stable order."""
        if not self.path.is_dir():
            raise ProfileDataError(f"{self.path}: profile directory not found")
        return sorted(p for p in self.path.iterdir() if p.suffix.lower() in PROFILE_SUFFIXES)

    def fingerprint(self) -> str:
        """Changes whenever a profile file is added, removed or rewritten (for the sensor)."""
        digest = hashlib.sha256()
        for file in self.files():
            stat = file.stat()
            digest.update(f"{file.name}\0{stat.st_size}\0{stat.st_mtime_ns}\n".encode())
        return digest.hexdigest()[:16]

    def schema(self, text_columns: set[str] | None = None) -> pl.Schema:
        """Column names and types without reading the data (used to validate the config)."""
        return self._scan(text_columns or set()).collect_schema()

    def read(self, text_columns: set[str]) -> pl.DataFrame:
        """Read every profile file; `text_columns` are never type-inferred (postal codes...)."""
        lazy = self._scan(text_columns)
        try:
            return lazy.collect()
        except pl.exceptions.PolarsError as error:
            raise ProfileDataError(f"{self.path}: cannot read profiles: {error}") from None

    def _scan(self, text_columns: set[str]) -> pl.LazyFrame:
        files = self.files()
        if not files:
            raise ProfileDataError(f"{self.path}: no profile files (expected *.parquet or *.csv)")
        frames = [self._scan_file(file, text_columns) for file in files]
        return frames[0] if len(frames) == 1 else pl.concat(frames, how="diagonal_relaxed")

    @staticmethod
    def _scan_file(file: Path, text_columns: set[str]) -> pl.LazyFrame:
        try:
            if file.suffix.lower() == ".parquet":
                frame = pl.scan_parquet(file)
                schema = frame.collect_schema()
                casts = [
                    pl.col(c).cast(pl.String)
                    for c in text_columns | {"customer_id"}
                    if c in schema and schema[c] != pl.String
                ]
                return frame.with_columns(casts) if casts else frame
            if file.stat().st_size == 0:
                raise ProfileDataError(f"{file}: empty file (no header row)")
            header = pl.read_csv(file, n_rows=0).columns
            if not header:
                raise ProfileDataError(f"{file}: empty file (no header row)")
            overrides = {c: pl.String for c in text_columns | {"customer_id"} if c in header}
            return pl.scan_csv(
                file,
                schema_overrides=overrides,
                try_parse_dates=True,
                infer_schema_length=10_000,
            )
        except ProfileDataError:
            raise
        except (pl.exceptions.PolarsError, OSError) as error:
            raise ProfileDataError(f"{file}: cannot read profile file: {error}") from None
