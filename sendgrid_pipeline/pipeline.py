"""Builds the Definitions for one validated configuration and the resources it is given.

`definitions.py` wires the deployed resources from the settings (`default_resources`); tests,
the demo and the benchmark pass their own (a sandbox URL and key, temporary directories).
"""

from __future__ import annotations

import logging
import warnings
from dataclasses import dataclass
from pathlib import Path

import dagster as dg
import polars as pl

from sendgrid_pipeline.assets.common import GROUP
from sendgrid_pipeline.assets.contacts import build_contacts_asset
from sendgrid_pipeline.assets.erasures import (
    build_erasure_job,
    build_erasure_sensor,
    build_erasures_asset,
    create_erasures_folder,
)
from sendgrid_pipeline.assets.profiles import build_profiles_asset
from sendgrid_pipeline.assets.segments import build_segments_asset
from sendgrid_pipeline.assets.sync import build_sync_asset
from sendgrid_pipeline.assets.unsubscribes import (
    build_unsubscribes_asset,
    build_unsubscribes_job_and_schedule,
)
from sendgrid_pipeline.config import PipelineConfig, load_config
from sendgrid_pipeline.delta_source import DeltaProfileSource
from sendgrid_pipeline.errors import ProfileDataError
from sendgrid_pipeline.io_manager import (
    DestinationParquetIOManager,
    ReportStore,
    environment_resource,
)
from sendgrid_pipeline.object_storage import StorageLocation
from sendgrid_pipeline.profile_source import FileProfileSource, ProfileSource
from sendgrid_pipeline.schedules import build_refresh_schedule
from sendgrid_pipeline.sendgrid.resource import SendGridResource, deployed_sendgrid_resource
from sendgrid_pipeline.sensors import build_export_request_sensor, build_profile_change_sensor
from sendgrid_pipeline.settings import (
    DEFAULT_EXECUTOR,
    DEFAULT_REFRESH_CRON,
    DEFAULT_REFRESH_TIMEZONE,
    Settings,
)
from sendgrid_pipeline.state import SyncStateResource
from sendgrid_pipeline.warehouse import SqlProfileSource

EXPORT_JOB = "sendgrid_export_job"
CONFIG_CHECK = "destinations_configured"  # exists only while a destination is left out

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class PipelineResources:
    """The resources the assets, checks and sensors use, under the keys they require."""

    sendgrid: SendGridResource
    sync_state: SyncStateResource
    io_manager: DestinationParquetIOManager
    profile_source: ProfileSource  # files, a SQL warehouse or a Delta table
    # Where the rejected-rows reports go (None: beside the step outputs, ReportStore.beside)
    reports: ReportStore | None = None
    # Where the request sensor reads request files on an object store (None: <data dir>/requests)
    requests: StorageLocation | None = None
    # Where erasure request files are read (None: <data dir>/erasures)
    erasures_dir: Path | None = None
    # Where erasure request files are read on an object store (None: erasures_dir)
    erasure_requests: StorageLocation | None = None
    # How the export job runs its steps (settings.EXECUTORS); not a resource, but deployment
    # wiring like them. A run's config still configures it (execution: config: ...).
    executor: str = DEFAULT_EXECUTOR

    def as_dict(self) -> dict[str, dg.ConfigurableResource | dg.ConfigurableIOManager]:
        return {
            "io_manager": self.io_manager,
            "report_store": self.reports or ReportStore.beside(self.io_manager),
            "profile_source": self.profile_source,
            "sendgrid": self.sendgrid,
            "sync_state": self.sync_state,
        }


def default_resources(settings: Settings, config: PipelineConfig) -> PipelineResources:
    """The deployed resources: SendGrid with the key as a dg.EnvVar, the directories given."""
    return PipelineResources(
        sendgrid=deployed_sendgrid_resource(settings),
        sync_state=SyncStateResource(
            directory=str(settings.state_dir),
            # resolved when a run starts and never shown: the URL holds a password
            dsn=dg.EnvVar(settings.state_dsn_env) if settings.state_dsn_env else None,
        ),
        io_manager=DestinationParquetIOManager(
            base_dir=settings.storage_dir,
            environment=environment_resource(settings.storage_environment),
        ),
        # the default layout keeps the reports in <data dir>/reports; any other storage base
        # (a directory of its own, an object store) holds them under <base>/reports
        reports=ReportStore(
            base_dir=str(settings.data_dir)
            if settings.storage_is_default
            else settings.storage_dir,
            environment=environment_resource(settings.storage_environment),
        ),
        profile_source=configured_profile_source(config),
        executor=settings.executor,
        requests=_stored_requests(settings),
        erasure_requests=_stored_erasures(settings),
    )


