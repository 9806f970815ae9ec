"""Errors about the pipeline's own inputs (configuration and profile data)."""


class ConfigError(ValueError):
    """The configuration or the profile data is invalid; the message names the file and key."""


class ProfileDataError(ValueError):
    """The profile source cannot be read or violates its contract; nothing is sent."""
