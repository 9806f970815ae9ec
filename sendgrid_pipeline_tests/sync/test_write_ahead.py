"""Crash safety when the world changes between the crash and the rerun (write-ahead intents).

Each test fails on a design that records a change only after SendGrid accepted it.
"""

from __future__ import annotations

from contextlib import contextmanager

import polars as pl
import pytest

from sendgrid_pipeline.config import FieldMapping
from sendgrid_pipeline.sendgrid.errors import SendGridUnavailableError
from sendgrid_pipeline.state import StateStoreError, SyncStateStore
from sendgrid_pipeline.sync.apply import DestinationSync, SyncOptions, SyncRefused
from sendgrid_pipeline_tests.devkit.sandbox import FaultPlan
from sendgrid_pipeline_tests.sync.support import (
    DESTINATION,
    LIST_ID,
    Crash,
    emails,
    fast_client,
    log,
    lose_state,
    on_list,
    open_store,
    people,
    recorded,
    sent_contacts,
    sync,
)

NAMES = [f"p{i:02}" for i in range(30)]


@pytest.mark.parametrize("step", ["upsert_intent", "upsert_sent", "upsert_recorded"])
def test_a_crash_around_an_upsert_then_the_joiners_leave(sandbox, state_at, step) -> None:
    sync(sandbox, state_at, people(*NAMES[:10]))
    with pytest.raises(Crash):
        sync(sandbox, state_at, people(*NAMES[:20]), crash_at=(step, 1))
    sandbox.wait_for_idle()
    # the world moves on before the rerun: the ten who were being added leave again
    target = people(*NAMES[:10], renamed={"p01": "Renamed"})
    sync(sandbox, state_at, target, allow_mass_removal=True)
    sandbox.wait_for_idle()
    assert on_list(sandbox) == emails(target)
    assert sandbox.contact("p01@example.com")["first_name"] == "Renamed"


def test_an_applied_but_unrecorded_removal_is_undone_when_they_rejoin(sandbox, state_at) -> None:
    everyone = people(*NAMES[:20])
    sync(sandbox, state_at, everyone)
    with pytest.raises(Crash):  # the DELETE went through; its job id was never recorded
        sync(sandbox, state_at, people(*NAMES[:17]), crash_at=("remove_sent", 1))
    sandbox.wait_for_idle()
    assert on_list(sandbox) == emails(people(*NAMES[:17]))  # SendGrid removed them
    sync(sandbox, state_at, everyone)  # and they rejoin the segments
    assert on_list(sandbox) == emails(everyone)


def test_lost_answers_are_possibly_applied_and_converge(sandbox, state_at) -> None:
    sync(sandbox, state_at, people(*NAMES[:10]))
    client = fast_client(sandbox, max_retries=1)
    sandbox.set_faults(FaultPlan(only_paths="^/v3/marketing/contacts$", lost_rate=1.0))
    engine = DestinationSync(
        client, open_store(state_at), DESTINATION, log, SyncOptions(), run_id="lost"
    )
    with pytest.raises(SendGridUnavailableError):
        engine.run(people(*NAMES[:20]))  # applied twice, never answered
    assert open_store(state_at).has_uncertain(DESTINATION.name, LIST_ID) == 10
    sandbox.set_faults(FaultPlan())
    sandbox.wait_for_idle()
    target = people(*NAMES[:5], *NAMES[10:15])  # half of the old ones and of the new ones leave
    report = sync(sandbox, state_at, target, allow_mass_removal=True)
    assert report.reconciled.endswith("unconfirmed change")
    assert on_list(sandbox) == emails(target)
    assert recorded(state_at) == emails(target)


def test_an_unreadable_errors_file_leaves_nothing_unrecorded(sandbox, state_at) -> None:
    sandbox.set_faults(FaultPlan(reject_email_pattern="^p0[0-4]", unreadable_errors_files=True))
    first = people(*NAMES[:10])
    report = sync(sandbox, state_at, first)
    assert report.upserted == 0  # the job errored and we cannot tell which rows it took
    assert open_store(state_at).has_uncertain(DESTINATION.name, LIST_ID) == 10
    sandbox.set_faults(FaultPlan())
    target = people(*NAMES[7:12])
    sync(sandbox, state_at, target, allow_mass_removal=True)
    assert on_list(sandbox) == emails(target)


