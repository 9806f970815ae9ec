"""Erasure crash safety: SIGKILL a real erasure run at each step, change the world, rerun.

Each case: the sample data exported to the sandbox; a request file for two people who are on
two managed lists; the erasure job in a child process (erasure_crash_worker) that kills itself
with SIGKILL at one named point; then the world changes (one of the two is added back to the
profiles under a new customer id, another person's profile is edited, and a regular sync
runs in between); then the erasure sensor is ticked, and what it asks run, until it is quiet
(a request whose run key it already used is skipped, as Dagster skips it), before and after a
second request file arrives for a third person.

At the end every requested person must be off every list and deleted from the account once,
nobody else touched, the ledger must say erased for each, the audit files must hold exactly
one `erased` line per person (a killed audit write leaves only a hidden temporary file, never a
partial .jsonl), no request file may stay waiting (the killed run's file is archived by a
sensor tick once the ledger shows its people erased), and no upsert body the sandbox
received after a person was recorded may carry their address.
"""

from __future__ import annotations

import dataclasses
import json
import os
import signal
import subprocess
import sys
import threading
import time
from collections import Counter
from pathlib import Path

import dagster as dg
import polars as pl
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from sendgrid_pipeline.assets.erasures import (
    ERASURE_FILE_TAG,
    ERASURE_JOB,
    ERASURE_RETRY_TAG,
    ERASURE_SENSOR,
)
from sendgrid_pipeline.config import load_config
from sendgrid_pipeline.erasure import ErasureOutcome, audit_lines, audit_people, email_hash
from sendgrid_pipeline.erasure_ledger import ERASED, PENDING, erasure_ledger
from sendgrid_pipeline.pipeline import PipelineResources
from sendgrid_pipeline.state import SyncStateResource
from sendgrid_pipeline_tests.deploy.conftest import postgres_dsn  # noqa: F401 (a fixture)
from sendgrid_pipeline_tests.devkit.sandbox import SandboxServer
from sendgrid_pipeline_tests.devkit.sandbox.server import UPSERT_PATH
from sendgrid_pipeline_tests.erasure_crash_worker import KILL_POINTS
from sendgrid_pipeline_tests.helpers import (
    definitions,
    export,
    resources_for,
    step_failure_messages,
)
from sendgrid_pipeline_tests.sync.test_crash_soak import REPO
from sendgrid_pipeline_tests.test_erasure import drop_request, enable_recipient_erasure

# Here the sensor has no new file to run at first: it must ask for a retry run (the killed
# run's file keeps its run key, which Dagster never launches twice). Elsewhere the new file's
# run does the people the killed run left.
LATE_FILE = {"removal_sent", "before_mark", "audit_write", "audited"}
# The worker knows more points (KILL_POINTS); these keep the file's run time down, and
# SENDGRID_ERASURE_CRASH_POINTS=all runs every one.
POINTS = (
    list(KILL_POINTS)
    if os.environ.get("SENDGRID_ERASURE_CRASH_POINTS") == "all"
    else ["recorded", "removal_sent", "deletion_sent", "before_mark", "audit_write", "audited"]
)
POSTGRES_POINTS = ["deletion_sent", "audit_write"]  # the same cases on the PostgreSQL state


