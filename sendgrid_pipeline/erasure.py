"""Erasure requests: read, resolve, brake, record, then erase in SendGrid and audit.

An erasure request is a CSV file in `<data dir>/erasures/` with a column `email` and/or
`customer_id`, optionally `action` (`erase`, the default, or `withdraw`) and `requested_by`.
The order of one run:

1. validate every file (an error names the file, the row and the field);
2. resolve customer ids to emails through the profile source (the mapped email columns);
3. brake: refuse a mass erasure before anything is recorded or sent;
4. record the people in the erasure ledger (write-ahead): from now on no sync exports them;
5. per SendGrid account: remove them from every list we manage (and forget them in the sync
   state), delete the contacts from the account (DELETE /v3/marketing/contacts?ids=, never
   delete_all_contacts), and, when the account asks for it, erase their personal data
   account-wide (POST /v3/recipients/erasejob, at most 5,000 addresses or 256 KB a request);
   every request is written ahead as a ledger step and its job polled (an erase job has no
   status: its 202 is the confirmation);
6. mark them erased once everything was confirmed. Anything unconfirmed leaves them pending:
   the next erasure run does it again (every step is harmless to repeat);
7. write an audit file (JSON lines) without any email in clear. Each person's line has a
   status; exactly one line over all audit files says `erased` for one erasure of a person,
   even when a run is killed between marking them erased and writing its file (the ledger
   records which file owes the line; see ErasureLedger.audit_owed).

Steps 5 to 7 run under the ledger's one erasure lock (ErasureLedger.run_lock): a second run
waits, then finds the first run's people erased. Locks are always taken in one order: the
erasure lock, then each list's lock in turn (a sync takes list locks only).
"""

from __future__ import annotations

import hashlib
import io
import json
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path

import polars as pl

from sendgrid_pipeline.config import Destination, PipelineConfig, value_expression
from sendgrid_pipeline.erasure_ledger import ERASED, PENDING, ErasureLedger
from sendgrid_pipeline.errors import PipelineError
from sendgrid_pipeline.privacy import mask_email_expr
from sendgrid_pipeline.profile_source import ProfileSource
from sendgrid_pipeline.sendgrid.client import (
    DELETE_IDS_PER_REQUEST,
    ERASE_BODY_MAX_BYTES,
    ERASE_EMAILS_MAX,
    REMOVE_IDS_PER_REQUEST,
    SEARCH_EMAIL_MAX_LENGTH,
    SEARCH_EMAILS_MAX,
    SGQL_MAX_RESULTS,
    SendGridClient,
)
from sendgrid_pipeline.sendgrid.errors import SendGridJobError
from sendgrid_pipeline.state import SyncStateStore
from sendgrid_pipeline.transform import EMAIL_PATTERN, MAX_LOCAL_PART

ERASURE_COLUMNS = ("email", "customer_id", "action", "requested_by")
ACTIONS = ("erase", "withdraw")
MAX_ERASURE_FILE_BYTES = 20_000_000
MAX_EMAIL_LENGTH = 254
MIN_ERASURES_FOR_BRAKE = 10  # a share of a small list is no sign of a mistake below this
MAX_ERASURES_PER_RUN = 1_000  # more people than this in one run needs the override tag
ALLOW_MASS_ERASURE_TAG = "sendgrid/allow_mass_erasure"
ROW_SCHEMA = {
    "file": pl.String,
    "row": pl.Int64,
    "email": pl.String,
    "customer_id": pl.String,
    "action": pl.String,
    "requested_by": pl.String,
}


class ErasureFileError(PipelineError):
    """An erasure file cannot be used; the message names the file, the row and the field."""


class ErasureRefused(PipelineError):
    """The erasure brake refused the run before anything was recorded or sent."""


def _masked(email: str) -> str:
    return pl.DataFrame({"e": [email]}).select(mask_email_expr("e"))["e"][0]


def email_hash(email: str) -> str:
    """What the audit keeps of an address: sha256 of its lowercase form."""
    return hashlib.sha256(email.strip().lower().encode("utf-8")).hexdigest()


# -- 1. files ----------------------------------------------------------------------------------
def erasure_files(folder: Path) -> list[str]:
    """CSV files waiting in the folder (name order); hidden files and subfolders are ignored."""
    if not folder.is_dir():
        return []
    return sorted(
        p.name for p in folder.iterdir() if p.suffix == ".csv" and not p.name.startswith(".")
    )


