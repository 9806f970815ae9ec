"""A sync in its own process, killed with SIGKILL at a chosen step: the crash-soak's victim.

Run as `python -m sendgrid_pipeline_tests.sync.crash_worker BASE_URL STATE DESIRED KILL_AT`;
the API key comes on standard input so it never shows in a process list.
"""

from __future__ import annotations

import os
import signal
import sys

import polars as pl

from sendgrid_pipeline.sendgrid.client import SendGridClient
from sendgrid_pipeline.sync.apply import DestinationSync, SyncOptions
from sendgrid_pipeline_tests.sync.support import DESTINATION, log, open_store

BATCH = 5  # small batches: many request boundaries to die at


def main() -> None:
    base_url, state, desired, kill_at = sys.argv[1:5]
    api_key = sys.stdin.readline().strip()
    steps = 0

    def die_at_the_chosen_step(step: str) -> None:
        nonlocal steps
        steps += 1
        if steps == int(kill_at):
            os.kill(os.getpid(), signal.SIGKILL)

    client = SendGridClient(
        api_key,
        base_url,
        poll_interval_seconds=0.01,
        backoff_base_seconds=0.01,
        backoff_max_seconds=0.2,
        timeout_seconds=2.0,
    )
    engine = DestinationSync(
        client,
        open_store(state),  # an SQLite file path or a PostgreSQL URL
        DESTINATION,
        log,
        SyncOptions(allow_mass_removal=True, max_contacts_per_upsert=BATCH),
        crash_hook=die_at_the_chosen_step,
        run_id="crash-worker",
    )
    engine.run(pl.read_parquet(desired))


if __name__ == "__main__":
    main()
