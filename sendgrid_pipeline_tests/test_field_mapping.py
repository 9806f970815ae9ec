"""Full field mapping against the sandbox: custom fields, reserved fields, expressions, segments."""

from __future__ import annotations

import logging
from pathlib import Path

import polars as pl
import pytest
import yaml

from sendgrid_pipeline.config import CustomField, Destination, FieldMapping, Segment, load_config
from sendgrid_pipeline.errors import ConfigError
from sendgrid_pipeline.pipeline import load_validated_config
from sendgrid_pipeline.sendgrid.client import SendGridClient
from sendgrid_pipeline.state import SyncStateStore
from sendgrid_pipeline.sync.apply import DestinationSync
from sendgrid_pipeline.sync.custom_fields import CustomFieldError, resolve_custom_field_ids
from sendgrid_pipeline.transform import contact_json, destination_contacts, segment_membership
from sendgrid_pipeline_tests.devkit.sandbox import SandboxServer
from sendgrid_pipeline_tests.helpers import export, step_failure_messages

log = logging.getLogger("field_mapping")


def _edit_destinations(data_dir: Path, name: str, **changes) -> None:
    path = data_dir / "destinations.yaml"
    document = yaml.safe_load(path.read_text())
    destination = next(d for d in document["destinations"] if d["name"] == name)
    destination.update(changes)
    path.write_text(yaml.safe_dump(document, sort_keys=False))


def test_custom_fields_are_created_resolved_by_name_and_typed(data_dir, sandbox) -> None:
    sandbox.define_custom_field("loyalty_tier", "Text")  # one exists already, by another id
    result = export(data_dir, sandbox, partitions=["vip_program"])
    assert result.success, step_failure_messages(result)
    profiles = pl.read_csv(data_dir / "profiles" / "profiles.csv", infer_schema_length=0)
    some = profiles.filter(
        (pl.col("loyalty_tier") == "platinum") & (pl.col("email_opt_in") == "true")
    ).row(0, named=True)
    stored = sandbox.contact(some["email"].strip().lower())
    custom = stored["custom_fields"]
    assert custom["loyalty_tier"] == "platinum"
    assert custom["lifetime_value"] == pytest.approx(float(some["lifetime_value"]))
    year, month, day = some["last_purchase_date"].split("-")
    assert custom["last_purchase_date"] == f"{month}/{day}/{year}"  # SendGrid's date form
    assert custom["spend_band"] in {"top", "high", "standard"}  # a SQL expression
    assert stored["external_id"] == some["customer_id"]
    # a refresh compares what was sent by id: nothing changes, nothing is sent
    sandbox.reset_request_log()
    assert export(data_dir, sandbox, partitions=["vip_program"]).success
    assert [r for r in sandbox.requests if r.method == "PUT"] == []


def test_a_missing_custom_field_lists_the_existing_ones_and_sends_nothing(
    data_dir, sandbox
) -> None:
    sandbox.define_custom_field("loyalty_tier", "Text")
    sandbox.define_custom_field("favourite_store", "Text")
    _edit_destinations(data_dir, "vip_program", create_missing_custom_fields=False)
    result = export(data_dir, sandbox, partitions=["vip_program"])
    assert not result.success
    message = step_failure_messages(result)
    assert "no custom field 'lifetime_value'" in message
    assert "Existing custom fields: favourite_store, loyalty_tier" in message
    assert [r for r in sandbox.requests if r.method in ("PUT", "DELETE", "POST")] == []


def with_custom_fields(**custom: CustomField) -> Destination:
    """A minimal destination that maps email and the given custom fields."""
    return Destination(
        name="d",
        display_name="D",
        list_id="l",
        consent=True,
        segments=("s",),
        field_mapping=FieldMapping(email="email", custom_fields=custom),
    )


