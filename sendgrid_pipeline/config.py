"""Destinations and segments configuration, validated when the definitions load.

A bad file fails fast, at load time, with an error that names the file, the destination or
segment, and the offending key or column, so nothing is ever sent on a broken configuration.

The files are untrusted input: every size is bounded (file, YAML nesting and alias expansion,
names, rule length and complexity), and segment rules and mapped values are expressions over
profile columns only, checked before they are parsed, so they can never read a file.
"""

from __future__ import annotations

import datetime as dt
import difflib
import itertools
import json
import operator
import re
import warnings
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path, PurePosixPath, PureWindowsPath
from typing import Any, Literal, get_args, get_origin

import polars as pl
import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from sendgrid_pipeline.errors import ConfigError
from sendgrid_pipeline.settings import DEFAULT_DATA_DIR

DEFAULT_PROFILE_CAP = 100_000
DESTINATION_NAME = re.compile(r"^[a-z][a-z0-9_]*$")
SEGMENT_ID = re.compile(r"^[a-z][a-z0-9_]*$")

# SendGrid reserved contact fields a destination may map, with SendGrid's maxLength (see
# https://www.twilio.com/docs/sendgrid/api-reference/contacts/add-or-update-a-contact);
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
# Identifiers besides email: once a contact has one, every update must carry it (same page).
IDENTIFIER_FIELDS = ("phone_number_id", "external_id", "anonymous_id")
MAX_ALTERNATE_EMAILS = 5
COLUMN_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")
CUSTOM_FIELD_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]{0,99}$")
MAX_CUSTOM_FIELDS = 500  # SendGrid's limit per account

# Bounds on the configuration files (untrusted input: nothing may take the process down).
MAX_CONFIG_FILE_BYTES = 1024 * 1024
MAX_YAML_DEPTH = 32  # nesting of mappings and lists
MAX_YAML_NODES = 100_000  # nodes of a document once its aliases are expanded
MAX_ID_CHARS = 64  # destination names, segment ids
MAX_LABEL_CHARS = 200  # display names, segment names
MAX_DESCRIPTION_CHARS = 2_000
MAX_PATH_CHARS = 1_024
# Bounds on a rule or mapped expression, checked before the SQL parser sees it: the parser
# recurses per operator and a long chain of them (20,000 ANDs) overflows the native stack.
MAX_EXPRESSION_CHARS = 4_000
MAX_EXPRESSION_NESTING = 16  # parentheses (and brackets) inside one another
MAX_BOOLEAN_TERMS = 100  # AND / OR operators
MAX_EXPRESSION_OPERATORS = 256  # every operator: AND, OR, NOT, comparisons, arithmetic...

MEMBERSHIP_SUFFIXES = (".csv", ".parquet")

# <data dir>/profile_source.yaml: where the profiles come from (absent: <data dir>/profiles/).
PROFILE_SOURCE_FILE = "profile_source.yaml"
ENV_VAR_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")
# A qualified table name: dot-separated identifiers, each plain or double-quoted.
_SQL_IDENTIFIER = r'(?:[A-Za-z_][A-Za-z0-9_$]*|"(?:[^"]|"")+")'
SQL_TABLE_NAME = re.compile(rf"{_SQL_IDENTIFIER}(?:\.{_SQL_IDENTIFIER}){{0,2}}")
MAX_QUERY_CHARS = 100_000


class UnsafeExpressionError(ValueError):
    """A rule or mapped value that is not a bounded expression over profile columns."""


class NullableExclusionWarning(UserWarning):
    """An exclusion segment whose rule can be null: a null excludes nobody."""


# -- Rules and mapped values: expressions over profile columns, nothing else -----------------

# Tokens of the SQL expression language, as far as the guard needs them. Only the contents of
# single-quoted string literals are skipped; every other character is checked, and a character
# outside this grammar is refused rather than guessed at.
_TOKEN = re.compile(
    r"""
    (?P<space>\s+)
  | (?P<string>'(?:[^']|'')*')
  | (?P<quoted>"(?:[^"]|"")*")
  | (?P<comment>--|/\*)
  | (?P<number>(?:\d+(?:\.\d*)?|\.\d+)(?:[eE][+-]?\d+)?)
  | (?P<word>[A-Za-z_][A-Za-z0-9_]*)
  | (?P<op><=|>=|<>|!=|==|\|\||::|[=<>+\-*/%(),.:\[\]])
    """,
    re.VERBOSE,
)
# Words that only appear in queries, never in an expression over one row's columns.
_QUERY_KEYWORDS = frozenset(
    {
        "select",
        "from",
        "values",
        "table",
        "join",
        "union",
        "intersect",
        "except",
        "lateral",
        "exists",
        "into",
        "pivot",
        "unpivot",
    }
)
# Table functions (read_csv, read_parquet, read_json, read_ipc, read_ndjson, scan_*, ...) and
# anything named like one, when called (quoted or not); a column may be called read_count.
_TABLE_FUNCTION = re.compile(r"^(read|scan)(_\w*)?$|^\w+_scan$|^glob$")
_WORD_OPERATORS = frozenset({"and", "or", "not", "is", "in", "like", "ilike", "between", "when"})
# Plan nodes that mean an expression reaches outside the row: a subquery or a scan.
_PLAN_NODES = frozenset({"SubPlan", "Scan", "DataFrameScan", "PythonScan", "IR", "dsl", "Paths"})


def _clip(text: str, limit: int = 120) -> str:
    """A value for an error message: never more than `limit` characters of it."""
    return text if len(text) <= limit else f"{text[:limit]}... ({len(text)} characters)"


def _tokens(source: str) -> Iterator[tuple[str, str]]:
    position = 0
    while position < len(source):
        match = _TOKEN.match(source, position)
        if match is None:
            char = source[position]
            if char in "'\"":
                raise UnsafeExpressionError(f"unterminated quote at character {position + 1}")
            raise UnsafeExpressionError(
                f"character {char!r} at position {position + 1} is not allowed in an expression"
            )
        kind = match.lastgroup or ""
        if kind == "comment":
            raise UnsafeExpressionError(
                "SQL comments are not allowed in an expression (use a YAML # comment)"
            )
        if kind != "space":
            yield kind, match.group()
        position = match.end()


def _refused_word(word: str, called: bool) -> str | None:
    lowered = word.lower()
    if lowered in _QUERY_KEYWORDS:
        hint = (
            " (for dates use DATE_PART('year', column) instead of EXTRACT(... FROM ...))"
            if lowered == "from"
            else ""
        )
        return f"{_clip(word.upper(), 40)} is a query keyword: subqueries are not allowed{hint}"
    if called and _TABLE_FUNCTION.match(lowered):
        return f"{_clip(word, 40)}() is a table function (it reads files): not allowed"
    return None


