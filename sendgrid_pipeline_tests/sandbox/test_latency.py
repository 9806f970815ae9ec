"""The sandbox's timing model: job time by size, the account's queue, per-endpoint rate limits,
round trips and lagging list counts. The fixed model (the default) must stay what every other
test relies on: a job pending job_delay_seconds, exact counts, no limits."""

from __future__ import annotations

import time

import pytest
import requests

from sendgrid_pipeline_tests.devkit.sandbox import SandboxServer
from sendgrid_pipeline_tests.devkit.sandbox.__main__ import build_parser
from sendgrid_pipeline_tests.devkit.sandbox.latency import (
    JobQueue,
    LatencyModel,
    request_kind,
)

LIST_ID = "5a7e1a7e-0000-4000-8000-00000000a7e1"


def _auth(server: SandboxServer) -> dict[str, str]:
    return {"Authorization": f"Bearer {server.api_key}"}


def _upsert(server: SandboxServer, emails: list[str]) -> requests.Response:
    body = {"list_ids": [LIST_ID], "contacts": [{"email": e} for e in emails]}
    return requests.put(
        f"{server.base_url}/v3/marketing/contacts", json=body, headers=_auth(server), timeout=10
    )


def _job(server: SandboxServer, job_id: str) -> dict:
    url = f"{server.base_url}/v3/marketing/contacts/imports/{job_id}"
    return requests.get(url, headers=_auth(server), timeout=10).json()


def _count(server: SandboxServer) -> int:
    url = f"{server.base_url}/v3/marketing/lists/{LIST_ID}"
    return requests.get(url, headers=_auth(server), timeout=10).json()["contact_count"]


# -- the model on its own ----------------------------------------------------------------------
def test_fixed_model_is_the_job_delay_and_nothing_else() -> None:
    model = LatencyModel.fixed(0.25)
    assert model.job_seconds(1) == model.job_seconds(30_000) == 0.25
    assert (model.request_seconds, model.rate_limit, model.count_lag_seconds) == (0, 0, 0)
    assert model.drain_seconds([30_000] * 5) == 0.25  # no queue: every job runs at once
    assert model.drain_seconds([]) == 0.0


def test_job_time_grows_with_size_and_the_queue_serializes_jobs() -> None:
    model = LatencyModel(job_base_seconds=1.0, job_seconds_per_item=0.001, job_workers=1)
    assert model.job_seconds(30_000) == pytest.approx(31.0)
    assert model.drain_seconds([1000, 1000, 1000]) == pytest.approx(6.0)  # one after another
    two = model.with_changes({"job_workers": 2})
    assert two.drain_seconds([1000, 1000, 1000]) == pytest.approx(4.0)


def test_queue_keeps_the_order_jobs_were_accepted_in() -> None:
    queue = JobQueue(LatencyModel(job_base_seconds=1.0, job_seconds_per_item=0.01, job_workers=2))
    big = queue.schedule(100.0, 1000)  # 11 s
    small = queue.schedule(100.0, 0)  # would be done in 1 s on the second worker
    third = queue.schedule(100.5, 0)  # both workers busy: starts at 101
    assert big == pytest.approx(111.0)
    assert small == big  # never done before an earlier job
    assert third == pytest.approx(111.0)
    assert queue.schedule(200.0, 0) == pytest.approx(201.0)  # idle account: starts at once


def test_realistic_preset_and_overrides() -> None:
    model = LatencyModel.from_preset("realistic")
    assert model.preset == "realistic"
    assert model.job_seconds(30_000) > model.job_seconds(100) > 1
    assert model.rate_limit > 0 and model.count_lag_seconds > 0 and model.job_workers >= 1
    assert model.with_changes({"job_workers": "4"}).job_workers == 4
    with pytest.raises(ValueError, match="unknown latency parameters"):
        model.with_changes({"job_wrokers": 4})
    with pytest.raises(ValueError, match="unknown latency preset"):
        LatencyModel.from_preset("slow")


def test_request_kinds() -> None:
    assert request_kind("PUT", "/v3/marketing/contacts") == "upsert"
    assert request_kind("GET", "/v3/marketing/contacts/imports/abc") == "job_status"
    assert request_kind("POST", "/v3/marketing/contacts/search/emails") == "search_emails"
    assert request_kind("DELETE", f"/v3/marketing/lists/{LIST_ID}/contacts") == "remove"
    assert request_kind("GET", f"/v3/marketing/lists/{LIST_ID}") == "list_read"
    assert request_kind("GET", f"/v3/marketing/lists/{LIST_ID}/contacts/count") == "list_read"
    assert request_kind("PATCH", "/v3/elsewhere") == "other"


def test_command_line_presets_and_settings() -> None:
    args = build_parser().parse_args(["--latency", "realistic", "--latency-set", "job_workers=4"])
    assert args.latency == "realistic" and args.latency_set == [("job_workers", "4")]
    assert build_parser().parse_args([]).latency == "fixed"


# -- through HTTP ------------------------------------------------------------------------------
def _until_done(server: SandboxServer, job_id: str, started: float) -> float:
    """Poll until the job is done; seconds from `started` (a lower bound of its due time)."""
    while _job(server, job_id)["status"] == "pending":
        time.sleep(0.02)
    return time.perf_counter() - started


