"""sendgrid_erasures: erasure requests carried out in SendGrid (see sendgrid_pipeline.erasure),
its job, and the sensor that launches it when a request file is dropped.

Request files are read where export request files are: `<data dir>/erasures/` (a local folder:
links never followed), or `<storage base>/erasures/` when the storage base is an object store,
so that the sensor and every run pod see the same files (see pipeline.PipelineResources). A
processed file moves to archive/, a refused one to rejected/, each with a note beside it.

Erasure runs never overlap: each holds the erasure ledger's lock (ErasureLedger.run_lock) from
reading the pending people to writing its audit file. A file whose run was killed keeps its
run key, which Dagster never launches again: the sensor archives it once the ledger shows its
people done (see archive_carried_out); a file the brake refused waits for the override tag.
"""

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
    MAX_ERASURE_FILE_BYTES,
    ErasureEngine,
    ErasureFileError,
    ErasureOutcome,
    audit_lines,
    audit_people,
    check_erasure_brake,
    erasure_files,
    parse_erasure_file,
    profile_emails,
    read_erasure_file,
    resolve_subjects,
)
from sendgrid_pipeline.erasure_ledger import (
    ERASED,
    PENDING,
    ErasureLedger,
    ErasureLedgerBusy,
    erasure_ledger,
)
from sendgrid_pipeline.errors import PipelineError
from sendgrid_pipeline.io_manager import ReportStore
from sendgrid_pipeline.object_storage import (
    ObjectNotFoundError,
    ObjectStorageError,
    StorageLocation,
)
from sendgrid_pipeline.privacy import mask_email_expr
from sendgrid_pipeline.profile_source import ProfileSource
from sendgrid_pipeline.schedules import AssetJob
from sendgrid_pipeline.sendgrid.resource import SendGridResource
from sendgrid_pipeline.sensors import move_object_aside
from sendgrid_pipeline.state import SyncStateResource

COMPLIANCE_GROUP = "sendgrid_compliance"
ERASURE_JOB = "sendgrid_erasure_job"
ERASURE_FILE_TAG = "sendgrid/erasure_file"  # the one file a sensor run is for
ERASURE_RETRY_TAG = "sendgrid/erasure_retry"  # a run for people an earlier run left pending
ERASURE_SENSOR = "erasure_request_sensor"
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


class LocalErasureRequests:
    """Erasure files in a local folder (links never followed; moves are renames)."""

    def __init__(self, folder: Path) -> None:
        self.folder = folder
        self.where = str(folder)

    def names(self) -> list[str]:
        return erasure_files(self.folder)

    def url_for(self, name: str) -> str:
        return str(self.folder / name)

    def drop_key(self, name: str) -> str | None:
        """Name, size and mtime: a new key when the file is dropped again or rewritten."""
        try:
            info = (self.folder / name).stat()
        except OSError:
            return None  # gone meanwhile
        return f"{name}:{info.st_size}:{info.st_mtime_ns}"

    def read(self, name: str) -> pl.DataFrame | None:
        """The file's rows; None when it is gone (another run took it)."""
        if not (self.folder / name).exists():
            return None
        return read_erasure_file(self.folder / name)

    def move_aside(self, name: str, subfolder: str, note: str) -> str:
        if not (self.folder / name).exists():
            return ""
        moved = move_aside(self.folder, name, subfolder, note)
        return f"{moved.parent.name}/{moved.name}"


class StoredErasureRequests:
    """Erasure files under a prefix of an object store (`<storage base>/erasures`): read in
    one bounded GET, moved aside with the request sensor's own `move_object_aside`."""

    def __init__(self, location: StorageLocation) -> None:
        self.location = location
        self.where = location.url

    def names(self) -> list[str]:
        """CSV objects directly under the prefix (name order); archive/ and rejected/ are not."""
        return [n for n in self.location.list() if "/" not in n and n.endswith(".csv")]

    def url_for(self, name: str) -> str:
        return self.location.url_for(name)

    def drop_key(self, name: str) -> str | None:
        """Name, size and version (ETag): a new key when the object is rewritten."""
        try:
            info = self.location.info(name)
        except ObjectNotFoundError:
            return None
        return f"{name}:{info.size}:{info.version}"

    def read(self, name: str) -> pl.DataFrame | None:
        url = self.location.url_for(name)
        try:
            data = self.location.read_bytes(name, max_bytes=MAX_ERASURE_FILE_BYTES)
        except ObjectNotFoundError:
            return None
        except ObjectStorageError as error:
            if f"larger than {MAX_ERASURE_FILE_BYTES} bytes" in str(error):
                raise ErasureFileError(f"{url}: over {MAX_ERASURE_FILE_BYTES} bytes") from None
            raise
        return parse_erasure_file(url, name, data)

    def move_aside(self, name: str, subfolder: str, note: str) -> str:
        if not self.location.exists(name):
            return ""
        note_of = {"error": note} if subfolder == REJECTED_DIR else {"result": note}
        return f"{subfolder}/{move_object_aside(self.location, name, subfolder, note_of)}"


