"""Where the client sends the API key, and which URLs it refuses to use at all.

The base URL is checked the way requests will connect to it, downloads (errors_url, export
files) never carry the key to another origin nor go over plain http to a non-loopback host,
and errors say whether a retry can help. No test opens a connection beyond loopback.
"""

from __future__ import annotations

import gzip
import json
import pickle
from collections import deque
from typing import Any
from unittest import mock
from urllib.parse import urlsplit

import pytest
import requests
import urllib3.connection
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from urllib3.exceptions import NewConnectionError
from urllib3.util import parse_url

from sendgrid_pipeline.sendgrid.client import SendGridClient, is_loopback, parse_origin
from sendgrid_pipeline.sendgrid.errors import (
    ApiErrorDetail,
    InsecureTransportError,
    SendGridAuthError,
    SendGridBadRequestError,
    SendGridError,
    SendGridJobError,
    SendGridNotFoundError,
    SendGridUnavailableError,
    UnsafeUrlError,
)
from sendgrid_pipeline.sendgrid.resource import SendGridResource
from sendgrid_pipeline_tests.devkit.sandbox import FaultPlan, SandboxServer

KEY = "SG.unit-test-secret-key"
API = "https://api.sendgrid.com"
S3_EXPORT = (
    "https://marketing-exports.s3.amazonaws.com/1/export.json.gz"
    "?X-Amz-Algorithm=AWS4-HMAC-SHA256&X-Amz-Signature=0123abcd"
)
LIST_ID = "3f1c7a52-9f0e-4a57-9d1e-2b7f0c8a1e01"


# -- a real requests.Session whose transport records what would have been sent ------------------
class Recorder(requests.adapters.BaseAdapter):
    """Answers from a script (status, headers, body) or raises; keeps each prepared request."""

    def __init__(self, *answers: Any) -> None:
        super().__init__()
        self.answers = deque(answers)
        self.sent: list[requests.PreparedRequest] = []
        self.kwargs: list[dict[str, Any]] = []

    def send(self, request: requests.PreparedRequest, **kwargs: Any) -> requests.Response:
        self.sent.append(request)
        self.kwargs.append(kwargs)
        answer = self.answers.popleft() if self.answers else (200, {}, b"{}")
        if isinstance(answer, Exception):
            raise answer
        status, headers, body = answer
        response = requests.Response()
        response.status_code = status
        response.headers.update(headers)
        response._content = body
        response.url = request.url or ""
        response.request = request
        return response

    def close(self) -> None:
        pass


def recording(*answers: Any, base_url: str = API, **kwargs: Any):
    session = requests.Session()
    session.trust_env = False  # no proxy or netrc from the machine running the tests
    recorder = Recorder(*answers)
    session.mount("http://", recorder)
    session.mount("https://", recorder)
    sleeps: list[float] = []
    client = SendGridClient(KEY, base_url, session=session, sleep=sleeps.append, **kwargs)
    return client, recorder, sleeps


def sent_key(request: requests.PreparedRequest) -> bool:
    return request.headers.get("Authorization") == f"Bearer {KEY}"


