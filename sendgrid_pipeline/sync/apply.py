"""Apply a sync plan to one destination's SendGrid list, crash-safely.

Order of every write (write-ahead): record the intent -> send -> note the job id -> poll the
job to a terminal state -> record what it confirmed and retire the intent, in one
transaction. An outcome that cannot be confirmed (no answer, a crash, an unreadable errors
file) marks its members uncertain; the next sync settles every intent left behind, reconciles
with the list when anything is uncertain, and plans from the truth. So nothing SendGrid may
have applied is ever unrecorded, and every change converges (an upsert or a removal is safe
to repeat).
"""

from __future__ import annotations

import io
import logging
import re
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta

import polars as pl

from sendgrid_pipeline.config import Destination
from sendgrid_pipeline.privacy import mask_email_expr
from sendgrid_pipeline.sendgrid.batching import MAX_CONTACTS_PER_UPSERT, iter_upsert_batches
from sendgrid_pipeline.sendgrid.client import (
    REMOVE_IDS_PER_REQUEST,
    SEARCH_EMAIL_MAX_LENGTH,
    SEARCH_EMAILS_MAX,
    SGQL_MAX_RESULTS,
    ImportJob,
    SendGridClient,
)
from sendgrid_pipeline.sendgrid.errors import (
    SendGridBadRequestError,
    SendGridError,
    SendGridJobError,
    SendGridNotFoundError,
)
from sendgrid_pipeline.state import Intent, SyncStateStore
from sendgrid_pipeline.sync.plan import SyncPlan, build_plan, carry_identifiers
from sendgrid_pipeline.sync.reconcile import read_list_members, reconciled_members
from sendgrid_pipeline.transform import contact_json, number_custom_fields

REJECTED_SCHEMA = {"email": pl.String, "reason": pl.String, "detail": pl.String}


class SyncRefused(Exception):
    """The sync stopped before sending anything; the message says why and what to do."""

    retryable = False


@dataclass(frozen=True)
class SyncOptions:
    dry_run: bool = False
    max_removal_share: float = 0.2
    min_removals_for_brake: int = 10
    allow_mass_removal: bool = False
    reconcile: bool = False
    reconcile_every: timedelta | None = timedelta(days=7)  # safety net; None: never by age
    # The state generation the last sync reported (Dagster's record): a state below it was
    # restored from an older backup.
    witnessed_generation: int | None = None
    max_contacts_per_upsert: int = MAX_CONTACTS_PER_UPSERT
    lock_wait_seconds: float = 600.0  # how long a second sync of the same list waits


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
    attempted: int = 0  # rows sent in upserts (this run and settled earlier ones)
    recovered_jobs: int = 0
    uncertain: int = 0  # members whose last change could not be confirmed before this sync
    adopted: int = 0  # members already on the list that are ours to manage from now on
    reconciled: str = ""  # why the record was rebuilt from the list, or "" when it was not
    job_ids: list[str] = field(default_factory=list)
    rejected: pl.DataFrame = field(default_factory=lambda: pl.DataFrame(schema=REJECTED_SCHEMA))
    list_count_before: int = 0
    list_count_after: int = 0
    state_generation: int = 0
    recorded_members: int = 0  # what the state records on the list after this sync
    sample: pl.DataFrame = field(default_factory=pl.DataFrame)  # masked, with customer ids
    seconds: float = 0.0


