"""Destinations and segments configuration, validated when the definitions load.

A bad file fails fast, at load time, with an error that names the file, the destination or
segment, and the offending key or column, so nothing is ever sent on a broken configuration.
"""

from __future__ import annotations

import os
import re
from collections.abc import Mapping
from functools import cached_property
from pathlib import Path
from typing import Any, Literal

import polars as pl
import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from sendgrid_pipeline.errors import ConfigError

DATA_DIR_ENV = "SENDGRID_PIPELINE_DATA_DIR"
DEFAULT_DATA_DIR = Path(__file__).resolve().parents[1] / "data"
DEFAULT_PROFILE_CAP = 100_000
DESTINATION_NAME = re.compile(r"^[a-z][a-z0-9_]*$")
SEGMENT_ID = re.compile(r"^[a-z][a-z0-9_]*$")

# SendGrid reserved contact fields a destination may map, with SendGrid's maxLength (FACTS.md §1).
SENDGRID_FIELD_MAX_LENGTH: dict[str, int] = {
    "email": 254,
    "first_name": 50,
    "last_name": 50,
    "country": 50,
    "state_province_region": 50,
    "city": 60,
    "postal_code": 0,  # no documented limit
}


def data_dir() -> Path:
    """The data directory: `$SENDGRID_PIPELINE_DATA_DIR`, else the repository's data/."""
    return Path(os.environ.get(DATA_DIR_ENV) or DEFAULT_DATA_DIR).resolve()


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class FieldMapping(_Strict):
    """SendGrid contact field -> profile column. Only `email` is required."""

    email: str = Field(description="Profile column holding the email address (required).")
    first_name: str | None = None
    last_name: str | None = None
    country: str | None = None
    state_province_region: str | None = None
    city: str | None = None
    postal_code: str | None = None

    def as_dict(self) -> dict[str, str]:
        """Mapped fields only, email first, in a stable order."""
        return {field: column for field, column in self if column is not None}


class Destination(_Strict):
    """An export destination: one SendGrid contact list fed by one or more segments."""

    name: str = Field(description="Partition key: lowercase letters, digits and underscores.")
    display_name: str
    list_id: str = Field(description="The SendGrid contact list id (a uuid).")
    api_key_env: str = Field(
        default="SENDGRID_API_KEY", description="Env var that holds this destination's API key."
    )
    consent: bool = Field(
        default=False,
        description="Explicit 'I agree' to data privacy and compliance: data leaves the "
        "compliance boundary. Without it the sync refuses to send anything.",
    )
    field_mapping: FieldMapping
    segments: tuple[str, ...] = Field(min_length=1)
    profile_cap: int = Field(default=DEFAULT_PROFILE_CAP, gt=0)
    max_removal_share: float = Field(
        default=0.2,
        ge=0,
        le=1,
        description="Brake: refuse a sync that would remove more than this share of the list.",
    )
    allow_mass_removal: bool = Field(
        default=False, description="Override the brake for this destination (use with care)."
    )
    on_rejected_rows: Literal["warn", "fail"] = Field(
        default="warn",
        description="When SendGrid rejects some rows (an errored job or a 400 for one value): "
        "'warn' finishes the sync and reports them; 'fail' also fails the step afterwards.",
    )
    owns_list: bool = Field(
        default=False,
        description="The list is dedicated to this destination: contacts on it that are not "
        "in its segments are removed even if something else put them there.",
    )

    @field_validator("name")
    @classmethod
    def _name_is_a_partition_key(cls, value: str) -> str:
        if not DESTINATION_NAME.match(value):
            raise ValueError(
                f"{value!r} must be lowercase letters, digits and underscores, starting with a "
                "letter (it is the Dagster partition key)"
            )
        return value

    @field_validator("list_id")
    @classmethod
    def _list_id_is_an_id(cls, value: str) -> str:
        if not re.fullmatch(r"[A-Za-z0-9-]{1,64}", value):
            raise ValueError(f"{value!r} is not a SendGrid list id (expected a uuid)")
        return value


class Segment(_Strict):
    """A segment of unified profiles, defined by a SQL boolean expression over profile columns."""

    id: str
    name: str
    description: str = ""
    rule: str = Field(description="SQL boolean expression evaluated with polars (pl.sql_expr).")

    @field_validator("id")
    @classmethod
    def _id_is_simple(cls, value: str) -> str:
        if not SEGMENT_ID.match(value):
            raise ValueError(f"{value!r} must be lowercase letters, digits and underscores")
        return value

    @cached_property
    def expression(self) -> pl.Expr:
        return pl.sql_expr(self.rule)


