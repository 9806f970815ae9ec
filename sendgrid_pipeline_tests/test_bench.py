"""The benchmark at a small size, so it cannot rot: JSON shape and correctness, never durations.

Timings depend on the machine and are only reported (docs/BENCHMARKS.md); what must always hold
is that the first sync uses the fewest upsert requests, an unchanged rerun sends nothing, a 1%
change sends exactly the changed contacts, 15% churn removes exactly the leavers, and every
scenario is reported with its floor, its requests by kind and its time waiting on SendGrid.
"""

from __future__ import annotations

import json
import subprocess
import sys
from numbers import Number
from typing import Any

import pytest
import requests

from sendgrid_pipeline_tests.devkit.bench import STEPS
from sendgrid_pipeline_tests.devkit.sandbox import SandboxServer

PROFILES = 2000
RUNS = ("initial", "no_change", "change", "churn")


@pytest.fixture(scope="module")
def result() -> dict[str, Any]:
    """One benchmark run, as `make bench PROFILES=2000` would do it (CLI, separate sandbox)."""
    completed = subprocess.run(
        [
            sys.executable,
            "-m",
            "sendgrid_pipeline_tests.devkit.bench",
            "--profiles",
            str(PROFILES),
            "--floor-runs",
            "1",
            "--churn-job-delay",
            "0.5",
        ],
        capture_output=True,
        text=True,
        timeout=600,
    )
    lines = completed.stdout.strip().splitlines()
    assert completed.returncode == 0, completed.stdout[-3000:] + completed.stderr[-3000:]
    return json.loads(lines[-1])


def test_the_last_line_is_the_whole_report(result: dict[str, Any]) -> None:
    assert result["profiles"] == PROFILES
    assert set(result["runs"]) == set(RUNS)
    assert result["machine"]["cpus"] >= 1
    assert "dagster asset materialize" in result["command"]
    for name in RUNS:
        run = result["runs"][name]
        assert run["ok"] is True, name
        for key in (
            "total_wall_seconds",
            "dagster_cpu_seconds",
            "peak_rss_mb",
            "sandbox_cpu_seconds",
            "sandbox_handling_seconds",
            "contacts_sent",
            "upsert_requests",
            "min_upsert_requests",
            "bytes_sent",
            "waiting_on_sendgrid_seconds",
            "working_seconds",
            "pipeline_over_floor",
            "requests_over_minimum",
        ):
            assert isinstance(run[key], Number) and run[key] >= 0, (name, key)
        assert run["waiting_on_sendgrid_seconds"] + run["working_seconds"] == pytest.approx(
            run["total_wall_seconds"], abs=0.01
        )
        assert sum(run["requests_by_kind"].values()) == run["requests"], name
        floor = run["floor"]
        assert floor["dagster_noop_seconds"] == result["dagster_floor"]["seconds"] > 0
        assert floor["polars_work_seconds"] > 0
        assert floor["seconds"] >= floor["dagster_noop_seconds"]
        assert {"startup", *STEPS, "teardown"} <= set(run["stages"]), name
        for stage in ("startup", *STEPS, "teardown"):
            figures = run["stages"][stage]
            assert figures["wall_seconds"] >= 0, (name, stage)
            assert figures["cpu_seconds"] is None or figures["cpu_seconds"] >= 0, (name, stage)


def test_first_sync_sends_every_contact_in_the_fewest_requests(result: dict[str, Any]) -> None:
    initial = result["runs"]["initial"]
    assert initial["contacts_expected"] > PROFILES // 2  # the segment selects most profiles
    assert initial["contacts_sent"] == initial["contacts_expected"]
    assert initial["list_contact_count"] == initial["contacts_expected"]
    assert initial["upsert_requests"] == initial["min_upsert_requests"] >= 1
    assert initial["upsert_ratio"] == 1.0
    assert initial["contact_json_bytes_sent"] == initial["contact_json_bytes_expected"]


def test_unchanged_rerun_sends_nothing(result: dict[str, Any]) -> None:
    unchanged = result["runs"]["no_change"]
    assert unchanged["contacts_sent"] == unchanged["upsert_requests"] == 0
    assert unchanged["requests_by_method"].get("PUT", 0) == 0
    assert unchanged["requests_by_method"].get("DELETE", 0) == 0


def test_one_percent_change_sends_exactly_the_changed_contacts(result: dict[str, Any]) -> None:
    changed = result["runs"]["change"]
    assert changed["profiles_changed"] == PROFILES // 100
    assert 0 < changed["contacts_expected"] <= changed["profiles_changed"]
    assert changed["contacts_sent"] == changed["contacts_expected"]
    assert changed["contact_json_bytes_sent"] == changed["contact_json_bytes_expected"]
    assert changed["upsert_ratio"] == 1.0
    assert changed["list_contact_count"] == result["runs"]["initial"]["list_contact_count"]


def test_correctness_targets_are_met(result: dict[str, Any]) -> None:
    for name in ("upsert_ratio", "no_change_sends_zero", "change_sends_exactly_changed"):
        assert result["targets"][name]["met"] is True, name
    assert result["targets"]["churn_removes_exactly_the_leavers"]["met"] is True
    assert "pipeline_over_floor" in result["targets"]  # reported, whether met or not
    assert not any(k.endswith("wall_seconds") for k in result["targets"])  # 100k and 1M only


def test_churn_removes_exactly_the_leavers_and_waits_on_slower_jobs(
    result: dict[str, Any],
) -> None:
    churn = result["runs"]["churn"]
    assert churn["profiles_left"] > 0
    assert churn["removals_expected"] > 0
    assert churn["list_contact_count"] == churn["list_contact_count_expected"]
    assert churn["list_contact_count"] == (
        result["runs"]["change"]["list_contact_count"] - churn["removals_expected"]
    )
    assert churn["contacts_sent"] == churn["contacts_expected"]  # only emails whose kept
    assert churn["requests_by_kind"]["remove"] >= 1  # profile changed are sent again
    assert churn["requests_by_kind"]["search_emails"] >= 1
    assert churn["latency_model"]["job_base_seconds"] == 0.5
    assert churn["waiting_on_sendgrid_seconds"] > 0  # the client's own work overlaps the jobs
    assert churn["floor"]["sendgrid_minimum_wait_seconds"] >= 0.5


def test_sandbox_stats_count_traffic_without_auth_and_without_logging_itself() -> None:
    list_id = "0b3c5e7a-be9c-4000-8000-00000000be9c"
    with SandboxServer(lists={list_id: "Bench"}, job_delay_seconds=0) as server:
        body = {"list_ids": [list_id], "contacts": [{"email": "a@example.com"}]}
        response = requests.put(
            f"{server.base_url}/v3/marketing/contacts",
            json=body,
            headers={"Authorization": f"Bearer {server.api_key}"},
            timeout=10,
        )
        assert response.status_code == 202
        stats = requests.get(f"{server.base_url}/sandbox/stats", timeout=10).json()
        again = requests.get(f"{server.base_url}/sandbox/stats", timeout=10).json()
    assert stats["upsert_requests"] == stats["upsert_requests_accepted"] == 1
    assert stats["upsert_contacts"] == 1
    assert stats["upsert_body_bytes"] == len(response.request.body)
    assert stats["list_sizes"] == {list_id: 1}
    assert again["requests"] == stats["requests"] == 1  # reading the figures is not traffic
