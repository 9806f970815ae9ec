"""`make demo`: the whole export against the bundled SendGrid sandbox, then what happened.

Loads the configuration (a broken one: its errors, one line each, and exit status 2), starts
the sandbox on a free loopback port, runs the export job once over every destination (one
Dagster run), runs it again to show that an unchanged refresh sends nothing, and prints
per-destination figures read from the run's own events and from the sandbox. Each stage prints
one line; --verbose (make demo VERBOSE=1) prints Dagster's full logs instead.

The runs go to a temporary Dagster instance, deleted at the end with the step outputs and sync
state they describe: the DAGSTER_HOME that `make dev` uses never sees them. The pipeline is
wired here explicitly (the sandbox's URL and key, the temporary directories); the environment
is neither read for it nor changed.
"""

from __future__ import annotations

import argparse
import logging
import sys
import tempfile
import time
import warnings
from collections.abc import Mapping
from pathlib import Path
from typing import Any, TextIO

import dagster as dg
import polars as pl

from sendgrid_pipeline.assets.erasures import ERASURE_JOB
from sendgrid_pipeline.config import PipelineConfig
from sendgrid_pipeline.errors import ConfigError, ProfileDataError
from sendgrid_pipeline.io_manager import DestinationParquetIOManager
from sendgrid_pipeline.pipeline import (
    EXPORT_JOB,
    PipelineResources,
    build_definitions,
    load_validated_config,
)
from sendgrid_pipeline.privacy import mask_email_expr
from sendgrid_pipeline.profile_source import FileProfileSource
from sendgrid_pipeline.schedules import refresh_all_tags
from sendgrid_pipeline.sendgrid.resource import SendGridResource
from sendgrid_pipeline.settings import Settings
from sendgrid_pipeline.state import SyncStateResource
from sendgrid_pipeline_tests.devkit.dev import write_instance_config
from sendgrid_pipeline_tests.devkit.sandbox import SandboxServer

CONFIG_ERROR_EXIT = 2
STAGES = {
    "unified_profiles": "read the profiles",
    "segment_membership": "evaluated the segments",
    "sendgrid_contacts": "built each destination's contacts",
    "sendgrid_list_sync": "synced each list with SendGrid",
}
TABLE_NOTE = (
    "Note: 'created' and 'updated' count contacts in the SendGrid account, not on the list.\n"
    "SendGrid keeps one contact per email for the whole account, so a contact that another\n"
    "list already holds is 'updated' when it is added to this one. 'list size after' counts\n"
    "the list itself."
)

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


class _StageLines(logging.Handler):
    """One line per finished step (and per warning or failed check), instead of Dagster's logs."""

    def __init__(self, out: TextIO) -> None:
        super().__init__(logging.DEBUG)
        self.out = out

    def emit(self, record: logging.LogRecord) -> None:
        meta = getattr(record, "dagster_meta", None) or {}
        event = meta.get("dagster_event")
        if event is None:
            if record.levelno >= logging.WARNING:
                message = str(meta.get("orig_message") or record.getMessage())
                self._line(f"      warning: {message.strip().splitlines()[0]}")
            return
        kind, step = event.event_type_value, event.step_key or ""
        data = event.event_specific_data
        if kind == "STEP_SUCCESS":
            seconds = getattr(data, "duration_ms", 0) / 1000
            self._line(f"  ok  {step:<20} {STAGES.get(step, '')} ({seconds:.1f}s)")
        elif kind == "STEP_FAILURE":
            self._line(f"  FAILED  {step}  (the error is below)")
        elif kind == "STEP_UP_FOR_RETRY":
            self._line(f"  ..  {step:<20} retrying after a transient error")
        elif kind == "ASSET_CHECK_EVALUATION" and not getattr(data, "passed", True):
            text = getattr(data, "description", "") or ""
            self._line(f"      check {data.check_name} failed: {text.strip()[:200]}")

    def _line(self, text: str) -> None:
        print(text, file=self.out, flush=True)