class UpsertRecorder:
    """Stands where the sandbox's contract checker stands: keeps every upsert body it sees,
    with the time it arrived, so a test can look for an address in what was sent."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.bodies: list[tuple[float, str]] = []

    def check(self, method: str, path: str, query: object, body: bytes) -> None:
        if method == "PUT" and path.rstrip("/") == UPSERT_PATH:
            with self._lock:
                self.bodies.append((time.time(), body.decode("utf-8", "replace").lower()))

    def sent_since(self, since: float, email: str) -> int:
        """Upsert bodies since `since` that carry `email` (as a JSON string)."""
        needle = json.dumps(email)
        with self._lock:
            return sum(1 for at, body in self.bodies if at >= since and needle in body)


def members(sandbox: SandboxServer, data_dir: Path) -> dict[str, set[str]]:
    return {
        d.list_id: sandbox.list_member_emails(d.list_id) for d in load_config(data_dir).destinations
    }


def choose_people(lists: dict[str, set[str]]) -> tuple[list[str], str, str]:
    """(two people on two lists, a third on a list, a bystander on a list), stable choices."""
    count = Counter(e for emails in lists.values() for e in emails)
    on_two = sorted(e for e, n in count.items() if n >= 2)
    rest = sorted(e for e in count if e not in on_two[:2])
    assert len(on_two) >= 2 and len(rest) >= 2, "the sample data has people on two lists"
    return on_two[:2], rest[0], rest[-1]


def change_profiles(data_dir: Path, erased: str, bystander: str) -> None:
    """`erased` comes back under a new customer id (in segments of every list); the
    bystander's first name changes."""
    path = data_dir / "profiles" / "profiles.csv"
    profiles = pl.read_csv(path, infer_schema=False)
    edited = profiles.with_columns(
        pl.when(pl.col("email").str.to_lowercase() == bystander)
        .then(pl.lit("Renamed"))
        .otherwise(pl.col("first_name"))
        .alias("first_name")
    )
    back = edited.filter(pl.col("email").str.to_lowercase() == erased).head(1)
    back = back.with_columns(
        pl.lit("C9999999").alias("customer_id"),
        pl.lit(f" {erased.upper()} ").alias("email"),
        pl.lit("gold").alias("loyalty_tier"),
        pl.lit("5000").alias("lifetime_value"),
        pl.lit("true").alias("email_opt_in"),
    )
    pl.concat([edited, back]).write_csv(path)


def killed_erasure(data_dir: Path, sandbox: SandboxServer, dsn: str | None, point: str) -> None:
    """The erasure job for gdpr-0001.csv in a child process that kills itself at `point`
    (the key goes on standard input, never on the command line)."""
    worker = "sendgrid_pipeline_tests.erasure_crash_worker"
    arguments = [str(data_dir), sandbox.base_url, dsn or "-", point, "gdpr-0001.csv"]
    pipe = subprocess.PIPE
    with subprocess.Popen(
        [sys.executable, "-m", worker, *arguments], stdin=pipe, stderr=pipe, text=True, cwd=REPO
    ) as child:
        _, errors = child.communicate(f"{sandbox.api_key}\n", timeout=180)
    assert child.returncode == -signal.SIGKILL, f"not killed at {point}:\n{errors[-3000:]}"


def audit_records(data_dir: Path) -> list[dict]:
    """Every line of every audit file (each must parse: no partial file is ever visible)."""
    records = []
    for path in sorted((data_dir / "reports" / "erasures").glob("*.jsonl")):
        records += [json.loads(line) for line in path.read_text().splitlines()]
    return records


SENSOR = ERASURE_SENSOR
SENSOR_TAGS = ("dagster/run_key", "dagster/sensor_name")


def sensor_requests(
    data_dir: Path, resources: PipelineResources, instance: dg.DagsterInstance
) -> list[dg.RunRequest]:
    """What one tick of the erasure sensor asks for that Dagster would launch: a request
    whose run key this sensor already used is skipped, as the sensor daemon skips it."""
    defs = definitions(data_dir, resources=resources)
    context = dg.build_sensor_context(
        instance=instance,
        definitions=defs,
        sensor_name=SENSOR,
        resources={"sync_state": resources.sync_state},
    )
    asked = defs.resolve_sensor_def(SENSOR).evaluate_tick(context).run_requests
    return [
        r
        for r in asked
        if not instance.get_runs(filters=dg.RunsFilter(tags=launch_tags(r)), limit=1)
    ]


def launch_tags(request: dg.RunRequest) -> dict[str, str]:
    return {SENSOR_TAGS[0]: request.run_key or "", SENSOR_TAGS[1]: SENSOR}


