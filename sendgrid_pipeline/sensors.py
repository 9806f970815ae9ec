"""Sensors: refresh when the profiles change, and export on requests dropped in a folder."""

import hashlib
import json
import shutil
from datetime import UTC, datetime
from pathlib import Path

import dagster as dg

from sendgrid_pipeline.config import PipelineConfig
from sendgrid_pipeline.errors import ProfileDataError
from sendgrid_pipeline.profile_source import FileProfileSource
from sendgrid_pipeline.schedules import AssetJob, refresh_all_tags

REQUEST_FILE_TAG = "sendgrid/request_file"
REQUESTED_BY_TAG = "sendgrid/requested_by"


def build_profile_change_sensor(job: AssetJob, partition_keys: list[str]) -> dg.SensorDefinition:
    @dg.sensor(
        name="profile_source_changed_sensor",
        job=job,
        minimum_interval_seconds=60,
        description="Requests a refresh of every destination when a profile file under "
        "profiles/ is added, removed or rewritten. The first tick records a baseline.",
    )
    def profile_source_changed_sensor(
        context: dg.SensorEvaluationContext, profile_source: FileProfileSource
    ) -> dg.SensorResult | dg.SkipReason:
        try:
            fingerprint = profile_source.fingerprint()
        except ProfileDataError as error:
            return dg.SkipReason(str(error))
        if context.cursor is None:
            return dg.SensorResult(
                skip_reason=dg.SkipReason(f"baseline recorded ({fingerprint})"),
                cursor=fingerprint,
            )
        if context.cursor == fingerprint:
            return dg.SkipReason("profile files unchanged")
        return dg.SensorResult(
            run_requests=[
                dg.RunRequest(
                    run_key=f"profiles-{fingerprint}",
                    tags={**refresh_all_tags(partition_keys), "sendgrid/trigger": "profiles"},
                )
            ],
            cursor=fingerprint,
        )

    return profile_source_changed_sensor


def _parse_request(path: Path, config: PipelineConfig) -> tuple[list[str], str]:
    """(destinations, requested_by) from a request file, or ValueError naming the problem."""
    try:
        body = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError) as error:
        raise ValueError(f"{path.name}: not a JSON file: {error}") from None
    if not isinstance(body, dict):
        raise ValueError(f"{path.name}: expected a JSON object")
    wanted = body.get("destinations", "all")
    requested_by = str(body.get("requested_by") or "").strip()
    if not requested_by:
        raise ValueError(f"{path.name}: 'requested_by' is required (who asked for the export)")
    if wanted == "all":
        return list(config.destination_names), requested_by
    if not isinstance(wanted, list) or not wanted or not all(isinstance(d, str) for d in wanted):
        raise ValueError(f"{path.name}: 'destinations' must be \"all\" or a list of names")
    unknown = sorted(set(wanted) - set(config.destination_names))
    if unknown:
        raise ValueError(
            f"{path.name}: unknown destination(s) {', '.join(unknown)}; configured: "
            f"{', '.join(config.destination_names)}"
        )
    return [d for d in config.destination_names if d in wanted], requested_by


def _archive(path: Path, folder: str, note: dict) -> None:
    target = path.parent / folder
    target.mkdir(parents=True, exist_ok=True)
    stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%SZ")
    (target / f"{path.stem}.{stamp}.result.json").write_text(json.dumps(note, indent=2))
    shutil.move(str(path), target / f"{path.stem}.{stamp}{path.suffix}")


def build_export_request_sensor(job: AssetJob, config: PipelineConfig) -> dg.SensorDefinition:
    @dg.sensor(
        name="export_request_sensor",
        job=job,
        minimum_interval_seconds=30,
        description="On-demand export from outside the UI: drop a JSON file such as "
        '{"destinations": ["newsletter_eu"], "requested_by": "jane"} (or "all") into the data '
        "directory's requests/ folder. Each file becomes runs exactly once (run keys); the "
        "next tick archives it under requests/archive/ with the run ids.",
    )
    def export_request_sensor(context: dg.SensorEvaluationContext) -> dg.SensorResult:
        folder = config.requests_dir
        requests_: list[dg.RunRequest] = []
        for path in sorted(folder.glob("*.json")) if folder.is_dir() else []:
            try:
                destinations, requested_by = _parse_request(path, config)
            except ValueError as error:
                context.log.warning(str(error))
                _archive(path, "rejected", {"error": str(error)})
                continue
            digest = hashlib.sha256(path.read_bytes()).hexdigest()[:12]
            request_id = f"{path.name}:{digest}"
            runs = context.instance.get_runs(
                filters=dg.RunsFilter(tags={REQUEST_FILE_TAG: request_id})
            )
            if runs:  # launched on an earlier tick: archive with the run ids
                _archive(
                    path,
                    "archive",
                    {
                        "requested_by": requested_by,
                        "destinations": destinations,
                        "run_ids": sorted(r.run_id for r in runs),
                    },
                )
                continue
            tags = {REQUEST_FILE_TAG: request_id, REQUESTED_BY_TAG: requested_by[:200]}
            if destinations == list(config.destination_names):
                requests_.append(
                    dg.RunRequest(
                        run_key=f"{request_id}:all",
                        tags={**tags, **refresh_all_tags(destinations)},
                    )
                )
            else:
                requests_.extend(
                    dg.RunRequest(run_key=f"{request_id}:{d}", partition_key=d, tags=tags)
                    for d in destinations
                )
        return dg.SensorResult(run_requests=requests_)

    return export_request_sensor