@dg.logger(description="One line per stage, for the demo.")
def stage_logger(_init_context: dg.InitLoggerContext) -> logging.Logger:
    logger = logging.getLogger("sendgrid_pipeline_tests.devkit.demo.stages")
    logger.setLevel(logging.DEBUG)
    logger.propagate = False
    logger.handlers = [_StageLines(sys.stdout)]
    return logger


def run_export(
    label: str,
    job: dg.JobDefinition,
    keys: list[str],
    sandbox: SandboxServer,
    instance: dg.DagsterInstance,
    verbose: bool,
    note: str = "",
) -> bool:
    sandbox.reset_request_log()
    print(f"\n{label}", flush=True)
    started = time.monotonic()
    loggers = {"console": {"config": {"log_level": "INFO"}}} if verbose else {"stages": {}}
    result = job.with_logger_defs({**job.loggers, "stages": stage_logger}).execute_in_process(
        instance=instance,
        tags={**refresh_all_tags(keys), "sendgrid/trigger": "demo"},
        run_config={"loggers": loggers},
        raise_on_error=False,
    )
    contacts = _metadata_by_partition(result, "sendgrid_contacts")
    syncs = _metadata_by_partition(result, "sendgrid_list_sync")
    rows = [{"destination": k, **contacts.get(k, {}), **syncs.get(k, {})} for k in keys]
    upserts = [r for r in sandbox.requests if r.method == "PUT"]
    outcome = "succeeded" if result.success else "FAILED"
    print(f"\nThe run {outcome} in {time.monotonic() - started:.1f}s.")
    print(_table(rows))
    if note:
        print(note)
    print(
        f"The SendGrid sandbox saw {len(sandbox.requests)} requests, {len(upserts)} upserts "
        f"carrying {sum(r.contacts for r in upserts)} contacts."
    )
    if not result.success:
        for event in result.all_events:
            if event.event_type_value == "STEP_FAILURE":
                print(f"  {event.step_key}: {event.event_specific_data.error.message.strip()}")
    return result.success


def demo_resources(config: PipelineConfig, sandbox: SandboxServer, work: Path) -> PipelineResources:
    """The sandbox as SendGrid; sync state and step outputs in the demo's temporary folder."""
    return PipelineResources(
        sendgrid=SendGridResource(
            base_url=sandbox.base_url, api_key=sandbox.api_key, poll_interval_seconds=0.05
        ),
        sync_state=SyncStateResource(directory=str(work / "state")),
        io_manager=DestinationParquetIOManager(base_dir=str(work / "storage")),
        profile_source=FileProfileSource(directory=str(config.profiles_dir)),
        erasures_dir=work / "erasures",  # never the data directory's own requests
    )


def _quiet_run(
    job: dg.JobDefinition, instance: dg.DagsterInstance, tags: dict[str, str], verbose: bool
) -> dg.ExecuteInProcessResult:
    """A run that prints nothing but its failures (Dagster's logs with --verbose)."""
    level = "INFO" if verbose else "CRITICAL"
    result = job.execute_in_process(
        instance=instance,
        tags=tags,
        run_config={"loggers": {"console": {"config": {"log_level": level}}}},
        raise_on_error=False,
    )
    for event in result.all_events:
        if event.event_type_value == "STEP_FAILURE":
            print(f"  {event.step_key}: {event.event_specific_data.error.message.strip()}")
    return result