# -- the base URL ---------------------------------------------------------------------------------
HOSTILE_BASE_URLS = [
    # userinfo, also the key itself pasted into the URL
    "http://203.0.113.5@127.0.0.1:4010",
    f"https://{KEY}@api.sendgrid.com",
    f"https://apikey:{KEY}@api.sendgrid.com",
    "http://127.0.0.1:4010@203.0.113.5",
    "http://user@localhost:4010",
    # backslash tricks: urllib and urllib3 read these differently
    "http://203.0.113.5\\@127.0.0.1:4010",
    "http://203.0.113.5\\\\@127.0.0.1:4010",
    "http://evil.example\\.127.0.0.1",
    "http:\\\\127.0.0.1:4010",
    "https://api.sendgrid.com\\@evil.example",
    # look-alike and encoded hosts
    "http://127.0.0.1.evil.example",
    "http://localhost.evil.example:4010",
    "http://[::ffff:203.0.113.5]",
    "http://[::ffff:127.0.0.1]:4010",
    "http://0x7f000001:4010",
    "http://0x7f.1:4010",
    "http://2130706433:4010",
    "http://127.1:4010",
    "http://0177.0.0.1:4010",
    "http://127.0.0.01:4010",
    "http://%31%32%37.0.0.1:4010",
    "http://127.0.0.1%2F@evil.example",
    "http://[::1%25lo]:4010",
    "http://[::1]x:4010",
    "http://localhost.:4010",
    "https://api..sendgrid.com",
    "https://api.sendgrid.com.",
    "https://-api.sendgrid.com",
    "https://api_sendgrid.com",
    "https://ａｐｉ.sendgrid.com",
    "https://api。sendgrid.com",
    # whitespace and control characters
    "http://127.0.0.1\t.evil.example",
    "http://127.0.0.1\n.evil.example",
    "http://127.0.0.1 .evil.example",
    " https://api.sendgrid.com",
    "https://api.sendgrid.com\n",
    "https://api.sendgrid.com\x00",
    "https://api.sendgrid.com\x7f",
    # query, fragment and path games
    "http://127.0.0.1#@evil.example",
    "http://127.0.0.1?@evil.example",
    "http://127.0.0.1:4010/?next=http://evil.example",
    "https://api.sendgrid.com/%2e%2e",
    "https://api.sendgrid.com/../v3",
    # schemes
    "HTTP://127.0.0.1:4010",
    "Https://api.sendgrid.com",
    "file:///etc/passwd",
    "ftp://api.sendgrid.com",
    "//api.sendgrid.com",
    "api.sendgrid.com",
    "https:/api.sendgrid.com",
    "https:///api.sendgrid.com",
    "javascript:alert(1)",
    "",
    KEY,  # the key and the URL swapped by mistake
    # ports
    "http://127.0.0.1:0",
    "http://127.0.0.1:65536",
    "http://127.0.0.1:99999",
    "http://127.0.0.1:-1",
    "http://127.0.0.1:40a",
    "http://127.0.0.1:",
    # plain http to hosts that are not loopback
    "http://api.sendgrid.com",
    "http://203.0.113.5:4010",
    "http://[2001:db8::1]:4010",
    "http://0.0.0.0:4010",
    "http://10.0.0.1:4010",
]

GOOD_BASE_URLS = [
    ("https://api.sendgrid.com", ("https", "api.sendgrid.com", 443)),
    ("https://api.eu.sendgrid.com", ("https", "api.eu.sendgrid.com", 443)),
    ("https://api.sendgrid.com/", ("https", "api.sendgrid.com", 443)),
    ("https://api.sendgrid.com:443", ("https", "api.sendgrid.com", 443)),
    ("https://API.SendGrid.com", ("https", "api.sendgrid.com", 443)),
    ("https://proxy.example.com:8443/sendgrid", ("https", "proxy.example.com", 8443)),
    ("http://127.0.0.1:4010", ("http", "127.0.0.1", 4010)),
    ("http://127.0.0.5:4010", ("http", "127.0.0.5", 4010)),
    ("http://localhost:4010", ("http", "localhost", 4010)),
    ("http://[::1]:4010", ("http", "::1", 4010)),
    ("https://203.0.113.5", ("https", "203.0.113.5", 443)),
]


@pytest.mark.parametrize("url", HOSTILE_BASE_URLS)
def test_hostile_base_urls_are_refused_without_echoing_the_key(url: str) -> None:
    with pytest.raises(UnsafeUrlError) as raised:  # a ValueError, typed
        SendGridClient(KEY, url)
    assert KEY not in str(raised.value) and KEY not in repr(raised.value)
    error = raised.value  # no chained parser exception that could repeat the URL
    assert error.__cause__ is None and (error.__context__ is None or error.__suppress_context__)


