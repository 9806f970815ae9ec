"""The pipeline's settings, read from the environment once, where the code location is built.

The pipeline's code receives its settings as values: `definitions.py` reads them with
`Settings.from_env()` and passes them on (the data directory to the configuration, the rest to
the resources and the schedule). Tests and the demo build their resources directly; `make dev`
and the benchmark start the Dagster CLI with these variables in its process environment.

The SendGrid API key is not a setting: the deployed resource holds `dg.EnvVar(API_KEY_ENV)`,
which Dagster resolves when a run starts and never shows, so the key is never a plain value
here (nor in a repr, a log line or the UI).
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

from sendgrid_pipeline.errors import ConfigError
from sendgrid_pipeline.object_storage import STORAGE_ENV_PREFIXES
from sendgrid_pipeline.sendgrid.client import DEFAULT_BASE_URL

DATA_DIR_ENV = "SENDGRID_PIPELINE_DATA_DIR"
STATE_DIR_ENV = "SENDGRID_PIPELINE_STATE_DIR"
# The PostgreSQL URL of the shared sync state; its value (with a password) is never read here:
# the deployed resource holds dg.EnvVar(STATE_DSN_ENV) when the variable is set.
STATE_DSN_ENV = "SENDGRID_PIPELINE_STATE_DSN"
EXECUTOR_ENV = "SENDGRID_PIPELINE_EXECUTOR"
STORAGE_DIR_ENV = "SENDGRID_PIPELINE_STORAGE_DIR"
BASE_URL_ENV = "SENDGRID_BASE_URL"
POLL_INTERVAL_ENV = "SENDGRID_POLL_INTERVAL_SECONDS"
REFRESH_CRON_ENV = "SENDGRID_REFRESH_CRON"
REFRESH_TIMEZONE_ENV = "SENDGRID_REFRESH_TIMEZONE"
API_KEY_ENV = "SENDGRID_API_KEY"  # the variable's name only: its value is never read here

DEFAULT_DATA_DIR = Path(__file__).resolve().parents[1] / "data"
DEFAULT_POLL_INTERVAL_SECONDS = 1.0
DEFAULT_REFRESH_CRON = "0 6 * * *"
DEFAULT_REFRESH_TIMEZONE = "UTC"
EXECUTORS = ("in_process", "multiprocess")  # how the export job runs its steps
DEFAULT_EXECUTOR = "in_process"


@dataclass(frozen=True)
class Settings:
    """Where the data, the sync state and the step outputs live; which SendGrid; when to refresh.

    `state_dir` and `storage_dir` default to `<data_dir>/state` and `<data_dir>/storage`.
    `storage_dir` is a directory or a storage URL (`file://`, `s3://`, `gs://`, `az://`, ...);
    `storage_environment` holds the object-store provider variables (`AWS_*`, `GOOGLE_*`,
    `AZURE_*`) the storage reaches its store with: never shown (they may be credentials).
    """

    data_dir: Path = DEFAULT_DATA_DIR
    state_dir: Path | None = None  # None: <data_dir>/state
    storage_dir: str | Path | None = None  # a path or URL; None: <data_dir>/storage
    sendgrid_base_url: str = DEFAULT_BASE_URL
    poll_interval_seconds: float = DEFAULT_POLL_INTERVAL_SECONDS
    refresh_cron: str = DEFAULT_REFRESH_CRON
    refresh_timezone: str = DEFAULT_REFRESH_TIMEZONE
    api_key_env: str = API_KEY_ENV
    # The variable holding the state's PostgreSQL URL when it is set (None: SQLite in state_dir)
    state_dsn_env: str | None = None
    executor: str = DEFAULT_EXECUTOR  # in_process | multiprocess
    storage_environment: Mapping[str, str] = field(default_factory=dict, repr=False, compare=False)

    def __post_init__(self) -> None:
        data_dir = Path(self.data_dir).resolve()
        object.__setattr__(self, "data_dir", data_dir)
        object.__setattr__(
            self, "state_dir", Path(self.state_dir) if self.state_dir else data_dir / "state"
        )
        storage = str(self.storage_dir) if self.storage_dir else str(data_dir / "storage")
        object.__setattr__(self, "storage_dir", storage)
        object.__setattr__(self, "storage_environment", dict(self.storage_environment))
        if self.executor not in EXECUTORS:
            raise ConfigError(
                f"Environment variable {EXECUTOR_ENV}={self.executor!r}: expected one of "
                f"{', '.join(EXECUTORS)}"
            )

    @property
    def storage_is_default(self) -> bool:
        """Whether step outputs are in `<data_dir>/storage` (the reports then stay in
        `<data_dir>/reports`, beside it, where they always were)."""
        return self.storage_dir == str(self.data_dir / "storage")

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None) -> Settings:
        """The settings the environment gives (unset or empty variables: the defaults)."""
        env = os.environ if environ is None else environ

        def get(name: str) -> str | None:
            return env.get(name) or None

        poll = get(POLL_INTERVAL_ENV)
        try:
            poll_interval = float(poll) if poll else DEFAULT_POLL_INTERVAL_SECONDS
        except ValueError:
            raise ConfigError(
                f"Environment variable {POLL_INTERVAL_ENV}={poll!r}: expected a number of seconds"
            ) from None
        return cls(
            data_dir=Path(get(DATA_DIR_ENV) or DEFAULT_DATA_DIR),
            state_dir=_path(get(STATE_DIR_ENV)),
            storage_dir=get(STORAGE_DIR_ENV),
            sendgrid_base_url=get(BASE_URL_ENV) or DEFAULT_BASE_URL,
            poll_interval_seconds=poll_interval,
            refresh_cron=get(REFRESH_CRON_ENV) or DEFAULT_REFRESH_CRON,
            refresh_timezone=get(REFRESH_TIMEZONE_ENV) or DEFAULT_REFRESH_TIMEZONE,
            state_dsn_env=STATE_DSN_ENV if get(STATE_DSN_ENV) else None,
            executor=(get(EXECUTOR_ENV) or DEFAULT_EXECUTOR).strip().lower(),
            storage_environment={
                name: value
                for name, value in env.items()
                if name.startswith(STORAGE_ENV_PREFIXES) and value
            },
        )


def variable(name: str, environ: Mapping[str, str] | None = None) -> str | None:
    """The value of the environment variable `name` (unset or empty: None), for a command
    told which variable holds a secret (state_migrate --to-env), so none is typed."""
    env = os.environ if environ is None else environ
    return env.get(name) or None


def _path(value: str | None) -> Path | None:
    return Path(value) if value else None
