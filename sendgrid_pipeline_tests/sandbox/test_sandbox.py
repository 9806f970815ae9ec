"""The SendGrid sandbox over real HTTP: contract, asynchronous jobs, faults and the CLI."""

from __future__ import annotations

import csv
import gzip
import io
import json
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import requests

from sendgrid_pipeline_tests.devkit.sandbox import (
    MAX_UPSERT_BYTES,
    MAX_UPSERT_CONTACTS,
    FaultPlan,
    SandboxServer,
)
from sendgrid_pipeline_tests.devkit.sandbox import __main__ as sandbox_cli

REPO_ROOT = Path(__file__).resolve().parents[2]
EU = "3f1c7a52-9f0e-4a57-9d1e-2b7f0c8a1e01"
US = "8d2e4b61-0a1f-4c3d-8e5f-6a7b8c9d0e12"
CONTACTS = "/v3/marketing/contacts"


class Api:
    """A requests.Session bound to one sandbox, with the key already set."""

    def __init__(self, server: SandboxServer) -> None:
        self.server = server
        self.session = requests.Session()
        self.session.headers["Authorization"] = f"Bearer {server.api_key}"

    def call(self, method: str, path: str, **kwargs: Any) -> requests.Response:
        url = path if path.startswith("http") else f"{self.server.base_url}{path}"
        return self.session.request(method, url, timeout=10, **kwargs)

    def upsert(self, contacts: list[dict[str, Any]], list_ids: list[str] | None = None) -> str:
        response = self.call(
            "PUT", CONTACTS, json={"list_ids": list_ids or [], "contacts": contacts}
        )
        assert response.status_code == 202, response.text
        return response.json()["job_id"]

    def wait(self, job_id: str, path: str = f"{CONTACTS}/imports/") -> dict[str, Any]:
        deadline = time.monotonic() + 5
        while True:
            view = self.call("GET", f"{path}{job_id}").json()
            if view["status"] != "pending" or time.monotonic() > deadline:
                return view
            time.sleep(0.02)


@pytest.fixture
def sandbox() -> Iterator[SandboxServer]:
    with SandboxServer(lists={EU: "EU newsletter", US: "US newsletter"}) as server:
        yield server


@pytest.fixture
def api(sandbox: SandboxServer) -> Api:
    return Api(sandbox)


def _errors(response: requests.Response) -> list[dict[str, Any]]:
    return response.json()["errors"]


# -- auth and headers ------------------------------------------------------------------------------
def test_auth_missing_wrong_revoked_and_forbidden(sandbox: SandboxServer) -> None:
    url = f"{sandbox.base_url}/v3/marketing/lists"
    missing = requests.get(url, timeout=5)
    assert missing.status_code == 401
    assert missing.json() == {"errors": [{"field": None, "message": "authorization required"}]}
    wrong = requests.get(url, headers={"Authorization": "Bearer SG.wrong"}, timeout=5)
    assert wrong.status_code == 401

    sandbox.revoked_keys = {"SG.revoked"}
    revoked = requests.get(url, headers={"Authorization": "Bearer SG.revoked"}, timeout=5)
    assert revoked.status_code == 401
    assert "invalid, expired, or revoked" in _errors(revoked)[0]["message"]

    sandbox.forbidden_keys.add("SG.no-scope")
    forbidden = requests.get(url, headers={"Authorization": "Bearer SG.no-scope"}, timeout=5)
    assert forbidden.status_code == 403
    assert forbidden.json() == {"errors": [{"field": None, "message": "access forbidden"}]}


def test_every_response_has_rate_limit_headers_and_unknown_paths_404(api: Api) -> None:
    for response in (api.call("GET", "/v3/marketing/lists"), api.call("GET", "/v3/nope")):
        assert {"X-RateLimit-Limit", "X-RateLimit-Remaining", "X-RateLimit-Reset"} <= set(
            response.headers
        )
        assert int(response.headers["X-RateLimit-Reset"]) >= int(time.time())
    assert api.call("GET", "/v3/nope").status_code == 404
    assert _errors(api.call("GET", "/v3/nope"))[0]["message"].startswith("not found")
    bad_json = api.call("PUT", CONTACTS, data=b"{not json", headers={"Content-Type": "x"})
    assert bad_json.status_code == 400


