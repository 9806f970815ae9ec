"""The erasure ledger: who must never be exported again, and what was done to erase them.

It lives in the same database as the sync state (the SQLite file or the PostgreSQL DSN that
`SyncStateResource` points at), in tables of its own. A person is recorded `pending` BEFORE
anything is sent (write-ahead): from that moment every sync leaves them out, even if the
erasure itself fails half way. They become `erased` once every request of the erasure was
confirmed; a `pending` person is erased again by the next erasure run (every step is
harmless to repeat). `withdrawn` lifts the block.

One erasure run at a time (`ErasureLedger.run_lock`): a run holds the ledger's lock from
reading the pending people to writing its audit file, so two runs (two files dropped at
once, a hand-launched run beside a sensor run, two pods) never erase one person twice. The
lock is the sync state's kind of lock, under a key of its own: an OS file lock beside the
SQLite file, or a session advisory lock in PostgreSQL; a killed holder frees it. Lock order:
the erasure lock first, then list locks (ListState.lock) one at a time; a sync takes list
locks only and never the erasure lock, so the two can never wait on each other in a cycle.

Emails are kept in clear here, as the member records beside them are: the block must match
them. Nothing that leaves the pipeline (logs, metadata, the audit file) shows them in clear.
"""

from __future__ import annotations

import fcntl
import hashlib
import sqlite3
import time
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager, contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import polars as pl

from sendgrid_pipeline.state import StateStoreError, SyncStateResource, SyncStateStore, holding

PENDING = "pending"
ERASED = "erased"
WITHDRAWN = "withdrawn"

SUBJECT_SCHEMA = {
    "email": pl.String,
    "customer_id": pl.String,
    "status": pl.String,
    "request": pl.String,
    "requested_at": pl.String,
}
BLOCK_SCHEMA = {"email": pl.String, "customer_id": pl.String, "reason": pl.String}

_SQLITE_SCHEMA = """
CREATE TABLE IF NOT EXISTS erasure_subjects (
    email TEXT NOT NULL PRIMARY KEY,  -- lowercase, as SendGrid stores it
    customer_id TEXT,
    status TEXT NOT NULL CHECK (status IN ('pending', 'erased', 'withdrawn')),
    request TEXT NOT NULL,  -- the request file that asked for it last
    requested_by TEXT,
    requested_at TEXT NOT NULL,
    erased_at TEXT,
    withdrawn_at TEXT
);
CREATE INDEX IF NOT EXISTS erasure_subjects_customer ON erasure_subjects (customer_id);
CREATE TABLE IF NOT EXISTS erasure_steps (
    step_id INTEGER PRIMARY KEY AUTOINCREMENT,
    run_id TEXT NOT NULL,
    account TEXT NOT NULL,  -- the api_key_env of the account
    kind TEXT NOT NULL CHECK (kind IN ('list_removal', 'contact_deletion', 'recipient_erasure')),
    target TEXT,  -- the list id of a list removal
    contacts INTEGER NOT NULL,
    job_id TEXT,  -- null until SendGrid accepted the request
    status TEXT NOT NULL CHECK (status IN ('intent', 'sent', 'confirmed', 'failed')),
    created_at TEXT NOT NULL,
    updated_at TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS erasure_audits (
    email TEXT NOT NULL PRIMARY KEY,
    audit_file TEXT NOT NULL,  -- the audit file the run that erased them writes
    written_at TEXT  -- null until a run saw that file written (or wrote the person in its own)
);
"""

_POSTGRES_SCHEMA = """
CREATE TABLE IF NOT EXISTS erasure_subjects (
    email TEXT NOT NULL PRIMARY KEY,
    customer_id TEXT,
    status TEXT NOT NULL CHECK (status IN ('pending', 'erased', 'withdrawn')),
    request TEXT NOT NULL,
    requested_by TEXT,
    requested_at TEXT NOT NULL,
    erased_at TEXT,
    withdrawn_at TEXT
);
CREATE INDEX IF NOT EXISTS erasure_subjects_customer ON erasure_subjects (customer_id);
CREATE TABLE IF NOT EXISTS erasure_steps (
    step_id BIGSERIAL PRIMARY KEY,
    run_id TEXT NOT NULL,
    account TEXT NOT NULL,
    kind TEXT NOT NULL CHECK (kind IN ('list_removal', 'contact_deletion', 'recipient_erasure')),
    target TEXT,
    contacts INTEGER NOT NULL,
    job_id TEXT,
    status TEXT NOT NULL CHECK (status IN ('intent', 'sent', 'confirmed', 'failed')),
    created_at TEXT NOT NULL,
    updated_at TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS erasure_audits (
    email TEXT NOT NULL PRIMARY KEY,
    audit_file TEXT NOT NULL,  -- the audit file the run that erased them writes
    written_at TEXT  -- null until a run saw that file written (or wrote the person in its own)
);
CREATE TABLE IF NOT EXISTS erasure_lock_holder (
    name TEXT NOT NULL PRIMARY KEY,  -- 'erasure'
    run_id TEXT NOT NULL,  -- the run that holds (or last held) the erasure lock
    since TEXT NOT NULL
);
"""
_SCHEMA_LOCK = 0x5347_4552  # advisory lock key serializing schema creation ("SGER")

