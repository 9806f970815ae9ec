"""In-memory state of one SendGrid account: lists, contacts, custom fields and asynchronous jobs.

One lock guards all of it. Jobs are applied in order once their delay has passed, by whichever
call first looks at the store (every read applies the jobs that are due first), so the state a
client can observe is exactly what a real asynchronous job would show. The server also applies
due jobs in slices while it is idle (apply_due_slice), so that, as with SendGrid, a client does
not wait for that work in its own requests; accepting an upsert never applies earlier jobs.
"""

from __future__ import annotations

import gc
import itertools
import re
import threading
import time
import uuid
from collections import deque
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

from sendgrid_pipeline_tests.devkit.sandbox.exports import render_errors_csv, render_export
from sendgrid_pipeline_tests.devkit.sandbox.faults import FaultCounts
from sendgrid_pipeline_tests.devkit.sandbox.latency import JobQueue, LatencyModel
from sendgrid_pipeline_tests.devkit.sandbox.validation import (
    RESERVED_FIELDS,
    ApiError,
    field_definition_error,
    is_valid_email,
    validate_contacts,
)

CONTACT_SAMPLE_SIZE = 50
EXPORT_TTL_SECONDS = 72 * 3600

# Text fields a contact response always carries ("" when unset), as in the SPEC examples.
_TEXT_DEFAULTS: dict[str, str] = dict.fromkeys(
    (
        "email",
        "phone_number_id",
        "external_id",
        "anonymous_id",
        "first_name",
        "last_name",
        "unique_name",
        "address_line_1",
        "address_line_2",
        "city",
        "state_province_region",
        "postal_code",
        "country",
        "phone_number",
        "whatsapp",
        "line",
        "facebook",
    ),
    "",
)


def _iso(timestamp: float) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(timestamp))


def _contact_ids() -> Iterator[str]:
    """Contact ids shaped like uuids: a random prefix and a counter (uuid4() per row is slow)."""
    seed = uuid.uuid4().hex
    prefix = f"{seed[:8]}-{seed[8:12]}-{seed[12:16]}-{seed[16:20]}-"
    return (f"{prefix}{n:012x}" for n in itertools.count(int(seed[20:], 16) >> 8))


def _detach_custom_fields(contacts: list[dict[str, Any]]) -> list[dict[str, Any] | None]:
    """Take custom_fields out of each contact, returning them by index.

    A dict holding only plain values is not tracked by the cyclic GC, but json.loads tracks a
    contact that nests custom_fields. Left tracked, 1M stored contacts would make every full
    collection walk them all; a fresh copy without the nested dict is untracked.
    """
    customs: list[dict[str, Any] | None] = []
    for index, contact in enumerate(contacts):
        custom = contact.pop("custom_fields", None)
        if custom is not None:
            contacts[index] = dict(contact)
        customs.append(custom)
    return customs


_gc_lock = threading.Lock()
_gc_pauses = 0
_gc_was_enabled = True


@contextmanager
def paused_gc() -> Iterator[None]:
    """Hold off the cyclic GC while a large upsert body is parsed and detached.

    Otherwise the GC promotes the freshly parsed contacts to the oldest generation before they
    are detached, and every few requests a full collection walks the whole store. Nested pauses
    from concurrent requests are counted, and GC is re-enabled only if it was enabled before.
    """
    global _gc_pauses, _gc_was_enabled
    with _gc_lock:
        if _gc_pauses == 0:
            _gc_was_enabled = gc.isenabled()
            gc.disable()
        _gc_pauses += 1
    try:
        yield
    finally:
        with _gc_lock:
            _gc_pauses -= 1
            if _gc_pauses == 0 and _gc_was_enabled:
                gc.enable()


def _identifier_key(contact: dict[str, Any]) -> str:
    """Store key of a contact without email: contains a newline, so never equal to an email."""
    for name in ("phone_number_id", "external_id", "anonymous_id"):
        if contact.get(name):
            return f"\n{name}\n{contact[name]}"
    raise ValueError("contact has no identifier")


