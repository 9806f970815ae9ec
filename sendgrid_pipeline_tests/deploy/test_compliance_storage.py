"""The compliance files on a deployment's shared storage: an S3 emulator on loopback (moto).

With the storage base on an object store, the suppressions (Parquet and watermarks) are
objects under `<base>/suppressions/` that a contacts step on another pod reads; erasure
request files are read from `<base>/erasures/`, archived or rejected there, and audited under
`<base>/reports/erasures/`. Nothing goes to the local data directory.
"""

from __future__ import annotations

import dataclasses
import io
import json
import time
from pathlib import Path

import dagster as dg
import polars as pl

from sendgrid_pipeline.assets.erasures import ERASURE_FILE_TAG, ERASURE_JOB
from sendgrid_pipeline.config import load_config
from sendgrid_pipeline.erasure import email_hash
from sendgrid_pipeline.object_storage import StorageLocation
from sendgrid_pipeline.pipeline import PipelineResources, default_resources
from sendgrid_pipeline.settings import Settings
from sendgrid_pipeline.suppressions import FILE_PATH, WATERMARKS_PATH
from sendgrid_pipeline_tests.helpers import (
    definitions,
    export,
    resources_on_storage,
    step_failure_messages,
)
from sendgrid_pipeline_tests.test_erasure import on_two_lists
from sendgrid_pipeline_tests.test_unsubscribes import JOB as UNSUBSCRIBES_JOB
from sendgrid_pipeline_tests.test_unsubscribes import edit_destinations


def _on_s3(
    data_dir: Path, sandbox, s3_bucket: tuple[str, dict[str, str]]
) -> tuple[PipelineResources, StorageLocation]:
    """Step outputs, reports, suppressions and erasure requests under s3://<bucket>/deploy."""
    bucket, options = s3_bucket
    base = f"s3://{bucket}/deploy"
    location = StorageLocation(base, options)
    resources = resources_on_storage(data_dir, sandbox, base, storage_options=options)
    return dataclasses.replace(resources, erasure_requests=location.child("erasures")), location


def _metadata(result: dg.ExecuteInProcessResult, asset: str, partition: str | None = None):
    for event in result.get_asset_materialization_events():
        materialization = event.event_specific_data.materialization
        if materialization.asset_key == dg.AssetKey(asset) and materialization.partition == (
            partition
        ):
            return {k: getattr(v, "value", v) for k, v in materialization.metadata.items()}
    raise AssertionError(f"{asset} {partition or ''} was not materialized")


def test_unsubscribes_stored_on_s3_are_excluded_by_a_contacts_step_on_s3(
    data_dir: Path, sandbox, s3_bucket
) -> None:
    resources, location = _on_s3(data_dir, sandbox, s3_bucket)
    name = "newsletter_eu"
    list_id = load_config(data_dir).destination(name).list_id
    instance = dg.DagsterInstance.ephemeral()
    first = export(data_dir, sandbox, [name], instance=instance, resources=resources)
    assert first.success, step_failure_messages(first)
    victim = sorted(sandbox.list_member_emails(list_id))[0]
    sandbox.add_suppression("unsubscribes", victim.upper(), int(time.time()) - 10)

    job = definitions(data_dir, sandbox, resources=resources).resolve_job_def(UNSUBSCRIBES_JOB)
    read = job.execute_in_process(instance=instance, raise_on_error=False)
    assert read.success, step_failure_messages(read)
    stored = location.read_parquet(FILE_PATH)
    assert victim in stored["email"].to_list()
    marks = json.loads(location.read_bytes(WATERMARKS_PATH))
    assert "unsubscribe" in marks["accounts"]["SENDGRID_API_KEY"]
    assert _metadata(read, "sendgrid_unsubscribes")["path"] == location.url_for(FILE_PATH)
    assert not (data_dir / "suppressions").exists()  # nothing on this pod's disk

    edit_destinations(data_dir, exclude_suppressed=True)
    sandbox.reset_request_log()
    second = export(data_dir, sandbox, [name], instance=instance, resources=resources)
    assert second.success, step_failure_messages(second)
    sandbox.wait_for_idle()
    assert victim not in sandbox.list_member_emails(list_id)
    assert _metadata(second, "sendgrid_contacts", name)["rejected_suppressed"] == 1
    report = pl.read_csv(io.BytesIO(location.read_bytes(f"reports/rejected/{name}.csv")))
    assert report.filter(pl.col("reason") == "suppressed").height == 1
    assert not (data_dir / "suppressions").exists()


