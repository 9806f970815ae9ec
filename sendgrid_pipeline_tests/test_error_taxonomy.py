"""What a destination's sync may fail with: an error of ours is that destination's failure and
the others still sync; anything else is a bug, which fails the step at once, never retried."""

from __future__ import annotations

import dagster as dg
import polars as pl
import pytest

from sendgrid_pipeline.config import load_config
from sendgrid_pipeline.sync.apply import DestinationSync, SyncRefused
from sendgrid_pipeline_tests.helpers import export, step_failure_messages


def _events(result: dg.ExecuteInProcessResult, kind: str) -> list:
    return [e for e in result.all_events if e.event_type_value == kind]


def _synced(result: dg.ExecuteInProcessResult) -> set[str]:
    return {
        e.partition
        for e in _events(result, "ASSET_MATERIALIZATION")
        if e.event_specific_data.materialization.asset_key.path == ["sendgrid_list_sync"]
    }


def _first_sync_raises(monkeypatch: pytest.MonkeyPatch, error: Exception) -> list[str]:
    """Make the first destination's sync raise `error`; returns the destinations attempted."""
    attempted: list[str] = []
    real_run = DestinationSync.run

    def run(self: DestinationSync, contacts: pl.DataFrame):
        attempted.append(self.name)
        if len(attempted) == 1:
            raise error
        return real_run(self, contacts)

    monkeypatch.setattr(DestinationSync, "run", run)
    return attempted


@pytest.mark.parametrize("bug", [TypeError("unsupported operand"), KeyError("contact_id")])
def test_a_programming_error_fails_the_step_at_once_and_is_not_retried(
    data_dir, sandbox, monkeypatch, bug
) -> None:
    names = load_config(data_dir).destination_names[:2]
    attempted = _first_sync_raises(monkeypatch, bug)
    result = export(data_dir, sandbox, partitions=names)
    assert not result.success
    assert attempted == names[:1]  # not isolated: the next destination never ran
    assert not _synced(result)
    assert type(bug).__name__ in step_failure_messages(result)
    assert "Sync failed for" not in step_failure_messages(result)  # not a destination failure
    assert not _events(result, "STEP_UP_FOR_RETRY")


def test_an_error_of_ours_fails_its_destination_only(data_dir, sandbox, monkeypatch) -> None:
    names = load_config(data_dir).destination_names[:2]
    attempted = _first_sync_raises(monkeypatch, SyncRefused("refused for the test"))
    result = export(data_dir, sandbox, partitions=names)
    assert not result.success
    assert attempted == names
    assert _synced(result) == {names[1]}
    messages = step_failure_messages(result)
    assert f"Sync failed for {names[0]}: refused for the test" in messages
    assert not _events(result, "STEP_UP_FOR_RETRY")  # SyncRefused is not retryable
