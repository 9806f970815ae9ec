"""The whole export with its step outputs and reports on object storage: an S3 emulator on
loopback (moto) and a file:// base. The lists end up the same as with a local directory, the
outputs and reports are objects under the base, and a missing input fails at once, naming its
URL and no credential."""

from __future__ import annotations

import dataclasses
import io
from pathlib import Path

import dagster as dg
import polars as pl
import pytest

from sendgrid_pipeline.config import load_config
from sendgrid_pipeline.object_storage import StorageLocation
from sendgrid_pipeline.pipeline import default_resources, load_validated_config
from sendgrid_pipeline.settings import Settings
from sendgrid_pipeline_tests.helpers import (
    export,
    resources_for,
    resources_on_storage,
    step_failure_messages,
)
from sendgrid_pipeline_tests.test_end_to_end import expected_members

DESTINATIONS_ONLY_SYNC = ["sendgrid_list_sync"]


def contacts_metadata(result: dg.ExecuteInProcessResult) -> dict[str, dict]:
    """Each destination's sendgrid_contacts metadata, by partition."""
    found = {}
    for event in result.get_asset_materialization_events():
        materialization = event.event_specific_data.materialization
        if materialization.asset_key.path == ["sendgrid_contacts"] and materialization.partition:
            found[materialization.partition] = dict(materialization.metadata)
    return found


def sync_metadata(result: dg.ExecuteInProcessResult) -> dict[str, dict]:
    found = {}
    for event in result.get_asset_materialization_events():
        materialization = event.event_specific_data.materialization
        if materialization.asset_key.path == ["sendgrid_list_sync"] and materialization.partition:
            found[materialization.partition] = dict(materialization.metadata)
    return found


def assert_exported_to(
    result: dg.ExecuteInProcessResult,
    location: StorageLocation,
    data_dir: Path,
    sandbox,
) -> None:
    assert result.success, step_failure_messages(result)
    config = load_config(data_dir)
    expected = expected_members(data_dir)
    for destination in config.destinations:
        assert sandbox.list_member_emails(destination.list_id) == expected[destination.name]
    names = config.destination_names
    stored = set(location.list())
    assert "unified_profiles.parquet" in stored
    for name in names:
        assert f"sendgrid_contacts/{name}.parquet" in stored, name
        assert f"reports/rejected/{name}.csv" in stored, name
        contacts = location.read_parquet(f"sendgrid_contacts/{name}.parquet")
        assert set(contacts["email"]) == expected[name]
        report = pl.read_csv(
            io.BytesIO(location.read_bytes(f"reports/rejected/{name}.csv")), infer_schema=False
        )
        metadata = contacts_metadata(result)[name]
        assert report.height == metadata["rejected"].value
        assert metadata["rejected_report"] == dg.MetadataValue.url(
            location.url_for(f"reports/rejected/{name}.csv")
        )
    # nothing went to the local default places
    assert not (data_dir / "storage").exists()
    assert not (data_dir / "reports").exists()


# -- S3 (moto on loopback) -------------------------------------------------------------------------
def s3_settings(options: dict[str, str]) -> tuple[dict, dict]:
    """Storage options without a credential (shown in the UI) and the environment with them."""
    storage_options = {"aws_endpoint_url": options["aws_endpoint_url"]}
    environment = {
        "AWS_ACCESS_KEY_ID": options["aws_access_key_id"],
        "AWS_SECRET_ACCESS_KEY": options["aws_secret_access_key"],
        "AWS_REGION": options["aws_region"],
    }
    return storage_options, environment


def test_the_export_keeps_outputs_and_reports_on_s3(
    data_dir: Path, sandbox, s3_bucket: tuple[str, dict[str, str]]
) -> None:
    bucket, options = s3_bucket
    storage_options, environment = s3_settings(options)
    base = f"s3://{bucket}/pipeline"
    wired = resources_on_storage(
        data_dir, sandbox, base, storage_options=storage_options, environment=environment
    )
    result = export(data_dir, sandbox, resources=wired)
    location = StorageLocation(base, storage_options, environment=environment)
    assert_exported_to(result, location, data_dir, sandbox)


def test_sendgrid_rejections_are_reported_on_s3(
    data_dir: Path, sandbox, s3_bucket: tuple[str, dict[str, str]]
) -> None:
    from sendgrid_pipeline_tests.devkit.sandbox import FaultPlan

    bucket, options = s3_bucket
    storage_options, environment = s3_settings(options)
    base = f"s3://{bucket}/pipeline"
    wired = resources_on_storage(
        data_dir, sandbox, base, storage_options=storage_options, environment=environment
    )
    sandbox.set_faults(FaultPlan(reject_email_pattern=r"^a"))  # SendGrid refuses a few rows
    result = export(data_dir, sandbox, partitions=["winback_campaign"], resources=wired)
    assert result.success, step_failure_messages(result)
    metadata = sync_metadata(result)["winback_campaign"]
    url = f"{base}/reports/rejected/winback_campaign.sendgrid.csv"
    assert metadata["rejected_by_sendgrid_report"] == dg.MetadataValue.url(url)
    location = StorageLocation(base, storage_options, environment=environment)
    rejected = pl.read_csv(
        io.BytesIO(location.read_bytes("reports/rejected/winback_campaign.sendgrid.csv"))
    )
    assert rejected.height == metadata["rejected_by_sendgrid"].value > 0
    assert rejected["email"].str.contains(r"^a").all()


