"""Fault injection, so the pipeline's retry, pacing and job-error handling can be exercised locally.

A `FaultPlan` says what to inject and is the live, mutable plan (its `scripted` queue and
`burst_429` count are consumed as requests arrive). A `FaultInjector` holds the per-plan state
that must not leak into the plan: the seeded random stream and the rate-limit window.
"""

from __future__ import annotations

import math
import random
import re
import threading
from collections import Counter
from dataclasses import dataclass, field

SCRIPTED_FAULTS = frozenset({"429", "500", "503", "slow", "drop", "lost", "ok"})
# Headers to report when no rate limit is configured: nothing is limited, so Remaining stays full.
NOMINAL_RATE_LIMIT = 10_000


@dataclass
class FaultPlan:
    """What to inject; everything is off by default and random choices follow `seed`."""

    rate_limit: tuple[int, float] | None = None  # (requests, window seconds)
    burst_429: int = 0  # the next K requests answer 429
    error_5xx_rate: float = 0.0
    error_5xx_codes: tuple[int, ...] = (500, 503)
    slow_rate: float = 0.0
    slow_seconds: float = 1.0
    drop_rate: float = 0.0
    lost_rate: float = 0.0  # applied, then the connection drops: the answer is lost
    unreadable_errors_files: bool = False  # every errors_url download answers 500
    reject_email_pattern: str | None = None  # rows whose email matches fail at job time
    fail_jobs: bool = False  # every upsert job ends "failed"
    only_paths: str | None = None  # regex: where 5xx/slow/drop/burst/scripted faults may apply
    scripted: list[str] = field(default_factory=list)  # faults for the next requests, in order
    seed: int | None = None

    def __post_init__(self) -> None:
        for name in ("error_5xx_rate", "slow_rate", "drop_rate", "lost_rate"):
            if not 0.0 <= getattr(self, name) <= 1.0:
                raise ValueError(f"{name} must be between 0 and 1")
        if self.rate_limit is not None:
            limit, window = self.rate_limit
            if limit < 1 or window <= 0:
                raise ValueError("rate_limit must be (requests >= 1, window seconds > 0)")
        if any(not 500 <= code <= 599 for code in self.error_5xx_codes) or not self.error_5xx_codes:
            raise ValueError("error_5xx_codes must be a non-empty tuple of 5xx codes")
        unknown = [f for f in self.scripted if f not in SCRIPTED_FAULTS]
        if unknown:
            raise ValueError(f"unknown scripted faults {unknown}; use {sorted(SCRIPTED_FAULTS)}")
        for pattern in (self.reject_email_pattern, self.only_paths):
            if pattern is not None:
                re.compile(pattern)


@dataclass(frozen=True)
class RateState:
    """The X-RateLimit-* values for one response."""

    limit: int
    remaining: int
    reset: int  # Unix epoch seconds, rounded up

    def headers(self) -> list[tuple[str, str]]:
        return [
            ("X-RateLimit-Limit", str(self.limit)),
            ("X-RateLimit-Remaining", str(self.remaining)),
            ("X-RateLimit-Reset", str(self.reset)),
        ]


class FaultCounts:
    """Thread-safe tally of injected faults, kept for the server's lifetime."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._counts: Counter[str] = Counter()

    def add(self, kind: str, n: int = 1) -> None:
        with self._lock:
            self._counts[kind] += n

    def snapshot(self) -> dict[str, int]:
        with self._lock:
            return dict(self._counts)


class FaultInjector:
    """Decides, request by request, which fault of a plan applies."""

    def __init__(self, plan: FaultPlan) -> None:
        self.plan = plan
        self._rng = random.Random(plan.seed)
        self._lock = threading.Lock()
        self._window_end: float | None = None
        self._window_count = 0

    def _state(self, now: float) -> RateState:
        if self.plan.rate_limit is None:
            return RateState(NOMINAL_RATE_LIMIT, NOMINAL_RATE_LIMIT, int(now) + 1)
        limit, window = self.plan.rate_limit
        if self._window_end is None or now >= self._window_end:
            self._window_end, self._window_count = now + window, 0
        remaining = max(0, limit - self._window_count)
        return RateState(limit, remaining, math.ceil(self._window_end))

    def peek(self, now: float) -> RateState:
        """The rate-limit headers for a request that does not count against the limit."""
        with self._lock:
            return self._state(now)

    def take(self, now: float) -> tuple[bool, RateState]:
        """Count one API request; False when it is over the limit (answer 429)."""
        with self._lock:
            state = self._state(now)
            if self.plan.rate_limit is None:
                return True, state
            self._window_count += 1
            allowed = state.remaining > 0
            return allowed, RateState(state.limit, max(0, state.remaining - 1), state.reset)

    def decide(self, path: str, is_api: bool) -> str:
        """One of "ok", "429", "slow", "drop", "lost" or a 5xx code as a string."""
        plan = self.plan
        if not is_api and plan.unreadable_errors_files and "/errors/" in path:
            return "500"
        if plan.only_paths is not None:
            if not re.search(plan.only_paths, path):
                return "ok"
        elif not is_api:  # downloads (errors_url, export files) are exempt unless named
            return "ok"
        with self._lock:
            if plan.scripted:
                return plan.scripted.pop(0)
            if plan.burst_429 > 0:
                plan.burst_429 -= 1
                return "429"
            rng = self._rng
            if plan.drop_rate and rng.random() < plan.drop_rate:
                return "drop"
            if plan.lost_rate and rng.random() < plan.lost_rate:
                return "lost"
            if plan.error_5xx_rate and rng.random() < plan.error_5xx_rate:
                return str(rng.choice(plan.error_5xx_codes))
            if plan.slow_rate and rng.random() < plan.slow_rate:
                return "slow"
        return "ok"
