"""The account's contact limit through the sync asset: numeric metadata, and a refusal."""

from __future__ import annotations

from pathlib import Path

import dagster as dg
import yaml

from sendgrid_pipeline.config import load_config
from sendgrid_pipeline_tests.helpers import export, step_failure_messages


def set_limit(data_dir: Path, max_contacts: int) -> None:
    """The same max_contacts on every destination (the sample's share one account)."""
    path = data_dir / "destinations.yaml"
    document = yaml.safe_load(path.read_text())
    for destination in document["destinations"]:
        destination["max_contacts"] = max_contacts
    path.write_text(yaml.safe_dump(document))


def sync_metadata(result: dg.ExecuteInProcessResult) -> dict:
    for event in result.all_events:
        if event.event_type_value == "ASSET_MATERIALIZATION":
            record = event.event_specific_data.materialization
            if record.asset_key.path == ["sendgrid_list_sync"]:
                return dict(record.metadata)
    raise AssertionError("no sendgrid_list_sync materialization")


def test_the_account_counts_are_numeric_metadata_plotted_across_runs(data_dir, sandbox) -> None:
    set_limit(data_dir, 1_000_000)
    name = load_config(data_dir).destination_names[0]
    result = export(data_dir, sandbox, partitions=[name])
    assert result.success, step_failure_messages(result)
    metadata = sync_metadata(result)
    for key in ("account_contact_count", "account_billable_count", "account_contact_limit"):
        assert isinstance(metadata[key], dg.IntMetadataValue), key
    assert metadata["account_contact_count"].value == 0  # read before the first upsert
    assert metadata["account_contact_limit"].value == 1_000_000
    assert metadata["account_limit_check"].value.startswith("ok: 0 + up to ")


def test_a_sync_over_the_account_limit_fails_the_step_and_sends_nothing(data_dir, sandbox) -> None:
    set_limit(data_dir, 10)
    name = load_config(data_dir).destination_names[0]
    result = export(data_dir, sandbox, partitions=[name])
    assert not result.success
    message = step_failure_messages(result)
    assert name in message and "over the account's limit of 10" in message
    assert "holds 0 contacts" in message and "Nothing was sent" in message
    assert [r for r in sandbox.requests if r.method in ("PUT", "DELETE")] == []