# -- upsert ----------------------------------------------------------------------------------------
def test_upsert_is_pending_then_completed_and_merges_case_insensitively(
    api: Api, sandbox: SandboxServer
) -> None:
    job_id = api.upsert([{"email": "Foo@X.com", "first_name": "Ann", "city": "Paris"}], [EU])
    first = api.call("GET", f"{CONTACTS}/imports/{job_id}").json()
    assert first["status"] == "pending" and first["job_type"] == "upsert"
    done = api.wait(job_id)
    assert done["status"] == "completed"
    assert done["results"]["created_count"] == 1 and "finished_at" in done

    second = api.wait(api.upsert([{"email": "foo@x.com", "last_name": "Lee", "city": ""}], [US]))
    assert second["results"]["updated_count"] == 1
    contact = sandbox.contact("FOO@x.com")
    assert contact is not None
    assert contact["email"] == "foo@x.com"
    assert (contact["first_name"], contact["last_name"], contact["city"]) == ("Ann", "Lee", "")
    assert sorted(contact["list_ids"]) == sorted([EU, US])
    assert sandbox.list_member_emails(EU) == {"foo@x.com"} == sandbox.list_member_emails(US)
    count = api.call("GET", f"/v3/marketing/lists/{EU}/contacts/count").json()
    assert count == {"contact_count": 1, "billable_count": 1}
    assert api.call("GET", f"{CONTACTS}/imports/no-such-job").status_code == 404


def test_contact_count_limit(api: Api) -> None:
    contacts = [{"email": f"u{i}@example.com"} for i in range(MAX_UPSERT_CONTACTS)]
    assert api.call("PUT", CONTACTS, json={"contacts": contacts}).status_code == 202
    contacts.append({"email": "one-more@example.com"})
    too_many = api.call("PUT", CONTACTS, json={"contacts": contacts})
    assert too_many.status_code == 400 and _errors(too_many)[0]["field"] == "contacts"
    assert api.call("PUT", CONTACTS, json={"contacts": []}).status_code == 400


def test_body_just_over_six_megabytes_is_413(api: Api, sandbox: SandboxServer) -> None:
    prefix, suffix = b'{"contacts":[{"email":"a@example.com","postal_code":"', b'"}]}'
    body = prefix + b"x" * (MAX_UPSERT_BYTES + 1 - len(prefix) - len(suffix)) + suffix
    response = api.call("PUT", CONTACTS, data=body, headers={"Content-Type": "application/json"})
    assert response.status_code == 413
    message = _errors(response)[0]["message"]
    assert message == f"request body too large: {MAX_UPSERT_BYTES + 1} bytes, limit 6000000"
    assert sandbox.requests[-1].body_bytes == MAX_UPSERT_BYTES + 1
    assert api.call("GET", "/v3/marketing/lists").status_code == 200  # connection still usable


def test_request_validation_names_the_field(api: Api) -> None:
    too_long = api.call(
        "PUT",
        CONTACTS,
        json={
            "contacts": [{"email": "a@example.com"}, {"email": "b@x.io", "first_name": "n" * 51}]
        },
    )
    assert too_long.status_code == 400
    assert _errors(too_long)[0]["field"] == "contacts[1].first_name"
    no_identifier = api.call("PUT", CONTACTS, json={"contacts": [{"first_name": "Ann"}]})
    assert no_identifier.status_code == 400 and _errors(no_identifier)[0]["field"] == "contacts[0]"
    unknown_list = api.call(
        "PUT", CONTACTS, json={"list_ids": ["not-a-list"], "contacts": [{"email": "a@x.io"}]}
    )
    assert unknown_list.status_code == 404
    assert _errors(unknown_list)[0]["field"] == "list_ids"
    assert "not-a-list" in _errors(unknown_list)[0]["message"]


def test_errored_job_serves_an_errors_csv(api: Api, sandbox: SandboxServer) -> None:
    contacts = [{"email": "ok@example.com"}, {"email": "bad..dots@example.com"}, {"email": "x@y"}]
    job = api.wait(api.upsert(contacts, [EU]))
    assert job["status"] == "errored"
    assert job["results"]["errored_count"] == 2 and job["results"]["created_count"] == 1
    errors_csv = requests.get(job["results"]["errors_url"], timeout=5)  # no auth, like S3
    rows = list(csv.DictReader(io.StringIO(errors_csv.text)))
    assert [(row["row_index"], row["email"]) for row in rows] == [
        ("1", "bad..dots@example.com"),
        ("2", "x@y"),
    ]
    assert sandbox.list_member_emails(EU) == {"ok@example.com"}


