"""Shared pieces of the sync tests: one list, one destination, desired-contact builders."""

from __future__ import annotations

import logging
from pathlib import Path

import polars as pl

from sendgrid_pipeline.config import Destination, FieldMapping
from sendgrid_pipeline.sendgrid.client import SendGridClient
from sendgrid_pipeline.state import SyncStateStore
from sendgrid_pipeline.state_postgres import PostgresSyncStateStore
from sendgrid_pipeline.sync.apply import DestinationSync, SyncOptions
from sendgrid_pipeline_tests.devkit.sandbox import SandboxServer

LIST_ID = "5d0c4f2a-8a1b-4c3d-9e8f-0a1b2c3d4e5f"
DESTINATION = Destination(
    name="test_dest",
    display_name="Test",
    list_id=LIST_ID,
    consent=True,
    field_mapping=FieldMapping(email="email", first_name="first_name"),
    segments=("s",),
)
log = logging.getLogger("test_sync")


def open_store(where: Path | str) -> SyncStateStore:
    """The state store at `where`: a PostgreSQL URL, or the path of an SQLite file."""
    if isinstance(where, str) and where.startswith(("postgresql://", "postgres://")):
        return PostgresSyncStateStore(where)  # type: ignore[return-value]
    return SyncStateStore(Path(where))


def lose_state(where: Path | str) -> None:
    """The state is lost: its SQLite file (and WAL) deleted, or its PostgreSQL tables dropped."""
    if isinstance(where, Path):
        for file in where.parent.glob(f"{where.name}*"):
            file.unlink()
        return
    import psycopg2

    with psycopg2.connect(where) as db, db.cursor() as cursor:
        cursor.execute(
            "SELECT string_agg(quote_ident(tablename), ', ') FROM pg_tables "
            "WHERE schemaname = 'public' AND tablename LIKE 'sendgrid\\_%'"
        )
        (tables,) = cursor.fetchone()
        if tables:
            cursor.execute(f"DROP TABLE {tables}")
    db.close()


class Crash(Exception):
    """Stands for the process dying at a given step."""


def people(*names: str, renamed: dict[str, str] | None = None) -> pl.DataFrame:
    """Desired contacts: `name@example.com` with first_name = name (or a new name)."""
    renamed = renamed or {}
    frame = pl.DataFrame(
        {
            "email": [f"{n}@example.com" for n in names],
            "first_name": [renamed.get(n, n.title()) for n in names],
        },
        schema={"email": pl.String, "first_name": pl.String},
    )
    return frame


def fast_client(sandbox: SandboxServer, **kwargs) -> SendGridClient:
    """A client with test-sized waits (polls, backoff, timeouts) against the sandbox."""
    settings = {
        "poll_interval_seconds": 0.01,
        "backoff_base_seconds": 0.01,
        "backoff_max_seconds": 2.0,
        "timeout_seconds": 2.0,
        **kwargs,
    }
    return SendGridClient(sandbox.api_key, sandbox.base_url, **settings)


def sync(
    sandbox: SandboxServer,
    state_at: Path | str,
    desired: pl.DataFrame,
    crash_at: tuple[str, int] | None = None,
    destination: Destination = DESTINATION,
    **options,
):
    client = SendGridClient(sandbox.api_key, sandbox.base_url, poll_interval_seconds=0.01)
    seen: dict[str, int] = {}

    def hook(step: str) -> None:
        seen[step] = seen.get(step, 0) + 1
        if crash_at and crash_at == (step, seen[step]):
            raise Crash(step)

    engine = DestinationSync(
        client, open_store(state_at), destination, log, SyncOptions(**options), hook
    )
    return engine.run(desired)


def on_list(sandbox: SandboxServer) -> set[str]:
    return sandbox.list_member_emails(LIST_ID)


def emails(frame: pl.DataFrame) -> set[str]:
    return set(frame["email"])


def sent_contacts(sandbox: SandboxServer) -> int:
    return sum(r.contacts for r in sandbox.requests if r.method == "PUT")


def recorded(state_at: Path | str) -> set[str]:
    return emails(open_store(state_at).members(DESTINATION.name, LIST_ID))
