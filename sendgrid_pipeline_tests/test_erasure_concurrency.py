"""Erasure runs never overlap, and a killed run's request file does not wait for ever.

Real Dagster runs against the sandbox on loopback: two erasure runs started at once over
overlapping people (two threads, each a run of its own file) erase each person once, the one
that waits finds the first one's people `already_erased`; a run that cannot get the ledger's
lock in time fails naming the run that holds it and sends nothing, and the sensor's retry run
finishes its people; a killed run's file is archived by a sensor tick once the ledger shows its
people erased, while a file the brake refused stays waiting and is never retried.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import threading
from collections import Counter
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import dagster as dg
import polars as pl
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import sendgrid_pipeline.erasure as erasure_engine
import sendgrid_pipeline.erasure_ledger as erasure_ledger_module
from sendgrid_pipeline.assets.erasures import ERASURE_FILE_TAG, ERASURE_JOB, ERASURE_RETRY_TAG
from sendgrid_pipeline.config import load_config
from sendgrid_pipeline.erasure import ROW_SCHEMA, email_hash
from sendgrid_pipeline.erasure_ledger import (
    ERASED,
    PENDING,
    WITHDRAWN,
    SqliteErasureLedger,
    erasure_ledger,
)
from sendgrid_pipeline.pipeline import PipelineResources
from sendgrid_pipeline.state import SyncStateResource, SyncStateStore
from sendgrid_pipeline_tests.deploy.conftest import postgres_dsn  # noqa: F401 (a fixture)
from sendgrid_pipeline_tests.devkit.sandbox import SandboxServer
from sendgrid_pipeline_tests.helpers import (
    definitions,
    export,
    resources_for,
    step_failure_messages,
)
from sendgrid_pipeline_tests.test_erasure import drop_request, enable_recipient_erasure
from sendgrid_pipeline_tests.test_erasure_crash import (
    audit_records,
    killed_erasure,
    launch_tags,
    run_sensor_until_quiet,
    sensor_requests,
)

CONTACTS_PATH = "/v3/marketing/contacts"


class DeletionRecorder:
    """Stands where the sandbox's contract checker stands: every contact id each
    DELETE /v3/marketing/contacts asked to delete (an answered request or not)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.ids: list[str] = []

    def check(self, method: str, path: str, query: Any, body: bytes) -> None:
        if method == "DELETE" and path.rstrip("/") == CONTACTS_PATH:
            asked = ",".join(query.get("ids", []))
            with self._lock:
                self.ids += [i for i in asked.split(",") if i]


@pytest.fixture
def deletions() -> DeletionRecorder:
    return DeletionRecorder()


@pytest.fixture
def recording_sandbox(data_dir: Path, deletions: DeletionRecorder) -> Iterator[SandboxServer]:
    lists = SandboxServer.lists_from_destinations_file(data_dir / "destinations.yaml")
    with SandboxServer(lists=lists, job_delay_seconds=0.02, contract=deletions) as server:  # type: ignore[arg-type]
        yield server


def prepared(
    data_dir: Path, sandbox: SandboxServer, dsn: str | None
) -> tuple[PipelineResources, dg.DagsterInstance, list[str]]:
    """Recipient erasure on, the sample exported; (resources, instance, people on the lists)."""
    enable_recipient_erasure(data_dir)
    resources = resources_for(data_dir, sandbox)
    if dsn:
        state = SyncStateResource(directory=str(data_dir / "state"), dsn=dsn)
        resources = dataclasses.replace(resources, sync_state=state)
    instance = dg.DagsterInstance.ephemeral()
    first = export(data_dir, sandbox, instance=instance, resources=resources)
    assert first.success, step_failure_messages(first)
    config = load_config(data_dir)
    people = sorted({e for d in config.destinations for e in sandbox.list_member_emails(d.list_id)})
    return resources, instance, people


