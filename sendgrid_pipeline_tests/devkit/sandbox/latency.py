"""How long the sandbox takes, as a model: jobs, the account's queue, rate limits, list counts.

Two presets. ``fixed`` (the default, and what every test uses) keeps the sandbox fast and
predictable: each job is pending for ``job_delay_seconds``, whatever its size, jobs run side by
side, nothing is rate limited unless a FaultPlan says so, and list counts are exact at once.
``realistic`` makes it behave like SendGrid in time, so that a benchmark shows what the
pipeline's *shape* (how many jobs, in what order, how it waits) costs:

* a job (upsert, list removal, export) takes ``job_base_seconds`` plus
  ``job_seconds_per_item`` per contact it carries;
* the account works on at most ``job_workers`` jobs at a time; later jobs wait in its queue, and
  jobs finish in the order they were accepted (a removal never overtakes an earlier upsert);
* every API request takes ``request_seconds`` before it is answered (the round trip to
  api.sendgrid.com and SendGrid's own handling, which loopback does not have);
* each endpoint has its own rate-limit window (``rate_limit``, ``rate_window_seconds``),
  reported in ``X-RateLimit-Limit/Remaining/Reset`` on every answer and enforced with 429;
* a list's ``contact_count`` lags its true membership by ``count_lag_seconds``.

Where the numbers come from (docs/BENCHMARKS.md has the table with links): SendGrid publishes
no job durations and no per-endpoint rate limits. Users report upserted contacts appearing on a
list "after a few minutes" and waiting minutes before relying on a list; the only published
default rate limit is 600 requests per minute per user (for the v2 API), and the v3 reference
says each endpoint has its own limit per refresh period. Everything else is an assumption, and
every parameter can be set on the command line.
"""

from __future__ import annotations

import heapq
import math
import re
import threading
from dataclasses import asdict, dataclass, fields, replace
from typing import Any

from sendgrid_pipeline_tests.devkit.sandbox.faults import RateState

PRESETS = ("fixed", "realistic")


@dataclass(frozen=True)
class LatencyModel:
    """Parameters of the sandbox's timing; the defaults are the ``fixed`` preset."""

    job_base_seconds: float = 0.05  # a job is pending at least this long
    job_seconds_per_item: float = 0.0  # plus this per contact it carries (upsert, removal, export)
    job_workers: int = 0  # jobs the account runs at once; 0: no queue, every job starts at once
    request_seconds: float = 0.0  # added before every API answer
    rate_limit: int = 0  # requests per endpoint per window; 0: no per-endpoint limit
    rate_window_seconds: float = 60.0
    count_lag_seconds: float = 0.0  # list contact_count shows the membership this long ago
    preset: str = "fixed"

    def __post_init__(self) -> None:
        for name in (
            "job_base_seconds",
            "job_seconds_per_item",
            "request_seconds",
            "count_lag_seconds",
        ):
            if getattr(self, name) < 0:
                raise ValueError(f"{name} must be >= 0")
        if self.job_workers < 0 or self.rate_limit < 0:
            raise ValueError("job_workers and rate_limit must be >= 0")
        if self.rate_window_seconds <= 0:
            raise ValueError("rate_window_seconds must be > 0")

    @classmethod
    def fixed(cls, job_delay_seconds: float = 0.05) -> LatencyModel:
        """Every job pending exactly `job_delay_seconds`; nothing else is slowed down."""
        return cls(job_base_seconds=job_delay_seconds)

    @classmethod
    def realistic(cls) -> LatencyModel:
        """SendGrid in time; see docs/BENCHMARKS.md for the source of each default."""
        return cls(
            job_base_seconds=3.0,  # assumption: a small job is done in seconds, not at once
            job_seconds_per_item=0.001,  # assumption: a full 30,000-contact upsert ~33 s
            job_workers=2,  # assumption: an account's jobs are not all worked on at once
            request_seconds=0.1,  # assumption: one round trip to api.sendgrid.com
            rate_limit=600,  # published default for the v2 API: 600 requests/min/user
            rate_window_seconds=60.0,
            count_lag_seconds=30.0,  # assumption: counts catch up within half a minute
            preset="realistic",
        )

    @classmethod
    def from_preset(cls, name: str, job_delay_seconds: float = 0.05) -> LatencyModel:
        if name == "fixed":
            return cls.fixed(job_delay_seconds)
        if name == "realistic":
            return cls.realistic()
        raise ValueError(f"unknown latency preset {name!r}; use one of {', '.join(PRESETS)}")

    def with_changes(self, changes: dict[str, Any]) -> LatencyModel:
        """A copy with some parameters changed (unknown names: ValueError)."""
        known = {f.name: f.type for f in fields(self)}
        unknown = sorted(set(changes) - set(known))
        if unknown:
            raise ValueError(f"unknown latency parameters {unknown}; known: {sorted(known)}")
        converted: dict[str, Any] = {}
        for name, value in changes.items():
            if name == "preset":
                converted[name] = str(value)
            elif name in ("job_workers", "rate_limit"):
                converted[name] = int(value)
            else:
                converted[name] = float(value)
        return replace(self, **converted)

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)

    def job_seconds(self, items: int) -> float:
        """How long one job of `items` contacts runs once the account starts it."""
        return self.job_base_seconds + self.job_seconds_per_item * max(0, items)

    def drain_seconds(self, job_sizes: list[int]) -> float:
        """Time from submitting these jobs at once until the last one is done (queue included).

        The least a client that submits everything together can wait on SendGrid.
        """
        if not job_sizes:
            return 0.0
        durations = [self.job_seconds(n) for n in job_sizes]
        if self.job_workers <= 0:
            return max(durations)
        workers = [0.0] * min(self.job_workers, len(durations))
        finished = 0.0
        for duration in durations:
            start = heapq.heappop(workers)
            end = max(start + duration, finished)  # in the order accepted
            finished = end
            heapq.heappush(workers, start + duration)
        return finished


