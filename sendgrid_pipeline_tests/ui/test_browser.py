"""The Dagster UI in headless Chromium: launch one destination partition as a user would.

It opens the asset graph, materializes the newsletter_eu partition through the "Materialize
all" dialog, waits for the run to succeed, and reads the sync's counts in the metadata panel.
Screenshots land in artifacts/screenshots/ so a person can see what the UI showed.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import yaml

from sendgrid_pipeline_tests.ui.stack import DagsterDevStack

ASSETS = ["unified_profiles", "segment_membership", "sendgrid_contacts", "sendgrid_list_sync"]
DESTINATION = "newsletter_eu"
GROUP_PATH = "/locations/sendgrid_pipeline/asset-groups/sendgrid_export"
RUN_TIMEOUT = 300
METADATA_COUNTS = ["planned_add", "upserted", "list_contact_count"]
RECENT_RUNS_QUERY = "{ runsOrError(limit: 20) { ... on Runs { results { runId } } } }"
RUN_TAGS_QUERY = """
query ($runId: ID!) { runOrError(runId: $runId) { ... on Run { tags { key value } } } }
"""


@contextmanager
def screenshot_on_failure(page, folder: Path) -> Iterator[None]:
    """Keep what the browser showed when a step failed; that is what explains it."""
    try:
        yield
    except BaseException:
        page.screenshot(path=str(folder / "failure.png"), full_page=True)
        raise


def run_id_from_prefix(stack: DagsterDevStack, short_id: str) -> str:
    """The full id of the run the UI names by its first eight characters."""
    runs = stack.graphql(RECENT_RUNS_QUERY)["runsOrError"]["results"]
    matches = [r["runId"] for r in runs if r["runId"].startswith(short_id)]
    assert len(matches) == 1, f"no single recent run starts with {short_id}: {runs}"
    return matches[0]


def list_id_of(stack: DagsterDevStack, destination: str) -> str:
    config = yaml.safe_load((stack.data_dir / "destinations.yaml").read_text())
    return next(d["list_id"] for d in config["destinations"] if d["name"] == destination)


def metadata_value(page, label: str) -> str:
    """The value cell beside a metadata key in the partition's metadata table."""
    row = page.locator("tr", has=page.get_by_text(label, exact=True)).first
    row.wait_for()
    return row.locator("td").nth(1).inner_text().strip()


