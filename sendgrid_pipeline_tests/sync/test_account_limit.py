"""The account's contact limit (max_contacts): a sync over it sends nothing and says why."""

from __future__ import annotations

from pathlib import Path

import pytest

from sendgrid_pipeline.assets.sync import account_metadata
from sendgrid_pipeline.sync.options import SyncRefused
from sendgrid_pipeline_tests.devkit.sandbox import SandboxServer
from sendgrid_pipeline_tests.sync.support import (
    DESTINATION,
    LIST_ID,
    on_list,
    people,
    recorded,
    sync,
)

COUNT_PATH = "/v3/marketing/contacts/count"


def limited(max_contacts: int | None, margin: float = 0.0):
    return DESTINATION.model_copy(
        update={"max_contacts": max_contacts, "contact_limit_margin": margin}
    )


def fill_account(sandbox: SandboxServer, n: int) -> None:
    """`n` contacts in the account that are on no list (another team's, say)."""
    for i in range(n):
        sandbox.add_contact_by_hand(f"other{i}@example.com", [])


def changes(sandbox: SandboxServer) -> list:
    """Requests that change the account (a first sync's export reads the list: not one)."""
    return [
        r
        for r in sandbox.requests
        if r.method in ("PUT", "DELETE")
        or (r.method == "POST" and r.path.startswith("/v3/marketing/field_definitions"))
    ]


def test_a_sync_over_the_contact_limit_sends_nothing_and_says_why(
    sandbox: SandboxServer, state_at: Path | str
) -> None:
    fill_account(sandbox, 3)
    sandbox.reset_request_log()
    with pytest.raises(SyncRefused) as refused:
        sync(sandbox, state_at, people("ann", "bob", "cat"), destination=limited(5))
    message = str(refused.value)
    assert refused.value.retryable is False
    assert "'test_dest'" in message
    assert "holds 3 contacts" in message
    assert "up to 3 new ones" in message
    assert "6 in all" in message and "limit of 5" in message and "by 1" in message
    assert "Nothing was sent" in message and "raise max_contacts" in message
    assert changes(sandbox) == []  # nothing that changes anything was requested
    assert [r.path for r in sandbox.requests if r.path == COUNT_PATH] == [COUNT_PATH]
    assert on_list(sandbox) == set()
    assert sandbox.stats()["upsert_contacts"] == 0
    assert recorded(state_at) == set()


def test_the_margin_keeps_part_of_the_limit_free(
    sandbox: SandboxServer, state_at: Path | str
) -> None:
    fill_account(sandbox, 90)
    sandbox.reset_request_log()
    with pytest.raises(SyncRefused) as refused:
        sync(sandbox, state_at, people("ann"), destination=limited(100, margin=0.1))
    assert "limit of 90 (max_contacts 100 less contact_limit_margin 10%)" in str(refused.value)
    assert changes(sandbox) == []


def test_a_sync_within_the_limit_reports_the_account_counts(
    sandbox: SandboxServer, state_at: Path | str
) -> None:
    fill_account(sandbox, 2)
    sandbox._store.billable_count = 7  # a month whose billable figure differs
    report = sync(sandbox, state_at, people("ann", "bob"), destination=limited(4))
    assert on_list(sandbox) == {"ann@example.com", "bob@example.com"}
    assert report.account is not None
    assert (report.account.contact_count, report.account.billable_count) == (2, 7)
    assert (report.account.new_contacts, report.account.limit) == (2, 4)
    metadata = account_metadata(report)
    assert metadata["account_contact_count"] == 2
    assert metadata["account_billable_count"] == 7
    assert metadata["account_contact_limit"] == 4
    assert metadata["account_limit_check"].startswith("ok: 2 + up to 2 new <= limit 4")
    # Contacts already on the list are not new: the next sync fits although 4 = the limit.
    again = sync(sandbox, state_at, people("ann", "bob"), destination=limited(4))
    assert again.account is not None and again.account.contact_count == 4
    assert again.account.new_contacts == 0


def test_a_dry_run_over_the_limit_reports_the_refusal_and_sends_nothing(
    sandbox: SandboxServer, state_at: Path | str
) -> None:
    fill_account(sandbox, 5)
    sandbox.reset_request_log()
    report = sync(sandbox, state_at, people("ann"), destination=limited(5), dry_run=True)
    assert changes(sandbox) == []
    assert report.account is not None and "limit of 5" in report.account.refusal
    check = account_metadata(report)["account_limit_check"]
    assert check.startswith("over the limit (dry run, would refuse)")


def test_without_a_limit_the_counts_are_still_reported(
    sandbox: SandboxServer, state_at: Path | str
) -> None:
    report = sync(sandbox, state_at, people("ann"))
    assert report.account is not None
    assert report.account.limit is None and report.account.contact_count == 0
    metadata = account_metadata(report)
    assert metadata["account_contact_count"] == 0
    assert "account_contact_limit" not in metadata
    assert metadata["account_limit_check"] == "not checked: no max_contacts for this account"


def test_updates_and_removals_pass_an_account_already_over_its_limit(
    sandbox: SandboxServer, state_at: Path | str
) -> None:
    sync(sandbox, state_at, people("ann", "bob"))
    fill_account(sandbox, 10)
    report = sync(sandbox, state_at, people("ann", renamed={"ann": "Anna"}), destination=limited(5))
    assert report.plan.adds == 0
    assert on_list(sandbox) == {"ann@example.com"}
    assert sandbox.contact("ann@example.com")["first_name"] == "Anna"
    assert LIST_ID in sandbox.contact("ann@example.com")["list_ids"]
