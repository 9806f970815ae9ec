"""The two sync-state stores keep the same record: SQLite (embedded) and PostgreSQL (shared).

Every test runs on both; the PostgreSQL variant needs the server CI starts.
"""

from __future__ import annotations

import subprocess
import sys
import threading
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

import polars as pl
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from sendgrid_pipeline.state import StateStoreError, SyncStateStore
from sendgrid_pipeline.state_postgres import PostgresSyncStateStore, masked_dsn

DEST, LIST = "vip", "list-1"


@pytest.fixture(params=["sqlite", "postgres"])
def store(request, tmp_path: Path):
    if request.param == "sqlite":
        return SyncStateStore(tmp_path / "state.sqlite")
    return PostgresSyncStateStore(request.getfixturevalue("postgres_dsn"))


def contacts(*emails: str, suffix: str = "") -> pl.DataFrame:
    return pl.DataFrame(
        {"email": list(emails), "contact_json": [f'{{"email":"{e}"{suffix}}}' for e in emails]},
        schema={"email": pl.String, "contact_json": pl.String},
    )


def test_an_upsert_is_recorded_only_when_confirmed(store) -> None:
    state = store.for_list(DEST, LIST)
    intent = state.write_intent("upsert", contacts("a@x.io", "b@x.io"), "run-1")
    assert state.members().is_empty() and [i.intent_id for i in state.intents()] == [intent]
    state.intent_sent(intent, "job-1")
    (pending,) = state.intents()
    assert pending.job_id == "job-1" and pending.rows.equals(contacts("a@x.io", "b@x.io"))
    state.confirm_upsert(intent, contacts("a@x.io", "b@x.io"))
    members = state.members()
    assert members["email"].to_list() == ["a@x.io", "b@x.io"]
    assert members["managed"].all() and not members["uncertain"].any()
    assert state.intents() == [] and state.generation() == 1 and state.member_count() == 2


def test_removal_uncertainty_adoption_and_ids(store) -> None:
    state = store.for_list(DEST, LIST)
    state.confirm_upsert(state.write_intent("upsert", contacts("a@x.io"), "r"), contacts("a@x.io"))
    state.mark_uncertain(None, ["a@x.io", "new@x.io"])
    assert state.has_uncertain() == 2
    uncertain = state.members().filter(pl.col("email") == "new@x.io")
    assert uncertain["contact_json"].to_list() == [""]  # an empty string, never a null
    state.record_contact_ids(pl.DataFrame({"email": ["a@x.io"], "contact_id": ["cid-a"]}))
    assert state.members().filter(pl.col("email") == "a@x.io")["contact_id"].item() == "cid-a"
    remove = state.write_intent("remove", pl.DataFrame({"email": ["a@x.io"]}), "r")
    state.confirm_remove(remove, ["a@x.io"])
    state.forget(["new@x.io"])
    assert state.members().is_empty() and state.intents() == []


def test_a_reconcile_replaces_the_record_and_keeps_unmanaged_members(store) -> None:
    state = store.for_list(DEST, LIST)
    assert not state.is_known()
    frame = pl.DataFrame(
        {
            "email": ["a@x.io", "b@x.io"],
            "contact_id": ["1", None],
            "contact_json": ['{"a": "x,\\"y\\"\\n"}', ""],
            "managed": [True, False],
        }
    )
    state.replace_members(frame)
    assert state.is_known() and state.last_reconciled() is not None
    got = state.members()
    assert got.select(frame.columns).equals(frame)
    state.adopt(pl.Series(["b@x.io"]))
    assert state.members()["managed"].all()


def test_lists_do_not_see_each_other(store) -> None:
    one, other = store.for_list(DEST, LIST), store.for_list(DEST, "list-2")
    one.confirm_upsert(one.write_intent("upsert", contacts("a@x.io"), "r"), contacts("a@x.io"))
    assert other.members().is_empty() and other.generation() == 0 and other.intents() == []


