"""The durable record of what each destination's list holds because of us.

An SQLite file (behind a resource so it can move). Rows are written only once SendGrid has
confirmed the job that made them true, in the same transaction that retires the job's pending
record, so a crash at any point leaves either the old or the new truth, never a guess.
"""

from __future__ import annotations

import io
import os
import sqlite3
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

import dagster as dg
import polars as pl
from pydantic import Field

from sendgrid_pipeline.config import data_dir

STATE_DIR_ENV = "SENDGRID_PIPELINE_STATE_DIR"
MEMBER_SCHEMA = {
    "email": pl.String,
    "contact_id": pl.String,
    "contact_json": pl.String,
    "managed": pl.Boolean,
}

_SCHEMA = """
CREATE TABLE IF NOT EXISTS members (
    destination TEXT NOT NULL,
    list_id TEXT NOT NULL,
    email TEXT NOT NULL,
    contact_id TEXT,
    contact_json TEXT NOT NULL,
    managed INTEGER NOT NULL DEFAULT 1,  -- 1: we put it on the list; 0: it was there already
    synced_at TEXT NOT NULL,
    PRIMARY KEY (destination, list_id, email)
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS reconciles (
    destination TEXT NOT NULL,
    list_id TEXT NOT NULL,
    reconciled_at TEXT NOT NULL,
    PRIMARY KEY (destination, list_id)
);
CREATE TABLE IF NOT EXISTS pending_jobs (
    job_id TEXT PRIMARY KEY,
    destination TEXT NOT NULL,
    list_id TEXT NOT NULL,
    kind TEXT NOT NULL CHECK (kind IN ('upsert', 'remove')),
    rows BLOB NOT NULL,
    created_at TEXT NOT NULL
);
"""


@dataclass(frozen=True)
class PendingJob:
    """A job SendGrid accepted (202) whose outcome we have not yet recorded."""

    job_id: str
    kind: str
    rows: pl.DataFrame  # upsert: email, contact_json; remove: email, contact_id


def _now() -> str:
    return datetime.now(UTC).isoformat(timespec="seconds")


def _to_blob(frame: pl.DataFrame) -> bytes:
    """Arrow IPC with lz4: the cheapest round trip for a 30,000-row pending batch."""
    buffer = io.BytesIO()
    frame.write_ipc(buffer, compression="lz4")
    return buffer.getvalue()