def run_erasure(
    defs: dg.Definitions,
    config: PipelineConfig,
    sandbox: SandboxServer,
    instance: dg.DagsterInstance,
    work: Path,
    verbose: bool,
) -> bool:
    """Erase one person who is on two lists, then refresh: they are not added back."""
    lists = {d.name: sandbox.list_member_emails(d.list_id) for d in config.destinations}
    on_two = sorted(
        e for e in set().union(*lists.values()) if sum(e in m for m in lists.values()) >= 2
    )
    if not on_two:
        print("\nRun 3: no contact is on two lists; the erasure is not shown.")
        return True
    email = on_two[0]
    shown = pl.DataFrame({"e": [email]}).select(mask_email_expr("e"))["e"][0]
    names = [name for name, members in lists.items() if email in members]
    (work / "erasures" / "demo-erasure.csv").write_text(f"email,requested_by\n{email},demo\n")
    print(f"\nRun 3: erase {shown} (on {', '.join(names)}), as an erasure file asks", flush=True)
    erased = _quiet_run(defs.resolve_job_def(ERASURE_JOB), instance, {}, verbose)
    gone = all(email not in sandbox.list_member_emails(d.list_id) for d in config.destinations)
    print(
        f"  erasure {'succeeded' if erased.success else 'FAILED'}: off every list: {gone}, "
        f"deleted from the account: {sandbox.contact(email) is None}; audited (emails hashed)"
    )
    tags = {**refresh_all_tags(config.destination_names), "sendgrid/trigger": "demo"}
    refresh = _quiet_run(defs.resolve_job_def(EXPORT_JOB), instance, tags, verbose)
    back = sandbox.contact(email) is not None
    print(
        f"Run 4: refresh with the person still in the profiles: "
        f"{'RE-ADDED (wrong)' if back else 'not re-added'}"
    )
    return erased.success and refresh.success and gone and not back


def load(root: Path) -> PipelineConfig | None:
    """The validated configuration; None (errors printed, one line each) if it is broken."""
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        try:
            config = load_validated_config(root)
        except (ConfigError, ProfileDataError) as error:
            what = "configuration" if isinstance(error, ConfigError) else "profile data"
            print(f"The {what} in {root} has errors; nothing was run:", file=sys.stderr)
            print(str(error), file=sys.stderr)
            return None
    for warning in caught:
        print(f"warning: {warning.message}")
    return config


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--data-dir",
        default=None,
        help="data directory (default: $SENDGRID_PIPELINE_DATA_DIR, else data/)",
    )
    parser.add_argument(
        "--verbose", action="store_true", help="print Dagster's full logs for each run"
    )
    args = parser.parse_args(argv)
    root = Path(args.data_dir).resolve() if args.data_dir else Settings.from_env().data_dir
    print(f"Data directory: {root}")
    config = load(root)
    if config is None:
        return CONFIG_ERROR_EXIT
    keys = config.destination_names
    print(f"Configuration: {len(keys)} destinations ({', '.join(keys)}), valid.")
    lists = {d.list_id: d.display_name for d in config.destinations}
    with (
        tempfile.TemporaryDirectory(prefix="sendgrid-demo-") as work,
        SandboxServer(lists=lists, job_delay_seconds=0.1) as sandbox,
    ):
        home = Path(work) / "dagster_home"
        write_instance_config(home)
        # A fresh sandbox holds nothing, so the demo keeps its sync state and step outputs
        # beside it, and its runs in an instance of its own: all of them go when it ends.
        with dg.DagsterInstance.from_config(str(home)) as instance:
            print(f"SendGrid sandbox started at {sandbox.base_url} with {len(lists)} lists.")
            resources = demo_resources(config, sandbox, Path(work))
            defs = build_definitions(config, resources)
            job = defs.resolve_job_def(EXPORT_JOB)
            export = (job, keys, sandbox, instance, args.verbose)
            ok = run_export(
                "Run 1: export every destination (one Dagster run)", *export, TABLE_NOTE
            )
            again = "Run 2: refresh again; nothing changed, so nothing should be sent"
            ok = run_export(again, *export) and ok
            ok = run_erasure(defs, config, sandbox, instance, Path(work), args.verbose) and ok
        print("\nLists in the sandbox now:")
        for destination in config.destinations:
            members = sandbox.list_member_emails(destination.list_id)
            print(f"  {destination.display_name} ({destination.list_id}): {len(members)} contacts")
    print(f"Rejected-row reports: {root / 'reports' / 'rejected'}")
    if not args.verbose:
        print("Dagster's full logs: make demo VERBOSE=1 (or --verbose).")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