def configured_profile_source(config: PipelineConfig) -> ProfileSource:
    """The source `<data dir>/profile_source.yaml` names; without it, <data dir>/profiles/.

    A database URI is a `dg.EnvVar` of the variable the file names: resolved where it is used
    (a run, the sensor, the load-time check), never stored or shown.
    """
    spec = config.profile_source
    if spec.kind == "sql":
        options = {
            key: getattr(spec, key)
            for key in ("table", "query", "updated_at_column", "engine", "connect_timeout")
            if getattr(spec, key) is not None
        }
        return SqlProfileSource(uri=dg.EnvVar(str(spec.uri_env)), **options)
    if spec.kind == "delta":
        return DeltaProfileSource(
            table_uri=spec.delta_location(config.data_dir), version=spec.version
        )
    return FileProfileSource(directory=str(config.profiles_dir))


def _stored_requests(settings: Settings) -> StorageLocation | None:
    """<storage base>/requests when the storage base is an object store."""
    base = StorageLocation(settings.storage_dir, environment=settings.storage_environment)
    return None if base.is_local else base.child("requests")


def _stored_erasures(settings: Settings) -> StorageLocation | None:
    """<storage base>/erasures when the storage base is an object store."""
    base = StorageLocation(settings.storage_dir, environment=settings.storage_environment)
    return None if base.is_local else base.child("erasures")


EXECUTOR_DEFS = {"in_process": dg.in_process_executor, "multiprocess": dg.multiprocess_executor}


def load_validated_config(
    directory: Path | str | None = None,
    *,
    skip_invalid_destinations: bool = False,
    profile_source: ProfileSource | None = None,
) -> PipelineConfig:
    """Load the config and, when the profiles can be reached, check rules and mappings
    against their columns (from `profile_source`, default: the configured source).

    Raises ConfigError with one line per error. With `skip_invalid_destinations`, a destination
    whose own configuration is invalid is left out instead and its errors are kept in
    `config.problems` (see config.load_config); the definitions built from it show them.
    Profiles that cannot be reached (no profile files yet; a warehouse that is down or whose
    URI variable is not set) leave the config unchecked, with a warning for a warehouse: the
    code location still loads, and the unified_profiles asset reports the problem when run.
    """
    config = load_config(directory, skip_invalid_destinations=skip_invalid_destinations)
    source = profile_source or configured_profile_source(config)
    schema = _profile_columns(source, config)
    if schema is None:
        return config
    label = source.label
    problems = config.profile_problems(schema, label)
    if problems:
        if isinstance(source, FileProfileSource):
            # A broken file can make the inferred types lie (a ragged CSV row reads as
            # text); name the file's own problem first when there is one.
            source.read(config.mapped_columns())
        config = config.without(problems, skip=skip_invalid_destinations)
        schema = _profile_columns(source, config)  # fewer mapped columns read as text
        if schema is None:
            return config
    config.validate_against_profiles(schema, label)
    return config


def _profile_columns(source: ProfileSource, config: PipelineConfig) -> pl.Schema | None:
    """The profiles' columns, or None when the source cannot be reached at load time."""
    try:
        return source.schema(config.mapped_columns())
    except ProfileDataError as error:
        if isinstance(source, FileProfileSource):
            return None  # no profiles yet: the unified_profiles asset reports it when run
        reason = str(error)  # names the source; a URI's password is masked
    except Exception as error:
        if isinstance(source, FileProfileSource):
            raise
        reason = f"{type(source).__name__}: {type(error).__name__}"  # the text may hold a URI
    log.warning(
        f"the configuration is not checked against the profile columns: {reason}. The code "
        "location loads anyway; the unified_profiles asset checks it when it runs"
    )
    return None


