"""The sync state in PostgreSQL: one record shared by every worker, pod and run.

Same semantics as the SQLite store (state.SyncStateStore): write-ahead intents, members
confirmed in the transaction that retires their intent, uncertain members, generations.
What differs is the transport: bulk writes go through `COPY` into a temporary table and one
set-based statement, large reads through a server-side cursor, statistics are refreshed after
a bulk load, and the one-writer-per-list lock is a PostgreSQL advisory lock held on its own
connection (released by the server when its holder dies, on any machine).
"""

from __future__ import annotations

import hashlib
import io
import time
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from urllib.parse import urlsplit, urlunsplit

import polars as pl
import psycopg2
import psycopg2.extensions

from sendgrid_pipeline.state import (
    MEMBER_SCHEMA,
    Intent,
    ListState,
    StateStoreError,
    _now,
    _snapshot_text,
    _to_blob,
)

_SCHEMA = """
CREATE TABLE IF NOT EXISTS sendgrid_members (
    destination TEXT NOT NULL,
    list_id TEXT NOT NULL,
    email TEXT NOT NULL,
    contact_id TEXT,
    contact_json TEXT NOT NULL,
    managed BOOLEAN NOT NULL DEFAULT TRUE,
    synced_at TEXT NOT NULL,
    uncertain BOOLEAN NOT NULL DEFAULT FALSE,
    PRIMARY KEY (destination, list_id, email)
);
CREATE TABLE IF NOT EXISTS sendgrid_reconciles (
    destination TEXT NOT NULL,
    list_id TEXT NOT NULL,
    reconciled_at TEXT NOT NULL,
    PRIMARY KEY (destination, list_id)
);
CREATE TABLE IF NOT EXISTS sendgrid_generations (
    destination TEXT NOT NULL,
    list_id TEXT NOT NULL,
    generation BIGINT NOT NULL,
    PRIMARY KEY (destination, list_id)
);
CREATE TABLE IF NOT EXISTS sendgrid_intents (
    intent_id BIGSERIAL PRIMARY KEY,
    destination TEXT NOT NULL,
    list_id TEXT NOT NULL,
    kind TEXT NOT NULL CHECK (kind IN ('upsert', 'remove')),
    rows BYTEA NOT NULL,
    run_id TEXT NOT NULL,
    job_id TEXT,
    created_at TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS sendgrid_intents_list ON sendgrid_intents (destination, list_id);
CREATE TABLE IF NOT EXISTS sendgrid_list_changes (
    destination TEXT NOT NULL,
    list_id TEXT NOT NULL,
    changed_at TEXT NOT NULL,
    count_seen BIGINT,
    PRIMARY KEY (destination, list_id)
);
CREATE TABLE IF NOT EXISTS sendgrid_snapshots (
    destination TEXT NOT NULL,
    list_id TEXT NOT NULL,
    snapshot TEXT NOT NULL,
    run_id TEXT NOT NULL,
    PRIMARY KEY (destination, list_id)
);
CREATE TABLE IF NOT EXISTS sendgrid_list_holders (
    destination TEXT NOT NULL,
    list_id TEXT NOT NULL,
    run_id TEXT NOT NULL,
    PRIMARY KEY (destination, list_id)
);
"""
_SCHEMA_LOCK = 0x5347_5343  # advisory lock key serializing schema creation ("SGSC")
_BULK_ROWS = 5_000  # above this many rows a write goes through COPY
_READ_CHUNK = 100_000


def masked_dsn(dsn: str) -> str:
    """The DSN without its password, for messages."""
    parts = urlsplit(dsn)
    if parts.password is None:
        return dsn
    netloc = parts.netloc.replace(f":{parts.password}@", ":***@", 1)
    return urlunsplit(parts._replace(netloc=netloc))


def _lock_key(destination: str, list_id: str) -> int:
    """A stable signed 64-bit advisory-lock key for one (destination, list)."""
    digest = hashlib.sha256(f"sendgrid-list\0{destination}\0{list_id}".encode()).digest()
    return int.from_bytes(digest[:8], "big", signed=True)


def _csv(frame: pl.DataFrame) -> io.BytesIO:
    """CSV as COPY reads it: nulls unquoted and empty, empty strings quoted."""
    buffer = io.BytesIO()
    frame.write_csv(buffer, include_header=False, quote_style="necessary")
    buffer.seek(0)
    return buffer


