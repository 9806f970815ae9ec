"""Copy the sync state from an SQLite file into PostgreSQL (a move to the shared store).

    python -m sendgrid_pipeline.state_migrate --from data/state/sync_state.sqlite \\
        --to-env SENDGRID_PIPELINE_STATE_DSN [--replace]

Everything is copied as it is, in one transaction: members (managed or not, uncertain or
not), reconcile times, generations, write-ahead intents (with their job ids and runs) and the
snapshot of each list's last applied plan. Never rebuild the state by a reconcile instead: a
reconcile cannot tell the contacts we put on a list from those that were there before us, so
the members that left the segments while no record existed would be kept, not removed.

Stop the syncs while it runs (pause the schedule and sensors, let running syncs end): the
file must not change during the copy. The URL is read from the environment variable named
by --to-env, never from the command line (a process list would show its password). A target
that already holds state is refused unless --replace, which deletes it first.
"""

from __future__ import annotations

import argparse
import sqlite3
import sys
from collections.abc import Sequence
from pathlib import Path

import psycopg2

from sendgrid_pipeline.settings import variable
from sendgrid_pipeline.state import SyncStateStore
from sendgrid_pipeline.state_postgres import PostgresSyncStateStore, masked_dsn

# (SQLite table, PostgreSQL table, columns): copied in this order
TABLES = (
    (
        "members",
        "sendgrid_members",
        (
            "destination",
            "list_id",
            "email",
            "contact_id",
            "contact_json",
            "managed",
            "synced_at",
            "uncertain",
        ),
    ),
    ("reconciles", "sendgrid_reconciles", ("destination", "list_id", "reconciled_at")),
    ("generations", "sendgrid_generations", ("destination", "list_id", "generation")),
    (
        "intents",
        "sendgrid_intents",
        ("intent_id", "destination", "list_id", "kind", "rows", "run_id", "job_id", "created_at"),
    ),
    ("snapshots", "sendgrid_snapshots", ("destination", "list_id", "snapshot", "run_id")),
)
BOOLEANS = {"managed", "uncertain"}
BATCH = 10_000


class MigrationError(Exception):
    """The copy cannot start or did not finish; nothing was changed in the target."""


def _convert(columns: Sequence[str], row: tuple) -> tuple:
    values = []
    for name, value in zip(columns, row, strict=True):
        if name in BOOLEANS:
            value = bool(value)
        elif name == "rows":
            value = psycopg2.Binary(value)
        values.append(value)
    return tuple(values)


def migrate(source: Path, dsn: str, *, replace: bool = False) -> dict[str, int]:
    """Copy every table of the SQLite state `source` into the PostgreSQL state at `dsn`.

    Returns the rows copied per table. Raises MigrationError (the target unchanged) when the
    source is missing or the target holds state and `replace` is False.
    """
    if not source.is_file():
        raise MigrationError(f"{source}: no such state file")
    SyncStateStore(source)  # brings an older file's schema up to date (in place)
    PostgresSyncStateStore(dsn)  # creates the tables when missing
    counts: dict[str, int] = {}
    reader = sqlite3.connect(f"file:{source}?mode=ro", uri=True)
    db = None
    try:
        db = psycopg2.connect(dsn)
        with db, db.cursor() as cursor:  # one transaction: all copied, or nothing
            held = {}
            for _, table, _ in TABLES:
                cursor.execute(f"SELECT count(*) FROM {table}")
                held[table] = cursor.fetchone()[0]
            if any(held.values()) and not replace:
                raise MigrationError(
                    f"{masked_dsn(dsn)} already holds sync state ("
                    + ", ".join(f"{t}: {n}" for t, n in held.items() if n)
                    + "); nothing was copied. Rerun with --replace to delete it first."
                )
            if any(held.values()):
                cursor.execute("TRUNCATE " + ", ".join(t for _, t, _ in TABLES))
            for sqlite_table, table, columns in TABLES:
                rows = reader.execute(f"SELECT {', '.join(columns)} FROM {sqlite_table}")
                insert = (
                    f"INSERT INTO {table} ({', '.join(columns)}) VALUES "
                    f"({', '.join(['%s'] * len(columns))})"
                )
                counts[sqlite_table] = 0
                while batch := rows.fetchmany(BATCH):
                    cursor.executemany(insert, [_convert(columns, row) for row in batch])
                    counts[sqlite_table] += len(batch)
            # new intents continue after the copied ids
            cursor.execute(
                "SELECT setval(pg_get_serial_sequence('sendgrid_intents', 'intent_id'), "
                "COALESCE((SELECT max(intent_id) FROM sendgrid_intents), 0) + 1, false)"
            )
    except psycopg2.Error as error:
        text = (str(error).strip().splitlines() or [type(error).__name__])[0]
        raise MigrationError(
            f"{masked_dsn(dsn)}: {text.replace(dsn, masked_dsn(dsn))}; nothing was copied"
        ) from None
    finally:
        reader.close()
        if db is not None:
            db.close()
    return counts


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m sendgrid_pipeline.state_migrate",
        description="Copy the sync state from an SQLite file into PostgreSQL.",
    )
    parser.add_argument("--from", dest="source", required=True, help="the SQLite state file")
    parser.add_argument(
        "--to-env",
        required=True,
        help="the environment variable holding the PostgreSQL URL "
        "(e.g. SENDGRID_PIPELINE_STATE_DSN)",
    )
    parser.add_argument(
        "--replace", action="store_true", help="delete the state the target already holds"
    )
    args = parser.parse_args(argv)
    dsn = variable(args.to_env)
    if not dsn:
        print(f"state_migrate: environment variable {args.to_env} is not set", file=sys.stderr)
        return 2
    try:
        counts = migrate(Path(args.source), dsn, replace=args.replace)
    except MigrationError as error:
        print(f"state_migrate: {error}", file=sys.stderr)
        return 1
    print(f"copied {args.source} to {masked_dsn(dsn)}:")
    for table, count in counts.items():
        print(f"  {table}: {count}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
