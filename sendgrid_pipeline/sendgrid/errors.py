"""Typed SendGrid errors, and the one table that decides what to do about each failure.

`ERROR_MAPPING` maps an HTTP status, a status class ("4xx", "5xx") or a transport exception to a
`Resolution`: whether the client retries it (and how), which error it raises when it stops, and
what that error tells the reader. The client consults it for every failed request; an error's
`retryable` comes from the same table, so the client and the assets never disagree about what
is worth trying again. The errors carry SendGrid's own messages, never the API key.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from enum import Enum

import requests

from sendgrid_pipeline.errors import PipelineError


@dataclass(frozen=True)
class ApiErrorDetail:
    """One entry of SendGrid's `{"errors": [{"field", "message"}]}` body."""

    message: str
    field: str | None = None


@dataclass
class SendGridError(PipelineError):
    """A SendGrid request failed; `explanation` says what to do about it."""

    method: str
    path: str
    status: int | None
    details: list[ApiErrorDetail] = field(default_factory=list)
    explanation: str = ""

    @property
    def retryable(self) -> bool:  # type: ignore[override]
        """What the table says for this status: 429, 5xx and no response at all are retried.

        Those are SendGrid being busy or unreachable; every other status (400, 401, 403, 404,
        409, 413, 422...) answers the request itself, so sending it again gets the same answer.
        """
        return resolve(self.status).retry

    def __str__(self) -> str:
        status = f"HTTP {self.status}" if self.status is not None else "no response"
        messages = "; ".join(
            f"{d.field}: {d.message}" if d.field else d.message for d in self.details
        )
        text = f"SendGrid {self.method} {self.path} failed ({status})"
        if messages:
            text += f": {messages}"
        if self.explanation:
            text += f". {self.explanation}"
        return text

    def __reduce__(self):  # keep pickling (Dagster serializes errors) working for dataclasses
        return (
            type(self),
            (self.method, self.path, self.status, self.details, self.explanation),
        )


class SendGridAuthError(SendGridError):
    """401/403: the key is wrong, revoked, or lacks the marketing scope."""


class SendGridNotFoundError(SendGridError):
    """404: the list, job or contact does not exist on this account."""


class SendGridBadRequestError(SendGridError):
    """400/413/422: SendGrid rejected the request itself (a value, a size or a limit)."""


class SendGridUnavailableError(SendGridError):
    """429/5xx/timeouts/connection errors persisted past the retry budget."""


class SendGridJobError(PipelineError):
    """An asynchronous job did not reach a terminal state in time, or cannot be read.

    Retryable by default: the job keeps running on SendGrid's side and is not recorded as done,
    so a later attempt picks it up.
    """

    def __init__(self, message: str, *, retryable: bool = True) -> None:
        super().__init__(message)
        self._retryable = retryable

    @property
    def retryable(self) -> bool:  # type: ignore[override]
        """Whether a later attempt may succeed (see the class docstring)."""
        return self._retryable

    def __reduce__(self):  # the keyword-only flag is not in args; keep it across pickling
        return (_rebuild_job_error, (type(self), str(self), self._retryable))


def _rebuild_job_error(
    cls: type[SendGridJobError], message: str, retryable: bool
) -> SendGridJobError:
    return cls(message, retryable=retryable)


class UnsafeUrlError(PipelineError, ValueError):
    """A URL the client will not use: malformed, ambiguous between parsers, or with userinfo.

    Its message never repeats userinfo, a query string or the API key.
    """


class InsecureTransportError(UnsafeUrlError):
    """Refusing to use plain HTTP to a host that is not loopback (for the key or for data)."""


# -- the table -----------------------------------------------------------------------------------
class Action(Enum):
    """What the client does with a failed request."""

    RETRY = "retry"  # back off exponentially (with jitter), then send it again
    WAIT_FOR_RESET = "wait_for_reset"  # 429: wait until X-RateLimit-Reset, then send it again
    FAIL = "fail"  # raise at once: sending it again gets the same answer


