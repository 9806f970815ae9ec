"""Apply a sync plan to one destination's SendGrid list, crash-safely.

Order of every write: send -> record the job as pending -> poll it to a terminal state ->
record what it confirmed and retire the pending record in one transaction. A rerun first
settles any pending job a crash left behind, then plans from what is recorded, so work is
never lost and never sent twice without need.
"""

from __future__ import annotations

import io
import logging
import re
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import polars as pl

from sendgrid_pipeline.config import Destination
from sendgrid_pipeline.privacy import mask_email_expr
from sendgrid_pipeline.sendgrid.batching import MAX_CONTACTS_PER_UPSERT, iter_upsert_batches
from sendgrid_pipeline.sendgrid.client import (
    REMOVE_IDS_PER_REQUEST,
    SEARCH_EMAILS_MAX,
    ImportJob,
    SendGridClient,
)
from sendgrid_pipeline.sendgrid.errors import SendGridBadRequestError, SendGridNotFoundError
from sendgrid_pipeline.state import PendingJob, SyncStateStore
from sendgrid_pipeline.sync.plan import SyncPlan, build_plan, carry_identifiers
from sendgrid_pipeline.sync.reconcile import read_list_members, reconciled_members
from sendgrid_pipeline.transform import contact_json, number_custom_fields

REJECTED_SCHEMA = {"email": pl.String, "reason": pl.String, "detail": pl.String}


class SyncRefused(Exception):
    """The sync stopped before sending anything; the message says why and what to do."""


@dataclass(frozen=True)
class SyncOptions:
    dry_run: bool = False
    max_removal_share: float = 0.2
    min_removals_for_brake: int = 10
    allow_mass_removal: bool = False
    reconcile: bool = False
    max_contacts_per_upsert: int = MAX_CONTACTS_PER_UPSERT


@dataclass
class SyncReport:
    """What a sync planned and what SendGrid confirmed."""

    destination: str
    list_id: str
    plan: SyncPlan
    dry_run: bool = False
    upserted: int = 0
    created: int = 0
    updated: int = 0
    removed: int = 0
    recovered_jobs: int = 0
    reconciled: str = ""  # why the record was rebuilt from the list, or "" when it was not
    job_ids: list[str] = field(default_factory=list)
    rejected: pl.DataFrame = field(default_factory=lambda: pl.DataFrame(schema=REJECTED_SCHEMA))
    list_count_before: int = 0
    list_count_after: int = 0
    seconds: float = 0.0


