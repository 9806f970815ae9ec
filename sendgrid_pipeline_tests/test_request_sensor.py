"""The export request sensor against hostile request files, re-dropped files and multi-destination
requests, tick by tick as the daemon would evaluate it.

Runs the daemon would launch are recorded on the same instance by a no-op job carrying the run
request's tags (all the sensor looks at), except where the real export runs against the sandbox.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import dagster as dg
import pytest

from sendgrid_pipeline.pipeline import EXPORT_JOB
from sendgrid_pipeline.schedules import RANGE_START_TAG, refresh_all_tags
from sendgrid_pipeline.sensors import (
    MAX_REQUEST_BYTES,
    PROFILES_FROM_TAG,
    contiguous_ranges,
    read_bounded,
    request_parts,
)
from sendgrid_pipeline_tests.helpers import definitions

PROFILES = dg.AssetKey("unified_profiles")
LISTS = {
    "newsletter_eu": "3f1c7a52-9f0e-4a57-9d1e-2b7f0c8a1e01",
    "vip_program": "8b2d4e6f-1a3c-4b5d-8e7f-9a0b1c2d3e4f",
    "winback_campaign": "c4e8a1b2-7d3f-4e9a-b6c5-0f1e2d3c4b5a",
}


def request_tick(data_dir: Path, instance: dg.DagsterInstance):
    """One tick, with definitions built afresh (as after a restart)."""
    defs = definitions(data_dir)
    sensor = defs.resolve_sensor_def("export_request_sensor")
    return sensor.evaluate_tick(dg.build_sensor_context(instance=instance, definitions=defs))


def write_request(data_dir: Path, name: str, body: object) -> Path:
    path = data_dir / "requests" / name
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(body if isinstance(body, str) else json.dumps(body))
    return path


@dg.op
def _nothing() -> None:
    pass


@dg.job
def recorded_run() -> None:
    _nothing()


def record_runs(instance: dg.DagsterInstance, run_requests) -> list[str]:
    """Stand in for the daemon: a run per request, with the request's own tags."""
    return [
        recorded_run.execute_in_process(
            instance=instance,
            tags={k: v for k, v in r.tags.items() if not k.startswith("dagster/")},
        ).run_id
        for r in run_requests
    ]


def pending(data_dir: Path) -> list[str]:
    return sorted(p.name for p in (data_dir / "requests").iterdir() if p.name.endswith(".json"))


def notes(folder: Path) -> dict[str, dict]:
    """Each .result.json note by the moved file's name."""
    return {
        p.name.replace(".result.json", ".json"): json.loads(p.read_text())
        for p in sorted(folder.glob("*.result.json"))
    }


def rejected_errors(data_dir: Path) -> dict[str, str]:
    """Each rejected file's error, by the moved file's original stem; the file is beside it."""
    folder = data_dir / "requests" / "rejected"
    errors = {}
    for moved, note in notes(folder).items():
        assert os.path.lexists(folder / moved), f"{moved} has a note but was not moved"
        errors[moved.split(".")[0]] = note["error"]
    return errors


