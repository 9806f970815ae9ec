"""The whole graph, every destination, against the sandbox over real HTTP on loopback."""

from __future__ import annotations

import re
from pathlib import Path

import dagster as dg
import polars as pl
import yaml

from sendgrid_pipeline.config import load_config
from sendgrid_pipeline.pipeline import EXPORT_JOB, load_validated_config
from sendgrid_pipeline_tests.helpers import definitions, export, step_failure_messages

# An independent statement of who belongs on each list: SQL over the raw profile file,
# plain-Python normalization and a plain regex, smallest customer_id per address.
EMAIL = re.compile(
    r"^[a-z0-9!#$%&'*+/=?^_`{|}~-]+(\.[a-z0-9!#$%&'*+/=?^_`{|}~-]+)*@"
    r"([a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?\.)+[a-z]{2,63}$"
)
LIMITS = {"first_name": 50, "last_name": 50, "country": 50, "state_province_region": 50, "city": 60}


def expected_members(data_dir: Path) -> dict[str, set[str]]:
    config = load_config(data_dir)
    profiles = pl.concat(
        [
            pl.read_csv(f, infer_schema_length=0).with_columns(pl.col("email_opt_in") == "true")
            for f in sorted((data_dir / "profiles").glob("*.csv"))
        ],
        how="diagonal_relaxed",
    )
    typed = profiles.with_columns(
        pl.col("lifetime_value").cast(pl.Float64),
        pl.col("orders_count").cast(pl.Int64),
        pl.col("last_purchase_date").str.to_date(strict=False),
        pl.col("created_at").str.to_datetime(strict=False, time_zone="UTC"),
    )
    sql = pl.SQLContext(profiles=typed)
    expected: dict[str, set[str]] = {}
    for destination in config.destinations:

        def members(segment_id: str) -> set[str]:
            segment = config.segment(segment_id)
            if segment.membership_file:
                listed = pl.read_csv(data_dir / segment.membership_file, infer_schema_length=0)
                return set(listed["customer_id"]) & set(typed["customer_id"])
            query = f"SELECT customer_id FROM profiles WHERE {segment.rule}"
            return set(sql.execute(query, eager=True)["customer_id"])

        ids: set[str] = set().union(*(members(s) for s in destination.segments))
        ids -= set().union(*(members(s) for s in destination.exclude_segments))
        mapping = destination.field_mapping.as_dict()
        best: dict[str, str] = {}
        for row in typed.filter(pl.col("customer_id").is_in(list(ids))).iter_rows(named=True):
            email = (row[mapping["email"]] or "").strip().lower()
            if not email or len(email) > 254 or not EMAIL.match(email):
                continue
            if len(email.split("@")[0]) > 64:
                continue
            if any(
                len((row[col] or "").strip()) > LIMITS.get(field, 10**9)
                for field, col in mapping.items()
                if field != "email" and col in row
            ):
                continue
            if email not in best or row["customer_id"] < best[email]:
                best[email] = row["customer_id"]
        expected[destination.name] = set(best)
    return expected


def test_every_destination_list_holds_exactly_its_segment_members(data_dir, sandbox) -> None:
    result = export(data_dir, sandbox)
    assert result.success, step_failure_messages(result)
    config = load_config(data_dir)
    expected = expected_members(data_dir)
    for destination in config.destinations:
        members = sandbox.list_member_emails(destination.list_id)
        assert members == expected[destination.name], destination.name
        assert len(members) > 10
    # the contacts' fields arrived too, normalized (trimmed) as mapped
    vip = config.destination("vip_program")
    some = sorted(expected["vip_program"])[0]
    stored = sandbox.contact(some)
    assert vip.list_id in stored["list_ids"]
    assert stored.get("first_name") == (stored.get("first_name") or "").strip()


def test_a_second_run_with_no_change_sends_no_contact(data_dir, sandbox) -> None:
    assert export(data_dir, sandbox).success
    sandbox.reset_request_log()
    result = export(data_dir, sandbox)
    assert result.success, step_failure_messages(result)
    assert [r for r in sandbox.requests if r.method == "PUT"] == []


