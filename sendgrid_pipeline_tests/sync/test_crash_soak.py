"""Crash-and-change soak: SIGKILL a real sync process, change the world, rerun until success.

Each seed: an initial sync; a change of the desired contacts (joins, leaves, field edits);
a sync in a child process killed with SIGKILL at a random step around its requests, under
random faults (lost answers: applied but unanswered; dropped connections; 5xx; rows SendGrid
rejects; unreadable errors files); another change; then reruns until one succeeds. The list,
read back through the exports API, must then equal the desired contacts exactly, and every
contact's fields must equal the mapped values.

`make soak` runs many more seeds: `python -m sendgrid_pipeline_tests.sync.test_crash_soak 300`.
"""

from __future__ import annotations

import io
import json
import os
import random
import signal
import subprocess
import sys
import tempfile
from collections import Counter
from pathlib import Path

import polars as pl
import pytest

from sendgrid_pipeline.sendgrid.errors import SendGridError, SendGridJobError
from sendgrid_pipeline.sync.apply import DestinationSync, SyncOptions
from sendgrid_pipeline_tests.devkit.sandbox import FaultPlan, SandboxServer
from sendgrid_pipeline_tests.sync.support import (
    DESTINATION,
    LIST_ID,
    fast_client,
    log,
    open_store,
)

SEEDS = int(os.environ.get("SENDGRID_SOAK_SEEDS", "30"))
POSTGRES_SEEDS = [0, 1, 2]  # the same soak on the PostgreSQL store (its seeds are slower)
REJECTED = "bad"  # SendGrid rejects these rows at job time when the seed says so
NAMES = ["Ann", "Bo", "Chloé", "Dmitri", "Eve", "Fatima", "Gus", "Hana", "Ivan", "Zoë"]
MAX_RERUNS = 8
REPO = Path(__file__).resolve().parents[2]


def _email(rng: random.Random, n: int) -> str:
    kind = rng.random()
    if kind < 0.1:  # longer than the email search accepts: removals need another lookup
        return f"p{n:05d}.{'x' * rng.randint(95, 140)}@example.com"
    if kind < 0.2:
        return f"{REJECTED}{n:05d}@example.com"
    return f"p{n:05d}@example.com"


def _change(rng: random.Random, world: dict[str, str], next_id: list[int]) -> dict[str, str]:
    """Joins, leaves and field edits, each a random share of the world."""
    world = dict(world)
    for email in rng.sample(sorted(world), k=int(len(world) * rng.uniform(0, 0.3))):
        del world[email]
    for email in rng.sample(sorted(world), k=int(len(world) * rng.uniform(0, 0.3))):
        world[email] = rng.choice(NAMES) + rng.choice(["", " Jr", "-Lee"])
    for _ in range(rng.randint(0, 25)):
        next_id[0] += 1
        world[_email(rng, next_id[0])] = rng.choice(NAMES)
    return world


def _frame(world: dict[str, str]) -> pl.DataFrame:
    return pl.DataFrame(
        {"email": sorted(world), "first_name": [world[e] for e in sorted(world)]},
        schema={"email": pl.String, "first_name": pl.String},
    )


def _sync(sandbox: SandboxServer, state: Path | str, world: dict[str, str]) -> None:
    DestinationSync(
        fast_client(sandbox, backoff_max_seconds=0.2),
        open_store(state),
        DESTINATION,
        log,
        SyncOptions(allow_mass_removal=True, max_contacts_per_upsert=5),
        run_id="soak-rerun",
    ).run(_frame(world))


def _killed_sync(
    sandbox: SandboxServer, state: Path | str, world: dict[str, str], kill_at: int, workdir: Path
) -> bool:
    """The sync in its own process, SIGKILLed at step `kill_at`; True if it was killed."""
    desired = workdir / "desired.parquet"
    _frame(world).write_parquet(desired)
    child = subprocess.run(
        [
            sys.executable,
            "-m",
            "sendgrid_pipeline_tests.sync.crash_worker",
            sandbox.base_url,
            str(state),
            str(desired),
            str(kill_at),
        ],
        input=sandbox.api_key + "\n",
        capture_output=True,
        text=True,
        cwd=REPO,
        timeout=180,
        check=False,
    )
    if child.returncode not in (0, -signal.SIGKILL, 1):
        raise AssertionError(f"worker failed unexpectedly:\n{child.stderr[-3000:]}")
    return child.returncode == -signal.SIGKILL


