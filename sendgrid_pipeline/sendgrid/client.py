"""The SendGrid Marketing API client: the pipeline's one HTTP choke point.

Every request goes through `make_request`, which sets the timeout, paces itself from the
X-RateLimit-* headers, and does what `sendgrid.errors.ERROR_MAPPING` says for every failure:
retry what is safe to retry (429, 5xx, timeouts, dropped connections) with exponential backoff
and jitter, and turn every other answer into the typed error the table names.
It is also where the API key is guarded: it goes only to the configured API origin (checked the
way requests will connect to it), never to a download link SendGrid hands back, and nothing goes
over plain http except to a loopback sandbox.
"""

from __future__ import annotations

import gzip
import ipaddress
import json
import logging
import random
import re
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urljoin, urlsplit

import requests
from urllib3.util import parse_url

from sendgrid_pipeline.errors import PipelineError
from sendgrid_pipeline.sendgrid.errors import (
    Action,
    ApiErrorDetail,
    InsecureTransportError,
    Resolution,
    SendGridError,
    SendGridJobError,
    SendGridNotFoundError,
    UnsafeUrlError,
    resolve,
)

DEFAULT_BASE_URL = "https://api.sendgrid.com"
EU_BASE_URL = "https://api.eu.sendgrid.com"
SEARCH_EMAILS_MAX = 100  # "retrieve up to 100 contacts" (SendGrid: search contacts by emails)
SEARCH_EMAIL_MAX_LENGTH = 100  # the email search refuses longer addresses (OpenAPI maxLength)
SGQL_MAX_RESULTS = 50  # POST /v3/marketing/contacts/search returns the first 50 matches
REMOVE_IDS_PER_REQUEST = 100  # keeps the DELETE URL short (~3.7 kB of ids)
TERMINAL_JOB_STATUSES = frozenset({"completed", "errored", "failed"})
DELETE_IDS_PER_REQUEST = 100  # DELETE /v3/marketing/contacts?ids=: no documented cap; short URL
ERASE_EMAILS_MAX = 5_000  # POST /v3/recipients/erasejob: "5,000 addresses or 256Kb"
ERASE_BODY_MAX_BYTES = 256_000  # 256 KB counted as decimal kilobytes: the smaller reading

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class ImportJob:
    """A contacts job (upsert or delete) as GET /v3/marketing/contacts/imports/{id} reports it."""

    id: str
    status: str
    job_type: str | None = None
    results: Mapping[str, Any] = field(default_factory=dict)

    @property
    def is_terminal(self) -> bool:
        return self.status in TERMINAL_JOB_STATUSES

    @property
    def errors_url(self) -> str | None:
        return self.results.get("errors_url")

    def count(self, name: str) -> int:
        return int(self.results.get(name) or 0)


@dataclass(frozen=True)
class ContactCount:
    """The account's contacts as GET /v3/marketing/contacts/count reports them.

    See https://www.twilio.com/docs/sendgrid/api-reference/contacts/get-total-contact-count:
    contact_count (required) is every contact stored in the account, billable_count the
    contacts counted for billing this month, and billable_breakdown appears only for a parent
    account with subusers (`total` of the subusers' billable contacts, and each subuser's id
    -> its usage this month).
    """

    contact_count: int
    billable_count: int = 0
    billable_total: int | None = None  # billable_breakdown.total, parent accounts only
    billable_breakdown: Mapping[str, int] = field(default_factory=dict)

    @classmethod
    def from_payload(cls, payload: Any) -> ContactCount:
        """Parse the answer; a missing or non-integer contact_count is a ValueError."""
        if not isinstance(payload, dict):
            raise ValueError("the contact count answer is not a JSON object")
        count = payload.get("contact_count")
        if isinstance(count, bool) or not isinstance(count, int) or count < 0:
            raise ValueError(f"contact_count is {count!r}, not a count")
        billable = payload.get("billable_count")
        breakdown = payload.get("billable_breakdown")
        total: int | None = None
        per_subuser: dict[str, int] = {}
        if isinstance(breakdown, dict):
            total = breakdown.get("total") if isinstance(breakdown.get("total"), int) else None
            for subuser, usage in (breakdown.get("breakdown") or {}).items():
                if isinstance(usage, int) and not isinstance(usage, bool):
                    per_subuser[str(subuser)] = usage
        return cls(
            contact_count=count,
            billable_count=billable if isinstance(billable, int) and billable >= 0 else 0,
            billable_total=total,
            billable_breakdown=per_subuser,
        )


