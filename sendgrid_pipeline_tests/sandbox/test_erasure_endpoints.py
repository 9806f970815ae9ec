"""The sandbox's deletion and erasure endpoints, and the client calls that use them."""

from __future__ import annotations

import json

import pytest
import requests
from hypothesis import given, settings
from hypothesis import strategies as st

from sendgrid_pipeline.erasure import erasure_chunks
from sendgrid_pipeline.sendgrid.client import (
    ERASE_BODY_MAX_BYTES,
    ERASE_EMAILS_MAX,
    SendGridClient,
)
from sendgrid_pipeline.sendgrid.errors import SendGridError
from sendgrid_pipeline_tests.devkit.sandbox import SandboxServer

EU = "3f1c7a52-9f0e-4a57-9d1e-2b7f0c8a1e01"
VIP = "8b2d4e6f-1a3c-4b5d-8e7f-9a0b1c2d3e4f"


def call(sandbox: SandboxServer, method: str, path: str, **kwargs) -> requests.Response:
    return requests.request(
        method,
        f"{sandbox.base_url}{path}",
        headers={"Authorization": f"Bearer {sandbox.api_key}"},
        timeout=10,
        **kwargs,
    )


def client(sandbox: SandboxServer) -> SendGridClient:
    return SendGridClient(sandbox.api_key, sandbox.base_url, poll_interval_seconds=0.02)


def test_deleting_contacts_is_a_delete_job_that_empties_every_list(sandbox) -> None:
    kept = sandbox.add_contact_by_hand("kept@example.com", [EU])
    gone = sandbox.add_contact_by_hand("gone@example.com", [EU, VIP])
    sendgrid = client(sandbox)
    job_id = sendgrid.delete_contacts([gone])
    job = sendgrid.wait_for_job(job_id)
    assert (job.status, job.job_type, job.count("deleted_count")) == ("completed", "delete", 1)
    assert sandbox.contact("gone@example.com") is None
    assert sandbox.list_member_emails(EU) == {"kept@example.com"}
    assert sandbox.list_member_emails(VIP) == set()
    assert sandbox.deleted_emails() == ["gone@example.com"]
    assert sendgrid.search_emails(["gone@example.com", "kept@example.com"]) == {
        "kept@example.com": kept
    }
    request = next(r for r in sandbox.requests if r.method == "DELETE")
    assert request.path == "/v3/marketing/contacts" and request.status == 202


def test_delete_all_contacts_is_refused_and_counted(sandbox) -> None:
    sandbox.add_contact_by_hand("a@example.com", [EU])
    answer = call(
        sandbox, "DELETE", "/v3/marketing/contacts", params={"delete_all_contacts": "true"}
    )
    assert answer.status_code == 400
    assert answer.json()["errors"][0]["field"] == "delete_all_contacts"
    assert sandbox.delete_all_requests == 1
    assert sandbox.contact("a@example.com") is not None


@pytest.mark.parametrize(
    ("params", "status"),
    [({}, 400), ({"ids": ""}, 400), ({"ids": "no-such-id"}, 404)],
)
def test_a_deletion_without_known_ids_is_refused(sandbox, params, status) -> None:
    answer = call(sandbox, "DELETE", "/v3/marketing/contacts", params=params)
    assert answer.status_code == status
    assert answer.json()["errors"][0]["field"] == "ids"


def test_an_erase_job_is_accepted_deduplicated_and_recorded(sandbox) -> None:
    job_id = client(sandbox).create_erasure_job(["A@example.com", "a@example.com", "b@example.com"])
    assert sandbox.erasure_jobs() == [(job_id, ["a@example.com", "b@example.com"])]


def test_an_invalid_address_is_a_400_in_the_documented_shape(sandbox) -> None:
    answer = call(
        sandbox, "POST", "/v3/recipients/erasejob", json={"email_addresses": ["ok@x.io", "bad@"]}
    )
    assert answer.status_code == 400
    assert answer.json() == {
        "errors": [{"field": "email_addresses", "message": "Email_address bad@ is not valid"}]
    }
    with pytest.raises(SendGridError):
        client(sandbox).create_erasure_job(["bad@"])
    assert sandbox.erasure_jobs() == []


def test_the_sandbox_enforces_5000_addresses_and_256_kb(sandbox) -> None:
    many = [f"u{i}@example.com" for i in range(ERASE_EMAILS_MAX + 1)]
    answer = call(sandbox, "POST", "/v3/recipients/erasejob", json={"email_addresses": many})
    assert answer.status_code == 400
    long = [f"{'x' * 60}{i}@{'d' * 180}.com" for i in range(1100)]  # ~270 KB, < 5,000
    answer = call(sandbox, "POST", "/v3/recipients/erasejob", json={"email_addresses": long})
    assert answer.status_code == 400 and "too large" in answer.json()["errors"][0]["message"]
    with pytest.raises(ValueError, match="5000 addresses"):
        client(sandbox).create_erasure_job(many)
    for batch in erasure_chunks(long) + erasure_chunks(many):  # what the pipeline sends
        client(sandbox).create_erasure_job(batch)
    assert sum(len(emails) for _, emails in sandbox.erasure_jobs()) == len(long) + len(many)


@settings(max_examples=60, deadline=None)
@given(
    st.lists(
        st.text(st.characters(codec="utf-8", exclude_categories=("Cs",)), min_size=1, max_size=300),
        max_size=400,
    ),
    st.integers(min_value=1, max_value=50),
    st.integers(min_value=400, max_value=20_000),
)
def test_erase_chunks_keep_order_and_respect_both_limits(emails, max_emails, max_bytes) -> None:
    batches = erasure_chunks(emails, max_emails, max_bytes)
    assert [e for batch in batches for e in batch] == emails
    for batch in batches:
        body = json.dumps({"email_addresses": batch}, separators=(",", ":")).encode()
        assert 1 <= len(batch) <= max_emails and len(body) <= max_bytes
    assert ERASE_BODY_MAX_BYTES == 256_000
