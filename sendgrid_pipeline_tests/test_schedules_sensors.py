"""The schedule and the two sensors, evaluated tick by tick as the daemon would evaluate them.

The export-request sensor's promise spans ticks: a request becomes runs once, and the tick after
those runs exist archives the file with their ids. So its test really runs the requested runs
(against the sandbox) on the same instance the sensor reads.
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import dagster as dg

from sendgrid_pipeline.pipeline import EXPORT_JOB
from sendgrid_pipeline.profile_source import FileProfileSource
from sendgrid_pipeline.schedules import refresh_all_tags
from sendgrid_pipeline_tests.helpers import definitions

DESTINATIONS = ["newsletter_eu", "vip_program", "winback_campaign"]
RANGE = refresh_all_tags(DESTINATIONS)


def profile_tick(data_dir: Path, cursor: str | None):
    sensor = definitions(data_dir).resolve_sensor_def("profile_source_changed_sensor")
    context = dg.build_sensor_context(
        cursor=cursor,
        resources={"profile_source": FileProfileSource(directory=str(data_dir / "profiles"))},
    )
    return sensor.evaluate_tick(context)


def request_tick(data_dir: Path, instance: dg.DagsterInstance):
    defs = definitions(data_dir)  # partitioned run requests are resolved against the job
    sensor = defs.resolve_sensor_def("export_request_sensor")
    return sensor.evaluate_tick(dg.build_sensor_context(instance=instance, definitions=defs))


def write_request(data_dir: Path, name: str, body: object) -> Path:
    path = data_dir / "requests" / name
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(body if isinstance(body, str) else json.dumps(body))
    return path


def results_in(folder: Path) -> list[dict]:
    return [json.loads(p.read_text()) for p in sorted(folder.glob("*.result.json"))]


# -- schedule --------------------------------------------------------------------------------------
def test_schedule_requests_one_run_over_every_destination(data_dir: Path) -> None:
    schedule = definitions(data_dir).resolve_schedule_def("sendgrid_refresh_schedule")
    data = schedule.evaluate_tick(dg.build_schedule_context())
    assert len(data.run_requests) == 1
    request = data.run_requests[0]
    assert request.tags.items() >= RANGE.items()
    assert request.tags["sendgrid/trigger"] == "schedule"
    assert request.partition_key is None  # the range tags select the partitions, in one run


# -- profile sensor --------------------------------------------------------------------------------
def test_profile_sensor_baseline_then_change_then_unchanged(data_dir: Path) -> None:
    first = profile_tick(data_dir, cursor=None)
    assert first.run_requests == []
    assert first.cursor, "the first tick must record the files' fingerprint"
    assert "baseline" in first.skip_message

    unchanged = profile_tick(data_dir, cursor=first.cursor)
    assert unchanged.run_requests == []
    assert unchanged.skip_message == "profiles unchanged"

    profiles = data_dir / "profiles" / "profiles.csv"
    profiles.write_text(profiles.read_text().replace(",Charlie,Miller,", ",Charlotte,Miller,", 1))
    stat = profiles.stat()  # also move mtime on, in case the clock did not tick
    os.utime(profiles, ns=(stat.st_atime_ns, stat.st_mtime_ns + 1_000_000_000))

    changed = profile_tick(data_dir, cursor=first.cursor)
    assert len(changed.run_requests) == 1
    request = changed.run_requests[0]
    assert request.run_key == f"profiles-{changed.cursor}"
    assert changed.cursor != first.cursor
    assert request.tags.items() >= RANGE.items()
    assert request.tags["sendgrid/trigger"] == "profiles"

    again = profile_tick(data_dir, cursor=changed.cursor)
    assert again.run_requests == []
    assert again.skip_message == "profiles unchanged"


def test_profile_sensor_skips_with_the_reason_when_the_folder_is_missing(data_dir: Path) -> None:
    shutil.rmtree(data_dir / "profiles")
    data = profile_tick(data_dir, cursor=None)
    assert data.run_requests == []
    assert "profile directory not found" in data.skip_message
    assert data.cursor is None  # no baseline until there is something to fingerprint


# -- export request sensor -------------------------------------------------------------------------
def test_export_request_runs_once_then_is_archived_with_its_run_ids(
    data_dir: Path, sandbox
) -> None:
    request = write_request(
        data_dir, "jane.json", {"destinations": ["newsletter_eu"], "requested_by": "jane"}
    )
    job = definitions(data_dir, sandbox).resolve_job_def(EXPORT_JOB)
    with dg.instance_for_test() as instance:
        first = request_tick(data_dir, instance)
        assert len(first.run_requests) == 1
        run_request = first.run_requests[0]
        assert run_request.run_key and run_request.run_key.startswith("jane.json:")
        assert run_request.run_key.endswith(":newsletter_eu")
        assert run_request.partition_key == "newsletter_eu"
        assert run_request.tags["sendgrid/requested_by"] == "jane"
        assert request.exists(), "the file stays until its runs exist"

        # No run yet: a second tick asks for the same run (the run key makes it happen once).
        assert [r.run_key for r in request_tick(data_dir, instance).run_requests] == [
            run_request.run_key
        ]

        result = job.execute_in_process(
            instance=instance,
            tags=run_request.tags,
            partition_key=run_request.partition_key,
            raise_on_error=False,
        )
        assert result.success

        archived = request_tick(data_dir, instance)
        assert archived.run_requests == []
    assert not request.exists()
    archive = data_dir / "requests" / "archive"
    assert [p.suffix for p in archive.glob("jane.*") if not p.name.endswith(".result.json")] == [
        ".json"
    ]
    assert results_in(archive) == [
        {"requested_by": "jane", "destinations": ["newsletter_eu"], "run_ids": [result.run_id]}
    ]
    assert sandbox.list_member_emails("3f1c7a52-9f0e-4a57-9d1e-2b7f0c8a1e01")


def test_export_request_for_all_destinations_is_one_range_run(data_dir: Path) -> None:
    write_request(data_dir, "everyone.json", {"destinations": "all", "requested_by": "ops"})
    with dg.instance_for_test() as instance:
        data = request_tick(data_dir, instance)
    assert len(data.run_requests) == 1
    request = data.run_requests[0]
    assert request.run_key.startswith("everyone.json:") and request.run_key.endswith(":all")
    assert request.tags.items() >= RANGE.items()


def test_bad_export_requests_are_rejected_with_the_error(data_dir: Path) -> None:
    write_request(data_dir, "typo.json", {"destinations": ["newsleter_eu"], "requested_by": "x"})
    write_request(data_dir, "anonymous.json", {"destinations": ["vip_program"]})
    write_request(data_dir, "broken.json", "{not json")
    with dg.instance_for_test() as instance:
        data = request_tick(data_dir, instance)
    assert data.run_requests == []
    rejected = data_dir / "requests" / "rejected"
    assert not list((data_dir / "requests").glob("*.json"))
    moved = sorted(
        p.name.split(".")[0] for p in rejected.glob("*.json") if ".result." not in p.name
    )
    assert moved == ["anonymous", "broken", "typo"]
    errors = sorted(r["error"] for r in results_in(rejected))
    assert errors[0].startswith("anonymous.json: 'requested_by' is required")
    assert errors[1].startswith("broken.json: not a JSON file")
    assert errors[2].startswith("typo.json: unknown destination(s) newsleter_eu")