# -- hostile files -----------------------------------------------------------------------------
def test_hostile_files_are_moved_aside_and_the_valid_request_beside_them_runs(
    data_dir: Path, tmp_path: Path
) -> None:
    ok = {"destinations": ["vip_program"], "requested_by": "jane"}
    write_request(data_dir, "a_nested.json", "[" * 30_000 + "]" * 30_000)
    write_request(
        data_dir, "deep.json", {"destinations": [[[[[[[[["x"]]]]]]]]], "requested_by": "jane"}
    )
    padded = json.dumps(ok) + " " * (MAX_REQUEST_BYTES + 1)
    write_request(data_dir, "big.json", padded)
    outside = tmp_path / "outside.json"
    outside.write_text(json.dumps(ok))
    (data_dir / "requests" / "link.json").symlink_to(outside)
    (data_dir / "requests" / "folder.json").mkdir()
    write_request(data_dir, "extra.json", {**ok, "priority": "high"})
    write_request(data_dir, "long.json", {**ok, "requested_by": "j" * 201})
    write_request(data_dir, "many.json", {**ok, "destinations": ["vip_program"] * 101})
    write_request(data_dir, "dupe.json", '{"requested_by": "a", "requested_by": "b"}')
    write_request(data_dir, "control.json", {**ok, "requested_by": "jane\u202eevil"})
    write_request(data_dir, "surrogate.json", '{"requested_by": "\\ud800"}')
    write_request(data_dir, "number.json", {**ok, "requested_by": 42})
    write_request(data_dir, "hugeint.json", '{"requested_by": "x", "destinations": ' + "9" * 5000)
    write_request(data_dir, "nan.json", '{"requested_by": NaN}')
    write_request(data_dir, "bad name.json", ok)
    write_request(data_dir, "ok.json", ok)

    with dg.instance_for_test() as instance:
        data = request_tick(data_dir, instance)

    assert [r.partition_key for r in data.run_requests] == ["vip_program"]
    assert data.run_requests[0].run_key.startswith("ok.json:")
    assert pending(data_dir) == ["ok.json"], "every bad file leaves requests/ in one tick"
    errors = rejected_errors(data_dir)
    expected = {
        "a_nested": "a_nested.json: JSON nested deeper than 8 levels",
        "deep": "deep.json: JSON nested deeper than 8 levels",
        "big": f"big.json: {len(padded)} bytes, over the limit of 65536 bytes",
        "link": "link.json: a symbolic link, not a file (links are never followed)",
        "folder": "folder.json: not a regular file",
        "extra": "extra.json: unknown key(s) priority;",
        "long": "long.json: 'requested_by' has 201 characters, more than 200",
        "many": "many.json: 'destinations' lists 101 names, more than 100",
        "dupe": "dupe.json: duplicate key requested_by",
        "control": "control.json: 'requested_by' holds control or invisible characters",
        "surrogate": "surrogate.json: 'requested_by' holds control or invisible characters",
        "number": "number.json: 'requested_by' must be a string",
        "hugeint": "hugeint.json: not a JSON file:",
        "nan": "nan.json: not a JSON file: NaN is not JSON",
        "bad_name": "'bad name.json': a request file name uses only letters",
    }
    assert sorted(errors) == sorted(expected)
    for stem, start in expected.items():
        assert errors[stem].startswith(start), (stem, errors[stem])
    # the link itself was moved, its target neither followed nor touched
    [link] = (data_dir / "requests" / "rejected").glob("link.*[0-9a-f].json")
    assert link.is_symlink() and os.readlink(link) == str(outside)
    assert json.loads(outside.read_text()) == ok


def test_a_file_name_that_is_not_utf8_is_rejected(data_dir: Path) -> None:
    folder = data_dir / "requests"
    folder.mkdir(exist_ok=True)
    try:
        with open(os.path.join(os.fsencode(folder), b"caf\xe9.json"), "w") as handle:
            handle.write('{"requested_by": "x"}')
    except OSError:
        pytest.skip("this file system refuses names that are not UTF-8")
    with dg.instance_for_test() as instance:
        data = request_tick(data_dir, instance)
    assert data.run_requests == []
    assert pending(data_dir) == []
    assert rejected_errors(data_dir) == {
        "caf_": "'caf\\udce9.json': a request file name uses only letters, digits, '.', '_' "
        "and '-', starts with a letter or digit, ends in .json, and has at most 100 characters"
    }


def test_a_huge_file_is_refused_by_its_size_without_being_read(data_dir: Path) -> None:
    huge = write_request(data_dir, "huge.json", '{"requested_by": "x"}')
    with open(huge, "r+b") as handle:
        handle.truncate(150 * 1024 * 1024)  # sparse: 150 MB that cost no disk
    write_request(data_dir, "ok.json", {"destinations": "all", "requested_by": "ops"})
    with dg.instance_for_test() as instance:
        data = request_tick(data_dir, instance)
    assert [r.run_key.split(":")[0] for r in data.run_requests] == ["ok.json"]
    assert rejected_errors(data_dir) == {
        "huge": "huge.json: 157286400 bytes, over the limit of 65536 bytes"
    }


