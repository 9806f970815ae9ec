"""Exact list membership against the sandbox: plan, apply, crash, brake, dry run, reconcile."""

from __future__ import annotations

import pytest

from sendgrid_pipeline.sendgrid.client import SendGridClient
from sendgrid_pipeline.sync.apply import SyncRefused
from sendgrid_pipeline_tests.sync.support import (
    DESTINATION,
    LIST_ID,
    Crash,
    emails,
    lose_state,
    on_list,
    people,
    recorded,
    sent_contacts,
    sync,
)


def test_join_change_leave_rejoin_keeps_the_list_exact(sandbox, state_at) -> None:
    report = sync(sandbox, state_at, people("ann", "bob", "cy"))
    assert on_list(sandbox) == emails(people("ann", "bob", "cy"))
    assert report.plan.counts() == {"add": 3, "update": 0, "remove": 0, "unchanged": 0}

    sandbox.reset_request_log()
    report = sync(sandbox, state_at, people("ann", "bob", "cy", renamed={"bob": "Robert"}))
    assert report.plan.counts() == {"add": 0, "update": 1, "remove": 0, "unchanged": 2}
    assert sent_contacts(sandbox) == 1
    assert sandbox.contact("bob@example.com")["first_name"] == "Robert"

    report = sync(sandbox, state_at, people("ann", "bob", renamed={"bob": "Robert"}))
    assert report.removed == 1
    assert on_list(sandbox) == {"ann@example.com", "bob@example.com"}
    assert sandbox.contact("cy@example.com") is not None  # left the list, not the account

    sync(sandbox, state_at, people("ann", "bob", "cy", renamed={"bob": "Robert"}))
    assert on_list(sandbox) == emails(people("ann", "bob", "cy"))
    assert recorded(state_at) == on_list(sandbox)


def test_a_rerun_without_change_sends_no_contact(sandbox, state_at) -> None:
    sync(sandbox, state_at, people("ann", "bob"))
    sandbox.reset_request_log()
    report = sync(sandbox, state_at, people("ann", "bob"))
    assert sent_contacts(sandbox) == 0
    assert [r for r in sandbox.requests if r.method in ("PUT", "DELETE")] == []
    assert report.plan.counts()["unchanged"] == 2


def test_contacts_added_by_hand_are_never_touched(sandbox, state_at) -> None:
    sandbox.add_contact_by_hand("early@example.com", [LIST_ID], first_name="Early")
    sync(sandbox, state_at, people("ann", "bob"))
    sandbox.add_contact_by_hand("late@example.com", [LIST_ID], first_name="Late")
    report = sync(sandbox, state_at, people("ann"))
    assert on_list(sandbox) == {"ann@example.com", "early@example.com", "late@example.com"}
    assert report.removed == 1  # only bob, whom we added
    assert sandbox.contact("early@example.com")["first_name"] == "Early"


def test_a_list_the_destination_owns_is_cleared_of_strangers(sandbox, state_at) -> None:
    sandbox.add_contact_by_hand("stranger@example.com", [LIST_ID])
    owner = DESTINATION.model_copy(update={"owns_list": True})
    sync(sandbox, state_at, people("ann"), destination=owner)
    assert on_list(sandbox) == {"ann@example.com"}


CRASH_POINTS = [
    ("upsert_sent", 1),  # after the PUT, before it is recorded as pending
    ("upsert_recorded", 1),  # pending recorded, job not yet polled
    ("upsert_recorded", 2),  # between batches
    ("upsert_confirmed", 1),  # job completed, state not yet written
    ("upsert_confirmed", 3),  # after some batches were confirmed
    ("remove_sent", 1),
    ("remove_confirmed", 1),
]


@pytest.mark.parametrize("crash_at", CRASH_POINTS, ids=[f"{s}-{n}" for s, n in CRASH_POINTS])
def test_a_crash_at_any_step_then_a_rerun_ends_exact(sandbox, state_at, crash_at) -> None:
    start = people(*[f"p{i:02}" for i in range(12)])
    sync(sandbox, state_at, start)
    # then: 9 join, one changes, three leave, in batches of 4
    names = [f"p{i:02}" for i in range(3, 21)]
    target = people(*names, renamed={"p05": "Changed"})
    planned_upserts = 9 + 1
    with pytest.raises(Crash):
        sync(sandbox, state_at, target, crash_at=crash_at, max_contacts_per_upsert=4)
    sandbox.wait_for_idle()  # SendGrid finishes jobs that were accepted before the crash
    sandbox.reset_request_log()
    report = sync(sandbox, state_at, target, max_contacts_per_upsert=4)
    assert on_list(sandbox) == emails(target)
    assert recorded(state_at) == emails(target)
    assert sandbox.contact("p05@example.com")["first_name"] == "Changed"
    resent = sent_contacts(sandbox)
    assert resent <= planned_upserts
    if crash_at[0] in ("upsert_confirmed", "remove_sent", "remove_confirmed"):
        assert resent == 0  # confirmed or pending work is settled, never sent again
    # a job SendGrid accepted but nobody recorded cannot be settled: the plan covers it
    unrecorded = crash_at[0] in ("upsert_sent", "remove_sent")
    assert report.recovered_jobs >= (0 if unrecorded else 1)
    sandbox.reset_request_log()
    sync(sandbox, state_at, target)
    assert sent_contacts(sandbox) == 0


