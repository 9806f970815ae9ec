"""What the UI shows per destination is that destination's own: checks and figures.

Runs over several destinations (the schedule, the sensors, backfills) materialize every
destination in one step. Each check result and each figure must still land on its own
partition; this reads them back from the instance (and once through the webserver's GraphQL,
as the UI does) and compares them with independently computed figures.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import dagster as dg
import polars as pl
import pytest
import yaml

from sendgrid_pipeline.assets.sync_checks import (
    LIST_SIZE_CHECK,
    SYNC_ASSET,
)
from sendgrid_pipeline.checks import CAP_CHECK, EMAIL_CHECK
from sendgrid_pipeline.config import PipelineConfig, load_config
from sendgrid_pipeline.schedules import RANGE_END_TAG, RANGE_START_TAG
from sendgrid_pipeline_tests.helpers import definitions, export, step_failure_messages
from sendgrid_pipeline_tests.test_end_to_end import expected_members

REPO = Path(__file__).resolve().parents[1]
CONTACTS = dg.AssetKey("sendgrid_contacts")
CONTACT_CHECKS = [dg.AssetCheckKey(CONTACTS, EMAIL_CHECK), dg.AssetCheckKey(CONTACTS, CAP_CHECK)]
LIST_SIZE = dg.AssetCheckKey(SYNC_ASSET, LIST_SIZE_CHECK)
CHECK_JOB = "list_size_check_job"  # the tests' own job that runs only the list-size check


@pytest.fixture
def instance() -> Iterator[dg.DagsterInstance]:
    with dg.instance_for_test() as instance:
        yield instance


def partitions_of(config: PipelineConfig) -> dg.StaticPartitionsDefinition:
    return dg.StaticPartitionsDefinition(config.destination_names)


def check_statuses(
    instance: dg.DagsterInstance, key: dg.AssetCheckKey, config: PipelineConfig
) -> dict[str, set[str]]:
    """Partitions by resolved status, from the state the UI's check statuses are built on."""
    state = instance.event_log_storage.get_asset_check_state([(key, partitions_of(config))])[key]
    return {
        status.value: set(subset.subset_value.get_partition_keys())
        for status, subset in state.subsets.items()
        if not subset.is_empty
    }


def latest_materialization(
    instance: dg.DagsterInstance, key: dg.AssetKey, partition: str
) -> dg.EventLogRecord:
    records = instance.fetch_materializations(
        dg.AssetRecordsFilter(asset_key=key, asset_partitions=[partition]), limit=1
    ).records
    assert records, f"{key.to_user_string()} has no materialization for {partition}"
    return records[0]


def metadata_values(record: dg.EventLogRecord) -> dict:
    metadata = record.asset_materialization.metadata
    return {k: getattr(v, "value", v) for k, v in metadata.items()}


def evaluations(result: dg.ExecuteInProcessResult) -> list[dg.AssetCheckEvaluation]:
    return [
        e.event_specific_data
        for e in result.all_events
        if e.event_type_value == "ASSET_CHECK_EVALUATION"
    ]


# -- item 3: check results per partition ----------------------------------------------------
def test_a_run_over_every_destination_records_each_check_on_its_partition(
    data_dir, sandbox, instance
) -> None:
    config = load_config(data_dir)
    names = set(config.destination_names)
    result = export(data_dir, sandbox, instance=instance)
    assert result.success, step_failure_messages(result)

    recorded = evaluations(result)
    assert recorded and all(e.partition in names for e in recorded)  # none without a partition
    for key in CONTACT_CHECKS:
        assert check_statuses(instance, key, config) == {"SUCCEEDED": names}, key.name
        for name in names:
            (evaluation,) = [e for e in recorded if (e.check_name, e.partition) == (key.name, name)]
            target = latest_materialization(instance, CONTACTS, name)
            assert evaluation.target_materialization_data.storage_id == target.storage_id
            assert evaluation.metadata["contacts"].value == len(expected_members(data_dir)[name])
    # no check of the code location is left planned-but-skipped by a normal refresh
    for key in definitions(data_dir, sandbox).resolve_asset_graph().asset_check_keys:
        statuses = check_statuses(instance, key, config)
        assert not {"SKIPPED", "EXECUTION_FAILED", "IN_PROGRESS"} & set(statuses), (key, statuses)