# Timings below are asserted only as lower bounds and with gaps of a second or more: a loaded
# machine makes a client late, never early.
def test_default_sandbox_keeps_the_fixed_delay_and_exact_counts() -> None:
    with SandboxServer(lists={LIST_ID: "T"}, job_delay_seconds=1.0) as server:
        assert server.latency == LatencyModel.fixed(1.0)
        started = time.perf_counter()
        job_id = _upsert(server, ["a@example.com"]).json()["job_id"]
        assert _job(server, job_id)["status"] == "pending"
        assert _until_done(server, job_id, started) >= 1.0
        assert _count(server) == 1


def test_a_larger_job_stays_pending_longer_and_queued_jobs_wait() -> None:
    model = LatencyModel(job_base_seconds=0.5, job_seconds_per_item=0.3, job_workers=1)
    with SandboxServer(lists={LIST_ID: "T"}, latency=model) as server:
        started = time.perf_counter()
        big = _upsert(server, [f"b{i}@example.com" for i in range(5)]).json()["job_id"]  # 2.0 s
        small = _upsert(server, ["s@example.com"]).json()["job_id"]  # queued: 2.0 + 0.8 s
        assert _until_done(server, big, started) >= 2.0
        assert _job(server, small)["status"] == "pending"  # 0.8 s of it still to go
        assert _until_done(server, small, started) >= 2.8


def test_each_endpoint_has_its_own_rate_limit_window_in_the_headers() -> None:
    model = LatencyModel(rate_limit=2, rate_window_seconds=30.0)
    with SandboxServer(lists={LIST_ID: "T"}, latency=model) as server:
        url = f"{server.base_url}/v3/marketing/lists/{LIST_ID}"
        answers = [requests.get(url, headers=_auth(server), timeout=10) for _ in range(3)]
        assert [a.status_code for a in answers] == [200, 200, 429]
        assert [a.headers["X-RateLimit-Remaining"] for a in answers] == ["1", "0", "0"]
        assert {a.headers["X-RateLimit-Limit"] for a in answers} == {"2"}
        reset = int(answers[2].headers["X-RateLimit-Reset"])
        assert time.time() + 25 < reset <= time.time() + 31
        assert answers[2].json() == {"errors": [{"field": None, "message": "too many requests"}]}
        other = _upsert(server, ["a@example.com"])  # another endpoint, another window
        assert other.status_code == 202 and other.headers["X-RateLimit-Remaining"] == "1"


def test_counts_lag_the_membership_when_asked_to() -> None:
    model = LatencyModel(job_base_seconds=0.0, count_lag_seconds=3.0)
    with SandboxServer(lists={LIST_ID: "T"}, latency=model) as server:
        started = time.perf_counter()
        job_id = _upsert(server, ["a@example.com", "b@example.com"]).json()["job_id"]
        assert _job(server, job_id)["status"] == "completed"
        assert server.list_member_emails(LIST_ID) == {"a@example.com", "b@example.com"}
        assert _count(server) == 0  # the job is done; the count has not caught up
        while _count(server) != 2:
            time.sleep(0.05)
        assert time.perf_counter() - started >= 3.0
        count_url = f"{server.base_url}/v3/marketing/lists/{LIST_ID}/contacts/count"
        counted = requests.get(count_url, headers=_auth(server), timeout=10).json()
        assert counted["contact_count"] == 2


def test_round_trip_time_and_waiting_are_counted_by_kind() -> None:
    model = LatencyModel(job_base_seconds=0.3, request_seconds=0.1)
    with SandboxServer(lists={LIST_ID: "T"}, latency=model) as server:
        started = time.perf_counter()
        job_id = _upsert(server, ["a@example.com"]).json()["job_id"]
        assert time.perf_counter() - started >= 0.1
        while _job(server, job_id)["status"] == "pending":
            time.sleep(0.05)
        elapsed = time.perf_counter() - started
        stats = requests.get(f"{server.base_url}/sandbox/stats", timeout=10).json()
    assert stats["requests_by_kind"]["upsert"] == 1
    assert stats["requests_by_kind"]["job_status"] >= 2
    # Every answer took at least 0.1 s, and the client's 0.05 s sleep after each "pending"
    # answer is waiting too; none of it can exceed what the client saw.
    pending_answers = stats["requests_by_kind"]["job_status"] - 1
    least = 0.1 * stats["requests"] + 0.05 * pending_answers
    assert least <= stats["wait_seconds"] <= elapsed + 0.05
    assert stats["latency"]["request_seconds"] == 0.1


def test_the_model_can_be_switched_at_run_time_without_being_logged() -> None:
    with SandboxServer(lists={LIST_ID: "T"}, job_delay_seconds=0.05) as server:
        url = f"{server.base_url}/sandbox/latency"
        assert requests.get(url, timeout=10).json()["job_base_seconds"] == 0.05
        changed = requests.put(url, json={"job_delay_seconds": 2}, timeout=10).json()
        assert changed["job_base_seconds"] == 2 and changed["preset"] == "fixed"
        realistic = requests.put(url, json={"preset": "realistic", "job_workers": 3}, timeout=10)
        assert realistic.json()["preset"] == "realistic" and realistic.json()["job_workers"] == 3
        bad = requests.put(url, json={"nope": 1}, timeout=10)
        assert bad.status_code == 400
        assert server.latency.job_workers == 3
        assert server.requests == []