@dataclass
class ContactList:
    id: str
    name: str
    members: dict[str, None] = field(default_factory=dict)  # contact keys, least recent first
    # (time, member count) after each change, oldest first: what an eventually consistent
    # contact_count shows (LatencyModel.count_lag_seconds); pruned to what the lag can reach.
    counts: deque[tuple[float, int]] = field(default_factory=deque)


@dataclass
class Job:
    """An upsert or a list removal, as GET /v3/marketing/contacts/imports/{id} reports it."""

    id: str
    job_type: str  # "upsert" | "delete"
    due: float
    started_at: str
    requested: int
    payload: list[Any] | None  # upsert: the contacts; delete: the contact keys
    list_ids: tuple[str, ...]
    custom: list[dict[str, Any] | None] | None = None  # upsert: custom_fields, by contact index
    reject: re.Pattern[str] | None = None
    fail: bool = False
    status: str = "pending"
    results: dict[str, int] = field(default_factory=dict)
    finished_at: str | None = None
    errors_csv: bytes | None = None
    # An upsert is applied in slices: how far it got, and what it counted so far.
    applied: int = 0
    applied_at: str | None = None
    created: int = 0
    updated: int = 0
    rejected: list[tuple[int, str, str]] = field(default_factory=list)


@dataclass
class Export:
    id: str
    list_ids: tuple[str, ...]
    file_type: str
    due: float
    created: float
    status: str = "pending"
    updated_at: str = ""
    completed_at: str | None = None
    files: list[bytes] = field(default_factory=list)
    contact_count: int = 0


