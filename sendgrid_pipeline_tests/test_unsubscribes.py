"""Consent coming back: sendgrid_unsubscribes read from a real sandbox in real Dagster runs, and
a destination with exclude_suppressed that stops exporting (and removes) suppressed contacts."""

from __future__ import annotations

import datetime as dt
import time
from pathlib import Path

import dagster as dg
import polars as pl
import pytest
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from sendgrid_pipeline.config import load_config
from sendgrid_pipeline.errors import ConfigError
from sendgrid_pipeline.sendgrid.client import SendGridClient
from sendgrid_pipeline.sendgrid.errors import SendGridAuthError, SendGridBadRequestError
from sendgrid_pipeline.sendgrid.suppressions import PAGE_MAX, read_suppressions
from sendgrid_pipeline.suppressions import (
    OVERLAP_SECONDS,
    Account,
    empty_frame,
    load_frame,
    load_watermarks,
    merge,
    read_account,
)
from sendgrid_pipeline_tests.devkit.sandbox import FaultPlan, SandboxServer
from sendgrid_pipeline_tests.helpers import definitions, export, step_failure_messages

JOB = "sendgrid_unsubscribes_job"
ACCOUNT = "SENDGRID_API_KEY"  # the sample destinations' api_key_env
KNOWN = ("Charlie.Miller@Gmail.com", "C0000001")  # a sample profile, in another case


def edit_destinations(data_dir: Path, **values: object) -> None:
    """The same values on every sample destination (they share one account)."""
    path = data_dir / "destinations.yaml"
    document = yaml.safe_load(path.read_text())
    for destination in document["destinations"]:
        destination.update(values)
    path.write_text(yaml.safe_dump(document))


def read_unsubscribes(
    data_dir: Path, sandbox: SandboxServer, instance: dg.DagsterInstance
) -> dict[str, object]:
    """One real run of the asset's job; its materialization's metadata values."""
    job = definitions(data_dir, sandbox).resolve_job_def(JOB)
    result = job.execute_in_process(instance=instance, raise_on_error=False)
    assert result.success, step_failure_messages(result)
    [materialization] = result.asset_materializations_for_node("sendgrid_unsubscribes")
    return {key: getattr(value, "value", value) for key, value in materialization.metadata.items()}


def suppression_gets(sandbox: SandboxServer) -> list[str]:
    return [r.path for r in sandbox.requests if r.path.startswith(("/v3/suppression", "/v3/asm"))]


def test_unsubscribes_read_back_incrementally_across_two_runs_with_paging(
    data_dir, sandbox
) -> None:
    edit_destinations(data_dir, suppression_group_ids=[7])
    now = int(time.time())
    many = PAGE_MAX + 120  # more than one page
    for n in range(many):
        sandbox.add_suppression("unsubscribes", f"Person{n}@Example.org", now - 86_400 - n)
    sandbox.add_suppression("unsubscribes", KNOWN[0], now - 500)
    sandbox.add_suppression("bounces", KNOWN[0], now - 400, reason="550 5.1.1 no such user")
    sandbox.add_group_suppression(7, "grouped@example.net")
    instance = dg.DagsterInstance.ephemeral()

    first = read_unsubscribes(data_dir, sandbox, instance)
    assert first["count_unsubscribe"] == many + 1
    assert first["count_bounce"] == 1 and first["count_group_unsubscribe"] == 1
    assert first["new_since_last_run"] == many + 3
    assert suppression_gets(sandbox).count("/v3/suppression/unsubscribes") == 2  # two pages
    frame = load_frame(data_dir)
    assert frame.height == many + 3
    assert frame["email"].str.to_lowercase().equals(frame["email"])
    known = frame.filter(pl.col("email") == KNOWN[0].lower())
    assert sorted(known["kind"]) == ["bounce", "unsubscribe"]
    assert set(known["customer_id"]) == {KNOWN[1]}
    assert known.filter(pl.col("kind") == "bounce")["reason"][0] == "550 5.1.1 no such user"
    assert frame.filter(pl.col("kind") == "group_unsubscribe")["group_id"].to_list() == [7]
    marks = load_watermarks(data_dir)[ACCOUNT]
    assert set(marks) == {"unsubscribe", "bounce", "spam_report", "invalid_email"}
    sample = str(first["new_sample (masked)"])
    assert "charlie" not in sample.lower() and "person1@" not in sample.lower()

    # Between the runs: two new unsubscribes, one inside the overlap, one long before it (the
    # incremental read does not ask for that time again), a group member who resubscribed.
    sandbox.reset_request_log()
    mark = marks["unsubscribe"]
    sandbox.add_suppression("unsubscribes", "Late.Arrival@Example.org", mark - 60)
    sandbox.add_suppression("unsubscribes", "new.one@example.org", mark + 1)
    sandbox.add_suppression("spam_reports", "PERSON3@example.org", mark + 1)
    sandbox.add_suppression("unsubscribes", "backdated@example.org", mark - OVERLAP_SECONDS - 60)
    sandbox.remove_group_suppression(7, "grouped@example.net")
    time.sleep(1.1)  # the second window must end after `mark + 1`

    second = read_unsubscribes(data_dir, sandbox, instance)
    assert second["new_since_last_run"] == 3
    assert second["new_unsubscribe"] == 2 and second["new_spam_report"] == 1
    assert second["count_group_unsubscribe"] == 0
    assert suppression_gets(sandbox).count("/v3/suppression/unsubscribes") == 1  # one page now
    after = load_frame(data_dir)
    emails = set(after["email"])
    assert {"late.arrival@example.org", "new.one@example.org"} <= emails
    assert "backdated@example.org" not in emails
    assert after.filter(pl.col("kind") == "unsubscribe").height == many + 3
    assert after.select("account", "kind", "group_id", "email").is_unique().all()
    # rows read in the first run keep when they were first seen
    old = after.join(frame, on=["kind", "email"], how="inner", suffix="_before")
    assert (old["first_seen"] == old["first_seen_before"]).all()
    assert load_watermarks(data_dir)[ACCOUNT]["unsubscribe"] > mark


