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
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from sendgrid_pipeline.errors import ConfigError

DATA_DIR_ENV = "SENDGRID_PIPELINE_DATA_DIR"
DEFAULT_DATA_DIR = Path(__file__).resolve().parents[1] / "data"
DEFAULT_PROFILE_CAP = 100_000
DESTINATION_NAME = re.compile(r"^[a-z][a-z0-9_]*$")
SEGMENT_ID = re.compile(r"^[a-z][a-z0-9_]*$")

# SendGrid reserved contact fields a destination may map, with SendGrid's maxLength (FACTS.md §1);
# 0: no documented limit. alternate_emails is a list (at most 5, each up to 254 characters).
SENDGRID_FIELD_MAX_LENGTH: dict[str, int] = {
    "email": 254,
    "first_name": 50,
    "last_name": 50,
    "address_line_1": 100,
    "address_line_2": 100,
    "city": 60,
    "state_province_region": 50,
    "postal_code": 0,
    "country": 50,
    "phone_number_id": 0,
    "external_id": 254,
    "anonymous_id": 254,
}
# Identifiers besides email: once a contact has one, every update must carry it (FACTS.md §1).
IDENTIFIER_FIELDS = ("phone_number_id", "external_id", "anonymous_id")
MAX_ALTERNATE_EMAILS = 5
COLUMN_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")
CUSTOM_FIELD_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]{0,99}$")


def value_expression(source: str) -> pl.Expr:
    """A mapped value: a profile column by name, or a polars SQL expression over columns."""
    return pl.col(source) if COLUMN_NAME.match(source) else pl.sql_expr(source)


def data_dir() -> Path:
    """The data directory: `$SENDGRID_PIPELINE_DATA_DIR`, else the repository's data/."""
    return Path(os.environ.get(DATA_DIR_ENV) or DEFAULT_DATA_DIR).resolve()


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class CustomField(_Strict):
    """A SendGrid custom field fed by a profile column or a SQL expression."""

    source: str = Field(description="Profile column, or a polars SQL expression over columns.")
    type: Literal["Text", "Number", "Date"] = "Text"