def test_a_custom_field_of_another_type_is_refused(sandbox) -> None:
    sandbox.define_custom_field("lifetime_value", "Text")
    destination = with_custom_fields(lifetime_value=CustomField(source="ltv", type="Number"))
    client = SendGridClient(sandbox.api_key, sandbox.base_url)
    with pytest.raises(
        CustomFieldError, match="is a Text field in SendGrid but is mapped as Number"
    ):
        resolve_custom_field_ids(client, destination, log)


def test_unconvertible_custom_values_are_rejected_rows() -> None:
    profiles = pl.DataFrame(
        {
            "customer_id": ["C1", "C2", "C3"],
            "email": ["a@example.com", "b@example.com", "c@example.com"],
            "ltv": ["12.5", "twelve", None],
            "since": ["2024-02-29", "29/02/2024", "02/28/2024"],
        }
    )
    destination = with_custom_fields(
        ltv=CustomField(source="ltv", type="Number"),
        since=CustomField(source="since", type="Date"),
    )
    membership = segment_membership(profiles, (Segment(id="s", name="S", rule="TRUE"),))
    result = destination_contacts(profiles, membership, destination)
    assert dict(result.rejected.select("customer_id", "reason").iter_rows()) == {
        "C2": "ltv_not_a_number"
    }
    (c1, c3) = result.accepted.iter_rows(named=True)
    assert c1["custom_fields.since"] == "02/29/2024" and c3["custom_fields.since"] == "02/28/2024"
    encoded = contact_json(result.accepted, ["email"], {"ltv": "e1_N", "since": "e2_D"}, {"ltv"})
    assert encoded.to_list() == [
        '{"email":"a@example.com","custom_fields":{"e1_N":12.5,"e2_D":"02/29/2024"}}',
        '{"email":"c@example.com","custom_fields":{"e2_D":"02/28/2024"}}',  # null: left out
    ]


RESERVED = Destination(
    name="reserved",
    display_name="Reserved",
    list_id="6e1f0a2b-3c4d-4e5f-8a9b-0c1d2e3f4a5b",
    consent=True,
    segments=("s",),
    field_mapping=FieldMapping(
        email="email",
        address_line_1="street",
        address_line_2="unit",
        alternate_emails="other_emails",
        phone_number_id="phone_id",
        external_id="crm_id",
        anonymous_id="cookie_id",
        country="CASE country_code WHEN 'FR' THEN 'France' WHEN 'DE' THEN 'Germany' END",
    ),
)


def _reserved_profiles(crm_ids: list[str | None]) -> pl.DataFrame:
    return pl.DataFrame(
        {
            "customer_id": ["C1", "C2", "C3"],
            "email": ["ann@example.com", "bob@example.com", "cy@example.com"],
            "street": ["1 rue de la Paix", "2 Hauptstraße", "x" * 101],
            "unit": ["Bât. B", None, None],
            "other_emails": ["Ann.Work@Example.com; ann@home.example", None, None],
            "phone_id": ["ph-1", None, None],
            "crm_id": crm_ids,
            "cookie_id": [None, "anon-2", None],
            "country_code": ["FR", "DE", "FR"],
        }
    )


def _sync_reserved(sandbox, tmp_path, profiles):
    membership = segment_membership(profiles, (Segment(id="s", name="S", rule="TRUE"),))
    result = destination_contacts(profiles, membership, RESERVED)
    client = SendGridClient(sandbox.api_key, sandbox.base_url, poll_interval_seconds=0.01)
    store = SyncStateStore(tmp_path / "state.sqlite")
    return result, DestinationSync(client, store, RESERVED, log).run(result.accepted)


