"""The SendGrid resource: configuration for the client, with the key from the environment."""

from __future__ import annotations

import os

import dagster as dg
from pydantic import Field

from sendgrid_pipeline.errors import ConfigError
from sendgrid_pipeline.sendgrid.client import DEFAULT_BASE_URL, EU_BASE_URL, SendGridClient

BASE_URL_ENV = "SENDGRID_BASE_URL"
DEFAULT_KEY_ENV = "SENDGRID_API_KEY"


class SendGridResource(dg.ConfigurableResource):
    """SendGrid Marketing API access. Destinations may name their own key variable."""

    api_key: str = Field(
        repr=False,  # never in a repr, a log line or an error
        description="SendGrid API key with Marketing access; pass dg.EnvVar('SENDGRID_API_KEY').",
    )
    base_url: str = Field(
        default=DEFAULT_BASE_URL,
        description=(
            f"API base URL; EU accounts use {EU_BASE_URL}. Must be https (plain http only to a "
            "loopback sandbox), without user info; the key is sent to this origin only."
        ),
    )
    timeout_seconds: float = Field(default=30.0, description="Timeout of every HTTP request.")
    max_retries: int = Field(default=6, description="Retries for 429, 5xx and network errors.")
    backoff_max_seconds: float = Field(default=60.0, description="Longest single wait.")
    poll_interval_seconds: float = Field(
        default=1.0, description="First wait between job status polls (grows 1.5x)."
    )
    job_timeout_seconds: float = Field(
        default=900.0, description="Deadline for one import/delete job to finish."
    )

    def client(self, api_key_env: str = DEFAULT_KEY_ENV) -> SendGridClient:
        """A client for a destination; its key comes from its own env var when it names one."""
        api_key = (
            self.api_key if api_key_env == DEFAULT_KEY_ENV else dg.EnvVar(api_key_env).get_value()
        )
        if not api_key:
            raise ConfigError(
                f"Environment variable {api_key_env} is not set: it must hold the SendGrid "
                "API key for this destination"
            )
        return SendGridClient(
            api_key,
            self.base_url,
            timeout_seconds=self.timeout_seconds,
            max_retries=self.max_retries,
            backoff_max_seconds=self.backoff_max_seconds,
            poll_interval_seconds=self.poll_interval_seconds,
            job_timeout_seconds=self.job_timeout_seconds,
        )


def sendgrid_resource_from_env() -> SendGridResource:
    """The resource as definitions.py wires it: key via EnvVar, base URL from the environment."""
    return SendGridResource(
        api_key=dg.EnvVar(DEFAULT_KEY_ENV),
        base_url=os.environ.get(BASE_URL_ENV) or DEFAULT_BASE_URL,
        poll_interval_seconds=float(os.environ.get("SENDGRID_POLL_INTERVAL_SECONDS", "1.0")),
    )