class FieldMapping(_Strict):
    """SendGrid field -> profile column or SQL expression. Only `email` is required."""

    email: str = Field(description="Profile column holding the email address (required).")
    first_name: str | None = None
    last_name: str | None = None
    address_line_1: str | None = None
    address_line_2: str | None = None
    city: str | None = None
    state_province_region: str | None = None
    postal_code: str | None = None
    country: str | None = None
    alternate_emails: str | None = Field(
        default=None,
        description="A list column, or text with addresses separated by commas or semicolons.",
    )
    phone_number_id: str | None = None
    external_id: str | None = None
    anonymous_id: str | None = None
    custom_fields: dict[str, CustomField] = Field(
        default_factory=dict, description="SendGrid custom field name -> its source and type."
    )

    @field_validator("custom_fields")
    @classmethod
    def _custom_names_are_sendgrid_names(cls, value: dict[str, CustomField]) -> dict:
        for name in value:
            if not CUSTOM_FIELD_NAME.match(name):
                raise ValueError(
                    f"custom field name {name!r} must be letters, digits and underscores, "
                    "starting with a letter or underscore (SendGrid's rule)"
                )
        return value

    def as_dict(self) -> dict[str, str]:
        """Mapped reserved fields only, email first, in a stable order."""
        return {
            field: source
            for field, source in self
            if source is not None and field != "custom_fields"
        }

    def sources(self) -> dict[str, str]:
        """Every mapped value's source, custom fields as `custom_fields.<name>`."""
        custom = {f"custom_fields.{n}": c.source for n, c in self.custom_fields.items()}
        return {**self.as_dict(), **custom}

    def text_columns(self) -> set[str]:
        """Columns mapped directly to reserved fields: read as text, never type-inferred."""
        return {s for s in self.as_dict().values() if COLUMN_NAME.match(s)}

    def identifiers(self) -> list[str]:
        return [f for f in IDENTIFIER_FIELDS if getattr(self, f) is not None]


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
    segments: tuple[str, ...] = Field(min_length=1, description="Members of any go to the list.")
    exclude_segments: tuple[str, ...] = Field(
        default=(), description="Members of any of these are never sent, even if included."
    )
    create_missing_custom_fields: bool = Field(
        default=False,
        description="Create mapped custom fields that SendGrid does not have yet (else: error).",
    )
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
    rule: str | None = Field(
        default=None, description="SQL boolean expression evaluated with polars (pl.sql_expr)."
    )
    membership_file: str | None = Field(
        default=None,
        description="A CSV or Parquet file with a customer_id column, exported by a CDP "
        "(relative to the data directory). Give either this or rule.",
    )

    @model_validator(mode="after")
    def _rule_or_file(self) -> Segment:
        if (self.rule is None) == (self.membership_file is None):
            raise ValueError("give exactly one of 'rule' or 'membership_file'")
        return self

    @field_validator("id")
    @classmethod
    def _id_is_simple(cls, value: str) -> str:
        if not SEGMENT_ID.match(value):
            raise ValueError(f"{value!r} must be lowercase letters, digits and underscores")
        return value

    @cached_property
    def expression(self) -> pl.Expr:
        return pl.sql_expr(self.rule) if self.rule is not None else pl.lit(False)


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
        """Profile columns mapped directly to reserved fields (read as text, never inferred)."""
        return {col for d in self.destinations for col in d.field_mapping.text_columns()}

    def membership_path(self, segment: Segment) -> Path:
        return self.data_dir / str(segment.membership_file)

    def validate_against_profiles(self, schema: Mapping[str, pl.DataType], source: str) -> None:
        """Check every segment rule and every mapped column against the profile columns."""
        columns = set(schema)
        empty = pl.LazyFrame(schema=dict(schema))
        for segment in self.segments:
            if segment.rule is None:
                continue
            try:
                empty.filter(segment.expression).collect()
            except pl.exceptions.PolarsError as error:
                raise ConfigError(
                    f"{self.data_dir / 'segments.yaml'}: segment {segment.id!r} rule "
                    f"{segment.rule!r} does not evaluate over the profiles in {source}: "
                    f"{_first_line(error)}. Profile columns: {', '.join(sorted(columns))}"
                ) from None
        for destination in self.destinations:
            for field, value in destination.field_mapping.sources().items():
                where = (
                    f"{self.data_dir / 'destinations.yaml'}: destination {destination.name!r} "
                    f"maps field_mapping.{field}"
                )
                if COLUMN_NAME.match(value) and value not in columns:
                    raise ConfigError(
                        f"{where} to column {value!r}, which the profiles in {source} do not "
                        f"have. Profile columns: {', '.join(sorted(columns))}"
                    )
                try:
                    empty.select(value_expression(value)).collect()
                except pl.exceptions.PolarsError as error:
                    raise ConfigError(
                        f"{where} to the expression {value!r}, which does not evaluate over "
                        f"the profiles in {source}: {_first_line(error)}. "
                        f"Profile columns: {', '.join(sorted(columns))}"
                    ) from None


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
        if segment.rule is None:
            continue
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
        for key in ("segments", "exclude_segments"):
            for segment_id in getattr(destination, key):
                if segment_id not in known:
                    raise ConfigError(
                        f"{destinations_path}: destination {destination.name!r} {key} names "
                        f"segment {segment_id!r}, which {segments_path.name} does not define. "
                        f"Defined segments: {', '.join(sorted(known))}"
                    )
        both = set(destination.segments) & set(destination.exclude_segments)
        if both:
            raise ConfigError(
                f"{destinations_path}: destination {destination.name!r} both includes and "
                f"excludes segment(s) {', '.join(sorted(both))}"
            )
        for field, value in destination.field_mapping.sources().items():
            if not COLUMN_NAME.match(value):
                try:
                    pl.sql_expr(value)
                except pl.exceptions.PolarsError as error:
                    raise ConfigError(
                        f"{destinations_path}: destination {destination.name!r} maps "
                        f"field_mapping.{field} to an invalid SQL expression {value!r}: "
                        f"{_first_line(error)}"
                    ) from None
    for segment in segments:
        if segment.membership_file is not None:
            path = root / segment.membership_file
            if not path.is_file():
                raise ConfigError(
                    f"{segments_path}: segment {segment.id!r} membership_file {path} not found"
                )
    return PipelineConfig(data_dir=root, segments=tuple(segments), destinations=tuple(destinations))