def test_contacts_who_leave_a_segment_are_removed_and_changes_are_updated(
    data_dir, sandbox
) -> None:
    assert export(data_dir, sandbox).success
    profiles_file = data_dir / "profiles" / "profiles.csv"
    profiles = pl.read_csv(profiles_file, infer_schema_length=0)
    config = load_config(data_dir)
    winback = config.destination("winback_campaign")
    before = sandbox.list_member_emails(winback.list_id)
    # two of its members opt out of email; one changes first name
    members = profiles.filter(
        pl.col("email").str.strip_chars().str.to_lowercase().is_in(sorted(before))
    )["customer_id"].to_list()
    leaving, renamed = members[:2], members[2]
    profiles = profiles.with_columns(
        pl.when(pl.col("customer_id").is_in(leaving))
        .then(pl.lit("false"))
        .otherwise(pl.col("email_opt_in"))
        .alias("email_opt_in"),
        pl.when(pl.col("customer_id") == renamed)
        .then(pl.lit("Renamed"))
        .otherwise(pl.col("first_name"))
        .alias("first_name"),
    )
    profiles.write_csv(profiles_file)
    sandbox.reset_request_log()
    result = export(data_dir, sandbox, partitions=["winback_campaign"])
    assert result.success, step_failure_messages(result)
    after = sandbox.list_member_emails(winback.list_id)
    assert after == expected_members(data_dir)["winback_campaign"]
    assert len(before - after) >= 1  # the opted-out contacts left the list
    upserted = sum(r.contacts for r in sandbox.requests if r.method == "PUT")
    assert upserted >= 1 and upserted <= 3  # only the changed contact(s), not the list
    renamed_email = (
        profiles.filter(pl.col("customer_id") == renamed)["email"].item().strip().lower()
    )
    if renamed_email in after:
        assert sandbox.contact(renamed_email)["first_name"] == "Renamed"


def test_without_consent_nothing_is_sent_and_the_error_explains(data_dir, sandbox) -> None:
    path = data_dir / "destinations.yaml"
    document = yaml.safe_load(path.read_text())
    document["destinations"][0]["consent"] = False
    path.write_text(yaml.safe_dump(document))
    name = document["destinations"][0]["name"]
    result = export(data_dir, sandbox, partitions=[name])
    assert not result.success
    message = step_failure_messages(result)
    assert "compliance boundary" in message and name in message
    assert [r for r in sandbox.requests if r.method in ("PUT", "DELETE")] == []


def test_over_the_cap_the_blocking_check_stops_the_sync(data_dir, sandbox) -> None:
    path = data_dir / "destinations.yaml"
    document = yaml.safe_load(path.read_text())
    document["destinations"][0]["profile_cap"] = 5
    path.write_text(yaml.safe_dump(document))
    name = document["destinations"][0]["name"]
    result = export(data_dir, sandbox, partitions=[name])
    assert not result.success
    (evaluation,) = [
        e.event_specific_data
        for e in result.all_events
        if e.event_type_value == "ASSET_CHECK_EVALUATION"
        and e.event_specific_data.check_name == "sendgrid_contacts_within_profile_cap"
    ]
    assert not evaluation.passed
    assert "exceed the cap of 5" in evaluation.description
    assert [r for r in sandbox.requests if r.method in ("PUT", "DELETE")] == []
    # the sync step did not run at all
    assert "sendgrid_list_sync" not in {
        e.step_key for e in result.all_events if e.event_type_value == "STEP_START"
    }


def test_one_partition_alone_and_a_range_of_two(data_dir, sandbox) -> None:
    config = load_config(data_dir)
    first, second, third = config.destination_names[:3]
    assert export(data_dir, sandbox, partitions=[first]).success
    assert sandbox.list_member_emails(config.destination(first).list_id)
    assert not sandbox.list_member_emails(config.destination(second).list_id)
    assert export(data_dir, sandbox, partitions=[second, third]).success
    assert sandbox.list_member_emails(config.destination(third).list_id)


def _sync_metadata(result) -> dict:
    for event in result.all_events:
        if event.event_type_value == "ASSET_MATERIALIZATION":
            record = event.event_specific_data.materialization
            if record.asset_key.path == ["sendgrid_list_sync"]:
                return {k: getattr(v, "value", v) for k, v in record.metadata.items()}
    raise AssertionError("no sendgrid_list_sync materialization")


def _sync_events(result, kind: str) -> list:
    return [
        e
        for e in result.all_events
        if e.event_type_value == kind and e.asset_key == dg.AssetKey("sendgrid_list_sync")
    ]


