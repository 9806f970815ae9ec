"""Typed SendGrid errors. They carry SendGrid's own messages, never the API key.

Each says whether trying again later can help (`retryable`), so the assets can ask Dagster
for a retry only when one might succeed.
"""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass(frozen=True)
class ApiErrorDetail:
    """One entry of SendGrid's `{"errors": [{"field", "message"}]}` body."""

    message: str
    field: str | None = None


@dataclass
class SendGridError(Exception):
    """A SendGrid request failed; `explanation` says what to do about it."""

    method: str
    path: str
    status: int | None
    details: list[ApiErrorDetail] = field(default_factory=list)
    explanation: str = ""

    @property
    def retryable(self) -> bool:
        """True for 429, 5xx and no response at all (timeout, dropped connection).

        Those are SendGrid being busy or unreachable; every other status (400, 401, 403, 404,
        409, 413, 422...) answers the request itself, so sending it again gets the same answer.
        """
        return self.status is None or self.status == 429 or 500 <= self.status <= 599

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


class SendGridJobError(Exception):
    """An asynchronous job did not reach a terminal state in time, or cannot be read.

    Retryable by default: the job keeps running on SendGrid's side and is not recorded as done,
    so a later attempt picks it up.
    """

    def __init__(self, message: str, *, retryable: bool = True) -> None:
        super().__init__(message)
        self._retryable = retryable

    @property
    def retryable(self) -> bool:
        """Whether a later attempt may succeed (see the class docstring)."""
        return self._retryable

    def __reduce__(self):  # the keyword-only flag is not in args; keep it across pickling
        return (_rebuild_job_error, (type(self), str(self), self._retryable))


def _rebuild_job_error(
    cls: type[SendGridJobError], message: str, retryable: bool
) -> SendGridJobError:
    return cls(message, retryable=retryable)


class UnsafeUrlError(ValueError):
    """A URL the client will not use: malformed, ambiguous between parsers, or with userinfo.

    Its message never repeats userinfo, a query string or the API key.
    """


class InsecureTransportError(UnsafeUrlError):
    """Refusing to use plain HTTP to a host that is not loopback (for the key or for data)."""