def test_rejection_pattern_and_fail_jobs_give_failed_jobs(api: Api, sandbox: SandboxServer) -> None:
    sandbox.set_faults(FaultPlan(reject_email_pattern=r"@blocked\.test$"))
    job = api.wait(api.upsert([{"email": "a@blocked.test"}, {"email": "b@blocked.test"}]))
    assert job["status"] == "failed" and job["results"]["errored_count"] == 2
    assert "errors_url" in job["results"]

    sandbox.set_faults(FaultPlan(fail_jobs=True))
    job = api.wait(api.upsert([{"email": "fine@example.com"}]))
    assert job["status"] == "failed"
    assert sandbox.contact("fine@example.com") is None
    assert sandbox.fault_counts == {"rejected_rows": 2, "failed_jobs": 1}


# -- lookup and removal ----------------------------------------------------------------------------
def test_search_emails(api: Api, sandbox: SandboxServer) -> None:
    sandbox.add_contact_by_hand("ann@example.com", [EU], first_name="Ann")
    path = f"{CONTACTS}/search/emails"
    found = api.call("POST", path, json={"emails": ["ANN@example.com", "nobody@example.com"]})
    assert found.status_code == 200
    result = found.json()["result"]
    assert result["ANN@example.com"]["contact"]["email"] == "ann@example.com"
    assert result["ANN@example.com"]["contact"]["list_ids"] == [EU]
    assert result["nobody@example.com"] == {"error": "contact not found"}
    assert api.call("POST", path, json={"emails": ["nobody@example.com"]}).status_code == 404
    too_many = [f"u{i}@example.com" for i in range(101)]
    assert api.call("POST", path, json={"emails": too_many}).status_code == 400
    assert api.call("POST", path, json={"emails": ["not an email"]}).status_code == 400


def test_remove_from_list_keeps_the_contact(api: Api, sandbox: SandboxServer) -> None:
    ann = sandbox.add_contact_by_hand("ann@example.com", [EU, US])
    bob = sandbox.add_contact_by_hand("bob@example.com", [EU])
    path = f"/v3/marketing/lists/{EU}/contacts"
    response = api.call("DELETE", path, params={"contact_ids": f"{ann},{bob}"})
    assert response.status_code == 202
    job = api.wait(response.json()["job_id"])
    assert (job["status"], job["job_type"], job["results"]["deleted_count"]) == (
        "completed",
        "delete",
        2,
    )
    assert sandbox.list_member_emails(EU) == set()
    contact = sandbox.contact("ann@example.com")
    assert contact is not None and contact["list_ids"] == [US]
    assert api.call("DELETE", path).status_code == 400
    assert api.call("DELETE", path, params={"contact_ids": ""}).status_code == 400
    unknown_list = api.call("DELETE", "/v3/marketing/lists/nope/contacts?contact_ids=" + ann)
    assert unknown_list.status_code == 404


# -- lists and field definitions -------------------------------------------------------------------
def test_lists_paging_detail_and_sample(api: Api, sandbox: SandboxServer) -> None:
    for n in range(3):
        sandbox.create_list(f"extra {n}")
    seen, url = [], "/v3/marketing/lists?page_size=2"
    while url:
        page = api.call("GET", url).json()
        assert page["_metadata"]["count"] == 5
        seen += [item["id"] for item in page["result"]]
        url = page["_metadata"].get("next")
    assert len(seen) == len(set(seen)) == 5 and seen[:2] == [EU, US]
    assert api.call("GET", "/v3/marketing/lists?page_size=1001").status_code == 400

    sandbox.add_contact_by_hand("ann@example.com", [EU])
    detail = api.call("GET", f"/v3/marketing/lists/{EU}").json()
    assert (detail["name"], detail["contact_count"]) == ("EU newsletter", 1)
    assert "contact_sample" not in detail
    sample = api.call("GET", f"/v3/marketing/lists/{EU}?contact_sample=true").json()
    assert [c["email"] for c in sample["contact_sample"]] == ["ann@example.com"]
    assert api.call("GET", "/v3/marketing/lists/nope").status_code == 404