@pytest.mark.parametrize(("url", "origin"), GOOD_BASE_URLS)
def test_legitimate_base_urls_are_accepted(url: str, origin: tuple[str, str, int]) -> None:
    client = SendGridClient(KEY, url)
    checked = client._origin
    assert (checked.scheme, checked.host, checked.port) == origin
    prepared = requests.Request("GET", f"{client.base_url}/v3/marketing/lists").prepare()
    assert urlsplit(prepared.url).hostname == origin[1]  # where requests' adapter connects


def test_plain_http_errors_are_insecure_transport_errors() -> None:
    for url in ("http://api.sendgrid.com", "http://203.0.113.5:4010", "http://[::ffff:1.2.3.4]"):
        with pytest.raises(InsecureTransportError, match="plain http"):
            SendGridClient(KEY, url)


def test_the_resource_refuses_a_hostile_base_url_without_the_key() -> None:
    resource = SendGridResource(api_key=KEY, base_url="http://203.0.113.5\\@127.0.0.1:4010")
    with pytest.raises(UnsafeUrlError) as raised:
        resource.client()
    assert KEY not in str(raised.value)


def test_the_bypass_from_the_report_never_reaches_a_socket() -> None:
    """The reported bypass: urllib says 127.0.0.1, requests would connect to 203.0.113.5."""
    url = "http://203.0.113.5\\@127.0.0.1:4010"
    assert urlsplit(url).hostname == "127.0.0.1"
    assert parse_url(url).host == "203.0.113.5"
    with pytest.raises(UnsafeUrlError, match="backslash"):
        SendGridClient(KEY, url)


# -- where the key goes ---------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("url", "with_key"),
    [
        (f"{API}/v3/marketing/contacts/imports/j1/errors.csv", True),
        ("https://api.sendgrid.com:443/files/errors.csv", True),
        ("https://API.sendgrid.com/files/errors.csv", True),
        (S3_EXPORT, False),
        ("https://api.sendgrid.com:8443/files/errors.csv", False),
        ("https://api.sendgrid.com.evil.example/files/errors.csv", False),
        ("https://api.eu.sendgrid.com/files/errors.csv", False),
        ("https://sendgrid.com/files/errors.csv", False),
        ("http://127.0.0.1:9/files/errors.csv", False),
        ("http://localhost:9/files/errors.csv", False),
    ],
)
def test_the_key_goes_only_to_the_api_origin(url: str, with_key: bool) -> None:
    client, recorder, _ = recording((200, {}, b"row_index,email,message\n"))
    client.session.headers["Authorization"] = "Bearer from-the-session"  # must not leak either
    assert client.download(url).startswith(b"row_index")
    (request,) = recorder.sent
    assert sent_key(request) is with_key
    if not with_key:
        assert "Authorization" not in request.headers
        assert "Accept" not in request.headers or request.headers["Accept"] != "application/json"
    assert recorder.kwargs[0]["timeout"] == client.timeout_seconds


def test_api_calls_carry_the_key_and_a_double_slash_path_stays_on_the_api_host() -> None:
    client, recorder, _ = recording((200, {}, b"{}"), (200, {}, b"{}"))
    client.get_list("l1")
    client.make_request("GET", "//evil.example/x")
    assert all(sent_key(r) for r in recorder.sent)
    assert {urlsplit(r.url).hostname for r in recorder.sent} == {"api.sendgrid.com"}


def test_a_loopback_api_gets_the_key_on_its_own_port_only() -> None:
    client, recorder, _ = recording(base_url="http://127.0.0.1:4010")
    client.download("http://127.0.0.1:4010/sandbox/errors/j1.csv")
    client.download("http://127.0.0.1:4011/sandbox/errors/j1.csv")
    client.download("http://localhost:4010/sandbox/errors/j1.csv")  # another name: another origin
    assert [sent_key(r) for r in recorder.sent] == [True, False, False]


@pytest.mark.parametrize(
    "url",
    [
        "http://exports.example.com/export.json.gz",
        "http://api.sendgrid.com/files/errors.csv",  # the API host, but plain http
        "http://203.0.113.5:80/x",
        "http://[::ffff:203.0.113.5]/x",
    ],
)
def test_plain_http_downloads_from_other_hosts_are_refused(url: str) -> None:
    client, recorder, _ = recording()
    with pytest.raises(InsecureTransportError) as raised:
        client.download(url)
    assert recorder.sent == []
    assert KEY not in str(raised.value)