def read_erasure_file(path: Path) -> pl.DataFrame:
    """The file's rows (ROW_SCHEMA; emails trimmed and lowercased), or ErasureFileError.

    Rows are 1-based data rows, the header not counted. Every value is read as text.
    """
    if path.is_symlink() or not path.is_file():
        raise ErasureFileError(f"{path}: not a regular file (links are never followed)")
    size = path.stat().st_size
    if size > MAX_ERASURE_FILE_BYTES:
        raise ErasureFileError(f"{path}: {size} bytes, over {MAX_ERASURE_FILE_BYTES} bytes")
    with open(path, "rb") as handle:  # bounded: the file may grow after the size was read
        data = handle.read(MAX_ERASURE_FILE_BYTES + 1)
    if len(data) > MAX_ERASURE_FILE_BYTES:
        raise ErasureFileError(f"{path}: over {MAX_ERASURE_FILE_BYTES} bytes")
    return parse_erasure_file(str(path), path.name, data)


def parse_erasure_file(where: str, name: str, data: bytes) -> pl.DataFrame:
    """The rows of an erasure file's bytes (see read_erasure_file); `where` (its path or URL)
    names it in errors, `name` in the rows' `file` column."""
    path = where
    try:
        raw = pl.read_csv(
            io.BytesIO(data), infer_schema=False, encoding="utf8", raise_if_empty=False
        )
    except (pl.exceptions.PolarsError, UnicodeDecodeError) as error:
        first = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
        raise ErasureFileError(f"{path}: not a comma-separated UTF-8 CSV file ({first})") from None
    columns = [c.strip().lower() for c in raw.columns]
    raw.columns = columns
    unknown = [c for c in columns if c not in ERASURE_COLUMNS]
    if unknown:
        raise ErasureFileError(
            f"{path}: unknown column(s) {', '.join(map(repr, unknown))}; expected "
            f"{', '.join(ERASURE_COLUMNS)} (email and/or customer_id required)"
        )
    if "email" not in columns and "customer_id" not in columns:
        raise ErasureFileError(f"{path}: needs a column email and/or customer_id")
    text = {
        c: (pl.col(c).str.strip_chars() if c in columns else pl.lit(None, pl.String))
        for c in ERASURE_COLUMNS
    }
    rows = raw.select(
        pl.lit(name).alias("file"),
        (pl.int_range(pl.len(), dtype=pl.Int64) + 1).alias("row"),
        pl.when(text["email"] != "").then(text["email"].str.to_lowercase()).alias("email"),
        pl.when(text["customer_id"] != "").then(text["customer_id"]).alias("customer_id"),
        pl.when(text["action"] != "")
        .then(text["action"].str.to_lowercase())
        .otherwise(pl.lit("erase"))
        .alias("action"),
        pl.when(text["requested_by"] != "").then(text["requested_by"]).alias("requested_by"),
    ).cast(ROW_SCHEMA)
    _check_rows(path, rows)
    return rows


def _check_rows(path: str | Path, rows: pl.DataFrame) -> None:
    """The first bad row, named with its field (an email shown masked)."""
    email = pl.col("email")
    local_length = email.str.split("@").list.first().str.len_chars()
    problems = rows.select(
        "row",
        "email",
        "action",
        pl.when(email.is_null() & pl.col("customer_id").is_null())
        .then(pl.lit("email"))
        .when(
            email.is_not_null()
            & (
                (email.str.len_chars() > MAX_EMAIL_LENGTH)
                | ~email.str.contains(EMAIL_PATTERN)
                | (local_length > MAX_LOCAL_PART)
            )
        )
        .then(pl.lit("email"))
        .when(~pl.col("action").is_in(list(ACTIONS)))
        .then(pl.lit("action"))
        .alias("field"),
    ).filter(pl.col("field").is_not_null())
    if not problems.height:
        return
    row, value, action, where = problems.row(0)
    if where == "action":
        why = f"action {action[:40]!r} is not one of {', '.join(ACTIONS)}"
    elif value is None:
        why = "neither an email nor a customer_id"
    else:
        why = f"{_masked(value)} is not a valid email address (at most {MAX_EMAIL_LENGTH} chars)"
    more = f" ({problems.height - 1} more bad rows)" if problems.height > 1 else ""
    raise ErasureFileError(f"{path}: row {row}, field {where}: {why}{more}; nothing was erased")