def skipped_note(config: PipelineConfig) -> str:
    """What the UI says while destinations are left out for an invalid configuration."""
    if not config.problems:
        return ""
    names = config.skipped_destinations
    left_out = (
        f"LEFT OUT (invalid configuration): {', '.join(names)}."
        if names
        else "Invalid configuration entries are ignored."
    )
    return (
        f"{left_out} Fix the files and reload the code location; the other destinations run "
        "as usual. " + " ".join(f"[{i}] {p.message}" for i, p in enumerate(config.problems, 1))
    )


def _config_problems_check(config: PipelineConfig) -> dg.AssetChecksDefinition:
    """Fails on every run while a destination is left out, so the asset shows it in red."""
    note = skipped_note(config)

    @dg.asset_check(
        asset=dg.AssetKey("sendgrid_contacts"),  # always has an output for the check to follow
        name=CONFIG_CHECK,
        description=note,
        blocking=False,
    )
    def destinations_configured() -> dg.AssetCheckResult:
        return dg.AssetCheckResult(
            passed=False,
            severity=dg.AssetCheckSeverity.ERROR,
            description=note,
            metadata={
                "skipped_destinations": dg.MetadataValue.text(
                    ", ".join(config.skipped_destinations) or "(none)"
                ),
                "errors": dg.MetadataValue.md("\n".join(f"- {p.message}" for p in config.problems)),
            },
        )

    return destinations_configured


def _create_requests_folder(config: PipelineConfig) -> None:
    """Create <data dir>/requests/, where export_request_sensor picks up request files."""
    try:
        config.requests_dir.mkdir(parents=True, exist_ok=True)
    except OSError as error:  # a read-only data directory still loads; the sensor says why
        log.warning(f"cannot create {config.requests_dir}: {error.strerror}")


def build_definitions(
    config: PipelineConfig,
    resources: PipelineResources,
    *,
    refresh_cron: str = DEFAULT_REFRESH_CRON,
    refresh_timezone: str = DEFAULT_REFRESH_TIMEZONE,
) -> dg.Definitions:
    """The assets, checks, export job, refresh schedule and sensors of `config`, wired to
    `resources`; the schedule runs on `refresh_cron` in `refresh_timezone`."""
    partitions = dg.StaticPartitionsDefinition(config.destination_names)
    executor = EXECUTOR_DEFS[resources.executor]
    keys = config.destination_names
    _create_requests_folder(config)
    note = skipped_note(config)
    for problem in config.problems:
        log.warning(f"configuration error, left out of the definitions: {problem.message}")
    with warnings.catch_warnings():  # backfill_policy and check specs are marked beta/preview
        warnings.simplefilter("ignore", dg.BetaWarning)
        warnings.simplefilter("ignore", dg.PreviewWarning)
        assets = [
            build_profiles_asset(config, partitions),  # partitioned: one run holds every asset
            build_segments_asset(config, partitions),
            build_contacts_asset(config, partitions),
            build_sync_asset(config, partitions),
            build_unsubscribes_asset(config),  # its own job: not upstream of the sync
            # its own job and sensor: not upstream of the sync
            build_erasures_asset(config, resources.erasures_dir, resources.erasure_requests),
        ]
        checks = [_config_problems_check(config)] if config.problems else []
    export_job = dg.define_asset_job(
        EXPORT_JOB,
        selection=dg.AssetSelection.groups(GROUP),
        partitions_def=partitions,
        executor_def=executor,
        description=(f"{note}\n\n" if note else "")
        + "Exports the selected destinations (partitions) end to end: profiles, "
        "segments, contacts, and the list sync.",
    )
    schedule = build_refresh_schedule(
        export_job, keys, note=note, cron=refresh_cron, timezone=refresh_timezone
    )
    unsubscribes_job, unsubscribes_schedule = build_unsubscribes_job_and_schedule(executor)
    if resources.erasure_requests is None or resources.erasure_requests.is_local:
        create_erasures_folder(resources.erasures_dir or config.erasures_dir)
    erasure_job = build_erasure_job(executor)
    return dg.Definitions(
        assets=assets,
        asset_checks=checks,
        jobs=[export_job, unsubscribes_job, erasure_job],
        schedules=[schedule, unsubscribes_schedule],
        sensors=[
            build_profile_change_sensor(export_job, keys),
            build_export_request_sensor(export_job, config, resources.requests),
            build_erasure_sensor(
                erasure_job, config, resources.erasures_dir, resources.erasure_requests
            ),
        ],
        resources=resources.as_dict(),
        executor=executor,
    )
