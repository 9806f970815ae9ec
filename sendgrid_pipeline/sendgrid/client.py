"""The SendGrid Marketing API client: the pipeline's one HTTP choke point.

Every request goes through `make_request`, which sets the timeout, paces itself from the
X-RateLimit-* headers, retries only what is safe to retry (429, 5xx, timeouts, dropped
connections) with exponential backoff and jitter, and turns every other answer into a typed error.
"""

from __future__ import annotations

import gzip
import ipaddress
import json
import logging
import random
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlsplit

import requests

from sendgrid_pipeline.sendgrid.errors import (
    ApiErrorDetail,
    InsecureTransportError,
    SendGridAuthError,
    SendGridBadRequestError,
    SendGridError,
    SendGridJobError,
    SendGridNotFoundError,
    SendGridUnavailableError,
)

DEFAULT_BASE_URL = "https://api.sendgrid.com"
EU_BASE_URL = "https://api.eu.sendgrid.com"
SEARCH_EMAILS_MAX = 100  # "retrieve up to 100 contacts" (FACTS.md §3)
REMOVE_IDS_PER_REQUEST = 100  # keeps the DELETE URL short (~3.7 kB of ids)
TERMINAL_JOB_STATUSES = frozenset({"completed", "errored", "failed"})
RETRYABLE_STATUSES = frozenset({429, 500, 502, 503, 504})

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
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


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
        parts = urlsplit(base_url)
        if parts.scheme not in {"http", "https"} or not parts.hostname:
            raise ValueError(f"SendGrid base URL {base_url!r} must be an http(s) URL")
        if parts.scheme == "http" and not is_loopback(parts.hostname):
            raise InsecureTransportError(
                f"Refusing to send the SendGrid API key over plain http to {parts.hostname}; "
                "use https (plain http is only allowed to a loopback sandbox)"
            )
        self._api_key = api_key
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
        """Send one request with pacing, bounded retries and typed errors."""
        url = path if path.startswith("http") else f"{self.base_url}{path}"
        data = body if body is not None else None
        if json_body is not None:
            data = json.dumps(json_body, separators=(",", ":")).encode()
        headers = {"Authorization": f"Bearer {self._api_key}", "Accept": "application/json"}
        if data is not None:
            headers["Content-Type"] = "application/json"
        display = urlsplit(url).path
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
                )
            except (requests.ConnectionError, requests.Timeout) as error:
                reason = type(error).__name__
                if attempt >= self.max_retries:
                    raise SendGridUnavailableError(
                        method,
                        display,
                        None,
                        [ApiErrorDetail(reason)],
                        f"Gave up after {attempt + 1} attempts; nothing unconfirmed was recorded, "
                        "so a rerun resumes safely",
                    ) from None
                self._backoff(attempt, method, display, reason)
                attempt += 1
                continue
            self._note_rate_limit(response)
            if response.status_code < 400:
                return response
            if response.status_code in RETRYABLE_STATUSES and attempt < self.max_retries:
                if response.status_code == 429:
                    self._wait_for_reset(response, attempt)
                else:
                    self._backoff(attempt, method, display, f"HTTP {response.status_code}")
                attempt += 1
                continue
            raise self._error_for(method, display, response, attempt)

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
        except ValueError:
            text = response.text.strip()[:300]
            return [ApiErrorDetail(text)] if text else []
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
        self, method: str, path: str, response: requests.Response, attempt: int
    ) -> SendGridError:
        status = response.status_code
        details = self._details(response)
        if status == 401:
            return SendGridAuthError(
                method,
                path,
                status,
                details,
                "The API key was rejected: it is wrong, revoked or expired. Create a key with "
                "Marketing access in SendGrid (Settings > API Keys) and put it in the "
                "destination's api_key_env environment variable",
            )
        if status == 403:
            return SendGridAuthError(
                method,
                path,
                status,
                details,
                "The API key is valid but may not use this endpoint: give it the Marketing "
                "(marketing.read, which includes write) scope; SendGrid also answers 403 "
                "after too many bad requests",
            )
        if status == 404:
            return SendGridNotFoundError(method, path, status, details)
        if status in (400, 413):
            return SendGridBadRequestError(method, path, status, details)
        if status in RETRYABLE_STATUSES:
            return SendGridUnavailableError(
                method,
                path,
                status,
                details,
                f"Still failing after {attempt + 1} attempts; a rerun resumes safely",
            )
        return SendGridError(method, path, status, details)

    # -- endpoints -------------------------------------------------------------------------
    def get_list(self, list_id: str) -> dict[str, Any]:
        return self.make_request("GET", f"/v3/marketing/lists/{list_id}").json()

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

    def download(self, url: str) -> bytes:
        """Fetch a job's errors file or an export file (gzip is undone by requests or here)."""
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
            if contact and contact.get("id"):
                found[email.lower()] = str(contact["id"])
        return found

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