class Rendezvous:
    """Holds each run, once it found its people's contact ids, until the other run found
    theirs too, or is waiting for the ledger's lock. Without the lock both runs pass it with
    the same people in hand, and both send their deletion; with it, the second run waits."""

    def __init__(self) -> None:
        self._state = threading.Condition()
        self.arrived = 0
        self.waited: list[str] = []

    def arrive(self) -> None:
        with self._state:
            self.arrived += 1
            self._state.notify_all()
            met = self._state.wait_for(lambda: self.arrived >= 2 or self.waited, timeout=120)
        assert met, "neither did the other run find its people nor wait for the lock"

    def waiting(self, holder: str) -> None:
        with self._state:
            self.waited.append(holder)
            self._state.notify_all()


def install(monkeypatch: pytest.MonkeyPatch, meeting: Rendezvous) -> None:
    found = erasure_engine.contact_ids

    def contact_ids(client: Any, emails: list[str]) -> dict[str, str]:
        ids = found(client, emails)
        meeting.arrive()
        return ids

    wait_for_lock = erasure_ledger_module._wait_for_lock

    def wait(
        try_lock: Callable[[], bool],
        holder: Callable[[], str],
        where: str,
        seconds: float,
        on_wait: Callable[[str], None] | None,
    ) -> None:
        def told(run: str) -> None:
            meeting.waiting(run)
            if on_wait is not None:
                on_wait(run)

        wait_for_lock(try_lock, holder, where, seconds, told)

    monkeypatch.setattr(erasure_engine, "contact_ids", contact_ids)
    monkeypatch.setattr(erasure_ledger_module, "_wait_for_lock", wait)


def two_runs_at_once(
    data_dir: Path,
    sandbox: SandboxServer,
    deletions: DeletionRecorder,
    monkeypatch: pytest.MonkeyPatch,
    dsn: str | None,
) -> None:
    resources, _, people = prepared(data_dir, sandbox, dsn)
    first, both, second = people[:1], people[1:3], people[3:4]
    everyone = [*first, *both, *second]
    ids = {e: sandbox.contact(e)["id"] for e in everyone}  # type: ignore[index]
    drop_request(data_dir, "one.csv", "email\n" + "\n".join(first + both) + "\n")
    drop_request(data_dir, "two.csv", "email\n" + "\n".join(both + second) + "\n")
    meeting = Rendezvous()
    install(monkeypatch, meeting)
    jobs = {
        name: definitions(data_dir, resources=resources).resolve_job_def(ERASURE_JOB)
        for name in ("one.csv", "two.csv")
    }
    results: dict[str, dg.ExecuteInProcessResult] = {}

    def run(name: str) -> None:
        with dg.DagsterInstance.ephemeral() as instance:  # its storage closed in its thread
            results[name] = jobs[name].execute_in_process(
                instance=instance, tags={ERASURE_FILE_TAG: name}, raise_on_error=False
            )

    threads = [threading.Thread(target=run, args=(name,)) for name in jobs]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=300)
    assert set(results) == set(jobs), "a run never ended"
    for name, result in results.items():
        assert result.success, f"{name}: {step_failure_messages(result)}"
    sandbox.wait_for_idle()

    assert Counter(deletions.ids) == Counter(ids.values()), "each person deleted once"
    asked = Counter(e for _, emails in sandbox.erasure_jobs() for e in emails)
    assert asked == Counter(everyone), "each person's data erased once"
    assert len(meeting.waited) == 1, "the second run waited for the first"
    holder = meeting.waited[0]
    assert holder in {r.run_id for r in results.values()}, "the waiter named the holder"

    records = audit_records(data_dir)
    completions = Counter(
        r["email_sha256"] for r in records if r["record"] == "person" and r["status"] == ERASED
    )
    assert completions == Counter({email_hash(e): 1 for e in everyone}), records
    later = [r for r in records if r["record"] == "run" and r["run_id"] != holder]
    assert len(later) == 1
    later_people = {
        r["email_sha256"]: r["status"]
        for r in records
        if r["record"] == "person" and r["request_file"] in later[0]["request_files"]
    }
    for email in both:  # the first run erased them: the second saw it, and sent nothing
        assert later_people[email_hash(email)] == "already_erased", later_people
    ledger = erasure_ledger(resources.sync_state)
    assert ledger.subjects()[["email", "status"]].rows() == sorted((e, ERASED) for e in everyone)
    assert list((data_dir / "erasures").glob("*.csv")) == [], "both files archived"