class DestinationSync:
    """Plans and applies one destination's sync through a client and a state store."""

    def __init__(
        self,
        client: SendGridClient,
        store: SyncStateStore,
        destination: Destination,
        log: logging.Logger | logging.LoggerAdapter,
        options: SyncOptions | None = None,
        crash_hook: Callable[[str], None] | None = None,
        custom_ids: dict[str, str] | None = None,
    ) -> None:
        self.client = client
        self.store = store
        self.destination = destination
        self.list_id = destination.list_id
        self.log = log
        self.options = options or SyncOptions()
        self._crash_hook = crash_hook or (lambda _step: None)
        self.custom_ids = custom_ids or {}
        self.number_fields = number_custom_fields(destination.field_mapping)

    # -- entry point -----------------------------------------------------------------------
    def run(self, contacts: pl.DataFrame) -> SyncReport:
        """`contacts`: one row per contact the list must hold, with its mapped field columns."""
        started = time.monotonic()
        before = self._list_contact_count()
        recovered, recovered_rejections = self._settle_pending()
        recorded = self._recorded()
        reason = self._reconcile_reason(recorded, before)
        if reason:
            recorded = self._reconcile(contacts, recorded, reason)
        identifiers = self.destination.field_mapping.identifiers()
        contacts = carry_identifiers(contacts, recorded, identifiers)
        fields = list(self.destination.field_mapping.as_dict())
        desired = contacts.select("email").with_columns(
            contact_json(contacts, fields, self.custom_ids, self.number_fields)
        )
        plan = build_plan(desired, recorded)
        report = SyncReport(
            self.destination.name,
            self.list_id,
            plan,
            dry_run=self.options.dry_run,
            recovered_jobs=recovered,
            reconciled=reason,
            list_count_before=before,
        )
        self.log.info(
            "%s: plan add=%d update=%d remove=%d unchanged=%d (list has %d contacts)",
            self.destination.name,
            plan.adds,
            plan.updates,
            plan.removes.height,
            plan.unchanged,
            before,
        )
        self._brake(plan)
        rejections = [recovered_rejections]
        if not self.options.dry_run:
            rejections.append(self._apply_upserts(plan, report))
            self._apply_removals(plan, report)
            report.list_count_after = self._list_contact_count()
        else:
            report.list_count_after = before
        report.rejected = pl.concat(rejections).unique("email", keep="last", maintain_order=True)
        report.seconds = time.monotonic() - started
        return report

    # -- preflight and brake ---------------------------------------------------------------
    def _list_contact_count(self) -> int:
        try:
            return int(self.client.get_list(self.list_id).get("contact_count") or 0)
        except SendGridNotFoundError:
            raise SyncRefused(
                f"Destination {self.destination.name!r}: SendGrid list {self.list_id} was not "
                "found on this account (HTTP 404). Check list_id in destinations.yaml against "
                "Marketing > Contacts > Lists, and that the API key belongs to that account. "
                "Nothing was sent."
            ) from None

    def _recorded(self) -> pl.DataFrame:
        return self.store.members(self.destination.name, self.list_id)

    # -- reconcile -------------------------------------------------------------------------
    def _reconcile_reason(self, recorded: pl.DataFrame, list_count: int) -> str:
        if self.options.reconcile:
            return "requested"
        if not self.store.is_known(self.destination.name, self.list_id):
            return "no record of this list yet"
        if list_count < recorded.height:
            return f"the list holds {list_count} contacts but {recorded.height} are recorded"
        return ""

    def _reconcile(
        self, desired: pl.DataFrame, recorded: pl.DataFrame, reason: str
    ) -> pl.DataFrame:
        """Read the list's true membership and rebuild the record (kept in memory on dry runs)."""
        fields = list(self.destination.field_mapping.as_dict())
        on_list = read_list_members(
            self.client, self.list_id, fields, self.custom_ids, self.number_fields
        )
        rebuilt = reconciled_members(
            on_list, recorded, desired["email"], self.destination.owns_list
        )
        if not self.options.dry_run:
            self.store.replace_members(self.destination.name, self.list_id, rebuilt)
        self.log.info(
            "%s: reconciled with the list (%s): %d contacts on it, %d managed by us",
            self.destination.name,
            reason,
            rebuilt.height,
            int(rebuilt["managed"].sum()),
        )
        return rebuilt

    def _brake(self, plan: SyncPlan) -> None:
        removes = plan.removes.height
        recorded = plan.list_members_before
        if removes == 0 or self.options.allow_mass_removal or self.options.dry_run:
            return
        empties = removes == recorded and plan.upserts.height == 0 and plan.unchanged == 0
        share = removes / recorded if recorded else 0.0
        too_many = (
            share > self.options.max_removal_share
            and removes >= self.options.min_removals_for_brake
        )
        if empties or too_many:
            why = "would empty the list" if empties else f"would remove {share:.0%} of it"
            raise SyncRefused(
                f"Destination {self.destination.name!r}: the plan {why} ({removes} of "
                f"{recorded} contacts we added; brake at "
                f"{self.options.max_removal_share:.0%}). This usually means a broken profile "
                "source or an emptied segment. Nothing was sent. If the removal is intended, "
                "rerun with the run tag sendgrid/allow_mass_removal=true or set "
                "allow_mass_removal: true on the destination."
            )

    # -- upserts ---------------------------------------------------------------------------
    def _apply_upserts(self, plan: SyncPlan, report: SyncReport) -> pl.DataFrame:
        rows = plan.upserts.select("email", "contact_json")
        batches = list(
            iter_upsert_batches(
                rows["contact_json"],
                [self.list_id],
                max_contacts=self.options.max_contacts_per_upsert,
            )
        )
        submitted: list[tuple[str, pl.DataFrame]] = []
        rejected = [pl.DataFrame(schema=REJECTED_SCHEMA)]
        for number, batch in enumerate(batches, 1):
            batch_rows = rows.slice(batch.start, batch.size)
            rejected.append(self._submit(batch_rows, batch.body, submitted, report))
            self.log.info(
                "%s: upsert batch %d of %d: %d contacts, %d bytes, job %s",
                self.destination.name,
                number,
                len(batches),
                batch.size,
                len(batch.body),
                submitted[-1][0] if submitted else "(none: every row rejected)",
            )
        for job_id, batch_rows in submitted:
            job = self.client.wait_for_job(job_id)
            self._crash_hook("upsert_confirmed")
            accepted, batch_rejected = self._settle_upsert(job, batch_rows)
            report.upserted += accepted
            report.created += job.count("created_count")
            report.updated += job.count("updated_count")
            rejected.append(batch_rejected)
        return pl.concat(rejected)

    def _submit(
        self,
        rows: pl.DataFrame,
        body: bytes | None,
        submitted: list[tuple[str, pl.DataFrame]],
        report: SyncReport,
    ) -> pl.DataFrame:
        """PUT rows; when SendGrid rejects the whole request (400/413), isolate the bad rows.

        Rows a 400 names by index are rejected and the rest resent at once; otherwise the
        batch is halved until the offending rows stand alone. Returns the rejected rows.
        """
        if body is None:
            body = next(iter_upsert_batches(rows["contact_json"], [self.list_id], rows.height)).body
        try:
            job_id = self.client.upsert_contacts(body, rows.height)
        except SendGridBadRequestError as error:
            return self._isolate(rows, error, submitted, report)
        self._crash_hook("upsert_sent")
        self.store.add_pending(job_id, self.destination.name, self.list_id, "upsert", rows)
        report.job_ids.append(job_id)
        submitted.append((job_id, rows))
        self._crash_hook("upsert_recorded")
        return pl.DataFrame(schema=REJECTED_SCHEMA)

    def _isolate(
        self,
        rows: pl.DataFrame,
        error: SendGridBadRequestError,
        submitted: list[tuple[str, pl.DataFrame]],
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
            self.log.warning(
                "%s: SendGrid rejected a batch for %d row(s); resending the other %d",
                self.destination.name,
                rejected.height,
                rest.height,
            )
            if rest.height:
                rejected = pl.concat([rejected, self._submit(rest, None, submitted, report)])
            return rejected
        if rows.height == 1:
            return rows.select(
                "email",
                pl.lit("sendgrid_rejected").alias("reason"),
                pl.lit(str(error)).alias("detail"),
            )
        half = rows.height // 2
        return pl.concat(
            [
                self._submit(rows.head(half), None, submitted, report),
                self._submit(rows.slice(half), None, submitted, report),
            ]
        )

    def _settle_upsert(self, job: ImportJob, rows: pl.DataFrame) -> tuple[int, pl.DataFrame]:
        """Record a terminal upsert job's accepted rows; return (accepted, rejected rows)."""
        rejected = pl.DataFrame(schema=REJECTED_SCHEMA)
        if job.status != "completed":
            rejected = self._job_rejections(job, rows)
        accepted = (
            rows
            if rejected.is_empty()
            else rows.join(rejected.select("email"), on="email", how="anti")
        )
        self.store.confirm_upsert(job.id, self.destination.name, self.list_id, accepted)
        self.log.info(
            "%s: job %s %s: %d accepted, %d rejected",
            self.destination.name,
            job.id,
            job.status,
            accepted.height,
            rejected.height,
        )
        return accepted.height, rejected

    def _job_rejections(self, job: ImportJob, rows: pl.DataFrame) -> pl.DataFrame:
        """Map a job's errors file back to its rows; unmapped failures reject the whole batch."""
        errors = None
        if job.errors_url:
            try:
                errors = _parse_errors_file(self.client.download(job.errors_url))
            except Exception as error:  # an unreadable file must not lose the rows
                self.log.warning(
                    "job %s: cannot read errors file: %s", job.id, type(error).__name__
                )
        if errors is None or (job.status == "failed" and errors.height == 0):
            return rows.select(
                "email",
                pl.lit("sendgrid_job_" + job.status).alias("reason"),
                pl.lit(f"job {job.id} gave no per-row errors").alias("detail"),
            )
        return rows.join(errors, on="email", how="inner").select(
            "email",
            pl.lit("sendgrid_rejected").alias("reason"),
            pl.col("message").alias("detail"),
        )

    # -- removals --------------------------------------------------------------------------
    def _apply_removals(self, plan: SyncPlan, report: SyncReport) -> None:
        if plan.removes.height == 0:
            return
        removes = self._with_contact_ids(plan.removes)
        chunks = list(removes.iter_slices(REMOVE_IDS_PER_REQUEST))
        for number, chunk in enumerate(chunks, 1):
            job_id = self.client.remove_from_list(self.list_id, chunk["contact_id"].to_list())
            self._crash_hook("remove_sent")
            self.store.add_pending(job_id, self.destination.name, self.list_id, "remove", chunk)
            report.job_ids.append(job_id)
            self.log.info(
                "%s: removal %d of %d: %d contacts, job %s",
                self.destination.name,
                number,
                len(chunks),
                chunk.height,
                job_id,
            )
            job = self.client.wait_for_job(job_id)
            self._crash_hook("remove_confirmed")
            report.removed += self._settle_removal(job, chunk)

    def _with_contact_ids(self, removes: pl.DataFrame) -> pl.DataFrame:
        """Resolve missing contact ids by email; forget contacts SendGrid no longer has."""
        unknown = removes.filter(pl.col("contact_id").is_null())["email"]
        found: dict[str, str] = {}
        for chunk in unknown.to_frame().iter_slices(SEARCH_EMAILS_MAX):
            found.update(self.client.search_emails(chunk["email"].to_list()))
        ids = pl.DataFrame(
            {"email": list(found), "found_id": list(found.values())},
            schema={"email": pl.String, "found_id": pl.String},
        )
        if ids.height:
            self.store.record_contact_ids(self.destination.name, self.list_id, ids)
        gone = unknown.filter(~unknown.is_in(ids["email"].implode())).to_list()
        if gone:
            self.store.forget(self.destination.name, self.list_id, gone)
            self.log.info(
                "%s: %d contacts to remove no longer exist in SendGrid",
                self.destination.name,
                len(gone),
            )
        return (
            removes.join(ids, on="email", how="left")
            .with_columns(pl.coalesce("contact_id", "found_id").alias("contact_id"))
            .filter(pl.col("contact_id").is_not_null())
            .select("email", "contact_id")
        )

    def _settle_removal(self, job: ImportJob, chunk: pl.DataFrame) -> int:
        if job.status == "completed":
            self.store.confirm_remove(
                job.id, self.destination.name, self.list_id, chunk["email"].to_list()
            )
            return chunk.height
        # errored/failed: keep the records (we cannot tell which left), retry next sync
        self.store.drop_pending(job.id)
        self.log.warning(
            "%s: removal job %s ended %s; those contacts stay recorded and are retried",
            self.destination.name,
            job.id,
            job.status,
        )
        return 0

    # -- crash recovery --------------------------------------------------------------------
    def _settle_pending(self) -> tuple[int, pl.DataFrame]:
        """Settle jobs a previous run sent but did not see finish."""
        rejected = [pl.DataFrame(schema=REJECTED_SCHEMA)]
        pending = self.store.pending_jobs(self.destination.name, self.list_id)
        for item in pending:
            job = self._final_job(item)
            if job is None:
                continue
            if item.kind == "upsert":
                rejected.append(self._settle_upsert(job, item.rows)[1])
            else:
                self._settle_removal(job, item.rows)
        if pending:
            self.log.info(
                "%s: settled %d job(s) left pending by an earlier run",
                self.destination.name,
                len(pending),
            )
        return len(pending), pl.concat(rejected)

    def _final_job(self, item: PendingJob) -> ImportJob | None:
        try:
            return self.client.wait_for_job(item.job_id)
        except SendGridNotFoundError:
            # SendGrid no longer knows the job: record nothing; the plan resends what's needed.
            self.store.drop_pending(item.job_id)
            return None


def _parse_errors_file(content: bytes) -> pl.DataFrame:
    """SendGrid's per-row errors file -> (email, message); column names matched loosely."""
    frame = pl.read_csv(io.BytesIO(content), infer_schema=False)
    columns = {c.lower().strip(): c for c in frame.columns}
    email = next((columns[c] for c in ("email", "email_address") if c in columns), None)
    message = next(
        (columns[c] for c in ("message", "error", "errors", "reason") if c in columns), None
    )
    if email is None:
        raise ValueError("errors file has no email column")
    return frame.select(
        pl.col(email).str.strip_chars().str.to_lowercase().alias("email"),
        (pl.col(message) if message else pl.lit("rejected by SendGrid")).alias("message"),
    ).unique("email", keep="first")


def masked_rejections(rejected: pl.DataFrame, limit: int = 20) -> pl.DataFrame:
    return rejected.head(limit).with_columns(mask_email_expr("email"))
