"""Helpers the tests share: the pipeline wired explicitly, run in process, and what happened.

Nothing here reads or sets an environment variable: the tests pass the sandbox's URL and key,
and directories inside their private data copy, to the resources themselves.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING

import dagster as dg

from sendgrid_pipeline.io_manager import (
    DestinationParquetIOManager,
    ReportStore,
    environment_resource,
)
from sendgrid_pipeline.pipeline import (
    EXPORT_JOB,
    PipelineResources,
    build_definitions,
    load_validated_config,
)
from sendgrid_pipeline.profile_source import FileProfileSource
from sendgrid_pipeline.schedules import refresh_all_tags
from sendgrid_pipeline.sendgrid.resource import SendGridResource
from sendgrid_pipeline.state import SyncStateResource

if TYPE_CHECKING:
    from sendgrid_pipeline_tests.devkit.sandbox import SandboxServer

# Without a sandbox, SendGrid is an address where nothing listens (tests that never sync).
NO_SENDGRID_URL = "http://127.0.0.1:9"
NO_SENDGRID_KEY = "SG.test-key-for-tests-without-a-sandbox"
POLL_SECONDS = 0.02


def resources_for(
    data_dir: Path, sandbox: SandboxServer | None = None, *, api_key: str | None = None
) -> PipelineResources:
    """State and step outputs inside `data_dir`; SendGrid: the sandbox, with its key (or
    `api_key`)."""
    return PipelineResources(
        sendgrid=SendGridResource(
            base_url=sandbox.base_url if sandbox else NO_SENDGRID_URL,
            api_key=api_key or (sandbox.api_key if sandbox else NO_SENDGRID_KEY),
            poll_interval_seconds=POLL_SECONDS,
        ),
        sync_state=SyncStateResource(directory=str(data_dir / "state")),
        io_manager=DestinationParquetIOManager(base_dir=str(data_dir / "storage")),
        profile_source=FileProfileSource(directory=str(data_dir / "profiles")),
    )


def resources_on_storage(
    data_dir: Path,
    sandbox: SandboxServer | None,
    base: str,
    *,
    storage_options: Mapping[str, str] | None = None,
    environment: Mapping[str, str] | None = None,
) -> PipelineResources:
    """`resources_for(...)` with the step outputs and reports on another storage base (a
    directory, a file:// URL or an object store), as a deployment wires them."""
    wired = resources_for(data_dir, sandbox)
    options = dict(storage_options or {})
    return dataclasses.replace(
        wired,
        io_manager=DestinationParquetIOManager(
            base_dir=base,
            storage_options=options,
            environment=environment_resource(environment or {}),
        ),
        reports=ReportStore(
            base_dir=base,
            storage_options=options,
            environment=environment_resource(environment or {}),
        ),
    )


def definitions(
    data_dir: Path,
    sandbox: SandboxServer | None = None,
    *,
    resources: PipelineResources | None = None,
    **options: str,
) -> dg.Definitions:
    """The definitions of `data_dir`'s configuration (strictly validated), wired for tests."""
    config = load_validated_config(data_dir)
    return build_definitions(config, resources or resources_for(data_dir, sandbox), **options)


def export(
    data_dir: Path,
    sandbox: SandboxServer,
    partitions: list[str] | None = None,
    tags: dict[str, str] | None = None,
    instance: dg.DagsterInstance | None = None,
    selection: list[str] | None = None,
    resources: PipelineResources | None = None,
) -> dg.ExecuteInProcessResult:
    """Run the export job in process over some (default: all) destinations, in one run."""
    config = load_validated_config(data_dir)
    keys = partitions or config.destination_names
    wired = resources or resources_for(data_dir, sandbox)
    job = build_definitions(config, wired).resolve_job_def(EXPORT_JOB)
    return job.execute_in_process(
        instance=instance or dg.DagsterInstance.ephemeral(),
        tags={**refresh_all_tags(keys), **(tags or {})},
        asset_selection=[dg.AssetKey(a) for a in selection] if selection else None,
        raise_on_error=False,
    )


def step_failure_messages(result: dg.ExecuteInProcessResult) -> str:
    """Every step failure's message with its causes, as the UI shows them."""
    messages = []
    for event in result.all_events:
        if event.event_type_value == "STEP_FAILURE":
            error = event.event_specific_data.error
            while error is not None:
                messages.append(error.message)
                error = error.cause
    return "\n".join(messages)
