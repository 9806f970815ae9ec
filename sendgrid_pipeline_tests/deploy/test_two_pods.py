"""Two pods, one shared sync state: each has its own Dagster instance and step outputs (local
directories here), both sync the same SendGrid lists through the same PostgreSQL state.

Runs alternate between the pods while profiles join, leave and change: after every run each
list holds exactly its segments, and nothing is sent twice (a pod never resends what the other
already sent). A run whose contacts come from profiles older than those of a run already
applied is refused.
"""

from __future__ import annotations

import dataclasses
import random
from pathlib import Path

import dagster as dg
import polars as pl

from sendgrid_pipeline.config import load_config
from sendgrid_pipeline.io_manager import DestinationParquetIOManager
from sendgrid_pipeline.pipeline import PipelineResources
from sendgrid_pipeline.state import SyncStateResource
from sendgrid_pipeline_tests.helpers import export, resources_for, step_failure_messages
from sendgrid_pipeline_tests.test_end_to_end import expected_members


def pod(data_dir: Path, sandbox, dsn: str, name: str, tmp_path: Path) -> PipelineResources:
    """A pod's wiring: its own state directory (unused) and storage, the shared state."""
    local = tmp_path / name
    return dataclasses.replace(
        resources_for(data_dir, sandbox),
        sync_state=SyncStateResource(directory=str(local / "state"), dsn=dsn),
        io_manager=DestinationParquetIOManager(base_dir=str(local / "storage")),
    )


def change_profiles(data_dir: Path, rng: random.Random) -> set[str]:
    """Some opt out (leave), some opt in (join), some change first name; the renamed emails."""
    path = data_dir / "profiles" / "profiles.csv"
    profiles = pl.read_csv(path, infer_schema_length=0)
    ids = profiles["customer_id"].to_list()
    opted_in = profiles.filter(pl.col("email_opt_in") == "true")["customer_id"].to_list()
    opted_out = profiles.filter(pl.col("email_opt_in") != "true")["customer_id"].to_list()
    leave = set(rng.sample(opted_in, 3))
    join = set(rng.sample(opted_out, min(3, len(opted_out))))
    rename = set(rng.sample(ids, 4)) - leave - join
    profiles = profiles.with_columns(
        pl.when(pl.col("customer_id").is_in(list(leave)))
        .then(pl.lit("false"))
        .when(pl.col("customer_id").is_in(list(join)))
        .then(pl.lit("true"))
        .otherwise(pl.col("email_opt_in"))
        .alias("email_opt_in"),
        pl.when(pl.col("customer_id").is_in(list(rename)))
        .then(pl.col("first_name") + pl.lit("x"))
        .otherwise(pl.col("first_name"))
        .alias("first_name"),
    )
    profiles.write_csv(path)
    renamed = profiles.filter(pl.col("customer_id").is_in(list(rename)))["email"]
    return {e.strip().lower() for e in renamed.to_list() if e}


def lists(sandbox, data_dir: Path) -> dict[str, set[str]]:
    return {
        d.name: sandbox.list_member_emails(d.list_id) for d in load_config(data_dir).destinations
    }


def sent(sandbox) -> int:
    return sum(r.contacts for r in sandbox.requests if r.method == "PUT")


def test_two_pods_alternate_on_one_shared_state(data_dir, sandbox, postgres_dsn, tmp_path) -> None:
    pods = {
        name: (pod(data_dir, sandbox, postgres_dsn, name, tmp_path), dg.DagsterInstance.ephemeral())
        for name in ("pod-a", "pod-b")
    }
    rng = random.Random(14)
    before: dict[str, set[str]] = {name: set() for name in lists(sandbox, data_dir)}
    renamed: set[str] = set()
    for round_number, name in enumerate(["pod-a", "pod-b", "pod-a", "pod-a", "pod-b", "pod-b"]):
        if round_number in (1, 3, 4):
            renamed = change_profiles(data_dir, rng)
        elif round_number:
            renamed = set()  # no change: nothing to send, whichever pod runs
        resources, instance = pods[name]
        sandbox.reset_request_log()
        result = export(data_dir, sandbox, resources=resources, instance=instance)
        assert result.success, step_failure_messages(result)
        expected = expected_members(data_dir)
        assert lists(sandbox, data_dir) == expected, f"round {round_number} on {name}"
        joins = sum(len(expected[d] - before[d]) for d in expected)
        edits = sum(len(renamed & expected[d] & before[d]) for d in expected)
        assert joins <= sent(sandbox) <= joins + edits, f"round {round_number} on {name}"
        if round_number and not renamed:
            assert sent(sandbox) == 0  # the other pod's work is in the shared state
        before = expected


def test_a_stale_pod_is_refused_after_a_newer_run_applied(
    data_dir, sandbox, postgres_dsn, tmp_path
) -> None:
    a = pod(data_dir, sandbox, postgres_dsn, "pod-a", tmp_path)
    b = pod(data_dir, sandbox, postgres_dsn, "pod-b", tmp_path)
    a_instance = dg.DagsterInstance.ephemeral()
    assert export(data_dir, sandbox, resources=a, instance=a_instance).success
    # pod A reads the profiles and builds its contacts, then stalls before its sync
    upstream = ["unified_profiles", "segment_membership", "sendgrid_contacts"]
    built = export(data_dir, sandbox, resources=a, instance=a_instance, selection=upstream)
    assert built.success, step_failure_messages(built)
    change_profiles(data_dir, random.Random(7))
    # meanwhile pod B reads the newer profiles and applies them
    assert export(data_dir, sandbox, resources=b).success
    applied = lists(sandbox, data_dir)
    sandbox.reset_request_log()
    stale = export(
        data_dir, sandbox, resources=a, instance=a_instance, selection=["sendgrid_list_sync"]
    )
    assert not stale.success
    messages = step_failure_messages(stale)
    assert "rerun the export from the profiles" in messages
    assert sent(sandbox) == 0 and lists(sandbox, data_dir) == applied == expected_members(data_dir)
    # a fresh run of pod A from the profiles syncs again (nothing left to send)
    again = export(data_dir, sandbox, resources=a, instance=a_instance)
    assert again.success, step_failure_messages(again)
    assert sent(sandbox) == 0 and lists(sandbox, data_dir) == expected_members(data_dir)