@pytest.mark.parametrize(
    "url",
    [
        "https://api.sendgrid.com\\@evil.example/x",
        "https://evil.example\\@api.sendgrid.com/x",
        "https://api.sendgrid.com@evil.example/x",
        "https://user:pw@api.sendgrid.com/x",
        "https://api.sendgrid.com\t.evil.example/x",
        "https://%61pi.sendgrid.com/x",
        "ftp://api.sendgrid.com/x",
        "file:///etc/passwd",
        "HTTPS://api.sendgrid.com/x",
        "api.sendgrid.com/x",
        "",
    ],
)
def test_hostile_download_urls_are_refused_before_any_request(url: str) -> None:
    client, recorder, _ = recording()
    with pytest.raises(UnsafeUrlError):
        client.download(url)
    assert recorder.sent == []


def test_downloads_keep_timeouts_retries_and_gzip() -> None:
    content = gzip.compress(b'{"email":"a@example.com"}\n')
    client, recorder, sleeps = recording(
        requests.ConnectionError("reset"),
        (503, {}, b"<Error><Code>SlowDown</Code></Error>"),
        requests.Timeout("slow"),
        (200, {"Content-Type": "application/gzip"}, content),
        backoff_base_seconds=0.01,
    )
    assert client.download(S3_EXPORT) == b'{"email":"a@example.com"}\n'
    assert len(recorder.sent) == 4 and len(sleeps) == 3
    assert not any(sent_key(r) for r in recorder.sent)
    assert all(k["timeout"] == client.timeout_seconds for k in recorder.kwargs)


def test_a_download_that_keeps_failing_is_a_retryable_unavailable_error() -> None:
    client, recorder, _ = recording(*[(500, {}, b"")] * 3, max_retries=2)
    with pytest.raises(SendGridUnavailableError) as raised:
        client.download(S3_EXPORT)
    assert raised.value.retryable and len(recorder.sent) == 3
    assert "X-Amz-Signature" not in str(raised.value)  # the path only, never the query


def test_an_expired_download_link_is_a_typed_error_that_does_not_blame_the_key() -> None:
    body = (
        b"<Error><Code>AccessDenied</Code><Message>Request has expired</Message>"
        b"<SignatureProvided>0123abcd</SignatureProvided></Error>"
    )
    client, recorder, _ = recording((403, {"Content-Type": "application/xml"}, body))
    with pytest.raises(SendGridError) as raised:
        client.download(S3_EXPORT)
    error = raised.value
    assert not isinstance(error, SendGridAuthError) and not error.retryable
    assert "AccessDenied: Request has expired" in str(error) and "0123abcd" not in str(error)
    assert len(recorder.sent) == 1


def test_a_missing_download_is_not_found_and_not_retried() -> None:
    client, recorder, _ = recording((404, {}, b"<Error><Code>NoSuchKey</Code></Error>"))
    with pytest.raises(SendGridNotFoundError):
        client.download(S3_EXPORT)
    assert len(recorder.sent) == 1


# -- redirects are followed by the client, through the same checks --------------------------------
def test_a_redirect_from_the_api_to_storage_drops_the_key() -> None:
    client, recorder, _ = recording(
        (302, {"Location": S3_EXPORT}, b""), (200, {}, gzip.compress(b"data"))
    )
    assert client.download(f"{API}/v3/files/export") == b"data"
    assert [sent_key(r) for r in recorder.sent] == [True, False]
    assert recorder.sent[1].url == S3_EXPORT


def test_a_relative_redirect_on_the_api_keeps_the_key() -> None:
    client, recorder, _ = recording((301, {"Location": "/v3/other"}, b""), (200, {}, b"{}"))
    client.make_request("GET", "/v3/marketing/lists/l1")
    assert [sent_key(r) for r in recorder.sent] == [True, True]
    assert recorder.sent[1].url == f"{API}/v3/other"


