"""Reading an account's suppressions back from SendGrid, through the client's `make_request`.

The suppression lists (tsg_suppressions_v3.json) page by `limit` (1..500) and `offset`, and
filter by `start_time`/`end_time`, unix seconds, both inclusive. A page shorter than the limit
is the last one. Unsubscribe (ASM) groups answer every address of a group at once, without
times. Retries, rate limits and typed errors are the client's (sendgrid/errors.py).
"""

from __future__ import annotations

from typing import Any

import polars as pl

from sendgrid_pipeline.errors import PipelineError
from sendgrid_pipeline.sendgrid.client import SendGridClient

PAGE_MAX = 500  # PaginationCommonLimit: "The maximum page size for this endpoint is 500"
MAX_PAGES = 20_000  # 10M records: a guard against an endpoint that never gives a short page

# Kind (as the pipeline names it) -> list endpoint.
ENDPOINTS: dict[str, str] = {
    "unsubscribe": "/v3/suppression/unsubscribes",
    "bounce": "/v3/suppression/bounces",
    "spam_report": "/v3/suppression/spam_reports",
    "invalid_email": "/v3/suppression/invalid_emails",
    "block": "/v3/suppression/blocks",
}

RECORD_SCHEMA: dict[str, pl.DataType] = {
    "email": pl.String(),
    "created": pl.Int64(),  # unix seconds
    "reason": pl.String(),
    "status": pl.String(),
}


class SuppressionReadError(PipelineError):
    """SendGrid answered a suppression read with something that is not a list of records."""


def group_path(group_id: int) -> str:
    return f"/v3/asm/groups/{group_id}/suppressions"


def _records(payload: Any, path: str, offset: int) -> pl.DataFrame:
    """One page as a frame; a malformed answer names the endpoint and the item."""
    if not isinstance(payload, list):
        raise SuppressionReadError(
            f"GET {path} (offset {offset}) answered {type(payload).__name__}, not a list of "
            "suppressions"
        )
    for index, item in enumerate(payload):  # checks shapes only; the values go to polars
        if not isinstance(item, dict) or not isinstance(item.get("email"), str):
            raise SuppressionReadError(
                f"GET {path}: item {offset + index} has no email address: {str(item)[:80]!r}"
            )
        if isinstance(item.get("created"), bool) or not isinstance(
            item.get("created"), int | float
        ):
            raise SuppressionReadError(
                f"GET {path}: item {offset + index} has no numeric 'created' time"
            )
    if not payload:
        return pl.DataFrame(schema=RECORD_SCHEMA)
    frame = pl.from_dicts(
        payload,
        schema={
            "email": pl.String,
            "created": pl.Float64,
            "reason": pl.String,
            "status": pl.String,
        },
        strict=False,
    )
    return frame.with_columns(pl.col("created").floor().cast(pl.Int64))


def read_suppressions(
    client: SendGridClient,
    kind: str,
    start_time: int | None,
    end_time: int,
    page_size: int = PAGE_MAX,
) -> pl.DataFrame:
    """Every `kind` record created in [start_time, end_time] (no start: from the beginning).

    Columns email (as SendGrid has it), created (unix seconds), reason, status. Pages are
    read until one is shorter than `page_size`. A record may appear twice when the list grows
    while it is paged (offsets shift); the caller de-duplicates.
    """
    if not 1 <= page_size <= PAGE_MAX:
        raise ValueError(f"page_size must be 1..{PAGE_MAX}")
    path = ENDPOINTS[kind]
    pages: list[pl.DataFrame] = []
    for page in range(MAX_PAGES):
        offset = page * page_size
        params = {"end_time": str(end_time), "limit": str(page_size), "offset": str(offset)}
        if start_time is not None:
            params["start_time"] = str(start_time)
        payload = client.make_request("GET", path, params=params).json()
        pages.append(_records(payload, path, offset))
        if len(payload) < page_size:
            return pl.concat(pages)
    raise SuppressionReadError(
        f"GET {path}: still full pages after {MAX_PAGES} pages of {page_size}; stopped"
    )


def read_group_suppressions(client: SendGridClient, group_id: int) -> list[str]:
    """The addresses unsubscribed from one unsubscribe group (the endpoint is not paged)."""
    path = group_path(group_id)
    payload = client.make_request("GET", path).json()
    if not isinstance(payload, list) or not all(isinstance(e, str) for e in payload):
        raise SuppressionReadError(f"GET {path} answered something other than a list of emails")
    return payload
