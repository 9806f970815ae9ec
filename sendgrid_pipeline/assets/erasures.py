"""sendgrid_erasures: erasure requests carried out in SendGrid (see sendgrid_pipeline.erasure),
its job, and the sensor that launches it when a request file is dropped."""

import contextlib
import os
from datetime import UTC, datetime
from pathlib import Path

import dagster as dg
import polars as pl

from sendgrid_pipeline.assets.common import OWNERS, table_metadata
from sendgrid_pipeline.config import PipelineConfig
from sendgrid_pipeline.erasure import (
    ALLOW_MASS_ERASURE_TAG,
    ErasureEngine,
    ErasureFileError,
    ErasureOutcome,
    audit_lines,
    check_erasure_brake,
    erasure_files,
    profile_emails,
    read_erasure_file,
    resolve_subjects,
)
from sendgrid_pipeline.erasure_ledger import ERASED, PENDING, erasure_ledger
from sendgrid_pipeline.errors import PipelineError
from sendgrid_pipeline.io_manager import ReportStore
from sendgrid_pipeline.privacy import mask_email_expr
from sendgrid_pipeline.profile_source import ProfileSource
from sendgrid_pipeline.schedules import AssetJob
from sendgrid_pipeline.sendgrid.resource import SendGridResource
from sendgrid_pipeline.state import SyncStateResource

COMPLIANCE_GROUP = "sendgrid_compliance"
ERASURE_JOB = "sendgrid_erasure_job"
ERASURE_FILE_TAG = "sendgrid/erasure_file"  # the one file a sensor run is for
ERASURE_RETRY_TAG = "sendgrid/erasure_retry"  # a run for people an earlier run left pending
ARCHIVE_DIR = "archive"
REJECTED_DIR = "rejected"
AUDIT_FOLDER = "reports/erasures"


def create_erasures_folder(folder: Path) -> None:
    """Create the folder where request files are dropped (<data dir>/erasures/ by default; a
    read-only data directory still loads, and the asset says why it cannot read it)."""
    with contextlib.suppress(OSError):
        folder.mkdir(parents=True, exist_ok=True)


def move_aside(folder: Path, name: str, subfolder: str, note: str) -> Path:
    """Move a processed or rejected file into folder/subfolder with a timestamp, and a
    <name>.result.txt note beside it (the reason, or the run id)."""
    target = folder / subfolder
    target.mkdir(exist_ok=True)
    stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%S%fZ")
    moved = target / f"{Path(name).stem}.{stamp}.csv"
    os.rename(folder / name, moved)
    moved.with_suffix(".result.txt").write_text(note + "\n", encoding="utf-8")
    return moved


