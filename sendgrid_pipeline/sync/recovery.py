"""Recovery: settle every change an earlier run wrote ahead but did not see finish.

Runs first in every sync, before the plan, so the plan starts from what SendGrid applied.
An intent without a job id (the answer was never seen) or whose job SendGrid no longer knows
marks its members uncertain; the sync then reconciles with the list before planning.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import polars as pl

from sendgrid_pipeline.sendgrid.errors import SendGridNotFoundError
from sendgrid_pipeline.sync.removals import Removals
from sendgrid_pipeline.sync.report import no_rejections
from sendgrid_pipeline.sync.upserts import Upserts
from sendgrid_pipeline.sync.write_ahead import WriteAhead


@dataclass
class Recovered:
    """What the settled intents of earlier runs contributed to this sync's report."""

    intents: int = 0
    attempted: int = 0
    upserted: int = 0
    removed: int = 0
    rejected: pl.DataFrame = field(default_factory=no_rejections)


class Recovery:
    """Settles one list's pending intents through the upserts' and removals' own settling."""

    def __init__(self, writes: WriteAhead, upserts: Upserts, removals: Removals) -> None:
        self.writes = writes
        self.upserts = upserts
        self.removals = removals

    def settle_pending(self) -> Recovered:
        state = self.writes.state
        recovered = Recovered()
        rejected = [recovered.rejected]
        intents = state.intents()
        for intent in intents:
            if intent.job_id is None:  # sent or not, we never saw the answer
                state.mark_uncertain(intent.intent_id, intent.rows["email"])
                continue
            try:
                job = self.writes.client.wait_for_job(intent.job_id)
            except SendGridNotFoundError:  # SendGrid forgot the job: possibly applied
                state.mark_uncertain(intent.intent_id, intent.rows["email"])
                continue
            if intent.kind == "upsert":
                accepted, batch_rejected = self.upserts.settle(intent, job)
                recovered.attempted += intent.rows.height
                recovered.upserted += accepted
                rejected.append(batch_rejected)
            else:
                recovered.removed += self.removals.settle(intent, job)
        recovered.intents = len(intents)
        recovered.rejected = pl.concat(rejected)
        if intents:
            runs = sorted({i.run_id for i in intents})
            self.writes.log.info(
                "%s: settled %d change(s) left by earlier run(s) %s",
                self.writes.name,
                len(intents),
                ", ".join(runs),
            )
        return recovered
