"""The state handle a sync works through is bound to one (destination, list): what it writes
is that list's record and nothing else's, and it reads what the store holds for that key."""

from __future__ import annotations

from pathlib import Path

import polars as pl

from sendgrid_pipeline.state import SyncStateStore


def _rows(*emails: str) -> pl.DataFrame:
    return pl.DataFrame(
        {"email": list(emails), "contact_json": [f'{{"email":"{e}"}}' for e in emails]}
    )


def test_a_list_handle_reads_and_writes_only_its_own_list(tmp_path: Path) -> None:
    store = SyncStateStore(tmp_path / "state.sqlite")
    ours, other_list, other_destination = (
        store.for_list("d", "l1"),
        store.for_list("d", "l2"),
        store.for_list("e", "l1"),
    )
    intent = ours.write_intent("upsert", _rows("a@x.io", "b@x.io"), "run-1")
    other_list.write_intent("upsert", _rows("c@x.io"), "run-1")
    assert [i.intent_id for i in ours.intents()] == [intent]
    ours.intent_sent(intent, "job-1")
    assert ours.intents()[0].job_id == "job-1"
    ours.confirm_upsert(intent, _rows("a@x.io", "b@x.io"))
    ours.mark_uncertain(None, pl.Series(["b@x.io"]))
    assert set(ours.members()["email"]) == {"a@x.io", "b@x.io"}
    assert (ours.member_count(), ours.has_uncertain(), ours.generation()) == (2, 1, 2)
    assert ours.intents() == []
    # the same calls through the store, with the key spelled out, see the same record
    assert store.members("d", "l1").equals(ours.members())
    assert store.generation("d", "l1") == ours.generation()
    for untouched in (other_list, other_destination):
        assert untouched.member_count() == 0 and untouched.generation() == 0
    assert len(other_list.intents()) == 1 and other_destination.intents() == []


def test_a_list_handle_locks_its_own_list_only(tmp_path: Path) -> None:
    store = SyncStateStore(tmp_path / "state.sqlite")
    with store.for_list("d", "l1").lock("run-1"), store.for_list("d", "l2").lock("run-2", 0.5):
        pass  # a second list is never blocked by the first one's writer