def build_erasures_asset(config: PipelineConfig, folder: Path | None = None) -> dg.AssetsDefinition:
    """The asset over `folder` (default: <data dir>/erasures/)."""
    folder = folder or config.erasures_dir

    @dg.asset(
        name="sendgrid_erasures",
        group_name=COMPLIANCE_GROUP,
        owners=OWNERS,
        kinds={"polars", "sendgrid"},
        description="Carries out the erasure requests dropped in <data dir>/erasures/ (CSV: "
        "email and/or customer_id, optional action erase|withdraw and requested_by): records "
        "the people in the erasure ledger first (no sync exports them again), removes them from "
        "every managed list, deletes them from each account's contacts and, where "
        "erase_recipient_data is set, erases their data account-wide. A mass erasure needs the "
        f"run tag {ALLOW_MASS_ERASURE_TAG}=true. Writes an audit file to reports/erasures/.",
    )
    def sendgrid_erasures(
        context: dg.AssetExecutionContext,
        sendgrid: SendGridResource,
        sync_state: SyncStateResource,
        profile_source: ProfileSource,
        report_store: ReportStore,
    ) -> dg.MaterializeResult:
        tags = context.run.tags
        wanted = tags.get(ERASURE_FILE_TAG)
        names = [wanted] if wanted else erasure_files(folder)
        names = [n for n in names if (folder / n).exists()]
        rows, rejected = [], []
        for name in names:
            try:
                rows.append(read_erasure_file(folder / name))
            except ErasureFileError as error:
                rejected.append(str(error))
                moved = move_aside(folder, name, REJECTED_DIR, str(error))
                context.log.error(f"{error} (moved to {moved.parent.name}/{moved.name})")
        frame = pl.concat(rows) if rows else read_empty()
        erase = frame.filter(pl.col("action") == "erase")
        withdraw = frame.filter(pl.col("action") == "withdraw")

        known = profile_emails(profile_source, config.destinations)
        subjects, unknown = resolve_subjects(erase, known)
        if unknown.height:
            first = unknown.row(0, named=True)
            message = (
                f"{folder / first['file']}: row {first['row']}, field customer_id: "
                f"{first['customer_id'][:60]!r} has no profile and the row gives no email "
                f"({unknown.height} such rows); nothing was erased. Add the email to the row."
            )
            for name in sorted(set(unknown["file"])):
                move_aside(folder, name, REJECTED_DIR, message)
            raise ErasureFileError(message)

        ledger = erasure_ledger(sync_state)
        store = sync_state.store()
        already = set(ledger.subjects(ERASED)["email"].to_list())
        new = [e for e in subjects["email"].to_list() if e not in already]
        engine = ErasureEngine(
            config,
            ledger,
            store,
            lambda account: sendgrid.client(account),
            context.run_id,
            context.log.info,
        )
        allowed = tags.get(ALLOW_MASS_ERASURE_TAG, "").lower() == "true"
        check_erasure_brake(new, engine.list_hits(new), allowed)

        outcome = ErasureOutcome(erase_rows=erase.height, withdraw_rows=withdraw.height)
        outcome.withdrawn = ledger.withdraw(
            withdraw["email"].drop_nulls().to_list(),
            withdraw["customer_id"].drop_nulls().to_list(),
        )
        for name, part in subjects.group_by("file", maintain_order=True):
            ledger.record(part, request=str(name[0]))  # write-ahead: blocked from now on
        outcome.recorded = subjects.height
        location = report_store.location
        audit_path = f"{AUDIT_FOLDER}/{datetime.now(UTC).strftime('%Y%m%dT%H%M%S%fZ')}.jsonl"
        try:
            engine.erase_pending(outcome)  # also what an earlier run left unconfirmed
        finally:  # a failed run is audited too: what was sent, with its job ids
            steps = ledger.steps(context.run_id)
            withdrawals = withdraw.select("email", "customer_id", "file", "requested_by")
            audit = audit_lines(context.run_id, names, subjects, withdrawals, outcome, steps)
            location.write_bytes(audit_path, audit)
        for name in names:
            if (folder / name).exists():
                move_aside(folder, name, ARCHIVE_DIR, f"run {context.run_id}")
        if rejected:
            raise ErasureFileError(
                f"{len(rejected)} erasure file(s) rejected, moved to {folder / REJECTED_DIR} "
                "(the other files were carried out): " + " | ".join(rejected)
            )
        sample = pl.DataFrame({"email": outcome.erased[:20]}, schema={"email": pl.String})
        context.log.info(
            f"erasures: {len(outcome.erased)} erased, {outcome.withdrawn} withdrawn, "
            f"{outcome.deleted_contacts} contacts deleted, lists {outcome.removed_from_lists}"
        )
        return dg.MaterializeResult(
            metadata={
                "request_files": ", ".join(names) or "(none)",
                "erase_rows": erase.height,
                "withdraw_rows": withdraw.height,
                "erased": len(outcome.erased),
                "withdrawn": outcome.withdrawn,
                "deleted_contacts": outcome.deleted_contacts,
                **{f"removed_from_{k}": v for k, v in outcome.removed_from_lists.items()},
                "job_ids": ", ".join(outcome.job_ids) or "(none)",
                "erase_job_ids": ", ".join(outcome.erase_jobs) or "(none)",
                "erased_sample (masked)": table_metadata(sample.select(mask_email_expr("email"))),
                "audit_file": report_store.metadata_value(location.url_for(audit_path)),
            }
        )

    return sendgrid_erasures


def read_empty() -> pl.DataFrame:
    from sendgrid_pipeline.erasure import ROW_SCHEMA

    return pl.DataFrame(schema=ROW_SCHEMA)


def build_erasure_job(executor: dg.ExecutorDefinition) -> AssetJob:
    return dg.define_asset_job(
        ERASURE_JOB,
        selection=dg.AssetSelection.assets("sendgrid_erasures"),
        executor_def=executor,
        description="Carries out the erasure requests waiting in <data dir>/erasures/.",
    )


def build_erasure_sensor(
    job: AssetJob, config: PipelineConfig, folder: Path | None = None
) -> dg.SensorDefinition:
    """Launches the erasure job once per dropped file (its name, size and mtime as run key)."""
    folder = folder or config.erasures_dir

    @dg.sensor(
        name="erasure_request_sensor",
        job=job,
        minimum_interval_seconds=30,
        default_status=dg.DefaultSensorStatus.RUNNING,
        description="Drop a CSV erasure request (email and/or customer_id, optional action "
        "erase|withdraw, requested_by) into the data directory's erasures/ folder: it runs "
        "sendgrid_erasure_job once; the run archives the file (erasures/archive/) or rejects "
        "it (erasures/rejected/, with the reason). A refused run leaves the file in place. "
        "While the erasure ledger holds people an earlier run could not confirm, it asks for "
        "one retry run an hour.",
    )
    def erasure_request_sensor(
        context: dg.SensorEvaluationContext, sync_state: SyncStateResource
    ) -> dg.SensorResult:
        requests = []
        for name in erasure_files(folder):
            try:
                info = (folder / name).stat()
            except OSError:
                continue  # gone meanwhile
            requests.append(
                dg.RunRequest(
                    run_key=f"{name}:{info.st_size}:{info.st_mtime_ns}",
                    tags={ERASURE_FILE_TAG: name},
                )
            )
        try:
            pending = erasure_ledger(sync_state).subjects(PENDING).height
        except PipelineError as error:  # the state cannot be read now: the next tick retries
            context.log.warning(f"erasure ledger not readable: {error}")
            pending = 0
        if pending and not requests:  # a file's run does the pending people too
            hour = datetime.now(UTC).strftime("%Y%m%dT%H")
            requests.append(
                dg.RunRequest(
                    run_key=f"retry-pending:{hour}", tags={ERASURE_RETRY_TAG: str(pending)}
                )
            )
        return dg.SensorResult(run_requests=requests)

    return erasure_request_sensor
