"""Rate limits, server faults, partial job failures and bad batches, against the sandbox."""

from __future__ import annotations

import polars as pl
import pytest

from sendgrid_pipeline.sendgrid.client import SendGridClient
from sendgrid_pipeline.sendgrid.errors import (
    ApiErrorDetail,
    SendGridBadRequestError,
    SendGridUnavailableError,
)
from sendgrid_pipeline.sync.apply import DestinationSync, SyncOptions
from sendgrid_pipeline_tests.devkit.sandbox import FaultPlan
from sendgrid_pipeline_tests.sync.support import (
    DESTINATION,
    emails,
    fast_client,
    log,
    on_list,
    open_store,
    people,
    recorded,
    sent_contacts,
)


def run(sandbox, state_at, desired, client=None, **options):
    engine = DestinationSync(
        client or fast_client(sandbox),
        open_store(state_at),
        DESTINATION,
        log,
        SyncOptions(**options),
    )
    return engine.run(desired)


def test_429_bursts_and_a_rate_limit_window_lose_nothing(sandbox, state_at) -> None:
    sandbox.set_faults(FaultPlan(burst_429=3, rate_limit=(8, 1.0)))
    target = people(*[f"p{i:03}" for i in range(60)])
    report = run(sandbox, state_at, target, max_contacts_per_upsert=10)
    assert on_list(sandbox) == emails(target)
    assert report.upserted == 60
    assert sandbox.fault_counts["429"] + sandbox.fault_counts.get("rate_limit", 0) >= 3


def test_5xx_dropped_connections_and_slow_answers_are_retried(sandbox, state_at) -> None:
    sandbox.set_faults(FaultPlan(scripted=["500", "drop", "503", "slow", "ok"], slow_seconds=1.0))
    client = fast_client(sandbox, timeout_seconds=0.5)
    target = people(*[f"p{i:03}" for i in range(30)])
    run(sandbox, state_at, target, client=client, max_contacts_per_upsert=10)
    assert on_list(sandbox) == emails(target)
    assert recorded(state_at) == emails(target)
    assert client.stats.retries >= 4


def test_retries_are_bounded_and_a_rerun_resumes(sandbox, state_at) -> None:
    target = people(*[f"p{i:03}" for i in range(30)])
    sandbox.set_faults(FaultPlan(error_5xx_rate=1.0, only_paths=r"^/v3/marketing/contacts$"))
    with pytest.raises(SendGridUnavailableError, match="rerun resumes safely"):
        run(sandbox, state_at, target, client=fast_client(sandbox, max_retries=2))
    assert on_list(sandbox) == set()
    sandbox.set_faults(FaultPlan())
    run(sandbox, state_at, target)
    assert on_list(sandbox) == emails(target)


def test_an_errored_job_rejects_only_its_bad_rows_with_sendgrids_reason(sandbox, state_at) -> None:
    sandbox.set_faults(FaultPlan(reject_email_pattern=r"^bad"))
    target = people("ann", "bad1", "bob", "bad2")
    report = run(sandbox, state_at, target)
    assert on_list(sandbox) == {"ann@example.com", "bob@example.com"}
    assert set(report.rejected["email"]) == {"bad1@example.com", "bad2@example.com"}
    assert report.rejected["reason"].unique().to_list() == ["sendgrid_rejected"]
    assert all(report.rejected["detail"].str.len_chars() > 0)
    assert recorded(state_at) == {"ann@example.com", "bob@example.com"}
    # not recorded, so the next sync tries them again and reports them again
    sandbox.reset_request_log()
    report = run(sandbox, state_at, target)
    assert report.plan.counts()["add"] == 2 and report.rejected.height == 2


def test_a_failed_job_records_nothing_and_reports_every_row(sandbox, state_at) -> None:
    sandbox.set_faults(FaultPlan(fail_jobs=True))
    report = run(sandbox, state_at, people("ann", "bob"))
    assert report.rejected.height == 2 and report.upserted == 0
    assert recorded(state_at) == set()
    sandbox.set_faults(FaultPlan())
    run(sandbox, state_at, people("ann", "bob"))
    assert on_list(sandbox) == {"ann@example.com", "bob@example.com"}


def test_a_400_for_one_value_isolates_the_bad_rows(sandbox, state_at) -> None:
    frame = pl.DataFrame(
        {
            "email": [f"p{i:02}@example.com" for i in range(20)],
            "first_name": ["X" * 51 if i in (3, 17) else f"P{i}" for i in range(20)],
        }
    )
    report = run(sandbox, state_at, frame, max_contacts_per_upsert=8)
    good = {f"p{i:02}@example.com" for i in range(20) if i not in (3, 17)}
    assert on_list(sandbox) == good
    assert set(report.rejected["email"]) == {"p03@example.com", "p17@example.com"}
    assert report.rejected["detail"].str.contains("first_name").all()
    assert recorded(state_at) == good


class PickyClient(SendGridClient):
    """Answers a bare 400 (no field, no index) for any body holding a poisoned address."""

    def upsert_contacts(self, body: bytes, contact_count: int) -> str:
        if b"poison" in body:
            raise SendGridBadRequestError(
                "PUT", "/v3/marketing/contacts", 400, [ApiErrorDetail("invalid value")]
            )
        return super().upsert_contacts(body, contact_count)


def test_a_400_without_row_indexes_is_isolated_by_halving(sandbox, state_at) -> None:
    names = [f"p{i:02}" for i in range(16)]
    names[11] = "poison"
    client = PickyClient(sandbox.api_key, sandbox.base_url, poll_interval_seconds=0.01)
    report = run(sandbox, state_at, people(*names), client=client)
    assert on_list(sandbox) == emails(people(*names)) - {"poison@example.com"}
    assert report.rejected["email"].to_list() == ["poison@example.com"]
    # 16 -> 8 -> 4 -> 2 -> 1: at most 2 * log2(16) + 1 requests, all good rows sent once
    assert sent_contacts(sandbox) == 15
