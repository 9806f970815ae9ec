"""GET /v3/marketing/contacts/count parsed into ContactCount (scripted answers, the sandbox)."""

from __future__ import annotations

import pytest

from sendgrid_pipeline.errors import PipelineError
from sendgrid_pipeline.sendgrid.client import ContactCount, SendGridClient
from sendgrid_pipeline_tests.devkit.sandbox import SandboxServer
from sendgrid_pipeline_tests.sendgrid.test_client import ScriptedSession, client, response


def test_the_counts_of_a_plain_account() -> None:
    session = ScriptedSession(response(200, b'{"contact_count": 1200, "billable_count": 1350}'))
    counted = client(session, []).contact_count()
    assert counted == ContactCount(contact_count=1200, billable_count=1350)
    assert counted.billable_total is None and dict(counted.billable_breakdown) == {}
    (call,) = session.calls
    assert call["method"] == "GET"
    assert call["url"] == "https://api.sendgrid.com/v3/marketing/contacts/count"


def test_a_parent_account_has_the_billable_breakdown_of_its_subusers() -> None:
    body = (
        b'{"contact_count": 10, "billable_count": 12, "billable_breakdown": '
        b'{"total": 40, "breakdown": {"sub_1": 25, "sub_2": 15}}}'
    )
    counted = client(ScriptedSession(response(200, body)), []).contact_count()
    assert (counted.contact_count, counted.billable_count) == (10, 12)
    assert counted.billable_total == 40
    assert dict(counted.billable_breakdown) == {"sub_1": 25, "sub_2": 15}


def test_billable_count_defaults_to_zero_as_the_schema_says() -> None:
    counted = client(ScriptedSession(response(200, b'{"contact_count": 3}')), []).contact_count()
    assert counted == ContactCount(3, 0)


@pytest.mark.parametrize(
    "body", [b"{}", b'{"contact_count": "12"}', b'{"contact_count": -1}', b"[1]"]
)
def test_an_answer_without_a_count_is_an_error(body: bytes) -> None:
    with pytest.raises(PipelineError, match="not a count") as problem:
        client(ScriptedSession(response(200, body)), []).contact_count()
    assert problem.value.retryable is False


def test_the_sandbox_counts_every_contact_in_the_account() -> None:
    with SandboxServer(lists={"l1": "List"}) as sandbox:
        sandbox.add_contact_by_hand("a@example.com", ["l1"])
        sandbox.add_contact_by_hand("b@example.com", [])
        api = SendGridClient(sandbox.api_key, sandbox.base_url)
        assert api.contact_count() == ContactCount(2, 2)
        sandbox._store.billable_count = 5
        assert api.contact_count() == ContactCount(2, 5)