def _list_through_export(sandbox: SandboxServer) -> dict[str, str]:
    """email -> first_name of every contact on the list, read as a user would: an export."""
    client = fast_client(sandbox, backoff_max_seconds=0.2)
    export_id = client.start_export([LIST_ID], file_type="json")
    rows = []
    for url in client.wait_for_export(export_id):
        content = client.download(url)
        if content.strip():
            rows += [json.loads(line) for line in io.BytesIO(content).read().splitlines()]
    return {row["email"].lower(): row.get("first_name", "") for row in rows}


def soak_one_seed(seed: int, dsn: str | None = None) -> Counter:
    """Run one seed; returns its figures (kills, faults, lost, extra, stale, reruns).

    The state is an SQLite file, or the PostgreSQL database `dsn` (empty) when given.
    """
    rng = random.Random(seed)
    figures: Counter = Counter(seeds=1)
    next_id = [0]
    world: dict[str, str] = {}
    for _ in range(rng.randint(20, 70)):
        next_id[0] += 1
        world[_email(rng, next_id[0])] = rng.choice(NAMES)
    rejecting = rng.random() < 0.5
    with (
        tempfile.TemporaryDirectory() as tmp,
        SandboxServer(lists={LIST_ID: "Soak"}, job_delay_seconds=0.005) as sandbox,
    ):
        state: Path | str = dsn or Path(tmp) / "state" / "sync_state.sqlite"
        rejects = f"^{REJECTED}" if rejecting else None
        sandbox.set_faults(FaultPlan(reject_email_pattern=rejects))  # never on the list
        _sync(sandbox, state, world)
        world = _change(rng, world, next_id)
        sandbox.set_faults(
            FaultPlan(
                seed=seed,
                lost_rate=rng.choice([0.0, 0.05, 0.15]),
                drop_rate=rng.choice([0.0, 0.03]),
                error_5xx_rate=rng.choice([0.0, 0.03]),
                reject_email_pattern=rejects,
                unreadable_errors_files=rejecting and rng.random() < 0.5,
            )
        )
        figures["kills"] += _killed_sync(
            sandbox, state, world, kill_at=rng.randint(1, 14), workdir=Path(tmp)
        )
        world = _change(rng, world, next_id)
        for attempt in range(1, MAX_RERUNS + 1):
            try:
                _sync(sandbox, state, world)
                figures["reruns"] += attempt
                break
            except (SendGridError, SendGridJobError) as error:
                log.info("seed %d rerun %d failed: %s", seed, attempt, error)
        else:
            raise AssertionError(f"seed {seed}: no rerun succeeded in {MAX_RERUNS}")
        figures["faults"] += sum(sandbox.fault_counts.values())
        figures["lost_answers"] += sandbox.fault_counts.get("lost", 0)
        sandbox.set_faults(FaultPlan())
        sandbox.wait_for_idle()
        on_list = _list_through_export(sandbox)
    expected = {e: n for e, n in world.items() if not (rejecting and e.startswith(REJECTED))}
    figures["lost"] += len(expected.keys() - on_list.keys())
    figures["extra"] += len(on_list.keys() - expected.keys())
    figures["stale_fields"] += sum(
        1 for e in expected.keys() & on_list.keys() if on_list[e] != expected[e]
    )
    return figures


@pytest.mark.parametrize("seed", range(SEEDS))
def test_sigkill_then_change_then_rerun_ends_exact(seed: int) -> None:
    figures = soak_one_seed(seed)
    print(f"seed {seed}: {dict(figures)}")
    assert (figures["lost"], figures["extra"], figures["stale_fields"]) == (0, 0, 0), dict(figures)


@pytest.mark.parametrize("seed", POSTGRES_SEEDS)
def test_sigkill_soak_on_the_postgres_state_ends_exact(seed: int, postgres_dsn: str) -> None:
    figures = soak_one_seed(seed, postgres_dsn)
    print(f"seed {seed} (PostgreSQL): {dict(figures)}")
    assert (figures["lost"], figures["extra"], figures["stale_fields"]) == (0, 0, 0), dict(figures)


if __name__ == "__main__":
    total: Counter = Counter()
    for seed in range(int(sys.argv[1]) if len(sys.argv) > 1 else SEEDS):
        total += soak_one_seed(seed)
        print(f"after seed {seed}: {dict(total)}", flush=True)
    print(json.dumps(dict(total)))
    sys.exit(1 if total["lost"] or total["extra"] or total["stale_fields"] else 0)
