"""The code location: the definitions for the configured data directory, built when loaded.

The settings are read from the environment here, once (see settings.py), and passed down:
nothing else in the pipeline reads the environment. A destination whose own configuration is
invalid is left out (and shown as such in the UI), so one broken entry never stops the
schedule and sensors of the others.
"""

import atexit
import gc

import dagster as dg

from sendgrid_pipeline.pipeline import build_definitions, default_resources, load_validated_config
from sendgrid_pipeline.settings import Settings


def location_definitions(settings: Settings) -> dg.Definitions:
    """What the code location serves for `settings` (also callable in process, e.g. in tests)."""
    config = load_validated_config(settings.data_dir, skip_invalid_destinations=True)
    return build_definitions(
        config,
        default_resources(settings, config),
        refresh_cron=settings.refresh_cron,
        refresh_timezone=settings.refresh_timezone,
    )


_built: tuple[Settings, dg.Definitions] | None = None


def skip_collecting_at_exit() -> None:
    """At interpreter exit, the cyclic garbage collector walks every object still alive (all
    of Dagster's, pandas', Pandera's): one to two seconds at the end of every run process,
    for memory the OS reclaims anyway. Frozen objects are not walked. Nothing here relies on
    a finalizer running at exit, which Python never promised."""
    gc.freeze()


atexit.register(skip_collecting_at_exit)  # runs before Dagster's own handlers (last in, first)


@dg.definitions
def defs() -> dg.Definitions:
    """Built once per process and settings: the Dagster CLI asks for the definitions up to six
    times in one `asset materialize`, and each build reads and validates the configuration."""
    global _built
    settings = Settings.from_env()
    if _built is None or _built[0] != settings:
        _built = (settings, location_definitions(settings))
    return _built[1]
