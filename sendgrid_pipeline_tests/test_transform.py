"""Segment membership and contact building on hand-made profiles."""

from __future__ import annotations

import polars as pl

from sendgrid_pipeline.config import Destination, FieldMapping, Segment
from sendgrid_pipeline.transform import contact_json, destination_contacts, segment_membership

PROFILES = pl.DataFrame(
    {
        "customer_id": ["C1", "C2", "C3", "C4", "C5", "C6", "C7", "C8"],
        "email": [
            "  Jane.Doe@Example.COM ",  # padded, mixed case
            "jane.doe@example.com",  # same address as C1: duplicate
            "no-at-sign.example.com",
            None,
            "zoe@example.org",
            "bob@exa mple.com",
            "x" * 250 + "@example.com",
            "chloé@example.fr",  # non-ASCII local part
        ],
        "first_name": ["Jane", "Janet", "Al", "Nul", " Zoë ", "Bob", "Long", "Chloé"],
        "city": ["Paris", "Lyon", None, "Rome", "", "Oslo", "Bern", "Nice"],
        "tier": ["gold", "gold", "gold", "gold", "bronze", "gold", "gold", "gold"],
        "ltv": [10.0, 20.0, 30.0, 40.0, 5000.0, 60.0, 70.0, 80.0],
        "opt_in": [True, True, True, True, True, False, True, True],
    }
)
SEGMENTS = (
    Segment(id="gold", name="Gold", rule="tier = 'gold' AND opt_in"),
    Segment(id="rich", name="Rich", rule="ltv >= 1000 AND opt_in"),
)


def make_destination(**changes) -> Destination:
    base = {
        "name": "dest",
        "display_name": "Dest",
        "list_id": "abc-123",
        "consent": True,
        "field_mapping": FieldMapping(email="email", first_name="first_name", city="city"),
        "segments": ("gold", "rich"),
    }
    return Destination(**{**base, **changes})


def test_membership_is_one_row_per_profile_and_segment() -> None:
    membership = segment_membership(PROFILES, SEGMENTS)
    gold = set(membership.filter(pl.col("segment_id") == "gold")["customer_id"])
    assert gold == {"C1", "C2", "C3", "C4", "C7", "C8"}  # C6 did not opt in
    assert set(membership.filter(pl.col("segment_id") == "rich")["customer_id"]) == {"C5"}


def test_contacts_are_normalized_deduplicated_and_rejections_kept_with_reasons() -> None:
    membership = segment_membership(PROFILES, SEGMENTS)
    result = destination_contacts(PROFILES, membership, make_destination())
    assert result.profiles_in_segments == 7
    accepted = {r["customer_id"]: r for r in result.accepted.iter_rows(named=True)}
    assert set(accepted) == {"C1", "C5"}
    assert accepted["C1"]["email"] == "jane.doe@example.com"
    assert accepted["C5"]["first_name"] == "Zoë" and accepted["C5"]["city"] is None
    reasons = dict(result.rejected.select("customer_id", "reason").iter_rows())
    assert reasons == {
        "C2": "duplicate_email",
        "C3": "invalid_email",
        "C4": "missing_email",
        "C7": "email_too_long",
        "C8": "invalid_email",
    }
    duplicate = result.rejected.filter(pl.col("customer_id") == "C2")
    assert duplicate["detail"].item() == "same email as kept profile C1"
    # nothing is dropped silently: every profile in a segment is either sent or rejected
    assert result.accepted.height + result.rejected.height == result.profiles_in_segments


def test_deduplication_does_not_depend_on_row_order() -> None:
    membership = segment_membership(PROFILES, SEGMENTS)
    shuffled = PROFILES.reverse()
    first = destination_contacts(PROFILES, membership, make_destination())
    second = destination_contacts(shuffled, membership, make_destination())
    assert first.accepted.equals(second.accepted)
    assert first.rejected.equals(second.rejected)


def test_fields_over_sendgrid_max_length_are_rejected_by_field() -> None:
    profiles = PROFILES.with_columns(
        pl.when(pl.col("customer_id") == "C5")
        .then(pl.lit("Z" * 51))
        .otherwise(pl.col("first_name"))
        .alias("first_name")
    )
    membership = segment_membership(profiles, SEGMENTS)
    result = destination_contacts(profiles, membership, make_destination())
    reasons = dict(result.rejected.select("customer_id", "reason").iter_rows())
    assert reasons["C5"] == "first_name_too_long"


def test_contact_json_sends_every_mapped_field_and_clears_empty_ones() -> None:
    frame = pl.DataFrame({"email": ["a@b.com"], "first_name": ['Zoë "Z"'], "city": [None]})
    (encoded,) = contact_json(frame, ["email", "first_name", "city"]).to_list()
    assert encoded == '{"email":"a@b.com","first_name":"Zoë \\"Z\\"","city":""}'