def test_field_definitions_and_custom_field_types(api: Api, sandbox: SandboxServer) -> None:
    path = "/v3/marketing/field_definitions"
    listing = api.call("GET", path).json()
    reserved = {field["name"]: field for field in listing["reserved_fields"]}
    assert reserved["first_name"]["id"] == "_rf0_T" and reserved["contact_id"]["read_only"]
    assert listing["custom_fields"] == []

    created = api.call("POST", path, json={"name": "score", "field_type": "Number"})
    assert created.status_code == 200
    score = created.json()["id"]
    assert score.endswith("_N") and created.json()["name"] == "score"
    born = sandbox.define_custom_field("born", "Date")
    for bad in (
        {"name": "SCORE", "field_type": "Text"},  # duplicate, ignoring case
        {"name": "first_name", "field_type": "Text"},  # reserved
        {"name": "9lives", "field_type": "Text"},
        {"name": "ok_name", "field_type": "Boolean"},
    ):
        assert api.call("POST", path, json=bad).status_code == 400, bad

    def upsert_status(custom: dict[str, Any]) -> int:
        body = {"contacts": [{"email": "c@example.com", "custom_fields": custom}]}
        return api.call("PUT", CONTACTS, json=body).status_code

    assert upsert_status({score: "12"}) == 400  # Number must be a number
    assert upsert_status({born: "31/12/2000"}) == 400
    assert upsert_status({"score": 1}) == 400  # a name, not an id
    assert upsert_status({score: 12, born: "12/31/2000"}) == 202
    assert upsert_status({born: "2000-12-31"}) == 202
    sandbox.wait_for_idle()
    contact = sandbox.contact("c@example.com")
    assert contact is not None
    assert contact["custom_fields"] == {"score": 12, "born": "2000-12-31"}


# -- exports ---------------------------------------------------------------------------------------
@pytest.mark.parametrize("file_type", ["csv", "json"])
def test_export_round_trip(api: Api, sandbox: SandboxServer, file_type: str) -> None:
    tier = sandbox.define_custom_field("tier", "Text")
    api.wait(
        api.upsert(
            [
                {"email": "ann@example.com", "first_name": "Ann", "custom_fields": {tier: "gold"}},
                {"email": "bob@example.com", "last_name": "Bob"},
            ],
            [EU, US],
        )
    )
    started = api.call(
        "POST", f"{CONTACTS}/exports", json={"list_ids": [EU], "file_type": file_type}
    )
    assert started.status_code == 202
    export = api.wait(started.json()["id"], f"{CONTACTS}/exports/")
    assert export["status"] == "ready" and export["contact_count"] == 2
    download = requests.get(export["urls"][0], timeout=5)
    assert download.headers["Content-Type"] == "application/gzip"
    text = gzip.decompress(download.content).decode()
    if file_type == "csv":
        rows = list(csv.DictReader(io.StringIO(text)))
        assert list(rows[0])[:2] == ["CONTACT_ID", "EMAIL"] and list(rows[0])[-1] == "tier"
        ann = next(row for row in rows if row["EMAIL"] == "ann@example.com")
        assert (ann["FIRST_NAME"], ann["tier"]) == ("Ann", "gold")
        assert sorted(ann["LIST_IDS"].split(",")) == sorted([EU, US])
    else:
        items = [json.loads(line) for line in text.splitlines()]
        ann = next(item for item in items if item["email"] == "ann@example.com")
        assert ann["custom_fields"] == {"tier": "gold"}
        assert sorted(ann["list_ids"]) == sorted([EU, US]) and ann["contact_id"]
    listed = api.call("GET", f"{CONTACTS}/exports").json()["result"]
    assert [item["id"] for item in listed] == [export["id"]]


# -- faults ----------------------------------------------------------------------------------------
def test_rate_limit_answers_429_until_the_window_resets(api: Api, sandbox: SandboxServer) -> None:
    sandbox.set_faults(FaultPlan(rate_limit=(3, 2.0)))
    answers = [api.call("GET", "/v3/marketing/lists") for _ in range(4)]
    assert [r.status_code for r in answers] == [200, 200, 200, 429]
    assert [r.headers["X-RateLimit-Remaining"] for r in answers] == ["2", "1", "0", "0"]
    assert _errors(answers[3]) == [{"field": None, "message": "too many requests"}]
    assert int(answers[3].headers["X-RateLimit-Reset"]) > time.time()
    assert sandbox.fault_counts["rate_limit"] == 1


def test_scripted_500_drop_and_slow(api: Api, sandbox: SandboxServer) -> None:
    sandbox.set_faults(FaultPlan(scripted=["500", "drop", "slow", "ok"], slow_seconds=0.2))
    failed = api.call("PUT", CONTACTS, json={"contacts": [{"email": "a@example.com"}]})
    assert failed.status_code == 500  # not applied
    with pytest.raises(requests.ConnectionError):
        api.call("PUT", CONTACTS, json={"contacts": [{"email": "b@example.com"}]})
    started = time.monotonic()
    slow_job = api.upsert([{"email": "c@example.com"}])
    assert time.monotonic() - started >= 0.2  # answered late, but applied
    api.wait(slow_job)
    sandbox.wait_for_idle()
    assert sandbox.contact("a@example.com") is None  # 500: not applied
    assert sandbox.contact("b@example.com") is None  # dropped: not applied
    assert sandbox.contact("c@example.com") is not None  # slow: applied
    assert sandbox.fault_counts == {"500": 1, "drop": 1, "slow": 1}
    assert [r.status for r in sandbox.requests[:3]] == [500, 0, 202]
    assert sandbox.requests[2].contacts == 1


