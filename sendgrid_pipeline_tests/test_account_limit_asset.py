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


def test_a_refused_sync_creates_no_custom_field_either(data_dir, sandbox) -> None:
    """Fields are created before the plan exists: the limit must be checked before them."""
    config = load_config(data_dir)
    creating = [
        d.name
        for d in config.destinations
        if d.create_missing_custom_fields and d.field_mapping.custom_fields
    ]
    assert creating, "the sample has no destination that creates its custom fields"
    set_limit(data_dir, 10)
    result = export(data_dir, sandbox, partitions=[creating[0]])
    assert not result.success
    message = step_failure_messages(result)
    assert "over the account's limit of 10" in message and "Nothing was sent" in message
    assert [r.path for r in sandbox.requests if r.method != "GET"] == []  # no field, no contact


def test_a_sync_within_the_limit_still_creates_its_custom_fields(data_dir, sandbox) -> None:
    config = load_config(data_dir)
    name = next(d.name for d in config.destinations if d.create_missing_custom_fields)
    set_limit(data_dir, 1_000_000)
    result = export(data_dir, sandbox, partitions=[name])
    assert result.success, step_failure_messages(result)
    created = [r for r in sandbox.requests if r.method == "POST" and "field_definitions" in r.path]
    assert created
