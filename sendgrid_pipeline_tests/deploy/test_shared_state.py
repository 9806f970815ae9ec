"""The shared sync state: chosen by one setting, copied from SQLite by a command, and the
deployment settings of a sync (its pool, the executor)."""

from __future__ import annotations

import dataclasses
import os
import subprocess
import sys
from datetime import UTC, datetime
from pathlib import Path

import dagster as dg
import polars as pl
import pytest

from sendgrid_pipeline.errors import ConfigError
from sendgrid_pipeline.pipeline import EXPORT_JOB, default_resources, load_validated_config
from sendgrid_pipeline.settings import STATE_DSN_ENV, Settings
from sendgrid_pipeline.state import SyncStateResource, SyncStateStore
from sendgrid_pipeline.state_migrate import MigrationError, migrate
from sendgrid_pipeline.state_postgres import PostgresSyncStateStore
from sendgrid_pipeline_tests.helpers import definitions, resources_for

REPO = Path(__file__).resolve().parents[2]
SNAPSHOT = datetime(2026, 11, 29, 8, 0, tzinfo=UTC)


def contacts(*emails: str) -> pl.DataFrame:
    return pl.DataFrame(
        {"email": list(emails), "contact_json": [f'{{"email":"{e}"}}' for e in emails]},
        schema={"email": pl.String, "contact_json": pl.String},
    )


def test_the_state_dsn_setting_chooses_postgres_and_is_never_a_plain_value(data_dir) -> None:
    dsn = "postgresql://sync:s3cret-pw@db.internal:5432/state"
    settings = Settings.from_env({"SENDGRID_PIPELINE_DATA_DIR": str(data_dir), STATE_DSN_ENV: dsn})
    assert settings.state_dsn_env == STATE_DSN_ENV and "s3cret" not in repr(settings)
    resources = default_resources(settings, load_validated_config(data_dir))
    assert isinstance(resources.sync_state.dsn, dg.EnvVar)
    assert resources.sync_state.dsn.env_var_name == STATE_DSN_ENV
    assert "s3cret" not in repr(resources)
    plain = default_resources(Settings(data_dir=data_dir), load_validated_config(data_dir))
    assert plain.sync_state.dsn is None
    assert isinstance(plain.sync_state.store(), SyncStateStore)


def test_the_resource_opens_the_postgres_store_and_names_it_without_password(
    postgres_dsn, tmp_path
) -> None:
    resource = SyncStateResource(directory=str(tmp_path), dsn=postgres_dsn)
    assert isinstance(resource.store(), PostgresSyncStateStore)
    assert not list(tmp_path.iterdir())  # no SQLite file beside it
    with_password = postgres_dsn.replace("://", "://user:pw-123@", 1)
    described = SyncStateResource(directory=str(tmp_path), dsn=with_password).describe()
    assert "pw-123" not in described


def test_the_executor_is_a_setting_and_run_config_still_configures_it(data_dir) -> None:
    assert Settings().executor == "in_process"
    settings = Settings.from_env({"SENDGRID_PIPELINE_EXECUTOR": "multiprocess"})
    assert settings.executor == "multiprocess"
    with pytest.raises(ConfigError, match="SENDGRID_PIPELINE_EXECUTOR"):
        Settings.from_env({"SENDGRID_PIPELINE_EXECUTOR": "threads"})
    default_job = definitions(data_dir).resolve_job_def(EXPORT_JOB)
    assert default_job.executor_def.name == "in_process"
    wired = resources_for(data_dir)
    multi = definitions(data_dir, resources=dataclasses.replace(wired, executor="multiprocess"))
    job = multi.resolve_job_def(EXPORT_JOB)
    assert job.executor_def.name == "multiprocess"
    # a run's config still configures the chosen executor
    assert "max_concurrent" in job.executor_def.config_schema.as_field().config_type.fields


def test_the_sync_asset_runs_in_its_pool(data_dir) -> None:
    assets = definitions(data_dir).resolve_assets_def("sendgrid_list_sync")
    assert assets.node_def.pool == "sendgrid_list_sync"


