"""The periodic reconcile: the safety net for a drift that no count and no record reveals.

Someone removes one of our contacts from the list by hand and adds another: the list's count
still matches the record, nothing is uncertain, so only the period can find the missing one.
"""

from __future__ import annotations

import time
from datetime import timedelta

import pytest

from sendgrid_pipeline_tests.sync.support import LIST_ID, emails, fast_client, on_list, people, sync

NAMES = [f"p{i:02}" for i in range(12)]


def drift_by_hand(sandbox) -> tuple[str, str]:
    """Remove a managed contact and add a stranger in SendGrid's UI: the count is unchanged."""
    removed = "p03@example.com"
    contact_id = sandbox.contact(removed)["id"]
    fast_client(sandbox).remove_from_list(LIST_ID, [contact_id])
    stranger = "stranger@example.org"
    sandbox.add_contact_by_hand(stranger, [LIST_ID])
    sandbox.wait_for_idle()
    return removed, stranger


def exports(sandbox) -> int:
    return sum(
        1 for r in sandbox.requests if r.method == "POST" and r.path.endswith("/contacts/exports")
    )


@pytest.mark.parametrize("period", [timedelta(0), timedelta(seconds=0.2)])
def test_a_due_periodic_reconcile_restores_a_contact_removed_by_hand(
    sandbox, state_at, period
) -> None:
    everyone = people(*NAMES)
    sync(sandbox, state_at, everyone)
    sandbox.wait_for_idle()
    removed, stranger = drift_by_hand(sandbox)
    before = exports(sandbox)
    if period:
        time.sleep(period.total_seconds() * 2)  # let the period pass (not a timed assertion)
    report = sync(sandbox, state_at, everyone, reconcile_every=period)
    sandbox.wait_for_idle()
    assert exports(sandbox) == before + 1  # the list's true membership was read
    assert removed in on_list(sandbox)  # ours again
    assert stranger in on_list(sandbox)  # not ours: left alone
    assert on_list(sandbox) == emails(everyone) | {stranger}
    assert report is not None


def test_a_reconcile_not_yet_due_trusts_the_record(sandbox, state_at) -> None:
    """Fails if reconciles ran on every sync (the period is what triggers it here)."""
    everyone = people(*NAMES)
    sync(sandbox, state_at, everyone)
    sandbox.wait_for_idle()
    removed, _ = drift_by_hand(sandbox)
    before = exports(sandbox)
    sync(sandbox, state_at, everyone, reconcile_every=timedelta(days=7))
    sandbox.wait_for_idle()
    assert exports(sandbox) == before
    assert removed not in on_list(sandbox)  # the drift stays until the period is due
