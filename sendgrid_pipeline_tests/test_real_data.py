"""The whole graph on data nobody designed: clean destinations, long emails, faults that must
not be retried, jobs that all fail, a damaged state file. Real HTTP against the sandbox."""

from __future__ import annotations

from pathlib import Path

import dagster as dg
import polars as pl
import pytest
import yaml

from sendgrid_pipeline.assets.common import retry_only_transient
from sendgrid_pipeline.config import load_config
from sendgrid_pipeline.sendgrid.errors import (
    ApiErrorDetail,
    SendGridBadRequestError,
    SendGridUnavailableError,
)
from sendgrid_pipeline_tests.conftest import REPO_DATA
from sendgrid_pipeline_tests.devkit.sandbox import FaultPlan
from sendgrid_pipeline_tests.helpers import export, resources_for, step_failure_messages

LONG_EMAIL = "l" * 64 + "@" + ".".join(["d" * 61, "e" * 61, "f" * 53]) + ".example.com"
assert len(LONG_EMAIL) == 254


def _set_up(data_dir: Path, rule: str, extra_profiles: pl.DataFrame | None = None) -> str:
    """One destination, `pair`, on an existing sandbox list, fed by one rule segment."""
    list_id = load_config(REPO_DATA).destination("vip_program").list_id  # a sandbox list
    profiles_path = data_dir / "profiles" / "profiles.csv"
    profiles = pl.read_csv(profiles_path, infer_schema=False)
    if "store_code" not in profiles.columns:  # digits with leading zeros, for a Text field
        profiles = profiles.with_columns(
            pl.format("0{}", pl.int_range(pl.len()).cast(pl.String).str.zfill(4)).alias(
                "store_code"
            )
        )
    if extra_profiles is not None:
        profiles = pl.concat([profiles, extra_profiles], how="diagonal_relaxed")
    profiles.write_csv(profiles_path)
    segments = yaml.safe_load((data_dir / "segments.yaml").read_text())
    segments["segments"] = [s for s in segments["segments"] if s["id"] != "pair"]
    segments["segments"].append({"id": "pair", "name": "Pair", "rule": rule})
    (data_dir / "segments.yaml").write_text(yaml.safe_dump(segments))
    destination = {
        "name": "pair",
        "display_name": "Pair",
        "list_id": list_id,
        "consent": True,
        "field_mapping": {
            "email": "email",
            "first_name": "first_name",
            "postal_code": "postal_code",
            "custom_fields": {"store_code": {"source": "store_code", "type": "Text"}},
        },
        "create_missing_custom_fields": True,
        "segments": ["pair"],
    }
    (data_dir / "destinations.yaml").write_text(yaml.safe_dump({"destinations": [destination]}))
    return list_id


def _events(result: dg.ExecuteInProcessResult, kind: str) -> list:
    return [e for e in result.all_events if e.event_type_value == kind]


def test_a_destination_with_no_rejected_row_syncs(data_dir, sandbox) -> None:
    list_id = _set_up(data_dir, "customer_id IN ('C0000001','C0000002')")
    result = export(data_dir, sandbox, partitions=["pair"])
    assert result.success, step_failure_messages(result)
    members = sandbox.list_member_emails(list_id)
    assert len(members) == 2
    report = pl.read_csv(data_dir / "reports" / "rejected" / "pair.csv")
    assert report.height == 0 and "reason" in report.columns
    codes = {sandbox.contact(e)["custom_fields"]["store_code"] for e in members}
    assert codes == {"00000", "00001"}  # leading zeros survive the whole way


def test_an_emptied_segment_reaches_the_brake_with_its_message(data_dir, sandbox) -> None:
    _set_up(data_dir, "customer_id IN ('C0000001','C0000002')")
    assert export(data_dir, sandbox, partitions=["pair"]).success
    _set_up(data_dir, "customer_id IN ('NO-SUCH-ID')")
    result = export(data_dir, sandbox, partitions=["pair"])
    assert not result.success
    assert "would empty the list" in step_failure_messages(result)
    assert not _events(result, "STEP_UP_FOR_RETRY")  # a refusal is not retried