def test_exclude_suppressed_drops_an_unsubscribed_contact_from_its_list(data_dir, sandbox) -> None:
    name = "newsletter_eu"
    config = load_config(data_dir)
    list_id = config.destination(name).list_id
    instance = dg.DagsterInstance.ephemeral()
    result = export(data_dir, sandbox, partitions=[name], instance=instance)
    assert result.success, step_failure_messages(result)
    on_list = sorted(sandbox.list_member_emails(list_id))
    victim = on_list[0]
    sandbox.add_suppression("unsubscribes", victim.upper(), int(time.time()) - 10)
    read_unsubscribes(data_dir, sandbox, instance)

    edit_destinations(data_dir, exclude_suppressed=True)
    sandbox.reset_request_log()
    result = export(data_dir, sandbox, partitions=[name], instance=instance)
    assert result.success, step_failure_messages(result)
    sandbox.wait_for_idle()
    assert victim not in sandbox.list_member_emails(list_id)
    assert sandbox.list_member_emails(list_id) == set(on_list) - {victim}
    contacts = contacts_metadata(result, name)
    assert contacts["rejected_suppressed"] == 1
    report = Path(str(contacts["rejected_report"]))
    rejected = pl.read_csv(report)
    assert rejected.filter(pl.col("reason") == "suppressed").height == 1

    # never re-added: a later export sends nothing for it
    sandbox.reset_request_log()
    result = export(data_dir, sandbox, partitions=[name], instance=instance)
    assert result.success, step_failure_messages(result)
    sandbox.wait_for_idle()
    assert victim not in sandbox.list_member_emails(list_id)
    assert contacts_metadata(result, name)["rejected_suppressed"] == 1


