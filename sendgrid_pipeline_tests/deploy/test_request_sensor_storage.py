"""The export request sensor reading request files from an object store (`<storage
base>/requests`, an S3 emulator on loopback): a drop becomes its runs once, is archived with
the run ids, and a bad file moves to rejected/ with the reason, as in a local folder."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import dagster as dg

from sendgrid_pipeline.object_storage import StorageLocation
from sendgrid_pipeline.schedules import refresh_all_tags
from sendgrid_pipeline.sensors import MAX_REQUEST_BYTES
from sendgrid_pipeline_tests.helpers import definitions, resources_on_storage
from sendgrid_pipeline_tests.test_request_sensor import record_runs


def stored_requests(data_dir: Path, bucket: str, options: dict[str, str]):
    storage_options = {"aws_endpoint_url": options["aws_endpoint_url"]}
    environment = {
        "AWS_ACCESS_KEY_ID": options["aws_access_key_id"],
        "AWS_SECRET_ACCESS_KEY": options["aws_secret_access_key"],
        "AWS_REGION": options["aws_region"],
    }
    base = StorageLocation(f"s3://{bucket}/pipeline", storage_options, environment=environment)
    wired = resources_on_storage(
        data_dir, None, base.url, storage_options=storage_options, environment=environment
    )
    return base.child("requests"), dataclasses.replace(wired, requests=base.child("requests"))


def tick(data_dir: Path, resources, instance: dg.DagsterInstance):
    defs = definitions(data_dir, resources=resources)
    sensor = defs.resolve_sensor_def("export_request_sensor")
    return sensor.evaluate_tick(dg.build_sensor_context(instance=instance, definitions=defs))


def test_a_request_on_s3_runs_once_and_is_archived(data_dir: Path, s3_bucket) -> None:
    bucket, options = s3_bucket
    requests, resources = stored_requests(data_dir, bucket, options)
    # neighbours in destinations.yaml: one run over their range (a gap is covered locally)
    body = {"destinations": ["newsletter_eu", "vip_program"], "requested_by": "jane"}
    requests.write_bytes("campaign.json", json.dumps(body).encode())
    instance = dg.DagsterInstance.ephemeral()

    first = tick(data_dir, resources, instance)
    [run] = first.run_requests
    assert run.tags.items() >= refresh_all_tags(["newsletter_eu", "vip_program"]).items()
    assert run.tags["sendgrid/requested_by"] == "jane"
    again = tick(data_dir, resources, instance)  # the daemon has not launched them yet
    assert [r.run_key for r in again.run_requests] == [r.run_key for r in first.run_requests]

    run_ids = record_runs(instance, first.run_requests)
    assert tick(data_dir, resources, instance).run_requests == []
    stored = requests.list()
    assert "campaign.json" not in stored
    [note] = [p for p in stored if p.startswith("archive/") and p.endswith(".result.json")]
    assert json.loads(requests.read_bytes(note))["run_ids"] == sorted(run_ids)
    assert requests.read_bytes(note.replace(".result.json", ".json")) == json.dumps(body).encode()
    assert not (data_dir / "requests" / "archive").exists()  # nothing went to the local folder

    # the same content dropped again is a new drop, with runs of its own
    requests.write_bytes("campaign.json", json.dumps(body).encode())
    assert len(tick(data_dir, resources, instance).run_requests) == 1


def test_bad_requests_on_s3_move_to_rejected_with_the_reason(data_dir: Path, s3_bucket) -> None:
    bucket, options = s3_bucket
    requests, resources = stored_requests(data_dir, bucket, options)
    requests.write_bytes("not_json.json", b"{destinations: all")
    requests.write_bytes("huge.json", b" " * (MAX_REQUEST_BYTES + 1))
    unknown = {"destinations": ["nowhere"], "requested_by": "jane"}
    requests.write_bytes("unknown.json", json.dumps(unknown).encode())
    requests.write_bytes("notes.txt", b"not a request: left alone")
    result = tick(data_dir, resources, dg.DagsterInstance.ephemeral())
    assert result.run_requests == []
    stored = requests.list()
    assert [p for p in stored if "/" not in p] == ["notes.txt"]
    errors = {
        p.split("/")[1].split(".")[0]: json.loads(requests.read_bytes(p))["error"]
        for p in stored
        if p.startswith("rejected/") and p.endswith(".result.json")
    }
    assert set(errors) == {"not_json", "huge", "unknown"}
    assert "over the limit" in errors["huge"]
    assert "nowhere" in errors["unknown"]


def test_an_unreachable_store_skips_the_tick_naming_the_url_and_no_secret(
    data_dir: Path, s3_bucket
) -> None:
    _, options = s3_bucket
    _, resources = stored_requests(data_dir, "no-such-bucket-here", options)
    result = tick(data_dir, resources, dg.DagsterInstance.ephemeral())
    assert result.run_requests == []
    assert "s3://no-such-bucket-here/pipeline/requests" in result.skip_message
    assert options["aws_secret_access_key"] not in result.skip_message