class PipelineConfig(BaseModel):
    """The whole configuration of one data directory."""

    model_config = ConfigDict(frozen=True, arbitrary_types_allowed=True)

    data_dir: Path
    segments: tuple[Segment, ...]
    destinations: tuple[Destination, ...]

    @property
    def profiles_dir(self) -> Path:
        return self.data_dir / "profiles"

    @property
    def requests_dir(self) -> Path:
        return self.data_dir / "requests"

    @property
    def destination_names(self) -> list[str]:
        return [d.name for d in self.destinations]

    def destination(self, name: str) -> Destination:
        for destination in self.destinations:
            if destination.name == name:
                return destination
        raise ConfigError(
            f"Unknown destination {name!r}; configured: {', '.join(self.destination_names)}"
        )

    def segment(self, segment_id: str) -> Segment:
        for segment in self.segments:
            if segment.id == segment_id:
                return segment
        raise ConfigError(f"Unknown segment {segment_id!r}")

    def mapped_columns(self) -> set[str]:
        """Every profile column some destination maps (read as text, never inferred)."""
        return {col for d in self.destinations for col in d.field_mapping.as_dict().values()}

    def validate_against_profiles(self, schema: Mapping[str, pl.DataType], source: str) -> None:
        """Check every segment rule and every mapped column against the profile columns."""
        columns = set(schema)
        empty = pl.LazyFrame(schema=dict(schema))
        for segment in self.segments:
            try:
                empty.filter(segment.expression).collect()
            except pl.exceptions.PolarsError as error:
                raise ConfigError(
                    f"{self.data_dir / 'segments.yaml'}: segment {segment.id!r} rule "
                    f"{segment.rule!r} does not evaluate over the profiles in {source}: "
                    f"{_first_line(error)}. Profile columns: {', '.join(sorted(columns))}"
                ) from None
        for destination in self.destinations:
            for field, column in destination.field_mapping.as_dict().items():
                if column not in columns:
                    raise ConfigError(
                        f"{self.data_dir / 'destinations.yaml'}: destination "
                        f"{destination.name!r} maps field_mapping.{field} to column {column!r}, "
                        f"which the profiles in {source} do not have. "
                        f"Profile columns: {', '.join(sorted(columns))}"
                    )


def _first_line(error: Exception) -> str:
    return str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__


def _read_yaml(path: Path, top_key: str) -> list[Any]:
    if not path.is_file():
        raise ConfigError(f"{path}: file not found (expected a YAML file with a '{top_key}' list)")
    try:
        document = yaml.safe_load(path.read_text(encoding="utf-8"))
    except yaml.YAMLError as error:
        raise ConfigError(f"{path}: malformed YAML: {error}") from None
    if not isinstance(document, dict) or not isinstance(document.get(top_key), list):
        raise ConfigError(f"{path}: expected a top-level '{top_key}:' list")
    return document[top_key]


def _parse_items(path: Path, items: list[Any], model: type[_Strict], label: str) -> list[Any]:
    parsed = []
    for index, item in enumerate(items):
        name = (
            item.get("name" if model is Destination else "id") if isinstance(item, dict) else None
        )
        where = f"{label} {name!r}" if name else f"{label} #{index + 1}"
        try:
            parsed.append(model.model_validate(item))
        except ValidationError as error:
            problems = "; ".join(
                f"{'.'.join(str(p) for p in e['loc']) or '(item)'}: {e['msg']}"
                for e in error.errors()
            )
            raise ConfigError(f"{path}: {where}: {problems}") from None
    return parsed


def _reject_duplicates(path: Path, label: str, keys: list[str]) -> None:
    seen: set[str] = set()
    for key in keys:
        if key in seen:
            raise ConfigError(f"{path}: {label} {key!r} is defined more than once")
        seen.add(key)


def load_config(directory: Path | str | None = None) -> PipelineConfig:
    """Load and cross-check segments.yaml and destinations.yaml of a data directory."""
    root = Path(directory).resolve() if directory is not None else data_dir()
    segments_path = root / "segments.yaml"
    destinations_path = root / "destinations.yaml"

    segments = _parse_items(
        segments_path, _read_yaml(segments_path, "segments"), Segment, "segment"
    )
    _reject_duplicates(segments_path, "segment", [s.id for s in segments])
    for segment in segments:
        try:
            segment.expression  # noqa: B018 - parse now so a bad rule fails at load time
        except pl.exceptions.PolarsError as error:
            raise ConfigError(
                f"{segments_path}: segment {segment.id!r} has an invalid rule "
                f"{segment.rule!r}: {_first_line(error)}"
            ) from None

    destinations = _parse_items(
        destinations_path, _read_yaml(destinations_path, "destinations"), Destination, "destination"
    )
    _reject_duplicates(destinations_path, "destination", [d.name for d in destinations])
    _reject_duplicates(destinations_path, "list_id", [d.list_id for d in destinations])
    known = {s.id for s in segments}
    for destination in destinations:
        for segment_id in destination.segments:
            if segment_id not in known:
                raise ConfigError(
                    f"{destinations_path}: destination {destination.name!r} exports segment "
                    f"{segment_id!r}, which {segments_path.name} does not define. "
                    f"Defined segments: {', '.join(sorted(known))}"
                )
    return PipelineConfig(data_dir=root, segments=tuple(segments), destinations=tuple(destinations))
