"""Pack contacts into upsert bodies that respect SendGrid's 30,000-contact and 6 MB limits.

Each contact is serialized to JSON once (in polars); bodies are joined from those strings, and
sizes are measured on the serialized bytes, so no request is ever rejected for its size.
"""

from __future__ import annotations

import json
from collections.abc import Iterator, Sequence
from dataclasses import dataclass

import numpy as np
import polars as pl

MAX_CONTACTS_PER_UPSERT = 30_000
MAX_UPSERT_BYTES = 6_000_000  # "6MB", counted conservatively as decimal megabytes


@dataclass(frozen=True)
class UpsertBatch:
    """One PUT /v3/marketing/contacts body and the rows it carries."""

    start: int
    end: int
    body: bytes

    @property
    def size(self) -> int:
        return self.end - self.start


def body_prefix(list_ids: Sequence[str]) -> bytes:
    return b'{"list_ids":' + json.dumps(list(list_ids)).encode() + b',"contacts":['


BODY_SUFFIX = b"]}"


def plan_batches(
    row_bytes: np.ndarray,
    overhead_bytes: int,
    max_contacts: int = MAX_CONTACTS_PER_UPSERT,
    max_bytes: int = MAX_UPSERT_BYTES,
) -> list[tuple[int, int]]:
    """Greedy [start, end) ranges: as many rows as fit both limits, rows joined by commas."""
    n = len(row_bytes)
    if n == 0:
        return []
    if int(row_bytes.max()) + overhead_bytes > max_bytes:
        raise ValueError("a single contact is larger than the upsert size limit")
    # cum[i] = bytes of rows 0..i, each followed by a comma
    cum = np.cumsum(row_bytes.astype(np.int64) + 1)
    ranges = []
    start = 0
    budget = max_bytes - overhead_bytes + 1  # the last row has no trailing comma
    while start < n:
        before = cum[start - 1] if start else 0
        end = int(np.searchsorted(cum, before + budget, side="right"))
        end = min(end, start + max_contacts, n)
        ranges.append((start, end))
        start = end
    return ranges


def minimum_batches(total_rows: int, total_bytes: int, list_ids: Sequence[str]) -> int:
    """Lower bound on the number of upsert requests for this data (for benchmarks)."""
    if total_rows == 0:
        return 0
    overhead = len(body_prefix(list_ids)) + len(BODY_SUFFIX)
    by_count = -(-total_rows // MAX_CONTACTS_PER_UPSERT)
    by_bytes = -(-(total_bytes + total_rows - 1) // (MAX_UPSERT_BYTES - overhead))
    return max(by_count, by_bytes)


def iter_upsert_batches(
    contact_json: pl.Series,
    list_ids: Sequence[str],
    max_contacts: int = MAX_CONTACTS_PER_UPSERT,
    max_bytes: int = MAX_UPSERT_BYTES,
) -> Iterator[UpsertBatch]:
    """Yield upsert bodies built from a Series of per-contact JSON objects."""
    prefix = body_prefix(list_ids)
    overhead = len(prefix) + len(BODY_SUFFIX)
    row_bytes = contact_json.str.len_bytes().to_numpy()
    for start, end in plan_batches(row_bytes, overhead, max_contacts, max_bytes):
        joined = contact_json.slice(start, end - start).str.join(",").item()
        yield UpsertBatch(start, end, prefix + joined.encode() + BODY_SUFFIX)
