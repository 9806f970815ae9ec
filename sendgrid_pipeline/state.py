"""The durable record of what each destination's list holds because of us.

An SQLite file (behind a resource so it can move). Every change is written ahead as an
intent before its request is sent; members are recorded only once SendGrid's job confirmed
them, in the same transaction that retires the intent. An outcome that cannot be confirmed
(a lost answer, a crash, an unreadable errors file) marks its members uncertain, and the next
sync reconciles with the list before it plans: nothing is ever "accepted but unrecorded".
"""

from __future__ import annotations

import fcntl
import io
import os
import sqlite3
import threading
import time
from collections.abc import Iterator
from contextlib import AbstractContextManager, contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import IO

import dagster as dg
import polars as pl
from pydantic import Field

from sendgrid_pipeline.errors import PipelineError

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
    managed INTEGER NOT NULL DEFAULT 1,  -- 1: ours to remove when it leaves; 0: there before us
    synced_at TEXT NOT NULL,
    uncertain INTEGER NOT NULL DEFAULT 0,  -- 1: a change to it was possibly applied, unconfirmed
    PRIMARY KEY (destination, list_id, email)
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS reconciles (
    destination TEXT NOT NULL,
    list_id TEXT NOT NULL,
    reconciled_at TEXT NOT NULL,
    PRIMARY KEY (destination, list_id)
);
CREATE TABLE IF NOT EXISTS generations (  -- bumped with every recorded change of a list
    destination TEXT NOT NULL,
    list_id TEXT NOT NULL,
    generation INTEGER NOT NULL,
    PRIMARY KEY (destination, list_id)
);
CREATE TABLE IF NOT EXISTS intents (
    intent_id INTEGER PRIMARY KEY AUTOINCREMENT,
    destination TEXT NOT NULL,
    list_id TEXT NOT NULL,
    kind TEXT NOT NULL CHECK (kind IN ('upsert', 'remove')),
    rows BLOB NOT NULL,
    run_id TEXT NOT NULL,
    job_id TEXT,  -- null until SendGrid accepted the request (202)
    created_at TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS list_changes (  -- when a change of the list was last recorded
    destination TEXT NOT NULL,
    list_id TEXT NOT NULL,
    changed_at TEXT NOT NULL,  -- ISO 8601, UTC
    count_seen INTEGER,  -- the list's contact_count SendGrid reported after that change
    PRIMARY KEY (destination, list_id)
);
CREATE TABLE IF NOT EXISTS snapshots (  -- the profiles snapshot of the last applied plan
    destination TEXT NOT NULL,
    list_id TEXT NOT NULL,
    snapshot TEXT NOT NULL,  -- ISO 8601, UTC
    run_id TEXT NOT NULL,
    PRIMARY KEY (destination, list_id)
);
"""
_OLD_PENDING = "pending_jobs"


@dataclass(frozen=True)
class Intent:
    """A change we were about to send, or sent: written before the request (write-ahead).

    `job_id` is None when SendGrid's answer was never seen: the change was possibly applied.
    """

    intent_id: int
    kind: str
    rows: pl.DataFrame  # upsert: email, contact_json; remove: email, contact_id
    run_id: str
    job_id: str | None


def _now() -> str:
    return datetime.now(UTC).isoformat(timespec="seconds")


def _snapshot_text(snapshot: datetime) -> str:
    """A snapshot time as stored: UTC, microseconds (naive times are taken as UTC)."""
    if snapshot.tzinfo is None:
        snapshot = snapshot.replace(tzinfo=UTC)
    return snapshot.astimezone(UTC).isoformat(timespec="microseconds")


def _to_blob(frame: pl.DataFrame) -> bytes:
    """Arrow IPC with lz4: the cheapest round trip for a 30,000-row batch."""
    buffer = io.BytesIO()
    frame.write_ipc(buffer, compression="lz4")
    return buffer.getvalue()


class StateStoreError(PipelineError):
    """The sync state file cannot be used; the message names it and says how to recover."""


def _explain(path: Path, error: sqlite3.Error) -> StateStoreError:
    """A state failure as something a data engineer can act on (no row values in it)."""
    text = str(error).split(":")[0]  # SQLite's message, never the statement's values
    if "full" in text:
        advice = (
            "free disk space and rerun: every change was written ahead, so the rerun settles "
            "whatever was sent"
        )
    elif "locked" in text or "busy" in text:
        advice = "another sync holds the state; rerun when it has finished"
    else:
        advice = (
            "restore the file from a backup, or move it aside and rerun with the run tag "
            "sendgrid/reconcile=true to rebuild it from the list (members that left the "
            "segments while the state was lost are then kept, not removed)"
        )
    return StateStoreError(f"Sync state {path}: {text} ({type(error).__name__}); {advice}")


@contextmanager
def holding(handle: IO[str], run_id: str) -> Iterator[None]:
    """A lock file just locked (flock): its holder's run id written in it, for whoever waits
    to name; unlocked at the end."""
    try:
        handle.seek(0)
        handle.truncate()
        handle.write(run_id)
        handle.flush()
        yield
    finally:
        fcntl.flock(handle, fcntl.LOCK_UN)


def _bump(db: sqlite3.Connection, destination: str, list_id: str) -> None:
    """Count a recorded change: a state restored from an older backup shows a lower count."""
    db.execute(
        "INSERT INTO generations VALUES (?, ?, 1) ON CONFLICT (destination, list_id) "
        "DO UPDATE SET generation = generation + 1",
        (destination, list_id),
    )
    db.execute(
        "INSERT INTO list_changes VALUES (?, ?, ?, NULL) ON CONFLICT (destination, list_id) "
        "DO UPDATE SET changed_at = excluded.changed_at, count_seen = NULL",
        (destination, list_id, datetime.now(UTC).isoformat(timespec="microseconds")),
    )


class SyncStateStore:
    """Transactional member and intent records, keyed by destination and list id.

    One SQLite connection serves every call of a store (a sync makes hundreds: opening one
    per call was a third of a churn's sync step), opened on first use, shared by threads
    under a lock, and closed by `close()` (a later call opens a new one).
    """

    def __init__(self, path: Path) -> None:
        self.path = path
        self._db: sqlite3.Connection | None = None
        self._db_pid = 0  # a forked child never uses its parent's connection
        self._db_lock = threading.RLock()
        self._depth = 0  # > 0 inside transaction(): calls join its one transaction
        self.connections_opened = 0
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
        except OSError as error:
            raise StateStoreError(
                f"Sync state {path}: cannot create its directory ({error.strerror})"
            ) from None
        # Creating or migrating the file is serialized between processes: SQLite answers
        # "database is locked" at once (without waiting) to a second connection that switches
        # a file into WAL mode while another does the same.
        lock_path = path.with_name(f"{path.name}.schema.lock")
        with lock_path.open("a") as handle:
            fcntl.flock(handle, fcntl.LOCK_EX)
            try:
                self._create_or_migrate()
            finally:
                fcntl.flock(handle, fcntl.LOCK_UN)

    def _create_or_migrate(self) -> None:
        with self._db_lock:
            try:
                self._connection().execute("PRAGMA journal_mode=WAL")  # stored in the file
            except sqlite3.Error as error:
                self.close()
                raise _explain(self.path, error) from None
        with self._connect() as db:
            db.executescript(_SCHEMA)
            columns = {row[1] for row in db.execute("PRAGMA table_info(members)")}
            if "uncertain" not in columns:  # a state file from before write-ahead
                db.execute("ALTER TABLE members ADD COLUMN uncertain INTEGER NOT NULL DEFAULT 0")
            self._adopt_old_pending(db)

    def _connection(self) -> sqlite3.Connection:
        """The store's one connection, opened on first use (the caller holds `_db_lock`)."""
        if self._db is not None and self._db_pid == os.getpid():
            return self._db
        try:
            db = sqlite3.connect(self.path, timeout=30, check_same_thread=False)
            db.execute("PRAGMA synchronous=FULL")  # per connection; WAL is set at creation
        except sqlite3.Error as error:
            raise _explain(self.path, error) from None
        self._db, self._db_pid = db, os.getpid()
        self.connections_opened += 1
        return db

    @contextmanager
    def _connect(self) -> Iterator[sqlite3.Connection]:
        """One transaction on the store's connection; rolled back on any exception."""
        with self._db_lock:
            db = self._connection()
            if self._depth:  # inside transaction(): it commits (or rolls back) at its end
                try:
                    yield db
                except sqlite3.Error as error:
                    raise _explain(self.path, error) from None
                return
            try:
                with db:
                    yield db
            except sqlite3.Error as error:
                self.close()  # a damaged file or a full disk: the next call starts afresh
                raise _explain(self.path, error) from None

    @contextmanager
    def transaction(self) -> Iterator[None]:
        """The calls made inside commit together at its end, or not at all (one fsync
        instead of one per call: confirming a round of finished jobs at once)."""
        with self._connect():
            self._depth += 1
            try:
                yield
            finally:
                self._depth -= 1

    def close(self) -> None:
        """Close the connection (idempotent; the store reopens one if it is used again)."""
        with self._db_lock:
            db, self._db = self._db, None
            if db is not None and self._db_pid == os.getpid():
                db.close()

    def __enter__(self) -> SyncStateStore:
        return self

    def __exit__(self, *_exc: object) -> None:
        self.close()

    @staticmethod
    def _adopt_old_pending(db: sqlite3.Connection) -> None:
        """Jobs recorded by the previous format become intents with their job ids."""
        exists = db.execute(
            "SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = ?", (_OLD_PENDING,)
        ).fetchone()
        if exists:
            db.execute(
                "INSERT INTO intents (destination, list_id, kind, rows, run_id, job_id, "
                "created_at) SELECT destination, list_id, kind, rows, '(earlier version)', "
                f"job_id, created_at FROM {_OLD_PENDING}"
            )
            db.execute(f"DROP TABLE {_OLD_PENDING}")

    # -- members ---------------------------------------------------------------------------
    def members(self, destination: str, list_id: str) -> pl.DataFrame:
        """email, contact_id, contact_json, managed, uncertain for every recorded member."""
        schema = {**MEMBER_SCHEMA, "managed": pl.Int8, "uncertain": pl.Int8}
        chunks = [pl.DataFrame(schema=schema)]
        with self._connect() as db:
            cursor = db.execute(
                "SELECT email, contact_id, contact_json, managed, uncertain FROM members "
                "WHERE destination = ? AND list_id = ? ORDER BY email",
                (destination, list_id),
            )
            # in chunks, so a million rows never sit in memory as Python tuples all at once
            while rows := cursor.fetchmany(100_000):
                chunks.append(pl.DataFrame(rows, schema=schema, orient="row"))
        frame = pl.concat(chunks, rechunk=True)
        return frame.with_columns(pl.col("managed", "uncertain").cast(pl.Boolean))

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
            _bump(db, destination, list_id)
            db.executemany(
                "DELETE FROM members WHERE destination = ? AND list_id = ? AND email = ?",
                [(destination, list_id, e) for e in emails],
            )

    def adopt(self, destination: str, list_id: str, emails: pl.Series) -> None:
        """Members in the segments are ours from now on (also after a lost state)."""
        with self._connect() as db:
            _bump(db, destination, list_id)
            db.executemany(
                "UPDATE members SET managed = 1 WHERE destination = ? AND list_id = ? "
                "AND email = ? AND managed = 0",
                [(destination, list_id, e) for e in emails],
            )

    def replace_members(self, destination: str, list_id: str, frame: pl.DataFrame) -> None:
        """Rebuild a destination's record from the list's true membership (reconcile)."""
        now = _now()
        with self._connect() as db:
            _bump(db, destination, list_id)
            db.execute(
                "DELETE FROM members WHERE destination = ? AND list_id = ?",
                (destination, list_id),
            )
            db.executemany(
                "INSERT INTO members VALUES (?, ?, ?, ?, ?, ?, ?, 0)",
                (
                    (destination, list_id, email, cid, cj, int(managed), now)
                    for email, cid, cj, managed in frame.select(list(MEMBER_SCHEMA)).iter_rows()
                ),
            )
            db.execute(
                "INSERT OR REPLACE INTO reconciles VALUES (?, ?, ?)", (destination, list_id, now)
            )

    def last_reconciled(self, destination: str, list_id: str) -> datetime | None:
        """When this list's membership was last read into the state (None: never)."""
        with self._connect() as db:
            row = db.execute(
                "SELECT reconciled_at FROM reconciles WHERE destination = ? AND list_id = ?",
                (destination, list_id),
            ).fetchone()
        return datetime.fromisoformat(row[0]) if row else None

    def generation(self, destination: str, list_id: str) -> int:
        """How many changes of this list the state has recorded (0: none)."""
        with self._connect() as db:
            row = db.execute(
                "SELECT generation FROM generations WHERE destination = ? AND list_id = ?",
                (destination, list_id),
            ).fetchone()
        return int(row[0]) if row else 0

    def is_known(self, destination: str, list_id: str) -> bool:
        """Whether this list's membership was ever read (reconciled) into the state."""
        return self.last_reconciled(destination, list_id) is not None

    def last_change(self, destination: str, list_id: str) -> tuple[datetime, int | None] | None:
        """When a change of this list was last recorded, and the list's count SendGrid
        reported after it (None: not read since); None when no change is on record."""
        with self._connect() as db:
            row = db.execute(
                "SELECT changed_at, count_seen FROM list_changes "
                "WHERE destination = ? AND list_id = ?",
                (destination, list_id),
            ).fetchone()
        return (datetime.fromisoformat(row[0]), row[1]) if row else None

    def record_count_seen(self, destination: str, list_id: str, count: int) -> None:
        """The list's count as SendGrid reported it after this sync's changes."""
        with self._connect() as db:
            db.execute(
                "UPDATE list_changes SET count_seen = ? WHERE destination = ? AND list_id = ?",
                (count, destination, list_id),
            )

    # -- intents (write-ahead) -------------------------------------------------------------
    def write_intent(
        self, destination: str, list_id: str, kind: str, rows: pl.DataFrame, run_id: str
    ) -> int:
        """Record a change before its request is sent; returns the intent's id."""
        with self._connect() as db:
            cursor = db.execute(
                "INSERT INTO intents (destination, list_id, kind, rows, run_id, job_id, "
                "created_at) VALUES (?, ?, ?, ?, ?, NULL, ?)",
                (destination, list_id, kind, _to_blob(rows), run_id, _now()),
            )
            return int(cursor.lastrowid or 0)

    def intent_sent(self, intent_id: int, job_id: str) -> None:
        """SendGrid accepted the request: its job now decides the outcome."""
        with self._connect() as db:
            db.execute("UPDATE intents SET job_id = ? WHERE intent_id = ?", (job_id, intent_id))

    def intents(self, destination: str, list_id: str) -> list[Intent]:
        with self._connect() as db:
            rows = db.execute(
                "SELECT intent_id, kind, rows, run_id, job_id FROM intents "
                "WHERE destination = ? AND list_id = ? ORDER BY intent_id",
                (destination, list_id),
            ).fetchall()
        return [Intent(i, k, pl.read_ipc(io.BytesIO(blob)), r, j) for i, k, blob, r, j in rows]

    def drop_intent(self, intent_id: int) -> None:
        """Forget an intent whose request certainly changed nothing (refused, or failed)."""
        with self._connect() as db:
            db.execute("DELETE FROM intents WHERE intent_id = ?", (intent_id,))

    def confirm_upsert(
        self, intent_id: int, destination: str, list_id: str, accepted: pl.DataFrame
    ) -> None:
        """Record the rows a finished upsert job applied and retire the intent, atomically.

        A contact we put on the list is ours to manage, whoever put it there first.
        """
        now = _now()
        with self._connect() as db:
            _bump(db, destination, list_id)
            db.executemany(
                "INSERT INTO members VALUES (?, ?, ?, NULL, ?, 1, ?, 0) "
                "ON CONFLICT (destination, list_id, email) DO UPDATE SET "
                "contact_json = excluded.contact_json, synced_at = excluded.synced_at, "
                "managed = 1, uncertain = 0",
                (
                    (destination, list_id, email, cj, now)
                    for email, cj in accepted.select("email", "contact_json").iter_rows()
                ),
            )
            db.execute("DELETE FROM intents WHERE intent_id = ?", (intent_id,))

    def confirm_remove(
        self, intent_id: int, destination: str, list_id: str, emails: list[str]
    ) -> None:
        """Drop the members a completed removal job took off the list and retire the intent."""
        with self._connect() as db:
            _bump(db, destination, list_id)
            db.executemany(
                "DELETE FROM members WHERE destination = ? AND list_id = ? AND email = ?",
                [(destination, list_id, e) for e in emails],
            )
            db.execute("DELETE FROM intents WHERE intent_id = ?", (intent_id,))

    def mark_uncertain(
        self,
        intent_id: int | None,
        destination: str,
        list_id: str,
        emails: list[str] | pl.Series,
    ) -> None:
        """An outcome we could not confirm: these members were possibly changed.

        The next sync reconciles with the list before planning, so it converges from the
        truth (an upsert or a removal is safe to repeat). The intent is retired with it.
        """
        now = _now()
        with self._connect() as db:
            _bump(db, destination, list_id)
            db.executemany(
                "INSERT INTO members VALUES (?, ?, ?, NULL, '', 1, ?, 1) "
                "ON CONFLICT (destination, list_id, email) DO UPDATE SET uncertain = 1",
                [(destination, list_id, e, now) for e in emails],
            )
            if intent_id is not None:
                db.execute("DELETE FROM intents WHERE intent_id = ?", (intent_id,))

    def applied_snapshot(self, destination: str, list_id: str) -> tuple[datetime, str] | None:
        """The profiles snapshot of the last plan applied to the list, and its run."""
        with self._connect() as db:
            row = db.execute(
                "SELECT snapshot, run_id FROM snapshots WHERE destination = ? AND list_id = ?",
                (destination, list_id),
            ).fetchone()
        return (datetime.fromisoformat(row[0]), row[1]) if row else None

    def record_snapshot(
        self, destination: str, list_id: str, snapshot: datetime, run_id: str
    ) -> None:
        """A plan built from `snapshot` was applied: older snapshots are stale from now on.

        Never moves back: a later call with an older snapshot keeps the newer one.
        """
        with self._connect() as db:
            db.execute(
                "INSERT INTO snapshots VALUES (?, ?, ?, ?) ON CONFLICT (destination, list_id) "
                "DO UPDATE SET snapshot = excluded.snapshot, run_id = excluded.run_id "
                "WHERE excluded.snapshot > snapshots.snapshot",
                (destination, list_id, _snapshot_text(snapshot), run_id),
            )

    def member_count(self, destination: str, list_id: str) -> int:
        """How many contacts the state records on the list (managed or not)."""
        with self._connect() as db:
            (count,) = db.execute(
                "SELECT count(*) FROM members WHERE destination = ? AND list_id = ?",
                (destination, list_id),
            ).fetchone()
        return int(count)

    @contextmanager
    def list_lock(
        self, destination: str, list_id: str, run_id: str, wait_seconds: float = 600.0
    ) -> Iterator[None]:
        """One writer per (destination, list) across plan and apply, between processes.

        An OS file lock beside the state file: the kernel releases it when its holder dies,
        even by SIGKILL. A second sync waits up to `wait_seconds`, then fails naming the run
        that holds the list.
        """
        path = self.path.with_name(f"{self.path.name}.{destination}.{list_id}.lock")
        with path.open("a+") as handle:
            deadline = time.monotonic() + wait_seconds
            while True:
                try:
                    fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
                    break
                except BlockingIOError:
                    if time.monotonic() >= deadline:
                        handle.seek(0)
                        holder = handle.read().strip() or "(unknown run)"
                        raise StateStoreError(
                            f"Destination {destination!r}: list {list_id} is being synced by "
                            f"run {holder}; waited {wait_seconds:.0f}s for it to finish. "
                            "Rerun when that run has ended."
                        ) from None
                    time.sleep(0.2)
            with holding(handle, run_id):
                yield

    def has_uncertain(self, destination: str, list_id: str) -> int:
        """How many members have an unconfirmed change."""
        with self._connect() as db:
            (count,) = db.execute(
                "SELECT count(*) FROM members WHERE destination = ? AND list_id = ? "
                "AND uncertain = 1",
                (destination, list_id),
            ).fetchone()
        return int(count)

    def for_list(self, destination: str, list_id: str) -> ListState:
        """A handle on one list's record, so its users never repeat (destination, list_id)."""
        return ListState(self, destination, list_id)


@dataclass(frozen=True)
class ListState:
    """One destination's list in the state store: every read and write of a sync goes here."""

    store: SyncStateStore
    destination: str
    list_id: str

    def members(self) -> pl.DataFrame:
        """email, contact_id, contact_json, managed, uncertain for every recorded member."""
        return self.store.members(self.destination, self.list_id)

    def member_count(self) -> int:
        return self.store.member_count(self.destination, self.list_id)

    def has_uncertain(self) -> int:
        return self.store.has_uncertain(self.destination, self.list_id)

    def generation(self) -> int:
        return self.store.generation(self.destination, self.list_id)

    def last_reconciled(self) -> datetime | None:
        return self.store.last_reconciled(self.destination, self.list_id)

    def is_known(self) -> bool:
        return self.store.is_known(self.destination, self.list_id)

    def last_change(self) -> tuple[datetime, int | None] | None:
        return self.store.last_change(self.destination, self.list_id)

    def record_count_seen(self, count: int) -> None:
        self.store.record_count_seen(self.destination, self.list_id, count)

    def close(self) -> None:
        """Release the store's connection at the end of a sync (reopened if used again)."""
        self.store.close()

    def transaction(self) -> AbstractContextManager[None]:
        """Several writes as one transaction (see SyncStateStore.transaction)."""
        return self.store.transaction()

    def record_contact_ids(self, ids: pl.DataFrame) -> None:
        self.store.record_contact_ids(self.destination, self.list_id, ids)

    def forget(self, emails: list[str]) -> None:
        self.store.forget(self.destination, self.list_id, emails)

    def adopt(self, emails: pl.Series) -> None:
        self.store.adopt(self.destination, self.list_id, emails)

    def replace_members(self, frame: pl.DataFrame) -> None:
        self.store.replace_members(self.destination, self.list_id, frame)

    def write_intent(self, kind: str, rows: pl.DataFrame, run_id: str) -> int:
        return self.store.write_intent(self.destination, self.list_id, kind, rows, run_id)

    def intent_sent(self, intent_id: int, job_id: str) -> None:
        self.store.intent_sent(intent_id, job_id)

    def intents(self) -> list[Intent]:
        return self.store.intents(self.destination, self.list_id)

    def drop_intent(self, intent_id: int) -> None:
        self.store.drop_intent(intent_id)

    def confirm_upsert(self, intent_id: int, accepted: pl.DataFrame) -> None:
        self.store.confirm_upsert(intent_id, self.destination, self.list_id, accepted)

    def confirm_remove(self, intent_id: int, emails: list[str]) -> None:
        self.store.confirm_remove(intent_id, self.destination, self.list_id, emails)

    def mark_uncertain(self, intent_id: int | None, emails: list[str] | pl.Series) -> None:
        self.store.mark_uncertain(intent_id, self.destination, self.list_id, emails)

    def applied_snapshot(self) -> tuple[datetime, str] | None:
        return self.store.applied_snapshot(self.destination, self.list_id)

    def record_snapshot(self, snapshot: datetime, run_id: str) -> None:
        self.store.record_snapshot(self.destination, self.list_id, snapshot, run_id)

    def lock(self, run_id: str, wait_seconds: float = 600.0) -> AbstractContextManager[None]:
        """The list's one-writer lock (see SyncStateStore.list_lock)."""
        return self.store.list_lock(self.destination, self.list_id, run_id, wait_seconds)


class SyncStateResource(dg.ConfigurableResource):
    """Where the sync state lives: PostgreSQL when a DSN is given, else an SQLite file.

    The deployed resource holds `dg.EnvVar("SENDGRID_PIPELINE_STATE_DSN")` when that variable
    is set: Dagster resolves it when a run starts and never shows it (it holds a password).
    """

    directory: str = Field(
        description="Directory of the SQLite state file (the code location passes "
        "$SENDGRID_PIPELINE_STATE_DIR, else <data dir>/state); unused with a DSN.",
    )
    dsn: str | None = Field(
        default=None,
        description="PostgreSQL URL of the shared state ($SENDGRID_PIPELINE_STATE_DSN); "
        "unset: the SQLite file in `directory`.",
    )

    def store(self) -> SyncStateStore:
        if self.dsn:
            from sendgrid_pipeline.state_postgres import PostgresSyncStateStore

            return PostgresSyncStateStore(self.dsn)  # type: ignore[return-value]
        return SyncStateStore(Path(self.directory) / "sync_state.sqlite")

    def describe(self) -> str:
        """Where the state is, for messages: the DSN without its password."""
        if self.dsn:
            from sendgrid_pipeline.state_postgres import masked_dsn

            return masked_dsn(self.dsn)
        return str(Path(self.directory) / "sync_state.sqlite")