def test_suppressing_much_of_a_list_at_once_meets_the_removal_brake(data_dir, sandbox) -> None:
    name = "newsletter_eu"
    list_id = load_config(data_dir).destination(name).list_id
    instance = dg.DagsterInstance.ephemeral()
    assert export(data_dir, sandbox, partitions=[name], instance=instance).success
    sandbox.wait_for_idle()
    on_list = sorted(sandbox.list_member_emails(list_id))
    for email in on_list[: len(on_list) // 2]:
        sandbox.add_suppression("bounces", email, int(time.time()) - 10, reason="550")
    read_unsubscribes(data_dir, sandbox, instance)
    edit_destinations(data_dir, exclude_suppressed=True)
    sandbox.reset_request_log()
    result = export(data_dir, sandbox, partitions=[name], instance=instance)
    assert not result.success
    assert "brake" in step_failure_messages(result)
    assert [r for r in sandbox.requests if r.method in ("PUT", "DELETE")] == []
    assert sorted(sandbox.list_member_emails(list_id)) == on_list


def test_without_exclude_suppressed_the_contact_stays(data_dir, sandbox) -> None:
    name = "newsletter_eu"
    list_id = load_config(data_dir).destination(name).list_id
    instance = dg.DagsterInstance.ephemeral()
    assert export(data_dir, sandbox, partitions=[name], instance=instance).success
    victim = sorted(sandbox.list_member_emails(list_id))[0]
    sandbox.add_suppression("unsubscribes", victim, int(time.time()) - 10)
    read_unsubscribes(data_dir, sandbox, instance)
    result = export(data_dir, sandbox, partitions=[name], instance=instance)
    assert result.success
    sandbox.wait_for_idle()
    assert victim in sandbox.list_member_emails(list_id)
    assert contacts_metadata(result, name)["rejected_suppressed"] == 0


def contacts_metadata(result: dg.ExecuteInProcessResult, partition: str) -> dict[str, object]:
    values: dict[str, object] = {}
    for event in result.all_events:
        if event.event_type_value == "ASSET_MATERIALIZATION":
            record = event.event_specific_data.materialization
            if record.asset_key.path == ["sendgrid_contacts"] and record.partition == partition:
                values.update({k: getattr(v, "value", v) for k, v in record.metadata.items()})
    assert values, "no sendgrid_contacts materialization"
    return values


# -- the client and the engine over generated suppression sets ---------------------------------
@pytest.fixture(scope="module")
def shared_sandbox():
    with SandboxServer(lists={}, job_delay_seconds=0.01) as server:
        yield server


def client_for(sandbox: SandboxServer, key: str | None = None) -> SendGridClient:
    return SendGridClient(key or sandbox.api_key, sandbox.base_url, sleep=lambda _s: None)


ENDPOINT_KIND = {
    "unsubscribes": "unsubscribe",
    "bounces": "bounce",
    "spam_reports": "spam_report",
    "invalid_emails": "invalid_email",
}
T0 = 1_700_000_000
records = st.tuples(
    st.sampled_from(sorted(ENDPOINT_KIND)),
    st.integers(0, 30),  # address number: few, so addresses repeat across and within kinds
    st.sampled_from(["lower", "upper", "title"]),
    st.integers(0, 50),  # created, seconds after T0
)


def spelled(number: int, case: str) -> str:
    email = f"user{number}@example.com"
    return {"lower": email, "upper": email.upper(), "title": email.title()}[case]


@settings(
    max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(
    page_size=st.sampled_from([1, 2, 3, 7]),
    filler=st.sampled_from(["none", "page", "page+1", "2 pages"]),
    extra=st.lists(records, max_size=25),
)
def test_generated_suppressions_are_read_completely_and_once(
    shared_sandbox, page_size, filler, extra
) -> None:
    sandbox = shared_sandbox
    sandbox.clear_suppressions()
    count = {"none": 0, "page": page_size, "page+1": page_size + 1, "2 pages": 2 * page_size}
    added = [("unsubscribes", 1000 + n, "lower", 40 + n % 3) for n in range(count[filler])]
    added += extra
    expected: dict[tuple[str, str], int] = {}
    for endpoint, number, case, offset in added:
        sandbox.add_suppression(endpoint, spelled(number, case), T0 + offset)
        expected[(ENDPOINT_KIND[endpoint], spelled(number, "lower"))] = T0 + offset
    account = Account(ACCOUNT, tuple(ENDPOINT_KIND.values()), (), ("d",), ("email",))
    moment = dt.datetime(2030, 1, 1, tzinfo=dt.UTC)
    read = read_account(client_for(sandbox), account, {}, moment, page_size=page_size)
    frame = merge(empty_frame(), {ACCOUNT: read}, [account])
    got = {
        (kind, email): int(created.timestamp())
        for kind, email, created in frame.select("kind", "email", "created").iter_rows()
    }
    assert got == expected
    # a second read over the same window changes nothing (duplicates collapse)
    again = read_account(client_for(sandbox), account, read.watermarks, moment, page_size=page_size)
    assert (
        merge(frame, {ACCOUNT: again}, [account])
        .drop("first_seen")
        .equals(frame.drop("first_seen"))
    )


@settings(
    max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(
    page_size=st.sampled_from([1, 2, 5]),
    before=st.lists(records, max_size=15),
    after=st.lists(records, max_size=15),
)
def test_two_incremental_reads_hold_what_one_full_read_would(
    shared_sandbox, page_size, before, after
) -> None:
    """Whatever arrives after the first read (created after its window's end, or late inside
    the overlap) is in the frame after the second, once, with its newest time."""
    sandbox = shared_sandbox
    sandbox.clear_suppressions()
    account = Account(ACCOUNT, tuple(ENDPOINT_KIND.values()), (), ("d",), ("email",))
    first_end = T0 + OVERLAP_SECONDS + 100
    expected: dict[tuple[str, str], int] = {}

    def add(batch: list, base: int) -> None:
        for endpoint, number, case, offset in batch:
            key = (ENDPOINT_KIND[endpoint], spelled(number, "lower"))
            if base + offset < expected.get(key, 0):
                continue  # SendGrid's time only moves forward for an address
            sandbox.add_suppression(endpoint, spelled(number, case), base + offset)
            expected[key] = base + offset

    add(before, first_end - 50)  # created within the first window
    client = client_for(sandbox)
    moment = dt.datetime.fromtimestamp(first_end, dt.UTC)
    first = read_account(client, account, {}, moment, page_size=page_size)
    frame = merge(empty_frame(), {ACCOUNT: first}, [account])
    add(after, first_end - 40)  # late arrivals inside the overlap, and later ones
    moment = dt.datetime.fromtimestamp(first_end + 200, dt.UTC)
    second = read_account(client, account, first.watermarks, moment, page_size=page_size)
    frame = merge(frame, {ACCOUNT: second}, [account])
    got = {
        (kind, email): int(created.timestamp())
        for kind, email, created in frame.select("kind", "email", "created").iter_rows()
    }
    assert got == expected
    assert frame.select("kind", "email").is_unique().all()


def test_a_429_while_paging_is_retried_and_the_read_completes(shared_sandbox) -> None:
    sandbox = shared_sandbox
    sandbox.clear_suppressions()
    for n in range(5):
        sandbox.add_suppression("bounces", f"b{n}@example.com", T0 + n)
    sandbox.set_faults(FaultPlan(scripted=["ok", "429"], only_paths="/v3/suppression/"))
    try:
        client = client_for(sandbox)
        frame = read_suppressions(client, "bounce", None, T0 + 10, page_size=2)
    finally:
        sandbox.set_faults(FaultPlan())
    assert sorted(frame["email"]) == [f"b{n}@example.com" for n in range(5)]
    assert client.stats.retries == 1


def test_a_401_or_400_fails_at_once_naming_the_endpoint(shared_sandbox) -> None:
    sandbox = shared_sandbox
    client = client_for(sandbox, key="SG.not-the-key")
    with pytest.raises(SendGridAuthError) as refused:
        read_suppressions(client, "unsubscribe", None, T0)
    assert "/v3/suppression/unsubscribes" in str(refused.value)
    assert not refused.value.retryable and client.stats.requests == 1
    client = client_for(sandbox)
    with pytest.raises(SendGridBadRequestError) as bad:
        read_suppressions(client, "spam_report", T0 + 5, T0)
    assert "/v3/suppression/spam_reports" in str(bad.value) and "start_time" in str(bad.value)
    assert client.stats.requests == 1


def test_an_unknown_group_fails_naming_it(shared_sandbox) -> None:
    from sendgrid_pipeline.sendgrid.errors import SendGridNotFoundError
    from sendgrid_pipeline.sendgrid.suppressions import read_group_suppressions

    with pytest.raises(SendGridNotFoundError, match="/v3/asm/groups/999/suppressions"):
        read_group_suppressions(client_for(shared_sandbox), 999)


# -- configuration ---------------------------------------------------------------------------
def test_destinations_of_one_account_must_read_the_same_suppressions(data_dir) -> None:
    path = data_dir / "destinations.yaml"
    document = yaml.safe_load(path.read_text())
    document["destinations"][1]["suppression_kinds"] = ["unsubscribe"]
    path.write_text(yaml.safe_dump(document))
    with pytest.raises(ConfigError, match="suppression_kinds"):
        load_config(data_dir)


def test_suppression_settings_default_and_validate(data_dir) -> None:
    destination = load_config(data_dir).destinations[0]
    assert destination.exclude_suppressed is False
    assert destination.suppression_kinds == (
        "unsubscribe",
        "bounce",
        "spam_report",
        "invalid_email",
    )
    edit_destinations(data_dir, suppression_group_ids=[0])
    with pytest.raises(ConfigError, match="unsubscribe group id"):
        load_config(data_dir)
    edit_destinations(data_dir, suppression_group_ids=[5], suppression_kinds=["spam"])
    with pytest.raises(ConfigError, match="suppression_kinds"):
        load_config(data_dir)


def test_its_own_job_and_a_stopped_schedule_not_upstream_of_the_export(data_dir) -> None:
    from sendgrid_pipeline.pipeline import EXPORT_JOB

    defs = definitions(data_dir)
    export_job = defs.resolve_job_def(EXPORT_JOB)
    assert dg.AssetKey("sendgrid_unsubscribes") not in export_job.asset_layer.selected_asset_keys
    assert dg.AssetKey("sendgrid_list_sync") in export_job.asset_layer.selected_asset_keys
    schedule = defs.resolve_schedule_def("sendgrid_unsubscribes_schedule")
    assert schedule.default_status == dg.DefaultScheduleStatus.STOPPED
    assert schedule.job_name == JOB
    graph = defs.resolve_asset_graph()
    sync = graph.get(dg.AssetKey("sendgrid_list_sync"))
    contacts = graph.get(dg.AssetKey("sendgrid_contacts"))
    for node in (sync, contacts):
        assert dg.AssetKey("sendgrid_unsubscribes") not in node.parent_keys