@dataclass(frozen=True)
class Resolution:
    """One row of the table: the action, the error raised when it ends, and its advice."""

    action: Action
    error: type[SendGridError]
    explanation: str = ""

    @property
    def retry(self) -> bool:
        """Whether another attempt (now by the client, later by Dagster) may succeed."""
        return self.action is not Action.FAIL


# The client puts "Gave up after N attempts; " in front of a retried row's explanation.
_NO_ANSWER = (
    "the request may have been applied: it was written ahead, and the next sync checks it; "
    "a rerun resumes safely"
)
_BUSY = "a rerun resumes safely"

ERROR_MAPPING: Mapping[int | str | type[Exception], Resolution] = {
    # No answer at all: the request may have been applied; it was written ahead.
    requests.ConnectionError: Resolution(Action.RETRY, SendGridUnavailableError, _NO_ANSWER),
    requests.Timeout: Resolution(Action.RETRY, SendGridUnavailableError, _NO_ANSWER),
    400: Resolution(Action.FAIL, SendGridBadRequestError),
    401: Resolution(
        Action.FAIL,
        SendGridAuthError,
        "The API key was rejected: it is wrong, revoked or expired. Create a key with "
        "Marketing access in SendGrid (Settings > API Keys) and put it in the "
        "destination's api_key_env environment variable",
    ),
    403: Resolution(
        Action.FAIL,
        SendGridAuthError,
        "The API key is valid but may not use this endpoint: give it the Marketing "
        "(marketing.read, which includes write) scope; SendGrid also answers 403 "
        "after too many bad requests",
    ),
    404: Resolution(Action.FAIL, SendGridNotFoundError),
    413: Resolution(Action.FAIL, SendGridBadRequestError),
    422: Resolution(Action.FAIL, SendGridBadRequestError),
    429: Resolution(Action.WAIT_FOR_RESET, SendGridUnavailableError, _BUSY),
    500: Resolution(Action.RETRY, SendGridUnavailableError, _BUSY),
    502: Resolution(Action.RETRY, SendGridUnavailableError, _BUSY),
    503: Resolution(Action.RETRY, SendGridUnavailableError, _BUSY),
    504: Resolution(Action.RETRY, SendGridUnavailableError, _BUSY),
    # Status classes, for statuses not listed above.
    "3xx": Resolution(
        Action.FAIL,
        SendGridError,
        "SendGrid answered with a redirect the client does not follow (it follows redirects "
        "of GET requests only, a few hops at most)",
    ),
    "4xx": Resolution(Action.FAIL, SendGridError),  # 405, 409...: the request itself
    "5xx": Resolution(Action.RETRY, SendGridError, _BUSY),  # 501, 507...: the server
}

# A presigned download link (an errors file, an export) is not the API: a refusal there means
# the link expired, not that the key is wrong.
DOWNLOAD_MAPPING: Mapping[int, Resolution] = {
    status: Resolution(
        Action.FAIL,
        SendGridError,
        "The download link was refused; SendGrid's links expire, so the next run "
        "asks SendGrid for a fresh one",
    )
    for status in (401, 403)
}

_FAIL = Resolution(Action.FAIL, SendGridError)


def resolve(failure: int | BaseException | None, *, download: bool = False) -> Resolution:
    """The table's row for an HTTP status or a transport exception (None: no response).

    Exact statuses first, then the status class; an exception by its type (or a base of it).
    Anything the table does not name fails at once.
    """
    if failure is None:
        return ERROR_MAPPING[requests.ConnectionError]
    if isinstance(failure, BaseException):
        for kind in type(failure).__mro__:
            if kind in ERROR_MAPPING:
                return ERROR_MAPPING[kind]
        return _FAIL
    if download and failure in DOWNLOAD_MAPPING:
        return DOWNLOAD_MAPPING[failure]
    return ERROR_MAPPING.get(failure) or ERROR_MAPPING.get(f"{failure // 100}xx", _FAIL)
