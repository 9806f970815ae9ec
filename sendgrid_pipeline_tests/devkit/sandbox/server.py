"""A local HTTP emulator of the SendGrid Marketing API, for tests, demos and benchmarks.

Standard library only: a ThreadingHTTPServer speaking HTTP/1.1 keep-alive, so a requests.Session
reuses its connections. It listens on loopback only, because it accepts a key anyone can read.
This module is the HTTP layer: auth, rate limits, injected faults and the request log; the
endpoints themselves are in api.py and the account state in store.py. A background thread
applies due jobs while no request is being answered, the way SendGrid works on its own time, so
a benchmark client is not charged for the emulator's work inside its requests.

Download links (a job's errors_url, export files) point at a second listener on another port,
the way SendGrid's point at presigned storage links on S3: they need no key, and like S3 they
refuse a request that carries an Authorization header as well (400). A client that sent its
API key anywhere but the API host would fail there.
"""

from __future__ import annotations

import contextlib
import ipaddress
import json
import logging
import secrets
import socket
import sys
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from types import TracebackType
from typing import Any
from urllib.parse import parse_qs, urlsplit

import yaml

from sendgrid_pipeline_tests.devkit.sandbox.api import (
    Request,
    Response,
    dispatch,
    error_response,
    json_response,
)
from sendgrid_pipeline_tests.devkit.sandbox.contract import Contract
from sendgrid_pipeline_tests.devkit.sandbox.faults import (
    FaultCounts,
    FaultInjector,
    FaultPlan,
    RateState,
)
from sendgrid_pipeline_tests.devkit.sandbox.latency import (
    EndpointLimits,
    LatencyModel,
    request_kind,
)
from sendgrid_pipeline_tests.devkit.sandbox.store import Store
from sendgrid_pipeline_tests.devkit.sandbox.validation import ApiError, error

MAX_BODY_BYTES = 64 * 1024 * 1024  # larger bodies are not even read: 413 and close
STATS_PATH = "/sandbox/stats"  # GET, no auth: totals of the request log (see SandboxServer.stats)
LATENCY_PATH = "/sandbox/latency"  # GET/PUT, no auth: the timing model (see set_latency)
UPSERT_PATH = "/v3/marketing/contacts"
REVOKED_MESSAGE = "The provided authorization grant is invalid, expired, or revoked"
APPLY_SLICE_CONTACTS = 2000  # contacts applied per store-lock hold by the background thread
DOWNLOAD_PREFIXES = ("/sandbox/errors/", "/sandbox/exports/")  # served by the storage listener
# S3's answer to a presigned URL that also carries an Authorization header.
S3_TWO_AUTH_MESSAGE = (
    "Only one auth mechanism allowed; only the X-Amz-Algorithm query parameter, Signature "
    "query string parameter or the Authorization header should be specified"
)

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class RequestRecord:
    """One request as the sandbox saw it (status 0: the connection was dropped unanswered)."""

    method: str
    path: str
    status: int
    body_bytes: int
    contacts: int  # contacts in an upsert body, else 0
    time: float  # Unix epoch seconds when it arrived
    fault: str | None = None  # the injected fault, if any
    seconds: float = 0.0  # spent reading, checking and applying it, before the answer is written
    kind: str = "other"  # latency.request_kind: upsert, job_status, search_emails, remove...
    # The answer tells the client to come back later: a pending job or export, or a 429.
    wait_hint: bool = False


def require_loopback(host: str) -> None:
    """Refuse to listen anywhere a machine other than this one could reach."""
    if host == "localhost":
        return
    try:
        loopback = ipaddress.ip_address(host).is_loopback
    except ValueError:
        loopback = False
    if not loopback:
        raise ValueError(f"the sandbox only listens on loopback (127.0.0.0/8, ::1), not {host!r}")


@dataclass(frozen=True)
class _Outcome:
    response: Response | None  # None: drop the connection without an answer
    rate: RateState
    contacts: int = 0
    fault: str | None = None


