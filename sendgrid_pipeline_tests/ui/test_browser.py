"""The Dagster UI in headless Chromium tells the truth, from `make demo` to the scheduled run.

The session's stack (conftest.dagster_stack) ran the demo over its data copy, with its
DAGSTER_HOME, before `dagster dev` started: what a user has after `make demo` then `make dev`.
The test then works through the UI as that user would:

1. the demo left nothing in the UI: no run, every asset and partition unmaterialized;
2. "Materialize all" for one destination (newsletter_eu) succeeds, and the sync's metadata
   counts what the sandbox holds (no SendGrid link: the API is the sandbox);
3. a dry run of another destination (vip_program) from the launchpad (`dry_run: true`) plans
   its contacts and records an observation, never a materialization of the sync: the sync's
   materializations are unchanged, vip_program stays missing and its list empty;
4. the schedule's run ("Preview tick result", then launch) syncs every destination, and each
   check passes on each partition (the Checks tab, and the same statuses over GraphQL);
5. each destination's `dagster/row_count` of sendgrid_contacts equals its own contacts (the
   stored Parquet file and the sandbox's list).

Screenshots of each step land in artifacts/screenshots/ (failure.png when a step fails).
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from urllib.parse import unquote

import polars as pl
import yaml

from sendgrid_pipeline.schedules import refresh_all_tags
from sendgrid_pipeline_tests.ui.stack import DagsterDevStack

ASSETS = ["unified_profiles", "segment_membership", "sendgrid_contacts", "sendgrid_list_sync"]
# Every asset is partitioned by destination (the roots too, so that one run holds them all).
PARTITIONED = ASSETS
CHECKS = [  # (asset, check): every check, each evaluated per destination
    ("sendgrid_contacts", "sendgrid_contacts_email_valid"),
    ("sendgrid_contacts", "sendgrid_contacts_within_profile_cap"),
    ("sendgrid_list_sync", "sendgrid_list_size_matches_sync_state"),
]
FIRST = "newsletter_eu"  # materialized alone in step 2
DRY = "vip_program"  # dry run in step 3, never synced before the schedule's run
SCHEDULE = "sendgrid_refresh_schedule"
GROUP_PATH = "/locations/sendgrid_pipeline/asset-groups/sendgrid_export"
RUN_TIMEOUT = 300
METADATA_COUNTS = ["planned_add", "upserted", "list_contact_count"]
RUN_URL = re.compile(r"/runs/([0-9a-f-]{36})")

RUNS_QUERY = """
{ runsOrError(limit: 50) { ... on Runs { results { runId status tags { key value } } } } }
"""
RUN_TAGS_QUERY = """
query ($runId: ID!) { runOrError(runId: $runId) { ... on Run { tags { key value } } } }
"""
ANY_MATERIALIZATION = """
{ assetsOrError { ... on AssetConnection { nodes {
    key { path } assetMaterializations(limit: 1) { partition runId }
} } } }
"""
SYNC_EVENTS = """
query ($partitions: [String!]) {
  assetOrError(assetKey: {path: ["sendgrid_list_sync"]}) {
    ... on Asset {
      assetMaterializations(partitions: $partitions) { partition runId timestamp }
      assetObservations(partitions: $partitions) {
        partition
        runId
        metadataEntries {
          label
          ... on IntMetadataEntry { intValue }
          ... on BoolMetadataEntry { boolValue }
        }
      }
    }
  }
}
"""
CHECK_STATUSES = """
query ($key: AssetKeyInput!) {
  assetNodeOrError(assetKey: $key) {
    ... on AssetNode { assetChecksOrError { ... on AssetChecks { checks {
      name
      partitionStatuses {
        ... on AssetCheckDefaultPartitionStatuses {
          succeededPartitions failedPartitions skippedPartitions
          inProgressPartitions executionFailedPartitions
        }
      }
    } } } }
  }
}
"""
LATEST_CHECK_EXECUTION = """
query ($key: AssetKeyInput!, $check: String!, $partition: String) {
  assetCheckExecutions(assetKey: $key, checkName: $check, partition: $partition, limit: 1) {
    runId status partition
  }
}
"""


@contextmanager
def screenshot_on_failure(page, folder: Path) -> Iterator[None]:
    """Keep what the browser showed when a step failed; that is what explains it."""
    try:
        yield
    except BaseException:
        page.screenshot(path=str(folder / "failure.png"), full_page=True)
        raise


def destinations(stack: DagsterDevStack) -> dict[str, str]:
    """Destination name -> list id, in definition order."""
    config = yaml.safe_load((stack.data_dir / "destinations.yaml").read_text())
    return {d["name"]: d["list_id"] for d in config["destinations"]}


def run_tags(stack: DagsterDevStack, run_id: str) -> dict[str, str]:
    tags = stack.graphql(RUN_TAGS_QUERY, {"runId": run_id})["runOrError"]["tags"]
    return {tag["key"]: tag["value"] for tag in tags}


def sync_events(stack: DagsterDevStack, partitions: list[str]) -> dict:
    return stack.graphql(SYNC_EVENTS, {"partitions": partitions})["assetOrError"]


def metadata_value(page, label: str) -> str:
    """The value cell beside a metadata key in the partition's metadata table."""
    row = page.locator("tr", has=page.get_by_text(label, exact=True)).first
    row.wait_for()
    return row.locator("td").nth(1).inner_text().strip()


