"""The one error table: every row drives the client (retry or not, which error) and the
`retryable` the assets read, so the two can never disagree."""

from __future__ import annotations

import pickle
from collections import deque

import dagster as dg
import pytest
import requests

from sendgrid_pipeline.assets.common import retry_only_transient
from sendgrid_pipeline.errors import ConfigError, PipelineError, ProfileDataError
from sendgrid_pipeline.sendgrid.client import SendGridClient
from sendgrid_pipeline.sendgrid.errors import (
    ERROR_MAPPING,
    Action,
    InsecureTransportError,
    SendGridAuthError,
    SendGridBadRequestError,
    SendGridError,
    SendGridJobError,
    SendGridNotFoundError,
    SendGridUnavailableError,
    UnsafeUrlError,
    resolve,
)
from sendgrid_pipeline.state import StateStoreError
from sendgrid_pipeline.sync.apply import SyncRefused
from sendgrid_pipeline.sync.custom_fields import CustomFieldError
from sendgrid_pipeline.sync.upserts import ErrorsFileError

KEY = "SG.error-table-test-key"
RETRIES = 2


class Scripted:
    """A session that answers from a script and counts what it was asked."""

    def __init__(self, *answers: requests.Response | Exception) -> None:
        self.answers = deque(answers)
        self.calls = 0

    def request(self, method, url, **kwargs):
        self.calls += 1
        answer = self.answers.popleft()
        if isinstance(answer, Exception):
            raise answer
        return answer


def _response(status: int, headers: dict[str, str] | None = None) -> requests.Response:
    response = requests.Response()
    response.status_code = status
    response._content = b'{"errors": [{"field": "x", "message": "no"}]}'
    response.headers.update(headers or {})
    return response


def _client(session: Scripted) -> SendGridClient:
    return SendGridClient(
        KEY,
        "https://api.sendgrid.com",
        session=session,  # type: ignore[arg-type]
        sleep=lambda _seconds: None,
        max_retries=RETRIES,
    )


# status -> (what the client does, the error it raises in the end)
STATUSES = [
    (301, Action.FAIL, SendGridError),  # a redirect on a PUT is not followed
    (307, Action.FAIL, SendGridError),
    (400, Action.FAIL, SendGridBadRequestError),
    (401, Action.FAIL, SendGridAuthError),
    (403, Action.FAIL, SendGridAuthError),
    (404, Action.FAIL, SendGridNotFoundError),
    (405, Action.FAIL, SendGridError),
    (409, Action.FAIL, SendGridError),
    (413, Action.FAIL, SendGridBadRequestError),
    (418, Action.FAIL, SendGridError),
    (422, Action.FAIL, SendGridBadRequestError),
    (429, Action.WAIT_FOR_RESET, SendGridUnavailableError),
    (500, Action.RETRY, SendGridUnavailableError),
    (501, Action.RETRY, SendGridError),
    (502, Action.RETRY, SendGridUnavailableError),
    (503, Action.RETRY, SendGridUnavailableError),
    (504, Action.RETRY, SendGridUnavailableError),
    (507, Action.RETRY, SendGridError),
    (599, Action.RETRY, SendGridError),
]


@pytest.mark.parametrize(("status", "action", "error_type"), STATUSES)
def test_every_status_class_maps_to_one_action_and_one_error(
    status: int, action: Action, error_type: type[SendGridError]
) -> None:
    resolution = resolve(status)
    assert (resolution.action, resolution.error) == (action, error_type)
    retried = action is not Action.FAIL
    headers = {"Location": "https://api.sendgrid.com/v3/elsewhere"} if status < 400 else {}
    session = Scripted(*[_response(status, headers) for _ in range(RETRIES + 1)])
    with pytest.raises(SendGridError) as raised:
        _client(session).make_request("PUT", "/v3/marketing/contacts", body=b"{}")
    error = raised.value
    assert type(error) is error_type and error.status == status
    # the client retries exactly what the error then calls retryable
    assert session.calls == (RETRIES + 1 if retried else 1)
    assert error.retryable is retried
    assert pickle.loads(pickle.dumps(error)).retryable is retried
    assert KEY not in str(error)


@pytest.mark.parametrize(
    "failure", [requests.ConnectionError("reset"), requests.ReadTimeout("slow")]
)
def test_no_answer_is_retried_then_unavailable_and_retryable(failure: Exception) -> None:
    assert resolve(failure).action is Action.RETRY
    session = Scripted(*[failure] * (RETRIES + 1))
    with pytest.raises(SendGridUnavailableError) as raised:
        _client(session).get_list("l1")
    assert session.calls == RETRIES + 1
    assert raised.value.status is None and raised.value.retryable
    assert "may have been applied" in str(raised.value)


def test_a_transient_failure_that_clears_is_not_an_error() -> None:
    session = Scripted(_response(503), requests.ConnectionError("reset"), _response(200))
    assert _client(session).make_request("GET", "/v3/marketing/lists/l1").status_code == 200
    assert session.calls == 3


def test_a_refused_download_link_is_not_blamed_on_the_key() -> None:
    assert resolve(401, download=True).error is SendGridError
    assert resolve(403, download=True).explanation.startswith("The download link was refused")
    assert resolve(401).error is SendGridAuthError


def test_the_table_names_no_status_outside_http() -> None:
    statuses = [k for k in ERROR_MAPPING if isinstance(k, int)]
    assert all(100 <= s <= 599 for s in statuses)
    assert {k for k in ERROR_MAPPING if isinstance(k, str)} == {"3xx", "4xx", "5xx"}


@pytest.mark.parametrize(
    "error_type",
    [
        ConfigError,
        ProfileDataError,
        StateStoreError,
        SyncRefused,
        CustomFieldError,
        ErrorsFileError,
        SendGridError,
        SendGridJobError,
        UnsafeUrlError,
        InsecureTransportError,
    ],
)
def test_every_error_of_ours_has_one_root(error_type: type[Exception]) -> None:
    assert issubclass(error_type, PipelineError)


@pytest.mark.parametrize(
    ("error", "retried"),
    [
        (ConfigError("bad key"), False),
        (ProfileDataError("bad file"), False),
        (StateStoreError("disk full"), False),
        (SyncRefused("brake"), False),
        (CustomFieldError("missing"), False),
        (SendGridBadRequestError("PUT", "/v3/x", 400), False),
        (SendGridUnavailableError("PUT", "/v3/x", 503), True),
        (SendGridError("GET", "/v3/x", None), True),
        (SendGridJobError("still running"), True),
        (SendGridJobError("cannot be read", retryable=False), False),
        (TypeError("a bug of ours"), False),
        (KeyError("a bug of ours"), False),
        (ValueError("a bug of ours"), False),
    ],
)
def test_the_step_retries_exactly_what_is_retryable(error: Exception, retried: bool) -> None:
    with pytest.raises(dg.Failure) as raised, retry_only_transient():
        raise error
    assert raised.value.allow_retries is retried
    assert raised.value.__cause__ is error