@pytest.mark.parametrize(
    ("location", "error"),
    [
        ("http://evil.example/x", InsecureTransportError),
        ("http://api.sendgrid.com/v3/x", InsecureTransportError),
        ("https://evil.example\\@api.sendgrid.com/x", UnsafeUrlError),
        ("https://api.sendgrid.com@evil.example/x", UnsafeUrlError),
        ("file:///etc/passwd", UnsafeUrlError),
    ],
)
def test_a_redirect_to_a_hostile_url_is_refused(location: str, error: type[Exception]) -> None:
    client, recorder, _ = recording((302, {"Location": location}, b""))
    with pytest.raises(error):
        client.get_list("l1")
    assert len(recorder.sent) == 1


def test_redirects_are_followed_for_get_only_and_not_forever() -> None:
    client, recorder, _ = recording((307, {"Location": f"{API}/v3/elsewhere"}, b""))
    with pytest.raises(SendGridError) as raised:
        client.upsert_contacts(b'{"contacts":[]}', 0)
    assert raised.value.status == 307 and not raised.value.retryable
    assert len(recorder.sent) == 1

    loop = [(302, {"Location": f"{API}/v3/loop"}, b"")] * 10
    client, recorder, _ = recording(*loop)
    with pytest.raises(SendGridError, match="redirect"):
        client.get_list("l1")
    assert len(recorder.sent) == 6


# -- retryable ------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("status", "error_type", "retryable"),
    [
        (400, SendGridBadRequestError, False),
        (401, SendGridAuthError, False),
        (403, SendGridAuthError, False),
        (404, SendGridNotFoundError, False),
        (409, SendGridError, False),
        (413, SendGridBadRequestError, False),
        (422, SendGridBadRequestError, False),
        (429, SendGridUnavailableError, True),
        (500, SendGridUnavailableError, True),
        (502, SendGridUnavailableError, True),
        (503, SendGridUnavailableError, True),
        (504, SendGridUnavailableError, True),
        (507, SendGridError, True),
    ],
)
def test_each_status_maps_to_a_type_and_says_whether_to_retry(
    status: int, error_type: type[SendGridError], retryable: bool
) -> None:
    body = json.dumps({"errors": [{"field": "email", "message": "bad"}]}).encode()
    client, _, _ = recording((status, {}, body), max_retries=0)
    with pytest.raises(SendGridError) as raised:
        client.get_list("l1")
    error = raised.value
    assert type(error) is error_type and error.status == status
    assert error.retryable is retryable
    copy = pickle.loads(pickle.dumps(error))
    assert type(copy) is error_type and copy.retryable is retryable and str(copy) == str(error)
    assert KEY not in str(error) and KEY not in repr(error)


def test_no_response_at_all_is_retryable() -> None:
    client, _, _ = recording(requests.ConnectionError("refused"), max_retries=0)
    with pytest.raises(SendGridUnavailableError) as raised:
        client.get_list("l1")
    assert raised.value.status is None and raised.value.retryable
    assert pickle.loads(pickle.dumps(raised.value)).retryable


def test_errors_built_by_hand_keep_their_fields_through_pickling() -> None:
    error = SendGridBadRequestError("PUT", "/v3/x", 422, [ApiErrorDetail("bad", "email")], "why")
    copy = pickle.loads(pickle.dumps(error))
    assert copy == error and not copy.retryable


def test_a_job_error_is_retryable_unless_said_otherwise_and_survives_pickling() -> None:
    timed_out = SendGridJobError("job j1 still 'pending'")
    final = SendGridJobError("cannot read", retryable=False)
    assert timed_out.retryable and not final.retryable
    for error in (timed_out, final):
        copy = pickle.loads(pickle.dumps(error))
        assert type(copy) is SendGridJobError and str(copy) == str(error)
        assert copy.retryable is error.retryable


