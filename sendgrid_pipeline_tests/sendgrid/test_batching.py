"""Upsert bodies respect both 30,000 contacts and 6 MB, measured on the serialized bytes."""

from __future__ import annotations

import json

import numpy as np
import polars as pl
import pytest

from sendgrid_pipeline.sendgrid.batching import (
    MAX_CONTACTS_PER_UPSERT,
    MAX_UPSERT_BYTES,
    iter_upsert_batches,
    minimum_batches,
    plan_batches,
)

LIST_IDS = ["3f1c7a52-9f0e-4a57-9d1e-2b7f0c8a1e01"]


def contacts(n: int, name_length: int = 5) -> pl.Series:
    frame = pl.DataFrame({"i": np.arange(n)}).select(
        pl.struct(
            email=pl.format("user{}@example.com", pl.col("i")),
            first_name=pl.lit("é" * name_length),
        )
        .struct.json_encode()
        .alias("contact_json")
    )
    return frame.to_series()


def test_30000_contacts_fit_one_request_and_30001_need_two() -> None:
    assert len(list(iter_upsert_batches(contacts(30_000), LIST_IDS))) == 1
    batches = list(iter_upsert_batches(contacts(30_001), LIST_IDS))
    assert [b.size for b in batches] == [30_000, 1]


def test_large_contacts_split_at_6_mb_on_the_encoded_body() -> None:
    series = contacts(20_000, name_length=200)  # ~420 bytes each (é is 2 bytes): ~8.4 MB
    batches = list(iter_upsert_batches(series, LIST_IDS))
    assert len(batches) == 2
    for batch in batches:
        assert len(batch.body) <= MAX_UPSERT_BYTES
        body = json.loads(batch.body)
        assert body["list_ids"] == LIST_IDS and len(body["contacts"]) == batch.size
    # packed greedily: the first body is as full as one more contact would allow
    row = len(series[0].encode())
    assert len(batches[0].body) + row + 1 > MAX_UPSERT_BYTES
    assert sum(b.size for b in batches) == 20_000
    total = int(series.str.len_bytes().sum())
    assert minimum_batches(20_000, total, LIST_IDS) == len(batches)


def test_every_row_is_sent_once_in_order() -> None:
    series = contacts(70_123, name_length=40)
    batches = list(iter_upsert_batches(series, LIST_IDS))
    emails = [c["email"] for b in batches for c in json.loads(b.body)["contacts"]]
    assert emails == [f"user{i}@example.com" for i in range(70_123)]
    assert all(b.size <= MAX_CONTACTS_PER_UPSERT for b in batches)


def test_plan_batches_edges() -> None:
    assert plan_batches(np.array([], dtype=np.int64), 10) == []
    assert plan_batches(np.array([10, 10, 10]), 2, max_bytes=33) == [(0, 2), (2, 3)]
    assert plan_batches(np.array([10, 10, 10]), 2, max_bytes=34) == [(0, 3)]  # 30 + 2 commas + 2
    with pytest.raises(ValueError, match="larger than the upsert size limit"):
        plan_batches(np.array([100]), 2, max_bytes=50)


def test_the_sandbox_accepts_every_packed_body_at_both_limits() -> None:
    """Real HTTP: full bodies at 30,000 contacts and near 6 MB are accepted, never 413."""
    from sendgrid_pipeline.sendgrid.client import SendGridClient
    from sendgrid_pipeline_tests.devkit.sandbox import SandboxServer

    with SandboxServer(lists={LIST_IDS[0]: "Limits"}, job_delay_seconds=0.01) as sandbox:
        client = SendGridClient(sandbox.api_key, sandbox.base_url, poll_interval_seconds=0.02)
        by_count = list(iter_upsert_batches(contacts(30_001), LIST_IDS))
        wide = pl.DataFrame({"i": np.arange(15_000)}).select(
            pl.struct(  # every field at its maximum length, 2-byte characters: ~830 bytes
                email=pl.format("wide{}@example.com", pl.col("i")),
                first_name=pl.lit("é" * 50),
                last_name=pl.lit("é" * 50),
                address_line_1=pl.lit("é" * 100),
                address_line_2=pl.lit("é" * 100),
                city=pl.lit("é" * 60),
            ).struct.json_encode()
        )
        by_size = list(iter_upsert_batches(wide.to_series(), LIST_IDS))
        assert [b.size for b in by_count] == [30_000, 1]
        assert len(by_size) == 3 and len(by_size[0].body) > MAX_UPSERT_BYTES - 1000
        for batch in by_count + by_size:
            job = client.wait_for_job(client.upsert_contacts(batch.body, batch.size))
            assert job.status == "completed"
        assert len(sandbox.list_member_emails(LIST_IDS[0])) == 45_001
        assert {r.status for r in sandbox.requests if r.method == "PUT"} == {202}
