"""A fault soak: seeded random faults over multi-batch syncs; no contact may be lost.

Each seed runs three rounds of changes (join, leave, rename) against a sandbox injecting 5xx,
dropped connections, answers slower than the client's timeout, 429 bursts, a rate-limit window
and row rejections. A sync that gives up is simply run again, as Dagster's RetryPolicy would.
"""

from __future__ import annotations

import logging
import random
import tempfile
from pathlib import Path

import pytest

from sendgrid_pipeline.sendgrid.client import SendGridClient
from sendgrid_pipeline.sendgrid.errors import SendGridError, SendGridJobError
from sendgrid_pipeline.sync.apply import DestinationSync, SyncOptions
from sendgrid_pipeline_tests.devkit.sandbox import FaultPlan, SandboxServer
from sendgrid_pipeline_tests.sync.support import DESTINATION, LIST_ID, emails, open_store, people

SEEDS = list(range(1, 21))
POSTGRES_SEEDS = [1, 2]  # the same soak on the PostgreSQL store
MAX_ATTEMPTS = 12
log = logging.getLogger("soak")


def _rounds(rng: random.Random) -> list[list[str]]:
    """Three desired memberships: a start, then two rounds of joins, leaves and renames."""
    pool = [f"p{i:04}" for i in range(400)] + [f"reject{i}" for i in range(6)]
    current = rng.sample(pool, 150)
    rounds = [sorted(current)]
    for _ in range(2):
        leaving = set(rng.sample(current, 25))
        joining = rng.sample([p for p in pool if p not in current], 35)
        current = [p for p in current if p not in leaving] + joining
        rounds.append(sorted(current))
    return rounds


def soak_one_seed(seed: int, dsn: str | None = None) -> dict[str, int]:
    rng = random.Random(seed)
    plan = FaultPlan(
        seed=seed,
        error_5xx_rate=0.15,
        drop_rate=0.06,
        slow_rate=0.03,
        slow_seconds=0.4,
        burst_429=rng.randint(0, 3),
        rate_limit=(rng.randint(20, 40), 0.5),
        reject_email_pattern=r"^reject",
    )
    syncs = lost = extra = 0
    with (
        tempfile.TemporaryDirectory() as tmp,
        SandboxServer(lists={LIST_ID: "Soak"}, job_delay_seconds=0.005, faults=plan) as sandbox,
    ):
        store = open_store(dsn or Path(tmp) / "state.sqlite")
        for round_number, names in enumerate(_rounds(rng)):
            renamed = {n: f"R{round_number}" for n in rng.sample(names, 5)}
            desired = people(*names, renamed=renamed)
            for _attempt in range(MAX_ATTEMPTS):
                syncs += 1
                client = SendGridClient(
                    sandbox.api_key,
                    sandbox.base_url,
                    timeout_seconds=0.25,
                    max_retries=2,
                    backoff_base_seconds=0.01,
                    backoff_max_seconds=0.6,
                    poll_interval_seconds=0.01,
                )
                options = SyncOptions(allow_mass_removal=True, max_contacts_per_upsert=40)
                try:
                    DestinationSync(client, store, DESTINATION, log, options).run(desired)
                    break
                except (SendGridError, SendGridJobError):
                    continue
            else:
                raise AssertionError(f"seed {seed}: round {round_number} never completed")
            sandbox.wait_for_idle()
            expected = {e for e in emails(desired) if not e.startswith("reject")}
            members = sandbox.list_member_emails(LIST_ID)
            lost += len(expected - members)
            extra += len(members - expected)
            for name, new_name in renamed.items():
                email = f"{name}@example.com"
                if email in expected:
                    assert sandbox.contact(email)["first_name"] == new_name
        faults = sum(sandbox.fault_counts.values())
    return {"seed": seed, "syncs": syncs, "faults": faults, "lost": lost, "extra": extra}


@pytest.mark.parametrize("seed", SEEDS)
def test_fault_soak_ends_exact(seed: int) -> None:
    outcome = soak_one_seed(seed)
    print(f"soak {outcome}")
    assert outcome["faults"] > 0
    assert outcome["lost"] == 0, outcome
    assert outcome["extra"] == 0, outcome


@pytest.mark.parametrize("seed", POSTGRES_SEEDS)
def test_fault_soak_on_the_postgres_state_ends_exact(seed: int, postgres_dsn: str) -> None:
    outcome = soak_one_seed(seed, postgres_dsn)
    print(f"soak (PostgreSQL) {outcome}")
    assert outcome["faults"] > 0
    assert (outcome["lost"], outcome["extra"]) == (0, 0), outcome