def _rejections(rows: pl.DataFrame, reason: str, detail: str | pl.Expr) -> pl.DataFrame:
    detail_expr = pl.lit(detail) if isinstance(detail, str) else detail
    return rows.select(
        "email", pl.lit(reason).alias("reason"), detail_expr.cast(pl.String).alias("detail")
    )


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
        run_id: str = "(outside Dagster)",
    ) -> None:
        self.client = client
        self.store = store
        self.destination = destination
        self.name = destination.name
        self.list_id = destination.list_id
        self.log = log
        self.options = options or SyncOptions()
        self._crash_hook = crash_hook or (lambda _step: None)
        self.custom_ids = custom_ids or {}
        self.number_fields = number_custom_fields(destination.field_mapping)
        self.run_id = run_id
        self._stale_state = False  # set when the state is older than the last sync

    # -- entry point -----------------------------------------------------------------------
    def run(self, contacts: pl.DataFrame) -> SyncReport:
        """`contacts`: one row per contact the list must hold, with its mapped field columns.

        Holds the list's lock from the first read to the last write: two syncs of one list
        never interleave (no contact sent twice, no leaver re-added by a stale plan).
        """
        with self.store.list_lock(
            self.name, self.list_id, self.run_id, self.options.lock_wait_seconds
        ):
            return self._run(contacts)

    def _run(self, contacts: pl.DataFrame) -> SyncReport:
        started = time.monotonic()
        before = self._list_contact_count()
        known_before = self.store.is_known(self.name, self.list_id)
        report_parts: list[pl.DataFrame] = [pl.DataFrame(schema=REJECTED_SCHEMA)]
        recovered, settled = self._settle_intents(report_parts)
        uncertain = self.store.has_uncertain(self.name, self.list_id)
        recorded = self._recorded()
        reason = self._reconcile_reason(recorded, before, uncertain)
        if reason:
            recorded = self._reconcile(contacts, recorded, reason)
        identifiers = self.destination.field_mapping.identifiers()
        contacts = carry_identifiers(contacts, recorded, identifiers)
        desired = contacts.select("email").with_columns(self._contact_json(contacts))
        plan = build_plan(desired, recorded)
        report = SyncReport(
            self.name,
            self.list_id,
            plan,
            dry_run=self.options.dry_run,
            recovered_jobs=recovered,
            uncertain=uncertain,
            reconciled=reason,
            list_count_before=before,
            attempted=settled.attempted,
            upserted=settled.upserted,
            removed=settled.removed,
        )
        self.log.info(
            "%s: plan add=%d update=%d remove=%d unchanged=%d (list has %d contacts)",
            self.name,
            plan.adds,
            plan.updates,
            plan.removes.height,
            plan.unchanged,
            before,
        )
        self._brake(plan, first_record=bool(reason) and not known_before)
        adopt = (
            recorded.filter(~pl.col("managed"))
            .join(desired, on="email", how="semi")
            .get_column("email")
        )
        report.adopted = adopt.len()
        if not self.options.dry_run:
            if adopt.len():
                self.store.adopt(self.name, self.list_id, adopt)
            report_parts.append(self._apply_upserts(plan, report))
            report_parts.append(self._apply_removals(plan, report))
            report.list_count_after = self._list_contact_count()
        else:
            report.list_count_after = before
        report.rejected = pl.concat(report_parts).unique("email", keep="last", maintain_order=True)
        report.state_generation = self.store.generation(self.name, self.list_id)
        report.recorded_members = self.store.member_count(self.name, self.list_id)
        report.sample = plan.sample(
            customer_ids=contacts if "customer_id" in contacts.columns else None
        )
        report.seconds = time.monotonic() - started
        return report

    def _contact_json(self, contacts: pl.DataFrame) -> pl.Series:
        fields = list(self.destination.field_mapping.as_dict())
        return contact_json(contacts, fields, self.custom_ids, self.number_fields)

    # -- preflight and brake ---------------------------------------------------------------
    def _list_contact_count(self) -> int:
        try:
            return int(self.client.get_list(self.list_id).get("contact_count") or 0)
        except SendGridNotFoundError:
            raise SyncRefused(
                f"Destination {self.name!r}: SendGrid list {self.list_id} was not "
                "found on this account (HTTP 404). Check list_id in destinations.yaml against "
                "Marketing > Contacts > Lists, and that the API key belongs to that account. "
                "Nothing was sent."
            ) from None

    def _recorded(self) -> pl.DataFrame:
        return self.store.members(self.name, self.list_id)

    def _brake(self, plan: SyncPlan, first_record: bool) -> None:
        """Refuse a plan that looks like a broken source rather than a real change."""
        if self.options.allow_mass_removal or self.options.dry_run:
            return
        removes = plan.removes.height
        recorded = plan.list_members_before
        empties = removes and removes == recorded and not plan.upserts.height and not plan.unchanged
        share = removes / recorded if recorded else 0.0
        too_many = (
            share > self.options.max_removal_share
            and removes >= self.options.min_removals_for_brake
        )
        if empties or too_many:
            why = "would empty the list" if empties else f"would remove {share:.0%} of it"
            raise SyncRefused(
                f"Destination {self.name!r}: the plan {why} ({removes} of "
                f"{recorded} contacts we manage; brake at "
                f"{self.options.max_removal_share:.0%}). This usually means a broken profile "
                "source or an emptied segment. Nothing was sent. If the removal is intended, "
                "rerun with the run tag sendgrid/allow_mass_removal=true or set "
                "allow_mass_removal: true on the destination."
            )
        # With no record of the list (first sync, or a lost state file), members outside the
        # segments cannot be told apart from contacts that left: many of them is suspicious.
        outside = plan.unmanaged_kept
        on_list = outside + plan.unchanged + plan.updates
        if first_record and on_list and outside >= self.options.min_removals_for_brake:
            outside_share = outside / on_list
            if outside_share > self.options.max_removal_share:
                raise SyncRefused(
                    f"Destination {self.name!r}: the state has no record of list "
                    f"{self.list_id} (first sync, or a lost state file) and {outside} of its "
                    f"{on_list} contacts ({outside_share:.0%}) are not in the segments (brake "
                    f"at {self.options.max_removal_share:.0%}). That is what a truncated profile "
                    "source looks like. Nothing was sent. If the list really holds contacts "
                    "from elsewhere, rerun with the run tag sendgrid/allow_mass_removal=true: "
                    "they will be kept, never removed."
                )

    # -- reconcile -------------------------------------------------------------------------
    def _reconcile_reason(self, recorded: pl.DataFrame, list_count: int, uncertain: int) -> str:
        if self.options.reconcile:
            return "requested"
        last = self.store.last_reconciled(self.name, self.list_id)
        if last is None:
            return "no record of this list yet"
        if uncertain:
            return f"{uncertain} member(s) with an unconfirmed change"
        witnessed = self.options.witnessed_generation
        generation = self.store.generation(self.name, self.list_id)
        if witnessed is not None and generation < witnessed:
            self._stale_state = True
            return (
                f"the state is older than the last sync (it records {generation} changes, the "
                f"last sync reported {witnessed}): restored from an older backup?"
            )
        if list_count < recorded.height:
            return f"the list holds {list_count} contacts but {recorded.height} are recorded"
        every = self.options.reconcile_every
        if every is not None and datetime.now(UTC) - last >= every:
            return f"last reconciled {last:%Y-%m-%d %H:%M} UTC, over {every.days} day(s) ago"
        return ""

    def _reconcile(
        self, desired: pl.DataFrame, recorded: pl.DataFrame, reason: str
    ) -> pl.DataFrame:
        """Read the list's true membership and rebuild the record (kept in memory on dry runs)."""
        fields = list(self.destination.field_mapping.as_dict())
        on_list = read_list_members(
            self.client,
            self.list_id,
            fields,
            self.custom_ids,
            self.number_fields,
            fallback=desired,
        )
        # After a restored backup, members the old record does not know were added since the
        # backup (by us, as a rule): they are ours, and the removal brake still applies.
        rebuilt = reconciled_members(
            on_list,
            recorded,
            desired["email"],
            self.destination.owns_list or self._stale_state,
        )
        if not self.options.dry_run:
            self.store.replace_members(self.name, self.list_id, rebuilt)
        self.log.info(
            "%s: reconciled with the list (%s): %d contacts on it, %d managed by us",
            self.name,
            reason,
            rebuilt.height,
            int(rebuilt["managed"].sum()),
        )
        return rebuilt.with_columns(pl.lit(False).alias("uncertain"))

    # -- writes, ahead of every request ----------------------------------------------------
    def _send(
        self, kind: str, rows: pl.DataFrame, request: Callable[[], str], report: SyncReport
    ) -> Intent:
        """Write the intent, send, note the job: the one path every change takes.

        A definite refusal (a 4xx) retires the intent and raises; an answer that never came
        marks the rows uncertain (possibly applied) and raises.
        """
        intent_id = self.store.write_intent(self.name, self.list_id, kind, rows, self.run_id)
        self._crash_hook(f"{kind}_intent")
        try:
            job_id = request()
        except SendGridError as error:
            if error.retryable:  # no answer, or a 5xx/429 to the end: possibly applied
                self.store.mark_uncertain(intent_id, self.name, self.list_id, rows["email"])
            else:  # SendGrid refused it: nothing was applied
                self.store.drop_intent(intent_id)
            raise
        self._crash_hook(f"{kind}_sent")
        self.store.intent_sent(intent_id, job_id)
        report.job_ids.append(job_id)
        self._crash_hook(f"{kind}_recorded")
        return Intent(intent_id, kind, rows, self.run_id, job_id)

    def _poll_all(self, intents: list[Intent], settle: Callable[[Intent, ImportJob], None]) -> None:
        """Poll every submitted job, settling each as it ends; raise the first failure after."""
        first_error: Exception | None = None
        for intent in intents:
            try:
                job = self.client.wait_for_job(str(intent.job_id))
            except (SendGridError, SendGridJobError) as error:
                first_error = first_error or error  # left as an intent: the next run settles it
                continue
            self._crash_hook(f"{intent.kind}_confirmed")
            settle(intent, job)
        if first_error is not None:
            raise first_error

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
        submitted: list[Intent] = []
        rejected = [pl.DataFrame(schema=REJECTED_SCHEMA)]
        for number, batch in enumerate(batches, 1):
            batch_rows = rows.slice(batch.start, batch.size)
            rejected.append(self._submit(batch_rows, batch.body, submitted, report))
            self.log.info(
                "%s: upsert batch %d of %d: %d contacts, %d bytes, job %s",
                self.name,
                number,
                len(batches),
                batch.size,
                len(batch.body),
                submitted[-1].job_id if submitted else "(none: every row rejected)",
            )
        report.attempted += rows.height

        def settle(intent: Intent, job: ImportJob) -> None:
            accepted, batch_rejected = self._settle_upsert(intent, job)
            report.upserted += accepted
            report.created += job.count("created_count")
            report.updated += job.count("updated_count")
            rejected.append(batch_rejected)

        self._poll_all(submitted, settle)
        return pl.concat(rejected)

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
            body = next(iter_upsert_batches(rows["contact_json"], [self.list_id], rows.height)).body
        try:
            intent = self._send(
                "upsert", rows, lambda: self.client.upsert_contacts(body, rows.height), report
            )
        except SendGridBadRequestError as error:
            return self._isolate(rows, error, submitted, report)
        submitted.append(intent)
        return pl.DataFrame(schema=REJECTED_SCHEMA)

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
            self.log.warning(
                "%s: SendGrid rejected a batch for %d row(s); resending the other %d",
                self.name,
                rejected.height,
                rest.height,
            )
            if rest.height:
                rejected = pl.concat([rejected, self._submit(rest, None, submitted, report)])
            return rejected
        if rows.height == 1:
            return _rejections(rows, "sendgrid_rejected", str(error))
        half = rows.height // 2
        return pl.concat(
            [
                self._submit(rows.head(half), None, submitted, report),
                self._submit(rows.slice(half), None, submitted, report),
            ]
        )

    def _settle_upsert(self, intent: Intent, job: ImportJob) -> tuple[int, pl.DataFrame]:
        """Record a terminal upsert job's accepted rows; return (accepted, rejected rows)."""
        rows = intent.rows
        rejected = pl.DataFrame(schema=REJECTED_SCHEMA)
        if job.status != "completed":
            rejected = self._job_rejections(job, rows)
            if rejected is None:  # we cannot tell which rows it applied
                self.store.mark_uncertain(intent.intent_id, self.name, self.list_id, rows["email"])
                self.log.warning(
                    "%s: job %s %s and its errors file cannot be read: its %d rows are "
                    "recorded as possibly applied and checked against the list next sync",
                    self.name,
                    job.id,
                    job.status,
                    rows.height,
                )
                return 0, pl.DataFrame(schema=REJECTED_SCHEMA)
        accepted = (
            rows
            if rejected.is_empty()
            else rows.join(rejected.select("email"), on="email", how="anti")
        )
        self.store.confirm_upsert(intent.intent_id, self.name, self.list_id, accepted)
        self.log.info(
            "%s: job %s %s: %d accepted, %d rejected",
            self.name,
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
                errors = _parse_errors_file(self.client.download(job.errors_url))
            except (SendGridError, ValueError, pl.exceptions.PolarsError) as error:
                self.log.warning("job %s: cannot read errors file: %s", job.id, error)
                return None
        if job.status == "failed" and (errors is None or errors.height == 0):
            # failed: "all rows errored, or the job could not be processed": nothing applied
            return _rejections(rows, "sendgrid_job_failed", f"job {job.id} gave no row errors")
        if errors is None:
            return None
        return rows.join(errors, on="email", how="inner").select(
            "email",
            pl.lit("sendgrid_rejected").alias("reason"),
            pl.col("message").alias("detail"),
        )

    # -- removals --------------------------------------------------------------------------
    def _apply_removals(self, plan: SyncPlan, report: SyncReport) -> pl.DataFrame:
        if plan.removes.height == 0:
            return pl.DataFrame(schema=REJECTED_SCHEMA)
        removes, unresolved = self._with_contact_ids(plan.removes)
        submitted: list[Intent] = []
        chunks = list(removes.iter_slices(REMOVE_IDS_PER_REQUEST))
        for number, chunk in enumerate(chunks, 1):
            ids = chunk["contact_id"].to_list()
            try:
                intent = self._send(
                    "remove",
                    chunk,
                    lambda ids=ids: self.client.remove_from_list(self.list_id, ids),
                    report,
                )
            except SendGridNotFoundError as error:
                # A stale contact id (the contact was deleted): look it up again next sync.
                self.store.record_contact_ids(
                    self.name, self.list_id, chunk.select("email", pl.lit(None).alias("id"))
                )
                unresolved.append(_rejections(chunk, "contact_id_stale", str(error)))
                continue
            submitted.append(intent)
            self.log.info(
                "%s: removal %d of %d: %d contacts, job %s",
                self.name,
                number,
                len(chunks),
                chunk.height,
                intent.job_id,
            )

        def settle(intent: Intent, job: ImportJob) -> None:
            report.removed += self._settle_removal(intent, job)

        self._poll_all(submitted, settle)
        return pl.concat(unresolved)

    def _with_contact_ids(self, removes: pl.DataFrame) -> tuple[pl.DataFrame, list[pl.DataFrame]]:
        """Resolve missing contact ids; forget contacts SendGrid no longer has.

        Ids recorded by a reconcile need no request; others are searched by email (up to 100
        characters) or through SGQL (longer addresses). A contact that cannot be resolved is
        a reported row, kept recorded and retried next sync: never a blocker for the others.
        """
        unknown = removes.filter(pl.col("contact_id").is_null())["email"]
        found: dict[str, str] = {}
        unresolved: dict[str, str] = {}
        short = unknown.filter(unknown.str.len_chars() <= SEARCH_EMAIL_MAX_LENGTH)
        long = unknown.filter(unknown.str.len_chars() > SEARCH_EMAIL_MAX_LENGTH)
        for chunk in short.to_frame().iter_slices(SEARCH_EMAILS_MAX):
            self._search(chunk["email"].to_list(), self.client.search_emails, found, unresolved)
        for chunk in long.to_frame().iter_slices(SGQL_MAX_RESULTS):
            self._search(
                chunk["email"].to_list(),
                self.client.search_contact_ids_by_sgql,
                found,
                unresolved,
            )
        ids = pl.DataFrame(
            {"email": list(found), "found_id": list(found.values())},
            schema={"email": pl.String, "found_id": pl.String},
        )
        if ids.height:
            self.store.record_contact_ids(self.name, self.list_id, ids)
        gone = unknown.filter(~unknown.is_in(list(found) + list(unresolved))).to_list()
        if gone:
            self.store.forget(self.name, self.list_id, gone)
            self.log.info(
                "%s: %d contacts to remove no longer exist in SendGrid", self.name, len(gone)
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
            self.log.warning(
                "%s: %d leaver(s) could not be looked up in SendGrid; they stay on the list "
                "until a later sync resolves them (see the rejected rows)",
                self.name,
                problems.height,
            )
        resolved = (
            removes.join(ids, on="email", how="left")
            .with_columns(pl.coalesce("contact_id", "found_id").alias("contact_id"))
            .filter(pl.col("contact_id").is_not_null())
            .select("email", "contact_id")
        )
        return resolved, [problems]

    def _search(
        self,
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
            self._search(emails[:half], search, found, unresolved)
            self._search(emails[half:], search, found, unresolved)

    def _settle_removal(self, intent: Intent, job: ImportJob) -> int:
        rows = intent.rows
        if job.status == "completed":
            self.store.confirm_remove(
                intent.intent_id, self.name, self.list_id, rows["email"].to_list()
            )
            return rows.height
        if job.status == "failed":  # nothing applied: still recorded, planned again next sync
            self.store.drop_intent(intent.intent_id)
        else:  # errored: some left, some did not; the list tells which next sync
            self.store.mark_uncertain(intent.intent_id, self.name, self.list_id, rows["email"])
        self.log.warning(
            "%s: removal job %s ended %s; those contacts are checked and retried next sync",
            self.name,
            job.id,
            job.status,
        )
        return 0

    # -- crash recovery --------------------------------------------------------------------
    def _settle_intents(self, rejected: list[pl.DataFrame]) -> tuple[int, _Settled]:
        """Settle every change an earlier run wrote ahead but did not see finish."""
        settled = _Settled()
        intents = self.store.intents(self.name, self.list_id)
        for intent in intents:
            if intent.job_id is None:  # sent or not, we never saw the answer
                self.store.mark_uncertain(
                    intent.intent_id, self.name, self.list_id, intent.rows["email"]
                )
                continue
            try:
                job = self.client.wait_for_job(intent.job_id)
            except SendGridNotFoundError:  # SendGrid forgot the job: possibly applied
                self.store.mark_uncertain(
                    intent.intent_id, self.name, self.list_id, intent.rows["email"]
                )
                continue
            if intent.kind == "upsert":
                accepted, batch_rejected = self._settle_upsert(intent, job)
                settled.attempted += intent.rows.height
                settled.upserted += accepted
                rejected.append(batch_rejected)
            else:
                settled.removed += self._settle_removal(intent, job)
        if intents:
            runs = sorted({i.run_id for i in intents})
            self.log.info(
                "%s: settled %d change(s) left by earlier run(s) %s",
                self.name,
                len(intents),
                ", ".join(runs),
            )
        return len(intents), settled


@dataclass
class _Settled:
    attempted: int = 0
    upserted: int = 0
    removed: int = 0


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
