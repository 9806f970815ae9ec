"""Erasure requests end to end: real Dagster runs against the sandbox over loopback HTTP."""

from __future__ import annotations

import json
from pathlib import Path

import dagster as dg
import polars as pl
import pytest
import yaml

from sendgrid_pipeline.assets.erasures import ERASURE_FILE_TAG, ERASURE_JOB
from sendgrid_pipeline.config import load_config
from sendgrid_pipeline.erasure import email_hash
from sendgrid_pipeline.erasure_ledger import erasure_ledger
from sendgrid_pipeline.pipeline import load_validated_config
from sendgrid_pipeline_tests.devkit.sandbox.faults import FaultPlan
from sendgrid_pipeline_tests.helpers import (
    definitions,
    export,
    resources_for,
    step_failure_messages,
)


def enable_recipient_erasure(data_dir: Path) -> None:
    path = data_dir / "destinations.yaml"
    document = yaml.safe_load(path.read_text())
    for destination in document["destinations"]:
        destination["erase_recipient_data"] = True
    path.write_text(yaml.safe_dump(document, sort_keys=False))


def drop_request(data_dir: Path, name: str, text: str) -> Path:
    folder = data_dir / "erasures"
    folder.mkdir(exist_ok=True)
    path = folder / name
    path.write_text(text, encoding="utf-8")
    return path


def run_erasure(
    data_dir: Path, sandbox, instance: dg.DagsterInstance, tags: dict[str, str] | None = None
) -> dg.ExecuteInProcessResult:
    job = definitions(data_dir, sandbox).resolve_job_def(ERASURE_JOB)
    return job.execute_in_process(instance=instance, tags=tags or {}, raise_on_error=False)


def on_two_lists(data_dir: Path, sandbox) -> tuple[str, list[str]]:
    """An email the first export put on two lists (the smallest, for a stable choice)."""
    config = load_config(data_dir)
    lists = {d.name: sandbox.list_member_emails(d.list_id) for d in config.destinations}
    names = list(lists)
    for i, first in enumerate(names):
        for second in names[i + 1 :]:
            shared = sorted(lists[first] & lists[second])
            if shared:
                return shared[0], [first, second]
    raise AssertionError("no contact is on two lists in the sample data")


def materialization(result: dg.ExecuteInProcessResult, asset: str) -> dict:
    for event in result.get_asset_materialization_events():
        if event.asset_key == dg.AssetKey(asset):
            return {k: v.value for k, v in event.materialization.metadata.items()}
    raise AssertionError(f"{asset} was not materialized")


def test_an_erasure_removes_from_both_lists_deletes_and_a_stale_profile_is_not_re_added(
    data_dir: Path, sandbox
) -> None:
    enable_recipient_erasure(data_dir)
    instance = dg.DagsterInstance.ephemeral()
    first = export(data_dir, sandbox, instance=instance)
    assert first.success, step_failure_messages(first)
    email, destinations = on_two_lists(data_dir, sandbox)
    config = load_config(data_dir)
    list_ids = [config.destination(name).list_id for name in destinations]

    drop_request(data_dir, "gdpr-0001.csv", f"email,requested_by\n{email.upper()},dpo\n")
    result = run_erasure(data_dir, sandbox, instance)
    assert result.success, step_failure_messages(result)

    for list_id in list_ids:
        assert email not in sandbox.list_member_emails(list_id)
    assert sandbox.contact(email) is None
    assert sandbox.deleted_emails().count(email) == 1
    assert sandbox.delete_all_requests == 0
    assert [email] in [emails for _, emails in sandbox.erasure_jobs()]
    deletes = [r for r in sandbox.requests if r.method == "DELETE"]
    assert {r.path for r in deletes} >= {"/v3/marketing/contacts"}
    resources = resources_for(data_dir, sandbox)
    ledger = erasure_ledger(resources.sync_state)
    assert ledger.subjects("erased")["email"].to_list() == [email]
    store = resources.sync_state.store()
    for name, list_id in zip(destinations, list_ids, strict=True):
        assert email not in store.for_list(name, list_id).members()["email"].to_list()
    metadata = materialization(result, "sendgrid_erasures")
    assert metadata["erased"] == 1 and metadata["deleted_contacts"] == 1

    # the request file was archived, and the audit file names no email in clear
    assert not (data_dir / "erasures" / "gdpr-0001.csv").exists()
    assert list((data_dir / "erasures" / "archive").glob("gdpr-0001.*.csv"))
    audits = list((data_dir / "reports" / "erasures").glob("*.jsonl"))
    assert len(audits) == 1
    text = audits[0].read_text()
    assert email not in text.lower()
    records = [json.loads(line) for line in text.splitlines()]
    assert any(r.get("email_sha256") == email_hash(email) for r in records)
    kinds = {r["kind"] for r in records if r["record"] == "request"}
    assert kinds == {"list_removal", "contact_deletion", "recipient_erasure"}
    assert all(r["job_id"] for r in records if r["record"] == "request")

    # the profile still holds the person: the next sync leaves them out of every list
    sandbox.reset_request_log()
    later = export(data_dir, sandbox, instance=instance)
    assert later.success, step_failure_messages(later)
    assert sandbox.contact(email) is None
    for d in config.destinations:
        assert email not in sandbox.list_member_emails(d.list_id)
    rejected = pl.read_csv(data_dir / "reports" / "rejected" / f"{destinations[0]}.csv")
    assert "erased" in set(rejected["reason"])
    assert email not in rejected.to_pandas().to_csv()


