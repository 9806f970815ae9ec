"""Client edge cases with a scripted session (the sandbox tests cover the real HTTP path)."""

from __future__ import annotations

import time
from collections import deque

import pytest
import requests

from sendgrid_pipeline.sendgrid.client import SendGridClient
from sendgrid_pipeline.sendgrid.errors import (
    InsecureTransportError,
    SendGridAuthError,
    SendGridBadRequestError,
    SendGridNotFoundError,
    SendGridUnavailableError,
)

KEY = "SG.unit-test-secret-key"


def response(status: int, body: bytes = b"{}", headers: dict | None = None) -> requests.Response:
    r = requests.Response()
    r.status_code = status
    r._content = body
    r.headers.update(headers or {})
    return r


class ScriptedSession:
    """Answers requests from a script; records every call's keyword arguments."""

    def __init__(self, *answers) -> None:
        self.answers = deque(answers)
        self.calls: list[dict] = []

    def request(self, method, url, **kwargs):
        self.calls.append({"method": method, "url": url, **kwargs})
        answer = self.answers.popleft()
        if isinstance(answer, Exception):
            raise answer
        return answer


def client(session: ScriptedSession, sleeps: list[float], **kwargs) -> SendGridClient:
    return SendGridClient(
        KEY, "https://api.sendgrid.com", session=session, sleep=sleeps.append, **kwargs
    )


def test_every_request_has_a_timeout_and_bearer_auth() -> None:
    session = ScriptedSession(response(200, b'{"id": "l1", "contact_count": 3}'))
    assert client(session, [], timeout_seconds=7).get_list("l1")["contact_count"] == 3
    (call,) = session.calls
    assert call["timeout"] == 7
    assert call["headers"]["Authorization"] == f"Bearer {KEY}"


def test_429_waits_until_the_reset_then_succeeds() -> None:
    reset = str(int(time.time()) + 3)
    session = ScriptedSession(
        response(
            429, b'{"errors":[{"message":"too many requests"}]}', {"X-RateLimit-Reset": reset}
        ),
        response(202, b'{"job_id": "j1"}'),
    )
    sleeps: list[float] = []
    assert client(session, sleeps).upsert_contacts(b"{}", 1) == "j1"
    assert len(sleeps) == 1 and 1.5 < sleeps[0] <= 3.5


def test_remaining_zero_paces_the_next_request() -> None:
    reset = str(int(time.time()) + 2)
    session = ScriptedSession(
        response(200, b"{}", {"X-RateLimit-Remaining": "0", "X-RateLimit-Reset": reset}),
        response(200, b"{}"),
    )
    sleeps: list[float] = []
    c = client(session, sleeps)
    c.get_list("a")
    assert sleeps == []
    c.get_list("a")
    assert len(sleeps) == 1 and sleeps[0] > 0.5


def test_5xx_and_connection_errors_are_retried_with_backoff_then_succeed() -> None:
    session = ScriptedSession(
        response(503),
        requests.ConnectionError("reset by peer"),
        requests.Timeout("slow"),
        response(200, b'{"contact_count": 1}'),
    )
    sleeps: list[float] = []
    assert client(session, sleeps, backoff_base_seconds=1.0).get_list("x")["contact_count"] == 1
    assert len(sleeps) == 3
    assert 0.5 <= sleeps[0] <= 1 and 1 <= sleeps[1] <= 2 and 2 <= sleeps[2] <= 4  # jittered


def test_retries_are_bounded_and_the_error_says_a_rerun_is_safe() -> None:
    session = ScriptedSession(*[response(500)] * 4)
    with pytest.raises(SendGridUnavailableError, match="rerun resumes safely"):
        client(session, [], max_retries=3).get_list("x")
    assert len(session.calls) == 4


@pytest.mark.parametrize(
    ("status", "error", "text"),
    [
        (400, SendGridBadRequestError, "first_name"),
        (401, SendGridAuthError, "revoked"),
        (403, SendGridAuthError, "scope"),
        (404, SendGridNotFoundError, "HTTP 404"),
    ],
)
def test_4xx_is_never_retried_and_is_typed(status, error, text) -> None:
    body = b'{"errors":[{"field":"first_name","message":"bad value"}]}'
    session = ScriptedSession(response(status, body))
    with pytest.raises(error) as raised:
        client(session, []).get_list("x")
    assert len(session.calls) == 1
    assert text in str(raised.value)
    assert KEY not in str(raised.value) and KEY not in repr(raised.value)


def test_the_key_is_not_in_the_client_repr() -> None:
    assert KEY not in repr(SendGridClient(KEY, "https://api.sendgrid.com"))


def test_plain_http_is_refused_except_to_loopback() -> None:
    with pytest.raises(InsecureTransportError, match="plain http"):
        SendGridClient(KEY, "http://api.sendgrid.com")
    SendGridClient(KEY, "http://127.0.0.1:4010")
    SendGridClient(KEY, "http://localhost:4010")


def test_search_emails_404_means_none_found() -> None:
    session = ScriptedSession(response(404, b'{"errors":[{"message":"no contacts found"}]}'))
    assert client(session, []).search_emails(["a@b.com"]) == {}