def test_random_faults_follow_the_seed_and_only_paths(api: Api, sandbox: SandboxServer) -> None:
    def statuses(plan: FaultPlan) -> list[int]:
        sandbox.set_faults(plan)
        return [api.call("GET", "/v3/marketing/lists").status_code for _ in range(20)]

    plan = {"error_5xx_rate": 0.5, "seed": 7}
    first, again = statuses(FaultPlan(**plan)), statuses(FaultPlan(**plan))
    assert first == again and {500, 503} & set(first) and 200 in first
    assert set(statuses(FaultPlan(error_5xx_rate=1.0, only_paths="/contacts"))) == {200}
    assert set(statuses(FaultPlan(burst_429=2))) == {200, 429}


# -- helpers and the CLI ---------------------------------------------------------------------------
def test_lists_from_destinations_file_and_loopback_only(tmp_path: Path) -> None:
    path = tmp_path / "destinations.yaml"
    path.write_text(
        f"destinations:\n  - name: newsletter_eu\n    display_name: EU newsletter\n"
        f"    list_id: {EU}\n    consent: true\n",
        encoding="utf-8",
    )
    assert SandboxServer.lists_from_destinations_file(path) == {EU: "EU newsletter"}
    with pytest.raises(ValueError, match="loopback"):
        SandboxServer(host="0.0.0.0")
    with pytest.raises(SystemExit) as refused:
        sandbox_cli.main(["--host", "192.168.1.10"])
    assert refused.value.code == 2


def _cli_setup(tmp_path: Path) -> int:
    """A destinations file with one list, and a free loopback port for the CLI."""
    (tmp_path / "destinations.yaml").write_text(
        f"destinations:\n  - name: eu\n    display_name: EU newsletter\n    list_id: {EU}\n",
        encoding="utf-8",
    )
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    return port


def test_cli_prints_its_url_and_key_and_serves(tmp_path: Path) -> None:
    port = _cli_setup(tmp_path)
    process = subprocess.Popen(
        [sys.executable, "-m", "sendgrid_pipeline_tests.devkit.sandbox", "--port", str(port)],
        cwd=REPO_ROOT,
        env={**os.environ, "SENDGRID_PIPELINE_DATA_DIR": str(tmp_path)},
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        text=True,
    )
    try:
        assert process.stdout is not None
        settings = dict(process.stdout.readline().strip().split("=", 1) for _ in range(2))
        assert settings["SENDGRID_BASE_URL"] == f"http://127.0.0.1:{port}"
        assert settings["SENDGRID_API_KEY"].startswith("SG.sandbox-")
        response = requests.get(
            f"{settings['SENDGRID_BASE_URL']}/v3/marketing/lists/{EU}",
            headers={"Authorization": f"Bearer {settings['SENDGRID_API_KEY']}"},
            timeout=5,
        )
        assert response.status_code == 200 and response.json()["name"] == "EU newsletter"
    finally:
        process.send_signal(signal.SIGTERM)
        assert process.wait(timeout=5) == 0


def test_cli_fault_options_inject_faults(tmp_path: Path) -> None:
    """Faults are configurable from the command line, e.g. for a manual resilience check."""
    port = _cli_setup(tmp_path)
    command = [
        sys.executable,
        "-m",
        "sendgrid_pipeline_tests.devkit.sandbox",
        "--port",
        str(port),
        "--api-key",
        "SG.cli-fault-test",
        "--destinations",
        str(tmp_path / "destinations.yaml"),
        "--fault-script",
        "503,429,ok",
        "--fault-rate-limit",
        "100/60",
    ]
    process = subprocess.Popen(
        command, cwd=REPO_ROOT, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True
    )
    try:
        assert process.stdout is not None
        process.stdout.readline()
        process.stdout.readline()
        url = f"http://127.0.0.1:{port}/v3/marketing/lists/{EU}"
        headers = {"Authorization": "Bearer SG.cli-fault-test"}
        statuses = [requests.get(url, headers=headers, timeout=5).status_code for _ in range(3)]
        assert statuses == [503, 429, 200]
        last = requests.get(url, headers=headers, timeout=5)
        assert last.headers["X-RateLimit-Limit"] == "100"
        assert int(last.headers["X-RateLimit-Remaining"]) < 100
    finally:
        process.send_signal(signal.SIGTERM)
        assert process.wait(timeout=5) == 0
