"""Sensors: refresh when the profiles change, and export on requests dropped in a folder."""

import contextlib
import hashlib
import json
import os
import re
import stat
import unicodedata
import uuid
from collections.abc import Collection, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path, PurePosixPath
from typing import Any

import dagster as dg

from sendgrid_pipeline.assets.common import PER_DESTINATION, SHARED_ROOTS
from sendgrid_pipeline.config import PipelineConfig
from sendgrid_pipeline.errors import ProfileDataError
from sendgrid_pipeline.object_storage import (
    ObjectNotFoundError,
    ObjectStorageError,
    StorageLocation,
)
from sendgrid_pipeline.profile_source import ProfileSource
from sendgrid_pipeline.schedules import RANGE_END_TAG, RANGE_START_TAG, AssetJob, refresh_all_tags

REQUEST_FILE_TAG = "sendgrid/request_file"  # "<file name>:<drop id>", on every run of one drop
REQUEST_PART_TAG = "sendgrid/request_part"  # which of the drop's runs: "all", a key, "a..b"
REQUESTED_BY_TAG = "sendgrid/requested_by"
# On a later run of a drop that reuses the profiles and segments its first run computed.
PROFILES_FROM_TAG = "sendgrid/profiles_from_run"

# Every input a request file can make the sensor spend is bounded.
MAX_REQUEST_BYTES = 64 * 1024
MAX_JSON_DEPTH = 8  # a request needs 2 ({"destinations": [...]}); json recursion is far deeper
MAX_REQUESTED_BY_CHARS = 200
MAX_DESTINATIONS = 100  # entries in "destinations" (or the number configured, when larger)
MAX_FILES_PER_TICK = 100  # the rest wait for the next tick, in name order
REQUEST_KEYS = ("destinations", "requested_by")
REQUEST_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,94}\.json")  # whole name
PLAIN_TEXT = re.compile(r"[A-Za-z0-9_.-]{1,60}")  # whole text
ARCHIVE_DIR = "archive"
REJECTED_DIR = "rejected"