def test_every_writable_reserved_field_and_identifier_consistency(tmp_path) -> None:
    with SandboxServer(lists={RESERVED.list_id: "R"}, job_delay_seconds=0.01) as sandbox:
        result, report = _sync_reserved(
            sandbox, tmp_path, _reserved_profiles(["crm-1", "crm-2", "crm-3"])
        )
        assert dict(result.rejected.select("customer_id", "reason").iter_rows()) == {
            "C3": "address_line_1_too_long"
        }
        ann = sandbox.contact("ann@example.com")
        assert ann["address_line_1"] == "1 rue de la Paix" and ann["address_line_2"] == "Bât. B"
        assert ann["alternate_emails"] == ["ann.work@example.com", "ann@home.example"]
        assert ann["phone_number_id"] == "ph-1" and ann["external_id"] == "crm-1"
        assert ann["country"] == "France"
        assert sandbox.contact("bob@example.com")["anonymous_id"] == "anon-2"
        # the profile source loses bob's CRM id: his identifier set is kept, nothing to send
        sandbox.reset_request_log()
        _, report = _sync_reserved(sandbox, tmp_path, _reserved_profiles(["crm-1", None, "crm-3"]))
        assert report.plan.counts()["update"] == 0
        assert sandbox.contact("bob@example.com")["external_id"] == "crm-2"
        assert [r for r in sandbox.requests if r.method == "PUT"] == []


def test_more_than_five_alternate_emails_is_a_rejected_row() -> None:
    others = ",".join(f"alt{i}@example.com" for i in range(6))
    profiles = _reserved_profiles(["a", "b", "c"]).with_columns(
        pl.when(pl.col("customer_id") == "C1").then(pl.lit(others)).alias("other_emails")
    )
    membership = segment_membership(profiles, (Segment(id="s", name="S", rule="TRUE"),))
    rejected = destination_contacts(profiles, membership, RESERVED).rejected
    assert dict(rejected.select("customer_id", "reason").iter_rows())["C1"] == (
        "too_many_alternate_emails"
    )


def test_mapping_expressions_are_validated_when_definitions_load(data_dir) -> None:
    _edit_destinations(
        data_dir,
        "winback_campaign",
        field_mapping={"email": "email", "first_name": "INITCAP(nickname)"},
    )
    with pytest.raises(ConfigError, match=r"'winback_campaign' maps field_mapping.first_name.*"):
        load_validated_config(data_dir)
    _edit_destinations(
        data_dir, "winback_campaign", field_mapping={"email": "email", "first_name": "UPPER("}
    )
    with pytest.raises(ConfigError, match="invalid SQL expression 'UPPER\\('"):
        load_config(data_dir)


def test_include_exclude_and_membership_file_segments_with_overlaps(data_dir, sandbox) -> None:
    result = export(data_dir, sandbox, partitions=["winback_campaign"])
    assert result.success, step_failure_messages(result)
    profiles = pl.read_csv(data_dir / "profiles" / "profiles.csv", infer_schema_length=0)
    churn = set(
        pl.read_csv(data_dir / "memberships" / "churn_risk.csv", infer_schema_length=0)[
            "customer_id"
        ]
    )
    sent = pl.read_parquet(data_dir / "storage" / "sendgrid_contacts" / "winback_campaign.parquet")
    on_list = profiles.filter(pl.col("customer_id").is_in(sent["customer_id"].implode()))
    assert on_list.height == sent.height > 100
    assert (
        on_list.filter(pl.col("loyalty_tier").is_in(["gold", "platinum"])).height == 0
    )  # excluded
    assert on_list.filter(pl.col("email_opt_in") != "true").height == 0  # consent still applies
    assert set(on_list["customer_id"]) & churn  # file members arrived
    metadata = {}
    for event in result.all_events:
        if event.event_type_value == "ASSET_MATERIALIZATION":
            record = event.event_specific_data.materialization
            # each partition shows its own destination's segments: churn_risk is winback_campaign's
            if (
                record.asset_key.path == ["segment_membership"]
                and record.partition == "winback_campaign"
            ):
                metadata = {k: getattr(v, "value", v) for k, v in record.metadata.items()}
    assert metadata["segment_churn_risk"] == len(churn & set(profiles["customer_id"]))
    overlap_rows = {row.data["segment"]: row.data for row in metadata["segment_overlaps"].records}
    assert overlap_rows["vip"]["vip"] >= 1  # the diagonal: the segment's own size
