"""Segment figures against a plain count, over memberships nobody designed: one segment or
several, empty, overlapping."""

from __future__ import annotations

import polars as pl
from hypothesis import given, settings
from hypothesis import strategies as st

from sendgrid_pipeline.assets.segments import segment_figures

SEGMENTS = ["s1", "s2", "s3"]
memberships = st.sets(
    st.tuples(st.sampled_from(list("abcdefg")), st.sampled_from(SEGMENTS)), max_size=20
)


@settings(max_examples=150, deadline=None)
@given(pairs=memberships, chosen=st.lists(st.sampled_from(SEGMENTS), min_size=1, unique=True))
def test_sizes_overlaps_and_profiles_in_any_match_a_plain_count(pairs, chosen) -> None:
    membership = pl.DataFrame(
        sorted(pairs), schema={"customer_id": pl.String, "segment_id": pl.String}, orient="row"
    )
    figures = segment_figures(membership, chosen, {s: s.upper() for s in SEGMENTS}, {})
    members = {s: {c for c, seg in pairs if seg == s} for s in chosen}
    assert figures["profiles_in_any_segment"] == len(set().union(*members.values()))
    assert figures["dagster/row_count"] == sum(len(m) for m in members.values())
    for s in chosen:
        assert figures[f"segment_{s}"] == len(members[s])
    rows = {r.data["segment"]: r.data for r in figures["segment_overlaps"].records}
    assert list(rows) == chosen
    for s in chosen:
        for other in chosen:
            shared = len(members[s] & members[other])
            assert rows[s].get(other, 0) == shared, (s, other)
