"""Step outputs between runs: concurrent writers of one output never trip over each other."""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import polars as pl

from sendgrid_pipeline.io_manager import DestinationParquetIOManager


def test_two_runs_writing_the_same_output_at_once_both_succeed(tmp_path: Path) -> None:
    target = tmp_path / "unified_profiles.parquet"
    frames = [pl.DataFrame({"customer_id": [f"C{w}-{i}" for i in range(20_000)]}) for w in range(8)]

    def write(frame: pl.DataFrame) -> None:
        for _ in range(5):
            DestinationParquetIOManager._write(target, frame)

    with ThreadPoolExecutor(max_workers=8) as pool:
        list(pool.map(write, frames))  # a shared temporary name made some of these raise
    assert any(pl.read_parquet(target).equals(frame) for frame in frames)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["unified_profiles.parquet"]