def test_a_single_destination_run_records_its_checks_on_its_partition(
    data_dir, sandbox, instance
) -> None:
    config = load_config(data_dir)
    result = export(data_dir, sandbox, partitions=["vip_program"], instance=instance)
    assert result.success, step_failure_messages(result)
    assert {e.partition for e in evaluations(result)} == {"vip_program"}
    for key in CONTACT_CHECKS:
        assert check_statuses(instance, key, config) == {"SUCCEEDED": {"vip_program"}}


def test_a_failing_check_fails_only_its_own_destination(data_dir, sandbox, instance) -> None:
    path = data_dir / "destinations.yaml"
    document = yaml.safe_load(path.read_text())
    next(d for d in document["destinations"] if d["name"] == "vip_program")["profile_cap"] = 5
    path.write_text(yaml.safe_dump(document))
    config = load_config(data_dir)
    others = set(config.destination_names) - {"vip_program"}

    result = export(data_dir, sandbox, instance=instance)
    assert not result.success
    assert check_statuses(instance, CONTACT_CHECKS[1], config) == {
        "FAILED": {"vip_program"},
        "SUCCEEDED": others,
    }
    assert check_statuses(instance, CONTACT_CHECKS[0], config) == {
        "SUCCEEDED": set(config.destination_names)
    }
    (failed,) = [e for e in evaluations(result) if not e.passed]
    assert failed.partition == "vip_program" and "exceed the cap of 5" in failed.description
    assert failed.metadata["profile_cap"].value == 5
    # Dagster blocks per step: the one sync step of this run did not start, for any destination
    assert "sendgrid_list_sync" not in {
        e.step_key for e in result.all_events if e.event_type_value == "STEP_START"
    }
    assert [r for r in sandbox.requests if r.method in ("PUT", "DELETE")] == []


# -- item 4: figures per partition ----------------------------------------------------------
def test_each_partition_shows_its_own_figures_after_a_multi_destination_run(
    data_dir, sandbox, instance
) -> None:
    config = load_config(data_dir)
    result = export(data_dir, sandbox, instance=instance)
    assert result.success, step_failure_messages(result)
    expected = expected_members(data_dir)
    counts = {name: len(emails) for name, emails in expected.items()}
    assert len(set(counts.values())) == len(counts)  # distinct, so a mix-up cannot pass
    for name in config.destination_names:
        metadata = metadata_values(latest_materialization(instance, CONTACTS, name))
        assert metadata["dagster/row_count"] == counts[name], name
        assert metadata["contacts"] == counts[name], name
        stored = pl.read_parquet(data_dir / "storage" / "sendgrid_contacts" / f"{name}.parquet")
        assert set(stored["email"]) == expected[name]
        report = pl.read_csv(data_dir / "reports" / "rejected" / f"{name}.csv")
        assert metadata["rejected"] == report.height, name
        assert metadata["profile_cap"] == config.destination(name).profile_cap
        assert metadata["segments"] == ", ".join(config.destination(name).segments)
        # nothing of the run as a whole is shown as if it were this destination's
        assert not [k for k in metadata if k.startswith("run_total")], metadata.keys()
        assert "destinations" not in metadata
        sync = metadata_values(latest_materialization(instance, SYNC_ASSET, name))
        assert sync["list_contact_count"] == counts[name]


def test_the_ui_reads_per_partition_check_statuses_and_figures(data_dir, sandbox, instance) -> None:
    from dagster_graphql.test.utils import define_out_of_process_context, execute_dagster_graphql

    config = load_config(data_dir)
    assert export(data_dir, sandbox, instance=instance).success
    query = """
    query ($key: AssetKeyInput!, $partitions: [String!]) {
      assetNodeOrError(assetKey: $key) {
        ... on AssetNode {
          assetChecksOrError {
            ... on AssetChecks {
              checks {
                name
                partitionStatuses {
                  ... on AssetCheckDefaultPartitionStatuses {
                    succeededPartitions failedPartitions skippedPartitions
                    inProgressPartitions executionFailedPartitions
                  }
                }
              }
            }
          }
        }
      }
      assetOrError(assetKey: $key) {
        ... on Asset {
          assetMaterializations(partitions: $partitions) {
            partition
            metadataEntries { label ... on IntMetadataEntry { intValue } }
          }
        }
      }
    }
    """
    with define_out_of_process_context(str(REPO / "workspace.yaml"), None, instance) as context:
        data = execute_dagster_graphql(
            context,
            query,
            {"key": {"path": ["sendgrid_contacts"]}, "partitions": config.destination_names},
        ).data
    checks = data["assetNodeOrError"]["assetChecksOrError"]["checks"]
    assert {c["name"] for c in checks} == {EMAIL_CHECK, CAP_CHECK}
    for check in checks:
        statuses = check["partitionStatuses"]
        assert sorted(statuses.pop("succeededPartitions")) == sorted(config.destination_names)
        assert all(not keys for keys in statuses.values()), (check["name"], statuses)
    counts = {name: len(emails) for name, emails in expected_members(data_dir).items()}
    shown = {
        m["partition"]: {e["label"]: e.get("intValue") for e in m["metadataEntries"]}
        for m in data["assetOrError"]["assetMaterializations"]
    }
    assert {name: figures["dagster/row_count"] for name, figures in shown.items()} == counts