def test_dry_run_tag_plans_sends_nothing_and_is_no_sync(data_dir, sandbox) -> None:
    name = load_config(data_dir).destination_names[0]
    result = export(data_dir, sandbox, partitions=[name], tags={"sendgrid/dry_run": "true"})
    assert result.success, step_failure_messages(result)
    assert not _sync_events(result, "ASSET_MATERIALIZATION")  # the partition does not turn green
    (observation,) = _sync_events(result, "ASSET_OBSERVATION")
    metadata = {
        k: getattr(v, "value", v)
        for k, v in observation.event_specific_data.asset_observation.metadata.items()
    }
    assert metadata["dry_run"] is True and metadata["planned_add"] > 100
    assert metadata["upserted"] == 0
    assert [r for r in sandbox.requests if r.method in ("PUT", "DELETE")] == []
    checked = [
        e.event_specific_data.asset_key
        for e in result.all_events
        if e.event_type_value == "ASSET_CHECK_EVALUATION"
    ]
    assert checked and dg.AssetKey("sendgrid_list_sync") not in checked  # nothing synced


def test_a_launchpad_dry_run_is_tagged_in_the_runs_list(data_dir, sandbox) -> None:
    config = load_validated_config(data_dir)
    name = config.destination_names[0]
    instance = dg.DagsterInstance.ephemeral()
    job = definitions(data_dir, sandbox).resolve_job_def(EXPORT_JOB)
    result = job.execute_in_process(
        instance=instance,
        partition_key=name,
        run_config={"ops": {"sendgrid_list_sync": {"config": {"dry_run": True}}}},
        raise_on_error=False,
    )
    assert result.success, step_failure_messages(result)
    assert instance.get_run_by_id(result.run_id).tags["sendgrid/dry_run"] == "true"
    assert not _sync_events(result, "ASSET_MATERIALIZATION")


def test_brake_stops_a_broken_source_and_the_run_tag_overrides_it(data_dir, sandbox) -> None:
    config = load_config(data_dir)
    name = "newsletter_eu"
    assert export(data_dir, sandbox, partitions=[name]).success
    before = sandbox.list_member_emails(config.destination(name).list_id)
    profiles_file = data_dir / "profiles" / "profiles.csv"
    profiles = pl.read_csv(profiles_file, infer_schema_length=0)
    # a broken upstream export: most EU profiles lost their country code
    broken = profiles.with_columns(
        pl.when(pl.col("country_code") != "FR")
        .then(None)
        .otherwise(pl.col("country_code"))
        .alias("country_code")
    )
    broken.write_csv(profiles_file)
    sandbox.reset_request_log()
    result = export(data_dir, sandbox, partitions=[name])
    assert not result.success
    assert "brake" in step_failure_messages(result) and name in step_failure_messages(result)
    assert [r for r in sandbox.requests if r.method in ("PUT", "DELETE")] == []
    assert sandbox.list_member_emails(config.destination(name).list_id) == before
    result = export(
        data_dir, sandbox, partitions=[name], tags={"sendgrid/allow_mass_removal": "true"}
    )
    assert result.success, step_failure_messages(result)
    assert (
        sandbox.list_member_emails(config.destination(name).list_id)
        == expected_members(data_dir)[name]
    )


def test_rows_sendgrid_rejects_warn_by_default_and_fail_when_configured(data_dir, sandbox) -> None:
    from sendgrid_pipeline_tests.devkit.sandbox import FaultPlan

    sandbox.set_faults(FaultPlan(reject_email_pattern=r"^a"))  # SendGrid refuses a few rows
    config = load_config(data_dir)
    list_id = config.destination("winback_campaign").list_id
    result = export(data_dir, sandbox, partitions=["winback_campaign"])
    assert result.success, step_failure_messages(result)  # default: warn
    metadata = _sync_metadata(result)
    assert metadata["rejected_by_sendgrid"] > 0
    report = pl.read_csv(data_dir / "reports" / "rejected" / "winback_campaign.sendgrid.csv")
    assert report.height == metadata["rejected_by_sendgrid"]
    assert report["email"].str.contains(r"^a").all()
    members = sandbox.list_member_emails(list_id)
    assert members and not any(e.startswith("a") for e in members)

    path = data_dir / "destinations.yaml"
    document = yaml.safe_load(path.read_text())
    next(d for d in document["destinations"] if d["name"] == "winback_campaign").update(
        on_rejected_rows="fail"
    )
    path.write_text(yaml.safe_dump(document))
    result = export(data_dir, sandbox, partitions=["winback_campaign"])
    assert not result.success
    assert "on_rejected_rows: fail" in step_failure_messages(result)
    assert sandbox.list_member_emails(list_id) == members  # the rest stays synced