def _asks_to_wait(kind: str, response: Response | None) -> bool:
    """True for an answer after which a client can only wait: 429, or a job still pending."""
    if response is None:
        return False
    if response.status == 429:
        return True
    return (
        kind in ("job_status", "export_status")
        and response.status == 200
        and b'"status":"pending"' in response.body
    )


def waiting_seconds(requests: list[RequestRecord]) -> float:
    """Seconds a client spent waiting on the sandbox, as seen from the sandbox.

    The time it took to answer each request (the modelled round trip included), plus the
    time from an answer that asked the client to wait (a pending job, a 429) to the client's
    next request: the client's poll interval or back-off. It assumes one client at a time,
    as in a benchmark; the gap before a client's next request can include a little of its
    own work, so this is an upper bound of the time that was waiting only.
    """
    total = 0.0
    ordered = sorted(requests, key=lambda r: r.time)
    for index, record in enumerate(ordered):
        total += record.seconds
        if record.wait_hint and index + 1 < len(ordered):
            answered = record.time + record.seconds
            total += max(0.0, ordered[index + 1].time - answered)
    return total


def _too_many_requests() -> Response:
    return error_response(429, [error(None, "too many requests")])


def _s3_error(status: int, code: str, message: str) -> Response:
    """An error in S3's XML shape, for the storage listener."""
    body = (
        '<?xml version="1.0" encoding="UTF-8"?>\n'
        f"<Error><Code>{code}</Code><Message>{message}</Message></Error>"
    )
    return Response(status, body.encode("utf-8"), "application/xml")


class _Store(Store):
    """The account, handing out download links on the storage listener instead of the API."""

    def __init__(
        self,
        job_delay_seconds: float,
        fault_counts: FaultCounts,
        latency: LatencyModel | None = None,
    ) -> None:
        super().__init__(job_delay_seconds, fault_counts, latency)
        self.storage_url = ""  # set once the storage listener knows its port

    def _on_storage(self, url: str) -> str:
        if self.storage_url and url.startswith(f"{self.base_url}/sandbox/"):
            return self.storage_url + url[len(self.base_url) :]
        return url

    def import_job(self, job_id: str) -> dict[str, Any] | None:
        view = super().import_job(job_id)
        if view is not None and "errors_url" in view["results"]:
            view["results"]["errors_url"] = self._on_storage(view["results"]["errors_url"])
        return view

    def export_view(self, export_id: str) -> dict[str, Any] | None:
        view = super().export_view(export_id)
        if view is not None:
            view["urls"] = [self._on_storage(url) for url in view["urls"]]
        return view

    def export_views(self) -> list[dict[str, Any]]:
        views = super().export_views()
        for view in views:
            view["urls"] = [self._on_storage(url) for url in view["urls"]]
        return views


class _HTTPServer(ThreadingHTTPServer):
    daemon_threads = True

    def __init__(
        self, address: tuple[str, int], sandbox: SandboxServer, storage: bool = False
    ) -> None:
        self.sandbox = sandbox
        self.storage = storage  # the presigned-download listener, not the API
        self.connections: set[socket.socket] = set()
        self.connections_lock = threading.Lock()
        super().__init__(address, _Handler)

    def handle_error(self, request: Any, client_address: Any) -> None:
        """A client that hung up (its timeout fired, a fault dropped it) is routine here."""
        error = sys.exc_info()[1]
        if isinstance(error, ConnectionError | TimeoutError):
            return
        super().handle_error(request, client_address)