@dataclass
class RequestStats:
    """What the client sent, for metadata and benchmarks."""

    requests: int = 0
    upsert_requests: int = 0
    contacts_sent: int = 0
    bytes_sent: int = 0
    retries: int = 0
    rate_limit_waits: int = 0
    seconds_waited: float = 0.0


def is_loopback(host: str) -> bool:
    """127.0.0.0/8, ::1 or "localhost": the only hosts plain http may go to."""
    if host.lower() == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


# -- where a URL really goes ---------------------------------------------------------------------
# Parsers disagree on odd URLs: urllib reads "http://203.0.113.5\@127.0.0.1" as host 127.0.0.1,
# while urllib3 (and so requests) connects to 203.0.113.5. So a URL is accepted only in a plain
# form that leaves no room for disagreement, and only if urllib, urllib3 and requests' own URL
# preparation all agree on its scheme, host and port.
DEFAULT_PORTS = {"http": 80, "https": 443}
MAX_REDIRECTS = 5
_URL = re.compile(r"(?P<scheme>https?)://(?P<authority>[^/?#]*)(?P<rest>.*)", re.DOTALL)
_HOST_PORT = re.compile(r"(?P<host>\[[0-9A-Fa-f:.]+\]|[A-Za-z0-9.-]+)(?::(?P<port>[0-9]{1,5}))?")
_LABEL = re.compile(r"[a-z0-9](?:[a-z0-9-]{0,61}[a-z0-9])?")
_BASE_PATH = re.compile(r"(?:/[A-Za-z0-9_~-][A-Za-z0-9._~-]*)*/?")


@dataclass(frozen=True)
class Origin:
    """Scheme, host and port a request goes to: the unit the API key is bound to."""

    scheme: str
    host: str  # lower case; an IPv6 address without brackets
    port: int

    @property
    def is_loopback(self) -> bool:
        return is_loopback(self.host)


def _shown(url: str) -> str:
    """A URL for an error message: without userinfo, query or fragment, and short."""
    text = re.split(r"[?#]", url, maxsplit=1)[0]
    text = re.sub(r"(?<=://)[^/]*@", "***@", text)
    return repr(text[:80] + ("..." if len(text) > 80 else ""))


def _check_host_name(host: str, shown: str) -> None:
    labels = host.split(".")
    last = labels[-1]
    # A host ending in a number is an IPv4 address to resolvers (127.1, 2130706433, 0x7f000001,
    # 0177.0.0.1), whatever it looks like; only the plain dotted quad means what it says.
    if last.isdigit() or re.fullmatch(r"0x[0-9a-f]*", last):
        try:
            ipaddress.IPv4Address(host)
        except ValueError:
            raise UnsafeUrlError(
                f"URL {shown}: the host looks numeric but is not a dotted-quad IPv4 address "
                "(like 127.0.0.1); resolvers read such forms in surprising ways"
            ) from None
        return
    if len(host) > 253 or not all(_LABEL.fullmatch(label) for label in labels):
        raise UnsafeUrlError(f"URL {shown}: {host!r} is not a valid host name")


def _normal_host(host: str | None) -> str:
    host = (host or "").lower()
    return host[1:-1] if host.startswith("[") and host.endswith("]") else host


def _readings(url: str) -> list[tuple[str | None, str, int | None, str | None]]:
    """(scheme, host, port, userinfo) of `url` as urllib and urllib3 read it."""
    split = urlsplit(url)
    parsed = parse_url(url)
    return [
        (split.scheme, _normal_host(split.hostname), split.port, split.username),
        (parsed.scheme, _normal_host(parsed.host), parsed.port, parsed.auth),
    ]


