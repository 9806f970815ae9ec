"""The do-not-export hook of the contacts transform: a person on it is never accepted."""

from __future__ import annotations

import polars as pl
from hypothesis import given, settings
from hypothesis import strategies as st

from sendgrid_pipeline.transform import (
    DO_NOT_EXPORT_SCHEMA,
    destination_contacts,
    segment_membership,
)
from sendgrid_pipeline_tests.test_transform import PROFILES, SEGMENTS, make_destination

MEMBERSHIP = segment_membership(PROFILES, SEGMENTS)


def _blocked(rows: list[tuple[str | None, str | None, str]]) -> pl.DataFrame:
    return pl.DataFrame(rows, schema=DO_NOT_EXPORT_SCHEMA, orient="row")


def test_an_erased_email_is_rejected_without_its_address_and_its_duplicate_too() -> None:
    # C1 and C2 share jane.doe@example.com: blocking the address blocks both profiles
    blocked = _blocked([("JANE.DOE@example.com ", None, "erased")])
    result = destination_contacts(PROFILES, MEMBERSHIP, make_destination(), blocked)
    assert "C1" not in set(result.accepted["customer_id"])
    assert "C2" not in set(result.accepted["customer_id"])
    erased = result.rejected.filter(pl.col("reason") == "erased")
    assert set(erased["customer_id"]) == {"C1", "C2"}
    assert erased["email"].is_null().all()  # the erased address is not in the report
    assert result.profiles_in_segments == 7  # still counted as members of the segments


def test_a_customer_id_blocks_its_profile_and_the_first_reason_by_priority_wins() -> None:
    blocked = _blocked([("zoe@example.org", None, "suppressed"), (None, "C5", "erased")])
    result = destination_contacts(PROFILES, MEMBERSHIP, make_destination(), blocked)
    assert result.accepted.filter(pl.col("customer_id") == "C5").height == 0
    reasons = dict(result.rejected.select("customer_id", "reason").iter_rows())
    assert reasons["C5"] == "erased"


def test_without_a_frame_or_with_an_empty_one_nothing_changes() -> None:
    plain = destination_contacts(PROFILES, MEMBERSHIP, make_destination())
    empty = destination_contacts(
        PROFILES, MEMBERSHIP, make_destination(), pl.DataFrame(schema=DO_NOT_EXPORT_SCHEMA)
    )
    assert plain.accepted.equals(empty.accepted)
    assert plain.rejected.equals(empty.rejected)


@settings(max_examples=60, deadline=None)
@given(
    st.lists(
        st.tuples(
            st.sampled_from(["C1", "C2", "C3", "C5", "C8", "unknown", None]),
            st.sampled_from(["jane.doe@example.com", "zoe@example.org", "x@y.io", None]),
            st.sampled_from(["erased", "suppressed"]),
        ),
        max_size=8,
    )
)
def test_every_member_ends_in_one_place_and_no_blocked_one_is_accepted(rows) -> None:
    blocked = _blocked([(email, cid, reason) for cid, email, reason in rows])
    result = destination_contacts(PROFILES, MEMBERSHIP, make_destination(), blocked)
    accepted = set(result.accepted["customer_id"])
    assert not accepted & set(blocked["customer_id"].drop_nulls())
    assert not set(result.accepted["email"]) & set(blocked["email"].drop_nulls())
    assert result.accepted.height + result.rejected.height == result.profiles_in_segments


ALTERNATES = ["ann.work@example.com", "ann@home.example", "x@y.io", "Bob.Alt@Example.com"]


@settings(max_examples=80, deadline=None)
@given(
    others=st.lists(
        st.one_of(st.none(), st.lists(st.sampled_from(ALTERNATES), max_size=3)),
        min_size=3,
        max_size=3,
    ),
    blocked=st.lists(
        st.tuples(st.sampled_from(ALTERNATES), st.sampled_from(["erased", "suppressed"])),
        max_size=4,
    ),
)
def test_an_erased_address_among_alternate_emails_keeps_the_whole_profile_out(
    others, blocked
) -> None:
    """Whichever field carries an erased address, the person is not sent; a suppression
    concerns the address mailed (the primary one) and leaves the alternates alone."""
    from sendgrid_pipeline.config import Segment
    from sendgrid_pipeline_tests.test_field_mapping import RESERVED, _reserved_profiles

    profiles = _reserved_profiles(["a", "b", "c"]).with_columns(
        pl.Series("other_emails", [None if o is None else ";".join(o) for o in others])
    )
    membership = segment_membership(profiles, (Segment(id="s", name="S", rule="TRUE"),))
    frame = _blocked([(email, None, reason) for email, reason in blocked])
    result = destination_contacts(profiles, membership, RESERVED, frame)
    erased = {e.lower() for e, reason in blocked if reason == "erased"}
    for customer_id, alternates in zip(["C1", "C2", "C3"], others, strict=True):
        carries_erased = bool({a.lower() for a in alternates or []} & erased)
        reasons = set(result.rejected.filter(pl.col("customer_id") == customer_id)["reason"])
        if carries_erased:
            assert reasons == {"erased"}
            assert customer_id not in set(result.accepted["customer_id"])
        else:
            assert "erased" not in reasons
    sent = result.accepted["alternate_emails"].explode().drop_nulls()
    assert not set(sent) & erased  # no erased address leaves, in any field
    assert result.accepted.height + result.rejected.height == result.profiles_in_segments
