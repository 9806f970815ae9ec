"""Removals: resolve the contact ids of the members that left, take them off the list, and
record exactly what each finished job removed.

Ids come from the record (learned at a reconcile), else from the email search (at most 100
addresses of at most 100 characters), else from SGQL for longer addresses. A removal takes
contacts off the list only; they stay in the account.
"""

from __future__ import annotations

from collections.abc import Callable

import polars as pl

from sendgrid_pipeline.sendgrid.client import (
    REMOVE_IDS_PER_REQUEST,
    SEARCH_EMAIL_MAX_LENGTH,
    SEARCH_EMAILS_MAX,
    SGQL_MAX_RESULTS,
    ImportJob,
)
from sendgrid_pipeline.sendgrid.errors import SendGridBadRequestError, SendGridNotFoundError
from sendgrid_pipeline.state import Intent
from sendgrid_pipeline.sync.plan import SyncPlan
from sendgrid_pipeline.sync.report import REJECTED_SCHEMA, SyncReport, no_rejections, rejections
from sendgrid_pipeline.sync.write_ahead import Submitted, WriteAhead


class Removals:
    """Takes one list's leavers off it (DELETE /v3/marketing/lists/{id}/contacts)."""

    def __init__(self, writes: WriteAhead) -> None:
        self.writes = writes

    def apply(self, plan: SyncPlan, report: SyncReport) -> pl.DataFrame:
        """Resolve ids, submit every removal, then poll every job; returns unremoved rows."""
        return self.writes.settle_together(self.submit(plan, report))

    def submit(self, plan: SyncPlan, report: SyncReport) -> Submitted:
        """Resolve ids and send every removal; their jobs are settled later."""
        if plan.removes.height == 0:
            return Submitted([], lambda _intent, _job: None, [no_rejections()])
        removes, unresolved = self.resolve_ids(plan.removes)
        client, list_id = self.writes.client, self.writes.list_id
        submitted: list[Intent] = []
        for chunk in removes.iter_slices(REMOVE_IDS_PER_REQUEST):
            ids = chunk["contact_id"].to_list()
            try:
                intent = self.writes.send(
                    "remove",
                    chunk,
                    lambda ids=ids: client.remove_from_list(list_id, ids),
                    report.job_ids,
                )
            except SendGridNotFoundError as error:
                # A stale contact id (the contact was deleted): look it up again next sync.
                self.writes.state.record_contact_ids(
                    chunk.select("email", pl.lit(None).alias("id"))
                )
                unresolved.append(rejections(chunk, "contact_id_stale", str(error)))
                continue
            submitted.append(intent)
        if submitted:  # one line for the phase: a 15% churn is hundreds of 100-id requests
            self.writes.log.info(
                "%s: %d removal job(s) submitted for %d contacts (jobs %s ... %s)",
                self.writes.name,
                len(submitted),
                sum(intent.rows.height for intent in submitted),
                submitted[0].job_id,
                submitted[-1].job_id,
            )

        def settle(intent: Intent, job: ImportJob) -> None:
            report.removed += self.settle(intent, job)

        return Submitted(submitted, settle, unresolved)

    def resolve_ids(self, removes: pl.DataFrame) -> tuple[pl.DataFrame, list[pl.DataFrame]]:
        """Resolve missing contact ids; forget contacts SendGrid no longer has.

        Ids recorded by a reconcile need no request; others are searched by email (up to 100
        characters) or through SGQL (longer addresses). A contact that cannot be resolved is
        a reported row, kept recorded and retried next sync: never a blocker for the others.
        """
        client, state, log = self.writes.client, self.writes.state, self.writes.log
        unknown = removes.filter(pl.col("contact_id").is_null())["email"]
        found: dict[str, str] = {}
        unresolved: dict[str, str] = {}
        short = unknown.filter(unknown.str.len_chars() <= SEARCH_EMAIL_MAX_LENGTH)
        long = unknown.filter(unknown.str.len_chars() > SEARCH_EMAIL_MAX_LENGTH)
        for chunk in short.to_frame().iter_slices(SEARCH_EMAILS_MAX):
            _search(chunk["email"].to_list(), client.search_emails, found, unresolved)
        for chunk in long.to_frame().iter_slices(SGQL_MAX_RESULTS):
            _search(chunk["email"].to_list(), client.search_contact_ids_by_sgql, found, unresolved)
        ids = pl.DataFrame(
            {"email": list(found), "found_id": list(found.values())},
            schema={"email": pl.String, "found_id": pl.String},
        )
        if ids.height:
            state.record_contact_ids(ids)
        gone = unknown.filter(~unknown.is_in(list(found) + list(unresolved))).to_list()
        if gone:
            state.forget(gone)
            log.info(
                "%s: %d contacts to remove no longer exist in SendGrid",
                self.writes.name,
                len(gone),
            )
        problems = pl.DataFrame(
            {
                "email": list(unresolved),
                "reason": ["contact_id_unresolved"] * len(unresolved),
                "detail": list(unresolved.values()),
            },
            schema=REJECTED_SCHEMA,
        )
        if problems.height:
            log.warning(
                "%s: %d leaver(s) could not be looked up in SendGrid; they stay on the list "
                "until a later sync resolves them (see the rejected rows)",
                self.writes.name,
                problems.height,
            )
        resolved = (
            removes.join(ids, on="email", how="left")
            .with_columns(pl.coalesce("contact_id", "found_id").alias("contact_id"))
            .filter(pl.col("contact_id").is_not_null())
            .select("email", "contact_id")
        )
        return resolved, [problems]

    def settle(self, intent: Intent, job: ImportJob) -> int:
        """Record a terminal removal job; returns how many members it removed."""
        rows, state = intent.rows, self.writes.state
        if job.status == "completed":
            state.confirm_remove(intent.intent_id, rows["email"].to_list())
            return rows.height
        if job.status == "failed":  # nothing applied: still recorded, planned again next sync
            state.drop_intent(intent.intent_id)
        else:  # errored: some left, some did not; the list tells which next sync
            state.mark_uncertain(intent.intent_id, rows["email"])
        self.writes.log.warning(
            "%s: removal job %s ended %s; those contacts are checked and retried next sync",
            self.writes.name,
            job.id,
            job.status,
        )
        return 0


def _search(
    emails: list[str],
    search: Callable[[list[str]], dict[str, str]],
    found: dict[str, str],
    unresolved: dict[str, str],
) -> None:
    """One lookup; a 400 (one address SendGrid will not search) is split to isolate it."""
    try:
        found.update(search(emails))
    except SendGridBadRequestError as error:
        if len(emails) == 1:
            unresolved[emails[0]] = str(error)
            return
        half = len(emails) // 2
        _search(emails[:half], search, found, unresolved)
        _search(emails[half:], search, found, unresolved)