class Store:
    """The account. Every public method takes the lock and first applies the jobs that are due."""

    def __init__(
        self,
        job_delay_seconds: float,
        fault_counts: FaultCounts,
        latency: LatencyModel | None = None,
    ) -> None:
        self._latency = latency or LatencyModel.fixed(job_delay_seconds)
        self._queue = JobQueue(self._latency)
        self.base_url = ""  # set once the server knows its port; used in URLs it hands out
        self._counts = fault_counts
        self._lock = threading.Lock()
        self._lists: dict[str, ContactList] = {}
        # Contacts by lowercase email (or identifier key). Records hold plain values only; list
        # membership lives in the lists and custom field values in _custom.
        self._contacts: dict[str, dict[str, Any]] = {}
        self._custom: dict[str, dict[str, Any]] = {}
        self._by_id: dict[str, str] = {}
        self._by_alternate: dict[str, str] = {}
        self._fields: dict[str, tuple[str, str]] = {}  # custom field id -> (name, type)
        self._jobs: dict[str, Job] = {}
        self._exports: dict[str, Export] = {}
        self._pending: deque[Job | Export] = deque()
        self._contact_ids = _contact_ids()
        self.work_added = threading.Event()  # set whenever a job or export is queued
        # Compliance: emails of contacts deleted from the account (one entry per deletion),
        # erase jobs as (job id, addresses), and refused delete_all_contacts requests.
        self.deleted_emails: list[str] = []
        self.erasure_jobs: list[tuple[str, list[str]]] = []
        self.delete_all_requests = 0
        # Suppressions: kind -> lowercase email -> record; ASM groups: id -> email -> created.
        self._suppressions: dict[str, dict[str, dict[str, Any]]] = {}
        self._groups: dict[int, dict[str, int]] = {}

    # -- timing (see latency.py) ------------------------------------------------------------
    @property
    def latency(self) -> LatencyModel:
        return self._latency

    @latency.setter
    def latency(self, model: LatencyModel) -> None:
        """Applies to jobs accepted from now on; pending jobs keep their due time."""
        with self._lock:
            self._latency = model
            self._queue.model = model

    @property
    def job_delay_seconds(self) -> float:
        """How long a job stays pending under the fixed model (its base time otherwise)."""
        return self._latency.job_base_seconds

    @job_delay_seconds.setter
    def job_delay_seconds(self, seconds: float) -> None:
        self.latency = self._latency.with_changes({"job_base_seconds": seconds})

    def _note_count(self, contact_list: ContactList, now: float) -> None:
        counts = contact_list.counts
        counts.append((now, len(contact_list.members)))
        cutoff = now - self._latency.count_lag_seconds
        while len(counts) > 1 and counts[1][0] <= cutoff:
            counts.popleft()

    def _visible_count(self, contact_list: ContactList) -> int:
        """The list's size as SendGrid reports it: exact, or as it was count_lag_seconds ago."""
        lag = self._latency.count_lag_seconds
        if lag <= 0 or not contact_list.counts:
            return len(contact_list.members)
        cutoff = time.time() - lag
        visible = contact_list.counts[0][1]
        for at, count in contact_list.counts:
            if at > cutoff:
                break
            visible = count
        return visible

    @contextmanager
    def _locked(self, *, complete_all: bool = False, upto: str | None = None) -> Iterator[None]:
        with self._lock:
            self._complete(time.time(), complete_all, upto)
            yield

    # -- jobs ----------------------------------------------------------------------------------
    def _complete(self, now: float, complete_all: bool, upto: str | None = None) -> None:
        """Apply the due jobs in order; with `upto`, stop once that job is applied.

        A job's own view depends only on the jobs before it, so reading one job's status need
        not wait for the later ones.
        """
        if upto is not None:
            target = self._jobs.get(upto)
            if target is None or target.finished_at is not None:
                return
        pending = self._pending
        while pending and (complete_all or pending[0].due <= now):
            item = pending.popleft()
            self._finish(item)
            if item.id == upto:
                return

    def _finish(self, item: Job | Export) -> None:
        if isinstance(item, Export):
            self._finish_export(item)
        elif item.job_type == "upsert":
            self._advance_upsert(item, None)
        else:
            self._finish_removal(item)

    def apply_due_slice(self, max_contacts: int) -> float | None:
        """Apply up to `max_contacts` of the first due job (an export or removal whole).

        Returns 0 when more work is due, the seconds until the next job is due, or None when
        nothing is pending. Short slices keep the lock free for requests in between.
        """
        with self._lock:
            pending = self._pending
            if not pending:
                return None
            item = pending[0]
            wait = item.due - time.time()
            if wait > 0:
                return wait
            try:
                if isinstance(item, Job) and item.job_type == "upsert":
                    done = self._advance_upsert(item, max_contacts)
                else:
                    self._finish(item)
                    done = True
            except Exception:
                pending.popleft()  # as in _complete: a job that cannot be applied is dropped
                raise
            if done:
                pending.popleft()
            return 0.0

    def _advance_upsert(self, job: Job, max_contacts: int | None) -> bool:
        """Apply the job's next contacts (all with None); True once it is finished."""
        contacts, customs = job.payload or [], job.custom or []
        if job.applied_at is None:
            job.applied_at = _iso(time.time())
        now = job.applied_at
        rejected = job.rejected
        start = job.applied
        end = len(contacts) if max_contacts is None else min(len(contacts), start + max_contacts)
        if job.fail:
            message = "job failed (sandbox fault: fail_jobs)"
            rejected.extend((i, c.get("email", ""), message) for i, c in enumerate(contacts))
            self._counts.add("failed_jobs")
            end = len(contacts)
        else:
            reject, store = job.reject, self._contacts
            members = [self._lists[list_id].members for list_id in job.list_ids]
            created = updated = 0
            for index in range(start, end):
                contact = contacts[index]
                email = contact.get("email")
                if email:
                    key = email.lower()
                    if not is_valid_email(key):
                        rejected.append((index, email, "invalid email address"))
                        continue
                    if reject is not None and reject.search(email):
                        message = "email rejected (sandbox fault: reject_email_pattern)"
                        rejected.append((index, email, message))
                        self._counts.add("rejected_rows")
                        continue
                    if key == email:
                        key = email  # one string object for both the dict key and the value
                    else:
                        contact["email"] = key
                else:
                    key = _identifier_key(contact)
                custom = customs[index]
                record = store.get(key)
                if record is None:
                    self._insert(key, contact, custom, now)
                    created += 1
                else:
                    self._merge(key, record, contact, custom, now)
                    updated += 1
                for listed in members:  # re-attaching moves the contact to "most recent"
                    listed.pop(key, None)
                    listed[key] = None
            job.created += created
            job.updated += updated
            moment = time.time()
            for list_id in job.list_ids:
                self._note_count(self._lists[list_id], moment)
        job.applied = end
        if end < len(contacts):
            return False
        job.payload = job.custom = None
        errored = len(rejected)
        job.results = {
            "requested_count": job.requested,
            "created_count": job.created,
            "updated_count": job.updated,
            "deleted_count": 0,
            "errored_count": errored,
        }
        if errored:
            job.errors_csv = render_errors_csv(rejected)
        if not errored:
            job.status = "completed"
        else:
            job.status = "failed" if errored == job.requested else "errored"
        job.finished_at = now
        job.rejected = []
        return True

    def _insert(
        self, key: str, contact: dict[str, Any], custom: dict[str, Any] | None, now: str
    ) -> None:
        if custom is not None:
            if "" in custom.values():
                custom = {field_id: value for field_id, value in custom.items() if value != ""}
            self._custom[key] = custom
        contact_id = next(self._contact_ids)
        contact["id"] = contact_id
        contact["created_at"] = contact["updated_at"] = now
        self._contacts[key] = contact
        self._by_id[contact_id] = key
        if contact.get("alternate_emails"):
            self._reindex_alternates(key, [], contact["alternate_emails"])

    def _merge(
        self,
        key: str,
        record: dict[str, Any],
        contact: dict[str, Any],
        custom: dict[str, Any] | None,
        now: str,
    ) -> None:
        """Fields left out stay as they are; an empty string clears a field."""
        old_alternates = record.get("alternate_emails") or []
        record.update(contact)
        record["updated_at"] = now
        if custom:
            stored = self._custom.setdefault(key, {})
            for field_id, value in custom.items():
                if value == "":
                    stored.pop(field_id, None)
                else:
                    stored[field_id] = value
        if "alternate_emails" in contact:
            self._reindex_alternates(key, old_alternates, contact["alternate_emails"])

    def _reindex_alternates(self, key: str, old: list[str], new: list[str]) -> None:
        for email in old:
            if self._by_alternate.get(email.lower()) == key:
                del self._by_alternate[email.lower()]
        for email in new:
            self._by_alternate[email.lower()] = key

    def _finish_removal(self, job: Job) -> None:
        if not job.list_ids:  # no list: a deletion from the account
            self._finish_deletion(job)
            return
        now = _iso(time.time())
        contact_list = self._lists[job.list_ids[0]]
        removed = 0
        for key in job.payload or []:
            if key in contact_list.members:
                del contact_list.members[key]
                self._contacts[key]["updated_at"] = now
                removed += 1
        self._note_count(contact_list, time.time())
        job.payload = None
        job.results = {
            "requested_count": job.requested,
            "created_count": 0,
            "updated_count": 0,
            "deleted_count": removed,
            "errored_count": 0,
        }
        job.status = "completed"
        job.finished_at = now

    def _finish_export(self, export: Export) -> None:
        if export.list_ids:
            keys = dict.fromkeys(
                key for list_id in export.list_ids for key in self._lists[list_id].members
            )
        else:
            keys = dict.fromkeys(self._contacts)
        rows = (
            (self._contacts[key], self._list_ids(key), self._custom.get(key, {})) for key in keys
        )
        names = {field_id: name for field_id, (name, _) in self._fields.items()}
        export.files = [render_export(rows, export.file_type, names)]
        export.contact_count = len(keys)
        export.status = "ready"
        export.completed_at = export.updated_at = _iso(time.time())

    def _enqueue(self, item: Job | Export) -> None:
        """Queue a job or export (under the lock); the model says when it will be done."""
        if isinstance(item, Job):
            items = item.requested
        else:
            lists = item.list_ids
            members = (len(self._lists[x].members) for x in lists)
            items = sum(members) if lists else len(self._contacts)
        item.due = self._queue.schedule(time.time(), items)
        self._pending.append(item)
        if isinstance(item, Job):
            self._jobs[item.id] = item
        else:
            self._exports[item.id] = item
        self.work_added.set()

    def complete_all(self) -> None:
        """Apply every pending job and export now, whatever its delay."""
        with self._locked(complete_all=True):
            pass

    # -- lists ---------------------------------------------------------------------------------
    def create_list(self, name: str, list_id: str | None = None) -> str:
        list_id = list_id or str(uuid.uuid4())
        with self._locked():
            if list_id in self._lists:
                raise ValueError(f"list {list_id} already exists")
            self._lists[list_id] = ContactList(list_id, name)
            self._note_count(self._lists[list_id], time.time())
        return list_id

    def _list_view(self, contact_list: ContactList) -> dict[str, Any]:
        return {
            "id": contact_list.id,
            "name": contact_list.name,
            "contact_count": self._visible_count(contact_list),
            "_metadata": {"self": f"{self.base_url}/v3/marketing/lists/{contact_list.id}"},
        }

    def lists_page(self, offset: int, size: int) -> tuple[list[dict[str, Any]], int]:
        with self._locked():
            everything = list(self._lists.values())
            return [self._list_view(x) for x in everything[offset : offset + size]], len(everything)

    def list_view(self, list_id: str, contact_sample: bool) -> dict[str, Any] | None:
        with self._locked():
            contact_list = self._lists.get(list_id)
            if contact_list is None:
                return None
            view = self._list_view(contact_list)
            if contact_sample:
                recent = itertools.islice(reversed(contact_list.members), CONTACT_SAMPLE_SIZE)
                view["contact_sample"] = [self._render(key) for key in recent]
            return view

    def list_sizes(self) -> dict[str, int]:
        """Members per list id (applies the jobs that are due first, like every read)."""
        with self._locked():
            return {list_id: len(listed.members) for list_id, listed in self._lists.items()}

    def list_count(self, list_id: str) -> int | None:
        with self._locked():
            contact_list = self._lists.get(list_id)
            return None if contact_list is None else self._visible_count(contact_list)

    def member_emails(self, list_id: str) -> set[str]:
        with self._locked():
            if list_id not in self._lists:
                raise KeyError(f"unknown list {list_id}")
            contacts = self._contacts
            return {
                contacts[key]["email"]
                for key in self._lists[list_id].members
                if contacts[key].get("email")
            }

    # -- the account ---------------------------------------------------------------------------
    # What GET /v3/marketing/contacts/count reports as billable_count; None: the contact count
    # itself. Set it to model a month whose billable figure differs from the stored contacts.
    billable_count: int | None = None

    def account_counts(self) -> dict[str, int]:
        """contact_count (every contact in the account, on a list or not) and billable_count."""
        with self._locked():
            count = len(self._contacts)
            billable = count if self.billable_count is None else self.billable_count
            return {"contact_count": count, "billable_count": billable}

    # -- custom fields -------------------------------------------------------------------------
    def field_types(self) -> dict[str, str]:
        """Custom field id -> type. Jobs never change fields, so none is applied first."""
        with self._lock:
            return {field_id: field_type for field_id, (_, field_type) in self._fields.items()}

    def define_field(self, name: object, field_type: object) -> dict[str, Any]:
        """Create a custom field; raises ApiError (400) like POST field_definitions."""
        with self._locked():
            existing = {known.lower() for known, _ in self._fields.values()}
            problem = field_definition_error(name, field_type, existing)
            if problem is not None:
                raise problem
            name, field_type = str(name), str(field_type)
            field_id = f"e{len(self._fields) + 1}_{field_type[0]}"
            self._fields[field_id] = (name, field_type)
        return {"id": field_id, "name": name, "field_type": field_type}

    def field_definitions(self) -> dict[str, Any]:
        with self._locked():
            custom = [
                {"id": field_id, "name": name, "field_type": field_type}
                for field_id, (name, field_type) in self._fields.items()
            ]
        reserved = [
            {"id": field_id, "name": name, "field_type": field_type, "read_only": read_only}
            for field_id, name, field_type, read_only in RESERVED_FIELDS
        ]
        return {
            "custom_fields": custom,
            "reserved_fields": reserved,
            "_metadata": {"self": f"{self.base_url}/v3/marketing/field_definitions"},
        }

    # -- contacts ------------------------------------------------------------------------------
    def _list_ids(self, key: str) -> list[str]:
        return [list_id for list_id, listed in self._lists.items() if key in listed.members]

    def _render(self, key: str) -> dict[str, Any]:
        """A contact as the API returns it; custom fields are keyed by name."""
        record = self._contacts[key]
        view = dict(_TEXT_DEFAULTS)
        view.update(record)
        view["alternate_emails"] = list(record.get("alternate_emails") or [])
        view["list_ids"] = self._list_ids(key)
        view["segment_ids"] = []
        view["custom_fields"] = {
            self._fields[field_id][0]: value
            for field_id, value in self._custom.get(key, {}).items()
            if field_id in self._fields
        }
        view["_metadata"] = {"self": f"{self.base_url}/v3/marketing/contacts/{record['id']}"}
        return view

    def _upsert_job(
        self,
        list_ids: list[str],
        contacts: list[dict[str, Any]],
        reject_pattern: str | None,
        fail: bool,
    ) -> Job:
        now = time.time()
        return Job(
            id=str(uuid.uuid4()),
            job_type="upsert",
            due=now,  # set when queued (_enqueue), by the latency model
            started_at=_iso(now),
            requested=len(contacts),
            payload=contacts,
            custom=_detach_custom_fields(contacts),
            list_ids=tuple(dict.fromkeys(list_ids)),
            reject=re.compile(reject_pattern) if reject_pattern else None,
            fail=fail,
        )

    def _unknown_lists(self, list_ids: tuple[str, ...]) -> list[str]:
        return [list_id for list_id in list_ids if list_id not in self._lists]

    def enqueue_upsert(
        self,
        list_ids: list[str],
        contacts: list[dict[str, Any]],
        reject_pattern: str | None = None,
        fail: bool = False,
    ) -> str:
        """Queue validated contacts; they are applied when the latency model says they are due.

        Earlier jobs are not applied here (lists, the only thing checked, are not changed by
        jobs), so accepting an upsert never makes the client wait for earlier work.
        """
        job = self._upsert_job(list_ids, contacts, reject_pattern, fail)
        with self._lock:
            missing = self._unknown_lists(job.list_ids)
            if missing:
                raise ApiError(404, "list_ids", f"list not found: {', '.join(missing)}")
            self._enqueue(job)
        return job.id

    def add_contact(self, email: str, list_ids: list[str], fields: dict[str, Any]) -> str:
        """Apply one contact immediately (no job), as an edit in SendGrid's UI would."""
        contact = {**fields, "email": email}
        errors = validate_contacts([contact], self.field_types())
        if errors:
            raise ValueError(f"invalid contact: {errors}")
        if not is_valid_email(email.lower()):
            raise ValueError(f"invalid email address {email!r}")
        job = self._upsert_job(list_ids, [contact], None, False)
        with self._locked():
            missing = self._unknown_lists(job.list_ids)
            if missing:
                raise KeyError(f"unknown lists {missing}")
            self._advance_upsert(job, None)
            return self._contacts[email.lower()]["id"]

    def contact(self, email: str) -> dict[str, Any] | None:
        with self._locked():
            key = email.lower()
            return self._render(key) if key in self._contacts else None

    def search_emails(self, emails: list[str]) -> dict[str, dict[str, Any] | None]:
        """Email as given -> rendered contact (matched on email or alternate_emails) or None."""
        with self._locked():
            found: dict[str, dict[str, Any] | None] = {}
            for email in emails:
                lower = email.lower()
                key = lower if lower in self._contacts else self._by_alternate.get(lower)
                found[email] = None if key is None else self._render(key)
            return found

    def enqueue_removal(self, list_id: str, contact_ids: list[str]) -> str:
        """DELETE /v3/marketing/lists/{id}/contacts: an async "delete" job on one list."""
        with self._locked():
            if list_id not in self._lists:
                raise ApiError(404, None, f"list {list_id} not found")
            return self._enqueue_delete_job(contact_ids, "contact_ids", (list_id,))

    def enqueue_deletion(self, contact_ids: list[str]) -> str:
        """DELETE /v3/marketing/contacts?ids=: an async "delete" job with no list."""
        with self._locked():
            return self._enqueue_delete_job(contact_ids, "ids", ())

    def _enqueue_delete_job(
        self, contact_ids: list[str], field: str, list_ids: tuple[str, ...]
    ) -> str:
        """A "delete" job for known contact ids (under the lock); 404 naming unknown ones."""
        now = time.time()
        unknown = [cid for cid in contact_ids if cid not in self._by_id]
        if unknown:
            shown = ", ".join(unknown[:10]) + (" ..." if len(unknown) > 10 else "")
            raise ApiError(404, field, f"contact ids not found: {shown}")
        job = Job(
            id=str(uuid.uuid4()),
            job_type="delete",
            due=now,  # set when queued (_enqueue), by the latency model
            started_at=_iso(now),
            requested=len(contact_ids),
            payload=[self._by_id[cid] for cid in contact_ids],
            list_ids=list_ids,
        )
        self._enqueue(job)
        return job.id

    def _finish_deletion(self, job: Job) -> None:
        """Delete the contacts from the account and so from every list (under the lock)."""
        now = time.time()
        deleted = 0
        for key in job.payload or []:
            contact = self._contacts.pop(key, None)
            if contact is None:  # deleted meanwhile by another job
                continue
            deleted += 1
            self.deleted_emails.append(str(contact.get("email") or key))
            self._by_id.pop(contact["id"], None)
            self._custom.pop(key, None)
            self._reindex_alternates(key, contact.get("alternate_emails") or [], [])
            for contact_list in self._lists.values():
                if key in contact_list.members:
                    del contact_list.members[key]
                    self._note_count(contact_list, now)
        job.payload = None
        job.results = {
            "requested_count": job.requested,
            "created_count": 0,
            "updated_count": 0,
            "deleted_count": deleted,
            "errored_count": 0,
        }
        job.status = "completed"
        job.finished_at = _iso(now)

    def record_erasure(self, emails: list[str]) -> str:
        """POST /v3/recipients/erasejob: remember what was asked (no status endpoint exists)."""
        job_id = str(uuid.uuid4())
        with self._lock:
            self.erasure_jobs.append((job_id, list(emails)))
        return job_id

    def refuse_delete_all(self) -> None:
        with self._lock:
            self.delete_all_requests += 1

    def import_job(self, job_id: str) -> dict[str, Any] | None:
        with self._locked(upto=job_id):
            job = self._jobs.get(job_id)
            if job is None:
                return None
            results: dict[str, Any] = dict(job.results) or {
                "requested_count": job.requested,
                "created_count": 0,
                "updated_count": 0,
                "deleted_count": 0,
                "errored_count": 0,
            }
            if job.errors_csv is not None:
                results["errors_url"] = f"{self.base_url}/sandbox/errors/{job.id}.csv"
            view: dict[str, Any] = {
                "id": job.id,
                "status": job.status,
                "job_type": job.job_type,
                "results": results,
                "started_at": job.started_at,
            }
            if job.finished_at is not None:
                view["finished_at"] = job.finished_at
            return view

    def errors_csv(self, job_id: str) -> bytes | None:
        with self._locked():
            job = self._jobs.get(job_id)
            return None if job is None else job.errors_csv

    # -- exports -------------------------------------------------------------------------------
    def enqueue_export(self, list_ids: list[str], file_type: str) -> str:
        now = time.time()
        export = Export(
            id=str(uuid.uuid4()),
            list_ids=tuple(dict.fromkeys(list_ids)),
            file_type=file_type,
            due=now,  # set when queued (_enqueue), by the latency model
            created=now,
            updated_at=_iso(now),
        )
        with self._locked():
            missing = self._unknown_lists(export.list_ids)
            if missing:
                raise ApiError(404, "list_ids", f"list not found: {', '.join(missing)}")
            self._enqueue(export)
        return export.id

    def _export_view(self, export: Export) -> dict[str, Any]:
        view: dict[str, Any] = {
            "id": export.id,
            "status": export.status,
            "export_type": "list_export" if export.list_ids else "contacts_export",
            "lists": [{"ID": x, "Name": self._lists[x].name} for x in export.list_ids],
            "urls": [],
            "created_at": _iso(export.created),
            "updated_at": export.updated_at,
            "expires_at": _iso(export.created + EXPORT_TTL_SECONDS),
            "_metadata": {"self": f"{self.base_url}/v3/marketing/contacts/exports/{export.id}"},
        }
        if export.status == "ready":
            extension = f"{export.file_type}.gz"
            view["urls"] = [
                f"{self.base_url}/sandbox/exports/{export.id}/{n}.{extension}"
                for n in range(len(export.files))
            ]
            view["contact_count"] = export.contact_count
            view["completed_at"] = export.completed_at
        return view

    def export_view(self, export_id: str) -> dict[str, Any] | None:
        with self._locked():
            export = self._exports.get(export_id)
            return None if export is None else self._export_view(export)

    def export_views(self) -> list[dict[str, Any]]:
        with self._locked():
            return [self._export_view(export) for export in self._exports.values()]

    def export_file(self, export_id: str, index: int, file_type: str) -> bytes | None:
        with self._locked():
            export = self._exports.get(export_id)
            if export is None or export.file_type != file_type or index >= len(export.files):
                return None
            return export.files[index]

    # -- suppressions (GET /v3/suppression/<kind>, GET /v3/asm/groups/{id}/suppressions) ---------
    def add_suppression(
        self,
        kind: str,
        email: str,
        created: int,
        reason: str | None = None,
        status: str | None = None,
    ) -> None:
        """Record a suppression of `kind` (unsubscribes, bounces...) as SendGrid would.

        One record per address and kind (compared without case): adding it again replaces it,
        with its new `created`. The address keeps the case it was given, as SendGrid's does.
        """
        record: dict[str, Any] = {"created": int(created), "email": email}
        if reason is not None:
            record["reason"] = reason
        if status is not None:
            record["status"] = status
        with self._lock:
            self._suppressions.setdefault(kind, {})[email.lower()] = record

    def remove_suppression(self, kind: str, email: str) -> None:
        """Delete a suppression (the recipient resubscribed, or it was deleted by hand)."""
        with self._lock:
            self._suppressions.get(kind, {}).pop(email.lower(), None)

    def suppressions_page(
        self, kind: str, start: int | None, end: int | None, offset: int, limit: int
    ) -> list[dict[str, Any]]:
        """Records created in [start, end] (both inclusive), newest first, one page of them."""
        with self._lock:
            records = [
                dict(record)
                for record in self._suppressions.get(kind, {}).values()
                if (start is None or record["created"] >= start)
                and (end is None or record["created"] <= end)
            ]
        records.sort(key=lambda r: (-r["created"], r["email"].lower()))
        return records[offset : offset + limit]

    def clear_suppressions(self) -> None:
        """Forget every suppression and group (between generated test cases)."""
        with self._lock:
            self._suppressions.clear()
            self._groups.clear()

    def create_suppression_group(self, group_id: int) -> None:
        with self._lock:
            self._groups.setdefault(int(group_id), {})

    def add_group_suppression(self, group_id: int, email: str, created: int | None = None) -> None:
        """Unsubscribe an address from one ASM group (the group is created if needed)."""
        with self._lock:
            members = self._groups.setdefault(int(group_id), {})
            members[email] = int(created if created is not None else time.time())

    def remove_group_suppression(self, group_id: int, email: str) -> None:
        with self._lock:
            members = self._groups.get(int(group_id), {})
            for known in [e for e in members if e.lower() == email.lower()]:
                del members[known]

    def group_suppressions(self, group_id: int) -> list[str] | None:
        """The group's suppressed addresses, or None for a group that does not exist."""
        with self._lock:
            members = self._groups.get(int(group_id))
            return None if members is None else list(members)