def _check_parsers_agree(url: str, origin: Origin, shown: str) -> None:
    """Compare with the URL as given and as requests prepares it (what its adapter reads)."""
    try:
        prepared = requests.PreparedRequest()
        prepared.prepare_url(url, None)
        readings = _readings(url) + _readings(prepared.url or "")
    except (ValueError, requests.RequestException):
        raise UnsafeUrlError(f"URL {shown} cannot be parsed") from None
    for scheme, host, port, userinfo in readings:
        port = port if port is not None else DEFAULT_PORTS.get(scheme or "")
        if (scheme, host, port) != (origin.scheme, origin.host, origin.port) or userinfo:
            raise UnsafeUrlError(
                f"URL {shown} is ambiguous: URL parsers disagree on which host it names"
            )


def parse_origin(url: str, *, base: bool = False) -> Origin:
    """The origin `requests` connects to for `url`, or UnsafeUrlError if it is in any doubt.

    Only a lower-case http(s) URL of printable ASCII is accepted, without userinfo, backslashes
    or percent signs in the host, with a host name, dotted-quad IPv4 or [IPv6] host. `base`
    also forbids a query, a fragment and anything but a plain path prefix (an API base URL).
    Plain http is checked by the caller, which knows whether the host is loopback.
    """
    if not isinstance(url, str) or not url:
        raise UnsafeUrlError("the URL is empty")
    shown = _shown(url)
    bad = next((char for char in url if not "!" <= char <= "~"), None)
    if bad is not None:
        raise UnsafeUrlError(
            f"URL {shown} contains {bad!r}: whitespace, control and non-ASCII characters "
            "are not allowed"
        )
    if "\\" in url:
        raise UnsafeUrlError(
            f"URL {shown} contains a backslash, which URL parsers read differently"
        )
    match = _URL.fullmatch(url)
    if match is None:
        raise UnsafeUrlError(
            f"URL {shown} must start with https:// (or http:// to a loopback host), in lower case"
        )
    if "@" in match["authority"]:
        raise UnsafeUrlError(
            f"URL {shown} contains user info (user:password@); the API key is set on its own, "
            "never in the URL"
        )
    host_port = _HOST_PORT.fullmatch(match["authority"])
    if host_port is None:
        raise UnsafeUrlError(
            f"URL {shown}: the host must be a host name, a dotted-quad IPv4 address or an "
            "[IPv6] address, optionally with :port"
        )
    host = host_port["host"].lower()
    if host.startswith("["):
        host = host[1:-1]
        try:
            ipaddress.IPv6Address(host)
        except ValueError:
            raise UnsafeUrlError(f"URL {shown}: {host!r} is not an IPv6 address") from None
    else:
        _check_host_name(host, shown)
    scheme = match["scheme"]
    port = int(host_port["port"]) if host_port["port"] else DEFAULT_PORTS[scheme]
    if not 0 < port < 65536:
        raise UnsafeUrlError(f"URL {shown}: port {port} is out of range")
    if base and not _BASE_PATH.fullmatch(match["rest"]):
        raise UnsafeUrlError(
            f"base URL {shown} must be scheme://host[:port] with at most a plain path, "
            "without query, fragment, percent-escapes or dot segments"
        )
    origin = Origin(scheme, host, port)
    _check_parsers_agree(url, origin, shown)
    return origin


