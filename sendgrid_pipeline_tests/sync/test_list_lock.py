"""One writer per list: overlapping syncs of one destination never interleave."""

from __future__ import annotations

import signal
import subprocess
import sys
import threading
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from sendgrid_pipeline.state import StateStoreError, SyncStateStore
from sendgrid_pipeline_tests.sync.support import (
    DESTINATION,
    LIST_ID,
    emails,
    on_list,
    open_store,
    people,
    sent_contacts,
    sync,
)

NAMES = [f"p{i:02}" for i in range(40)]


def test_two_syncs_of_one_list_at_once_send_each_contact_once(sandbox, state_at) -> None:
    target = people(*NAMES)
    with ThreadPoolExecutor(max_workers=2) as pool:
        reports = list(
            pool.map(lambda _: sync(sandbox, state_at, target, max_contacts_per_upsert=5), [1, 2])
        )
    assert on_list(sandbox) == emails(target)
    assert sent_contacts(sandbox) == len(NAMES)  # the second plan saw the first one's work
    assert sorted(r.upserted for r in reports) == [0, len(NAMES)]


def test_a_sync_that_cannot_get_the_list_names_the_run_holding_it(sandbox, state_at) -> None:
    store = open_store(state_at)
    with (
        store.list_lock(DESTINATION.name, LIST_ID, "run-holding-the-list"),
        pytest.raises(StateStoreError, match="run-holding-the-list"),
    ):
        sync(sandbox, state_at, people(*NAMES[:3]), lock_wait_seconds=0.5)
    assert sent_contacts(sandbox) == 0


def test_a_killed_holder_frees_the_list(sandbox, state_at) -> None:
    open_store(state_at)  # creates the state and its folder
    holder = subprocess.Popen(
        [
            sys.executable,
            "-c",
            "import sys, time; from pathlib import Path;"
            "from sendgrid_pipeline_tests.sync.support import open_store;"
            f"store = open_store({str(state_at)!r});"
            f"lock = store.list_lock({DESTINATION.name!r}, {LIST_ID!r}, 'doomed-run');"
            "lock.__enter__(); print('held', flush=True); time.sleep(600)",
        ],
        stdout=subprocess.PIPE,
        text=True,
        cwd=Path(__file__).resolve().parents[2],
    )
    try:
        assert holder.stdout.readline().strip() == "held"
        holder.send_signal(signal.SIGKILL)
        holder.wait(timeout=30)
        # a lock the dead process still held would make this fail after its wait
        sync(sandbox, state_at, people(*NAMES[:3]), lock_wait_seconds=30)
        assert on_list(sandbox) == emails(people(*NAMES[:3]))
    finally:
        holder.kill()


def test_many_openers_of_a_new_state_at_once_all_succeed(tmp_path) -> None:
    """SQLite only: creating the file (and its WAL mode) is never 'database is locked'."""
    for attempt in range(20):
        path = tmp_path / f"fresh-{attempt}" / "sync_state.sqlite"
        start = threading.Barrier(8)

        def open_new(_: int, path=path, start=start) -> int:
            start.wait()
            return SyncStateStore(path).has_uncertain("d", "l")

        with ThreadPoolExecutor(max_workers=8) as pool:
            assert list(pool.map(open_new, range(8))) == [0] * 8


def test_two_sync_processes_of_one_list_send_each_contact_once(sandbox, state_at, tmp_path) -> None:
    """Two processes (as two pods would) started together: one waits for the other."""
    open_store(state_at)  # the schema exists before both start
    target = people(*NAMES)
    desired = tmp_path / "desired.parquet"
    target.write_parquet(desired)
    command = [
        sys.executable,
        "-m",
        "sendgrid_pipeline_tests.sync.crash_worker",
        sandbox.base_url,
        str(state_at),
        str(desired),
        "0",  # never killed
    ]
    workers = [
        subprocess.Popen(
            command,
            stdin=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            cwd=Path(__file__).resolve().parents[2],
        )
        for _ in range(2)
    ]
    for worker in workers:
        _, errors = worker.communicate(sandbox.api_key + "\n", timeout=180)
        assert worker.returncode == 0, errors[-3000:]
    assert on_list(sandbox) == emails(target)
    assert sent_contacts(sandbox) == len(NAMES)  # the second one planned from the first's work