class _HTTP6Server(_HTTPServer):
    address_family = socket.AF_INET6


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"  # keep-alive; every answer carries Content-Length
    server_version = "SendGridSandbox/1.0"
    disable_nagle_algorithm = True  # headers and body go out as separate writes
    timeout = 300  # seconds an idle keep-alive connection is kept
    server: _HTTPServer

    def setup(self) -> None:
        super().setup()
        with self.server.connections_lock:
            self.server.connections.add(self.connection)

    def finish(self) -> None:
        try:
            super().finish()
        finally:
            with self.server.connections_lock:
                self.server.connections.discard(self.connection)

    def log_message(self, format: str, *args: Any) -> None:
        """Silent: the sandbox keeps its own request log (SandboxServer.requests)."""

    def do_GET(self) -> None:
        sandbox = self.server.sandbox
        # The modelled round trip is spent outside _answering: the sandbox's background
        # work goes on meanwhile, as SendGrid's does while an answer travels.
        delay = 0.0 if self.server.storage else sandbox._request_delay(self.path)
        if delay:
            time.sleep(delay)
        with sandbox._answering():
            sandbox._handle(self, delay)

    do_PUT = do_POST = do_DELETE = do_PATCH = do_GET

    def send_error(self, code: int, message: str | None = None, explain: str | None = None) -> None:
        """Protocol errors (bad request line, URI too long...) in SendGrid's JSON error shape."""
        response = error_response(code, [error(None, message or HTTPStatus(code).phrase)])
        rate = None if self.server.storage else self.server.sandbox._injector.peek(time.time())
        self.write_response(response, rate, close=True)

    def write_response(
        self, response: Response, rate: RateState | None, close: bool = False
    ) -> None:
        """`rate` None: no X-RateLimit-* headers (the storage listener, like S3, sends none)."""
        self.send_response(response.status)
        self.send_header("Content-Type", response.content_type)
        self.send_header("Content-Length", str(len(response.body)))
        for name, value in rate.headers() if rate is not None else ():
            self.send_header(name, value)
        if close:
            self.send_header("Connection", "close")
            self.close_connection = True
        self.end_headers()
        self.wfile.write(response.body)


