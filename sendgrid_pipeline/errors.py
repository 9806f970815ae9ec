"""The pipeline's one error root, and the errors about its own inputs.

Every error the pipeline raises on purpose derives from `PipelineError` and says, through
`retryable`, whether trying again later may succeed. Dagster retries exactly those; any other
exception is a bug of ours and fails the step at once (see `assets.common.retry_only_transient`).
"""


class PipelineError(Exception):
    """An expected failure with a message a data engineer can act on.

    `retryable` is False unless a subclass (or an instance) says otherwise: only a failure of
    something outside the pipeline that may pass on its own (SendGrid busy or unreachable, a
    job still running) is worth a retry.
    """

    retryable: bool = False


class ConfigError(PipelineError, ValueError):
    """The configuration or the profile data is invalid; the message names the file and key.

    Also a ValueError, so pydantic validators that raise it still report a validation error.
    """


class ProfileDataError(PipelineError, ValueError):
    """The profile source cannot be read or violates its contract; nothing is sent."""