class SyncStateStore:
    """Transactional member and pending-job records, keyed by destination and list id."""

    def __init__(self, path: Path) -> None:
        self.path = path
        path.parent.mkdir(parents=True, exist_ok=True)
        with self._connect() as db:
            db.executescript(_SCHEMA)

    @contextmanager
    def _connect(self) -> Iterator[sqlite3.Connection]:
        db = sqlite3.connect(self.path, timeout=30)
        try:
            db.execute("PRAGMA journal_mode=WAL")
            db.execute("PRAGMA synchronous=FULL")
            with db:  # one transaction; rolled back on any exception
                yield db
        finally:
            db.close()

    # -- members ---------------------------------------------------------------------------
    def members(self, destination: str, list_id: str) -> pl.DataFrame:
        schema = {**MEMBER_SCHEMA, "managed": pl.Int8}  # SQLite hands back 0/1
        chunks = [pl.DataFrame(schema=schema)]
        with self._connect() as db:
            cursor = db.execute(
                "SELECT email, contact_id, contact_json, managed FROM members "
                "WHERE destination = ? AND list_id = ? ORDER BY email",
                (destination, list_id),
            )
            # in chunks, so a million rows never sit in memory as Python tuples all at once
            while rows := cursor.fetchmany(100_000):
                chunks.append(pl.DataFrame(rows, schema=schema, orient="row"))
        frame = pl.concat(chunks, rechunk=True)
        return frame.with_columns(pl.col("managed").cast(pl.Boolean))

    def record_contact_ids(self, destination: str, list_id: str, ids: pl.DataFrame) -> None:
        """Remember contact ids learned from a search so removals need no second lookup."""
        with self._connect() as db:
            db.executemany(
                "UPDATE members SET contact_id = ? WHERE destination = ? AND list_id = ? "
                "AND email = ?",
                [(cid, destination, list_id, email) for email, cid in ids.iter_rows()],
            )

    def forget(self, destination: str, list_id: str, emails: list[str]) -> None:
        """Drop members that SendGrid does not hold at all (nothing to remove)."""
        with self._connect() as db:
            db.executemany(
                "DELETE FROM members WHERE destination = ? AND list_id = ? AND email = ?",
                [(destination, list_id, e) for e in emails],
            )

    def replace_members(self, destination: str, list_id: str, frame: pl.DataFrame) -> None:
        """Rebuild a destination's record from the list's true membership (reconcile)."""
        now = _now()
        with self._connect() as db:
            db.execute(
                "DELETE FROM members WHERE destination = ? AND list_id = ?",
                (destination, list_id),
            )
            db.executemany(
                "INSERT INTO members VALUES (?, ?, ?, ?, ?, ?, ?)",
                (
                    (destination, list_id, email, cid, cj, int(managed), now)
                    for email, cid, cj, managed in frame.select(list(MEMBER_SCHEMA)).iter_rows()
                ),
            )
            db.execute(
                "INSERT OR REPLACE INTO reconciles VALUES (?, ?, ?)", (destination, list_id, now)
            )

    def is_known(self, destination: str, list_id: str) -> bool:
        """Whether this list's membership was ever read (reconciled) into the state."""
        with self._connect() as db:
            row = db.execute(
                "SELECT 1 FROM reconciles WHERE destination = ? AND list_id = ?",
                (destination, list_id),
            ).fetchone()
        return row is not None

    # -- pending jobs ----------------------------------------------------------------------
    def add_pending(
        self, job_id: str, destination: str, list_id: str, kind: str, rows: pl.DataFrame
    ) -> None:
        with self._connect() as db:
            db.execute(
                "INSERT INTO pending_jobs VALUES (?, ?, ?, ?, ?, ?)",
                (job_id, destination, list_id, kind, _to_blob(rows), _now()),
            )

    def pending_jobs(self, destination: str, list_id: str) -> list[PendingJob]:
        with self._connect() as db:
            rows = db.execute(
                "SELECT job_id, kind, rows FROM pending_jobs WHERE destination = ? "
                "AND list_id = ? ORDER BY created_at, job_id",
                (destination, list_id),
            ).fetchall()
        return [PendingJob(j, k, pl.read_ipc(io.BytesIO(blob))) for j, k, blob in rows]

    def confirm_upsert(
        self, job_id: str, destination: str, list_id: str, accepted: pl.DataFrame
    ) -> None:
        """Record the rows a completed upsert job applied and retire the job, atomically."""
        now = _now()
        with self._connect() as db:
            db.executemany(
                "INSERT INTO members VALUES (?, ?, ?, NULL, ?, 1, ?) "
                "ON CONFLICT (destination, list_id, email) DO UPDATE SET "
                "contact_json = excluded.contact_json, synced_at = excluded.synced_at",
                (
                    (destination, list_id, email, cj, now)
                    for email, cj in accepted.select("email", "contact_json").iter_rows()
                ),
            )
            db.execute("DELETE FROM pending_jobs WHERE job_id = ?", (job_id,))

    def confirm_remove(
        self, job_id: str, destination: str, list_id: str, emails: list[str]
    ) -> None:
        """Drop the members a completed removal job took off the list and retire the job."""
        with self._connect() as db:
            db.executemany(
                "DELETE FROM members WHERE destination = ? AND list_id = ? AND email = ?",
                [(destination, list_id, e) for e in emails],
            )
            db.execute("DELETE FROM pending_jobs WHERE job_id = ?", (job_id,))

    def drop_pending(self, job_id: str) -> None:
        """Forget a job that SendGrid says applied nothing (failed)."""
        with self._connect() as db:
            db.execute("DELETE FROM pending_jobs WHERE job_id = ?", (job_id,))


class SyncStateResource(dg.ConfigurableResource):
    """Where the sync state lives: an SQLite file in a directory."""

    directory: str = Field(
        default="",
        description="Directory of the state file; empty means $SENDGRID_PIPELINE_STATE_DIR, "
        "else <data dir>/state.",
    )

    def store(self) -> SyncStateStore:
        base = self.directory or os.environ.get(STATE_DIR_ENV) or str(data_dir() / "state")
        return SyncStateStore(Path(base) / "sync_state.sqlite")