def check_expression(source: str) -> None:
    """Refuse anything but a bounded SQL expression over the columns of one profile row.

    Checked on the text, before the SQL parser sees it (parsing a subquery already reads the
    files it names): no SELECT/FROM or other query keyword, no table function (read_csv,
    read_parquet, read_json, read_ipc, scan_*...), no comments, and bounded length, nesting
    and number of operators. Raises UnsafeExpressionError, which never quotes the source.
    """
    if not isinstance(source, str) or not source.strip():
        raise UnsafeExpressionError("an expression must be a non-empty string")
    if len(source) > MAX_EXPRESSION_CHARS:
        raise UnsafeExpressionError(
            f"the expression has {len(source)} characters; at most {MAX_EXPRESSION_CHARS} "
            "are allowed (define a smaller segment, or compute the value upstream)"
        )
    tokens = list(_tokens(source))
    depth = boolean_terms = operators = 0
    for index, (kind, text) in enumerate(tokens):
        called = index + 1 < len(tokens) and tokens[index + 1][1] == "("
        words = re.findall(r"\w+", text) if kind == "quoted" else [text] if kind == "word" else []
        for word in words:
            refused = _refused_word(word, called)
            if refused:
                raise UnsafeExpressionError(
                    f"{refused}. A rule or mapped value is an expression over profile columns "
                    "only: no SELECT/FROM, no subquery, no table function"
                )
        lowered = text.lower()
        if kind == "op" and text in "([":
            depth += 1
            if depth > MAX_EXPRESSION_NESTING:
                raise UnsafeExpressionError(
                    f"parentheses are nested more than {MAX_EXPRESSION_NESTING} deep"
                )
        elif kind == "op" and text in ")]":
            depth -= 1
        elif (kind == "op" and text not in ",.") or (kind == "word" and lowered in _WORD_OPERATORS):
            operators += 1
            boolean_terms += lowered in ("and", "or")
            if boolean_terms > MAX_BOOLEAN_TERMS:
                raise UnsafeExpressionError(
                    f"more than {MAX_BOOLEAN_TERMS} AND/OR operators; split the segment or "
                    "compute a flag column upstream"
                )
            if operators > MAX_EXPRESSION_OPERATORS:
                raise UnsafeExpressionError(
                    f"more than {MAX_EXPRESSION_OPERATORS} operators in one expression"
                )


def _check_parsed(expr: pl.Expr) -> None:
    """Second line of defence, on the parsed tree: only columns, literals and functions."""
    if any(name.startswith("_POLARS_") for name in expr.meta.root_names()):
        raise UnsafeExpressionError("the expression contains a subquery")
    try:
        tree = json.loads(expr.meta.serialize(format="json"))
    except Exception as error:  # a node that cannot be serialised cannot be checked
        raise UnsafeExpressionError(
            f"the parsed expression cannot be checked ({type(error).__name__})"
        ) from None
    stack = [tree]
    while stack:
        node = stack.pop()
        if isinstance(node, dict):
            reached = _PLAN_NODES.intersection(node)
            if reached:
                raise UnsafeExpressionError(
                    f"the expression reaches outside the profile row ({min(reached)})"
                )
            stack.extend(node.values())
        elif isinstance(node, list):
            stack.extend(node)


def parse_expression(source: str) -> pl.Expr:
    """Parse a rule or mapped value: checked as text first, then as a tree."""
    check_expression(source)
    expr = pl.sql_expr(source)
    _check_parsed(expr)
    return expr


def value_expression(source: str) -> pl.Expr:
    """A mapped value: a profile column by name, or a polars SQL expression over columns."""
    return pl.col(source) if COLUMN_NAME.match(source) else parse_expression(source)


def normalized_source(source: str) -> str:
    """A mapped value's text with its whitespace normalised, for comparing two mappings."""
    try:
        return " ".join(text for _, text in _tokens(source))
    except UnsafeExpressionError:
        return " ".join(source.split())


def _literals(source: str) -> list[str]:
    """String and number literals of an expression (sample values for the null probe)."""
    try:
        return [
            text[1:-1].replace("''", "'") if kind == "string" else text
            for kind, text in _tokens(source)
            if kind in ("string", "number")
        ]
    except UnsafeExpressionError:
        return []


def data_dir(directory: Path | str | None = None) -> Path:
    """`directory`, resolved; without one, the repository's data/ directory.

    The environment is not read here: `settings.Settings.from_env()` reads
    SENDGRID_PIPELINE_DATA_DIR once, where the code location is built, and passes it down.
    """
    return Path(directory or DEFAULT_DATA_DIR).resolve()


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class CustomField(_Strict):
    """A SendGrid custom field fed by a profile column or a SQL expression."""

    source: str = Field(description="Profile column, or a polars SQL expression over columns.")
    type: Literal["Text", "Number", "Date"] = "Text"

    @field_validator("source")
    @classmethod
    def _source_is_an_expression(cls, value: str) -> str:
        check_expression(value)
        return value


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
        default_factory=dict,
        max_length=MAX_CUSTOM_FIELDS,
        description="SendGrid custom field name -> its source and type.",
    )

    @field_validator(
        "email",
        "first_name",
        "last_name",
        "address_line_1",
        "address_line_2",
        "city",
        "state_province_region",
        "postal_code",
        "country",
        "alternate_emails",
        "phone_number_id",
        "external_id",
        "anonymous_id",
    )
    @classmethod
    def _sources_are_expressions(cls, value: str | None) -> str | None:
        if value is not None:
            check_expression(value)
        return value

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
        """Columns mapped directly to reserved fields or Text custom fields.

        They are read as text, never type-inferred, so `01234` keeps its leading zero.
        """
        reserved = set(self.as_dict().values())
        custom = {c.source for c in self.custom_fields.values() if c.type == "Text"}
        return {source for source in reserved | custom if COLUMN_NAME.match(source)}

    def identifiers(self) -> list[str]:
        return [f for f in IDENTIFIER_FIELDS if getattr(self, f) is not None]


# Suppression lists of the account (GET /v3/suppression/<path>) sendgrid_unsubscribes can read.
SuppressionKind = Literal["unsubscribe", "bounce", "spam_report", "invalid_email", "block"]
DEFAULT_SUPPRESSION_KINDS: tuple[SuppressionKind, ...] = (
    "unsubscribe",
    "bounce",
    "spam_report",
    "invalid_email",
)