def test_a_job_that_does_not_finish_in_time_raises_a_retryable_job_error() -> None:
    pending = json.dumps({"id": "j1", "status": "pending"}).encode()
    client, _, _ = recording(*[(200, {}, pending)] * 3, poll_interval_seconds=1.0)
    with pytest.raises(SendGridJobError) as raised:
        client.wait_for_job("j1", timeout_seconds=0.5)
    assert raised.value.retryable


# -- end to end against the sandbox: its download links behave like presigned S3 links -----------
def _upsert_body(*emails: str) -> bytes:
    return json.dumps(
        {"list_ids": [LIST_ID], "contacts": [{"email": email} for email in emails]}
    ).encode()


@pytest.fixture
def server():
    with SandboxServer(lists={LIST_ID: "Security"}, job_delay_seconds=0.01) as sandbox:
        yield sandbox


def test_sandbox_download_links_need_no_key_and_refuse_one(server: SandboxServer) -> None:
    server.set_faults(FaultPlan(reject_email_pattern=r"^bad"))
    client = SendGridClient(server.api_key, server.base_url, poll_interval_seconds=0.01)
    job = client.wait_for_job(client.upsert_contacts(_upsert_body("ok@x.io", "bad@x.io"), 2))
    assert job.status == "errored" and job.errors_url
    link, api = urlsplit(job.errors_url), urlsplit(server.base_url)
    assert link.hostname == api.hostname and link.port != api.port  # another origin

    assert b"bad@x.io" in client.download(job.errors_url)
    with_key = requests.get(
        job.errors_url, headers={"Authorization": f"Bearer {server.api_key}"}, timeout=5
    )
    assert with_key.status_code == 400 and b"InvalidArgument" in with_key.content
    assert "X-RateLimit-Remaining" not in with_key.headers

    urls = client.wait_for_export(client.start_export([LIST_ID]))
    assert urls and all(urlsplit(url).port == link.port for url in urls)
    exported = b"".join(client.download(url) for url in urls)
    assert [json.loads(line)["email"] for line in exported.splitlines()] == ["ok@x.io"]


def test_the_storage_listener_serves_downloads_only(server: SandboxServer) -> None:
    storage = server.storage_url
    assert requests.get(f"{storage}/v3/marketing/lists", timeout=5).status_code == 404
    assert requests.get(f"{storage}/sandbox/stats", timeout=5).status_code == 404
    assert requests.put(f"{storage}/sandbox/errors/x.csv", timeout=5).status_code == 404


def test_a_client_that_sent_its_key_to_a_download_would_fail_against_the_sandbox(
    server: SandboxServer,
) -> None:
    class Leaky(SendGridClient):
        def _target(self, path: str) -> tuple[str, bool]:
            return super()._target(path)[0], True

    server.set_faults(FaultPlan(reject_email_pattern=r"^bad"))
    client = Leaky(server.api_key, server.base_url, poll_interval_seconds=0.01)
    job = client.wait_for_job(client.upsert_contacts(_upsert_body("bad@x.io"), 1))
    assert job.errors_url
    with pytest.raises(SendGridBadRequestError) as raised:
        client.download(job.errors_url)
    assert raised.value.status == 400 and not raised.value.retryable
    assert "InvalidArgument" in str(raised.value) and server.api_key not in str(raised.value)