class SandboxServer:
    """The emulator: start() it, point a client at base_url, inspect the account afterwards."""

    def __init__(
        self,
        api_key: str | None = None,
        lists: dict[str, str] | None = None,
        host: str = "127.0.0.1",
        port: int = 0,
        job_delay_seconds: float = 0.05,
        faults: FaultPlan | None = None,
        latency: LatencyModel | None = None,
        contract: Contract | None = None,
    ) -> None:
        """`latency` (see latency.py) replaces `job_delay_seconds` when given; `contract`
        (see contract.py) checks every API request against SendGrid's API description."""
        require_loopback(host)
        self.contract = contract
        self.api_key = api_key or f"SG.sandbox-{secrets.token_hex(16)}"
        self.revoked_keys: set[str] = set()
        self.forbidden_keys: set[str] = set()
        self.host = host
        self.port = port
        self._fault_counts = FaultCounts()
        self._injector = FaultInjector(faults or FaultPlan())
        self._store = _Store(job_delay_seconds, self._fault_counts, latency)
        self._limits = EndpointLimits(self._store.latency)
        self._log_lock = threading.Lock()
        self._requests: list[RequestRecord] = []
        self._httpd: _HTTPServer | None = None
        self._thread: threading.Thread | None = None
        self._storage: _HTTPServer | None = None
        self._storage_thread: threading.Thread | None = None
        self._applier: threading.Thread | None = None
        self._in_flight = 0  # requests being answered; the applier waits for 0
        self._idle = threading.Condition()
        self._stopping = threading.Event()
        for list_id, name in (lists or {}).items():
            self._store.create_list(name, list_id)

    # -- lifecycle -----------------------------------------------------------------------------
    def start(self) -> SandboxServer:
        """Bind and serve in a daemon thread; returns self."""
        if self._httpd is not None:
            raise RuntimeError("the sandbox is already running")
        server_class = _HTTP6Server if ":" in self.host else _HTTPServer
        self._httpd = server_class((self.host, self.port), self)
        self.port = self._httpd.server_address[1]
        self._storage = server_class((self.host, 0), self, storage=True)
        self._store.base_url = self.base_url
        self._store.storage_url = self.storage_url
        self._thread = self._serve(self._httpd, f"sendgrid-sandbox-{self.port}")
        self._storage_thread = self._serve(self._storage, f"sendgrid-sandbox-storage-{self.port}")
        self._stopping.clear()
        self._applier = threading.Thread(
            target=self._apply_jobs, name=f"sendgrid-sandbox-jobs-{self.port}", daemon=True
        )
        self._applier.start()
        return self

    @staticmethod
    def _serve(httpd: _HTTPServer, name: str) -> threading.Thread:
        thread = threading.Thread(
            target=httpd.serve_forever, kwargs={"poll_interval": 0.1}, name=name, daemon=True
        )
        thread.start()
        return thread

    @staticmethod
    def _close(httpd: _HTTPServer | None, thread: threading.Thread | None) -> None:
        if httpd is None:
            return
        httpd.shutdown()
        httpd.server_close()
        with httpd.connections_lock:
            connections = list(httpd.connections)
        for connection in connections:
            with contextlib.suppress(OSError):  # already closed by the client
                connection.shutdown(socket.SHUT_RDWR)
        if thread is not None:
            thread.join(timeout=5)

    def stop(self) -> None:
        """Stop serving and close every open keep-alive connection."""
        httpd, self._httpd = self._httpd, None
        if httpd is None:
            return
        self._close(httpd, self._thread)
        storage, self._storage = self._storage, None
        self._close(storage, self._storage_thread)
        self._stopping.set()
        self._store.work_added.set()
        with self._idle:
            self._idle.notify_all()
        if self._applier is not None:
            self._applier.join(timeout=5)
            self._applier = None

    def __enter__(self) -> SandboxServer:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.stop()

    @property
    def base_url(self) -> str:
        if self._httpd is None and self.port == 0:
            raise RuntimeError("start() the sandbox first: its port is chosen when it binds")
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"http://{host}:{self.port}"

    @property
    def storage_url(self) -> str:
        """Origin of the download links: same loopback host, its own port (like S3's host)."""
        if self._storage is None:
            raise RuntimeError("start() the sandbox first: its port is chosen when it binds")
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"http://{host}:{self._storage.server_address[1]}"

    # -- faults and the request log ------------------------------------------------------------
    @property
    def faults(self) -> FaultPlan:
        """The live plan: mutate it, or replace it with set_faults()."""
        return self._injector.plan

    @faults.setter
    def faults(self, plan: FaultPlan) -> None:
        self.set_faults(plan)

    def set_faults(self, plan: FaultPlan) -> None:
        """Replace the plan; its random stream and rate-limit window start afresh."""
        self._injector = FaultInjector(plan)

    # -- timing ----------------------------------------------------------------------------------
    @property
    def latency(self) -> LatencyModel:
        """The timing model (latency.py); the fixed preset unless one was given."""
        return self._store.latency

    def set_latency(self, model: LatencyModel) -> None:
        """Replace the timing model: jobs accepted from now on and every later answer follow it
        (pending jobs keep their due time); the per-endpoint rate-limit windows start afresh."""
        self._store.latency = model
        self._limits = EndpointLimits(model)

    def _request_delay(self, raw_path: str) -> float:
        path = urlsplit(raw_path).path
        return self._store.latency.request_seconds if path.startswith("/v3/") else 0.0

    def _latency_request(self, handler: _Handler, body: bytes) -> Response:
        """GET: the model; PUT {"preset": "fixed"|"realistic", "job_delay_seconds": s, <any
        LatencyModel field>: value}: replace it (a preset first, then the fields over it)."""
        if handler.command == "PUT":
            try:
                changes = json.loads(body or b"{}")
                if not isinstance(changes, dict):
                    raise ValueError("expected a JSON object")
                preset = changes.pop("preset", None)
                delay = changes.pop("job_delay_seconds", None)
                model = self.latency
                if preset is not None:
                    model = LatencyModel.from_preset(str(preset), float(delay or 0.05))
                elif delay is not None:
                    model = model.with_changes({"job_base_seconds": delay})
                self.set_latency(model.with_changes(changes))
            except (ValueError, TypeError) as problem:
                return error_response(400, [error(None, str(problem))])
        elif handler.command != "GET":
            return error_response(405, [error(None, "GET or PUT")])
        return json_response(200, self.latency.as_dict())

    @property
    def fault_counts(self) -> dict[str, int]:
        """Injected faults by kind: "429", "500", "503", "slow", "drop", "rate_limit",
        "rejected_rows", "failed_jobs"."""
        return self._fault_counts.snapshot()

    @property
    def requests(self) -> list[RequestRecord]:
        with self._log_lock:
            return list(self._requests)

    def reset_request_log(self) -> None:
        with self._log_lock:
            self._requests.clear()

    def stats(self) -> dict[str, Any]:
        """Totals of the request log and list sizes, for a client in another process.

        A benchmark runs the sandbox as a separate process, so it cannot read `requests`; it
        reads these totals before and after a run instead. Served at GET /sandbox/stats
        without auth (like the download URLs) and never logged itself, so reading the figures
        does not change them.
        """
        requests = self.requests
        upserts = [r for r in requests if r.method == "PUT" and r.path.rstrip("/") == UPSERT_PATH]
        by_method: dict[str, int] = {}
        by_kind: dict[str, int] = {}
        for record in requests:
            by_method[record.method] = by_method.get(record.method, 0) + 1
            by_kind[record.kind] = by_kind.get(record.kind, 0) + 1
        return {
            "requests": len(requests),
            "requests_by_method": by_method,
            "requests_by_kind": by_kind,
            "wait_seconds": waiting_seconds(requests),
            "latency": self.latency.as_dict(),
            "body_bytes": sum(r.body_bytes for r in requests),
            "upsert_requests": len(upserts),
            "upsert_requests_accepted": sum(1 for r in upserts if r.status == 202),
            "upsert_contacts": sum(r.contacts for r in upserts),
            "upsert_body_bytes": sum(r.body_bytes for r in upserts),
            "handling_seconds": sum(r.seconds for r in requests),
            "upsert_handling_seconds": sum(r.seconds for r in upserts),
            "list_sizes": self._store.list_sizes(),
            "faults": self.fault_counts,
            "process_cpu_seconds": time.process_time(),
        }

    # -- inspection and setup helpers (each first applies the jobs that are due) ----------------
    def deleted_emails(self) -> list[str]:
        """Emails of the contacts deleted from the account, one entry per deletion applied."""
        with self._store._lock:
            return list(self._store.deleted_emails)

    def erasure_jobs(self) -> list[tuple[str, list[str]]]:
        """(job id, addresses) of every accepted POST /v3/recipients/erasejob."""
        with self._store._lock:
            return list(self._store.erasure_jobs)

    @property
    def delete_all_requests(self) -> int:
        """How many DELETE /v3/marketing/contacts carried delete_all_contacts (refused)."""
        return self._store.delete_all_requests

    def list_member_emails(self, list_id: str) -> set[str]:
        """Lowercase emails currently on the list (KeyError for an unknown list)."""
        return self._store.member_emails(list_id)

    def contact(self, email: str) -> dict[str, Any] | None:
        """The contact as the API shows it (id, list_ids, custom fields keyed by name), or None."""
        return self._store.contact(email)

    def add_contact_by_hand(self, email: str, list_ids: list[str], **fields: Any) -> str:
        """Apply a contact at once, like an edit in SendGrid's UI; returns its id."""
        return self._store.add_contact(email, list_ids, fields)

    def create_list(self, name: str, list_id: str | None = None) -> str:
        return self._store.create_list(name, list_id)

    def define_custom_field(self, name: str, field_type: str) -> str:
        """Create a custom field ("Text", "Number" or "Date"); returns its id, e.g. "e1_N"."""
        try:
            return self._store.define_field(name, field_type)["id"]
        except ApiError as problem:
            raise ValueError(str(problem)) from None

    def wait_for_idle(self) -> None:
        """Complete every pending job and export now."""
        self._store.complete_all()

    def add_suppression(
        self,
        kind: str,
        email: str,
        created: int,
        reason: str | None = None,
        status: str | None = None,
    ) -> None:
        """Suppress an address: `kind` is unsubscribes, bounces, spam_reports, invalid_emails
        or blocks; `created` in unix seconds (what GET /v3/suppression/<kind> filters on)."""
        self._store.add_suppression(kind, email, created, reason, status)

    def remove_suppression(self, kind: str, email: str) -> None:
        self._store.remove_suppression(kind, email)

    def add_group_suppression(self, group_id: int, email: str) -> None:
        """Unsubscribe an address from an ASM group (created if needed)."""
        self._store.add_group_suppression(group_id, email)

    def create_suppression_group(self, group_id: int) -> None:
        self._store.create_suppression_group(group_id)

    def remove_group_suppression(self, group_id: int, email: str) -> None:
        """The address resubscribed to the group."""
        self._store.remove_group_suppression(group_id, email)

    def clear_suppressions(self) -> None:
        self._store.clear_suppressions()

    @staticmethod
    def lists_from_destinations_file(path: str | Path) -> dict[str, str]:
        """{list_id: display_name} for each destination in a destinations.yaml."""
        document = yaml.safe_load(Path(path).read_text(encoding="utf-8")) or {}
        destinations = document.get("destinations") if isinstance(document, dict) else None
        if not isinstance(destinations, list):
            raise ValueError(f"{path}: expected a top-level 'destinations:' list")
        lists: dict[str, str] = {}
        for index, destination in enumerate(destinations):
            if not isinstance(destination, dict) or not destination.get("list_id"):
                raise ValueError(f"{path}: destination #{index + 1} has no list_id")
            name = destination.get("display_name") or destination.get("name") or "list"
            lists[str(destination["list_id"])] = str(name)
        return lists

    # -- background job application ------------------------------------------------------------
    @contextlib.contextmanager
    def _answering(self) -> Iterator[None]:
        with self._idle:
            self._in_flight += 1
        try:
            yield
        finally:
            with self._idle:
                self._in_flight -= 1
                if not self._in_flight:
                    self._idle.notify_all()

    def _apply_jobs(self) -> None:
        """Apply due jobs in short slices whenever no request is being answered.

        Reads still apply whatever is due first, so this changes when the work happens, never
        what a client can observe.
        """
        store, stopping = self._store, self._stopping
        while not stopping.is_set():
            with self._idle:
                self._idle.wait_for(lambda: not self._in_flight or stopping.is_set())
            store.work_added.clear()
            try:
                wait = store.apply_due_slice(APPLY_SLICE_CONTACTS)
            except Exception:
                log.exception("sandbox failed to apply a job")
                continue
            if wait is None or wait > 0:
                store.work_added.wait(timeout=min(wait or 1.0, 1.0))

    # -- HTTP ----------------------------------------------------------------------------------
    def _auth_error(self, header: str | None) -> Response | None:
        key = header[len("Bearer ") :] if header and header.startswith("Bearer ") else None
        if key in self.revoked_keys:
            return error_response(401, [error(None, REVOKED_MESSAGE)])
        if key in self.forbidden_keys:
            return error_response(403, [error(None, "access forbidden")])
        if key != self.api_key:
            return error_response(401, [error(None, "authorization required")])
        return None

    def _handle(self, handler: _Handler, delay: float = 0.0) -> None:
        """Answer one request; `delay`: the modelled round trip already spent before it."""
        arrived, started = time.time() - delay, time.perf_counter() - delay
        url = urlsplit(handler.path)
        if "Transfer-Encoding" in handler.headers:
            self._record(RequestRecord(handler.command, url.path, 411, 0, 0, arrived))
            handler.send_error(411, "send a Content-Length; chunked bodies are not supported")
            return
        try:
            length = int(handler.headers.get("Content-Length") or 0)
        except ValueError:
            length = -1
        if not 0 <= length <= MAX_BODY_BYTES:
            self._record(RequestRecord(handler.command, url.path, 413, max(length, 0), 0, arrived))
            handler.send_error(413, f"request body too large: limit {MAX_BODY_BYTES} bytes")
            return
        body = handler.rfile.read(length) if length else b""
        storage = handler.server.storage
        if storage:
            outcome = self._answer_download(handler, url.path, url.query, body)
        elif handler.command == "GET" and url.path.rstrip("/") == STATS_PATH:
            handler.write_response(json_response(200, self.stats()), self._injector.peek(arrived))
            return
        elif url.path.rstrip("/") == LATENCY_PATH:  # not logged either: it is not traffic
            handler.write_response(self._latency_request(handler, body), None)
            return
        else:
            outcome = self._answer(handler, url.path, url.query, body)
        status = 0 if outcome.response is None else outcome.response.status
        kind = request_kind(handler.command, url.path)
        self._record(
            RequestRecord(
                handler.command,
                url.path,
                status,
                length,
                outcome.contacts,
                arrived,
                outcome.fault,
                time.perf_counter() - started,
                kind,
                _asks_to_wait(kind, outcome.response),
            )
        )
        if outcome.response is None:  # dropped: no answer at all
            handler.close_connection = True
        else:
            handler.write_response(outcome.response, None if storage else outcome.rate)

    def _answer_download(self, handler: _Handler, path: str, query: str, body: bytes) -> _Outcome:
        """The storage listener: downloads only, no key, and a key sent anyway is refused."""
        rate = self._injector.peek(time.time())
        if handler.command != "GET" or not path.startswith(DOWNLOAD_PREFIXES):
            return _Outcome(_s3_error(404, "NoSuchKey", "The specified key does not exist."), rate)
        if "Authorization" in handler.headers:
            return _Outcome(_s3_error(400, "InvalidArgument", S3_TWO_AUTH_MESSAGE), rate)
        return self._answer(handler, path, query, body)  # not /v3/: no auth, no rate limit

    def _answer(self, handler: _Handler, path: str, query: str, body: bytes) -> _Outcome:
        """Auth, then the rate limit, then any injected fault, then the endpoint itself."""
        injector = self._injector
        is_api = path.startswith("/v3/")
        now = time.time()
        if injector.plan.rate_limit is None and self._limits.active:
            rate = self._limits.peek(request_kind(handler.command, path), now)
        else:
            rate = injector.peek(now)
        if is_api:
            denied = self._auth_error(handler.headers.get("Authorization"))
            if denied is not None:
                return _Outcome(denied, rate)
            if injector.plan.rate_limit is None and self._limits.active:
                allowed, rate = self._limits.take(request_kind(handler.command, path), now)
            else:
                allowed, rate = injector.take(now)
            if not allowed:
                self._fault_counts.add("rate_limit")
                return _Outcome(_too_many_requests(), rate, fault="rate_limit")

        request = Request(
            handler.command, path, parse_qs(query, keep_blank_values=True), body, injector.plan
        )
        if is_api and self.contract is not None:  # recorded only: the answer is SendGrid's
            self.contract.check(request.method, path, request.query, body)
        fault = injector.decide(path, is_api)
        if fault == "ok":
            return self._dispatch(request, rate, None)
        self._fault_counts.add(fault)
        if fault == "drop":  # the request is not applied
            return _Outcome(None, rate, fault=fault)
        if fault == "lost":  # applied, but the answer never arrives
            applied = self._dispatch(request, rate, fault)
            return _Outcome(None, rate, applied.contacts, fault)
        if fault == "429":
            return _Outcome(_too_many_requests(), RateState(rate.limit, 0, rate.reset), fault=fault)
        if fault == "slow":  # applied, but answered late: the client may time out first
            outcome = self._dispatch(request, rate, fault)
            time.sleep(injector.plan.slow_seconds)
            return outcome
        status = int(fault)  # 5xx: the request is not applied
        response = error_response(status, [error(None, HTTPStatus(status).phrase.lower())])
        return _Outcome(response, rate, fault=fault)

    def _dispatch(self, request: Request, rate: RateState, fault: str | None) -> _Outcome:
        try:
            response = dispatch(self._store, request)
        except Exception:
            log.exception("sandbox failed on %s %s", request.method, request.path)
            response = error_response(500, [error(None, "sandbox internal error")])
        return _Outcome(response, rate, request.contacts, fault)

    def _record(self, record: RequestRecord) -> None:
        with self._log_lock:
            self._requests.append(record)
