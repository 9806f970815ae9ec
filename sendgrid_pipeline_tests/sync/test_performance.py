"""The sync's shape where users feel its speed (issue 15): one state connection per sync,
removals sent while the upserts' jobs run and every job polled as one set, and no reconcile
from a list count that only lags behind our own jobs."""

from __future__ import annotations

import threading
from datetime import timedelta
from pathlib import Path

import polars as pl
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from sendgrid_pipeline.sendgrid.client import SendGridClient
from sendgrid_pipeline.state import SyncStateStore
from sendgrid_pipeline.sync.apply import DestinationSync, SyncOptions
from sendgrid_pipeline_tests.devkit.sandbox import SandboxServer
from sendgrid_pipeline_tests.devkit.sandbox.latency import LatencyModel
from sendgrid_pipeline_tests.sync.support import (
    DESTINATION,
    LIST_ID,
    log,
    on_list,
    people,
    recorded,
    sync,
)


def _rows(*emails: str) -> pl.DataFrame:
    return pl.DataFrame(
        {"email": list(emails), "contact_json": [f'{{"email":"{e}"}}' for e in emails]}
    )


def test_a_list_handle_works_through_one_connection_until_closed(tmp_path: Path) -> None:
    store = SyncStateStore(tmp_path / "state.sqlite")
    state = store.for_list("d", "l")
    for n in range(20):  # a sync's calls: intents, job ids, confirmations, reads
        intent = state.write_intent("upsert", _rows(f"p{n}@x.io"), "run-1")
        state.intent_sent(intent, f"job-{n}")
        state.confirm_upsert(intent, _rows(f"p{n}@x.io"))
        assert state.member_count() == n + 1 and state.intents() == []
    assert store.connections_opened == 1  # the file's creation included
    state.close()
    assert store._db is None
    assert state.generation() == 20  # usable again: a new connection
    assert store.connections_opened == 2


def test_a_sync_uses_one_state_connection_and_closes_it(
    sandbox: SandboxServer, tmp_path: Path
) -> None:
    path = tmp_path / "state.sqlite"
    sync(sandbox, path, people("ann", "bob", "cy"))
    store = SyncStateStore(path)
    client = SendGridClient(sandbox.api_key, sandbox.base_url, poll_interval_seconds=0.01)
    DestinationSync(client, store, DESTINATION, log).run(people("ann", "dee"))
    assert on_list(sandbox) == {"ann@example.com", "dee@example.com"}
    assert store.connections_opened == 1 and store._db is None