# -- properties over generated URLs ---------------------------------------------------------------
_PIECES = st.sampled_from(
    [
        "@", "\\", ":", "/", "?", "#", "%", "[", "]", ".", "-", "_", "\t", "\n", " ", "\x00",
        "\u3002", "%2e", "%40", "%5c", "0x7f", "4010", "127.0.0.1", "localhost", "evil.example",
        "api.sendgrid.com", "[::1]", "[::ffff:203.0.113.5]", "203.0.113.5", KEY,
    ]
)  # fmt: skip
_HOSTS = [
    "127.0.0.1", "localhost", "[::1]", "api.sendgrid.com", "203.0.113.5", "127.0.0.1.evil.example",
    "0x7f000001", "127.1", "[::ffff:203.0.113.5]", "%31%32%37.0.0.1", "LOCALHOST", "[::1%25lo]",
    "", "2130706433", "[::1]:4010@203.0.113.5",
]  # fmt: skip
_URLS = st.one_of(
    st.builds(
        lambda scheme, userinfo, host, port, tail: f"{scheme}://{userinfo}{host}{port}{tail}",
        st.sampled_from(["http", "https", "HTTP", "ftp", "file", "http:", "https:/"]),
        st.sampled_from(["", "", "", "user@", "u:p@", f"{KEY}@", "203.0.113.5\\@", "x%40"]),
        st.one_of(st.sampled_from(_HOSTS), st.lists(_PIECES, max_size=4).map("".join)),
        st.sampled_from(["", "", ":4010", ":443", ":0", ":99999", ":", ":80\\"]),
        st.lists(_PIECES, max_size=5).map("".join),
    ),
    st.builds(  # mostly well-formed, so that many are accepted and then checked
        lambda scheme, host, port, path: f"{scheme}://{host}{port}{path}",
        st.sampled_from(["http", "https"]),
        st.one_of(
            st.sampled_from(_HOSTS),
            st.from_regex(r"[a-z0-9]{1,8}(\.[a-z0-9-]{1,8}){0,3}", fullmatch=True),
            st.ip_addresses(v=4).map(str),
            st.ip_addresses(v=6).map(lambda address: f"[{address}]"),
        ),
        st.one_of(st.just(""), st.integers(0, 70000).map(lambda port: f":{port}")),
        st.lists(
            st.sampled_from(["/v3", "/a", "/", "/.", "/~x", "/a-b", "@", "?q", "#f"]), max_size=3
        ).map("".join),
    ),
    st.text(max_size=40),
)


class _Blocked(Exception):
    pass


def _connections_made(client: SendGridClient) -> list[tuple[bool, str, int]]:
    """Run one API call with every socket blocked; (tls?, host, port) of each connect."""
    seen: list[tuple[bool, str, int]] = []

    def new_conn(connection: urllib3.connection.HTTPConnection):
        seen.append(
            (
                isinstance(connection, urllib3.connection.HTTPSConnection),
                connection.host,
                connection.port,
            )
        )
        raise NewConnectionError(connection, "blocked by the test")

    with (
        mock.patch.object(urllib3.connection.HTTPConnection, "_new_conn", new_conn),
        pytest.raises(SendGridUnavailableError),
    ):
        client.get_list("l1")
    return seen


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(_URLS)
def test_an_accepted_base_url_is_where_requests_connects(url: str) -> None:
    session = requests.Session()
    session.trust_env = False  # a proxy from the environment would change the connect target
    try:
        client = SendGridClient(KEY, url, session=session, max_retries=0)
    except ValueError as refused:
        assert KEY not in str(refused)
        return
    origin = client._origin
    connections = _connections_made(client)
    assert len(connections) == 1
    tls, host, port = connections[0]
    assert (host.lower(), port) == (origin.host, origin.port)
    assert tls is (origin.scheme == "https")
    assert tls or is_loopback(host)


@settings(max_examples=300, deadline=None)
@given(_URLS)
def test_a_download_url_gets_the_key_only_on_the_api_origin(url: str) -> None:
    client, recorder, _ = recording((200, {}, b"x"), base_url="http://127.0.0.1:4010")
    try:
        client.download(url)
    except ValueError as refused:
        assert recorder.sent == [] and KEY not in str(refused)
        return
    (request,) = recorder.sent
    target = urlsplit(request.url)  # what requests' adapter hands to urllib3
    if target.scheme != "https":
        assert is_loopback(target.hostname or "")
    if "Authorization" in request.headers:
        assert (target.scheme, target.hostname, target.port) == ("http", "127.0.0.1", 4010)
    if url.startswith("/"):  # a path is an API path: it can only reach the API origin
        assert sent_key(request) and target.netloc == "127.0.0.1:4010"
    else:
        assert parse_origin(url).host == (target.hostname or "").lower()