class Destination(_Strict):
    """An export destination: one SendGrid contact list fed by one or more segments."""

    name: str = Field(
        max_length=MAX_ID_CHARS,
        description="Partition key: lowercase letters, digits and underscores.",
    )
    display_name: str = Field(max_length=MAX_LABEL_CHARS)
    list_id: str = Field(description="The SendGrid contact list id (a uuid).")
    api_key_env: str = Field(
        default="SENDGRID_API_KEY",
        max_length=MAX_LABEL_CHARS,
        description="Env var that holds this destination's API key. Destinations with the "
        "same api_key_env are taken to be one SendGrid account, whose contacts they share.",
    )
    consent: bool = Field(
        default=False,
        description="Explicit 'I agree' to data privacy and compliance: data leaves the "
        "compliance boundary. Without it the sync refuses to send anything.",
    )
    field_mapping: FieldMapping
    segments: tuple[str, ...] = Field(
        min_length=1, max_length=1_000, description="Members of any go to the list."
    )
    exclude_segments: tuple[str, ...] = Field(
        default=(),
        max_length=1_000,
        description="Members of any of these are never sent, even if included.",
    )
    create_missing_custom_fields: bool = Field(
        default=False,
        description="Create mapped custom fields that SendGrid does not have yet (else: error).",
    )
    profile_cap: int = Field(default=DEFAULT_PROFILE_CAP, gt=0)
    max_contacts: int | None = Field(
        default=None,
        gt=0,
        description="The SendGrid account's contact limit (its plan's contacts). Before any "
        "upsert the sync reads the account's contact count and refuses a sync whose new "
        "contacts would exceed it. Destinations of one account (same api_key_env) must agree. "
        "null: not checked (the counts are still reported).",
    )
    contact_limit_margin: float = Field(
        default=0.0,
        ge=0,
        lt=1,
        description="Share of max_contacts kept free: with 0.05 a sync is refused once the "
        "account would pass 95% of max_contacts. Destinations of one account must agree.",
    )
    exclude_suppressed: bool = Field(
        default=False,
        description="Never export contacts SendGrid suppresses for this destination's account "
        "(the sendgrid_unsubscribes asset: its suppression_kinds and suppression_group_ids). "
        "They are rejected with reason 'suppressed', and removed from the list if on it.",
    )
    suppression_kinds: tuple[SuppressionKind, ...] = Field(
        default=DEFAULT_SUPPRESSION_KINDS,
        max_length=5,
        description="Which of the account's suppression lists sendgrid_unsubscribes reads: "
        "unsubscribe, bounce, spam_report, invalid_email, block. Destinations of one account "
        "(same api_key_env) must agree.",
    )
    suppression_group_ids: tuple[int, ...] = Field(
        default=(),
        max_length=200,
        description="Unsubscribe (ASM) group ids whose unsubscribes sendgrid_unsubscribes "
        "reads as kind group_unsubscribe. Destinations of one account must agree.",
    )
    max_removal_share: float = Field(
        default=0.2,
        ge=0,
        le=1,
        description="Brake: refuse a sync that would remove more than this share of the list.",
    )
    allow_mass_removal: bool = Field(
        default=False, description="Override the brake for this destination (use with care)."
    )
    max_erasure_share: float = Field(
        default=0.05,
        ge=0,
        le=1,
        description="Brake: refuse an erasure run that would take more than this share of "
        "the contacts we manage on this destination's list (from 10 people on; override with "
        "the run tag sendgrid/allow_mass_erasure=true).",
    )
    erase_recipient_data: bool = Field(
        default=False,
        description="Erasures also erase the people's personal data account-wide in SendGrid "
        "(POST /v3/recipients/erasejob: names, addresses, subject lines, IPs). One destination "
        "of an account asking for it is enough for the whole account.",
    )
    on_rejected_rows: Literal["warn", "fail"] = Field(
        default="warn",
        description="When SendGrid rejects some rows (an errored job or a 400 for one value): "
        "'warn' finishes the sync and reports them; 'fail' also fails the step afterwards.",
    )
    max_rejected_share: float = Field(
        default=0.25,
        ge=0,
        le=1,
        description="Fail the destination when SendGrid rejects more than this share of the "
        "contacts its list should hold (e.g. every upload job failed).",
    )
    reconcile_every_days: float | None = Field(
        default=7,
        gt=0,
        description="Safety net: read the list's true membership at least this often "
        "(null: only when needed: first sync, an unconfirmed change, a shrunken list).",
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

    @field_validator("suppression_group_ids")
    @classmethod
    def _group_ids_are_ids(cls, value: tuple[int, ...]) -> tuple[int, ...]:
        bad = [group_id for group_id in value if group_id <= 0]
        if bad:
            raise ValueError(f"{bad[0]} is not an unsubscribe group id (a positive integer)")
        return tuple(dict.fromkeys(value))

    @field_validator("suppression_kinds")
    @classmethod
    def _kinds_once(cls, value: tuple[str, ...]) -> tuple[str, ...]:
        return tuple(dict.fromkeys(value))


class Segment(_Strict):
    """A segment of unified profiles, defined by a SQL boolean expression over profile columns."""

    id: str = Field(max_length=MAX_ID_CHARS)
    name: str = Field(max_length=MAX_LABEL_CHARS)
    description: str = Field(default="", max_length=MAX_DESCRIPTION_CHARS)
    rule: str | None = Field(
        default=None,
        description="SQL boolean expression over profile columns, evaluated with polars "
        "(pl.sql_expr). No subqueries or table functions; bounded in size.",
    )
    membership_file: str | None = Field(
        default=None,
        max_length=MAX_PATH_CHARS,
        description="A CSV or Parquet file with a customer_id column, exported by a CDP "
        "(relative to the data directory, and inside it). Give either this or rule.",
    )

    @field_validator("rule")
    @classmethod
    def _rule_is_an_expression(cls, value: str | None) -> str | None:
        if value is not None:
            check_expression(value)
        return value

    @field_validator("membership_file")
    @classmethod
    def _file_is_inside_the_data_directory(cls, value: str | None) -> str | None:
        if value is None:
            return value
        if not value.strip() or "\0" in value:
            raise ValueError("must be a file name relative to the data directory")
        if PurePosixPath(value).is_absolute() or PureWindowsPath(value).anchor:
            raise ValueError(
                "must be relative to the data directory, not an absolute path "
                "(copy or link the CDP export into the data directory)"
            )
        if ".." in re.split(r"[/\\]", value):
            raise ValueError("must not leave the data directory ('..' is not allowed)")
        if not value.lower().endswith(MEMBERSHIP_SUFFIXES):
            raise ValueError(f"must be a {' or '.join(MEMBERSHIP_SUFFIXES)} file")
        return value

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
        return parse_expression(self.rule) if self.rule is not None else pl.lit(False)


ProfileSourceKind = Literal["files", "sql", "delta"]
# The keys each kind takes besides `kind`.
PROFILE_SOURCE_KEYS: dict[str, tuple[str, ...]] = {
    "files": (),
    "sql": ("uri_env", "table", "query", "updated_at_column", "engine", "connect_timeout"),
    "delta": ("table_uri", "version"),
}


class ProfileSourceSpec(_Strict):
    """Where the profiles come from: `<data dir>/profile_source.yaml` (absent: the files).

    kind files: the CSV/Parquet files of <data dir>/profiles/. kind sql: a PostgreSQL table or
    query; `uri_env` is the NAME of the environment variable holding the database URI (the URI
    is a secret and never belongs in this file). kind delta: a Delta Lake table (object-store
    credentials come from the standard AWS_*/AZURE_*/GOOGLE_* environment variables).
    """

    kind: ProfileSourceKind = "files"
    uri_env: str | None = Field(
        default=None,
        max_length=MAX_ID_CHARS * 2,
        description="kind sql: the name of the environment variable holding the database URI.",
    )
    table: str | None = Field(default=None, max_length=MAX_LABEL_CHARS)
    query: str | None = Field(default=None, max_length=MAX_QUERY_CHARS)
    updated_at_column: str | None = Field(default=None, max_length=MAX_LABEL_CHARS)
    engine: Literal["adbc", "connectorx"] | None = None
    connect_timeout: int | None = Field(default=None, gt=0, le=600)
    table_uri: str | None = Field(default=None, min_length=1, max_length=MAX_PATH_CHARS)
    version: int | None = Field(default=None, ge=0)

    @field_validator("uri_env")
    @classmethod
    def _a_variable_name(cls, value: str | None) -> str | None:
        if value is None:
            return value
        if "://" in value or "@" in value:  # never echoed: it may hold a password
            raise ValueError(
                "must be the NAME of the environment variable that holds the database URI "
                "(such as SENDGRID_PIPELINE_PROFILE_DB_URI), never the URI itself: remove the "
                "URI from this file (and change its password if the file was shared)"
            )
        if not ENV_VAR_NAME.match(value):
            raise ValueError(
                "must be an environment variable name: letters, digits and underscores, "
                "not starting with a digit"
            )
        return value

    @field_validator("table")
    @classmethod
    def _a_table_name(cls, value: str | None) -> str | None:
        if value is not None and not SQL_TABLE_NAME.fullmatch(value.strip()):
            raise ValueError(
                f"{_clip(value)!r} is not a table name (such as profiles, "
                'analytics.unified_profiles or "Profiles"); use query: for anything else'
            )
        return value

    @field_validator("query", "updated_at_column")
    @classmethod
    def _not_blank(cls, value: str | None) -> str | None:
        if value is not None and not value.strip():
            raise ValueError("must not be empty")
        return value

    @property
    def keys(self) -> tuple[str, ...]:
        """The keys the file gave, besides kind."""
        return tuple(k for k in type(self).model_fields if k in self.model_fields_set - {"kind"})

    def problems(self) -> list[tuple[tuple[str, ...], str]]:
        """(keys, message) for what this kind needs and does not take."""
        found: list[tuple[tuple[str, ...], str]] = []
        allowed = PROFILE_SOURCE_KEYS[self.kind]
        for key in self.keys:
            if key not in allowed:
                owners = [k for k, keys in PROFILE_SOURCE_KEYS.items() if key in keys]
                takes = ", ".join(allowed) if allowed else "no other key"
                found.append(
                    (
                        (key,),
                        f"key {key!r} is for kind {' or '.join(owners)}, not {self.kind} "
                        f"(kind {self.kind} takes {takes})",
                    )
                )
        if self.kind == "sql":
            if self.uri_env is None:
                found.append(
                    (
                        ("kind",),
                        "kind sql needs uri_env: the name of the environment variable holding "
                        "the database URI (such as SENDGRID_PIPELINE_PROFILE_DB_URI)",
                    )
                )
            if (self.table is None) == (self.query is None):
                found.append((("kind",), "kind sql needs exactly one of 'table' and 'query'"))
        if self.kind == "delta" and self.table_uri is None:
            found.append(
                (
                    ("kind",),
                    "kind delta needs table_uri: a directory, or an s3://, az:// or gs:// URI",
                )
            )
        return found

    def delta_location(self, data_dir: Path) -> str:
        """table_uri, a relative path taken from the data directory."""
        uri = str(self.table_uri)
        if "://" in uri or Path(uri).is_absolute():
            return uri
        return str(data_dir / uri)


@dataclass(frozen=True)
class ConfigProblem:
    """One configuration error. Its message names the file, the line where known, the segment
    or destination, and the key; `destination` / `segment` say what it disables (neither: the
    whole configuration)."""

    message: str
    destination: str | None = None
    segment: str | None = None

    @property
    def fatal(self) -> bool:
        return self.destination is None and self.segment is None


class PipelineConfig(BaseModel):
    """The whole configuration of one data directory."""

    model_config = ConfigDict(frozen=True, arbitrary_types_allowed=True)

    data_dir: Path
    segments: tuple[Segment, ...]
    destinations: tuple[Destination, ...]
    # <data dir>/profile_source.yaml; the files of <data dir>/profiles/ without one.
    profile_source: ProfileSourceSpec = Field(default_factory=ProfileSourceSpec)
    # Loaded with skip_invalid_destinations: the errors of the destinations (and segments) left
    # out, for the definitions to show.
    problems: tuple[ConfigProblem, ...] = ()
    # (file name, segment id or destination name, *keys) -> 1-based line, for error messages.
    lines: Mapping[tuple[str, ...], int] = Field(default_factory=dict, repr=False)

    @property
    def skipped_destinations(self) -> list[str]:
        """Destinations left out because their configuration is invalid (named ones)."""
        return list(dict.fromkeys(p.destination for p in self.problems if p.destination))

    def where(self, file: str, item: str, *keys: str) -> str:
        """`<path>:<line>` of an item's key (or of the item, or just the path)."""
        path = self.data_dir / file
        for depth in range(len(keys), -1, -1):
            line = self.lines.get((file, item, *keys[:depth]))
            if line is not None:
                return f"{path}:{line}"
        return str(path)

    @property
    def profiles_dir(self) -> Path:
        return self.data_dir / "profiles"

    @property
    def requests_dir(self) -> Path:
        return self.data_dir / "requests"

    @property
    def erasures_dir(self) -> Path:
        """Where erasure request files (CSV) are dropped; see sendgrid_pipeline.erasure."""
        return self.data_dir / "erasures"

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
        """Profile columns mapped directly to reserved fields or to Text custom fields.

        They are read as text, never type-inferred. A column that a segment rule also uses is
        read as text too: the mapping wins, and the rule must treat the column as text.
        """
        return {col for d in self.destinations for col in d.field_mapping.text_columns()}

    def membership_path(self, segment: Segment) -> Path:
        """The segment's membership file; refused if it resolves outside the data directory."""
        root = self.data_dir.resolve()
        path = root / str(segment.membership_file)
        if path.exists() and not path.resolve().is_relative_to(root):
            raise ConfigError(
                f"{root / 'segments.yaml'}: segment {segment.id!r} membership_file resolves "
                f"(through a symbolic link) outside the data directory {root}"
            )
        return path

    def validate_against_profiles(
        self, schema: Mapping[str, pl.DataType], source: str
    ) -> list[str]:
        """Check every segment rule and every mapped column against the profile columns.

        Raises ConfigError with one line per error. Returns the warnings (also issued with
        `warnings.warn`) for callers to log: an exclusion segment whose rule can evaluate to
        null (NullableExclusionWarning).
        """
        problems = self.profile_problems(schema, source)
        if problems:
            raise ConfigError("\n".join(p.message for p in problems))
        messages = self._nullable_exclusions(schema)
        for message in messages:
            warnings.warn(message, NullableExclusionWarning, stacklevel=2)
        return messages

    def profile_problems(
        self, schema: Mapping[str, pl.DataType], source: str
    ) -> list[ConfigProblem]:
        """Segment rules and mapped values that do not evaluate over the profile columns."""
        columns = set(schema)
        listed = f"Profile columns: {', '.join(sorted(columns))}"
        empty = pl.LazyFrame(schema=dict(schema))
        problems = []
        for segment in self.segments:
            if segment.rule is None:
                continue
            try:
                empty.filter(segment.expression).collect()
            except pl.exceptions.PolarsError as error:
                problems.append(
                    ConfigProblem(
                        f"{self.where('segments.yaml', segment.id, 'rule')}: segment "
                        f"{segment.id!r} rule {_clip(segment.rule)!r} does not evaluate over the "
                        f"profiles in {source}: {_polars_reason(error, columns)}. {listed}",
                        segment=segment.id,
                    )
                )
        for destination in self.destinations:
            for field, value in destination.field_mapping.sources().items():
                keys = ("field_mapping", *field.split("."))
                where = (
                    f"{self.where('destinations.yaml', destination.name, *keys)}: destination "
                    f"{destination.name!r} maps field_mapping.{field}"
                )
                if COLUMN_NAME.match(value) and value not in columns:
                    message = (
                        f"{where} to column {value!r}, which the profiles in {source} do not "
                        f"have{_did_you_mean(value, columns)}. {listed}"
                    )
                else:
                    try:
                        empty.select(value_expression(value)).collect()
                        continue
                    except pl.exceptions.PolarsError as error:
                        message = (
                            f"{where} to the expression {_clip(value)!r}, which does not "
                            f"evaluate over the profiles in {source}: "
                            f"{_polars_reason(error, columns)}. {listed}"
                        )
                problems.append(ConfigProblem(message, destination=destination.name))
        return problems

    def without(self, problems: list[ConfigProblem], skip: bool) -> PipelineConfig:
        """This configuration less what `problems` disable, or ConfigError.

        Raises with every message unless `skip`, or if a problem concerns the whole
        configuration, or if no destination is left. A destination that uses (or excludes) an
        invalid segment is disabled too: syncing it without that segment would send the wrong
        contacts.
        """
        if not problems:
            return self
        if not skip or any(p.fatal for p in problems):
            raise ConfigError("\n".join(p.message for p in problems))
        bad_segments = {p.segment for p in problems if p.segment}
        bad_destinations = {p.destination for p in problems if p.destination}
        derived = []
        for destination in self.destinations:
            used = [
                s
                for s in (*destination.segments, *destination.exclude_segments)
                if s in bad_segments
            ]
            if used and destination.name not in bad_destinations:
                derived.append(
                    ConfigProblem(
                        f"{self.where('destinations.yaml', destination.name, 'segments')}: "
                        f"destination {destination.name!r} uses segment "
                        f"{', '.join(map(repr, used))}, which is invalid (see segments.yaml)",
                        destination=destination.name,
                    )
                )
                bad_destinations.add(destination.name)
        every = [*problems, *derived]
        kept = tuple(d for d in self.destinations if d.name not in bad_destinations)
        if not kept:
            raise ConfigError(
                "\n".join(p.message for p in every) + "\nNo destination has a valid configuration."
            )
        return self.model_copy(
            update={
                "destinations": kept,
                "segments": tuple(s for s in self.segments if s.id not in bad_segments),
                "problems": (*self.problems, *every),
            }
        )

    def _nullable_exclusions(self, schema: Mapping[str, pl.DataType]) -> list[str]:
        excluders: dict[str, list[str]] = {}
        for destination in self.destinations:
            for segment_id in destination.exclude_segments:
                excluders.setdefault(segment_id, []).append(destination.name)
        messages = []
        for segment in self.segments:
            if segment.rule is None or segment.id not in excluders:
                continue
            nulls = _null_making_columns(segment, schema)
            if nulls is None:
                continue
            when = f" (e.g. when {' and '.join(nulls)} is null)" if nulls else ""
            flags = [c for c in nulls if schema[c] == pl.Boolean] or ["email_opt_in"]
            messages.append(
                f"{self.data_dir / 'segments.yaml'}: segment {segment.id!r}, excluded by "
                f"destination {', '.join(repr(d) for d in excluders[segment.id])}, has a rule "
                f"that can evaluate to null{when}: {_clip(segment.rule)!r}. A null excludes "
                "nobody, so those profiles are sent. Make the rule true or false for every "
                f"profile: write COALESCE({flags[0]}, FALSE) for a flag (to exclude profiles "
                "without consent: NOT COALESCE(email_opt_in, FALSE)), or wrap the whole rule "
                "in COALESCE(..., FALSE)."
            )
        return messages


# -- Probing an exclusion rule for nulls -----------------------------------------------------

MAX_PROBED_COLUMNS = 8  # every combination of nulls over at most this many columns
MAX_PROBE_SAMPLES = 12


def _parsed(literals: list[str], parse: Any) -> list[Any]:
    values = []
    for literal in literals:
        try:
            values.append(parse(literal))
        except ValueError:
            continue
    return values


def _samples(dtype: pl.DataType, literals: list[str]) -> pl.Series | None:
    """A few non-null values of a column type, with the rule's own literals among them."""
    if dtype == pl.Boolean:
        values: list[Any] = [True, False]
    elif dtype.is_numeric():
        values = [0, 1, -1, 0.5, *_parsed(literals, float)]
    elif dtype.is_temporal():
        epochs = [dt.datetime(1970, 1, 1), dt.datetime(2100, 1, 1)]
        values = [*epochs, *_parsed(literals, dt.datetime.fromisoformat)]
    else:
        values = ["", "x", *literals]
    try:
        series = pl.Series(values[:MAX_PROBE_SAMPLES], strict=False)
        if isinstance(dtype, pl.Datetime) and dtype.time_zone is not None:
            naive = series.cast(pl.Datetime(dtype.time_unit or "us"))
            series = naive.dt.replace_time_zone(dtype.time_zone)
        series = series.cast(dtype, strict=False).drop_nulls()
    except pl.exceptions.PolarsError:
        return None
    return series if series.len() else None


def _null_making_columns(segment: Segment, schema: Mapping[str, pl.DataType]) -> list[str] | None:
    """Columns whose nulls make the rule null (smallest set found); None: never null.

    The rule is evaluated over rows where each combination of its columns is null and the
    others take a few sample values (including the rule's literals). A heuristic: it finds
    the common mistakes (NOT flag, flag = FALSE, a comparison left unwrapped), not every one.
    """
    used = [c for c in dict.fromkeys(segment.expression.meta.root_names()) if c in schema]
    literals = _literals(segment.rule or "")
    samples = {c: _samples(schema[c], literals) for c in used}
    if len(used) <= MAX_PROBED_COLUMNS:
        subsets = [
            combo for size in range(len(used) + 1) for combo in itertools.combinations(used, size)
        ]
    else:
        subsets = [(), *((c,) for c in used), tuple(used)]
    for nulls in subsets:
        values = {c: samples[c] for c in used if c not in nulls}
        if any(v is None for v in values.values()):
            continue  # no sample value for a column that must not be null here
        present = {c: v for c, v in values.items() if v is not None}
        height = max((v.len() for v in present.values()), default=1)
        frame = pl.DataFrame(
            [
                _cycled(present[c], height).alias(c)
                if c in present
                else pl.Series(c, [None] * height, dtype=schema[c])
                for c in used
            ]
        )
        if _evaluates_to_null(frame, segment.expression):
            return list(nulls)
    return None


def _cycled(series: pl.Series, height: int) -> pl.Series:
    return pl.concat([series] * (height // series.len() + 1))[:height]


def _evaluates_to_null(frame: pl.DataFrame, expression: pl.Expr) -> bool:
    try:
        return bool(frame.select(expression.is_null().any()).item())
    except pl.exceptions.PolarsError:
        # a sample that does not suit the rule (a bad cast...): try the rows one by one
        for row in range(frame.height):
            try:
                if frame[row].select(expression.is_null().any()).item():
                    return True
            except pl.exceptions.PolarsError:
                continue
        return False


def _first_line(error: Exception) -> str:
    text = str(error).strip()
    return _clip(text.splitlines()[0], 300) if text else type(error).__name__


def _did_you_mean(word: str, choices: Iterable[str]) -> str:
    """` (did you mean 'x'?)` for a near miss among `choices`, else ''."""
    close = difflib.get_close_matches(word, list(choices), n=1, cutoff=0.6)
    return f" (did you mean {close[0]!r}?)" if close else ""


_MISSING_COLUMN = re.compile(r'unable to find column "([^"]*)"')


def _polars_reason(error: Exception, columns: Iterable[str]) -> str:
    """Polars' reason, without its own copy of the column list (the caller lists them)."""
    missing = _MISSING_COLUMN.search(str(error))
    if missing:
        column = missing.group(1)
        return f"there is no column {_clip(column, 100)!r}{_did_you_mean(column, columns)}"
    return _first_line(error)


# -- Reading the files: bounded in size, nesting and alias expansion --------------------------


class _YamlLimitError(Exception):
    pass


class _BoundedSafeLoader(yaml.SafeLoader):
    """yaml.SafeLoader with bounded nesting and alias expansion.

    Anchors and aliases are allowed (to share a block between destinations), but the document
    they expand to is capped at MAX_YAML_NODES nodes, so an alias bomb ("billion laughs") is
    refused before anything is built from it.
    """

    def __init__(self, stream: str) -> None:
        super().__init__(stream)
        self._depth = 0

    def compose_node(self, parent: Any, index: Any) -> Any:
        self._depth += 1
        try:
            if self._depth > MAX_YAML_DEPTH:
                raise _YamlLimitError(f"nested more than {MAX_YAML_DEPTH} levels deep")
            return super().compose_node(parent, index)
        finally:
            self._depth -= 1

    def compose_document(self) -> Any:
        node = super().compose_document()
        _check_expansion(node)
        return node


def _check_expansion(root: yaml.Node) -> None:
    """Count the nodes of the document with every alias expanded (shared nodes memoised)."""
    size: dict[int, int] = {}
    stack: list[tuple[yaml.Node, bool]] = [(root, False)]
    on_path: set[int] = set()
    while stack:
        node, children_done = stack.pop()
        if id(node) in size:
            continue
        children: list[yaml.Node] = []
        if isinstance(node, yaml.SequenceNode):
            children = list(node.value)
        elif isinstance(node, yaml.MappingNode):
            children = [n for pair in node.value for n in pair]
        if children_done:
            on_path.discard(id(node))
            size[id(node)] = 1 + sum(size[id(c)] for c in children)
            if size[id(node)] > MAX_YAML_NODES:
                raise _YamlLimitError(
                    f"its anchors and aliases expand to more than {MAX_YAML_NODES:,} nodes "
                    "(an alias bomb?); aliases are allowed, but their expansion is capped"
                )
            continue
        if id(node) in on_path:
            raise _YamlLimitError("an alias refers to a node that contains it (a cycle)")
        on_path.add(id(node))
        stack.append((node, True))
        stack.extend((c, False) for c in children if id(c) not in size)


class _ConfigFile:
    """A configuration file's items, and the YAML nodes they were built from (for lines)."""

    def __init__(self, path: Path, items: list[Any], nodes: list[Any]) -> None:
        self.path = path
        self.items = items
        self.nodes = nodes

    def line(self, index: int, keys: tuple[str | int, ...] = ()) -> int | None:
        """1-based line of item `index`'s deepest key of `keys` that is present."""
        node = self.nodes[index] if index < len(self.nodes) else None
        if node is None:
            return None
        line = node.start_mark.line + 1
        for key in keys:
            found = _child(node, key)
            if found is None:
                break
            key_node, node = found
            line = key_node.start_mark.line + 1
        return line

    def where(self, index: int, keys: tuple[str | int, ...] = ()) -> str:
        line = self.line(index, keys)
        return f"{self.path}:{line}" if line else str(self.path)

    def key_lines(self, index: int, item: str, depth: int = 4) -> dict[tuple[str, ...], int]:
        """(file name, item, *keys) -> line, for every key of the item down to `depth`."""
        node = self.nodes[index] if index < len(self.nodes) else None
        if node is None:
            return {}
        prefix = (self.path.name, item)
        found = {prefix: node.start_mark.line + 1}
        stack = [(prefix, node)]
        while stack:
            keys, parent = stack.pop()
            if not isinstance(parent, yaml.MappingNode) or len(keys) - 2 >= depth:
                continue
            for key_node, value_node in parent.value:
                if isinstance(key_node, yaml.ScalarNode) and len(key_node.value) <= 200:
                    path = (*keys, key_node.value)
                    found.setdefault(path, key_node.start_mark.line + 1)
                    stack.append((path, value_node))
        return found


def _child(node: Any, key: str | int) -> tuple[Any, Any] | None:
    """(key node, value node) of `key` in a mapping node, or of index `key` in a sequence."""
    if isinstance(node, yaml.MappingNode):
        for key_node, value_node in node.value:
            if isinstance(key_node, yaml.ScalarNode) and key_node.value == str(key):
                return key_node, value_node
    elif isinstance(node, yaml.SequenceNode) and isinstance(key, int) and key < len(node.value):
        return node.value[key], node.value[key]
    return None


def _malformed(path: Path, error: yaml.YAMLError) -> str:
    """`<path>:<line>:<column>: malformed YAML: <problem>`, without PyYAML's own copy."""
    if not isinstance(error, yaml.MarkedYAMLError) or error.problem_mark is None:
        return f"{path}: malformed YAML: {_clip(str(error), 300)}"
    mark = error.problem_mark
    context = ""
    if error.context:
        start = error.context_mark
        at = f" at line {start.line + 1}" if start is not None and start.line != mark.line else ""
        context = f" ({_clip(error.context, 100)}{at})"
    problem = _clip(error.problem or "syntax error", 200)
    hint = ""
    if "block" in problem or "mapping values are not allowed" in problem:
        hint = ". Check the indentation of this line and the lines above it"
    return f"{path}:{mark.line + 1}:{mark.column + 1}: malformed YAML: {problem}{context}{hint}"


def _read_yaml(path: Path, top_key: str) -> _ConfigFile:
    if not path.is_file():
        raise ConfigError(f"{path}: file not found (expected a YAML file with a '{top_key}' list)")
    root, document = _load_yaml(path)
    expected = f"expected a top-level '{top_key}:' list"
    _require_top_key(path, document, top_key, expected)
    located = _child(root, top_key)
    if not isinstance(document[top_key], list):
        line = f":{located[0].start_mark.line + 1}" if located else ""
        raise ConfigError(f"{path}{line}: {expected}, not {type(document[top_key]).__name__}")
    items = located[1] if located else None
    nodes = list(items.value) if isinstance(items, yaml.SequenceNode) else []
    return _ConfigFile(path, document[top_key], nodes)


def _load_yaml(path: Path) -> tuple[Any, Any]:
    """(root node, document) of a YAML file, bounded in size, nesting and alias expansion."""
    with path.open("rb") as stream:
        data = stream.read(MAX_CONFIG_FILE_BYTES + 1)
    if len(data) > MAX_CONFIG_FILE_BYTES:
        raise ConfigError(
            f"{path}: larger than {MAX_CONFIG_FILE_BYTES // 1024} KiB; a configuration file "
            "this big is refused"
        )
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as error:
        raise ConfigError(f"{path}: not UTF-8 text (byte {error.start + 1})") from None
    loader = _BoundedSafeLoader(text)
    try:
        root = loader.get_single_node()
        document = loader.construct_document(root) if root is not None else None
    except _YamlLimitError as error:
        raise ConfigError(f"{path}: refused: {error}") from None
    except RecursionError:
        raise ConfigError(f"{path}: refused: nested too deeply") from None
    except yaml.YAMLError as error:
        raise ConfigError(_malformed(path, error)) from None
    finally:
        loader.dispose()
    return root, document


def _require_top_key(path: Path, document: Any, top_key: str, expected: str) -> None:
    if not isinstance(document, dict):
        raise ConfigError(f"{path}: {expected}")
    if top_key not in document:
        keys = [str(k) for k in document][:50]
        close = difflib.get_close_matches(top_key, keys, n=1, cutoff=0.6)
        found = (
            f" (found '{_clip(close[0], 40)}:'; did you mean '{top_key}:'?)"
            if close
            else f" (found {', '.join(repr(_clip(k, 40)) for k in keys[:5])})"
            if keys
            else ""
        )
        raise ConfigError(f"{path}: {expected}{found}")


def _read_profile_source(root: Path) -> tuple[ProfileSourceSpec, list[ConfigProblem]]:
    """<data dir>/profile_source.yaml, parsed: the spec, or the files' spec and its problems.

    Every problem concerns the whole configuration (nothing can run on a wrong source).
    """
    path = root / PROFILE_SOURCE_FILE
    if not path.exists():
        return ProfileSourceSpec(), []
    if not path.is_file():
        raise ConfigError(f"{path}: not a regular file")
    top_key = "profile_source"
    node, document = _load_yaml(path)
    expected = f"expected a top-level '{top_key}:' mapping (kind: files, sql or delta)"
    _require_top_key(path, document, top_key, expected)
    problems = [
        ConfigProblem(
            f"{path}:{key_node.start_mark.line + 1}: unknown top-level key "
            f"{_clip(str(key_node.value), 40)!r}{_did_you_mean(str(key_node.value), [top_key])}"
            f" (only '{top_key}:' is allowed)"
        )
        for key_node, _ in (node.value if isinstance(node, yaml.MappingNode) else [])
        if isinstance(key_node, yaml.ScalarNode) and key_node.value != top_key
    ]
    located = _child(node, top_key)
    value = document[top_key]
    if not isinstance(value, dict):
        line = f":{located[0].start_mark.line + 1}" if located else ""
        raise ConfigError(f"{path}{line}: {expected}, not {type(value).__name__}")
    file = _ConfigFile(path, [value], [located[1]] if located else [])
    try:
        spec = ProfileSourceSpec.model_validate(value)
    except ValidationError as error:
        problems += [
            ConfigProblem(
                f"{file.where(0, tuple(e['loc']))}: {top_key}: {_describe(ProfileSourceSpec, e)}"
            )
            for e in error.errors()
        ]
        return ProfileSourceSpec(), problems
    problems += [
        ConfigProblem(f"{file.where(0, keys)}: {top_key}: {message}")
        for keys, message in spec.problems()
    ]
    return spec, problems


def _fields_at(model: type[BaseModel], keys: tuple[Any, ...]) -> list[str]:
    """The keys allowed at `keys` inside `model` (nested models, dict values), else []."""
    current: Any = model
    for key in keys:
        if isinstance(current, type) and issubclass(current, BaseModel):
            field = current.model_fields.get(str(key))
            if field is None:
                return []
            current = field.annotation
        elif get_origin(current) is dict and len(get_args(current)) == 2:
            current = get_args(current)[1]  # a name chosen by the user, then its value
        else:
            return []
    if isinstance(current, type) and issubclass(current, BaseModel):
        return list(current.model_fields)
    return []


def _keys_text(keys: tuple[Any, ...]) -> str:
    text = ""
    for key in keys:
        if isinstance(key, int):
            text += f"[{key}]"
        else:
            text += f"{'.' if text else ''}{_clip(str(key), 100)}"
    return text


def _describe(model: type[BaseModel], error: Mapping[str, Any]) -> str:
    """One pydantic error, said plainly: the key, what is wrong, and a near miss if any."""
    keys = tuple(error["loc"])
    shown = _keys_text(keys)
    if error["type"] == "extra_forbidden" and keys:
        allowed = _fields_at(model, keys[:-1])
        hint = _did_you_mean(str(keys[-1]), allowed) or (
            f" (allowed here: {', '.join(allowed)})" if allowed else ""
        )
        return f"unknown key {shown!r}{hint}"
    if error["type"] == "missing":
        return f"required key {shown!r} is missing"
    message = re.sub(r"^(Value error|Assertion failed), ", "", str(error["msg"]))
    return f"{shown}: {message}" if shown else message


def _parse_items(
    file: _ConfigFile, model: type[_Strict], label: str
) -> tuple[list[tuple[int, Any]], list[ConfigProblem]]:
    """(index, parsed item) for each valid item, and one problem per error of the others."""
    parsed: list[tuple[int, Any]] = []
    problems: list[ConfigProblem] = []
    for index, item in enumerate(file.items):
        name = (
            item.get("name" if model is Destination else "id") if isinstance(item, dict) else None
        )
        named = isinstance(name, str) and 0 < len(name) <= MAX_ID_CHARS
        where = f"{label} {name!r}" if named else f"{label} #{index + 1}"
        owner = {label: name if named else f"#{index + 1}"}
        try:
            parsed.append((index, model.model_validate(item)))
        except ValidationError as error:
            problems.extend(
                ConfigProblem(
                    f"{file.where(index, tuple(e['loc']))}: {where}: {_describe(model, e)}",
                    **owner,
                )
                for e in error.errors()
            )
    return parsed, problems


def _duplicates(
    file: _ConfigFile, label: str, keyed: list[tuple[int, str]], key: str
) -> list[ConfigProblem]:
    """A problem for each item whose `key` an earlier item already has."""
    seen: set[str] = set()
    problems = []
    for index, value in keyed:
        if value in seen:
            problems.append(
                ConfigProblem(
                    f"{file.where(index, (key,))}: {label} {_clip(value)!r} is defined more "
                    "than once"
                )
            )
        seen.add(value)
    return problems


def _segment_problem(file: _ConfigFile, index: int, segment: Segment, root: Path) -> str | None:
    """What is wrong with a parsed segment's rule or membership file, if anything."""
    where = f"{file.where(index, ('rule',))}: segment {segment.id!r}"
    if segment.rule is not None:
        try:
            segment.expression  # noqa: B018 - parse now so a bad rule fails at load time
        except UnsafeExpressionError as error:
            return f"{where} rule is refused: {error}"
        except pl.exceptions.PolarsError as error:
            return f"{where} has an invalid rule {_clip(segment.rule)!r}: {_first_line(error)}"
    if segment.membership_file is not None:
        try:
            _check_membership_file(root, file.where(index, ("membership_file",)), segment)
        except ConfigError as error:
            return str(error)
    return None


def _destination_problems(
    file: _ConfigFile,
    index: int,
    destination: Destination,
    known: set[str],
    invalid_segments: set[str],
    segments_file: str,
) -> list[str]:
    """What is wrong with a parsed destination on its own (not its segments' own errors)."""
    label = f"destination {destination.name!r}"
    problems = []
    for key in ("segments", "exclude_segments"):
        for position, segment_id in enumerate(getattr(destination, key)):
            if segment_id in known or segment_id in invalid_segments:
                continue
            problems.append(
                f"{file.where(index, (key, position))}: {label} {key} names segment "
                f"{_clip(segment_id)!r}, which {segments_file} does not define"
                f"{_did_you_mean(segment_id, known)}. Defined segments: "
                f"{', '.join(sorted(known))}"
            )
    both = set(destination.segments) & set(destination.exclude_segments)
    if both:
        problems.append(
            f"{file.where(index, ('exclude_segments',))}: {label} both includes and excludes "
            f"segment(s) {', '.join(sorted(both))}"
        )
    for field, value in destination.field_mapping.sources().items():
        if COLUMN_NAME.match(value):
            continue
        where = f"{file.where(index, ('field_mapping', *field.split('.')))}: {label} maps "
        try:
            value_expression(value)
        except UnsafeExpressionError as error:
            problems.append(f"{where}field_mapping.{field}: refused: {error}")
        except pl.exceptions.PolarsError as error:
            problems.append(
                f"{where}field_mapping.{field} to an invalid SQL expression "
                f"{_clip(value)!r}: {_first_line(error)}"
            )
    return problems


def _check_membership_file(root: Path, located: str, segment: Segment) -> None:
    where = f"{located}: segment {segment.id!r} membership_file"
    try:
        resolved = (root / str(segment.membership_file)).resolve(strict=True)
    except (OSError, RuntimeError):
        raise ConfigError(f"{where} {segment.membership_file!r} not found in {root}") from None
    if not resolved.is_relative_to(root):
        raise ConfigError(
            f"{where} {segment.membership_file!r} resolves (through a symbolic link) outside "
            f"the data directory {root}: refused"
        )
    if not resolved.is_file():
        raise ConfigError(f"{where} {segment.membership_file!r} is not a regular file")


# SendGrid fields that hold a contact's identity rather than a value of it.
_IDENTITY_FIELDS = ("email",)


def _account_fields(destination: Destination) -> dict[str, tuple[str, str, str | None]]:
    """SendGrid field key -> (mapping key, normalised source, custom field type)."""
    mapping = destination.field_mapping
    fields: dict[str, tuple[str, str, str | None]] = {
        field: (f"field_mapping.{field}", source, None)
        for field, source in mapping.as_dict().items()
        if field not in _IDENTITY_FIELDS
    }
    for name, custom in mapping.custom_fields.items():
        # SendGrid custom field names are unique ignoring case
        fields[f"custom_fields.{name.lower()}"] = (
            f"field_mapping.custom_fields.{name}",
            custom.source,
            custom.type,
        )
    return fields


def _check_shared_contact_fields(
    path: Path,
    destinations: list[Destination],
    locate: Callable[[str, str], str] | None = None,
) -> None:
    """Destinations of one SendGrid account must agree on every field they both send.

    SendGrid keeps one contact per email for the whole account, shared by all of its lists,
    and each upsert overwrites the fields it carries: two destinations feeding one field from
    different sources would overwrite each other on every sync. Destinations with the same
    api_key_env are taken to be one account. Identifiers other than email must be mapped by
    every destination of the account, identically: SendGrid requires all of a contact's
    identifiers on each update (see "Add or Update a Contact",
    https://www.twilio.com/docs/sendgrid/api-reference/contacts/add-or-update-a-contact).
    `locate(destination, dotted key)` gives the `<path>:<line>` an error starts with.
    """
    where = locate or (lambda _name, _key: str(path))
    accounts: dict[str, list[Destination]] = {}
    for destination in destinations:
        accounts.setdefault(destination.api_key_env, []).append(destination)
    for env, group in accounts.items():
        if len(group) < 2:
            continue
        account = (
            f"destinations of one SendGrid account (api_key_env {env}; SendGrid keeps one "
            "contact per email for the account, shared by all its lists)"
        )
        first: dict[str, tuple[Destination, tuple[str, str, str | None]]] = {}
        for destination in group:
            for field, mapped in _account_fields(destination).items():
                if field not in first:
                    first[field] = (destination, mapped)
                    continue
                other, (other_key, other_source, other_type) = first[field]
                key, source, kind = mapped
                if normalized_source(source) == normalized_source(other_source) and (
                    kind == other_type
                ):
                    continue
                typed = f" ({other_type} vs {kind})" if kind != other_type else ""
                raise ConfigError(
                    f"{where(destination.name, key)}: {account} map one field differently{typed}: "
                    f"{other.name!r} maps {other_key} to {_clip(other_source)!r}"
                    f"{f' as {other_type}' if other_type else ''}, but "
                    f"{destination.name!r} maps {key} to {_clip(source)!r}"
                    f"{f' as {kind}' if kind else ''}. Each sync would overwrite the other's "
                    "value: map the field identically in both, or in one of them only"
                )
        for identifier in IDENTIFIER_FIELDS:
            mapping = [d.name for d in group if getattr(d.field_mapping, identifier)]
            missing = [d.name for d in group if not getattr(d.field_mapping, identifier)]
            if mapping and missing:
                raise ConfigError(
                    f"{where(missing[0], 'field_mapping')}: {account}: "
                    f"{', '.join(map(repr, mapping))} map the identifier "
                    f"field_mapping.{identifier} but {', '.join(map(repr, missing))} do not. "
                    "SendGrid requires every identifier a contact has on each update: map "
                    f"{identifier} identically in every destination of the account"
                )


_ACCOUNT_LIMIT_KEYS = ("max_contacts", "contact_limit_margin")
_ACCOUNT_SUPPRESSION_KEYS = ("suppression_kinds", "suppression_group_ids")


def _account_disagreement(
    destinations: list[Destination],
    keys: tuple[str, ...],
    same: Callable[[Any, Any], bool] = operator.eq,
) -> tuple[str, Destination, Destination, str] | None:
    """The first setting that a destination of an account (same api_key_env) states unlike
    the account's first destination: (api_key_env, first, other, key), or None."""
    accounts: dict[str, list[Destination]] = {}
    for destination in destinations:
        accounts.setdefault(destination.api_key_env, []).append(destination)
    for env, group in accounts.items():
        first = group[0]
        for destination in group[1:]:
            for key in keys:
                if not same(getattr(destination, key), getattr(first, key)):
                    return env, first, destination, key
    return None


def _check_shared_account_limit(
    path: Path,
    destinations: list[Destination],
    locate: Callable[[str, str], str] | None = None,
) -> None:
    """Destinations of one SendGrid account (same api_key_env) must state one contact limit.

    The limit is the account's, not a list's: a destination that left it out (or set another
    figure) would sync unchecked or against a different bound into the same account.
    """
    found = _account_disagreement(destinations, _ACCOUNT_LIMIT_KEYS)
    if found is None:
        return
    env, first, destination, key = found
    where = locate(destination.name, key) if locate else str(path)
    mine, theirs = getattr(destination, key), getattr(first, key)
    raise ConfigError(
        f"{where}: destinations of one SendGrid account "
        f"(api_key_env {env}) state its contact limit differently: {first.name!r} "
        f"has {key}: {'null' if theirs is None else theirs}, {destination.name!r} "
        f"has {key}: {'null' if mine is None else mine}. The limit is the "
        "account's: set max_contacts and contact_limit_margin identically in "
        "every destination with this api_key_env"
    )


def _check_shared_suppression_settings(
    path: Path,
    destinations: list[Destination],
    locate: Callable[[str, str], str] | None = None,
) -> None:
    """Destinations of one SendGrid account must name the same suppressions to read.

    The suppressions are the account's and are read once per account: two destinations
    asking for different kinds or groups would leave it unclear what the account's frame holds.
    """
    found = _account_disagreement(
        destinations, _ACCOUNT_SUPPRESSION_KEYS, lambda a, b: sorted(a) == sorted(b)
    )
    if found is None:
        return
    env, first, destination, key = found
    where = locate(destination.name, key) if locate else str(path)
    mine, theirs = getattr(destination, key), getattr(first, key)
    raise ConfigError(
        f"{where}: destinations of one SendGrid account "
        f"(api_key_env {env}) read its suppressions differently: {first.name!r} "
        f"has {key}: {list(theirs)}, {destination.name!r} has {key}: "
        f"{list(mine)}. Suppressions are the account's: set {key} identically "
        "in every destination with this api_key_env"
    )


def load_config(
    directory: Path | str | None = None, *, skip_invalid_destinations: bool = False
) -> PipelineConfig:
    """Load and cross-check segments.yaml and destinations.yaml of a data directory.

    Every error is collected, one line each naming the file, line, segment or destination and
    key, and raised as one ConfigError. With `skip_invalid_destinations`, a destination whose
    own entry is invalid, or that uses an invalid segment, is left out instead (its errors are
    kept in `problems`); an error that concerns every destination (a file that cannot be read,
    a duplicate name or list id, destinations of one account mapping a field differently) or
    that leaves no destination still raises.
    """
    root = data_dir(directory)
    profile_source, source_problems = _read_profile_source(root)
    segments_file = _read_yaml(root / "segments.yaml", "segments")
    parsed_segments, problems = _parse_items(segments_file, Segment, "segment")
    problems += source_problems
    problems += _duplicates(segments_file, "segment", [(i, s.id) for i, s in parsed_segments], "id")
    segments: list[tuple[int, Segment]] = []
    for index, segment in parsed_segments:
        problem = _segment_problem(segments_file, index, segment, root)
        if problem is None:
            segments.append((index, segment))
        else:
            problems.append(ConfigProblem(problem, segment=segment.id))
    invalid_segments = {p.segment for p in problems if p.segment}

    try:
        destinations_file = _read_yaml(root / "destinations.yaml", "destinations")
    except ConfigError as error:  # nothing more can be checked: report what was found so far
        raise ConfigError("\n".join([*(p.message for p in problems), str(error)])) from None
    parsed_destinations, found = _parse_items(destinations_file, Destination, "destination")
    problems += found
    problems += _duplicates(
        destinations_file, "destination", [(i, d.name) for i, d in parsed_destinations], "name"
    )
    problems += _duplicates(
        destinations_file, "list_id", [(i, d.list_id) for i, d in parsed_destinations], "list_id"
    )
    known = {s.id for _, s in segments}
    destinations: list[tuple[int, Destination]] = []
    for index, destination in parsed_destinations:
        own = _destination_problems(
            destinations_file, index, destination, known, invalid_segments, segments_file.path.name
        )
        problems += [ConfigProblem(m, destination=destination.name) for m in own]
        if not own:
            destinations.append((index, destination))

    lines: dict[tuple[str, ...], int] = {}
    for index, segment in reversed(segments):  # the first of duplicates wins
        lines.update(segments_file.key_lines(index, segment.id))
    for index, destination in reversed(destinations):
        lines.update(destinations_file.key_lines(index, destination.name))
    config = PipelineConfig(
        data_dir=root,
        segments=tuple(s for _, s in segments),
        destinations=tuple(d for _, d in destinations),
        profile_source=profile_source,
        lines=lines,
    )

    def locate(name: str, key: str) -> str:
        return config.where("destinations.yaml", name, *key.split("."))

    # What one SendGrid account's destinations must agree on: each check reports on its own.
    for check in (
        _check_shared_contact_fields,
        _check_shared_account_limit,
        _check_shared_suppression_settings,
    ):
        try:
            check(destinations_file.path, list(config.destinations), locate)
        except ConfigError as error:
            problems.append(ConfigProblem(str(error)))
    return config.without(problems, skip=skip_invalid_destinations)