def as_int(text: str) -> int:
    return int(text.replace(",", ""))


def open_partition(page, ui: str, asset: str, partition: str) -> None:
    """The asset's Partitions tab with one partition's latest materialization and metadata."""
    page.goto(f"{ui}/assets/{asset}?view=partitions&partition={partition}")
    page.get_by_text("Latest materialization", exact=True).first.wait_for()


def partition_counts(page, materialized: int, missing: int) -> None:
    """Wait for the Partitions tab's status filters to show these counts."""
    for label in ("Failed (0)", f"Materialized ({materialized})", f"Missing ({missing})"):
        page.get_by_text(label, exact=True).first.wait_for()


def wait_for_run_page(page, stack: DagsterDevStack, run_id: str, screenshot: Path) -> str:
    """Open the run's page, wait for it to finish there, keep a screenshot; its status."""
    page.goto(f"{stack.ui_url}/runs/{run_id}")
    status = stack.wait_for_run(run_id, timeout=RUN_TIMEOUT)
    page.get_by_text("RUN_SUCCESS" if status == "SUCCESS" else "RUN_FAILURE").first.wait_for(
        timeout=120_000
    )
    page.screenshot(path=str(screenshot))
    return status


def filter_logs(page, text: str, expected: re.Pattern[str]) -> None:
    """Type into the run log's filter and wait for a matching line."""
    page.locator("input[placeholder^='Filter']").first.fill(text)
    page.get_by_text(expected).first.wait_for()


# -- the steps ---------------------------------------------------------------------------------
def step_1_the_demo_left_nothing(page, stack: DagsterDevStack, shots: Path) -> None:
    # The demo did run (both of its runs succeeded) with the stack's DAGSTER_HOME, before it.
    assert stack.demo_output.count("The run succeeded") == 2, stack.demo_output
    assert stack.home_after_demo == ["dagster.yaml"], stack.home_after_demo
    runs = stack.graphql(RUNS_QUERY)["runsOrError"]["results"]
    assert runs == [], f"the UI lists runs it did not launch: {runs}"
    nodes = stack.graphql(ANY_MATERIALIZATION)["assetsOrError"]["nodes"]
    assert set(ASSETS) <= {n["key"]["path"][0] for n in nodes}  # other groups' assets besides
    assert [n for n in nodes if n["assetMaterializations"]] == []

    # The UI: no run listed, no destination partition of any asset materialized (the roots
    # included: they are partitioned by destination like the others).
    ui = stack.ui_url
    page.goto(f"{ui}/runs")
    page.get_by_text(re.compile("No runs")).first.wait_for()
    for asset in PARTITIONED:  # the sync, last, stays on screen for the screenshot
        page.goto(f"{ui}/assets/{asset}?view=partitions")
        partition_counts(page, materialized=0, missing=3)
    page.screenshot(path=str(shots / "00-after-demo-nothing-materialized.png"))