class JobQueue:
    """When each accepted job will be done, under a model (not thread safe: the store locks)."""

    def __init__(self, model: LatencyModel) -> None:
        self.model = model
        self._workers: list[float] = []  # when each busy worker is free again
        self._last_due = 0.0

    def schedule(self, now: float, items: int) -> float:
        """The due time of a job accepted at `now` carrying `items` contacts."""
        model = self.model
        duration = model.job_seconds(items)
        if model.job_workers <= 0:
            due = now + duration
        else:
            workers = self._workers
            while len(workers) > model.job_workers:
                heapq.heappop(workers)
            busy = len(workers) >= model.job_workers
            start = max(now, heapq.heappop(workers)) if busy else now
            heapq.heappush(workers, start + duration)
            due = start + duration
        # Jobs finish in the order they were accepted: a job is never done before an earlier one.
        due = max(due, self._last_due)
        self._last_due = due
        return due


# Endpoints as SendGrid limits them: one window per kind of request.
_KINDS: tuple[tuple[str, re.Pattern[str], str], ...] = tuple(
    (method, re.compile(pattern), kind)
    for method, pattern, kind in (
        ("PUT", r"/v3/marketing/contacts", "upsert"),
        ("GET", r"/v3/marketing/contacts/imports/[^/]+", "job_status"),
        ("POST", r"/v3/marketing/contacts/search/emails", "search_emails"),
        ("POST", r"/v3/marketing/contacts/search", "search_sgql"),
        ("POST", r"/v3/marketing/contacts/exports", "export_start"),
        ("GET", r"/v3/marketing/contacts/exports(/[^/]+)?", "export_status"),
        ("DELETE", r"/v3/marketing/lists/[^/]+/contacts", "remove"),
        ("GET", r"/v3/marketing/lists(/[^/]+(/contacts/count)?)?", "list_read"),
        ("GET", r"/v3/marketing/field_definitions", "field_definitions"),
        ("POST", r"/v3/marketing/field_definitions", "field_definitions"),
        ("GET", r"/sandbox/(errors|exports)/.+", "download"),
    )
)


def request_kind(method: str, path: str) -> str:
    """What a request is, for the request log, the statistics and the per-endpoint limits."""
    path = path.rstrip("/") or "/"
    for kind_method, pattern, kind in _KINDS:
        if method == kind_method and pattern.fullmatch(path):
            return kind
    return "other"


class EndpointLimits:
    """A fixed window per endpoint kind, the way X-RateLimit-* describes one (thread safe)."""

    def __init__(self, model: LatencyModel) -> None:
        self.model = model
        self._lock = threading.Lock()
        self._windows: dict[str, tuple[float, int]] = {}  # kind -> (window end, requests in it)

    @property
    def active(self) -> bool:
        return self.model.rate_limit > 0

    def _window(self, kind: str, now: float) -> tuple[float, int]:
        end, count = self._windows.get(kind, (0.0, 0))
        if now >= end:
            end, count = now + self.model.rate_window_seconds, 0
        return end, count

    def peek(self, kind: str, now: float) -> RateState:
        with self._lock:
            end, count = self._window(kind, now)
            limit = self.model.rate_limit
            return RateState(limit, max(0, limit - count), math.ceil(end))

    def take(self, kind: str, now: float) -> tuple[bool, RateState]:
        """Count one request of this kind; False once its window is used up (answer 429)."""
        with self._lock:
            end, count = self._window(kind, now)
            limit = self.model.rate_limit
            allowed = count < limit
            count += 1
            self._windows[kind] = (end, count)
            return allowed, RateState(limit, max(0, limit - count), math.ceil(end))
