"""Apply a sync plan to one destination's SendGrid list, crash-safely.

Order of every write (write-ahead): record the intent -> send -> note the job id -> poll the
job to a terminal state -> record what it confirmed and retire the intent, in one
transaction. An outcome that cannot be confirmed (no answer, a crash, an unreadable errors
file) marks its members uncertain; the next sync settles every intent left behind, reconciles
with the list when anything is uncertain, and plans from the truth. So nothing SendGrid may
have applied is ever unrecorded, and every change converges (an upsert or a removal is safe
to repeat).

`DestinationSync` only orders the steps; each step is its own collaborator, all bound to the
list's state handle: `recovery` (pending intents), `reconcile`, `brake`, `upserts`,
`removals`, and `write_ahead` (the path every request takes).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from datetime import UTC

import polars as pl

from sendgrid_pipeline.config import Destination
from sendgrid_pipeline.sendgrid.client import SendGridClient
from sendgrid_pipeline.sendgrid.errors import SendGridNotFoundError
from sendgrid_pipeline.state import SyncStateStore
from sendgrid_pipeline.sync.account_limit import check_account_limit
from sendgrid_pipeline.sync.brake import check_brake
from sendgrid_pipeline.sync.options import SyncOptions, SyncRefused
from sendgrid_pipeline.sync.plan import build_plan, carry_identifiers
from sendgrid_pipeline.sync.reconcile import Reconciler
from sendgrid_pipeline.sync.recovery import Recovery
from sendgrid_pipeline.sync.removals import Removals
from sendgrid_pipeline.sync.report import REJECTED_SCHEMA, SyncReport, masked_rejections
from sendgrid_pipeline.sync.upserts import Upserts
from sendgrid_pipeline.sync.write_ahead import WriteAhead
from sendgrid_pipeline.transform import contact_json, number_custom_fields

__all__ = [
    "REJECTED_SCHEMA",
    "DestinationSync",
    "SyncOptions",
    "SyncRefused",
    "SyncReport",
    "masked_rejections",
]


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
        blocked_emails: Callable[[], pl.Series] | None = None,
    ) -> None:
        """`blocked_emails`: who must not be exported right now (the erasure ledger), read
        under the list's lock, since the contacts may have been built before an erasure."""
        self.client = client
        self.blocked_emails = blocked_emails
        self.destination = destination
        self.name = destination.name
        self.list_id = destination.list_id
        self.log = log
        self.options = options or SyncOptions()
        self.custom_ids = custom_ids or {}
        self.run_id = run_id
        self.state = store.for_list(self.name, self.list_id)
        writes = WriteAhead(client, self.state, log, run_id, crash_hook or (lambda _step: None))
        self.writes = writes
        self.upserts = Upserts(writes, self.options.max_contacts_per_upsert)
        self.removals = Removals(writes)
        self.recovery = Recovery(writes, self.upserts, self.removals)
        self.reconciler = Reconciler(
            client, self.state, destination, self.options, self.custom_ids, log
        )

    def _without_blocked(self, contacts: pl.DataFrame) -> pl.DataFrame:
        """Leave out anyone blocked since the contacts were built (an erasure recorded while
        this run computed them): never sent, and taken off the list if they are on it."""
        if self.blocked_emails is None:
            return contacts
        blocked = self.blocked_emails().drop_nulls()
        if blocked.is_empty():
            return contacts
        blocked = blocked.unique().to_frame("email")
        kept = contacts.join(blocked, on="email", how="anti")
        if "alternate_emails" in kept.columns:  # an erased address in any field is the person's
            carrying = (
                kept.select("email", pl.col("alternate_emails").alias("alternate"))
                .explode("alternate")
                .join(blocked, left_on="alternate", right_on="email", how="semi")
                .select("email")
            )
            kept = kept.join(carrying, on="email", how="anti")
        if kept.height < contacts.height:
            self.log.warning(
                "%s: %d contact(s) were recorded for erasure after this run built its contacts: "
                "left out (and taken off the list)",
                self.name,
                contacts.height - kept.height,
            )
        return kept

    def run(self, contacts: pl.DataFrame) -> SyncReport:
        """`contacts`: one row per contact the list must hold, with its mapped field columns.

        Holds the list's lock from the first read to the last write: two syncs of one list
        never interleave (no contact sent twice, no leaver re-added by a stale plan).
        """
        try:
            with self.state.lock(self.run_id, self.options.lock_wait_seconds):
                return self._run(contacts)
        finally:
            self.state.close()  # the state's one connection for this sync

    def _run(self, contacts: pl.DataFrame) -> SyncReport:
        started = time.monotonic()
        self._refuse_a_stale_plan()
        contacts = self._without_blocked(contacts)
        before = self._list_contact_count()
        known_before = self.state.is_known()
        recovered = self.recovery.settle_pending()
        recorded = self.state.members()
        uncertain = int(recorded["uncertain"].sum())  # read with the members: no second scan
        generation_read = self.state.generation()
        reason = self.reconciler.reason(recorded, before, uncertain)
        if reason:
            recorded = self.reconciler.rebuild(contacts, recorded, reason)
        identifiers = self.destination.field_mapping.identifiers()
        contacts = carry_identifiers(contacts, recorded, identifiers)
        desired = contacts.select("email").with_columns(self._contact_json(contacts))
        plan = build_plan(desired, recorded)
        report = SyncReport(
            self.name,
            self.list_id,
            plan,
            dry_run=self.options.dry_run,
            recovered_jobs=recovered.intents,
            uncertain=uncertain,
            reconciled=reason,
            list_count_before=before,
            attempted=recovered.attempted,
            upserted=recovered.upserted,
            removed=recovered.removed,
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
        first_record = bool(reason) and not known_before
        check_brake(plan, self.options, self.name, self.list_id, first_record)
        # The account's contact limit, before anything is sent (a dry run only reports it).
        report.account = check_account_limit(
            self.client, self.destination, plan, self.options.dry_run, self.log
        )
        adopt = (
            recorded.filter(~pl.col("managed"))
            .join(desired, on="email", how="semi")
            .get_column("email")
        )
        report.adopted = adopt.len()
        rejected = [recovered.rejected]
        if not self.options.dry_run:
            if adopt.len():
                self.state.adopt(adopt)
            # The removals are sent while the upserts' jobs run; one wait settles both.
            upserts = self.upserts.submit(plan, report)
            removals = self.removals.submit(plan, report)
            rejected.append(self.writes.settle_together(upserts, removals))
            report.list_count_after = self._list_contact_count()
            self.state.record_count_seen(report.list_count_after)
            if self.options.profiles_snapshot is not None:
                self.state.record_snapshot(self.options.profiles_snapshot, self.run_id)
        else:
            report.list_count_after = before
        report.rejected = pl.concat(rejected).unique("email", keep="last", maintain_order=True)
        report.state_generation = self.state.generation()
        if not reason and report.state_generation == generation_read:
            # nothing recorded since the members were read (every change bumps the
            # generation): no need to count a million rows again
            report.recorded_members = recorded.height
        else:
            report.recorded_members = self.state.member_count()
        report.sample = plan.sample(
            customer_ids=contacts if "customer_id" in contacts.columns else None
        )
        report.seconds = time.monotonic() - started
        return report

    def _refuse_a_stale_plan(self) -> None:
        """A plan from profiles older than those of the last applied plan would undo it
        (re-add leavers, revert edits): refuse it before anything is read or sent."""
        snapshot = self.options.profiles_snapshot
        applied = self.state.applied_snapshot()
        if snapshot is None or applied is None:
            return
        if snapshot.tzinfo is None:
            snapshot = snapshot.replace(tzinfo=UTC)
        applied_at, applied_by = applied
        if snapshot < applied_at:
            raise SyncRefused(
                f"Destination {self.name!r}: this run's contacts come from profiles read at "
                f"{snapshot.isoformat()}, older than the profiles read at "
                f"{applied_at.isoformat()} whose plan run {applied_by} already applied to list "
                f"{self.list_id}. Applying it would undo newer changes, so nothing was sent: "
                "rerun the export from the profiles (unified_profiles onwards)."
            )

    def _contact_json(self, contacts: pl.DataFrame) -> pl.Series:
        fields = list(self.destination.field_mapping.as_dict())
        number_fields = number_custom_fields(self.destination.field_mapping)
        return contact_json(contacts, fields, self.custom_ids, number_fields)

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