def step_2_materialize_one_partition(page, stack: DagsterDevStack, shots: Path) -> str:
    """The run id of the newsletter_eu materialization."""
    ui = stack.ui_url
    # The asset graph of the group: four assets, kinds and partition counts on the nodes.
    page.goto(f"{ui}{GROUP_PATH}")
    for asset in ASSETS:
        page.get_by_text(asset, exact=True).first.wait_for()
    materialize = page.get_by_role("button", name=re.compile("Materialize all"))
    materialize.wait_for()
    page.get_by_text("3 partitions").first.wait_for()
    page.screenshot(path=str(shots / "01-asset-graph.png"))

    # Materialize all -> choose one destination partition -> "Launch 1 run".
    materialize.click()
    dialog = page.locator(".dagster-dialog", has_text="Launch runs to materialize")
    dialog.wait_for()
    dialog.get_by_text("Select a partition or create one").click()
    picker = page.locator(".dagster-popover", has_text="Select all")
    picker.wait_for()
    picker.locator("span", has_text=re.compile(rf"^{FIRST}$")).first.click()
    page.keyboard.press("Escape")
    dialog.get_by_text("1 partition", exact=True).wait_for()
    launch = dialog.get_by_role("button", name="Launch 1 run")
    launch.wait_for()
    page.screenshot(path=str(shots / "02-launch-one-partition.png"))
    launch.click()

    # The toast names the run; its page shows the logs as the run progresses.
    toast = page.get_by_text(re.compile(r"Launched run [0-9a-f]{8}")).first
    toast.wait_for()
    short_id = re.search(r"Launched run ([0-9a-f]{8})", toast.inner_text()).group(1)
    runs = stack.graphql(RUNS_QUERY)["runsOrError"]["results"]
    matches = [r["runId"] for r in runs if r["runId"].startswith(short_id)]
    assert len(matches) == 1, f"no single run starts with {short_id}: {runs}"
    run_id = matches[0]
    status = wait_for_run_page(page, stack, run_id, shots / "03-run-logs.png")
    assert status == "SUCCESS", f"run {run_id} ended {status}; see 03-run-logs.png"
    assert run_tags(stack, run_id).get("dagster/partition") == FIRST
    filter_logs(page, "synced", re.compile(rf"{FIRST}: synced; upserted \d+"))
    page.screenshot(path=str(shots / "03b-run-logs-filtered.png"))

    # The partition's metadata panel: the plan and the outcome, counted; against the sandbox,
    # a text row names the API instead of a link to a SendGrid list page that does not exist.
    open_partition(page, ui, "sendgrid_list_sync", FIRST)
    page.get_by_text("Metadata", exact=True).first.wait_for()
    labels = [*METADATA_COUNTS, "list_id", "sendgrid_api"]
    values = {label: metadata_value(page, label) for label in labels}
    page.screenshot(path=str(shots / "04-partition-metadata.png"))
    counts = {label: as_int(values[label]) for label in METADATA_COUNTS}
    list_id = destinations(stack)[FIRST]
    assert values["list_id"] == list_id
    assert values["sendgrid_api"].startswith(stack.sandbox_url), values["sendgrid_api"]
    assert "not SendGrid" in values["sendgrid_api"]
    assert page.get_by_text("sendgrid_list", exact=True).count() == 0
    assert counts["planned_add"] > 0
    assert counts["upserted"] == counts["planned_add"]
    assert counts["list_contact_count"] == stack.sandbox_list_count(list_id)
    return run_id