def test_an_erasure_request_dropped_on_s3_is_processed_archived_and_audited_there(
    data_dir: Path, sandbox, s3_bucket
) -> None:
    resources, location = _on_s3(data_dir, sandbox, s3_bucket)
    instance = dg.DagsterInstance.ephemeral()
    first = export(data_dir, sandbox, instance=instance, resources=resources)
    assert first.success, step_failure_messages(first)
    email, destinations = on_two_lists(data_dir, sandbox)
    list_ids = [load_config(data_dir).destination(n).list_id for n in destinations]
    local_before = (
        sorted(p.name for p in (data_dir / "erasures").rglob("*"))
        if (data_dir / "erasures").exists()
        else []
    )

    location.write_bytes(
        "erasures/gdpr-0001.csv", f"email,requested_by\n{email.upper()},dpo\n".encode()
    )
    defs = definitions(data_dir, sandbox, resources=resources)
    sensor = defs.resolve_sensor_def("erasure_request_sensor")
    context = dg.build_sensor_context(
        instance=instance, definitions=defs, resources={"sync_state": resources.sync_state}
    )
    [request] = sensor.evaluate_tick(context).run_requests
    assert request.tags[ERASURE_FILE_TAG] == "gdpr-0001.csv"
    job = defs.resolve_job_def(ERASURE_JOB)
    result = job.execute_in_process(instance=instance, tags=request.tags, raise_on_error=False)
    assert result.success, step_failure_messages(result)

    for list_id in list_ids:
        assert email not in sandbox.list_member_emails(list_id)
    assert sandbox.contact(email) is None
    stored = location.list("erasures")
    assert "erasures/gdpr-0001.csv" not in stored
    [archived] = [
        p for p in stored if p.startswith("erasures/archive/gdpr-0001.") and p.endswith(".csv")
    ]
    assert email.upper() in location.read_bytes(archived).decode()
    note = json.loads(location.read_bytes(archived.removesuffix(".csv") + ".result.json"))
    assert note == {"result": f"run {result.run_id}"}
    [audit] = location.list("reports/erasures")
    text = location.read_bytes(audit).decode()
    assert email not in text.lower()
    assert any(
        json.loads(line).get("email_sha256") == email_hash(email) for line in text.splitlines()
    )
    assert _metadata(result, "sendgrid_erasures")["audit_file"] == location.url_for(audit)
    assert sensor.evaluate_tick(context).run_requests == []  # the file is gone from the inbox

    # a bad file is rejected on the store, with the reason beside it (the email masked)
    location.write_bytes("erasures/bad.csv", b"email\nnot-an-email@\n")
    [request] = sensor.evaluate_tick(context).run_requests
    bad = job.execute_in_process(instance=instance, tags=request.tags, raise_on_error=False)
    assert not bad.success
    assert "erasures/bad.csv: row 1, field email" in step_failure_messages(bad)
    [rejected] = [p for p in location.list("erasures/rejected") if p.endswith(".csv")]
    reason = json.loads(location.read_bytes(rejected.removesuffix(".csv") + ".result.json"))
    assert "row 1, field email" in reason["error"] and "not-an-email@" not in reason["error"]
    assert not location.exists("erasures/bad.csv")

    # nothing was read from, or written to, this pod's disk
    local_after = (
        sorted(p.name for p in (data_dir / "erasures").rglob("*"))
        if (data_dir / "erasures").exists()
        else []
    )
    assert local_after == local_before
    assert not (data_dir / "reports").exists()


def test_deployed_wiring_reads_erasures_from_the_object_store_only(data_dir: Path) -> None:
    """As the settings wire it: <base>/erasures on an object store; locally the data
    directory's folder (the reports' base is then the data directory itself)."""
    config = load_config(data_dir)
    remote = Settings(data_dir=data_dir, storage_dir="s3://bucket/deployed")
    deployed = default_resources(remote, config)
    assert deployed.erasure_requests is not None
    assert deployed.erasure_requests.url == "s3://bucket/deployed/erasures"
    assert deployed.reports is not None and deployed.reports.base_dir == "s3://bucket/deployed"
    local = default_resources(Settings(data_dir=data_dir), config)
    assert local.erasure_requests is None
    assert local.reports is not None
    # so the suppressions stay <data dir>/suppressions/ and the audits <data dir>/reports/
    assert local.reports.base_dir == str(data_dir.resolve())