class PostgresSyncStateStore:
    """Transactional member and intent records in PostgreSQL, keyed by destination and list."""

    def __init__(self, dsn: str, connect_timeout_seconds: int = 10) -> None:
        self.dsn = dsn
        self.connect_timeout_seconds = connect_timeout_seconds
        self.path = masked_dsn(dsn)  # what messages name as "the state"
        with self._connect() as db, db.cursor() as cursor:
            cursor.execute("SELECT pg_advisory_xact_lock(%s)", (_SCHEMA_LOCK,))
            cursor.execute(_SCHEMA)

    def __repr__(self) -> str:
        return f"PostgresSyncStateStore({self.path!r})"

    def _open(self) -> psycopg2.extensions.connection:
        try:
            return psycopg2.connect(
                self.dsn,
                connect_timeout=self.connect_timeout_seconds,
                application_name="sendgrid_pipeline",
            )
        except psycopg2.Error as error:
            raise self._explain(error) from None

    @contextmanager
    def _connect(self) -> Iterator[psycopg2.extensions.connection]:
        """One transaction: committed when the block ends, rolled back on any exception."""
        db = self._open()
        try:
            with db:
                yield db
        except psycopg2.Error as error:
            raise self._explain(error) from None
        finally:
            db.close()

    def _explain(self, error: psycopg2.Error) -> StateStoreError:
        text = (str(error).strip().splitlines() or [type(error).__name__])[0]
        text = text.replace(self.dsn, self.path)
        retryable = isinstance(error, psycopg2.OperationalError)
        failure = StateStoreError(
            f"Sync state {self.path}: {text} ({type(error).__name__}); "
            + (
                "the database could not be reached or answered; the run retries, and every "
                "change was written ahead, so a rerun settles whatever was sent"
                if retryable
                else "check the database and its permissions, then rerun"
            )
        )
        failure.retryable = retryable
        return failure

    # -- members ---------------------------------------------------------------------------
    def members(self, destination: str, list_id: str) -> pl.DataFrame:
        """email, contact_id, contact_json, managed, uncertain for every recorded member."""
        schema = {**MEMBER_SCHEMA, "managed": pl.Boolean, "uncertain": pl.Boolean}
        chunks = [pl.DataFrame(schema=schema)]
        with self._connect() as db, db.cursor(name="members") as cursor:
            cursor.itersize = _READ_CHUNK
            cursor.execute(
                "SELECT email, contact_id, contact_json, managed, uncertain FROM "
                "sendgrid_members WHERE destination = %s AND list_id = %s ORDER BY email",
                (destination, list_id),
            )
            while rows := cursor.fetchmany(_READ_CHUNK):
                chunks.append(pl.DataFrame(rows, schema=schema, orient="row"))
        return pl.concat(chunks, rechunk=True)

    def _load(self, cursor, frame: pl.DataFrame, columns: dict[str, str]) -> None:
        """Bulk-load `frame` into a temporary table `incoming` (dropped at commit)."""
        ddl = ", ".join(f"{name} {sql_type}" for name, sql_type in columns.items())
        cursor.execute(f"CREATE TEMPORARY TABLE incoming ({ddl}) ON COMMIT DROP")
        cursor.copy_expert(
            f"COPY incoming ({', '.join(columns)}) FROM STDIN WITH (FORMAT csv)",
            _csv(frame.select(list(columns))),
        )
        if frame.height > _BULK_ROWS:
            cursor.execute("ANALYZE incoming")

    def _bump(self, cursor, destination: str, list_id: str) -> None:
        cursor.execute(
            "INSERT INTO sendgrid_generations VALUES (%s, %s, 1) ON CONFLICT (destination, "
            "list_id) DO UPDATE SET generation = sendgrid_generations.generation + 1",
            (destination, list_id),
        )
        cursor.execute(
            "INSERT INTO sendgrid_list_changes VALUES (%s, %s, %s, NULL) ON CONFLICT "
            "(destination, list_id) DO UPDATE SET changed_at = excluded.changed_at, "
            "count_seen = NULL",
            (destination, list_id, datetime.now(UTC).isoformat(timespec="microseconds")),
        )

    def _delete_emails(self, cursor, destination: str, list_id: str, emails) -> None:
        cursor.execute(
            "DELETE FROM sendgrid_members WHERE destination = %s AND list_id = %s "
            "AND email = ANY(%s)",
            (destination, list_id, list(emails)),
        )

    def record_contact_ids(self, destination: str, list_id: str, ids: pl.DataFrame) -> None:
        """Remember contact ids learned from a search so removals need no second lookup."""
        if ids.is_empty():
            return
        # by position, as the SQLite store reads it: callers name the id column as they like
        email, contact_id = ids.columns[:2]
        ids = ids.select(
            pl.col(email).alias("email"), pl.col(contact_id).cast(pl.String).alias("contact_id")
        )
        with self._connect() as db, db.cursor() as cursor:
            self._load(cursor, ids, {"email": "TEXT", "contact_id": "TEXT"})
            cursor.execute(
                "UPDATE sendgrid_members m SET contact_id = i.contact_id FROM incoming i "
                "WHERE m.destination = %s AND m.list_id = %s AND m.email = i.email",
                (destination, list_id),
            )

    def forget(self, destination: str, list_id: str, emails: list[str]) -> None:
        """Drop members that SendGrid does not hold at all (nothing to remove)."""
        with self._connect() as db, db.cursor() as cursor:
            self._bump(cursor, destination, list_id)
            self._delete_emails(cursor, destination, list_id, emails)

    def adopt(self, destination: str, list_id: str, emails: pl.Series) -> None:
        """Members in the segments are ours from now on (also after a lost state)."""
        with self._connect() as db, db.cursor() as cursor:
            self._bump(cursor, destination, list_id)
            cursor.execute(
                "UPDATE sendgrid_members SET managed = TRUE WHERE destination = %s AND "
                "list_id = %s AND email = ANY(%s) AND NOT managed",
                (destination, list_id, emails.to_list()),
            )

    def replace_members(self, destination: str, list_id: str, frame: pl.DataFrame) -> None:
        """Rebuild a destination's record from the list's true membership (reconcile)."""
        now = _now()
        rows = frame.select(list(MEMBER_SCHEMA))
        with self._connect() as db, db.cursor() as cursor:
            self._bump(cursor, destination, list_id)
            cursor.execute(
                "DELETE FROM sendgrid_members WHERE destination = %s AND list_id = %s",
                (destination, list_id),
            )
            self._load(
                cursor,
                rows,
                {"email": "TEXT", "contact_id": "TEXT", "contact_json": "TEXT", "managed": "BOOL"},
            )
            cursor.execute(
                "INSERT INTO sendgrid_members SELECT %s, %s, email, contact_id, contact_json, "
                "managed, %s, FALSE FROM incoming",
                (destination, list_id, now),
            )
            cursor.execute(
                "INSERT INTO sendgrid_reconciles VALUES (%s, %s, %s) ON CONFLICT (destination, "
                "list_id) DO UPDATE SET reconciled_at = excluded.reconciled_at",
                (destination, list_id, now),
            )
        if rows.height > _BULK_ROWS:
            self._analyze()

    def _analyze(self) -> None:
        """Fresh planner statistics after a bulk load (autovacuum may lag behind it)."""
        with self._connect() as db, db.cursor() as cursor:
            cursor.execute("ANALYZE sendgrid_members")

    def _scalar(self, sql: str, params: tuple):
        with self._connect() as db, db.cursor() as cursor:
            cursor.execute(sql, params)
            row = cursor.fetchone()
        return row[0] if row else None

    def last_reconciled(self, destination: str, list_id: str) -> datetime | None:
        """When this list's membership was last read into the state (None: never)."""
        value = self._scalar(
            "SELECT reconciled_at FROM sendgrid_reconciles WHERE destination = %s AND list_id = %s",
            (destination, list_id),
        )
        return datetime.fromisoformat(value) if value else None

    def generation(self, destination: str, list_id: str) -> int:
        """How many changes of this list the state has recorded (0: none)."""
        value = self._scalar(
            "SELECT generation FROM sendgrid_generations WHERE destination = %s AND list_id = %s",
            (destination, list_id),
        )
        return int(value or 0)

    def last_change(self, destination: str, list_id: str) -> tuple[datetime, int | None] | None:
        """When a change of this list was last recorded, and the list's count SendGrid
        reported after it (None: not read since); None when no change is on record."""
        with self._connect() as db, db.cursor() as cursor:
            cursor.execute(
                "SELECT changed_at, count_seen FROM sendgrid_list_changes "
                "WHERE destination = %s AND list_id = %s",
                (destination, list_id),
            )
            row = cursor.fetchone()
        return (datetime.fromisoformat(row[0]), row[1]) if row else None

    def record_count_seen(self, destination: str, list_id: str, count: int) -> None:
        """The list's count as SendGrid reported it after this sync's changes."""
        with self._connect() as db, db.cursor() as cursor:
            cursor.execute(
                "UPDATE sendgrid_list_changes SET count_seen = %s "
                "WHERE destination = %s AND list_id = %s",
                (count, destination, list_id),
            )

    def close(self) -> None:
        """Nothing held between calls: each opens its own connection from the DSN."""

    @contextmanager
    def transaction(self) -> Iterator[None]:
        """Each call inside keeps its own transaction here (nothing to batch: no fsync per
        call on the client side)."""
        yield

    def is_known(self, destination: str, list_id: str) -> bool:
        """Whether this list's membership was ever read (reconciled) into the state."""
        return self.last_reconciled(destination, list_id) is not None

    def applied_snapshot(self, destination: str, list_id: str) -> tuple[datetime, str] | None:
        """The profiles snapshot of the last plan applied to the list, and its run."""
        with self._connect() as db, db.cursor() as cursor:
            cursor.execute(
                "SELECT snapshot, run_id FROM sendgrid_snapshots WHERE destination = %s "
                "AND list_id = %s",
                (destination, list_id),
            )
            row = cursor.fetchone()
        return (datetime.fromisoformat(row[0]), row[1]) if row else None

    def record_snapshot(
        self, destination: str, list_id: str, snapshot: datetime, run_id: str
    ) -> None:
        """A plan built from `snapshot` was applied (never moves back to an older one)."""
        with self._connect() as db, db.cursor() as cursor:
            cursor.execute(
                "INSERT INTO sendgrid_snapshots VALUES (%s, %s, %s, %s) ON CONFLICT "
                "(destination, list_id) DO UPDATE SET snapshot = excluded.snapshot, "
                "run_id = excluded.run_id WHERE excluded.snapshot > sendgrid_snapshots.snapshot",
                (destination, list_id, _snapshot_text(snapshot), run_id),
            )

    def member_count(self, destination: str, list_id: str) -> int:
        """How many contacts the state records on the list (managed or not)."""
        return int(
            self._scalar(
                "SELECT count(*) FROM sendgrid_members WHERE destination = %s AND list_id = %s",
                (destination, list_id),
            )
        )

    def has_uncertain(self, destination: str, list_id: str) -> int:
        """How many members have an unconfirmed change."""
        return int(
            self._scalar(
                "SELECT count(*) FROM sendgrid_members WHERE destination = %s AND list_id = %s "
                "AND uncertain",
                (destination, list_id),
            )
        )

    # -- intents (write-ahead) -------------------------------------------------------------
    def write_intent(
        self, destination: str, list_id: str, kind: str, rows: pl.DataFrame, run_id: str
    ) -> int:
        """Record a change before its request is sent; returns the intent's id."""
        return int(
            self._scalar(
                "INSERT INTO sendgrid_intents (destination, list_id, kind, rows, run_id, job_id, "
                "created_at) VALUES (%s, %s, %s, %s, %s, NULL, %s) RETURNING intent_id",
                (destination, list_id, kind, psycopg2.Binary(_to_blob(rows)), run_id, _now()),
            )
        )

    def intent_sent(self, intent_id: int, job_id: str) -> None:
        """SendGrid accepted the request: its job now decides the outcome."""
        with self._connect() as db, db.cursor() as cursor:
            cursor.execute(
                "UPDATE sendgrid_intents SET job_id = %s WHERE intent_id = %s", (job_id, intent_id)
            )

    def intents(self, destination: str, list_id: str) -> list[Intent]:
        with self._connect() as db, db.cursor() as cursor:
            cursor.execute(
                "SELECT intent_id, kind, rows, run_id, job_id FROM sendgrid_intents "
                "WHERE destination = %s AND list_id = %s ORDER BY intent_id",
                (destination, list_id),
            )
            rows = cursor.fetchall()
        return [
            Intent(i, k, pl.read_ipc(io.BytesIO(bytes(blob))), r, j) for i, k, blob, r, j in rows
        ]

    def drop_intent(self, intent_id: int) -> None:
        """Forget an intent whose request certainly changed nothing (refused, or failed)."""
        with self._connect() as db, db.cursor() as cursor:
            cursor.execute("DELETE FROM sendgrid_intents WHERE intent_id = %s", (intent_id,))

    def confirm_upsert(
        self, intent_id: int, destination: str, list_id: str, accepted: pl.DataFrame
    ) -> None:
        """Record the rows a finished upsert job applied and retire the intent, atomically."""
        now = _now()
        with self._connect() as db, db.cursor() as cursor:
            self._bump(cursor, destination, list_id)
            self._load(cursor, accepted, {"email": "TEXT", "contact_json": "TEXT"})
            cursor.execute(
                "INSERT INTO sendgrid_members SELECT %s, %s, email, NULL, contact_json, TRUE, "
                "%s, FALSE FROM incoming ON CONFLICT (destination, list_id, email) DO UPDATE "
                "SET contact_json = excluded.contact_json, synced_at = excluded.synced_at, "
                "managed = TRUE, uncertain = FALSE",
                (destination, list_id, now),
            )
            cursor.execute("DELETE FROM sendgrid_intents WHERE intent_id = %s", (intent_id,))

    def confirm_remove(
        self, intent_id: int, destination: str, list_id: str, emails: list[str]
    ) -> None:
        """Drop the members a completed removal job took off the list and retire the intent."""
        with self._connect() as db, db.cursor() as cursor:
            self._bump(cursor, destination, list_id)
            self._delete_emails(cursor, destination, list_id, emails)
            cursor.execute("DELETE FROM sendgrid_intents WHERE intent_id = %s", (intent_id,))

    def mark_uncertain(
        self,
        intent_id: int | None,
        destination: str,
        list_id: str,
        emails: list[str] | pl.Series,
    ) -> None:
        """An outcome we could not confirm: these members were possibly changed."""
        now = _now()
        values = emails.to_list() if isinstance(emails, pl.Series) else list(emails)
        with self._connect() as db, db.cursor() as cursor:
            self._bump(cursor, destination, list_id)
            cursor.execute(
                "INSERT INTO sendgrid_members SELECT %s, %s, email, NULL, '', TRUE, %s, TRUE "
                "FROM unnest(%s::text[]) AS email ON CONFLICT (destination, list_id, email) "
                "DO UPDATE SET uncertain = TRUE",
                (destination, list_id, now, values),
            )
            if intent_id is not None:
                cursor.execute("DELETE FROM sendgrid_intents WHERE intent_id = %s", (intent_id,))

    # -- one writer per list ---------------------------------------------------------------
    @contextmanager
    def list_lock(
        self, destination: str, list_id: str, run_id: str, wait_seconds: float = 600.0
    ) -> Iterator[None]:
        """One writer per (destination, list) across plan and apply, on every machine.

        A session-level advisory lock on a connection of its own, held for the whole sync:
        the server releases it when that connection ends, so a holder killed by SIGKILL (or
        a lost pod) frees the list. A second sync waits up to `wait_seconds`, then fails
        naming the run that holds the list.
        """
        key = _lock_key(destination, list_id)
        holder_db = self._open()
        holder_db.autocommit = True
        try:
            with holder_db.cursor() as cursor:
                deadline = time.monotonic() + wait_seconds
                while True:
                    cursor.execute("SELECT pg_try_advisory_lock(%s)", (key,))
                    if cursor.fetchone()[0]:
                        break
                    if time.monotonic() >= deadline:
                        cursor.execute(
                            "SELECT run_id FROM sendgrid_list_holders WHERE destination = %s "
                            "AND list_id = %s",
                            (destination, list_id),
                        )
                        row = cursor.fetchone()
                        raise StateStoreError(
                            f"Destination {destination!r}: list {list_id} is being synced by "
                            f"run {row[0] if row else '(unknown run)'}; waited "
                            f"{wait_seconds:.0f}s for it to finish. Rerun when that run has ended."
                        )
                    time.sleep(0.2)
                cursor.execute(
                    "INSERT INTO sendgrid_list_holders VALUES (%s, %s, %s) ON CONFLICT "
                    "(destination, list_id) DO UPDATE SET run_id = excluded.run_id",
                    (destination, list_id, run_id),
                )
            try:
                yield
            finally:
                with holder_db.cursor() as cursor:
                    cursor.execute("SELECT pg_advisory_unlock(%s)", (key,))
        except psycopg2.Error as error:
            raise self._explain(error) from None
        finally:
            holder_db.close()

    def for_list(self, destination: str, list_id: str) -> ListState:
        """A handle on one list's record, so its users never repeat (destination, list_id)."""
        return ListState(self, destination, list_id)  # type: ignore[arg-type]