# the one erasure run lock of a PostgreSQL state (a key of its own, beside the list locks)
_RUN_LOCK = int.from_bytes(
    hashlib.sha256(b"sendgrid-erasure\0ledger").digest()[:8], "big", signed=True
)
ERASURE_LOCK_WAIT_SECONDS = 600.0  # how long a second erasure run waits for the first


class ErasureLedgerBusy(StateStoreError):
    """Another erasure run held the ledger for longer than this run would wait."""


_UPSERT_SUBJECT = (
    "INSERT INTO erasure_subjects (email, customer_id, status, request, requested_by, "
    "requested_at) VALUES ({p}, {p}, 'pending', {p}, {p}, {p}) ON CONFLICT (email) DO UPDATE "
    "SET customer_id = COALESCE(excluded.customer_id, erasure_subjects.customer_id), "
    "request = excluded.request, requested_by = excluded.requested_by, "
    "requested_at = excluded.requested_at, withdrawn_at = NULL, "
    # erasing twice is harmless, but an erased person needs no second erasure
    "status = CASE WHEN erasure_subjects.status = 'erased' THEN 'erased' ELSE 'pending' END"
)


def _now() -> str:
    return datetime.now(UTC).isoformat(timespec="seconds")


@dataclass(frozen=True)
class Step:
    """One request of an erasure, as the ledger recorded it."""

    step_id: int
    run_id: str
    account: str
    kind: str
    target: str | None
    contacts: int
    job_id: str | None
    status: str


def _wait_for_lock(
    try_lock: Callable[[], bool],
    holder: Callable[[], str],
    where: str,
    wait_seconds: float,
    on_wait: Callable[[str], None] | None,
) -> None:
    """Poll `try_lock` until it succeeds; after `wait_seconds`, ErasureLedgerBusy naming the
    run that holds the lock. `on_wait(holder)` is called once, when the lock was held."""
    deadline = time.monotonic() + wait_seconds
    told = False
    while not try_lock():
        if time.monotonic() >= deadline:
            raise ErasureLedgerBusy(
                f"Erasure ledger in {where}: erasure run {holder() or '(unknown run)'} holds it; "
                f"waited {wait_seconds:.0f}s for it to finish. Nothing was sent by this run; "
                "its people are recorded (blocked from every sync), and the erasure sensor's "
                "hourly retry run erases them once that run has ended."
            )
        if not told and on_wait is not None:
            on_wait(holder() or "(unknown run)")
            told = True
        time.sleep(0.2)