# -- 2. customer ids -> emails -------------------------------------------------------------------
def profile_emails(source: ProfileSource, destinations: Iterable[Destination]) -> pl.DataFrame:
    """(customer_id, email) of every profile, for each distinct mapped email (normalized).

    Read straight from the profile source, projected: only customer_id and the columns the
    email sources name are read (as text).
    """
    sources = sorted({d.field_mapping.email for d in destinations})
    if not sources:
        return pl.DataFrame(schema={"customer_id": pl.String, "email": pl.String})
    columns = {name for s in sources for name in value_expression(s).meta.root_names()}
    profiles = source.read(columns, columns)
    parts = [
        profiles.lazy().select(
            pl.col("customer_id").cast(pl.String),
            value_expression(s).cast(pl.String).str.strip_chars().str.to_lowercase().alias("email"),
        )
        for s in sources
    ]
    return pl.concat(parts).drop_nulls().unique().collect()


def resolve_subjects(rows: pl.DataFrame, known: pl.DataFrame) -> tuple[pl.DataFrame, pl.DataFrame]:
    """(subjects: one row per email with its customer id, file, requested_by; unknown rows).

    A row with a customer id gets the email of every profile with that id (and keeps its own
    email, if given); a row with only an email gets the customer id of a profile that has it.
    Unknown: rows with a customer id no profile has, and no email of their own.
    """
    by_id = rows.filter(pl.col("customer_id").is_not_null()).join(
        known.rename({"email": "profile_email"}), on="customer_id", how="left"
    )
    unknown = by_id.filter(pl.col("profile_email").is_null() & pl.col("email").is_null())
    from_ids = by_id.filter(pl.col("profile_email").is_not_null()).select(
        pl.col("profile_email").alias("email"), "customer_id", "file", "requested_by"
    )
    id_of_email = known.group_by("email").agg(pl.col("customer_id").min().alias("_id"))
    given = (
        rows.filter(pl.col("email").is_not_null())
        .join(id_of_email, on="email", how="left")
        .select(
            "email",
            pl.coalesce("customer_id", "_id").alias("customer_id"),
            "file",
            "requested_by",
        )
    )
    subjects = (
        pl.concat([given, from_ids])
        .sort("email", "customer_id", nulls_last=True)
        .unique("email", keep="first", maintain_order=True)
    )
    return subjects, unknown.select(list(ROW_SCHEMA))


# -- 3. brake ------------------------------------------------------------------------------------
@dataclass(frozen=True)
class ListHits:
    destination: Destination
    members: int  # contacts we manage on the list (the sync state's record)
    hits: int  # of them, people to erase


def check_erasure_brake(emails: list[str], hits: list[ListHits], allowed: bool) -> None:
    """Raise ErasureRefused for a mass erasure, naming the counts and the override tag."""
    if allowed:
        return
    override = (
        f"Nothing was recorded or sent. If the erasure is intended, rerun with the run tag "
        f"{ALLOW_MASS_ERASURE_TAG}=true."
    )
    if len(emails) > MAX_ERASURES_PER_RUN:
        raise ErasureRefused(
            f"Erasure refused: {len(emails)} people in one run, over the brake of "
            f"{MAX_ERASURES_PER_RUN}. {override}"
        )
    for item in hits:
        share = item.hits / item.members if item.members else 0.0
        limit = item.destination.max_erasure_share
        if item.hits >= MIN_ERASURES_FOR_BRAKE and share > limit:
            raise ErasureRefused(
                f"Erasure refused: destination {item.destination.name!r} would lose "
                f"{item.hits} of the {item.members} contacts we manage on list "
                f"{item.destination.list_id} ({share:.0%}; brake at {limit:.0%} from "
                f"{MIN_ERASURES_FOR_BRAKE} people, max_erasure_share). {override}"
            )


# -- 5. SendGrid ---------------------------------------------------------------------------------
def chunks(items: list[str], size: int) -> list[list[str]]:
    return [items[i : i + size] for i in range(0, len(items), size)]


def erasure_chunks(
    emails: list[str], max_emails: int = ERASE_EMAILS_MAX, max_bytes: int = ERASE_BODY_MAX_BYTES
) -> list[list[str]]:
    """Split addresses into erase-job bodies of at most `max_emails` and `max_bytes` each.

    The body is {"email_addresses":["a","b"]} as json.dumps writes it compactly; each
    address adds its JSON-escaped length, its quotes and a comma.
    """
    overhead = len(b'{"email_addresses":[]}')
    batches: list[list[str]] = []
    current: list[str] = []
    size = overhead
    for email in emails:
        item = len(json.dumps(email).encode("utf-8")) + (1 if current else 0)
        if current and (len(current) >= max_emails or size + item > max_bytes):
            batches.append(current)
            current, size = [], overhead
            item -= 1
        if overhead + item > max_bytes:
            raise ValueError("an address longer than a whole erase-job body")
        current.append(email)
        size += item
    if current:
        batches.append(current)
    return batches