class SendGridClient:
    """A small, typed client for the Marketing Contacts and Lists endpoints the pipeline uses."""

    def __init__(
        self,
        api_key: str,
        base_url: str = DEFAULT_BASE_URL,
        *,
        timeout_seconds: float = 30.0,
        max_retries: int = 6,
        backoff_base_seconds: float = 0.5,
        backoff_max_seconds: float = 60.0,
        poll_interval_seconds: float = 1.0,
        job_timeout_seconds: float = 900.0,
        session: requests.Session | None = None,
        sleep: Callable[[float], None] = time.sleep,
    ) -> None:
        if not api_key:
            raise ValueError("A SendGrid API key is required")
        try:
            origin = parse_origin(base_url, base=True)
        except UnsafeUrlError as problem:  # a pasted URL could hold the key: never repeat it
            message = f"Unusable SendGrid base URL: {problem}".replace(api_key, "***")
            raise type(problem)(message) from None
        if origin.scheme != "https" and not origin.is_loopback:
            raise InsecureTransportError(
                f"Refusing to send the SendGrid API key over plain http to {origin.host}; "
                "use https (plain http is only allowed to a loopback sandbox)"
            )
        self._api_key = api_key
        self._origin = origin  # the only place the key is sent
        self.base_url = base_url.rstrip("/")
        self.timeout_seconds = timeout_seconds
        self.max_retries = max_retries
        self.backoff_base_seconds = backoff_base_seconds
        self.backoff_max_seconds = backoff_max_seconds
        self.poll_interval_seconds = poll_interval_seconds
        self.job_timeout_seconds = job_timeout_seconds
        self.session = session or requests.Session()
        self.stats = RequestStats()
        self._sleep = sleep
        self._rate_limit_reset: float | None = None  # epoch seconds when the window reopens

    def __repr__(self) -> str:  # never show the key
        return f"SendGridClient(base_url={self.base_url!r})"

    # -- the choke point -------------------------------------------------------------------
    def make_request(
        self,
        method: str,
        path: str,
        *,
        params: Mapping[str, str] | None = None,
        json_body: Any = None,
        body: bytes | None = None,
    ) -> requests.Response:
        """Send one request with pacing, bounded retries and typed errors.

        `path` is an API path ("/v3/...") or an absolute URL SendGrid handed back (a job's
        errors_url, export files). The key goes only to the configured API origin: export
        files are presigned storage links, which need no key and must not see it. Redirects
        are followed here, for GET only, each hop checked like the first (requests' own
        redirect handling would decide who keeps the key with a different URL parser).
        """
        data = body if body is not None else None
        if json_body is not None:
            data = json.dumps(json_body, separators=(",", ":")).encode()
        url = path
        for _ in range(MAX_REDIRECTS + 1):
            try:
                url, with_key = self._target(url)
            except UnsafeUrlError as problem:  # the message quotes the URL: never the key
                raise type(problem)(str(problem).replace(self._api_key, "***")) from None
            response = self._send(method, url, with_key, params, data)
            if not 300 <= response.status_code < 400:
                return response
            location = response.headers.get("Location")
            if method != "GET" or not location:
                break
            url = urljoin(response.url or url, location)
            params = None  # the new location carries its own query
        resolution = resolve(response.status_code)  # a 3xx: the table fails it
        raise resolution.error(
            method,
            urlsplit(path).path,
            response.status_code,
            [],
            f"{resolution.explanation}: {MAX_REDIRECTS} hops",
        )

    def _target(self, path: str) -> tuple[str, bool]:
        """The URL to request and whether it may carry the key (only the API origin's may)."""
        if path.startswith("/"):  # an API path: the authority is the validated base URL's
            return f"{self.base_url}{path}", True
        origin = parse_origin(path)
        if origin == self._origin:
            return path, True
        if origin.scheme != "https" and not origin.is_loopback:
            raise InsecureTransportError(
                f"Refusing to download over plain http from {origin.host}: the file holds "
                "contact data; only https (or http to a loopback sandbox) is used"
            )
        return path, False

    def _send(
        self,
        method: str,
        url: str,
        with_key: bool,
        params: Mapping[str, str] | None,
        data: bytes | None,
    ) -> requests.Response:
        """One hop: retries 429, 5xx, timeouts and dropped connections; 4xx becomes an error."""
        # None removes a header a caller's session may set by default.
        headers: dict[str, str | None] = {"Authorization": None}
        if with_key:
            headers = {"Authorization": f"Bearer {self._api_key}", "Accept": "application/json"}
        if data is not None:
            headers["Content-Type"] = "application/json"
        display = urlsplit(url).path  # never the query: a presigned link's signature is there
        attempt = 0
        while True:
            self._respect_rate_limit()
            self.stats.requests += 1
            self.stats.bytes_sent += len(data or b"")
            try:
                response = self.session.request(
                    method,
                    url,
                    params=params,
                    data=data,
                    headers=headers,
                    timeout=self.timeout_seconds,
                    allow_redirects=False,
                )
            except (requests.ConnectionError, requests.Timeout) as error:
                resolution = resolve(error)
                reason = type(error).__name__
                if attempt >= self.max_retries:
                    raise resolution.error(
                        method,
                        display,
                        None,
                        [ApiErrorDetail(reason)],
                        f"Gave up after {attempt + 1} attempts; {resolution.explanation}",
                    ) from None
                self._backoff(attempt, method, display, reason)
                attempt += 1
                continue
            if with_key:  # only the API's window paces the API; other hosts cannot stall us
                self._note_rate_limit(response)
            if response.status_code < 400:
                return response
            resolution = resolve(response.status_code, download=not with_key)
            if resolution.retry and attempt < self.max_retries:
                if resolution.action is Action.WAIT_FOR_RESET:
                    self._wait_for_reset(response, attempt)
                else:
                    self._backoff(attempt, method, display, f"HTTP {response.status_code}")
                attempt += 1
                continue
            raise self._error_for(method, display, response, attempt, resolution)

    def _respect_rate_limit(self) -> None:
        if self._rate_limit_reset is None:
            return
        wait = self._rate_limit_reset - time.time()
        self._rate_limit_reset = None
        if wait > 0:
            wait = min(wait, self.backoff_max_seconds) + random.uniform(0, 0.1)
            self.stats.rate_limit_waits += 1
            self.stats.seconds_waited += wait
            self._sleep(wait)

    def _note_rate_limit(self, response: requests.Response) -> None:
        remaining = response.headers.get("X-RateLimit-Remaining")
        reset = response.headers.get("X-RateLimit-Reset")
        if remaining is not None and reset is not None:
            try:
                if int(remaining) <= 0:
                    self._rate_limit_reset = float(reset)
            except ValueError:
                pass

    def _wait_for_reset(self, response: requests.Response, attempt: int) -> None:
        self.stats.retries += 1
        reset = response.headers.get("X-RateLimit-Reset")
        try:
            wait = float(reset) - time.time() if reset else 0.0
        except ValueError:
            wait = 0.0
        if wait <= 0:
            wait = min(self.backoff_base_seconds * 2**attempt, self.backoff_max_seconds)
        wait = min(wait, self.backoff_max_seconds) + random.uniform(0, 0.25)
        self._rate_limit_reset = None
        self.stats.rate_limit_waits += 1
        self.stats.seconds_waited += wait
        log.info("SendGrid rate limit reached; waiting %.2fs for the window to reset", wait)
        self._sleep(wait)

    def _backoff(self, attempt: int, method: str, path: str, reason: str) -> None:
        self.stats.retries += 1
        ceiling = min(self.backoff_base_seconds * 2**attempt, self.backoff_max_seconds)
        wait = random.uniform(ceiling / 2, ceiling)  # jitter
        self.stats.seconds_waited += wait
        log.warning("SendGrid %s %s: %s; retrying in %.2fs", method, path, reason, wait)
        self._sleep(wait)

    @staticmethod
    def _details(response: requests.Response) -> list[ApiErrorDetail]:
        try:
            payload = response.json()
        except requests.JSONDecodeError:
            text = response.text.strip()
            code = re.search(r"<Code>([^<]{1,100})</Code>", text)
            if code:  # a storage (S3) error: its other elements may echo the link's signature
                message = re.search(r"<Message>([^<]{1,300})</Message>", text)
                return [ApiErrorDetail(message[1] if message else "", code[1])]
            return [ApiErrorDetail(text[:300])] if text else []
        if isinstance(payload, dict) and isinstance(payload.get("errors"), list):
            return [
                ApiErrorDetail(str(e.get("message", "")), e.get("field"))
                for e in payload["errors"]
                if isinstance(e, dict)
            ]
        if isinstance(payload, dict) and "message" in payload:
            return [ApiErrorDetail(str(payload["message"]))]
        return []

    def _error_for(
        self,
        method: str,
        path: str,
        response: requests.Response,
        attempt: int,
        resolution: Resolution,
    ) -> SendGridError:
        """The table's error for this answer, with SendGrid's own messages and its advice."""
        explanation = resolution.explanation
        if resolution.retry:  # retried to the end of the budget
            explanation = f"Gave up after {attempt + 1} attempts; {explanation}"
        return resolution.error(
            method, path, response.status_code, self._details(response), explanation
        )

    # -- endpoints -------------------------------------------------------------------------
    def get_list(self, list_id: str) -> dict[str, Any]:
        return self.make_request("GET", f"/v3/marketing/lists/{list_id}").json()

    def contact_count(self) -> ContactCount:
        """The account's contact and billable counts (read only; see ContactCount)."""
        payload = self.make_request("GET", "/v3/marketing/contacts/count").json()
        try:
            return ContactCount.from_payload(payload)
        except ValueError as problem:
            raise PipelineError(
                f"GET /v3/marketing/contacts/count gave an answer that is not a count: {problem}"
            ) from None

    def upsert_contacts(self, body: bytes, contact_count: int) -> str:
        """PUT a prebuilt upsert body (see batching); returns the job id."""
        self.stats.upsert_requests += 1
        self.stats.contacts_sent += contact_count
        response = self.make_request("PUT", "/v3/marketing/contacts", body=body)
        return str(response.json()["job_id"])

    def get_job(self, job_id: str) -> ImportJob:
        payload = self.make_request("GET", f"/v3/marketing/contacts/imports/{job_id}").json()
        return ImportJob(
            id=str(payload.get("id", job_id)),
            status=str(payload.get("status", "")),
            job_type=payload.get("job_type"),
            results=payload.get("results") or {},
        )

    def wait_for_job(self, job_id: str, timeout_seconds: float | None = None) -> ImportJob:
        """Poll a job until completed/errored/failed; a deadline bounds the wait."""
        deadline = time.monotonic() + (timeout_seconds or self.job_timeout_seconds)
        interval = self.poll_interval_seconds
        while True:
            job = self.get_job(job_id)
            if job.is_terminal:
                return job
            if time.monotonic() + interval > deadline:
                raise SendGridJobError(
                    f"SendGrid job {job_id} still {job.status!r} after "
                    f"{timeout_seconds or self.job_timeout_seconds:.0f}s; it was not recorded as "
                    "done, so the next run checks it again"
                )
            self._sleep(interval)
            interval = min(interval * 1.5, 10.0)

    def pause(self, seconds: float) -> None:
        """Wait between two polls (through the client's sleep, which tests replace)."""
        self._sleep(seconds)

    def download(self, url: str) -> bytes:
        """Fetch a job's errors file or an export file (gzip is undone by requests or here).

        Export URLs are presigned storage links ("the exported file on S3", per SendGrid's
        export API reference); make_request sends them no API key.
        """
        content = self.make_request("GET", url).content
        if content[:2] == b"\x1f\x8b":
            content = gzip.decompress(content)
        return content

    def search_emails(self, emails: Iterable[str]) -> dict[str, str]:
        """Map lowercase email -> contact id for those that exist (at most 100 per request)."""
        emails = list(emails)
        if len(emails) > SEARCH_EMAILS_MAX:
            raise ValueError(f"search_emails takes at most {SEARCH_EMAILS_MAX} emails")
        try:
            payload = self.make_request(
                "POST", "/v3/marketing/contacts/search/emails", json_body={"emails": emails}
            ).json()
        except SendGridNotFoundError:
            return {}  # 404: none of them exist
        found: dict[str, str] = {}
        for email, entry in (payload.get("result") or {}).items():
            contact = entry.get("contact") if isinstance(entry, dict) else None
            # The search also matches alternate_emails: only the contact whose own email it
            # is may be removed in its name.
            primary = str((contact or {}).get("email") or email).lower()
            if contact and contact.get("id") and primary == email.lower():
                found[email.lower()] = str(contact["id"])
        return found

    def search_contact_ids_by_sgql(self, emails: list[str]) -> dict[str, str]:
        """Map lowercase email -> contact id through SGQL, for emails the email search refuses
        (over 100 characters). SGQL returns at most 50 matches per query."""
        if not emails or len(emails) > SGQL_MAX_RESULTS:
            raise ValueError(f"search_contact_ids_by_sgql takes 1..{SGQL_MAX_RESULTS} emails")
        quoted = ", ".join("'" + e.lower().replace("'", "''") + "'" for e in emails)
        payload = self.make_request(
            "POST", "/v3/marketing/contacts/search", json_body={"query": f"email IN ({quoted})"}
        ).json()
        wanted = {e.lower() for e in emails}
        return {
            str(c["email"]).lower(): str(c["id"])
            for c in payload.get("result") or []
            if isinstance(c, dict) and c.get("id") and str(c.get("email", "")).lower() in wanted
        }

    def remove_from_list(self, list_id: str, contact_ids: list[str]) -> str:
        """Remove contacts from a list (they stay in the account); returns the job id."""
        if not contact_ids or len(contact_ids) > REMOVE_IDS_PER_REQUEST:
            raise ValueError(f"remove_from_list takes 1..{REMOVE_IDS_PER_REQUEST} contact ids")
        response = self.make_request(
            "DELETE",
            f"/v3/marketing/lists/{list_id}/contacts",
            params={"contact_ids": ",".join(contact_ids)},
        )
        return str(response.json()["job_id"])

    def delete_contacts(self, contact_ids: list[str]) -> str:
        """Delete contacts from the account (and so from every list); returns the job id,
        which GET /v3/marketing/contacts/imports/{id} reports (job_type "delete").

        Only ever by ids: the endpoint's other parameter, delete_all_contacts, deletes every
        contact of the account and is never sent.
        """
        if not contact_ids or len(contact_ids) > DELETE_IDS_PER_REQUEST:
            raise ValueError(f"delete_contacts takes 1..{DELETE_IDS_PER_REQUEST} contact ids")
        response = self.make_request(
            "DELETE", "/v3/marketing/contacts", params={"ids": ",".join(contact_ids)}
        )
        return str(response.json()["job_id"])

    def create_erasure_job(self, emails: list[str]) -> str:
        """Erase the recipients' personal data account-wide (POST /v3/recipients/erasejob);
        returns the job id. SendGrid offers no status for it: the 202 is the confirmation.

        At most ERASE_EMAILS_MAX addresses and ERASE_BODY_MAX_BYTES of body per request.
        """
        body = json.dumps({"email_addresses": emails}, separators=(",", ":")).encode()
        if not emails or len(emails) > ERASE_EMAILS_MAX or len(body) > ERASE_BODY_MAX_BYTES:
            raise ValueError(
                f"create_erasure_job takes 1..{ERASE_EMAILS_MAX} addresses and at most "
                f"{ERASE_BODY_MAX_BYTES} bytes of body ({len(emails)}, {len(body)} given)"
            )
        response = self.make_request("POST", "/v3/recipients/erasejob", body=body)
        return str(response.json()["job_id"])

    def field_definitions(self) -> dict[str, Any]:
        return self.make_request("GET", "/v3/marketing/field_definitions").json()

    def create_field_definition(self, name: str, field_type: str) -> dict[str, Any]:
        """Create a custom field ("Text", "Number" or "Date"); returns {id, name, field_type}."""
        return self.make_request(
            "POST",
            "/v3/marketing/field_definitions",
            json_body={"name": name, "field_type": field_type},
        ).json()

    def start_export(self, list_ids: list[str], file_type: str = "json") -> str:
        response = self.make_request(
            "POST",
            "/v3/marketing/contacts/exports",
            json_body={"list_ids": list_ids, "file_type": file_type},
        )
        return str(response.json()["id"])

    def wait_for_export(self, export_id: str, timeout_seconds: float | None = None) -> list[str]:
        """Poll an export until ready; returns its download URLs."""
        deadline = time.monotonic() + (timeout_seconds or self.job_timeout_seconds)
        interval = self.poll_interval_seconds
        while True:
            payload = self.make_request("GET", f"/v3/marketing/contacts/exports/{export_id}").json()
            status = payload.get("status")
            if status == "ready":
                return list(payload.get("urls") or [])
            if status == "failure":
                raise SendGridJobError(f"SendGrid export {export_id} failed: {payload}")
            if time.monotonic() + interval > deadline:
                raise SendGridJobError(f"SendGrid export {export_id} still {status!r}")
            self._sleep(interval)
            interval = min(interval * 1.5, 10.0)