@settings(
    max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(
    st.lists(
        st.tuples(
            st.text(st.characters(blacklist_categories=["Cs"]), min_size=1, max_size=40),
            st.text(st.characters(blacklist_categories=["Cs"]), max_size=200),
        ),
        max_size=40,
        unique_by=lambda row: row[0],
    )
)
def test_any_text_round_trips_exactly(store, rows) -> None:
    """Quotes, commas, line breaks, NUL-free unicode, empty strings: stored as given."""
    rows = [(e.replace("\x00", ""), j.replace("\x00", "")) for e, j in rows]
    rows = list({e: (e, j) for e, j in rows if e}.values())
    state = store.for_list(DEST, f"prop-{time.monotonic_ns()}")
    frame = pl.DataFrame(rows, schema={"email": pl.String, "contact_json": pl.String}, orient="row")
    state.confirm_upsert(state.write_intent("upsert", frame, "r"), frame)
    got = state.members().select("email", "contact_json")
    assert got.sort("email").equals(frame.sort("email"))


def test_a_second_writer_waits_then_fails_naming_the_holder(store) -> None:
    with store.list_lock(DEST, LIST, "run-holding"):
        started = time.monotonic()
        with (
            pytest.raises(StateStoreError, match="run-holding"),
            store.list_lock(DEST, LIST, "run-waiting", wait_seconds=0.6),
        ):
            pass
        assert time.monotonic() - started >= 0.5
        with store.list_lock(DEST, "another-list", "run-other", wait_seconds=0):
            pass  # another list is free
    with store.list_lock(DEST, LIST, "run-next", wait_seconds=0):
        pass  # released on exit


def test_the_lock_serializes_threads(store) -> None:
    inside, overlaps = [], []

    def hold(n: int) -> None:
        with store.list_lock(DEST, LIST, f"run-{n}", wait_seconds=30):
            inside.append(n)
            if len(inside) > 1:
                overlaps.append(n)
            time.sleep(0.05)
            inside.remove(n)

    threads = [threading.Thread(target=hold, args=(n,)) for n in range(6)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert overlaps == []


HOLD_FOREVER = """
import sys, time
from pathlib import Path
from sendgrid_pipeline.state import SyncStateStore
from sendgrid_pipeline.state_postgres import PostgresSyncStateStore
where = sys.argv[1]
store = PostgresSyncStateStore(where) if "://" in where else SyncStateStore(Path(where))
with store.list_lock("vip", "list-1", "run-killed"):
    print("held", flush=True)
    time.sleep(600)
"""


def test_a_killed_holder_frees_the_list(store) -> None:
    where = getattr(store, "dsn", None) or str(store.path)
    holder = subprocess.Popen(
        [sys.executable, "-c", HOLD_FOREVER, where], stdout=subprocess.PIPE, text=True
    )
    try:
        assert holder.stdout.readline().strip() == "held"
        with (
            pytest.raises(StateStoreError, match="run-killed"),
            store.list_lock(DEST, LIST, "run-2", wait_seconds=0.3),
        ):
            pass
    finally:
        holder.kill()  # SIGKILL: no cleanup code runs
        holder.wait()
    with store.list_lock(DEST, LIST, "run-3", wait_seconds=10):
        pass


def test_messages_never_show_the_password() -> None:
    dsn = "postgresql://user:s3cret-pw@127.0.0.1:1/db"
    assert "s3cret" not in masked_dsn(dsn)
    with pytest.raises(StateStoreError) as raised:
        PostgresSyncStateStore(dsn, connect_timeout_seconds=2)
    assert "s3cret" not in str(raised.value) and raised.value.retryable


def test_the_snapshot_of_the_last_applied_plan_only_moves_forward(store) -> None:
    state = store.for_list(DEST, LIST)
    assert state.applied_snapshot() is None
    first = datetime(2026, 11, 29, 8, 0, 0, 123456, tzinfo=UTC)
    state.record_snapshot(first, "run-1")
    state.record_snapshot(first - timedelta(microseconds=1), "run-late")
    assert state.applied_snapshot() == (first, "run-1")
    state.record_snapshot(first + timedelta(microseconds=1), "run-2")
    assert state.applied_snapshot() == (first + timedelta(microseconds=1), "run-2")
    assert store.for_list(DEST, "other-list").applied_snapshot() is None