def contact_ids(client: SendGridClient, emails: list[str]) -> dict[str, str]:
    """email -> contact id of those the account holds (the email search, SGQL for long ones)."""
    short = [e for e in emails if len(e) <= SEARCH_EMAIL_MAX_LENGTH]
    long = [e for e in emails if len(e) > SEARCH_EMAIL_MAX_LENGTH]
    found: dict[str, str] = {}
    for batch in chunks(short, SEARCH_EMAILS_MAX):
        found.update(client.search_emails(batch))
    for batch in chunks(long, SGQL_MAX_RESULTS):
        found.update(client.search_contact_ids_by_sgql(batch))
    return found


@dataclass
class ErasureOutcome:
    """What one run did, for metadata and the audit file."""

    erase_rows: int = 0
    withdraw_rows: int = 0
    withdrawn: int = 0
    recorded: int = 0
    erased: list[str] = field(default_factory=list)
    removed_from_lists: dict[str, int] = field(default_factory=dict)
    deleted_contacts: int = 0
    erase_jobs: list[str] = field(default_factory=list)
    job_ids: list[str] = field(default_factory=list)


class ErasureEngine:
    """Steps 4 to 6 for the pending people of the ledger, account by account."""

    def __init__(
        self,
        config: PipelineConfig,
        ledger: ErasureLedger,
        state: SyncStateStore,
        client_for: Callable[[str], SendGridClient],
        run_id: str,
        log: Callable[[str], None] = lambda message: None,
        audit_file: str | None = None,
    ) -> None:
        self.config = config
        self.ledger = ledger
        self.state = state
        self.client_for = client_for
        self.run_id = run_id
        self.log = log
        self.audit_file = audit_file  # owes the completion lines of the people it marks erased

    def list_hits(self, emails: list[str]) -> list[ListHits]:
        """Per destination: contacts we manage on its list, and how many of them are to go."""
        wanted = pl.Series("email", emails, dtype=pl.String)
        result = []
        for destination in self.config.destinations:
            members = self.state.for_list(destination.name, destination.list_id).members()
            managed = members.filter(pl.col("managed"))
            hits = managed.filter(pl.col("email").is_in(wanted.implode())).height
            result.append(ListHits(destination, managed.height, hits))
        return result

    def erase_pending(self, outcome: ErasureOutcome) -> None:
        """Erase every pending person in every account; mark them erased when confirmed."""
        pending = self.ledger.subjects(PENDING)["email"].to_list()
        if not pending:
            return
        accounts: dict[str, list[Destination]] = {}
        for destination in self.config.destinations:
            accounts.setdefault(destination.api_key_env, []).append(destination)
        for account, destinations in accounts.items():
            self._erase_in_account(account, destinations, pending, outcome)
        self.ledger.mark_erased(pending, audit_file=self.audit_file)
        outcome.erased = pending

    def _step(self, account: str, kind: str, target: str | None, count: int, send) -> str:
        """Write the step ahead, send it, and poll its job (an erase job: the 202 confirms)."""
        step = self.ledger.begin_step(self.run_id, account, kind, target, count)
        job_id = send()
        self.ledger.step_sent(step, job_id)
        if kind != "recipient_erasure":
            job = self.client_for(account).wait_for_job(job_id)
            if job.status != "completed":
                self.ledger.step_failed(step)
                raise SendGridJobError(
                    f"SendGrid {kind.replace('_', ' ')} job {job_id} ended {job.status!r}; the "
                    "people stay pending and the next erasure run tries again"
                )
        self.ledger.step_confirmed(step)
        return job_id

    def _erase_in_account(
        self,
        account: str,
        destinations: list[Destination],
        emails: list[str],
        outcome: ErasureOutcome,
    ) -> None:
        client = self.client_for(account)
        ids = contact_ids(client, emails)
        wanted = pl.Series("email", emails, dtype=pl.String).implode()
        for destination in destinations:
            list_state = self.state.for_list(destination.name, destination.list_id)
            with list_state.lock(self.run_id):
                members = list_state.members().filter(pl.col("email").is_in(wanted))
                if not members.height:
                    continue
                on_list = [e for e in members["email"].to_list() if e in ids]
                for batch in chunks([ids[e] for e in on_list], REMOVE_IDS_PER_REQUEST):
                    job = self._step(
                        account,
                        "list_removal",
                        destination.list_id,
                        len(batch),
                        lambda b=batch, i=destination.list_id: client.remove_from_list(i, b),
                    )
                    outcome.job_ids.append(job)
                # the state forgets them: a later sync neither removes nor re-adds them
                list_state.forget(members["email"].to_list())
                outcome.removed_from_lists[destination.name] = members.height
                self.log(f"{destination.name}: {members.height} erased people off the list")
        for batch in chunks(sorted(ids.values()), DELETE_IDS_PER_REQUEST):
            job = self._step(
                account,
                "contact_deletion",
                None,
                len(batch),
                lambda b=batch: client.delete_contacts(b),
            )
            outcome.job_ids.append(job)
            outcome.deleted_contacts += len(batch)
        if any(d.erase_recipient_data for d in destinations):
            for batch in erasure_chunks(emails):
                job = self._step(
                    account,
                    "recipient_erasure",
                    None,
                    len(batch),
                    lambda b=batch: client.create_erasure_job(b),
                )
                outcome.erase_jobs.append(job)
                outcome.job_ids.append(job)