def test_a_mass_erasure_trips_the_brake_and_sends_nothing(data_dir: Path, sandbox) -> None:
    instance = dg.DagsterInstance.ephemeral()
    first = export(data_dir, sandbox, instance=instance)
    assert first.success, step_failure_messages(first)
    config = load_config(data_dir)
    target = config.destinations[0]
    members = sorted(sandbox.list_member_emails(target.list_id))
    assert len(members) >= 40, "the sample list is big enough for a share to mean something"
    half = members[: len(members) // 2]
    drop_request(data_dir, "mass.csv", "email\n" + "\n".join(half) + "\n")

    sandbox.reset_request_log()
    refused = run_erasure(data_dir, sandbox, instance)
    assert not refused.success
    message = step_failure_messages(refused)
    assert "sendgrid/allow_mass_erasure=true" in message
    assert f"{len(half)} of the {len(members)} contacts" in message
    writes = [r for r in sandbox.requests if r.method in ("DELETE", "PUT", "POST")]
    assert [r.path for r in writes if r.path != "/v3/marketing/contacts/search/emails"] == []
    ledger = erasure_ledger(resources_for(data_dir, sandbox).sync_state)
    assert ledger.subjects().height == 0  # nothing recorded: the syncs still export them
    assert (data_dir / "erasures" / "mass.csv").exists()  # left for a rerun with the tag

    allowed = run_erasure(data_dir, sandbox, instance, tags={"sendgrid/allow_mass_erasure": "true"})
    assert allowed.success, step_failure_messages(allowed)
    assert not sandbox.list_member_emails(target.list_id) & set(half)


def test_a_lost_answer_ends_with_the_person_deleted_once(data_dir: Path, sandbox) -> None:
    instance = dg.DagsterInstance.ephemeral()
    first = export(data_dir, sandbox, instance=instance)
    assert first.success, step_failure_messages(first)
    email, _ = on_two_lists(data_dir, sandbox)
    drop_request(data_dir, "lost.csv", f"email\n{email}\n")
    # the deletion is applied, then the connection drops before the answer
    sandbox.set_faults(FaultPlan(only_paths=r"^/v3/marketing/contacts$", scripted=["lost"]))
    result = run_erasure(data_dir, sandbox, instance)
    sandbox.set_faults(FaultPlan())
    ledger = erasure_ledger(resources_for(data_dir, sandbox).sync_state)
    if not result.success:  # the person stays pending and blocked; the next run settles it
        assert ledger.subjects("pending")["email"].to_list() == [email]
        audit = next((data_dir / "reports" / "erasures").glob("*.jsonl")).read_text()
        assert '"kind": "contact_deletion"' in audit and email not in audit  # audited too
        again = run_erasure(data_dir, sandbox, instance)
        assert again.success, step_failure_messages(again)
    sandbox.wait_for_idle()
    assert sandbox.deleted_emails().count(email) == 1
    assert ledger.subjects("erased")["email"].to_list() == [email]
    assert sandbox.fault_counts.get("lost", 0) == 1


def test_withdrawal_lets_a_later_sync_export_the_person_again(data_dir: Path, sandbox) -> None:
    instance = dg.DagsterInstance.ephemeral()
    assert export(data_dir, sandbox, instance=instance).success
    email, destinations = on_two_lists(data_dir, sandbox)
    config = load_validated_config(data_dir)
    list_id = config.destination(destinations[0]).list_id
    drop_request(data_dir, "erase.csv", f"email\n{email}\n")
    assert run_erasure(data_dir, sandbox, instance).success
    assert export(data_dir, sandbox, instance=instance).success
    assert email not in sandbox.list_member_emails(list_id)

    drop_request(data_dir, "withdraw.csv", f"email,action\n{email},withdraw\n")
    withdrawn = run_erasure(data_dir, sandbox, instance)
    assert withdrawn.success, step_failure_messages(withdrawn)
    assert materialization(withdrawn, "sendgrid_erasures")["withdrawn"] == 1
    assert export(data_dir, sandbox, instance=instance).success
    assert email in sandbox.list_member_emails(list_id)


def test_customer_ids_resolve_through_the_profiles_and_unknown_ones_are_rejected(
    data_dir: Path, sandbox
) -> None:
    instance = dg.DagsterInstance.ephemeral()
    assert export(data_dir, sandbox, instance=instance).success
    email, _ = on_two_lists(data_dir, sandbox)
    store = resources_for(data_dir, sandbox).sync_state.store()
    config = load_config(data_dir)
    members = store.for_list(config.destinations[0].name, config.destinations[0].list_id)
    del members  # the id comes from the profiles, not the state
    profiles = pl.concat(
        [pl.read_csv(f, infer_schema=False) for f in sorted((data_dir / "profiles").glob("*.csv"))],
        how="diagonal_relaxed",
    )
    customer_id = (
        profiles.filter(pl.col("email").str.strip_chars().str.to_lowercase() == email)
        .sort("customer_id")["customer_id"]
        .item(0)
    )
    drop_request(data_dir, "unknown.csv", "customer_id\nNO-SUCH-CUSTOMER\n")
    bad = run_erasure(data_dir, sandbox, instance)
    assert not bad.success
    message = step_failure_messages(bad)
    assert "unknown.csv: row 1, field customer_id" in message
    assert list((data_dir / "erasures" / "rejected").glob("unknown.*.csv"))

    drop_request(data_dir, "by-id.csv", f"customer_id\n{customer_id}\n")
    good = run_erasure(data_dir, sandbox, instance)
    assert good.success, step_failure_messages(good)
    assert sandbox.contact(email) is None


@pytest.mark.parametrize(
    ("text", "where"),
    [
        ("name\nx\n", "unknown column(s) 'name'"),
        ("email\nnot-an-address\n", "row 1, field email"),
        ("email,action\na@example.com,forget\n", "row 1, field action"),
        ("email,customer_id\n,\n", "row 1, field email"),
    ],
)
def test_a_bad_file_is_rejected_naming_file_row_and_field(
    data_dir: Path, sandbox, text: str, where: str
) -> None:
    drop_request(data_dir, "bad.csv", text)
    result = run_erasure(data_dir, sandbox, dg.DagsterInstance.ephemeral())
    assert not result.success
    message = step_failure_messages(result)
    assert "bad.csv" in message and where in message
    assert "not-an-address" not in message  # values are masked
    notes = list((data_dir / "erasures" / "rejected").glob("bad.*.result.txt"))
    assert len(notes) == 1 and where in notes[0].read_text()
    assert [r for r in sandbox.requests if r.method in ("DELETE", "POST")] == []


def test_the_sensor_asks_one_run_per_dropped_file_and_a_new_one_when_it_changes(
    data_dir: Path,
) -> None:
    defs = definitions(data_dir)
    sensor = defs.resolve_sensor_def("erasure_request_sensor")
    drop_request(data_dir, "a.csv", "email\na@example.com\n")
    drop_request(data_dir, ".hidden.csv", "email\nb@example.com\n")  # being written
    drop_request(data_dir, "notes.txt", "not a request")
    context = dg.build_sensor_context(
        instance=dg.DagsterInstance.ephemeral(),
        definitions=defs,
        resources={"sync_state": resources_for(data_dir).sync_state},
    )
    first = sensor.evaluate_tick(context).run_requests
    assert [r.tags[ERASURE_FILE_TAG] for r in first] == ["a.csv"]
    drop_request(data_dir, "a.csv", "email\na@example.com\nc@example.com\n")
    second = sensor.evaluate_tick(context).run_requests
    assert second[0].run_key != first[0].run_key

    # no file, but a person an earlier run could not confirm: one retry run an hour
    (data_dir / "erasures" / "a.csv").unlink()
    assert sensor.evaluate_tick(context).run_requests == []
    ledger = erasure_ledger(resources_for(data_dir).sync_state)
    ledger.record(
        pl.DataFrame(
            {"email": ["p@example.com"], "customer_id": [None], "requested_by": [None]},
            schema_overrides={"customer_id": pl.String, "requested_by": pl.String},
        ),
        "earlier.csv",
    )
    retry = sensor.evaluate_tick(context).run_requests
    assert len(retry) == 1 and retry[0].run_key.startswith("retry-pending:")


def test_the_contact_deletion_keeps_sendgrids_published_contract(data_dir: Path) -> None:
    from sendgrid_pipeline_tests.devkit.sandbox import SandboxServer
    from sendgrid_pipeline_tests.devkit.sandbox.contract import Contract

    contract = Contract()
    lists = SandboxServer.lists_from_destinations_file(data_dir / "destinations.yaml")
    with SandboxServer(lists=lists, job_delay_seconds=0.02, contract=contract) as sandbox:
        instance = dg.DagsterInstance.ephemeral()
        assert export(data_dir, sandbox, instance=instance).success
        email, _ = on_two_lists(data_dir, sandbox)
        drop_request(data_dir, "contract.csv", f"email\n{email}\n")
        result = run_erasure(data_dir, sandbox, instance)
        assert result.success, step_failure_messages(result)
    assert contract.violations == [], "\n".join(map(str, contract.violations))
    assert ("DELETE", "/v3/marketing/contacts") in {(m, p) for m, p in contract.checked}


def test_an_erasure_recorded_after_the_contacts_were_built_is_not_sent(data_dir, sandbox) -> None:
    """The race between an erasure and a sync already running: its contacts step ran before
    the erasure was recorded, its sync step after. The sync reads the ledger under the list's
    lock, so the person is never upserted again and is taken off the list."""
    name = load_config(data_dir).destination_names[0]
    first = export(data_dir, sandbox, partitions=[name])
    assert first.success, step_failure_messages(first)
    list_id = load_config(data_dir).destination(name).list_id
    person = sorted(sandbox.list_member_emails(list_id))[0]
    contacts = export(
        data_dir,
        sandbox,
        partitions=[name],
        selection=["unified_profiles", "segment_membership", "sendgrid_contacts"],
    )
    assert contacts.success, step_failure_messages(contacts)
    ledger = erasure_ledger(resources_for(data_dir, sandbox).sync_state)
    subject = pl.DataFrame(
        {"email": [person], "customer_id": [None], "requested_by": ["dpo"]},
        schema={"email": pl.String, "customer_id": pl.String, "requested_by": pl.String},
    )
    ledger.record(subject, "late.csv")  # recorded after the contacts step, before the sync
    sandbox.reset_request_log()
    sync = export(data_dir, sandbox, partitions=[name], selection=["sendgrid_list_sync"])
    assert sync.success, step_failure_messages(sync)
    sandbox.wait_for_idle()
    assert person not in sandbox.list_member_emails(list_id)
    assert [r for r in sandbox.requests if r.method == "PUT"] == []  # nothing sent for them