def build_profile_change_sensor(job: AssetJob, partition_keys: list[str]) -> dg.SensorDefinition:
    @dg.sensor(
        name="profile_source_changed_sensor",
        job=job,
        minimum_interval_seconds=60,
        default_status=dg.DefaultSensorStatus.RUNNING,
        description="Requests a refresh of every destination when the profiles change: a "
        "profile file added, removed or rewritten; a warehouse table's rows inserted, deleted "
        "or updated; a commit to a Delta table. The first tick records a baseline.",
    )
    def profile_source_changed_sensor(
        context: dg.SensorEvaluationContext, profile_source: ProfileSource
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
            return dg.SkipReason("profiles unchanged")
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


# -- export requests -------------------------------------------------------------------------------
class RequestRejected(Exception):
    """The file is not an acceptable request; the message names the file and the reason."""


class _NotSettled(Exception):
    """The file changed or vanished while being read: look again on the next tick."""


@dataclass(frozen=True)
class ExportRequest:
    """One drop of a request file: its destinations (in definition order) and who asked."""

    name: str
    drop_id: str
    destinations: list[str]
    requested_by: str

    @property
    def request_tag(self) -> str:
        return f"{self.name}:{self.drop_id}"


@dataclass(frozen=True)
class RequestPart:
    """One run of a request: a contiguous range of destinations."""

    part: str  # "all", a single destination, or "<first>..<last>"
    keys: list[str]

    def run_request(
        self, request: ExportRequest, profiles_from: str | None = None
    ) -> dg.RunRequest:
        """The part's run: every asset, or with `profiles_from` (the run id of the drop's first
        run, which computed them) only the per-destination assets, the roots loaded as stored."""
        tags = {
            REQUEST_FILE_TAG: request.request_tag,
            REQUEST_PART_TAG: self.part,
            REQUESTED_BY_TAG: request.requested_by,
        }
        selection = None
        if profiles_from is not None:
            tags[PROFILES_FROM_TAG] = profiles_from
            selection = list(PER_DESTINATION)
        run_key = f"{request.request_tag}:{self.part}"
        if len(self.keys) == 1:
            return dg.RunRequest(
                run_key=run_key, partition_key=self.keys[0], tags=tags, asset_selection=selection
            )
        range_tags = {RANGE_START_TAG: self.keys[0], RANGE_END_TAG: self.keys[-1]}
        return dg.RunRequest(
            run_key=run_key, tags={**tags, **range_tags}, asset_selection=selection
        )


def contiguous_ranges(wanted: Collection[str], order: Sequence[str]) -> list[list[str]]:
    """The wanted keys as maximal runs of neighbours in `order` (the partitions' order)."""
    ranges: list[list[str]] = []
    current: list[str] = []
    for key in order:
        if key in wanted:
            current.append(key)
        elif current:
            ranges.append(current)
            current = []
    if current:
        ranges.append(current)
    return ranges


def request_parts(destinations: Collection[str], order: Sequence[str]) -> list[RequestPart]:
    """As few runs as a run can express: one per contiguous range of requested destinations.

    A run selects its partitions with a single key or a start/end range (Dagster 1.13 reads a
    run's partitions from those tags only), so a set with gaps needs one run per range; a
    covering range would sync destinations nobody asked for. The first range's run reads the
    profiles; the others reuse them (see _handle_request_file).
    """
    parts = []
    for keys in contiguous_ranges(destinations, order):
        if keys == list(order) and len(keys) > 1:
            parts.append(RequestPart("all", keys))
        elif len(keys) == 1:
            parts.append(RequestPart(keys[0], keys))
        else:
            parts.append(RequestPart(f"{keys[0]}..{keys[-1]}", keys))
    return parts


def _shown(value: object, limit: int = 60) -> str:
    """User-supplied text, safe to log and to write in a note: short and ASCII."""
    text = value if isinstance(value, str) else type(value).__name__
    if PLAIN_TEXT.fullmatch(text):
        return text
    shown = ascii(text)
    return shown if len(shown) <= limit else f"{shown[: limit - 4]}...'"


def _safe_stem(name: str) -> str:
    stem = name[: -len(".json")] if name.endswith(".json") else name
    return re.sub(r"[^A-Za-z0-9_-]", "_", stem)[:60] or "request"


def read_bounded(fd: int, limit: int) -> bytes:
    """At most limit + 1 bytes from fd: one byte more than allowed tells that it is too big."""
    chunks: list[bytes] = []
    total = 0
    while total <= limit:
        chunk = os.read(fd, min(64 * 1024, limit + 1 - total))
        if not chunk:
            break
        chunks.append(chunk)
        total += len(chunk)
    return b"".join(chunks)


def _read_file(folder: Path, name: str) -> tuple[bytes, os.stat_result]:
    """The bytes of a regular file in folder, never following a link, never reading too much."""
    path = folder / name
    try:
        before = os.lstat(path)
    except FileNotFoundError:
        raise _NotSettled(f"{name}: gone before it was read") from None
    if stat.S_ISLNK(before.st_mode):
        raise RequestRejected(f"{name}: a symbolic link, not a file (links are never followed)")
    if not stat.S_ISREG(before.st_mode):
        raise RequestRejected(f"{name}: not a regular file")
    if before.st_size > MAX_REQUEST_BYTES:
        raise RequestRejected(
            f"{name}: {before.st_size} bytes, over the limit of {MAX_REQUEST_BYTES} bytes"
        )
    flags = os.O_RDONLY | getattr(os, "O_NOFOLLOW", 0) | getattr(os, "O_NONBLOCK", 0)
    try:
        fd = os.open(path, flags | getattr(os, "O_CLOEXEC", 0))
    except FileNotFoundError:
        raise _NotSettled(f"{name}: gone before it was read") from None
    except OSError as error:
        raise RequestRejected(f"{name}: cannot be opened: {error.strerror}") from None
    try:
        opened = os.fstat(fd)
        if (opened.st_dev, opened.st_ino) != (before.st_dev, before.st_ino):
            raise _NotSettled(f"{name}: replaced while being read")
        if not stat.S_ISREG(opened.st_mode):  # pragma: no cover - same inode as checked
            raise RequestRejected(f"{name}: not a regular file")
        try:
            raw = read_bounded(fd, MAX_REQUEST_BYTES)
        except OSError as error:
            raise RequestRejected(f"{name}: cannot be read: {error.strerror}") from None
        after = os.fstat(fd)
    finally:
        os.close(fd)
    if len(raw) > MAX_REQUEST_BYTES:
        raise RequestRejected(f"{name}: over the limit of {MAX_REQUEST_BYTES} bytes")
    if (after.st_size, after.st_mtime_ns) != (opened.st_size, opened.st_mtime_ns):
        raise _NotSettled(f"{name}: still being written")
    return raw, after


def _nesting_exceeds(text: str, limit: int) -> bool:
    """Whether arrays and objects nest deeper than limit (strings skipped), before parsing."""
    depth = 0
    in_string = escaped = False
    for char in text:
        if in_string:
            if escaped:
                escaped = False
            elif char == "\\":
                escaped = True
            elif char == '"':
                in_string = False
        elif char == '"':
            in_string = True
        elif char in "[{":
            depth += 1
            if depth > limit:
                return True
        elif char in "]}":
            depth -= 1
    return False


def _is_printable_text(text: str) -> bool:
    """No control, format, surrogate, private or unassigned characters (tags and logs)."""
    return not any(unicodedata.category(char).startswith("C") for char in text)


def _parse_body(name: str, raw: bytes) -> dict[str, Any]:
    try:
        text = raw.decode("utf-8-sig")
    except UnicodeDecodeError:
        raise RequestRejected(f"{name}: not a JSON file: not UTF-8 text") from None
    if _nesting_exceeds(text, MAX_JSON_DEPTH):
        raise RequestRejected(f"{name}: JSON nested deeper than {MAX_JSON_DEPTH} levels")

    def unique_keys(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
        keys = [key for key, _ in pairs]
        duplicates = sorted({key for key in keys if keys.count(key) > 1})
        if duplicates:
            raise RequestRejected(f"{name}: duplicate key {_shown(duplicates[0])}")
        return dict(pairs)

    def no_constant(constant: str) -> None:
        raise RequestRejected(f"{name}: not a JSON file: {constant} is not JSON")

    try:
        body = json.loads(text, object_pairs_hook=unique_keys, parse_constant=no_constant)
    except (ValueError, RecursionError) as error:
        raise RequestRejected(f"{name}: not a JSON file: {error}") from None
    if not isinstance(body, dict):
        raise RequestRejected(f"{name}: expected a JSON object")
    return body


def _validate(name: str, body: dict[str, Any], config: PipelineConfig) -> tuple[list[str], str]:
    """(destinations in definition order, requested_by), or RequestRejected naming the problem."""
    unknown_keys = sorted(set(body) - set(REQUEST_KEYS))
    if unknown_keys:
        shown = ", ".join(_shown(key) for key in unknown_keys[:5])
        raise RequestRejected(
            f"{name}: unknown key(s) {shown}; a request holds only "
            f"{' and '.join(repr(k) for k in REQUEST_KEYS)}"
        )
    requested_by = body.get("requested_by")
    if isinstance(requested_by, str):
        requested_by = requested_by.strip()
    if requested_by is None or requested_by == "":
        raise RequestRejected(f"{name}: 'requested_by' is required (who asked for the export)")
    if not isinstance(requested_by, str):
        raise RequestRejected(f"{name}: 'requested_by' must be a string")
    if len(requested_by) > MAX_REQUESTED_BY_CHARS:
        raise RequestRejected(
            f"{name}: 'requested_by' has {len(requested_by)} characters, more than "
            f"{MAX_REQUESTED_BY_CHARS}"
        )
    if not _is_printable_text(requested_by):
        raise RequestRejected(f"{name}: 'requested_by' holds control or invisible characters")

    configured = config.destination_names
    wanted = body.get("destinations", "all")
    if wanted == "all":
        return list(configured), requested_by
    if not isinstance(wanted, list) or not wanted or not all(isinstance(d, str) for d in wanted):
        raise RequestRejected(f"{name}: 'destinations' must be \"all\" or a list of names")
    most = max(MAX_DESTINATIONS, len(configured))
    if len(wanted) > most:
        raise RequestRejected(f"{name}: 'destinations' lists {len(wanted)} names, more than {most}")
    unknown = sorted(set(wanted) - set(configured))
    if unknown:
        shown = ", ".join(_shown(d) for d in unknown[:10])
        more = f" and {len(unknown) - 10} more" if len(unknown) > 10 else ""
        raise RequestRejected(
            f"{name}: unknown destination(s) {shown}{more}; configured: {', '.join(configured)}"
        )
    return [d for d in configured if d in wanted], requested_by


def read_request(folder: Path, name: str, config: PipelineConfig) -> ExportRequest:
    """The request one file holds, or RequestRejected (or _NotSettled: try again next tick).

    A drop's identity is its name, inode, modification time and content: stable across ticks
    and restarts while the file waits, and new when the same file is dropped again (the earlier
    drop keeps its inode in archive/) or rewritten.
    """
    if not REQUEST_NAME.fullmatch(name):
        raise RequestRejected(
            f"{_shown(name)}: a request file name uses only letters, digits, '.', '_' and '-', "
            "starts with a letter or digit, ends in .json, and has at most 100 characters"
        )
    raw, status = _read_file(folder, name)
    return _request_from(name, raw, (str(status.st_ino), str(status.st_mtime_ns)), config)


def _request_from(
    name: str, raw: bytes, drop: tuple[str, ...], config: PipelineConfig
) -> ExportRequest:
    """Validate a request body; `drop` (with the name and the bytes) identifies this drop."""
    try:
        destinations, requested_by = _validate(name, _parse_body(name, raw), config)
    except RequestRejected:
        raise
    except Exception as error:  # anything else a hostile body provokes is still the file's
        kind = type(error).__name__
        raise RequestRejected(f"{name}: cannot be read as a request ({kind})") from None
    identity = hashlib.sha256()
    for part in (name, *drop):
        identity.update(part.encode() + b"\0")
    identity.update(raw)
    return ExportRequest(name, identity.hexdigest()[:16], destinations, requested_by)


def _plain_subfolder(folder: Path, name: str) -> Path:
    """folder/name as a real directory (created when missing); a link or a file is refused."""
    path = folder / name
    with contextlib.suppress(FileExistsError):
        path.mkdir()
    if not stat.S_ISDIR(os.lstat(path).st_mode):
        raise NotADirectoryError(f"{folder.name}/{name} is not a plain directory")
    return path


def move_aside(folder: Path, name: str, subfolder: str, note: dict) -> Path:
    """Move folder/name (a link itself, never its target) into subfolder under a unique name,
    beside a <same name>.result.json note. Returns the moved file's new path."""
    target = _plain_subfolder(folder, subfolder)
    stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%SZ")
    while True:
        base = f"{_safe_stem(name)}.{stamp}-{uuid.uuid4().hex[:12]}"
        moved = target / f"{base}.json"
        if not os.path.lexists(moved) and not os.path.lexists(target / f"{base}.result.json"):
            break
    os.rename(folder / name, moved)  # rename acts on a link itself and never overwrites here
    with open(target / f"{base}.result.json", "x", encoding="utf-8") as handle:
        json.dump(note, handle, indent=2)
    return moved


def _request_names(folder: Path) -> list[str]:
    """Candidate request files, in name order; hidden files and other suffixes are ignored
    (write elsewhere or as <name>.json.tmp, then rename into place)."""
    if not folder.is_dir():
        return []
    with os.scandir(folder) as entries:
        names = sorted(e.name for e in entries if e.name.endswith(".json"))
    return [n for n in names if not n.startswith(".")][:MAX_FILES_PER_TICK]


class _LocalRequests:
    """Request files in a local folder: links never followed, reads bounded, moves atomic."""

    def __init__(self, folder: Path) -> None:
        self.folder = folder
        self.where = str(folder)

    def names(self) -> list[str]:
        return _request_names(self.folder)

    def read(self, name: str, config: PipelineConfig) -> ExportRequest:
        return read_request(self.folder, name, config)

    def move_aside(self, name: str, subfolder: str, note: dict) -> str:
        return move_aside(self.folder, name, subfolder, note).name


class _StoredRequests:
    """Request objects under `<storage base>/requests` on an object store.

    The same checks as a local folder where they apply (name, size, JSON); an object has no
    links. A drop's identity is its name, version (ETag), modification time and content; moving
    aside is a copy then a delete, with the .result.json note written first.
    """

    def __init__(self, location: StorageLocation) -> None:
        self.location = location
        self.where = location.url

    def names(self) -> list[str]:
        try:
            listed = self.location.list()
        except ObjectStorageError as error:
            raise OSError(str(error)) from None
        names = sorted(p for p in listed if "/" not in p and p.endswith(".json"))
        return names[:MAX_FILES_PER_TICK]

    def read(self, name: str, config: PipelineConfig) -> ExportRequest:
        if not REQUEST_NAME.fullmatch(name):
            raise RequestRejected(
                f"{_shown(name)}: a request file name uses only letters, digits, '.', '_' and "
                "'-', starts with a letter or digit, ends in .json, and has at most 100 "
                "characters"
            )
        try:
            before = self.location.info(name)
            if before.size > MAX_REQUEST_BYTES:
                raise RequestRejected(
                    f"{name}: {before.size} bytes, over the limit of {MAX_REQUEST_BYTES} bytes"
                )
            raw = self.location.read_bytes(name, max_bytes=MAX_REQUEST_BYTES)
            after = self.location.info(name)
        except ObjectNotFoundError:
            raise _NotSettled(f"{name}: gone before it was read") from None
        except ObjectStorageError as error:
            if f"larger than {MAX_REQUEST_BYTES} bytes" in str(error):
                raise RequestRejected(
                    f"{name}: over the limit of {MAX_REQUEST_BYTES} bytes"
                ) from None
            raise
        if after.version != before.version:
            raise _NotSettled(f"{name}: replaced while being read")
        # the ETag alone is the content's hash on S3: the time tells a re-drop of the same file
        return _request_from(name, raw, (after.version, after.last_modified.isoformat()), config)

    def move_aside(self, name: str, subfolder: str, note: dict) -> str:
        return move_object_aside(self.location, name, subfolder, note)


def move_object_aside(location: StorageLocation, name: str, subfolder: str, note: dict) -> str:
    """Move the object `name` into `subfolder` under a unique stamped name keeping its suffix
    (.json, .csv), the <same name>.result.json note written first (an object store moves by
    copy then delete). Returns the moved object's name. Used for request and erasure files."""
    suffix = PurePosixPath(name).suffix
    stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%SZ")
    base = f"{_safe_stem(PurePosixPath(name).stem)}.{stamp}-{uuid.uuid4().hex[:12]}"
    location.write_bytes(
        f"{subfolder}/{base}.result.json", json.dumps(note, indent=2).encode("utf-8")
    )
    location.rename(name, f"{subfolder}/{base}{suffix}")
    return f"{base}{suffix}"


def _handle_request_file(
    context: dg.SensorEvaluationContext,
    requests: "_LocalRequests | _StoredRequests",
    name: str,
    config: PipelineConfig,
) -> list[dg.RunRequest]:
    try:
        request = requests.read(name, config)
    except _NotSettled as reason:
        context.log.info(f"{reason}; looking again next tick")
        return []
    except RequestRejected as error:
        context.log.warning(str(error))
        if not REQUEST_NAME.fullmatch(name) and isinstance(requests, _StoredRequests):
            return []  # an object named so cannot be moved by name: it stays, logged each tick
        moved = requests.move_aside(name, REJECTED_DIR, {"error": str(error)})
        context.log.info(f"{_shown(name)} moved to {REJECTED_DIR}/{moved}")
        return []
    parts = request_parts(request.destinations, config.destination_names)
    runs = context.instance.get_runs(
        filters=dg.RunsFilter(tags={REQUEST_FILE_TAG: request.request_tag})
    )
    by_part = {run.tags.get(REQUEST_PART_TAG): run for run in runs}
    missing = [part for part in parts if part.part not in by_part]
    if missing:  # the run keys make each of them happen once, however many ticks ask
        return _next_runs(context, request, parts, missing, by_part)
    note = {
        "requested_by": request.requested_by,
        "destinations": request.destinations,
        "run_ids": sorted(run.run_id for run in runs),
    }
    moved = requests.move_aside(name, ARCHIVE_DIR, note)
    context.log.info(f"{name}: runs {', '.join(note['run_ids'])}; archived as {moved}")
    return []


def _next_runs(
    context: dg.SensorEvaluationContext,
    request: ExportRequest,
    parts: list[RequestPart],
    missing: list[RequestPart],
    by_part: dict[str | None, dg.DagsterRun],
) -> list[dg.RunRequest]:
    """The drop's runs still to launch: the profiles are read once per drop.

    The first part's run computes every asset. Only once it has finished do the other parts
    (destinations not adjacent to the first ones) run, each over the per-destination assets
    only, loading the profiles and segments that first run stored. Should that run have failed
    before storing them, the other parts compute them themselves.
    """
    first = parts[0]
    if first in missing:
        return [first.run_request(request)]
    first_run = by_part[first.part]
    if not first_run.is_finished:
        context.log.info(
            f"{request.name}: waiting for run {first_run.run_id} ({first.part}) to read the "
            "profiles before the other destinations run"
        )
        return []
    stored = {
        record.asset_materialization.asset_key
        for record in context.instance.all_logs(
            first_run.run_id, of_type=dg.DagsterEventType.ASSET_MATERIALIZATION
        )
        if record.asset_materialization is not None
    }
    profiles_from = first_run.run_id if set(SHARED_ROOTS) <= stored else None
    return [part.run_request(request, profiles_from) for part in missing]


def build_export_request_sensor(
    job: AssetJob, config: PipelineConfig, requests: StorageLocation | None = None
) -> dg.SensorDefinition:
    """The request sensor over `<data dir>/requests/`, or over `requests` (the storage base's
    requests/ prefix) when that is on an object store (a local base keeps the data directory's
    folder, read with the local safeguards)."""
    source: _LocalRequests | _StoredRequests
    if requests is None or requests.is_local:
        source = _LocalRequests(config.requests_dir)
    else:
        source = _StoredRequests(requests)

    @dg.sensor(
        name="export_request_sensor",
        job=job,
        minimum_interval_seconds=30,
        default_status=dg.DefaultSensorStatus.RUNNING,
        description="On-demand export from outside the UI: drop a JSON file such as "
        '{"destinations": ["newsletter_eu"], "requested_by": "jane"} (or "all") into the data '
        "directory's requests/ folder (or the storage base's requests/ prefix on an object "
        "store). Each drop becomes runs exactly once (run keys): one run "
        "per contiguous range of the requested destinations, the profiles read once: the first "
        "run reads them, the others (launched when it has finished) reuse them; the tick after "
        "the last launch archives it under "
        "requests/archive/ with the run ids. A bad file (not a regular file, over 64 KiB, not "
        "the expected JSON) moves to requests/rejected/ with the reason.",
    )
    def export_request_sensor(context: dg.SensorEvaluationContext) -> dg.SensorResult:
        try:
            names = source.names()
        except OSError as error:
            reason = error.strerror or str(error)
            return dg.SensorResult(skip_reason=f"cannot list {source.where}: {reason}")
        run_requests: list[dg.RunRequest] = []
        for name in names:
            try:
                run_requests.extend(_handle_request_file(context, source, name, config))
            except Exception as error:  # one file never stops the others; it is retried
                context.log.error(
                    f"{_shown(name)}: left in place, retried next tick: "
                    f"{type(error).__name__}: {_shown(str(error), 300)}"
                )
        return dg.SensorResult(run_requests=run_requests)

    return export_request_sensor