def _seed_sqlite(path: Path) -> SyncStateStore:
    """A state with every kind of record: members (unmanaged, uncertain), a reconcile, pending
    intents (one sent, one not), generations and a snapshot, over two lists."""
    store = SyncStateStore(path)
    vip = store.for_list("vip", "list-1")
    vip.replace_members(
        contacts("before-us@x.io").with_columns(contact_id=pl.lit("cid-0"), managed=pl.lit(False))
    )
    vip.confirm_upsert(vip.write_intent("upsert", contacts("a@x.io"), "r1"), contacts("a@x.io"))
    vip.mark_uncertain(None, ["maybe@x.io"])
    sent = vip.write_intent("remove", contacts("a@x.io").select("email"), "run-owning-it")
    vip.intent_sent(sent, "job-7")
    vip.write_intent("upsert", contacts("b@x.io"), "run-owning-it")
    vip.record_snapshot(SNAPSHOT, "r1")
    other = store.for_list("winback", "list-2")
    other.confirm_upsert(other.write_intent("upsert", contacts("c@x.io"), "r2"), contacts("c@x.io"))
    return store


def _same_record(sqlite: SyncStateStore, postgres: PostgresSyncStateStore) -> None:
    for destination, list_id in (("vip", "list-1"), ("winback", "list-2")):
        a, b = sqlite.for_list(destination, list_id), postgres.for_list(destination, list_id)
        assert a.members().drop("contact_json").equals(b.members().drop("contact_json"))
        assert a.members()["contact_json"].to_list() == b.members()["contact_json"].to_list()
        assert a.generation() == b.generation() and a.last_reconciled() == b.last_reconciled()
        assert a.applied_snapshot() == b.applied_snapshot()
        assert [(i.intent_id, i.kind, i.run_id, i.job_id) for i in a.intents()] == [
            (i.intent_id, i.kind, i.run_id, i.job_id) for i in b.intents()
        ]
        assert all(x.rows.equals(y.rows) for x, y in zip(a.intents(), b.intents(), strict=True))


def test_migration_copies_every_record_and_refuses_a_used_target(postgres_dsn, tmp_path) -> None:
    source = tmp_path / "sync_state.sqlite"
    sqlite = _seed_sqlite(source)
    counts = migrate(source, postgres_dsn)
    assert counts == {"members": 4, "reconciles": 1, "generations": 2, "intents": 2, "snapshots": 1}
    postgres = PostgresSyncStateStore(postgres_dsn)
    _same_record(sqlite, postgres)
    vip = postgres.for_list("vip", "list-1")
    assert vip.members().filter(pl.col("email") == "before-us@x.io")["managed"].to_list() == [False]
    assert vip.has_uncertain() == 1  # settled by the next sync's reconcile, as before the move
    # new intents continue after the copied ones
    assert vip.write_intent("upsert", contacts("d@x.io"), "r3") > max(
        i.intent_id for i in sqlite.intents("vip", "list-1")
    )
    with pytest.raises(MigrationError, match=r"already holds sync state.*--replace"):
        migrate(source, postgres_dsn)
    assert migrate(source, postgres_dsn, replace=True) == counts
    _same_record(sqlite, PostgresSyncStateStore(postgres_dsn))


def test_the_migration_command_reads_the_url_from_the_named_variable(
    postgres_dsn, tmp_path
) -> None:
    source = tmp_path / "sync_state.sqlite"
    _seed_sqlite(source)
    command = [
        sys.executable,
        "-m",
        "sendgrid_pipeline.state_migrate",
        "--from",
        str(source),
        "--to-env",
        STATE_DSN_ENV,
    ]
    env = {**os.environ, STATE_DSN_ENV: postgres_dsn}
    done = subprocess.run(command, env=env, capture_output=True, text=True, cwd=REPO, check=False)
    assert done.returncode == 0, done.stderr
    assert "members: 4" in done.stdout and "intents: 2" in done.stdout
    again = subprocess.run(command, env=env, capture_output=True, text=True, cwd=REPO, check=False)
    assert again.returncode == 1 and "--replace" in again.stderr
    unset = {k: v for k, v in env.items() if k != STATE_DSN_ENV}
    missing = subprocess.run(
        command, env=unset, capture_output=True, text=True, cwd=REPO, check=False
    )
    assert missing.returncode == 2 and STATE_DSN_ENV in missing.stderr