def run_sensor_until_quiet(
    data_dir: Path, resources: PipelineResources, instance: dg.DagsterInstance
) -> list[dict[str, str]]:
    """Tick the sensor and run what it asks, until a tick asks nothing new; the runs' tags."""
    job = definitions(data_dir, resources=resources).resolve_job_def(ERASURE_JOB)
    launched = []
    for _ in range(4):
        requests = sensor_requests(data_dir, resources, instance)
        if not requests:
            return launched
        for request in requests:
            tags = {**request.tags, **launch_tags(request)}
            result = job.execute_in_process(instance=instance, tags=tags, raise_on_error=False)
            assert result.success, step_failure_messages(result)
            launched.append(dict(request.tags))
    raise AssertionError(f"the erasure sensor never went quiet: {launched}")


def erase_kill_change_rerun(
    data_dir: Path,
    sandbox: SandboxServer,
    recorder: UpsertRecorder,
    point: str,
    dsn: str | None = None,
) -> None:
    enable_recipient_erasure(data_dir)
    resources: PipelineResources = resources_for(data_dir, sandbox)
    if dsn:
        state = SyncStateResource(directory=str(data_dir / "state"), dsn=dsn)
        resources = dataclasses.replace(resources, sync_state=state)
    instance = dg.DagsterInstance.ephemeral()
    first = export(data_dir, sandbox, instance=instance, resources=resources)
    assert first.success, step_failure_messages(first)
    before = members(sandbox, data_dir)
    pair, third, bystander = choose_people(before)
    assert recorder.sent_since(0, pair[0]) >= 1, "the recorder sees the upsert bodies"
    drop_request(
        data_dir, "gdpr-0001.csv", f"email,requested_by\n{pair[0]},dpo\n{pair[1].upper()},dpo\n"
    )

    # the sensor launches the file's run (its key recorded), whose process is killed
    (request,) = sensor_requests(data_dir, resources, instance)
    job = definitions(data_dir, resources=resources).resolve_job_def(ERASURE_JOB)
    run = instance.create_run_for_job(job, tags={**request.tags, **launch_tags(request)})
    recorded_at = time.time()
    killed_erasure(data_dir, sandbox, dsn, point)
    instance.report_run_failed(run)  # what Dagster's run monitoring says of a killed run
    ledger = erasure_ledger(resources.sync_state)
    assert set(ledger.subjects()["email"]) == set(pair), "the ledger lost a recorded person"
    marked = point in ("marked", "audit_write", "audited")
    assert set(ledger.subjects()["status"]) == {ERASED if marked else PENDING}
    partial = list((data_dir / "reports" / "erasures").glob(".*.tmp"))
    assert len(partial) == (point == "audit_write"), "a killed audit write: a hidden temp file"

    # the world changes while the two are half erased
    change_profiles(data_dir, pair[0], bystander)
    between = export(data_dir, sandbox, instance=instance, resources=resources)
    assert between.success, step_failure_messages(between)
    for list_id, emails in members(sandbox, data_dir).items():
        assert not emails & set(pair), f"a sync put a half-erased person back on {list_id}"
    assert sandbox.contact(bystander)["first_name"] == "Renamed"

    # the sensor takes over: a retry run while anyone is left over, the new file's run
    if point in LATE_FILE:
        retried = run_sensor_until_quiet(data_dir, resources, instance)
        assert [ERASURE_RETRY_TAG in tags for tags in retried] == [True], retried
        assert not (data_dir / "erasures" / "gdpr-0001.csv").exists(), "a tick archived it"
    drop_request(data_dir, "gdpr-0002.csv", f"email\n{third}\n")
    launched = run_sensor_until_quiet(data_dir, resources, instance)
    assert [tags.get(ERASURE_FILE_TAG) for tags in launched] == ["gdpr-0002.csv"], launched
    sandbox.wait_for_idle()

    erased = {*pair, third}
    after = members(sandbox, data_dir)
    for list_id, emails in after.items():
        assert emails == before[list_id] - erased, f"list {list_id} is not exactly right"
    assert all(sandbox.contact(e) is None for e in erased)
    assert Counter(sandbox.deleted_emails()) == Counter(erased), (
        "deleted: exactly the requested, once"
    )
    assert sandbox.delete_all_requests == 0
    asked = Counter(e for _, emails in sandbox.erasure_jobs() for e in emails)
    assert set(asked) == erased
    assert ledger.subjects()[["email", "status"]].rows() == sorted((e, ERASED) for e in erased)
    waiting = [p.name for p in (data_dir / "erasures").glob("*.csv")]
    assert waiting == [], "the new file is archived by its run, the killed run's by a tick"
    notes = [p.read_text() for p in (data_dir / "erasures" / "archive").glob("*.result.txt")]
    assert sum("carried out by later erasure runs" in n for n in notes) == 1, notes

    records = audit_records(data_dir)
    completions = Counter(
        r["email_sha256"] for r in records if r["record"] == "person" and r.get("status") == ERASED
    )
    assert completions == Counter({email_hash(e): 1 for e in erased}), records
    text = json.dumps(records).lower()
    assert not any(e in text for e in erased), "an address in clear in an audit file"

    for email in pair:
        assert recorder.sent_since(recorded_at, email) == 0, f"{point}: an erased person was sent"