def step_3_dry_run_from_the_launchpad(
    page, stack: DagsterDevStack, shots: Path, first_run: str
) -> None:
    from playwright.sync_api import expect  # the page fixture skips when playwright is missing

    ui = stack.ui_url
    names = list(destinations(stack))
    list_id = destinations(stack)[DRY]
    before = sync_events(stack, names)
    assert [(m["partition"], m["runId"]) for m in before["assetMaterializations"]] == [
        (FIRST, first_run)
    ]
    assert stack.sandbox_list_count(list_id) == 0

    # The group's launchpad: every asset, one partition, and `dry_run: true` in the config.
    page.goto(f"{ui}{GROUP_PATH}")
    page.get_by_role("button", name=re.compile("Materialize all")).wait_for()
    page.locator("button:has([aria-label=arrow_drop_down])").first.click()
    page.get_by_text("Open launchpad", exact=True).click()
    launchpad = page.locator(".dagster-dialog", has_text="Launchpad")
    launchpad.wait_for()
    dry_run_line = launchpad.locator(".CodeMirror-line", has_text="dry_run:")
    dry_run_line.locator(".cm-keyword", has_text="false").dblclick()
    page.keyboard.type("true")
    dry_run_line.get_by_text("true", exact=True).wait_for()
    launchpad.get_by_placeholder("Partition").fill(DRY)
    page.locator(".dagster-popover").get_by_text(DRY, exact=True).click()
    launchpad.get_by_text("No errors").wait_for()
    launch = launchpad.get_by_role("button", name=re.compile(r"Materialize$"))
    expect(launch).to_be_enabled()
    page.screenshot(path=str(shots / "05-dry-run-launchpad.png"))
    launch.click()

    # The launchpad opens the run's page; the run says it sent nothing and is tagged a dry run.
    page.wait_for_url(RUN_URL)
    run_id = RUN_URL.search(page.url).group(1)
    status = wait_for_run_page(page, stack, run_id, shots / "06-dry-run-logs.png")
    assert status == "SUCCESS", f"dry run {run_id} ended {status}; see 06-dry-run-logs.png"
    tags = run_tags(stack, run_id)
    assert tags.get("dagster/partition") == DRY, tags
    assert tags.get("sendgrid/dry_run") == "true", tags
    filter_logs(page, "DRY RUN", re.compile(rf"{DRY}: DRY RUN, nothing sent"))
    page.screenshot(path=str(shots / "06b-dry-run-logs-filtered.png"))

    # No materialization of the sync: the same one as before, vip_program still missing and its
    # list still empty; the plan is an observation on vip_program.
    after = sync_events(stack, names)
    assert after["assetMaterializations"] == before["assetMaterializations"]
    observations = [o for o in after["assetObservations"] if o["runId"] == run_id]
    assert [o["partition"] for o in observations] == [DRY], after["assetObservations"]
    plan = {
        e["label"]: e.get("intValue", e.get("boolValue"))
        for e in observations[0]["metadataEntries"]
    }
    assert plan["dry_run"] is True and plan["upserted"] == 0, plan
    assert plan["planned_add"] > 0, plan
    assert stack.sandbox_list_count(list_id) == 0

    # The UI shows the same. vip_program: still missing, never materialized, one event in its
    # history (the observation); newsletter_eu: still the first run's materialization.
    open_partition(page, ui, "sendgrid_list_sync", DRY)
    partition_counts(page, materialized=1, missing=2)
    page.get_by_text("View all historical events (1)").click()
    history = page.locator(".dagster-dialog", has_text=f"Historical events for {DRY}")
    history.get_by_text("Observation", exact=True).wait_for()
    history.get_by_text(run_id[:8], exact=True).wait_for()
    page.screenshot(path=str(shots / "07-dry-run-partition-history.png"))
    page.keyboard.press("Escape")
    open_partition(page, ui, "sendgrid_list_sync", FIRST)
    page.get_by_role("link", name=first_run[:8]).first.wait_for()
    page.get_by_text("View all historical events (1)").wait_for()
    page.screenshot(path=str(shots / "07b-first-partition-unchanged.png"))
    # The Events tab, newest first: the observation and its plan, adds that were never sent.
    page.goto(f"{ui}/assets/sendgrid_list_sync?view=events")
    page.get_by_text(f"Partition {DRY} observed in run {run_id[:8]}").wait_for()
    assert metadata_value(page, "dry_run") == "true"
    assert as_int(metadata_value(page, "planned_add")) == plan["planned_add"]
    assert as_int(metadata_value(page, "upserted")) == 0
    assert as_int(metadata_value(page, "list_contact_count")) == 0
    page.screenshot(path=str(shots / "07c-dry-run-observation.png"))


