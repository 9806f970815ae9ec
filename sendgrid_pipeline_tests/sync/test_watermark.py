"""No stale plan is applied: a sync from profiles older than the last applied plan's is refused.

On both stores (the PostgreSQL variant needs the server CI starts).
"""

from __future__ import annotations

import sqlite3
from datetime import UTC, datetime, timedelta

import pytest

from sendgrid_pipeline.state import SyncStateStore
from sendgrid_pipeline.sync.apply import SyncRefused
from sendgrid_pipeline_tests.sync.support import (
    DESTINATION,
    LIST_ID,
    emails,
    on_list,
    open_store,
    people,
    sent_contacts,
    sync,
)

EARLIER = datetime(2026, 11, 29, 8, 0, tzinfo=UTC)
LATER = EARLIER + timedelta(minutes=5)


def test_the_older_of_two_runs_applying_last_is_refused(sandbox, state_at) -> None:
    # run 1 read the profiles first (ann, bob, cy); run 2 read them later, after cy left and
    # dee joined, and applied first
    sync(sandbox, state_at, people("ann", "bob", "dee"), profiles_snapshot=LATER)
    sandbox.reset_request_log()
    with pytest.raises(SyncRefused) as refused:
        sync(sandbox, state_at, people("ann", "bob", "cy"), profiles_snapshot=EARLIER)
    message = str(refused.value)
    assert EARLIER.isoformat() in message and LATER.isoformat() in message
    assert "rerun the export from the profiles" in message
    assert refused.value.retryable is False
    assert sent_contacts(sandbox) == 0 and not [r for r in sandbox.requests if r.method != "GET"]
    assert on_list(sandbox) == emails(people("ann", "bob", "dee"))
    applied = open_store(state_at).applied_snapshot(DESTINATION.name, LIST_ID)
    assert applied is not None and applied[0] == LATER


def test_the_same_or_a_newer_snapshot_syncs_and_moves_the_watermark(sandbox, state_at) -> None:
    sync(sandbox, state_at, people("ann"), profiles_snapshot=EARLIER)
    sync(sandbox, state_at, people("ann", "bob"), profiles_snapshot=EARLIER)  # a retry
    sync(sandbox, state_at, people("bob"), profiles_snapshot=LATER.replace(tzinfo=None))
    assert on_list(sandbox) == emails(people("bob"))
    store = open_store(state_at)
    assert store.applied_snapshot(DESTINATION.name, LIST_ID)[0] == LATER
    store.record_snapshot(DESTINATION.name, LIST_ID, EARLIER, "late-writer")  # never back
    assert store.applied_snapshot(DESTINATION.name, LIST_ID) == (LATER, "(outside Dagster)")


def test_a_dry_run_and_a_sync_without_snapshot_leave_the_watermark(sandbox, state_at) -> None:
    sync(sandbox, state_at, people("ann"), profiles_snapshot=LATER, dry_run=True)
    sync(sandbox, state_at, people("ann"))  # no snapshot known: not checked, not recorded
    assert open_store(state_at).applied_snapshot(DESTINATION.name, LIST_ID) is None
    sync(sandbox, state_at, people("ann", "bob"), profiles_snapshot=EARLIER)
    sync(sandbox, state_at, people("ann", "bob"))  # still not checked without a snapshot
    assert on_list(sandbox) == emails(people("ann", "bob"))


def test_a_state_file_from_before_snapshots_is_migrated_in_place(sqlite_state_path) -> None:
    """SQLite only: the file's schema is brought up to date when it is opened."""
    store = SyncStateStore(sqlite_state_path)
    state = store.for_list(DESTINATION.name, LIST_ID)
    state.confirm_upsert(state.write_intent("upsert", people("ann"), "r1"), people_json("ann"))
    with sqlite3.connect(sqlite_state_path) as db:
        db.execute("DROP TABLE snapshots")
    reopened = SyncStateStore(sqlite_state_path).for_list(DESTINATION.name, LIST_ID)
    assert reopened.applied_snapshot() is None and reopened.member_count() == 1
    reopened.record_snapshot(LATER, "r2")
    assert reopened.applied_snapshot() == (LATER, "r2")


def people_json(*names: str):
    frame = people(*names)
    return frame.select("email").with_columns(contact_json=frame["email"])