def test_reading_stops_one_byte_past_the_limit(tmp_path: Path) -> None:
    path = tmp_path / "grown.json"
    path.write_bytes(b" " * (1024 * 1024))
    fd = os.open(path, os.O_RDONLY)
    try:
        assert len(read_bounded(fd, 1000)) == 1001
        assert os.lseek(fd, 0, os.SEEK_CUR) == 1001, "nothing read beyond limit + 1"
    finally:
        os.close(fd)


TICK_SCRIPT = textwrap.dedent(
    """
    import json, resource, sys
    limit = 4 * 1024**3
    resource.setrlimit(resource.RLIMIT_AS, (limit, limit))
    import dagster as dg
    from pathlib import Path
    from sendgrid_pipeline_tests.helpers import definitions
    defs = definitions(Path(sys.argv[1]))
    sensor = defs.resolve_sensor_def("export_request_sensor")
    data = sensor.evaluate_tick(
        dg.build_sensor_context(instance=dg.DagsterInstance.ephemeral(), definitions=defs)
    )
    print(json.dumps([r.run_key for r in data.run_requests]))
    """
)


@pytest.mark.skipif(not hasattr(os, "mkfifo"), reason="needs /dev/zero and named pipes")
def test_dev_zero_and_a_named_pipe_neither_hang_nor_block_the_others(data_dir: Path) -> None:
    # In a child process with a memory cap and a timeout: reading either one would never end.
    folder = data_dir / "requests"
    folder.mkdir(exist_ok=True)
    (folder / "zero.json").symlink_to("/dev/zero")
    os.mkfifo(folder / "pipe.json")
    write_request(data_dir, "ok.json", {"destinations": ["newsletter_eu"], "requested_by": "x"})
    child = subprocess.run(
        [sys.executable, "-c", TICK_SCRIPT, str(data_dir)],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert child.returncode == 0, child.stderr[-3000:]
    [run_key] = json.loads(child.stdout.strip().splitlines()[-1])
    assert run_key.startswith("ok.json:") and run_key.endswith(":newsletter_eu")
    assert rejected_errors(data_dir) == {
        "pipe": "pipe.json: not a regular file",
        "zero": "zero.json: a symbolic link, not a file (links are never followed)",
    }
    [zero] = (folder / "rejected").glob("zero.*[0-9a-f].json")
    assert zero.is_symlink() and os.readlink(zero) == "/dev/zero"


def test_a_file_that_cannot_be_moved_aside_never_stops_the_tick(data_dir: Path) -> None:
    write_request(data_dir, "broken.json", "{not json")
    write_request(data_dir, "ok.json", {"destinations": "all", "requested_by": "ops"})
    (data_dir / "requests" / "rejected").write_text("a file where the folder should be")
    with dg.instance_for_test() as instance:
        data = request_tick(data_dir, instance)
    assert [r.run_key.split(":")[0] for r in data.run_requests] == ["ok.json"]
    assert pending(data_dir) == ["broken.json", "ok.json"]  # left for the next tick


# -- each drop is a request ------------------------------------------------------------------------
def test_a_request_dropped_again_runs_again_and_both_drops_are_archived(data_dir: Path) -> None:
    body = {"destinations": ["newsletter_eu"], "requested_by": "jane"}
    archive = data_dir / "requests" / "archive"
    run_ids = []
    keys = []
    with dg.instance_for_test() as instance:
        for _ in range(2):
            write_request(data_dir, "jane.json", body)  # same name, same content
            first = request_tick(data_dir, instance)
            again = request_tick(data_dir, instance)  # ticks twice before the runs exist
            assert len(first.run_requests) == 1
            assert [r.run_key for r in again.run_requests] == [first.run_requests[0].run_key]
            keys.append(first.run_requests[0].run_key)
            run_ids += record_runs(instance, first.run_requests)
            assert request_tick(data_dir, instance).run_requests == []  # archived
            assert pending(data_dir) == []
            assert request_tick(data_dir, instance).run_requests == []  # nothing left
    assert keys[0] != keys[1], "a new drop is a new request"
    assert all(k.startswith("jane.json:") and k.endswith(":newsletter_eu") for k in keys)
    archived = notes(archive)
    assert len(archived) == 2, "two archives in the same second must not collide"
    assert sorted(n["run_ids"][0] for n in archived.values()) == sorted(run_ids)
    assert all(n["requested_by"] == "jane" for n in archived.values())
    assert all((archive / moved).read_text() == json.dumps(body) for moved in archived)


def test_a_pending_request_rewritten_in_place_is_a_new_request(data_dir: Path) -> None:
    path = write_request(
        data_dir, "ops.json", {"destinations": ["vip_program"], "requested_by": "a"}
    )
    with dg.instance_for_test() as instance:
        first = request_tick(data_dir, instance).run_requests[0].run_key
        path.write_text(json.dumps({"destinations": ["winback_campaign"], "requested_by": "a"}))
        second = request_tick(data_dir, instance).run_requests
    assert [r.partition_key for r in second] == ["winback_campaign"]
    assert second[0].run_key != first


# -- one run per contiguous range ------------------------------------------------------------------
def test_contiguous_destinations_are_one_range_run_that_syncs_only_them(
    data_dir: Path, sandbox
) -> None:
    write_request(
        data_dir,
        "two.json",
        {"destinations": ["vip_program", "newsletter_eu"], "requested_by": "jane"},
    )
    job = definitions(data_dir, sandbox).resolve_job_def(EXPORT_JOB)
    with dg.instance_for_test() as instance:
        data = request_tick(data_dir, instance)
        [request] = data.run_requests
        assert request.partition_key is None
        assert request.tags.items() >= refresh_all_tags(["newsletter_eu", "vip_program"]).items()
        assert request.run_key.startswith("two.json:")
        assert request.run_key.endswith(":newsletter_eu..vip_program")
        assert request.asset_selection is None  # every asset, profiles and segments included
        result = job.execute_in_process(instance=instance, tags=request.tags, raise_on_error=False)
        assert result.success
        # one run: the profiles read once and the segments evaluated once for both
        assert _profile_steps(result) == ["unified_profiles", "segment_membership"]
        read = [m for m in result.get_asset_materialization_events() if m.asset_key == PROFILES]
        assert sorted(m.partition for m in read) == ["newsletter_eu", "vip_program"]
        assert request_tick(data_dir, instance).run_requests == []
    assert sandbox.list_member_emails(LISTS["newsletter_eu"])
    assert sandbox.list_member_emails(LISTS["vip_program"])
    assert not sandbox.list_member_emails(LISTS["winback_campaign"]), "nobody asked for it"
    [note] = notes(data_dir / "requests" / "archive").values()
    assert note == {
        "requested_by": "jane",
        "destinations": ["newsletter_eu", "vip_program"],
        "run_ids": [result.run_id],
    }


def test_destinations_with_a_gap_are_one_run_per_range_and_archived_once_all_exist(
    data_dir: Path,
) -> None:
    write_request(
        data_dir,
        "gap.json",
        {"destinations": ["winback_campaign", "newsletter_eu"], "requested_by": "jane"},
    )
    with dg.instance_for_test() as instance:
        first = request_tick(data_dir, instance).run_requests
        # the first range only: the others wait for it to have read the profiles
        assert [(r.partition_key, r.run_key.rsplit(":", 1)[1]) for r in first] == [
            ("newsletter_eu", "newsletter_eu")
        ]
        assert all(RANGE_START_TAG not in r.tags for r in first)
        run_ids = record_runs(instance, first)  # computed no profiles (a no-op job)
        missing = request_tick(data_dir, instance).run_requests
        assert [(r.partition_key, r.run_key.rsplit(":", 1)[1]) for r in missing] == [
            ("winback_campaign", "winback_campaign")
        ]
        # the first run stored no profiles: this one reads them itself
        assert missing[0].asset_selection is None
        assert PROFILES_FROM_TAG not in missing[0].tags
        run_ids += record_runs(instance, missing)
        assert request_tick(data_dir, instance).run_requests == []
    [note] = notes(data_dir / "requests" / "archive").values()
    assert note["destinations"] == ["newsletter_eu", "winback_campaign"]
    assert note["run_ids"] == sorted(run_ids)


def _launch(job: dg.JobDefinition, instance: dg.DagsterInstance, request: dg.RunRequest):
    """What the daemon does with a run request of the export job, in process."""
    return job.execute_in_process(
        instance=instance,
        tags=request.tags,
        partition_key=request.partition_key,
        asset_selection=request.asset_selection,
        raise_on_error=False,
    )


def _profile_steps(result: dg.ExecuteInProcessResult) -> list[str]:
    """The steps of a run that read the profiles or evaluated the segments."""
    return [
        event.step_key
        for event in result.all_events
        if event.event_type_value == "STEP_START"
        and event.step_key in {"unified_profiles", "segment_membership"}
    ]


def test_a_request_with_a_gap_reads_the_profiles_once_for_both_runs(
    data_dir: Path, sandbox
) -> None:
    write_request(
        data_dir,
        "gap.json",
        {"destinations": ["winback_campaign", "newsletter_eu"], "requested_by": "jane"},
    )
    job = definitions(data_dir, sandbox).resolve_job_def(EXPORT_JOB)
    with dg.instance_for_test() as instance:
        [first] = request_tick(data_dir, instance).run_requests
        assert first.asset_selection is None  # every asset: it reads the profiles
        assert request_tick(data_dir, instance).run_requests == [first]  # not launched yet
        one = _launch(job, instance, first)
        assert one.success
        assert _profile_steps(one) == ["unified_profiles", "segment_membership"]
        [second] = request_tick(data_dir, instance).run_requests
        assert second.partition_key == "winback_campaign"
        assert second.tags[PROFILES_FROM_TAG] == one.run_id
        assert set(second.asset_selection) == {
            dg.AssetKey("sendgrid_contacts"),
            dg.AssetKey("sendgrid_list_sync"),
        }
        two = _launch(job, instance, second)
        assert two.success
        assert _profile_steps(two) == []  # the profiles of the first run, loaded as stored
        contacts = instance.fetch_materializations(
            dg.AssetRecordsFilter(
                asset_key=dg.AssetKey("sendgrid_contacts"), asset_partitions=["winback_campaign"]
            ),
            limit=1,
        ).records
        assert contacts[0].run_id == two.run_id
        assert request_tick(data_dir, instance).run_requests == []
    assert sandbox.list_member_emails(LISTS["newsletter_eu"])
    assert sandbox.list_member_emails(LISTS["winback_campaign"])
    assert not sandbox.list_member_emails(LISTS["vip_program"]), "nobody asked for it"
    [note] = notes(data_dir / "requests" / "archive").values()
    assert note["run_ids"] == sorted([one.run_id, two.run_id])


def test_ranges_follow_the_partition_order() -> None:
    order = ["a", "b", "c", "d", "e"]
    assert contiguous_ranges({"e", "a", "b", "d"}, order) == [["a", "b"], ["d", "e"]]
    assert contiguous_ranges({"c"}, order) == [["c"]]
    assert contiguous_ranges(set(), order) == []
    parts = request_parts({"a", "b", "d"}, order)
    assert [(p.part, p.keys) for p in parts] == [("a..b", ["a", "b"]), ("d", ["d"])]
    assert [p.part for p in request_parts(set(order), order)] == ["all"]