# -- 7. audit ------------------------------------------------------------------------------------
def audit_lines(
    run_id: str,
    files: list[str],
    subjects: pl.DataFrame,
    withdrawals: pl.DataFrame,
    outcome: ErasureOutcome,
    steps: list,
    statuses: dict[str, str] | None = None,
) -> bytes:
    """The audit file: one JSON line for the run, one per person (hashed), one per request.

    `statuses` (email -> status, see audit_people) gives each erase line its `status`.
    """
    now = datetime.now(UTC).isoformat(timespec="seconds")
    lines: list[dict] = [
        {
            "record": "run",
            "time": now,
            "run_id": run_id,
            "request_files": files,
            "erase_requested": subjects.height,
            "withdraw_requested": withdrawals.height,
            "withdrawn": outcome.withdrawn,
            "erased": len(outcome.erased),
            "removed_from_lists": outcome.removed_from_lists,
            "deleted_contacts": outcome.deleted_contacts,
            "erase_job_ids": outcome.erase_jobs,
            "job_ids": outcome.job_ids,
        }
    ]
    for action, frame in (("erase", subjects), ("withdraw", withdrawals)):
        masked = frame.select(
            pl.col("email").alias("clear"),
            mask_email_expr("email").alias("masked"),
            "customer_id",
            "file",
            "requested_by",
        )
        for clear, masked_email, customer_id, file, requested_by in masked.iter_rows():
            lines.append(
                {
                    "record": "person",
                    "time": now,
                    "action": action,
                    "email_sha256": email_hash(clear) if clear else None,
                    "email_masked": masked_email if clear else None,
                    "customer_id": customer_id,
                    "request_file": file,
                    "requested_by": requested_by,
                    "status": "withdrawn"
                    if action == "withdraw"
                    else (statuses or {}).get(clear or "", PENDING),
                }
            )
    for step in steps:
        lines.append(
            {
                "record": "request",
                "time": now,
                "kind": step.kind,
                "account": step.account,
                "list_id": step.target,
                "contacts": step.contacts,
                "job_id": step.job_id,
                "status": step.status,
            }
        )
    return "".join(json.dumps(line, sort_keys=True) + "\n" for line in lines).encode("utf-8")


def audit_people(
    subjects: pl.DataFrame, owed: pl.DataFrame, ledger_status: pl.DataFrame
) -> tuple[pl.DataFrame, dict[str, str]]:
    """The erase lines of an audit file, and each one's status.

    The lines: this run's requested people, and the people owed a completion line (erased by a
    run killed before its audit file was written, or by this run for an earlier request).
    Status: `erased` for the owed (their one completion line), `already_erased` for people an
    earlier audit file already shows erased, else their ledger status (`pending`: the run did
    not confirm them; the next run does, and its file shows them `erased`).
    """
    extra = owed.join(subjects.select("email"), on="email", how="anti").select(
        "email",
        "customer_id",
        pl.col("request").alias("file"),
        pl.lit(None, pl.String).alias("requested_by"),
    )
    people = pl.concat([subjects.select(extra.columns), extra])
    owed_emails = set(owed["email"].to_list())
    known = dict(ledger_status.select("email", "status").iter_rows())
    statuses = {
        email: ERASED
        if email in owed_emails
        else ("already_erased" if known.get(email) == ERASED else known.get(email, PENDING))
        for email in people["email"].to_list()
    }
    return people, statuses
