"""Builds the Definitions for one validated configuration (tests build their own)."""

from __future__ import annotations

import os
import warnings
from pathlib import Path

import dagster as dg

from sendgrid_pipeline.assets.common import GROUP
from sendgrid_pipeline.assets.contacts import build_contacts_asset
from sendgrid_pipeline.assets.profiles import build_profiles_asset
from sendgrid_pipeline.assets.segments import build_segments_asset
from sendgrid_pipeline.assets.sync import build_sync_asset
from sendgrid_pipeline.config import PipelineConfig, load_config
from sendgrid_pipeline.errors import ConfigError, ProfileDataError
from sendgrid_pipeline.io_manager import PolarsParquetIOManager
from sendgrid_pipeline.profile_source import FileProfileSource
from sendgrid_pipeline.schedules import build_refresh_schedule
from sendgrid_pipeline.sendgrid.resource import sendgrid_resource_from_env
from sendgrid_pipeline.sensors import build_export_request_sensor, build_profile_change_sensor
from sendgrid_pipeline.state import SyncStateResource

EXPORT_JOB = "sendgrid_export_job"
STORAGE_DIR_ENV = "SENDGRID_PIPELINE_STORAGE_DIR"


def load_validated_config(directory: Path | str | None = None) -> PipelineConfig:
    """Load the config and, when profile files exist, check rules and mappings against them."""
    config = load_config(directory)
    source = FileProfileSource(directory=str(config.profiles_dir))
    try:
        schema = source.schema(config.mapped_columns())
    except ProfileDataError:
        return config  # no profiles yet: the unified_profiles asset reports it when run
    try:
        config.validate_against_profiles(schema, str(config.profiles_dir))
    except ConfigError:
        # A broken file can make the inferred types lie (a ragged CSV row reads as text);
        # name the file's own problem first when there is one.
        source.read(config.mapped_columns())
        raise
    return config


def build_definitions(config: PipelineConfig) -> dg.Definitions:
    partitions = dg.StaticPartitionsDefinition(config.destination_names)
    keys = config.destination_names
    with warnings.catch_warnings():  # backfill_policy and check specs are marked beta/preview
        warnings.simplefilter("ignore", dg.BetaWarning)
        warnings.simplefilter("ignore", dg.PreviewWarning)
        assets = [
            build_profiles_asset(config),
            build_segments_asset(config),
            build_contacts_asset(config, partitions),
            build_sync_asset(config, partitions),
        ]
    export_job = dg.define_asset_job(
        EXPORT_JOB,
        selection=dg.AssetSelection.groups(GROUP),
        partitions_def=partitions,
        executor_def=dg.in_process_executor,
        description="Exports the selected destinations (partitions) end to end: profiles, "
        "segments, contacts, and the list sync.",
    )
    storage = os.environ.get(STORAGE_DIR_ENV) or str(config.data_dir / "storage")
    return dg.Definitions(
        assets=assets,
        jobs=[export_job],
        schedules=[build_refresh_schedule(export_job, keys)],
        sensors=[
            build_profile_change_sensor(export_job, keys),
            build_export_request_sensor(export_job, config),
        ],
        resources={
            "io_manager": PolarsParquetIOManager(base_dir=storage),
            "profile_source": FileProfileSource(directory=str(config.profiles_dir)),
            "sendgrid": sendgrid_resource_from_env(),
            "sync_state": SyncStateResource(),
        },
        executor=dg.in_process_executor,
    )