def test_a_full_disk_before_sending_sends_nothing(sandbox, sqlite_state_path, monkeypatch) -> None:
    """SQLite only: its own "database or disk is full" (PostgreSQL's is a server error)."""
    state_at = sqlite_state_path
    sync(sandbox, state_at, people(*NAMES[:5]))
    sandbox.reset_request_log()
    real_connect = SyncStateStore._connect

    @contextmanager
    def full_disk(self):  # SQLite's own "database or disk is full": no page may be added
        with real_connect(self) as db:
            (pages,) = db.execute("PRAGMA page_count").fetchone()
            db.execute(f"PRAGMA max_page_count = {pages}")
            yield db

    monkeypatch.setattr(SyncStateStore, "_connect", full_disk)
    with pytest.raises(StateStoreError, match=r"full.*free disk space"):
        sync(sandbox, state_at, people(*NAMES[:30]), max_contacts_per_upsert=5)
    monkeypatch.undo()
    sandbox.wait_for_idle()
    # whatever reached SendGrid is recorded, as a member or as a change written ahead
    store = open_store(state_at)
    ahead = {e for i in store.intents(DESTINATION.name, LIST_ID) for e in i.rows["email"]}
    assert on_list(sandbox) <= recorded(state_at) | ahead
    target = people(*NAMES[20:30])  # the world moves on: most of them leave again
    sync(sandbox, state_at, target, allow_mass_removal=True)
    assert on_list(sandbox) == emails(target)


def test_state_errors_name_the_file_and_the_recovery(tmp_path) -> None:
    broken = tmp_path / "sync_state.sqlite"
    broken.write_bytes(b"this is not a database, it is jane.doe@example.com" * 100)
    with pytest.raises(StateStoreError) as raised:
        SyncStateStore(broken)
    message = str(raised.value)
    assert str(broken) in message and "reconcile" in message and "restore" in message
    assert "jane.doe" not in message
    assert raised.value.retryable is False


def test_a_lost_state_on_the_day_the_profiles_are_truncated_is_braked(sandbox, state_at) -> None:
    everyone = people(*NAMES)
    sync(sandbox, state_at, everyone)
    lose_state(state_at)  # lost, and the same day the source delivers a tenth of the profiles
    truncated = people(*NAMES[:3])
    with pytest.raises(SyncRefused, match="no record of list"):
        sync(sandbox, state_at, truncated)
    assert on_list(sandbox) == emails(everyone)


def test_contacts_we_send_later_are_managed_again_after_a_lost_state(sandbox, state_at) -> None:
    everyone = people(*NAMES)
    sync(sandbox, state_at, everyone)
    lose_state(state_at)
    sync(sandbox, state_at, people(*NAMES[:3]), allow_mass_removal=True)  # kept, not ours
    sync(sandbox, state_at, everyone)  # the source is repaired: all of them are ours again
    churned = people(*NAMES[:27])  # a normal churn afterwards
    sync(sandbox, state_at, churned)
    assert on_list(sandbox) == emails(churned)


def test_a_reconcile_does_not_resend_contacts_with_an_identifier(sandbox, state_at) -> None:
    destination = DESTINATION.model_copy(
        update={
            "field_mapping": FieldMapping(
                email="email", first_name="first_name", external_id="customer_id"
            )
        }
    )
    target = people(*NAMES[:12]).with_columns(
        pl.col("email").str.extract(r"^(\w+)@").alias("external_id")
    )
    sync(sandbox, state_at, target, destination=destination)
    sandbox.reset_request_log()
    report = sync(sandbox, state_at, target, destination=destination, reconcile=True)
    assert report.reconciled == "requested"
    assert sent_contacts(sandbox) == 0
    assert report.plan.unchanged == 12


def test_a_state_restored_from_an_older_backup_is_reconciled(sandbox, sqlite_state_path) -> None:
    """SQLite only: the file itself is restored (a database restore is the same generation
    check, covered by the state-store tests)."""
    state_at = sqlite_state_path
    sync(sandbox, state_at, people(*NAMES[:20]))
    backup = state_at.read_bytes()
    sync(sandbox, state_at, people(*NAMES[:25]))  # five join after the backup
    witnessed = open_store(state_at).generation(DESTINATION.name, LIST_ID)
    for leftover in state_at.parent.glob(state_at.name + "-*"):
        leftover.unlink()  # the WAL of the newer state goes with it
    state_at.write_bytes(backup)  # the disk is restored from last night's backup
    target = people(*NAMES[:20])  # and the five leave again
    report = sync(sandbox, state_at, target, witnessed_generation=witnessed)
    assert "older than the last sync" in report.reconciled
    assert on_list(sandbox) == emails(target)