def test_two_erasure_runs_at_once_erase_each_person_once(
    data_dir: Path,
    recording_sandbox: SandboxServer,
    deletions: DeletionRecorder,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    two_runs_at_once(data_dir, recording_sandbox, deletions, monkeypatch, None)


def test_two_erasure_runs_at_once_on_the_postgres_state(
    data_dir: Path,
    recording_sandbox: SandboxServer,
    deletions: DeletionRecorder,
    monkeypatch: pytest.MonkeyPatch,
    postgres_dsn: str,  # noqa: F811
) -> None:
    two_runs_at_once(data_dir, recording_sandbox, deletions, monkeypatch, postgres_dsn)


def held_lock_times_out(
    data_dir: Path,
    sandbox: SandboxServer,
    deletions: DeletionRecorder,
    monkeypatch: pytest.MonkeyPatch,
    dsn: str | None,
) -> None:
    resources, instance, people = prepared(data_dir, sandbox, dsn)
    person = people[0]
    drop_request(data_dir, "late.csv", f"email\n{person}\n")
    ledger = erasure_ledger(resources.sync_state)
    monkeypatch.setattr(erasure_ledger_module, "ERASURE_LOCK_WAIT_SECONDS", 0.5)
    job = definitions(data_dir, resources=resources).resolve_job_def(ERASURE_JOB)
    (request,) = sensor_requests(data_dir, resources, instance)
    sandbox.reset_request_log()
    with ledger.run_lock("holding-run-4711"):
        refused = job.execute_in_process(
            instance=instance, tags={**request.tags, **launch_tags(request)}, raise_on_error=False
        )
    assert not refused.success
    message = step_failure_messages(refused)
    assert "erasure run holding-run-4711 holds it" in message, message
    writes = [r.path for r in sandbox.requests if r.method in ("DELETE", "PUT", "POST")]
    assert [p for p in writes if "/search" not in p] == [], "nothing sent by the waiting run"
    assert deletions.ids == [] and sandbox.erasure_jobs() == []
    # recorded before it waited: blocked from every sync, and pending for the retry run
    assert ledger.subjects()[["email", "status"]].rows() == [(person, PENDING)]
    assert (data_dir / "erasures" / "late.csv").exists()
    statuses = [(r["email_sha256"], r["status"]) for r in audit_records(data_dir)[1:]]
    assert statuses == [(email_hash(person), PENDING)], "audited: recorded, not erased"

    # the lock is free: the sensor's retry run erases the person, a tick archives the file
    launched = run_sensor_until_quiet(data_dir, resources, instance)
    assert [ERASURE_RETRY_TAG in tags for tags in launched] == [True], launched
    sandbox.wait_for_idle()
    assert deletions.ids == [sandbox_id_of(deletions, person, sandbox)]
    assert ledger.subjects()[["email", "status"]].rows() == [(person, ERASED)]
    assert list((data_dir / "erasures").glob("*.csv")) == []
    notes = list((data_dir / "erasures" / "archive").glob("late.*.result.txt"))
    assert len(notes) == 1 and "carried out by later erasure runs" in notes[0].read_text()
    assert "failure" in notes[0].read_text(), "the note names the failed run"
    records = audit_records(data_dir)
    erased = [r for r in records if r["record"] == "person" and r["status"] == ERASED]
    assert [r["email_sha256"] for r in erased] == [email_hash(person)], records


def sandbox_id_of(deletions: DeletionRecorder, email: str, sandbox: SandboxServer) -> str:
    """The one id deleted, checked against the person's address (the contact is gone)."""
    (only,) = deletions.ids
    assert sandbox.contact(email) is None and email in sandbox.deleted_emails()
    return only


def test_a_held_lock_fails_the_run_naming_its_holder_and_the_retry_finishes(
    data_dir: Path,
    recording_sandbox: SandboxServer,
    deletions: DeletionRecorder,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    held_lock_times_out(data_dir, recording_sandbox, deletions, monkeypatch, None)


def test_a_held_lock_on_the_postgres_state(
    data_dir: Path,
    recording_sandbox: SandboxServer,
    deletions: DeletionRecorder,
    monkeypatch: pytest.MonkeyPatch,
    postgres_dsn: str,  # noqa: F811
) -> None:
    held_lock_times_out(data_dir, recording_sandbox, deletions, monkeypatch, postgres_dsn)


def test_a_killed_runs_file_is_archived_and_a_refused_file_stays_unretried(
    data_dir: Path, recording_sandbox: SandboxServer, deletions: DeletionRecorder
) -> None:
    sandbox = recording_sandbox
    resources, instance, _ = prepared(data_dir, sandbox, None)
    config = load_config(data_dir)
    target = sorted(sandbox.list_member_emails(config.destinations[0].list_id))
    pair, half = target[:2], target[2 : 2 + len(target) // 2]
    job = definitions(data_dir, resources=resources).resolve_job_def(ERASURE_JOB)

    # gdpr-0001.csv: its run is killed once the pair is marked erased, before its audit
    drop_request(data_dir, "gdpr-0001.csv", "email\n" + "\n".join(pair) + "\n")
    (request,) = sensor_requests(data_dir, resources, instance)
    run = instance.create_run_for_job(job, tags={**request.tags, **launch_tags(request)})
    killed_erasure(data_dir, sandbox, None, "marked")
    instance.report_run_failed(run)  # what Dagster's run monitoring says of a killed run
    ledger = erasure_ledger(resources.sync_state)
    assert ledger.subjects()[["email", "status"]].rows() == [(e, ERASED) for e in pair]

    # a mass erasure: the brake refuses it, nothing recorded
    drop_request(data_dir, "mass.csv", "email\n" + "\n".join(half) + "\n")
    (mass,) = sensor_requests(data_dir, resources, instance)
    assert mass.tags[ERASURE_FILE_TAG] == "mass.csv"
    assert not (data_dir / "erasures" / "gdpr-0001.csv").exists(), "archived by that tick"
    refused = job.execute_in_process(
        instance=instance, tags={**mass.tags, **launch_tags(mass)}, raise_on_error=False
    )
    assert not refused.success and "allow_mass_erasure" in step_failure_messages(refused)

    # the pair's audit lines are owed: one retry run, which does not read mass.csv again
    launched = run_sensor_until_quiet(data_dir, resources, instance)
    assert [ERASURE_RETRY_TAG in tags for tags in launched] == [True], launched
    assert run_sensor_until_quiet(data_dir, resources, instance) == [], "quiet: not retried"
    assert [p.name for p in (data_dir / "erasures").glob("*.csv")] == ["mass.csv"]
    assert set(ledger.subjects()["email"]) == set(pair), "the refused file was never recorded"
    notes = [p.read_text() for p in (data_dir / "erasures" / "archive").glob("*.result.txt")]
    assert len(notes) == 1 and "carried out by later erasure runs" in notes[0], notes
    assert f"run {run.run_id} failure" in notes[0]

    sandbox.wait_for_idle()
    assert Counter(sandbox.deleted_emails()) == Counter(pair)
    records = audit_records(data_dir)
    completions = Counter(
        r["email_sha256"] for r in records if r["record"] == "person" and r["status"] == ERASED
    )
    assert completions == Counter({email_hash(e): 1 for e in pair}), records
    assert not any(e in json.dumps(records) for e in pair), "an address in clear"


people_emails = st.sampled_from([f"p{n}@example.com" for n in range(6)])
customer = st.sampled_from(["C1", "C2", "C3"])


@settings(max_examples=60, deadline=None)
@given(
    ledger_rows=st.dictionaries(
        people_emails, st.tuples(customer, st.sampled_from([PENDING, ERASED, WITHDRAWN]))
    ),
    file_rows=st.lists(
        st.tuples(
            st.none() | people_emails, st.none() | customer, st.sampled_from(["erase", "withdraw"])
        ).filter(lambda row: row[0] is not None or row[1] is not None),
        max_size=6,
    ),
)
def test_a_file_is_carried_out_when_the_ledger_shows_each_of_its_rows_done(
    tmp_path_factory: pytest.TempPathFactory,
    ledger_rows: dict[str, tuple[str, str]],
    file_rows: list[tuple[str | None, str | None, str]],
) -> None:
    ledger = SqliteErasureLedger(tmp_path_factory.mktemp("ledger") / "sync_state.sqlite")
    subjects = pl.DataFrame(
        [(e, c, None) for e, (c, _) in sorted(ledger_rows.items())],
        schema={"email": pl.String, "customer_id": pl.String, "requested_by": pl.String},
        orient="row",
    )
    ledger.record(subjects, "earlier.csv")
    ledger.mark_erased([e for e, (_, s) in ledger_rows.items() if s == ERASED])
    ledger.withdraw([e for e, (_, s) in ledger_rows.items() if s == WITHDRAWN], [])
    rows = pl.DataFrame(
        [("f.csv", n + 1, e, c, a, None) for n, (e, c, a) in enumerate(file_rows)],
        schema=ROW_SCHEMA,
        orient="row",
    )
    status = {e: s for e, (_, s) in ledger_rows.items()}
    of_id: dict[str, list[str]] = {}
    for c, s in ledger_rows.values():
        of_id.setdefault(c, []).append(s)

    def done(email: str | None, cid: str | None, action: str) -> bool:
        if action == "erase" and email is not None:
            return status.get(email) in (ERASED, WITHDRAWN)
        if action == "erase":
            return bool(of_id.get(cid)) and PENDING not in of_id[cid]
        blocked_email = email is not None and status.get(email) in (PENDING, ERASED)
        blocked_id = cid is not None and any(s != WITHDRAWN for s in of_id.get(cid, []))
        return not blocked_email and not blocked_id

    assert ledger.carried_out(rows) == all(done(*row) for row in file_rows)


def test_locks_are_taken_in_one_order_erasure_then_lists(
    data_dir: Path, sandbox: SandboxServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    """An erasure takes the erasure lock, then list locks one at a time; a sync takes list
    locks only: no two runs can each hold a lock the other waits for."""
    events: list[tuple[str, str]] = []  # (lock, "+" taken | "-" released)

    def logged(name: str, original: Callable[..., Any]) -> Callable[..., Any]:
        @contextlib.contextmanager
        def wrapper(*args: Any, **kwargs: Any) -> Iterator[None]:
            with original(*args, **kwargs):
                events.append((name, "+"))
                try:
                    yield
                finally:
                    events.append((name, "-"))

        return wrapper

    monkeypatch.setattr(SyncStateStore, "list_lock", logged("list", SyncStateStore.list_lock))
    monkeypatch.setattr(
        SqliteErasureLedger, "run_lock", logged("erasure", SqliteErasureLedger.run_lock)
    )
    resources, instance, _ = prepared(data_dir, sandbox, None)
    synced = list(events)
    assert ("list", "+") in synced and ("erasure", "+") not in synced, synced
    events.clear()
    config = load_config(data_dir)
    lists = [sandbox.list_member_emails(d.list_id) for d in config.destinations]
    on_two = sorted(set.intersection(*lists[:2]))[0]
    drop_request(data_dir, "order.csv", f"email\n{on_two}\n")
    job = definitions(data_dir, resources=resources).resolve_job_def(ERASURE_JOB)
    result = job.execute_in_process(instance=instance, raise_on_error=False)
    assert result.success, step_failure_messages(result)
    assert events[0] == ("erasure", "+") and events[-1] == ("erasure", "-"), events
    inner = events[1:-1]
    assert inner.count(("list", "+")) >= 2, "the person was on two lists"
    assert inner == [("list", "+"), ("list", "-")] * (len(inner) // 2), "one list at a time"