# -- item 9 (part): the list's size per partition -------------------------------------------
def test_list_size_check_warns_per_destination_when_sendgrid_and_the_state_differ(
    data_dir, sandbox, instance
) -> None:
    config = load_config(data_dir)
    names = config.destination_names
    result = export(data_dir, sandbox, instance=instance)  # checked after each destination's sync
    assert result.success, step_failure_messages(result)
    assert check_statuses(instance, LIST_SIZE, config) == {"SUCCEEDED": set(names)}
    for evaluation in evaluations(result):
        if evaluation.check_name != LIST_SIZE_CHECK:
            continue
        target = latest_materialization(instance, SYNC_ASSET, evaluation.partition)
        assert evaluation.target_materialization_data.storage_id == target.storage_id

    # someone adds a contact to the vip list by hand: SendGrid's count and the record differ
    sandbox.add_contact_by_hand("walk-in@example.com", [config.destination("vip_program").list_id])
    sandbox.wait_for_idle()
    result = export(data_dir, sandbox, instance=instance)
    assert result.success, step_failure_messages(result)  # a warning, never a failure
    by_partition = {e.partition: e for e in evaluations(result) if e.check_name == LIST_SIZE_CHECK}
    assert set(by_partition) == set(names)
    vip = by_partition.pop("vip_program")
    assert not vip.passed and vip.severity == dg.AssetCheckSeverity.WARN
    assert "lag" in vip.description
    recorded = len(expected_members(data_dir)["vip_program"])
    assert vip.metadata["sync_state_members"].value == recorded
    assert vip.metadata["sendgrid_contact_count"].value == recorded + 1
    assert all(e.passed for e in by_partition.values())
    assert check_statuses(instance, LIST_SIZE, config) == {
        "FAILED": {"vip_program"},
        "SUCCEEDED": set(names) - {"vip_program"},
    }

    # one destination alone lands on its partition too
    result = export(data_dir, sandbox, partitions=["winback_campaign"], instance=instance)
    assert [
        (e.partition, e.passed) for e in evaluations(result) if e.check_name == LIST_SIZE_CHECK
    ] == [("winback_campaign", True)]


# -- item 5: one backfill over several destinations is one run ------------------------------
# A code location of the test's data directory and sandbox (given through the environment),
# loaded in process as `dagster dev` loads definitions.py.
BACKFILL_LOCATION = """
import os
from pathlib import Path
from types import SimpleNamespace

from sendgrid_pipeline_tests.helpers import definitions

defs = definitions(
    Path(os.environ["BACKFILL_TEST_DATA_DIR"]),
    SimpleNamespace(
        base_url=os.environ["BACKFILL_TEST_SENDGRID_URL"],
        api_key=os.environ["BACKFILL_TEST_SENDGRID_KEY"],
    ),
)
"""
LAUNCH_BACKFILL = """
mutation ($params: LaunchBackfillParams!) {
  launchPartitionBackfill(backfillParams: $params) {
    __typename
    ... on LaunchBackfillSuccess { backfillId }
    ... on PythonError { message }
  }
}
"""
ALL_ASSETS = ["unified_profiles", "segment_membership", "sendgrid_contacts", "sendgrid_list_sync"]


