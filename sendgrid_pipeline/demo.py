"""`make demo`: the whole export against the bundled SendGrid sandbox, then what happened.

Starts the sandbox on a free loopback port, runs the export job once over every destination
(one Dagster run), runs it again to show that an unchanged refresh sends nothing, and prints
per-destination figures read from the run's own events and from the sandbox.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import dagster as dg

from sendgrid_pipeline.config import data_dir
from sendgrid_pipeline.sandbox import SandboxServer

COLUMNS = [
    ("destination", "destination"),
    ("in segments", "profiles_in_segments"),
    ("contacts", "contacts"),
    ("rejected", "rejected"),
    ("sent", "upserted"),
    ("created", "created"),
    ("updated", "updated"),
    ("removed", "removed"),
    ("SendGrid rejected", "rejected_by_sendgrid"),
    ("list size after", "list_contact_count"),
]


def _metadata_by_partition(result: dg.ExecuteInProcessResult, asset: str) -> dict[str, dict]:
    """Per-destination metadata from materializations (one partition) or observations."""
    found: dict[str, dict] = {}
    events = sorted(  # per-partition observations are the precise figures: apply them last
        result.all_events, key=lambda e: e.event_type_value == "ASSET_OBSERVATION"
    )
    for event in events:
        data = event.event_specific_data
        if event.event_type_value not in ("ASSET_MATERIALIZATION", "ASSET_OBSERVATION"):
            continue
        record = getattr(data, "materialization", None) or getattr(data, "asset_observation", None)
        if record is None or record.asset_key != dg.AssetKey(asset) or not record.partition:
            continue
        values = {k: getattr(v, "value", v) for k, v in record.metadata.items()}
        found.setdefault(record.partition, {}).update(values)
    return found


def _table(rows: list[Mapping[str, Any]]) -> str:
    headers = [h for h, _ in COLUMNS]
    cells = [[str(row.get(key, "")) for _, key in COLUMNS] for row in rows]
    widths = [max(len(h), *(len(c[i]) for c in cells)) for i, h in enumerate(headers)]
    line = "  ".join(
        h.rjust(w) if i else h.ljust(w)
        for i, (h, w) in enumerate(zip(headers, widths, strict=True))
    )
    body = [
        "  ".join(
            c.rjust(w) if i else c.ljust(w)
            for i, (c, w) in enumerate(zip(row, widths, strict=True))
        )
        for row in cells
    ]
    return "\n".join([line, "-" * len(line), *body])


def _instance() -> dg.DagsterInstance:
    """The persistent instance when DAGSTER_HOME is set (so `make dev` shows the demo's runs)."""
    home = os.environ.get("DAGSTER_HOME")
    if not home:
        return dg.DagsterInstance.ephemeral()
    Path(home).mkdir(parents=True, exist_ok=True)
    config = Path(home) / "dagster.yaml"
    if not config.exists():
        config.write_text("telemetry:\n  enabled: false\n")
    return dg.DagsterInstance.get()


def run_export(label: str, job: dg.JobDefinition, keys: list[str], sandbox: SandboxServer) -> bool:
    instance = _instance()
    sandbox.reset_request_log()
    result = job.execute_in_process(
        instance=instance,
        tags={
            "dagster/asset_partition_range_start": keys[0],
            "dagster/asset_partition_range_end": keys[-1],
            "sendgrid/trigger": "demo",
        },
        run_config={"loggers": {"console": {"config": {"log_level": "INFO"}}}},
        raise_on_error=False,
    )
    contacts = _metadata_by_partition(result, "sendgrid_contacts")
    syncs = _metadata_by_partition(result, "sendgrid_list_sync")
    rows = [{"destination": k, **contacts.get(k, {}), **syncs.get(k, {})} for k in keys]
    upserts = [r for r in sandbox.requests if r.method == "PUT"]
    print(f"\n== {label}: run {result.run_id} {'succeeded' if result.success else 'FAILED'} ==")
    print(_table(rows))
    print(
        f"SendGrid sandbox saw {len(sandbox.requests)} requests, {len(upserts)} upserts "
        f"carrying {sum(r.contacts for r in upserts)} contacts."
    )
    if not result.success:
        for event in result.all_events:
            if event.event_type_value == "STEP_FAILURE":
                print(f"  {event.step_key}: {event.event_specific_data.error.message.strip()}")
    return result.success


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data-dir", default=None, help="data directory (default: data/)")
    args = parser.parse_args(argv)
    if args.data_dir:
        os.environ["SENDGRID_PIPELINE_DATA_DIR"] = str(Path(args.data_dir).resolve())
    root = data_dir()
    lists = SandboxServer.lists_from_destinations_file(root / "destinations.yaml")
    work = Path(tempfile.mkdtemp(prefix="sendgrid-demo-"))
    with SandboxServer(lists=lists, job_delay_seconds=0.1) as sandbox:
        # A fresh sandbox holds nothing, so the demo keeps its sync state beside it.
        os.environ.update(
            SENDGRID_BASE_URL=sandbox.base_url,
            SENDGRID_API_KEY=sandbox.api_key,
            SENDGRID_POLL_INTERVAL_SECONDS="0.05",
            SENDGRID_PIPELINE_STATE_DIR=str(work / "state"),
            SENDGRID_PIPELINE_STORAGE_DIR=str(work / "storage"),
        )
        print(f"SendGrid sandbox at {sandbox.base_url}; data directory {root}")
        from sendgrid_pipeline.pipeline import EXPORT_JOB, build_definitions, load_validated_config

        config = load_validated_config(root)
        job = build_definitions(config).resolve_job_def(EXPORT_JOB)
        keys = config.destination_names
        ok = run_export("Export every destination", job, keys, sandbox)
        ok = run_export("Refresh again, nothing changed", job, keys, sandbox) and ok
        print("\nLists in the sandbox now:")
        for destination in config.destinations:
            members = sandbox.list_member_emails(destination.list_id)
            print(f"  {destination.display_name} ({destination.list_id}): {len(members)} contacts")
        print(f"Rejected-row reports: {root / 'reports' / 'rejected'}")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