@pytest.fixture
def recorder() -> UpsertRecorder:
    return UpsertRecorder()


@pytest.fixture
def crash_sandbox(data_dir: Path, recorder: UpsertRecorder):
    lists = SandboxServer.lists_from_destinations_file(data_dir / "destinations.yaml")
    with SandboxServer(lists=lists, job_delay_seconds=0.02, contract=recorder) as server:  # type: ignore[arg-type]
        yield server


@pytest.mark.parametrize("point", POINTS)
def test_sigkill_at_each_erasure_step_then_change_then_rerun_ends_exact(
    data_dir: Path, crash_sandbox: SandboxServer, recorder: UpsertRecorder, point: str
) -> None:
    erase_kill_change_rerun(data_dir, crash_sandbox, recorder, point)


@pytest.mark.parametrize("point", POSTGRES_POINTS)
def test_sigkill_of_an_erasure_on_the_postgres_state_ends_exact(
    data_dir: Path,
    crash_sandbox: SandboxServer,
    recorder: UpsertRecorder,
    point: str,
    postgres_dsn: str,  # noqa: F811
) -> None:
    erase_kill_change_rerun(data_dir, crash_sandbox, recorder, point, postgres_dsn)


emails = st.sampled_from([f"p{n}@example.com" for n in range(8)])


@settings(max_examples=200, deadline=None)
@given(
    requested=st.sets(emails),
    owed=st.sets(emails),
    status=st.dictionaries(emails, st.sampled_from([PENDING, ERASED, "withdrawn"])),
)
def test_an_audit_file_writes_the_owed_people_erased_once_and_every_requested_person(
    requested: set[str], owed: set[str], status: dict[str, str]
) -> None:
    """Owed people are erased in the ledger (that is how they became owed)."""
    status = {**status, **dict.fromkeys(owed, ERASED)}
    text = {"email": pl.String, "customer_id": pl.String, "file": pl.String}
    subjects = pl.DataFrame(
        [(e, None, "now.csv", "dpo") for e in sorted(requested)],
        schema={**text, "requested_by": pl.String},
        orient="row",
    )
    owed_rows = pl.DataFrame(
        [(e, "C1", "earlier.csv") for e in sorted(owed)],
        schema={"email": pl.String, "customer_id": pl.String, "request": pl.String},
        orient="row",
    )
    ledger = pl.DataFrame(list(status.items()), schema=["email", "status"], orient="row")
    people, statuses = audit_people(subjects, owed_rows, ledger)
    lines = audit_lines("run", ["now.csv"], people, people.clear(), ErasureOutcome(), [], statuses)
    persons = [json.loads(x) for x in lines.decode().splitlines()][1:]
    erased = Counter(p["email_sha256"] for p in persons if p["status"] == ERASED)
    assert erased == Counter({email_hash(e): 1 for e in owed})
    assert {p["email_sha256"] for p in persons} == {email_hash(e) for e in requested | owed}
    assert len(persons) == len(requested | owed)
    for person in persons:
        if person["status"] == "already_erased":
            assert person["email_sha256"] not in {email_hash(e) for e in owed}