class ErasureLedger:
    """The ledger over one database; SQL is shared, placeholders and connections differ."""

    placeholder = "?"
    path: str

    def run_lock(
        self,
        run_id: str,
        wait_seconds: float | None = None,
        on_wait: Callable[[str], None] | None = None,
    ) -> AbstractContextManager[None]:  # pragma: no cover - implemented below
        """One erasure run at a time, across processes and pods (see the module docstring).

        Waits up to `wait_seconds` (default ERASURE_LOCK_WAIT_SECONDS; 0: not at all), then
        raises ErasureLedgerBusy naming the holder; `on_wait(holder)` when it has to wait.
        """
        raise NotImplementedError

    @contextmanager
    def _cursor(self) -> Iterator[object]:  # pragma: no cover - implemented below
        raise NotImplementedError
        yield

    def _sql(self, sql: str) -> str:
        return sql.replace("{p}", self.placeholder)

    def _rows(self, sql: str, params: tuple = ()) -> list[tuple]:
        with self._cursor() as cursor:
            cursor.execute(self._sql(sql), params)
            return list(cursor.fetchall())

    # -- subjects ------------------------------------------------------------------------------
    def record(self, subjects: pl.DataFrame, request: str) -> None:
        """Write-ahead: the people (email, customer_id, requested_by) are blocked from now on.

        Already erased people stay erased (nothing is sent for them again).
        """
        now = _now()
        rows = [
            (email, customer_id, request, requested_by, now)
            for email, customer_id, requested_by in subjects.select(
                "email", "customer_id", "requested_by"
            ).iter_rows()
        ]
        if not rows:
            return
        with self._cursor() as cursor:
            cursor.executemany(self._sql(_UPSERT_SUBJECT), rows)

    def withdraw(self, emails: list[str], customer_ids: list[str]) -> int:
        """Lift the block of these people (by email or customer id); returns how many."""
        now = _now()
        count = 0
        with self._cursor() as cursor:
            for column, values in (("email", emails), ("customer_id", customer_ids)):
                for value in values:
                    cursor.execute(
                        self._sql(
                            "UPDATE erasure_subjects SET status = 'withdrawn', withdrawn_at = {p} "
                            f"WHERE {column} = {{p}} AND status != 'withdrawn'"
                        ),
                        (now, value),
                    )
                    count += max(cursor.rowcount, 0)
        return count

    def subjects(self, status: str | None = None) -> pl.DataFrame:
        """email, customer_id, status, request, requested_at (all, or those with `status`)."""
        where = "" if status is None else " WHERE status = {p}"
        rows = self._rows(
            "SELECT email, customer_id, status, request, requested_at FROM erasure_subjects"
            + where
            + " ORDER BY email",
            () if status is None else (status,),
        )
        return pl.DataFrame(rows, schema=SUBJECT_SCHEMA, orient="row")

    def carried_out(self, rows: pl.DataFrame) -> bool:
        """Whether the ledger shows every row of a request file (erasure.ROW_SCHEMA) done:
        each person to erase recorded and no longer pending (erased, or withdrawn since), each
        withdrawal no longer blocked. A file the brake refused was never recorded: False."""
        ledger = self.subjects().select("email", "customer_id", "status")
        by_email = ledger.select("email", pl.col("status").alias("s"))
        by_id = (
            ledger.filter(pl.col("customer_id").is_not_null())
            .group_by("customer_id")
            .agg(
                (pl.col("status") == PENDING).any().alias("any_pending"),
                (pl.col("status") != WITHDRAWN).any().alias("any_blocked"),
            )
        )
        erase = rows.filter(pl.col("action") == "erase")
        given = erase.filter(pl.col("email").is_not_null())
        with_email = given.join(by_email, on="email", how="left")
        if with_email.filter(pl.col("s").is_null() | (pl.col("s") == PENDING)).height:
            return False
        only_id = erase.filter(pl.col("email").is_null()).join(by_id, on="customer_id", how="left")
        if only_id.filter(pl.col("any_pending").is_null() | pl.col("any_pending")).height:
            return False
        withdraw = rows.filter(pl.col("action") == "withdraw")
        still = withdraw.join(by_email, on="email", how="inner").filter(pl.col("s") != WITHDRAWN)
        still_ids = withdraw.join(by_id, on="customer_id", how="inner").filter("any_blocked")
        return not still.height and not still_ids.height

    def blocked(self) -> pl.DataFrame:
        """The do-not-export rows of everyone erased or being erased (reason `erased`)."""
        rows = self._rows(
            "SELECT email, customer_id FROM erasure_subjects WHERE status != 'withdrawn'"
        )
        schema = {"email": pl.String, "customer_id": pl.String}
        frame = pl.DataFrame(rows, schema=schema, orient="row")
        return frame.with_columns(pl.lit("erased", pl.String).alias("reason"))

    def mark_erased(self, emails: list[str], audit_file: str | None = None) -> None:
        """Every request for these people was confirmed.

        With `audit_file`, the same transaction records that this file owes their completion
        line (see audit_owed): a run killed before writing it leaves the line owed, not lost.
        """
        now = _now()
        with self._cursor() as cursor:
            if audit_file is not None:
                cursor.executemany(
                    self._sql(
                        "INSERT INTO erasure_audits (email, audit_file) SELECT email, {p} "
                        "FROM erasure_subjects WHERE email = {p} AND status = 'pending' "
                        "ON CONFLICT (email) DO UPDATE SET audit_file = excluded.audit_file, "
                        "written_at = NULL"
                    ),
                    [(audit_file, email) for email in emails],
                )
            cursor.executemany(
                self._sql(
                    "UPDATE erasure_subjects SET status = 'erased', erased_at = {p} "
                    "WHERE email = {p} AND status = 'pending'"
                ),
                [(now, email) for email in emails],
            )

    # -- audit completions (each erased person has exactly one `erased` audit line) -----------
    def audit_owed(self, audit_file: str, written: Callable[[str], bool]) -> pl.DataFrame:
        """The people whose completion line no audit file holds yet (email, customer_id,
        request), to be written in `audit_file`.

        A person owed to another run's file that `written(file)` finds is settled here: that
        run wrote its file (audit files are replaced whole, never seen half written) and was
        killed before it said so.
        """
        rows = self._rows(
            "SELECT a.email, s.customer_id, s.request, a.audit_file FROM erasure_audits a "
            "JOIN erasure_subjects s ON s.email = a.email WHERE a.written_at IS NULL "
            "AND s.status = 'erased' ORDER BY a.email"
        )
        owed = pl.DataFrame(
            rows,
            schema={
                "email": pl.String,
                "customer_id": pl.String,
                "request": pl.String,
                "audit_file": pl.String,
            },
            orient="row",
        )
        others = owed.filter(pl.col("audit_file") != audit_file)["audit_file"].unique().to_list()
        done = [file for file in others if written(file)]
        if done:
            settled = owed.filter(pl.col("audit_file").is_in(done))["email"].to_list()
            self.audit_written(settled)
            owed = owed.filter(~pl.col("audit_file").is_in(done))
        return owed.drop("audit_file")

    def audits_owed(self) -> int:
        """How many erased people no audit file is known to show erased yet."""
        rows = self._rows(
            "SELECT COUNT(*) FROM erasure_audits a JOIN erasure_subjects s "
            "ON s.email = a.email WHERE a.written_at IS NULL AND s.status = 'erased'"
        )
        return int(rows[0][0])

    def audit_written(self, emails: list[str]) -> None:
        """An audit file holding these people's completion lines was written."""
        now = _now()
        with self._cursor() as cursor:
            cursor.executemany(
                self._sql(
                    "UPDATE erasure_audits SET written_at = {p} "
                    "WHERE email = {p} AND written_at IS NULL"
                ),
                [(now, email) for email in emails],
            )

    # -- steps (write-ahead of every request) --------------------------------------------------
    def begin_step(
        self, run_id: str, account: str, kind: str, target: str | None, contacts: int
    ) -> int:
        """Record a request before it is sent; returns its step id."""
        now = _now()
        with self._cursor() as cursor:
            returning = " RETURNING step_id" if self.placeholder == "%s" else ""
            cursor.execute(
                self._sql(
                    "INSERT INTO erasure_steps (run_id, account, kind, target, contacts, status, "
                    "created_at, updated_at) VALUES ({p}, {p}, {p}, {p}, {p}, 'intent', {p}, {p})"
                    + returning
                ),
                (run_id, account, kind, target, contacts, now, now),
            )
            return int(cursor.fetchone()[0]) if returning else int(cursor.lastrowid)

    def step_sent(self, step_id: int, job_id: str) -> None:
        self._set_step(step_id, "sent", job_id)

    def step_confirmed(self, step_id: int) -> None:
        self._set_step(step_id, "confirmed", None)

    def step_failed(self, step_id: int) -> None:
        self._set_step(step_id, "failed", None)

    def _set_step(self, step_id: int, status: str, job_id: str | None) -> None:
        with self._cursor() as cursor:
            cursor.execute(
                self._sql(
                    "UPDATE erasure_steps SET status = {p}, job_id = COALESCE({p}, job_id), "
                    "updated_at = {p} WHERE step_id = {p}"
                ),
                (status, job_id, _now(), step_id),
            )

    def steps(self, run_id: str | None = None) -> list[Step]:
        where = "" if run_id is None else " WHERE run_id = {p}"
        rows = self._rows(
            "SELECT step_id, run_id, account, kind, target, contacts, job_id, status "
            "FROM erasure_steps" + where + " ORDER BY step_id",
            () if run_id is None else (run_id,),
        )
        return [Step(*row) for row in rows]