def test_a_missing_input_on_s3_fails_at_once_naming_the_url_and_no_secret(
    data_dir: Path, sandbox, s3_bucket: tuple[str, dict[str, str]]
) -> None:
    bucket, options = s3_bucket
    storage_options, environment = s3_settings(options)
    base = f"s3://{bucket}/empty"
    wired = resources_on_storage(
        data_dir, sandbox, base, storage_options=storage_options, environment=environment
    )
    result = export(
        data_dir,
        sandbox,
        partitions=["winback_campaign"],
        selection=DESTINATIONS_ONLY_SYNC,
        resources=wired,
    )
    assert not result.success
    messages = step_failure_messages(result)
    assert f"{base}/sendgrid_contacts/winback_campaign.parquet" in messages
    assert "materialize sendgrid_contacts for destination 'winback_campaign' first" in messages
    kinds = [event.event_type_value for event in result.all_events]
    assert "STEP_UP_FOR_RETRY" not in kinds and kinds.count("STEP_FAILURE") == 1
    logged = "\n".join(str(event) for event in result.all_events)
    for secret in (options["aws_secret_access_key"], options["aws_access_key_id"]):
        assert secret not in messages and secret not in logged
    assert [r for r in sandbox.requests if r.method != "GET"] == []  # nothing was sent


def test_the_settings_wire_an_s3_storage_base_from_the_environment(
    data_dir: Path, sandbox, s3_bucket: tuple[str, dict[str, str]]
) -> None:
    bucket, options = s3_bucket
    settings = Settings.from_env(
        {
            "SENDGRID_PIPELINE_DATA_DIR": str(data_dir),
            "SENDGRID_PIPELINE_STORAGE_DIR": f"s3://{bucket}/deployed",
            "AWS_ENDPOINT_URL": options["aws_endpoint_url"],
            "AWS_ACCESS_KEY_ID": options["aws_access_key_id"],
            "AWS_SECRET_ACCESS_KEY": options["aws_secret_access_key"],
            "AWS_REGION": options["aws_region"],
            "UNRELATED": "left out",
        }
    )
    assert settings.storage_dir == f"s3://{bucket}/deployed"
    assert set(settings.storage_environment) == {
        "AWS_ENDPOINT_URL",
        "AWS_ACCESS_KEY_ID",
        "AWS_SECRET_ACCESS_KEY",
        "AWS_REGION",
    }
    assert options["aws_secret_access_key"] not in repr(settings)
    deployed = default_resources(settings, load_validated_config(data_dir))
    assert deployed.io_manager.base_dir == deployed.reports.base_dir == settings.storage_dir
    assert options["aws_secret_access_key"] not in repr(deployed.io_manager)
    # the sandbox as SendGrid; the storage exactly as deployed
    local = resources_for(data_dir, sandbox)
    wired = dataclasses.replace(deployed, sendgrid=local.sendgrid, sync_state=local.sync_state)
    result = export(data_dir, sandbox, resources=wired)
    location = StorageLocation(settings.storage_dir, environment=settings.storage_environment)
    assert_exported_to(result, location, data_dir, sandbox)


# -- file:// --------------------------------------------------------------------------------------
def test_the_export_keeps_outputs_and_reports_on_a_file_url(
    data_dir: Path, sandbox, tmp_path: Path
) -> None:
    base = (tmp_path / "shared storage").as_uri()  # a space, percent-encoded in the URL
    wired = resources_on_storage(data_dir, sandbox, base)
    result = export(data_dir, sandbox, resources=wired)
    location = StorageLocation(base)
    assert_exported_to(result, location, data_dir, sandbox)
    assert (tmp_path / "shared storage" / "reports" / "rejected" / "vip_program.csv").is_file()

    empty = (tmp_path / "empty").as_uri()
    result = export(
        data_dir,
        sandbox,
        selection=DESTINATIONS_ONLY_SYNC,
        partitions=["vip_program"],
        resources=resources_on_storage(data_dir, sandbox, empty),
    )
    assert not result.success
    assert f"{empty}/sendgrid_contacts/vip_program.parquet" in step_failure_messages(result)


@pytest.mark.parametrize("storage", ["default", "own directory"])
def test_the_default_layout_keeps_the_reports_in_the_data_directory(
    data_dir: Path, tmp_path: Path, storage: str
) -> None:
    environ = {"SENDGRID_PIPELINE_DATA_DIR": str(data_dir)}
    if storage != "default":
        environ["SENDGRID_PIPELINE_STORAGE_DIR"] = str(tmp_path / "outputs")
    settings = Settings.from_env(environ)
    deployed = default_resources(settings, load_validated_config(data_dir))
    if storage == "default":
        assert deployed.io_manager.base_dir == str(data_dir / "storage")
        assert deployed.reports.base_dir == str(data_dir)
    else:
        assert (
            deployed.io_manager.base_dir == deployed.reports.base_dir == str(tmp_path / "outputs")
        )
