"""The erasure ledger on both state databases: SQLite beside the sync state, and PostgreSQL."""

from __future__ import annotations

from pathlib import Path

import polars as pl
import pytest

from sendgrid_pipeline.erasure_ledger import (
    ErasureLedger,
    PostgresErasureLedger,
    SqliteErasureLedger,
    erasure_ledger,
)
from sendgrid_pipeline.state import SyncStateResource, SyncStateStore


def subjects(*rows: tuple[str, str | None]) -> pl.DataFrame:
    return pl.DataFrame(
        [(email, cid, "dpo") for email, cid in rows],
        schema={"email": pl.String, "customer_id": pl.String, "requested_by": pl.String},
        orient="row",
    )


@pytest.fixture(params=["sqlite", "postgres"])
def ledger(request, tmp_path: Path) -> ErasureLedger:
    if request.param == "sqlite":
        return SqliteErasureLedger(tmp_path / "sync_state.sqlite")
    return PostgresErasureLedger(request.getfixturevalue("postgres_dsn"))


def test_recorded_people_are_blocked_until_withdrawn(ledger: ErasureLedger) -> None:
    ledger.record(subjects(("a@example.com", "C1"), ("b@example.com", None)), "req-1.csv")
    blocked = ledger.blocked().sort("email")
    assert blocked.rows() == [("a@example.com", "C1", "erased"), ("b@example.com", None, "erased")]
    assert ledger.subjects("pending").height == 2
    assert ledger.withdraw([], ["C1"]) == 1
    assert ledger.withdraw(["b@example.com"], []) == 1
    assert ledger.withdraw(["b@example.com"], []) == 0  # twice is harmless
    assert ledger.blocked().height == 0
    ledger.record(subjects(("a@example.com", None)), "req-2.csv")  # erased again
    assert ledger.blocked().rows() == [("a@example.com", "C1", "erased")]  # id kept


def test_an_erased_person_stays_erased_when_asked_again(ledger: ErasureLedger) -> None:
    ledger.record(subjects(("a@example.com", None)), "req-1.csv")
    ledger.mark_erased(["a@example.com"])
    ledger.record(subjects(("a@example.com", None)), "req-2.csv")
    assert ledger.subjects("erased")["email"].to_list() == ["a@example.com"]
    assert ledger.subjects("pending").height == 0


def test_steps_are_written_ahead_and_settled(ledger: ErasureLedger) -> None:
    first = ledger.begin_step("run-1", "SENDGRID_API_KEY", "contact_deletion", None, 3)
    second = ledger.begin_step("run-1", "SENDGRID_API_KEY", "list_removal", "L1", 2)
    assert second > first
    ledger.step_sent(first, "job-1")
    ledger.step_confirmed(first)
    ledger.step_failed(second)
    steps = ledger.steps("run-1")
    assert [(s.kind, s.job_id, s.status) for s in steps] == [
        ("contact_deletion", "job-1", "confirmed"),
        ("list_removal", None, "failed"),
    ]
    assert ledger.steps("run-2") == []


def test_the_ledger_shares_the_sync_state_file(tmp_path: Path) -> None:
    resource = SyncStateResource(directory=str(tmp_path))
    SyncStateStore(tmp_path / "sync_state.sqlite")  # the state first, then the ledger beside it
    ledger = erasure_ledger(resource)
    assert isinstance(ledger, SqliteErasureLedger)
    ledger.record(subjects(("a@example.com", None)), "req.csv")
    assert (tmp_path / "sync_state.sqlite").exists()
    assert erasure_ledger(resource).blocked().height == 1  # a new handle reads the same file
