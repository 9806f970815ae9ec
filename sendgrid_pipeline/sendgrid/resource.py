"""The SendGrid resource: configuration for the client; the deployed key is a dg.EnvVar."""

from __future__ import annotations

import dagster as dg
from pydantic import Field

from sendgrid_pipeline.errors import ConfigError
from sendgrid_pipeline.sendgrid.client import DEFAULT_BASE_URL, EU_BASE_URL, SendGridClient
from sendgrid_pipeline.settings import API_KEY_ENV, Settings


class SendGridResource(dg.ConfigurableResource):
    """SendGrid Marketing API access. Destinations may name their own key variable."""

    api_key: str = Field(
        repr=False,  # never in a repr, a log line or an error
        description="SendGrid API key with Marketing access; pass dg.EnvVar('SENDGRID_API_KEY').",
    )
    api_key_env: str = Field(
        default=API_KEY_ENV,
        description="The environment variable api_key stands for: destinations whose "
        "api_key_env names it use api_key; any other destination's key is read from its own.",
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

    def client(self, api_key_env: str = API_KEY_ENV) -> SendGridClient:
        """A client for a destination; its key comes from its own env var when it names one."""
        api_key = (
            self.api_key if api_key_env == self.api_key_env else dg.EnvVar(api_key_env).get_value()
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


def deployed_sendgrid_resource(settings: Settings) -> SendGridResource:
    """The resource as the code location wires it: the key as a dg.EnvVar, resolved per run."""
    return SendGridResource(
        api_key=dg.EnvVar(settings.api_key_env),
        api_key_env=settings.api_key_env,
        base_url=settings.sendgrid_base_url,
        poll_interval_seconds=settings.poll_interval_seconds,
    )
