"""The one path every change to a list takes: intent -> request -> job id -> poll -> settle.

The intent is written before the request, so a change SendGrid may have applied is never
unrecorded; a crash anywhere leaves an intent the next sync settles (see `recovery`).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import polars as pl

from sendgrid_pipeline.sendgrid.client import ImportJob, SendGridClient
from sendgrid_pipeline.sendgrid.errors import SendGridError, SendGridJobError
from sendgrid_pipeline.state import Intent, ListState


@dataclass
class Submitted:
    """One kind of change sent, its jobs not yet settled: the intents in submission order,
    how to settle each finished job, and the rows refused so far (settling adds to them)."""

    intents: list[Intent]
    settle: Callable[[Intent, ImportJob], None]
    rejected: list[pl.DataFrame] = field(default_factory=list)


_MAX_POLL_INTERVAL = 10.0  # seconds between two rounds of job status reads, at most


@dataclass
class WriteAhead:
    """Sends changes to one list through its state handle; shared by upserts and removals."""

    client: SendGridClient
    state: ListState
    log: logging.Logger | logging.LoggerAdapter
    run_id: str
    crash_hook: Callable[[str], None]  # tests stop the process at a named step

    @property
    def name(self) -> str:
        return self.state.destination

    @property
    def list_id(self) -> str:
        return self.state.list_id

    def send(
        self, kind: str, rows: pl.DataFrame, request: Callable[[], str], job_ids: list[str]
    ) -> Intent:
        """Write the intent, send, note the job id (also in `job_ids`).

        A definite refusal (a 4xx) retires the intent and raises; an answer that never came
        marks the rows uncertain (possibly applied) and raises.
        """
        intent_id = self.state.write_intent(kind, rows, self.run_id)
        self.crash_hook(f"{kind}_intent")
        try:
            job_id = request()
        except SendGridError as error:
            if error.retryable:  # no answer, or a 5xx/429 to the end: possibly applied
                self.state.mark_uncertain(intent_id, rows["email"])
            else:  # SendGrid refused it: nothing was applied
                self.state.drop_intent(intent_id)
            raise
        self.crash_hook(f"{kind}_sent")
        self.state.intent_sent(intent_id, job_id)
        job_ids.append(job_id)
        self.crash_hook(f"{kind}_recorded")
        return Intent(intent_id, kind, rows, self.run_id, job_id)

    def settle_together(self, *sets: Submitted) -> pl.DataFrame:
        """Poll the jobs of every set as one (see poll_all); returns every rejected row.

        Upserts and removals of one plan touch different contacts, so their jobs may run
        side by side: the removals are sent while the upserts' jobs run, and one wait covers
        both instead of one after the other.
        """
        settle_by_intent = {i.intent_id: each.settle for each in sets for i in each.intents}
        intents = sorted((i for each in sets for i in each.intents), key=lambda i: i.intent_id)
        self.poll_all(intents, lambda intent, job: settle_by_intent[intent.intent_id](intent, job))
        return pl.concat([frame for each in sets for frame in each.rejected])

    def poll_all(self, intents: list[Intent], settle: Callable[[Intent, ImportJob], None]) -> None:
        """Poll a set of submitted jobs together, settling each as it ends; raise the first
        failure after the others are settled.

        One back-off for the whole set: each round reads the jobs in the order they were
        submitted up to the first one still running (later ones queue behind it), then
        pauses; the pause grows only after a round in which no job ended. Polling each job
        to its end in turn restarted the back-off per job: 515 status reads for 117 jobs.
        A job that ends in no time at all (`job_timeout_seconds` since the last one that
        ended) is left as an intent for the next run to settle.
        """
        client = self.client
        first_error: SendGridError | SendGridJobError | None = None
        pending = list(intents)
        recorded = 0
        interval = client.poll_interval_seconds
        deadline = time.monotonic() + client.job_timeout_seconds
        while pending:
            running: list[Intent] = []
            ended: list[tuple[Intent, ImportJob]] = []
            for intent in pending:
                if running:  # an earlier job still runs: read the later ones next round
                    running.append(intent)
                    continue
                try:
                    job = client.get_job(str(intent.job_id))
                except SendGridError as error:
                    first_error = first_error or error  # left as an intent: the next run settles it
                    continue
                if job.is_terminal:
                    ended.append((intent, job))
                else:
                    running.append(intent)
            # The round's finished jobs are recorded in one transaction: all or none (a crash
            # leaves their intents, with job ids, for the next run to settle).
            with self.state.transaction():
                for intent, job in ended:
                    self.crash_hook(f"{intent.kind}_confirmed")
                    settle(intent, job)
            recorded += len(ended)
            if ended:  # progress, one line per round in which jobs ended
                self.log.info(
                    "%s: %d of %d job(s) done and recorded",
                    self.name,
                    recorded,
                    len(intents),
                )
            pending = running
            if not pending:
                break
            if ended:
                deadline = time.monotonic() + client.job_timeout_seconds
            else:
                interval = min(interval * 1.5, _MAX_POLL_INTERVAL)
            if time.monotonic() + interval > deadline:
                first_error = first_error or SendGridJobError(
                    f"{self.name}: SendGrid job {pending[0].job_id} (and {len(pending) - 1} "
                    f"later) still running after {client.job_timeout_seconds:.0f}s; not "
                    "recorded as done, so the next run checks them again"
                )
                break
            client.pause(interval)
        if first_error is not None:
            raise first_error