class SqliteErasureLedger(ErasureLedger):
    """The ledger in the sync state's SQLite file."""

    def __init__(self, path: Path) -> None:
        self.path = str(path)
        # The file is created (or checked) as the sync creates it: WAL mode set once, under
        # the store's lock, and a damaged file named with the sync state's recovery advice.
        SyncStateStore(path).close()
        with self._cursor() as cursor:
            cursor.executescript(_SQLITE_SCHEMA)

    @contextmanager
    def run_lock(
        self,
        run_id: str,
        wait_seconds: float | None = None,
        on_wait: Callable[[str], None] | None = None,
    ) -> Iterator[None]:
        """An OS file lock beside the state file (the kernel frees it when its holder dies,
        even by SIGKILL), holding the holder's run id."""
        wait = ERASURE_LOCK_WAIT_SECONDS if wait_seconds is None else wait_seconds
        with open(f"{self.path}.erasure.lock", "a+", encoding="utf-8") as handle:

            def try_lock() -> bool:
                try:
                    fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
                except BlockingIOError:
                    return False
                return True

            def holder() -> str:
                handle.seek(0)
                return handle.read().strip()

            _wait_for_lock(try_lock, holder, self.path, wait, on_wait)
            with holding(handle, run_id):
                yield

    @contextmanager
    def _cursor(self) -> Iterator[sqlite3.Cursor]:
        try:
            db = sqlite3.connect(self.path, timeout=30)
        except sqlite3.Error as error:
            raise _explain(self.path, error) from None
        try:
            with db:  # one transaction; rolled back on any exception
                yield db.cursor()
        except sqlite3.Error as error:
            raise _explain(self.path, error) from None
        finally:
            db.close()


