"""A backfill of every destination, launched through the webserver's GraphQL API.

This is how another system (or a script) would ask the running deployment for an export of all
destinations: the backfill daemon of `dagster dev` must plan and finish it, and each list must
end up holding what the run reported.
"""

from __future__ import annotations

import time

import yaml

from sendgrid_pipeline_tests.ui.stack import DagsterDevStack

ASSETS = ["unified_profiles", "segment_membership", "sendgrid_contacts", "sendgrid_list_sync"]
BACKFILL_TIMEOUT = 420
FINISHED = {"COMPLETED", "COMPLETED_SUCCESS", "COMPLETED_FAILED", "FAILED", "CANCELED"}

LAUNCH = """
mutation ($params: LaunchBackfillParams!) {
  launchPartitionBackfill(backfillParams: $params) {
    __typename
    ... on LaunchBackfillSuccess { backfillId }
    ... on PythonError { message }
    ... on PartitionKeysNotFoundError { message }
    ... on UnauthorizedError { message }
  }
}
"""
BACKFILL = """
query ($id: String!) {
  partitionBackfillOrError(backfillId: $id) {
    __typename
    ... on PartitionBackfill {
      status
      isAssetBackfill
      numPartitions
      error { message }
      runs { runId status }
    }
    ... on PythonError { message }
  }
}
"""
MATERIALIZATIONS = """
query ($partitions: [String!]) {
  assetOrError(assetKey: {path: ["sendgrid_list_sync"]}) {
    ... on Asset {
      assetMaterializations(partitions: $partitions) {
        partition
        runId
        metadataEntries { label ... on IntMetadataEntry { intValue } }
      }
    }
  }
}
"""

STEP_FAILURES = """
query ($runId: ID!) {
  runOrError(runId: $runId) {
    ... on Run {
      eventConnection {
        events {
          __typename
          ... on ExecutionStepFailureEvent { stepKey error { message } }
          ... on RunFailureEvent { message }
        }
      }
    }
  }
}
"""


def failures(stack: DagsterDevStack, backfill: dict) -> list[str]:
    """What made the backfill's runs fail, step by step: the assertion's explanation."""
    found = []
    for run in backfill.get("runs") or []:
        events = stack.graphql(STEP_FAILURES, {"runId": run["runId"]})["runOrError"]
        for event in events.get("eventConnection", {}).get("events", []):
            if event["__typename"] == "ExecutionStepFailureEvent":
                found.append(f"{event['stepKey']}: {event['error']['message']}")
            elif event["__typename"] == "RunFailureEvent":
                found.append(event["message"])
    return found or [str(backfill)]


def wait_for_backfill(stack: DagsterDevStack, backfill_id: str) -> dict:
    deadline = time.monotonic() + BACKFILL_TIMEOUT
    while True:
        backfill = stack.graphql(BACKFILL, {"id": backfill_id})["partitionBackfillOrError"]
        assert backfill["__typename"] == "PartitionBackfill", backfill
        if backfill["status"] in FINISHED:
            return backfill
        assert time.monotonic() < deadline, f"backfill not finished in time: {backfill}"
        time.sleep(2)


def test_graphql_backfill_of_every_destination_completes(dagster_stack: DagsterDevStack) -> None:
    destinations = yaml.safe_load((dagster_stack.data_dir / "destinations.yaml").read_text())[
        "destinations"
    ]
    names = [d["name"] for d in destinations]
    params = {
        "assetSelection": [{"path": [asset]} for asset in ASSETS],
        "partitionNames": names,
        "title": "every destination (GraphQL test)",
        "tags": [{"key": "sendgrid/trigger", "value": "graphql-test"}],
    }
    launched = dagster_stack.graphql(LAUNCH, {"params": params})["launchPartitionBackfill"]
    assert launched["__typename"] == "LaunchBackfillSuccess", launched

    backfill = wait_for_backfill(dagster_stack, launched["backfillId"])

    assert backfill["status"] in {"COMPLETED", "COMPLETED_SUCCESS"}, failures(
        dagster_stack, backfill
    )
    assert backfill["isAssetBackfill"] and backfill["numPartitions"] == len(names)
    # every asset over every destination in ONE run: the profiles read once (issue 12, item 5)
    assert len(backfill["runs"]) == 1, backfill["runs"]
    assert {run["status"] for run in backfill["runs"]} == {"SUCCESS"}, backfill["runs"]

    # A run over several destinations records one materialization per destination, each with
    # its own figures; every list must hold what its materialization says.
    run_ids = {run["runId"] for run in backfill["runs"]}
    found = dagster_stack.graphql(MATERIALIZATIONS, {"partitions": names})["assetOrError"]
    latest: dict[str, dict[str, int]] = {}
    for event in found["assetMaterializations"]:  # newest first
        if event["runId"] in run_ids and event["partition"] not in latest:
            latest[event["partition"]] = {
                e["label"]: e["intValue"] for e in event["metadataEntries"] if "intValue" in e
            }
    assert sorted(latest) == sorted(names)
    for destination in destinations:
        figures = latest[destination["name"]]
        assert figures["list_contact_count"] > 0, (destination["name"], figures)
        assert figures["list_contact_count"] == dagster_stack.sandbox_list_count(
            destination["list_id"]
        ), (destination["name"], figures)