def test_materialize_one_partition_through_the_ui(
    page, dagster_stack: DagsterDevStack, screenshots: Path
) -> None:
    ui = dagster_stack.ui_url
    with screenshot_on_failure(page, screenshots):
        # 1. The asset graph of the group: four assets, kinds and partition counts on the nodes.
        page.goto(f"{ui}{GROUP_PATH}")
        for asset in ASSETS:
            page.get_by_text(asset, exact=True).first.wait_for()
        materialize = page.get_by_role("button", name=re.compile("Materialize all"))
        materialize.wait_for()
        page.get_by_text("3 partitions").first.wait_for()
        page.screenshot(path=str(screenshots / "01-asset-graph.png"))

        # 2. Materialize all -> choose one destination partition -> "Launch 1 run".
        materialize.click()
        dialog = page.locator(".dagster-dialog", has_text="Launch runs to materialize")
        dialog.wait_for()
        dialog.get_by_text("Select a partition or create one").click()
        picker = page.locator(".dagster-popover", has_text="Select all")
        picker.wait_for()
        picker.locator("span", has_text=re.compile(rf"^{DESTINATION}$")).first.click()
        page.keyboard.press("Escape")
        dialog.get_by_text("1 partition", exact=True).wait_for()
        launch = dialog.get_by_role("button", name="Launch 1 run")
        launch.wait_for()
        page.screenshot(path=str(screenshots / "02-launch-one-partition.png"))
        launch.click()

        # 3. The toast names the run; its page shows the logs as the run progresses.
        toast = page.get_by_text(re.compile(r"Launched run [0-9a-f]{8}")).first
        toast.wait_for()
        short_id = re.search(r"Launched run ([0-9a-f]{8})", toast.inner_text()).group(1)
        run_id = run_id_from_prefix(dagster_stack, short_id)
        page.goto(f"{ui}/runs/{run_id}")
        status = dagster_stack.wait_for_run(run_id, timeout=RUN_TIMEOUT)
        page.get_by_text("RUN_SUCCESS" if status == "SUCCESS" else "RUN_FAILURE").first.wait_for(
            timeout=120_000
        )
        page.screenshot(path=str(screenshots / "03-run-logs.png"))
        assert status == "SUCCESS", f"run {run_id} ended {status}; see 03-run-logs.png"
        tags = dagster_stack.graphql(RUN_TAGS_QUERY, {"runId": run_id})["runOrError"]["tags"]
        assert {"key": "dagster/partition", "value": DESTINATION} in tags
        # The log filter finds the sync's progress lines among the events.
        page.locator("input[placeholder^='Filter']").first.fill("synced")
        page.get_by_text(re.compile(rf"{DESTINATION}: synced; upserted \d+")).first.wait_for()
        page.screenshot(path=str(screenshots / "03b-run-logs-filtered.png"))

        # 4. The partition's metadata panel: the plan and the outcome, counted.
        page.goto(f"{ui}/assets/sendgrid_list_sync?view=partitions&partition={DESTINATION}")
        page.get_by_text("Metadata", exact=True).first.wait_for()
        values = {label: metadata_value(page, label) for label in [*METADATA_COUNTS, "list_id"]}
        page.screenshot(path=str(screenshots / "04-partition-metadata.png"))
        link_row = page.locator("tr", has=page.get_by_text("sendgrid_list", exact=True)).first
        link_row.scroll_into_view_if_needed()
        href = link_row.locator("a").first.get_attribute("href")
        page.screenshot(path=str(screenshots / "04b-partition-metadata-list-link.png"))
        counts = {label: int(values[label].replace(",", "")) for label in METADATA_COUNTS}
        list_id = list_id_of(dagster_stack, DESTINATION)
        assert values["list_id"] == list_id
        assert href is not None and href.endswith(f"/contacts/lists/{list_id}")
        assert counts["planned_add"] > 0
        assert counts["upserted"] == counts["planned_add"]
        assert counts["list_contact_count"] == dagster_stack.sandbox_list_count(list_id)

        # 5. The asset's definition (group, owners, kinds) and its numeric metadata as plots.
        page.goto(f"{ui}/assets/sendgrid_list_sync")
        for text in ("sendgrid_export", "data-engineering", "sendgrid_export_job"):
            page.get_by_text(text, exact=True).first.wait_for()
        page.get_by_role("button", name="Plots").click()
        page.get_by_text("list_contact_count", exact=True).first.wait_for()
        page.screenshot(path=str(screenshots / "05-asset-definition-and-plots.png"))

        # 6. The blocking checks on the contacts, evaluated by that run.
        page.goto(f"{ui}/assets/sendgrid_contacts?view=checks")
        page.get_by_text("sendgrid_contacts_email_valid", exact=True).first.wait_for()
        page.get_by_text("Passed", exact=True).first.wait_for()
        page.screenshot(path=str(screenshots / "06-asset-checks.png"))

        # 7. The schedule and the sensors, each with its description.
        page.goto(f"{ui}/locations/sendgrid_pipeline/sensors/export_request_sensor")
        page.get_by_text(re.compile("On-demand export from outside the UI")).wait_for()
        page.screenshot(path=str(screenshots / "07-export-request-sensor.png"))
        page.goto(f"{ui}/locations/sendgrid_pipeline/schedules/sendgrid_refresh_schedule")
        page.get_by_text(re.compile("Scheduled refresh")).wait_for()
        page.screenshot(path=str(screenshots / "08-refresh-schedule.png"))