ErasureRequests = LocalErasureRequests | StoredErasureRequests


def erasure_requests(
    config: PipelineConfig, folder: Path | None = None, location: StorageLocation | None = None
) -> ErasureRequests:
    """Where request files are read: `location` when it is on an object store, else `folder`
    (default: <data dir>/erasures/)."""
    if location is not None and not location.is_local:
        return StoredErasureRequests(location)
    return LocalErasureRequests(folder or config.erasures_dir)


def build_erasures_asset(
    config: PipelineConfig,
    folder: Path | None = None,
    location: StorageLocation | None = None,
) -> dg.AssetsDefinition:
    """The asset over `location` (an object store's erasures/ prefix) or `folder` (default:
    <data dir>/erasures/)."""
    requests = erasure_requests(config, folder, location)

    @dg.asset(
        name="sendgrid_erasures",
        group_name=COMPLIANCE_GROUP,
        owners=OWNERS,
        kinds={"polars", "sendgrid"},
        description="Carries out the erasure requests dropped in <data dir>/erasures/ (the "
        "storage base's erasures/ prefix on an object store; CSV: "
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
        rows, rejected, names = [], [], []
        # a retry run reads no file: it erases the people earlier runs recorded (a refused
        # file, never recorded, is not retried every hour; see build_erasure_sensor)
        waiting = [] if tags.get(ERASURE_RETRY_TAG) else requests.names()
        for name in [wanted] if wanted else waiting:
            try:
                read = requests.read(name)
            except ErasureFileError as error:
                names.append(name)
                rejected.append(str(error))
                moved = requests.move_aside(name, REJECTED_DIR, str(error))
                context.log.error(f"{error} (moved to {moved})")
                continue
            if read is not None:  # None: gone meanwhile (another run took it)
                names.append(name)
                rows.append(read)
        frame = pl.concat(rows) if rows else read_empty()
        erase = frame.filter(pl.col("action") == "erase")
        withdraw = frame.filter(pl.col("action") == "withdraw")

        known = profile_emails(profile_source, config.destinations)
        subjects, unknown = resolve_subjects(erase, known)
        if unknown.height:
            first = unknown.row(0, named=True)
            message = (
                f"{requests.url_for(first['file'])}: row {first['row']}, field customer_id: "
                f"{first['customer_id'][:60]!r} has no profile and the row gives no email "
                f"({unknown.height} such rows); nothing was erased. Add the email to the row."
            )
            for name in sorted(set(unknown["file"])):
                requests.move_aside(name, REJECTED_DIR, message)
            raise ErasureFileError(message)

        ledger = erasure_ledger(sync_state)
        store = sync_state.store()
        already = set(ledger.subjects(ERASED)["email"].to_list())
        new = [e for e in subjects["email"].to_list() if e not in already]
        location = report_store.location
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
        # write-ahead, before the run lock: blocked from now on, even while this run waits
        outcome.withdrawn = ledger.withdraw(
            withdraw["email"].drop_nulls().to_list(),
            withdraw["customer_id"].drop_nulls().to_list(),
        )
        for name, part in subjects.group_by("file", maintain_order=True):
            ledger.record(part, request=str(name[0]))
        outcome.recorded = subjects.height

        # one erasure run at a time, from reading the pending people to the audit file: a
        # second run waits, then finds the first one's people erased (already_erased)
        def tell_wait(holder: str) -> None:
            context.log.info(f"erasure run {holder} holds the erasure ledger; waiting for it")

        withdrawals = withdraw.select("email", "customer_id", "file", "requested_by")
        with contextlib.ExitStack() as held:
            try:
                held.enter_context(ledger.run_lock(context.run_id, on_wait=tell_wait))
            except ErasureLedgerBusy:  # audited all the same: what it recorded, nothing sent
                known = ledger.subjects()  # nobody owed here: owed lines need the lock
                people, statuses = audit_people(subjects, known.clear(), known)
                audit = audit_lines(
                    context.run_id, names, people, withdrawals, outcome, [], statuses
                )
                location.write_bytes(audit_file_path(), audit)
                raise
            audit_path = audit_file_path()
            engine.audit_file = audit_path
            try:
                engine.erase_pending(outcome)  # also what an earlier run left unconfirmed
            finally:  # a failed run is audited too: what was sent, with its job ids
                steps = ledger.steps(context.run_id)
                owed = ledger.audit_owed(audit_path, location.exists)  # incl. killed runs'
                people, statuses = audit_people(subjects, owed, ledger.subjects())
                audit = audit_lines(
                    context.run_id, names, people, withdrawals, outcome, steps, statuses
                )
                location.write_bytes(audit_path, audit)
            for name in names:  # a rejected file is no longer there: moving it does nothing
                requests.move_aside(name, ARCHIVE_DIR, f"run {context.run_id}")
            # only now: until then the sensor's retry run finishes it (the sensor archives
            # the files, the retry sees the audit file written, see ErasureLedger.audit_owed)
            ledger.audit_written(owed["email"].to_list())
        if rejected:
            raise ErasureFileError(
                f"{len(rejected)} erasure file(s) rejected, moved to "
                f"{requests.where}/{REJECTED_DIR} "
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


def audit_file_path() -> str:
    """A new audit file's path under the report store (its name: the time, to microseconds)."""
    return f"{AUDIT_FOLDER}/{datetime.now(UTC).strftime('%Y%m%dT%H%M%S%fZ')}.jsonl"


def read_empty() -> pl.DataFrame:
    from sendgrid_pipeline.erasure import ROW_SCHEMA

    return pl.DataFrame(schema=ROW_SCHEMA)


def build_erasure_job(executor: dg.ExecutorDefinition) -> AssetJob:
    return dg.define_asset_job(
        ERASURE_JOB,
        selection=dg.AssetSelection.assets("sendgrid_erasures"),
        executor_def=executor,
        description="Carries out the erasure requests waiting in <data dir>/erasures/ (or "
        "the storage base's erasures/ prefix on an object store).",
    )


def launched_before(context: dg.SensorEvaluationContext, run_key: str | None) -> bool:
    """The erasure sensor already launched a run under `run_key`: Dagster skips a request
    with a used key, so the file it names waits for the retry run."""
    try:
        instance = context.instance
    except dg.DagsterInvariantViolationError:  # a sensor context built without an instance
        return False
    tags = {"dagster/run_key": run_key or "", "dagster/sensor_name": ERASURE_SENSOR}
    return bool(run_key) and bool(instance.get_runs(filters=dg.RunsFilter(tags=tags), limit=1))


# a run under these is about to read its file itself (or is being stopped): not archived yet
NOT_YET_ENDED = (
    dg.DagsterRunStatus.QUEUED,
    dg.DagsterRunStatus.NOT_STARTED,
    dg.DagsterRunStatus.STARTING,
    dg.DagsterRunStatus.CANCELING,
)


def archive_carried_out(
    context: dg.SensorEvaluationContext,
    requests: ErasureRequests,
    ledger: ErasureLedger,
    used: dict[str, str],
) -> list[str]:
    """Archive the waiting files whose people other runs finished; returns their names.

    `used`: name -> run key of the waiting files whose key this sensor already launched (Dagster
    never launches a key twice, so nothing else would move them). A file is archived when
    1. no run under its key is queued, starting or being canceled (such a run reads it itself;
       a run still `STARTED` may have been killed: Dagster says so only with run monitoring),
    2. the erasure ledger shows every row of it carried out: each person to erase recorded and
       no longer pending (erased, or withdrawn since), each withdrawal no longer blocked, and
    3. the erasure run lock is free (taken without waiting, held while moving): no run is
       between reading the pending people and writing its audit.
    A file the brake refused was never recorded: it fails 2 and waits for a run with the
    override tag, as before; it is never retried (the hourly retry run reads no file). The
    audit lines of its people are in the audit files of the runs that erased them.
    """
    if not used:
        return []
    instance = context.instance
    archived: list[str] = []
    try:
        with ledger.run_lock(f"sensor {ERASURE_SENSOR}", wait_seconds=0):
            for name, key in used.items():
                tags = {"dagster/run_key": key, "dagster/sensor_name": ERASURE_SENSOR}
                runs = instance.get_runs(filters=dg.RunsFilter(tags=tags))
                if any(run.status in NOT_YET_ENDED for run in runs):
                    continue
                try:
                    rows = requests.read(name)
                except (PipelineError, ObjectStorageError) as error:
                    context.log.warning(f"{requests.url_for(name)}: not archived: {error}")
                    continue
                if rows is None or not ledger.carried_out(rows):
                    continue
                ended = ", ".join(f"run {r.run_id} {r.status.value.lower()}" for r in runs)
                moved = requests.move_aside(
                    name,
                    ARCHIVE_DIR,
                    f"carried out by later erasure runs (this file's {ended}); the erasure "
                    "ledger shows every person in it erased or withdrawn",
                )
                context.log.info(f"{requests.url_for(name)}: carried out, moved to {moved}")
                archived.append(name)
    except ErasureLedgerBusy:
        return archived  # an erasure run is working: the next tick looks again
    return archived


def build_erasure_sensor(
    job: AssetJob,
    config: PipelineConfig,
    folder: Path | None = None,
    location: StorageLocation | None = None,
) -> dg.SensorDefinition:
    """Launches the erasure job once per dropped file (its name, size and mtime or version as
    run key), over `location` on an object store, else `folder` (<data dir>/erasures/)."""
    requests_source = erasure_requests(config, folder, location)

    @dg.sensor(
        name=ERASURE_SENSOR,
        job=job,
        minimum_interval_seconds=30,
        default_status=dg.DefaultSensorStatus.RUNNING,
        description="Drop a CSV erasure request (email and/or customer_id, optional action "
        "erase|withdraw, requested_by) into the data directory's erasures/ folder (the "
        "storage base's erasures/ prefix on an object store): it runs "
        "sendgrid_erasure_job once; the run archives the file (erasures/archive/) or rejects "
        "it (erasures/rejected/, with the reason). A refused run leaves the file in place. "
        "While the erasure ledger holds people an earlier run could not confirm, it asks for "
        "one retry run an hour; a file whose run was killed is archived once the ledger shows "
        "its people erased.",
    )
    def erasure_request_sensor(
        context: dg.SensorEvaluationContext, sync_state: SyncStateResource
    ) -> dg.SensorResult:
        requests = []
        try:
            names = requests_source.names()
        except ObjectStorageError as error:  # names the URL; the next tick tries again
            context.log.warning(f"cannot list {requests_source.where}: {error}")
            names = []
        for name in names:
            try:
                key = requests_source.drop_key(name)
            except (ObjectStorageError, ValueError) as error:  # an odd object name, or I/O
                context.log.warning(f"{requests_source.where}: {name[:100]!r} skipped: {error}")
                continue
            if key is None:
                continue  # gone meanwhile
            requests.append(dg.RunRequest(run_key=key, tags={ERASURE_FILE_TAG: name}))
        used = {
            r.tags[ERASURE_FILE_TAG]: r.run_key or ""
            for r in requests
            if launched_before(context, r.run_key)
        }
        try:
            ledger = erasure_ledger(sync_state)
            # a file whose run was launched and killed is still here under the same key,
            # which Dagster never launches again: archived once its people are done
            archived = archive_carried_out(context, requests_source, ledger, used)
            requests = [r for r in requests if r.tags[ERASURE_FILE_TAG] not in archived]
            pending = ledger.subjects(PENDING).height + ledger.audits_owed()
        except PipelineError as error:  # the state cannot be read now: the next tick retries
            context.log.warning(f"erasure ledger not readable: {error}")
            pending = 0
        # A file's new run does the pending people too; else one retry run an hour (it reads
        # no file: it erases whom earlier runs recorded, then a tick archives their files).
        fresh = [r for r in requests if r.tags[ERASURE_FILE_TAG] not in used]
        if pending and not fresh:
            hour = datetime.now(UTC).strftime("%Y%m%dT%H")
            requests.append(
                dg.RunRequest(
                    run_key=f"retry-pending:{hour}", tags={ERASURE_RETRY_TAG: str(pending)}
                )
            )
        return dg.SensorResult(run_requests=requests)

    return erasure_request_sensor