@contextmanager
def run_backfill(
    tmp_path: Path, data_dir: Path, sandbox, partitions: list[str], monkeypatch
) -> Iterator[tuple[dg.DagsterInstance, list[dg.DagsterRun], str]]:
    """Launch a backfill of every asset through GraphQL, then plan and run it as the backfill
    daemon does (its own iteration function, runs launched synchronously in this process)."""
    from dagster._core.remote_origin import InProcessCodeLocationOrigin
    from dagster._core.types.loadable_target_origin import LoadableTargetOrigin
    from dagster._core.workspace.context import WorkspaceProcessContext
    from dagster._core.workspace.load_target import InProcessWorkspaceLoadTarget
    from dagster._daemon.backfill import execute_backfill_iteration
    from dagster._daemon.daemon import get_default_daemon_logger
    from dagster_graphql.test.utils import execute_dagster_graphql

    location = tmp_path / "backfill_location.py"
    location.write_text(BACKFILL_LOCATION)
    monkeypatch.setenv("BACKFILL_TEST_DATA_DIR", str(data_dir))
    monkeypatch.setenv("BACKFILL_TEST_SENDGRID_URL", sandbox.base_url)
    monkeypatch.setenv("BACKFILL_TEST_SENDGRID_KEY", sandbox.api_key)
    origin = InProcessCodeLocationOrigin(
        LoadableTargetOrigin(
            python_file=str(location), attribute="defs", working_directory=str(REPO)
        )
    )
    with (
        dg.instance_for_test(
            synchronous_run_coordinator=True, synchronous_run_launcher=True
        ) as instance,
        WorkspaceProcessContext(instance, InProcessWorkspaceLoadTarget(origin)) as process_context,
    ):
        params = {
            "assetSelection": [{"path": [asset]} for asset in ALL_ASSETS],
            "partitionNames": partitions,
            "title": "backfill test",
        }
        launched = execute_dagster_graphql(
            process_context.create_request_context(), LAUNCH_BACKFILL, {"params": params}
        ).data["launchPartitionBackfill"]
        assert launched["__typename"] == "LaunchBackfillSuccess", launched
        backfill_id = launched["backfillId"]
        logger = get_default_daemon_logger("BackfillDaemon")
        for _ in range(10):  # iterations, not time: each plans what its parents allow
            for error in execute_backfill_iteration(process_context, logger):
                assert error is None, error
            if instance.get_backfill(backfill_id).status.value != "REQUESTED":
                break
        backfill = instance.get_backfill(backfill_id)
        runs = instance.get_runs(filters=dg.RunsFilter.for_backfill(backfill_id))
        assert backfill.status.value == "COMPLETED_SUCCESS", (backfill.status, runs)
        yield instance, runs, backfill_id


def test_a_backfill_of_every_asset_over_every_destination_is_one_run(
    tmp_path, data_dir, sandbox, monkeypatch
) -> None:
    config = load_config(data_dir)
    names = config.destination_names
    with run_backfill(tmp_path, data_dir, sandbox, names, monkeypatch) as (instance, runs, _):
        assert len(runs) == 1, [(r.run_id, r.tags) for r in runs]
        [run] = runs
        assert run.status == dg.DagsterRunStatus.SUCCESS
        assert {k.to_user_string() for k in run.asset_selection} == set(ALL_ASSETS)
        assert (run.tags[RANGE_START_TAG], run.tags[RANGE_END_TAG]) == (names[0], names[-1])
        started = [
            r.dagster_event.step_key
            for r in instance.all_logs(run.run_id, of_type=dg.DagsterEventType.STEP_START)
        ]
        assert started.count("unified_profiles") == 1  # the profiles read once, for all
        for asset in ALL_ASSETS:  # every destination of every asset, by that one run
            for name in names:
                record = latest_materialization(instance, dg.AssetKey(asset), name)
                assert record.run_id == run.run_id, (asset, name)
        # each partition of the shared roots shows its own destination's figures; the
        # profiles' figures are those of the one read, and say so
        profiles = pl.read_parquet(data_dir / "storage" / "unified_profiles.parquet").height
        for name in names:
            read = metadata_values(
                latest_materialization(instance, dg.AssetKey("unified_profiles"), name)
            )
            assert read["dagster/row_count"] == profiles, name
            assert read["figures_cover"] == (
                "every profile: one read shared by the destinations " + ", ".join(names)
            )
            destination = config.destination(name)
            figures = metadata_values(
                latest_materialization(instance, dg.AssetKey("segment_membership"), name)
            )
            shown = {k[len("segment_") :] for k in figures if k.startswith("segment_")}
            shown = {s for s in shown if not s.endswith("_unmatched_ids") and s != "overlaps"}
            assert shown == set(destination.segments) | set(destination.exclude_segments), name
    counts = {name: len(emails) for name, emails in expected_members(data_dir).items()}
    for name in names:
        assert len(sandbox.list_member_emails(config.destination(name).list_id)) == counts[name]
    # the profiles and the segments are one stored object each, not one per destination
    stored = sorted(p.name for p in (data_dir / "storage").iterdir())
    assert "unified_profiles.parquet" in stored and "segment_membership.parquet" in stored
    assert "unified_profiles" not in stored and "segment_membership" not in stored