def test_the_brake_stops_a_mass_removal_until_overridden(sandbox, state_at) -> None:
    everyone = [f"p{i:02}" for i in range(40)]
    sync(sandbox, state_at, people(*everyone))
    sandbox.reset_request_log()
    with pytest.raises(SyncRefused, match=r"remove 50% of it \(20 of 40 contacts"):
        sync(sandbox, state_at, people(*everyone[:20]))
    assert [r for r in sandbox.requests if r.method in ("PUT", "DELETE")] == []
    assert len(on_list(sandbox)) == 40
    sync(sandbox, state_at, people(*everyone[:20]), allow_mass_removal=True)
    assert on_list(sandbox) == emails(people(*everyone[:20]))


def test_the_brake_refuses_to_empty_a_list(sandbox, state_at) -> None:
    sync(sandbox, state_at, people("ann", "bob"))
    with pytest.raises(SyncRefused, match="would empty the list"):
        sync(sandbox, state_at, people())
    assert len(on_list(sandbox)) == 2


def test_a_dry_run_plans_and_sends_nothing(sandbox, state_at) -> None:
    sync(sandbox, state_at, people("ann", "bob", "cy"))
    sandbox.reset_request_log()
    report = sync(sandbox, state_at, people("bob", "dee", renamed={"bob": "B"}), dry_run=True)
    assert report.plan.counts() == {"add": 1, "update": 1, "remove": 2, "unchanged": 0}
    assert [r for r in sandbox.requests if r.method in ("PUT", "DELETE", "POST")] == []
    assert on_list(sandbox) == emails(people("ann", "bob", "cy"))
    sample = report.plan.sample()
    assert set(sample["action"]) == {"add", "update", "remove"}
    assert all("***" in e for e in sample["email"])  # masked


def test_reconcile_rebuilds_a_deleted_state_file(sandbox, state_at) -> None:
    sync(sandbox, state_at, people("ann", "bob", "cy"))
    sandbox.add_contact_by_hand("hand@example.com", [LIST_ID])
    lose_state(state_at)
    sandbox.reset_request_log()
    report = sync(sandbox, state_at, people("ann", "bob", "cy"))
    assert report.reconciled == "no record of this list yet"
    assert sent_contacts(sandbox) == 0  # the list already matched: nothing resent
    assert recorded(state_at) == emails(people("ann", "bob", "cy")) | {"hand@example.com"}
    report = sync(sandbox, state_at, people("ann", "bob"))
    assert on_list(sandbox) == {"ann@example.com", "bob@example.com", "hand@example.com"}


def test_edits_made_in_sendgrid_are_detected_and_repaired(sandbox, state_at) -> None:
    sync(sandbox, state_at, people("ann", "bob", "cy"))
    client = SendGridClient(sandbox.api_key, sandbox.base_url, poll_interval_seconds=0.01)
    bob = client.search_emails(["bob@example.com"])["bob@example.com"]
    client.wait_for_job(client.remove_from_list(LIST_ID, [bob]))  # removed by hand
    report = sync(sandbox, state_at, people("ann", "bob", "cy"))
    assert report.reconciled.startswith("the list holds 2 contacts")
    assert on_list(sandbox) == emails(people("ann", "bob", "cy"))


def test_reconcile_on_request_corrects_changed_fields(sandbox, state_at) -> None:
    sync(sandbox, state_at, people("ann", "bob"))
    sandbox.add_contact_by_hand("ann@example.com", [LIST_ID], first_name="Edited")
    sandbox.reset_request_log()
    assert sync(sandbox, state_at, people("ann", "bob")).plan.counts()["update"] == 0
    report = sync(sandbox, state_at, people("ann", "bob"), reconcile=True)
    assert report.plan.counts()["update"] == 1
    assert sandbox.contact("ann@example.com")["first_name"] == "Ann"


def test_an_address_erased_after_the_contacts_were_built_blocks_them_in_any_field(
    sandbox, state_at
) -> None:
    """The ledger is read again under the list's lock: a contact carrying a just-erased
    address, as its email or among its alternate emails, is neither sent nor kept."""
    import polars as pl

    from sendgrid_pipeline.sync.apply import DestinationSync, SyncOptions
    from sendgrid_pipeline_tests.sync.support import DESTINATION, log, open_store

    contacts = people("ann", "bob", "cy").with_columns(
        pl.Series(
            "alternate_emails",
            [["ann.work@example.com"], [], None],
            dtype=pl.List(pl.String),
        )
    )
    client = SendGridClient(sandbox.api_key, sandbox.base_url, poll_interval_seconds=0.01)
    engine = DestinationSync(
        client,
        open_store(state_at),
        DESTINATION,
        log,
        SyncOptions(),
        blocked_emails=lambda: pl.Series(["ann.work@example.com", "cy@example.com"]),
    )
    engine.run(contacts)
    assert on_list(sandbox) == {"bob@example.com"}