@settings(
    max_examples=5, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(threads=st.integers(2, 6), per_thread=st.integers(1, 15))
def test_threads_share_the_connection_safely(tmp_path: Path, threads: int, per_thread: int) -> None:
    path = tmp_path / f"state-{threads}-{per_thread}.sqlite"
    state = SyncStateStore(path).for_list("d", "l")
    errors: list[BaseException] = []

    def work(worker: int) -> None:
        try:
            for n in range(per_thread):
                email = f"w{worker}-{n}@x.io"
                intent = state.write_intent("upsert", _rows(email), f"run-{worker}")
                state.confirm_upsert(intent, _rows(email))
        except BaseException as error:  # reported below, not lost in the thread
            errors.append(error)

    workers = [threading.Thread(target=work, args=(w,)) for w in range(threads)]
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join()
    assert errors == []
    assert state.member_count() == threads * per_thread
    assert state.generation() == threads * per_thread and state.intents() == []
    state.close()


def test_removals_are_sent_before_the_upserts_jobs_are_polled(tmp_path: Path) -> None:
    """In the sandbox's request log: every removal precedes the first job status read, and
    the status reads follow the order the jobs were submitted in."""
    path = tmp_path / "state.sqlite"
    with SandboxServer(lists={LIST_ID: "Test list"}, job_delay_seconds=0.2) as sandbox:
        staying = [f"s{n}" for n in range(5)]
        leaving = [f"l{n}" for n in range(250)]
        sync(sandbox, path, people(*staying, *leaving))
        sandbox.reset_request_log()
        report = sync(
            sandbox,
            path,
            people(*staying, "new1", "new2", renamed={"s0": "Changed"}),
            allow_mass_removal=True,
        )
        log_ = sandbox.requests
        assert on_list(sandbox) == {f"{n}@example.com" for n in [*staying, "new1", "new2"]}
        assert recorded(path) == on_list(sandbox)
        assert (report.upserted, report.removed) == (3, 250)
    kinds = [r.kind for r in log_]
    first_status = kinds.index("job_status")
    assert kinds.count("remove") == 3
    assert max(i for i, k in enumerate(kinds) if k in ("upsert", "remove")) < first_status
    submitted = [r for r in log_ if r.kind in ("upsert", "remove")]
    assert len(submitted) == len(report.job_ids) == 4
    polled = [r.path.rsplit("/", 1)[-1] for r in log_ if r.kind == "job_status"]
    # each job's status is read until it ended, then the next one's, never an earlier one's
    order = [report.job_ids.index(job) for job in polled]
    assert order == sorted(order) and set(order) == {0, 1, 2, 3}


def test_a_count_lagging_behind_our_own_jobs_triggers_no_reconcile(tmp_path: Path) -> None:
    path = tmp_path / "state.sqlite"
    lagging = LatencyModel.fixed(0.01).with_changes({"count_lag_seconds": 3600})
    with SandboxServer(lists={LIST_ID: "Test list"}, latency=lagging) as sandbox:
        sync(sandbox, path, people("ann", "bob", "cy"))
        sandbox.reset_request_log()
        # the list's count still shows the list of an hour ago (empty): an unchanged rerun
        report = sync(sandbox, path, people("ann", "bob", "cy"))
        kinds = [r.kind for r in sandbox.requests]
        assert report.list_count_before < 3 and report.reconciled == ""
        assert "export_start" not in kinds and "upsert" not in kinds and "remove" not in kinds

        # once our last change is older than the settling time, a low count is believed
        client = SendGridClient(sandbox.api_key, sandbox.base_url, poll_interval_seconds=0.01)
        engine = DestinationSync(client, SyncStateStore(path), DESTINATION, log, SyncOptions())
        engine.reconciler.count_settle = timedelta(0)
        sandbox.reset_request_log()
        report = engine.run(people("ann", "bob", "cy"))
        assert "holds" in report.reconciled
        assert "export_start" in [r.kind for r in sandbox.requests]


def test_the_recorded_count_is_reported_without_a_recount_only_when_nothing_changed(
    sandbox: SandboxServer, tmp_path: Path
) -> None:
    path = tmp_path / "state.sqlite"
    assert sync(sandbox, path, people("ann", "bob", "cy")).recorded_members == 3
    unchanged = sync(sandbox, path, people("ann", "bob", "cy"))
    assert unchanged.recorded_members == 3 and unchanged.plan.counts()["unchanged"] == 3
    grown = sync(sandbox, path, people("ann", "bob", "cy", "dee", "eve"))
    assert grown.recorded_members == 5 == len(recorded(path))
    shrunk = sync(sandbox, path, people("ann", "bob", "cy", "dee"))
    assert shrunk.recorded_members == 4 == len(recorded(path))


def test_writes_inside_a_transaction_commit_together_or_not_at_all(tmp_path: Path) -> None:
    store = SyncStateStore(tmp_path / "state.sqlite")
    state = store.for_list("d", "l")
    intents = [state.write_intent("upsert", _rows(f"p{n}@x.io"), "run-1") for n in range(3)]
    other = SyncStateStore(tmp_path / "state.sqlite").for_list("d", "l")  # another process
    try:
        with state.transaction():
            state.confirm_upsert(intents[0], _rows("p0@x.io"))
            state.confirm_upsert(intents[1], _rows("p1@x.io"))
            assert state.member_count() == 2 and other.member_count() == 0  # not yet committed
            raise RuntimeError("the process dies here")
    except RuntimeError:
        pass
    assert state.member_count() == 0 and len(state.intents()) == 3  # neither was recorded
    with state.transaction():
        for n, intent in enumerate(intents):
            state.confirm_upsert(intent, _rows(f"p{n}@x.io"))
    assert other.member_count() == 3 and other.intents() == [] and other.generation() == 3


@settings(
    max_examples=4, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(size=st.integers(1, 60), batch=st.integers(1, 7))
def test_run_log_lines_do_not_grow_with_the_number_of_requests(
    sandbox: SandboxServer, tmp_path_factory, caplog, size: int, batch: int
) -> None:
    """Each run-log line is an event the run storage writes (tens of ms with SQLite): a sync
    logs per phase and per polling round, never per batch or per job that went well."""
    state_at = tmp_path_factory.mktemp("state") / "state.sqlite"
    run = state_at.parent.name  # new people each example: the sandbox is the test's
    names = [f"{run}-p{n}" for n in range(size)]
    caplog.clear()
    with caplog.at_level("INFO", logger=log.name):
        report = sync(
            sandbox,
            state_at,
            people(*names),
            max_contacts_per_upsert=batch,
            allow_mass_removal=True,
        )
    assert report.upserted == size
    lines = [r.getMessage() for r in caplog.records if r.name == log.name]
    batches = -(-size // batch)
    assert sum("upsert batch(es) sent" in line for line in lines) == 1
    progress = [line for line in lines if "job(s) done and recorded" in line]
    assert 1 <= len(progress) <= batches
    assert progress[-1].endswith(f"{batches} of {batches} job(s) done and recorded")
    assert not any(" accepted, " in line for line in lines)  # no line per job without rejects
