"""How a sync may behave (options from the run and the destination), and how it refuses."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta

from sendgrid_pipeline.errors import PipelineError
from sendgrid_pipeline.sendgrid.batching import MAX_CONTACTS_PER_UPSERT


class SyncRefused(PipelineError):
    """The sync stopped before sending anything; the message says why and what to do."""


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
    # When the profiles behind the contacts were read (None: unknown, not checked). A plan
    # from profiles older than the last applied plan's is stale and refused.
    profiles_snapshot: datetime | None = None
