"""The one path every change to a list takes: intent -> request -> job id -> poll -> settle.

The intent is written before the request, so a change SendGrid may have applied is never
unrecorded; a crash anywhere leaves an intent the next sync settles (see `recovery`).
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass

import polars as pl

from sendgrid_pipeline.sendgrid.client import ImportJob, SendGridClient
from sendgrid_pipeline.sendgrid.errors import SendGridError, SendGridJobError
from sendgrid_pipeline.state import Intent, ListState


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

    def poll_all(self, intents: list[Intent], settle: Callable[[Intent, ImportJob], None]) -> None:
        """Poll every submitted job, settling each as it ends; raise the first failure after.

        Submitting every job before polling any lets SendGrid work on them in parallel.
        """
        first_error: SendGridError | SendGridJobError | None = None
        for intent in intents:
            try:
                job = self.client.wait_for_job(str(intent.job_id))
            except (SendGridError, SendGridJobError) as error:
                first_error = first_error or error  # left as an intent: the next run settles it
                continue
            self.crash_hook(f"{intent.kind}_confirmed")
            settle(intent, job)
        if first_error is not None:
            raise first_error
