"""State store speed at scale: SQLite (embedded) vs PostgreSQL (shared), same operations.

    python -m sendgrid_pipeline_tests.devkit.bench_state --members 1000000 \
        [--postgres postgresql://user@127.0.0.1:5432/db]

Times a reconcile-sized rewrite (replace_members), a full read (members), and upserts
confirmed in SendGrid-sized batches of 30,000; prints one JSON line per store.
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

import polars as pl

from sendgrid_pipeline.state import SyncStateStore
from sendgrid_pipeline.state_postgres import PostgresSyncStateStore

BATCH = 30_000


def members(n: int) -> pl.DataFrame:
    index = pl.int_range(n, eager=True)
    email = pl.format("person{}@example.com", index)
    return pl.select(
        email=email,
        contact_id=pl.format("cid-{}", index),
        contact_json=pl.format('{{"email":"{}","first_name":"Name {}"}}', email, index),
        managed=pl.lit(True),
    )


def measure(store, frame: pl.DataFrame) -> dict[str, float]:
    state = store.for_list("bench", f"list-{time.monotonic_ns()}")
    figures: dict[str, float] = {}
    started = time.perf_counter()
    state.replace_members(frame)
    figures["replace_members_s"] = time.perf_counter() - started
    started = time.perf_counter()
    read = state.members()
    figures["members_read_s"] = time.perf_counter() - started
    assert read.height == frame.height
    started = time.perf_counter()
    updates = frame.head(min(frame.height, 10 * BATCH)).with_columns(
        pl.col("contact_json").str.replace("Name", "Renamed")
    )
    for offset in range(0, updates.height, BATCH):
        batch = updates.slice(offset, BATCH).select("email", "contact_json")
        state.confirm_upsert(state.write_intent("upsert", batch, "bench"), batch)
    figures[f"confirm_upsert_{updates.height}_rows_s"] = time.perf_counter() - started
    return {k: round(v, 2) for k, v in figures.items()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--members", type=int, default=1_000_000)
    parser.add_argument("--postgres", help="a PostgreSQL URL (its password is never printed)")
    args = parser.parse_args()
    frame = members(args.members)
    with tempfile.TemporaryDirectory() as folder:
        sqlite = SyncStateStore(Path(folder) / "state.sqlite")
        print(json.dumps({"store": "sqlite", "members": args.members, **measure(sqlite, frame)}))
    if args.postgres:
        postgres = PostgresSyncStateStore(args.postgres)
        print(
            json.dumps({"store": "postgres", "members": args.members, **measure(postgres, frame)})
        )


if __name__ == "__main__":
    main()