def test_a_254_character_email_joins_and_then_leaves(data_dir, sandbox) -> None:
    long_profile = pl.DataFrame(
        {"customer_id": ["C9999999"], "email": [LONG_EMAIL], "first_name": ["Long"]}
    )
    list_id = _set_up(data_dir, "customer_id IN ('C0000001','C9999999')", long_profile)
    result = export(data_dir, sandbox, partitions=["pair"])
    assert result.success, step_failure_messages(result)
    assert LONG_EMAIL in sandbox.list_member_emails(list_id)
    _set_up(data_dir, "customer_id IN ('C0000001')")
    sandbox.reset_request_log()
    result = export(data_dir, sandbox, partitions=["pair"])
    assert result.success, step_failure_messages(result)
    assert sandbox.list_member_emails(list_id) == {"charlie.miller@gmail.com"}
    searches = [r for r in sandbox.requests if r.path == "/v3/marketing/contacts/search/emails"]
    assert not searches  # the email search refuses it; SGQL resolved it instead


def test_a_refused_key_fails_at_once_without_retries(data_dir, sandbox) -> None:
    refused = resources_for(data_dir, sandbox, api_key="SG.revoked-key-0123456789")
    name = load_config(data_dir).destination_names[0]
    result = export(data_dir, sandbox, partitions=[name], resources=refused)
    assert not result.success
    messages = step_failure_messages(result)
    assert "HTTP 401" in messages and "revoked-key" not in messages
    assert not _events(result, "STEP_UP_FOR_RETRY")


def test_a_missing_upstream_output_says_what_to_run_and_is_not_retried(data_dir, sandbox) -> None:
    name = load_config(data_dir).destination_names[0]
    result = export(data_dir, sandbox, partitions=[name], selection=["sendgrid_list_sync"])
    assert not result.success
    assert f"materialize sendgrid_contacts for destination {name!r} first" in (
        step_failure_messages(result)
    )
    assert not _events(result, "STEP_UP_FOR_RETRY")


def test_a_sync_whose_jobs_all_fail_fails_its_destination(data_dir, sandbox) -> None:
    sandbox.set_faults(FaultPlan(fail_jobs=True))
    name = load_config(data_dir).destination_names[0]
    result = export(data_dir, sandbox, partitions=[name])
    assert not result.success
    assert "max_rejected_share" in step_failure_messages(result)
    assert not [
        e
        for e in _events(result, "ASSET_MATERIALIZATION")
        if e.event_specific_data.materialization.asset_key.path == ["sendgrid_list_sync"]
    ]


def test_a_damaged_state_file_says_which_file_and_how_to_recover(data_dir, sandbox) -> None:
    state = data_dir / "state" / "sync_state.sqlite"
    state.parent.mkdir(parents=True, exist_ok=True)
    state.write_bytes(b"garbage that mentions ann@example.com " * 200)
    result = export(data_dir, sandbox)
    assert not result.success
    messages = step_failure_messages(result)
    assert str(state) in messages and "sendgrid/reconcile=true" in messages
    assert "ann@example.com" not in messages
    assert not _events(result, "STEP_UP_FOR_RETRY")


@pytest.mark.parametrize(
    ("error", "retried"),
    [
        (SendGridBadRequestError("PUT", "/v3/marketing/contacts", 400), False),
        (SendGridBadRequestError("PUT", "/v3/marketing/contacts", 422), False),
        (SendGridUnavailableError("PUT", "/v3/x", 503, [ApiErrorDetail("busy")]), True),
        (SendGridUnavailableError("PUT", "/v3/x", None), True),
        (FileNotFoundError("storage/x.parquet"), False),
        (KeyError("a bug of ours"), False),
    ],
)
def test_only_transient_errors_are_retried(error: Exception, retried: bool) -> None:
    with pytest.raises(dg.Failure) as raised, retry_only_transient():
        raise error
    assert raised.value.allow_retries is retried
    assert raised.value.__cause__ is error


def test_a_restored_state_backup_is_detected_through_dagsters_record(data_dir, sandbox) -> None:
    instance = dg.DagsterInstance.ephemeral()
    list_id = _set_up(data_dir, "customer_id IN ('C0000001','C0000002')")
    assert export(data_dir, sandbox, partitions=["pair"], instance=instance).success
    state = data_dir / "state" / "sync_state.sqlite"
    backup = state.read_bytes()
    _set_up(data_dir, "customer_id IN ('C0000001','C0000002','C0000003')")
    assert export(data_dir, sandbox, partitions=["pair"], instance=instance).success
    for leftover in state.parent.glob(state.name + "-*"):
        leftover.unlink()
    state.write_bytes(backup)
    _set_up(data_dir, "customer_id IN ('C0000001','C0000002')")
    result = export(data_dir, sandbox, partitions=["pair"], instance=instance)
    assert result.success, step_failure_messages(result)
    assert len(sandbox.list_member_emails(list_id)) == 2