def step_4_the_schedules_run(page, stack: DagsterDevStack, shots: Path) -> str:
    """The schedule's run id, once every check passed on every partition."""
    ui = stack.ui_url
    names = list(destinations(stack))
    page.goto(f"{ui}/locations/sendgrid_pipeline/schedules/{SCHEDULE}")
    page.get_by_text(re.compile("Scheduled refresh")).wait_for()
    page.get_by_text("Running", exact=True).first.wait_for()  # it starts RUNNING
    page.get_by_role("button", name="Preview tick result").click()
    preview = page.locator(".dagster-dialog", has_text="Preview tick result")
    preview.get_by_role("button", name="Continue").click()
    preview.get_by_text("1 run requests").wait_for()
    preview.get_by_text("sendgrid_export_job").wait_for()
    page.screenshot(path=str(shots / "08-schedule-tick-preview.png"))
    preview.get_by_role("button", name="Launch all & commit tick result").click()

    # The UI opens the runs list filtered to the run it launched.
    page.wait_for_url(re.compile(r"/runs\?"))
    run_id = re.search(r"id:([0-9a-f-]{36})", unquote(page.url)).group(1)
    status = wait_for_run_page(page, stack, run_id, shots / "09-schedule-run.png")
    assert status == "SUCCESS", f"the schedule's run {run_id} ended {status}"
    tags = run_tags(stack, run_id)
    assert tags.get("dagster/schedule_name") == SCHEDULE, tags
    assert tags.items() >= refresh_all_tags(names).items(), tags
    synced = sync_events(stack, names)["assetMaterializations"]
    assert sorted(m["partition"] for m in synced if m["runId"] == run_id) == sorted(names)

    # Each check on the asset's Checks tab: its Partitions view counts every destination passed.
    for number, (asset, check) in enumerate(CHECKS):
        page.goto(f"{ui}/assets/{asset}?view=checks&checkDetail={check}")
        page.locator("button[role=tab]", has_text="Partitions").click()
        page.get_by_text(f"Passed ({len(names)})", exact=True).wait_for()
        for status_label in ("Execution Failed", "Failed", "In Progress", "Missing", "Skipped"):
            page.get_by_text(f"{status_label} (0)", exact=True).wait_for()
        page.screenshot(path=str(shots / f"10{'abc'[number]}-checks-{check}.png"))

    # The same statuses over the UI's GraphQL, each from the schedule's run.
    for asset in PARTITIONED:
        key = {"path": [asset]}
        node = stack.graphql(CHECK_STATUSES, {"key": key})["assetNodeOrError"]
        checks = node["assetChecksOrError"]["checks"]
        assert sorted(c["name"] for c in checks) == sorted(c for a, c in CHECKS if a == asset)
        for found in checks:
            statuses = dict(found["partitionStatuses"])
            assert sorted(statuses.pop("succeededPartitions")) == sorted(names), found
            assert not any(statuses.values()), found
            for name in names:
                variables = {"key": key, "check": found["name"], "partition": name}
                latest = stack.graphql(LATEST_CHECK_EXECUTION, variables)["assetCheckExecutions"]
                assert latest == [{"runId": run_id, "status": "SUCCEEDED", "partition": name}]
    return run_id


def step_5_row_counts(page, stack: DagsterDevStack, shots: Path, run_id: str) -> None:
    """Each destination's dagster/row_count is its own contacts, as stored and as synced."""
    ui = stack.ui_url
    for name, list_id in destinations(stack).items():
        open_partition(page, ui, "sendgrid_contacts", name)
        page.get_by_role("link", name=run_id[:8]).first.wait_for()
        shown = as_int(metadata_value(page, "dagster/row_count"))
        stored = pl.read_parquet(
            stack.data_dir / "storage" / "sendgrid_contacts" / f"{name}.parquet"
        )
        assert shown == stored.height, (name, shown, stored.height)
        assert set(stored["destination"]) == {name}
        assert shown == stack.sandbox_list_count(list_id), name
        if name == DRY:
            page.screenshot(path=str(shots / "11-row-count.png"))


def step_6_definitions(page, stack: DagsterDevStack, shots: Path) -> None:
    """The asset's definition and plots, and the sensor's description."""
    ui = stack.ui_url
    page.goto(f"{ui}/assets/sendgrid_list_sync")
    for text in ("sendgrid_export", "data-engineering", "sendgrid_export_job"):
        page.get_by_text(text, exact=True).first.wait_for()
    page.get_by_role("button", name="Plots").click()
    page.get_by_text("list_contact_count", exact=True).first.wait_for()
    page.screenshot(path=str(shots / "12-asset-definition-and-plots.png"))
    page.goto(f"{ui}/locations/sendgrid_pipeline/sensors/export_request_sensor")
    page.get_by_text(re.compile("On-demand export from outside the UI")).wait_for()
    page.screenshot(path=str(shots / "13-export-request-sensor.png"))


def test_the_ui_tells_the_truth_from_the_demo_to_the_schedule(
    page, dagster_stack: DagsterDevStack, screenshots: Path
) -> None:
    """Runs first on the session's stack (file order): step 1 needs it as the demo left it."""
    with screenshot_on_failure(page, screenshots):
        step_1_the_demo_left_nothing(page, dagster_stack, screenshots)
        first_run = step_2_materialize_one_partition(page, dagster_stack, screenshots)
        step_3_dry_run_from_the_launchpad(page, dagster_stack, screenshots, first_run)
        schedule_run = step_4_the_schedules_run(page, dagster_stack, screenshots)
        step_5_row_counts(page, dagster_stack, screenshots, schedule_run)
        step_6_definitions(page, dagster_stack, screenshots)
