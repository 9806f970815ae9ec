"""The erasure ledger: who must never be exported again, and what was done to erase them.

It lives in the same database as the sync state (the SQLite file or the PostgreSQL DSN that
`SyncStateResource` points at), in tables of its own. A person is recorded `pending` BEFORE
anything is sent (write-ahead): from that moment every sync leaves them out, even if the
erasure itself fails half way. They become `erased` once every request of the erasure was
confirmed; a `pending` person is erased again by the next erasure run (every step is
harmless to repeat). `withdrawn` lifts the block.

Emails are kept in clear here, as the member records beside them are: the block must match
them. Nothing that leaves the pipeline (logs, metadata, the audit file) shows them in clear.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

import polars as pl

from sendgrid_pipeline.state import StateStoreError, SyncStateResource, SyncStateStore

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
"""
_SCHEMA_LOCK = 0x5347_4552  # advisory lock key serializing schema creation ("SGER")

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


class ErasureLedger:
    """The ledger over one database; SQL is shared, placeholders and connections differ."""

    placeholder = "?"
    path: str

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
    def _cursor(self) -> Iterator[object]:
        import psycopg2

        try:
            db = psycopg2.connect(
                self.dsn,
                connect_timeout=self.connect_timeout_seconds,
                application_name="sendgrid_pipeline",
            )
        except psycopg2.Error as error:
            raise _explain(self.path, error, retryable=True) from None
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