class PostgresErasureLedger(ErasureLedger):
    """The ledger in the shared PostgreSQL state."""

    placeholder = "%s"

    def __init__(self, dsn: str, connect_timeout_seconds: int = 10) -> None:
        from sendgrid_pipeline.state_postgres import masked_dsn

        self.dsn = dsn
        self.connect_timeout_seconds = connect_timeout_seconds
        self.path = masked_dsn(dsn)
        with self._cursor() as cursor:
            cursor.execute("SELECT pg_advisory_xact_lock(%s)", (_SCHEMA_LOCK,))
            cursor.execute(_POSTGRES_SCHEMA)

    def __repr__(self) -> str:
        return f"PostgresErasureLedger({self.path!r})"

    @contextmanager
    def run_lock(
        self,
        run_id: str,
        wait_seconds: float | None = None,
        on_wait: Callable[[str], None] | None = None,
    ) -> Iterator[None]:
        """A session advisory lock on a connection of its own (the server frees it when that
        connection ends: a killed holder or a lost pod frees the ledger); the holder's run id
        in erasure_lock_holder."""
        import psycopg2

        wait = ERASURE_LOCK_WAIT_SECONDS if wait_seconds is None else wait_seconds
        holder_db = self._connect()
        holder_db.autocommit = True
        try:
            with holder_db.cursor() as cursor:

                def try_lock() -> bool:
                    cursor.execute("SELECT pg_try_advisory_lock(%s)", (_RUN_LOCK,))
                    return bool(cursor.fetchone()[0])

                def holder() -> str:
                    cursor.execute("SELECT run_id FROM erasure_lock_holder WHERE name = 'erasure'")
                    row = cursor.fetchone()
                    return row[0] if row else ""

                _wait_for_lock(try_lock, holder, self.path, wait, on_wait)
                cursor.execute(
                    "INSERT INTO erasure_lock_holder VALUES ('erasure', %s, %s) ON CONFLICT "
                    "(name) DO UPDATE SET run_id = excluded.run_id, since = excluded.since",
                    (run_id, _now()),
                )
            try:
                yield
            finally:
                with holder_db.cursor() as cursor:
                    cursor.execute("SELECT pg_advisory_unlock(%s)", (_RUN_LOCK,))
        except psycopg2.Error as error:
            retryable = isinstance(error, psycopg2.OperationalError)
            raise _explain(self.path, error, retryable=retryable) from None
        finally:
            holder_db.close()

    def _connect(self) -> Any:
        """A new connection; a server that cannot be reached is a retryable error."""
        import psycopg2

        try:
            return psycopg2.connect(
                self.dsn,
                connect_timeout=self.connect_timeout_seconds,
                application_name="sendgrid_pipeline",
            )
        except psycopg2.Error as error:
            raise _explain(self.path, error, retryable=True) from None

    @contextmanager
    def _cursor(self) -> Iterator[object]:
        import psycopg2

        db = self._connect()
        try:
            with db, db.cursor() as cursor:
                yield cursor
        except psycopg2.Error as error:
            retryable = isinstance(error, psycopg2.OperationalError)
            raise _explain(self.path, error, retryable=retryable) from None
        finally:
            db.close()


def _explain(where: str, error: Exception, retryable: bool = False) -> StateStoreError:
    """A ledger failure naming the database (never a statement's values)."""
    text = (str(error).strip().splitlines() or [type(error).__name__])[0].split(":")[0]
    failure = StateStoreError(
        f"Erasure ledger in {where}: {text} ({type(error).__name__}); every erasure was "
        "recorded before it was sent, so a rerun settles it"
    )
    failure.retryable = retryable
    return failure


def erasure_ledger(sync_state: SyncStateResource) -> ErasureLedger:
    """The ledger in the database the sync state resource points at."""
    if sync_state.dsn:
        return PostgresErasureLedger(sync_state.dsn)
    return SqliteErasureLedger(Path(sync_state.directory) / "sync_state.sqlite")
