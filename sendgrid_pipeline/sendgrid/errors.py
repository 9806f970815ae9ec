"""Typed SendGrid errors. They carry SendGrid's own messages, never the API key."""

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
    """400/413: SendGrid rejected the request itself (a value, a size or a limit)."""


class SendGridUnavailableError(SendGridError):
    """429/5xx/timeouts/connection errors persisted past the retry budget."""


class SendGridJobError(Exception):
    """An asynchronous job did not reach a terminal state in time, or cannot be read."""


class InsecureTransportError(ValueError):
    """Refusing to send an API key over plain HTTP to a host that is not loopback."""
