"""Upserts: pack the plan's adds and updates into requests, isolate rows SendGrid refuses,
and record exactly the rows each finished job applied.

A job's outcome is read from GET /v3/marketing/contacts/imports/{id}; a job that did not
complete names its failed rows in a CSV at `results.errors_url` (SendGrid: "Import Contacts
Status", https://www.twilio.com/docs/sendgrid/api-reference/contacts/import-contacts-status).
"""

from __future__ import annotations

import io
import re

import polars as pl

from sendgrid_pipeline.errors import PipelineError
from sendgrid_pipeline.sendgrid.batching import iter_upsert_batches
from sendgrid_pipeline.sendgrid.client import ImportJob
from sendgrid_pipeline.sendgrid.errors import SendGridBadRequestError, SendGridError, UnsafeUrlError
from sendgrid_pipeline.state import Intent
from sendgrid_pipeline.sync.plan import SyncPlan
from sendgrid_pipeline.sync.report import SyncReport, no_rejections, rejections
from sendgrid_pipeline.sync.write_ahead import Submitted, WriteAhead


class ErrorsFileError(PipelineError):
    """A job's errors file does not have the shape SendGrid documents (no email column)."""


class Upserts:
    """Sends one list's adds and updates (PUT /v3/marketing/contacts) and settles their jobs."""

    def __init__(self, writes: WriteAhead, max_contacts_per_upsert: int) -> None:
        self.writes = writes
        self.max_contacts = max_contacts_per_upsert

    def apply(self, plan: SyncPlan, report: SyncReport) -> pl.DataFrame:
        """Submit every batch, then poll every job; returns the rows SendGrid rejected."""
        return self.writes.settle_together(self.submit(plan, report))

    def submit(self, plan: SyncPlan, report: SyncReport) -> Submitted:
        """Send every batch of the plan's adds and updates; their jobs are settled later."""
        rows = plan.upserts.select("email", "contact_json")
        batches = list(
            iter_upsert_batches(
                rows["contact_json"], [self.writes.list_id], max_contacts=self.max_contacts
            )
        )
        submitted: list[Intent] = []
        rejected = [no_rejections()]
        for batch in batches:
            batch_rows = rows.slice(batch.start, batch.size)
            rejected.append(self._submit(batch_rows, batch.body, submitted, report))
        if batches:  # one line for the phase (each line is an event written to the run's log)
            self.writes.log.info(
                "%s: %d upsert batch(es) sent: %d contacts, %d bytes, %s",
                self.writes.name,
                len(batches),
                rows.height,
                sum(len(batch.body) for batch in batches),
                f"jobs {submitted[0].job_id} ... {submitted[-1].job_id}"
                if submitted
                else "no job (every row rejected)",
            )
        report.attempted += rows.height

        def settle(intent: Intent, job: ImportJob) -> None:
            accepted, batch_rejected = self.settle(intent, job)
            report.upserted += accepted
            report.created += job.count("created_count")
            report.updated += job.count("updated_count")
            rejected.append(batch_rejected)

        return Submitted(submitted, settle, rejected)

    def _submit(
        self,
        rows: pl.DataFrame,
        body: bytes | None,
        submitted: list[Intent],
        report: SyncReport,
    ) -> pl.DataFrame:
        """PUT rows; when SendGrid refuses the whole request (400/413/422), isolate the bad rows.

        Rows a 400 names by index are rejected and the rest resent at once; otherwise the
        batch is halved until the offending rows stand alone. Returns the rejected rows.
        """
        if body is None:
            body = next(
                iter_upsert_batches(rows["contact_json"], [self.writes.list_id], rows.height)
            ).body
        client = self.writes.client
        try:
            intent = self.writes.send(
                "upsert", rows, lambda: client.upsert_contacts(body, rows.height), report.job_ids
            )
        except SendGridBadRequestError as error:
            return self._isolate(rows, error, submitted, report)
        submitted.append(intent)
        return no_rejections()

    def _isolate(
        self,
        rows: pl.DataFrame,
        error: SendGridBadRequestError,
        submitted: list[Intent],
        report: SyncReport,
    ) -> pl.DataFrame:
        messages: dict[int, list[str]] = {}
        for detail in error.details:
            found = re.match(r"contacts\[(\d+)\]", detail.field or "")
            if found and int(found.group(1)) < rows.height and error.status == 400:
                messages.setdefault(int(found.group(1)), []).append(
                    f"{detail.field}: {detail.message}"
                )
        if messages:
            bad = pl.Series("index", sorted(messages), dtype=pl.UInt32)
            indexed = rows.with_row_index("index")
            rejected = indexed.join(bad.to_frame(), on="index", how="semi").select(
                "email",
                pl.lit("sendgrid_rejected").alias("reason"),
                pl.Series("detail", ["; ".join(messages[i]) for i in bad.to_list()]),
            )
            rest = indexed.join(bad.to_frame(), on="index", how="anti").drop("index")
            self.writes.log.warning(
                "%s: SendGrid rejected a batch for %d row(s); resending the other %d",
                self.writes.name,
                rejected.height,
                rest.height,
            )
            if rest.height:
                rejected = pl.concat([rejected, self._submit(rest, None, submitted, report)])
            return rejected
        if rows.height == 1:
            return rejections(rows, "sendgrid_rejected", str(error))
        half = rows.height // 2
        return pl.concat(
            [
                self._submit(rows.head(half), None, submitted, report),
                self._submit(rows.slice(half), None, submitted, report),
            ]
        )

    def settle(self, intent: Intent, job: ImportJob) -> tuple[int, pl.DataFrame]:
        """Record a terminal upsert job's accepted rows; return (accepted, rejected rows)."""
        rows = intent.rows
        state = self.writes.state
        rejected = no_rejections()
        if job.status != "completed":
            rejected = self._job_rejections(job, rows)
            if rejected is None:  # we cannot tell which rows it applied
                state.mark_uncertain(intent.intent_id, rows["email"])
                self.writes.log.warning(
                    "%s: job %s %s and its errors file cannot be read: its %d rows are "
                    "recorded as possibly applied and checked against the list next sync",
                    self.writes.name,
                    job.id,
                    job.status,
                    rows.height,
                )
                return 0, no_rejections()
        accepted = (
            rows
            if rejected.is_empty()
            else rows.join(rejected.select("email"), on="email", how="anti")
        )
        state.confirm_upsert(intent.intent_id, accepted)
        if rejected.height:
            self.writes.log.info(
                "%s: job %s %s: %d accepted, %d rejected",
                self.writes.name,
                job.id,
                job.status,
                accepted.height,
                rejected.height,
            )
        return accepted.height, rejected

    def _job_rejections(self, job: ImportJob, rows: pl.DataFrame) -> pl.DataFrame | None:
        """Map a job's errors file back to its rows; None when the file cannot be read."""
        errors = None
        if job.errors_url:
            try:
                errors = parse_errors_file(self.writes.client.download(job.errors_url))
            except (
                SendGridError,
                UnsafeUrlError,
                ErrorsFileError,
                pl.exceptions.PolarsError,
            ) as error:
                self.writes.log.warning("job %s: cannot read errors file: %s", job.id, error)
                return None
        if job.status == "failed" and (errors is None or errors.height == 0):
            # failed: "all rows errored, or the job could not be processed": nothing applied
            return rejections(rows, "sendgrid_job_failed", f"job {job.id} gave no row errors")
        if errors is None:
            return None
        return rows.join(errors, on="email", how="inner").select(
            "email",
            pl.lit("sendgrid_rejected").alias("reason"),
            pl.col("message").alias("detail"),
        )


def parse_errors_file(content: bytes) -> pl.DataFrame:
    """SendGrid's per-row errors file -> (email, message); column names matched loosely."""
    frame = pl.read_csv(io.BytesIO(content), infer_schema=False)
    columns = {c.lower().strip(): c for c in frame.columns}
    email = next((columns[c] for c in ("email", "email_address") if c in columns), None)
    message = next(
        (columns[c] for c in ("message", "error", "errors", "reason") if c in columns), None
    )
    if email is None:
        raise ErrorsFileError("errors file has no email column")
    return frame.select(
        pl.col(email).str.strip_chars().str.to_lowercase().alias("email"),
        (pl.col(message) if message else pl.lit("rejected by SendGrid")).alias("message"),
    ).unique("email", keep="first")
