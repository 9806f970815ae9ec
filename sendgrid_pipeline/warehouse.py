"""Profiles from a PostgreSQL warehouse: a SQL query or a table, read with `pl.read_database_uri`.

The same contract as the profile files (`profile_source.FileProfileSource`):

- `schema(text_columns)` runs the query wrapped in ``SELECT * FROM (<query>) AS q LIMIT 0``:
  the server plans it and names the result columns and their types; no row is read.
- `read(text_columns)` reads every row in one query through `pl.read_database_uri` (ADBC by
  default; connectorx on request). `text_columns` and customer_id are cast to text in SQL,
  so postal codes and ids arrive exactly as the database renders them (leading zeros kept).
- Other columns get the types the profile files give: integers Int64, decimals Float64
  (numeric included), dates, timestamps (timestamptz in UTC), booleans and text. Any other
  PostgreSQL type (uuid, json, interval, arrays...) is read as its PostgreSQL text.
- `fingerprint()` is ``count(*)`` and ``max(<updated_at_column>)`` of the result, computed by
  the server; without an updated_at column, ``count(*)`` and an order-independent sum of a
  hash of every row's text (a full scan, so set `updated_at_column` on large tables).
- Rows are numbered in the order the query returns them: add an ORDER BY to the query for
  row numbers that are stable from one run to the next.

The query runs inside a sub-select, so it can only read: one statement, no data-modifying
WITH, and the metadata connection is read-only. The URI is a secret: it is never logged, never
shown in a repr, and every message shows it with the password masked (``user:***@host``).
Nothing is retried here: a failure raises `ProfileDataError` (marked `retryable` when the
server could not be reached), and the run's retry policy decides.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any, Literal
from urllib.parse import parse_qsl, quote, unquote, urlencode, urlsplit, urlunsplit

import dagster as dg
import polars as pl
from pydantic import Field, model_validator

from sendgrid_pipeline.errors import ProfileDataError
from sendgrid_pipeline.profile_source import ProfileSource

SCHEMES = ("postgresql", "postgres")
MASK = "***"
DEFAULT_CONNECT_TIMEOUT = 10
# Query parameters of a libpq URI that hold secrets (masked like the password).
_SECRET_PARAMS = {"password", "sslpassword", "passfile", "sslkey"}
# A qualified table name: dot-separated identifiers, each plain or double-quoted.
_IDENTIFIER = r'(?:[A-Za-z_][A-Za-z0-9_$]*|"(?:[^"]|"")+")'
_TABLE_NAME = re.compile(rf"{_IDENTIFIER}(?:\.{_IDENTIFIER}){{0,2}}")
_USERINFO = re.compile(r"://(?P<user>[^:@/?#]*):(?P<password>[^@]*)@")
# Messages of a server that may answer later (the run may retry); anything else is not.
_TRANSIENT = (
    "connection refused",
    "timeout expired",
    "timed out",
    "server closed the connection",
    "the database system is starting up",
    "the database system is shutting down",
    "too many connections",
    "could not receive data",
    "could not send data",
    "no route to host",
    "network is unreachable",
)

# PostgreSQL type OID -> (cast to apply in SQL, or "" for none; the Polars type it reads as).
# Anything not listed is cast to text.
_INT, _FLOAT = ("int8", pl.Int64()), ("float8", pl.Float64())
_TYPES: dict[int, tuple[str, pl.DataType]] = {
    16: ("", pl.Boolean()),  # bool
    20: ("", pl.Int64()),  # int8
    21: _INT,  # int2
    23: _INT,  # int4
    25: ("", pl.String()),  # text
    700: _FLOAT,  # float4
    701: ("", pl.Float64()),  # float8
    1700: _FLOAT,  # numeric
    1042: ("text", pl.String()),  # bpchar (char(n))
    1043: ("text", pl.String()),  # varchar
    19: ("text", pl.String()),  # name
    1082: ("", pl.Date()),  # date
    1114: ("", pl.Datetime("us")),  # timestamp
    1184: ("", pl.Datetime("us", "UTC")),  # timestamptz
}
_TEXT = ("text", pl.String())


# -- the URI, never shown with its password ------------------------------------------------------
def mask_uri(uri: str) -> str:
    """The URI with its password (and any secret query parameter) replaced by ***."""
    try:
        parts = urlsplit(uri)
        netloc = parts.netloc
        if "@" in netloc:
            userinfo, host = netloc.rsplit("@", 1)
            if ":" in userinfo:
                userinfo = f"{userinfo.split(':', 1)[0]}:{MASK}"
            netloc = f"{userinfo}@{host}"
        query = "&".join(
            f"{key}={MASK if key.lower() in _SECRET_PARAMS else quote(value, safe='')}"
            for key, value in parse_qsl(parts.query, keep_blank_values=True)
        )
        masked = urlunsplit(parts._replace(netloc=netloc, query=query))
    except ValueError:
        return scrub(_USERINFO.sub(lambda m: f"://{m['user']}:{MASK}@", uri), uri)
    # Masked where it sits already; a copy elsewhere in the URI is masked too, unless the
    # secret is so short (a 1-3 character password) that masking it would mangle the URI.
    for secret in _secrets(uri):
        if len(secret) >= 4:
            masked = masked.replace(secret, MASK)
    return masked


def _secrets(uri: str) -> list[str]:
    """Every form in which the URI's password (or another secret parameter) may be echoed."""
    found: set[str] = set()
    for match in _USERINFO.finditer(uri):
        found.add(match["password"])
    try:
        parts = urlsplit(uri)
        if parts.password:
            found.add(parts.password)
        for key, value in parse_qsl(parts.query, keep_blank_values=True):
            if key.lower() in _SECRET_PARAMS:
                found.add(value)
                found.add(quote(value, safe=""))
    except ValueError:
        pass
    found |= {unquote(secret) for secret in found}
    return sorted((s for s in found if s and s != MASK), key=len, reverse=True)


def scrub(text: str, uri: str) -> str:
    """`text` with every form of the URI's secrets replaced by ***."""
    for secret in _secrets(uri):
        text = text.replace(secret, MASK)
    return _USERINFO.sub(lambda m: f"://{m['user']}:{MASK}@", text)


def _first_lines(error: BaseException, limit: int = 3) -> str:
    lines = [line.strip() for line in str(error).strip().splitlines() if line.strip()]
    return " ".join(lines[:limit]) if lines else type(error).__name__


def _is_transient(message: str) -> bool:
    lowered = message.lower()
    return any(marker in lowered for marker in _TRANSIENT)


def quote_identifier(name: str) -> str:
    return '"' + name.replace('"', '""') + '"'


@dataclass(frozen=True)
class LocatedRows:
    """Profiles read from one query or table; `describe` names a row as the files do."""

    frame: pl.DataFrame
    origin: str  # "query", "table public.profiles", "Delta table version 3"
    row_note: str = "rows are numbered in the order the query returns them"

    def describe(self, index: int) -> str:
        """`query row 12` for `frame` row `index` (0-based); rows in the order read."""
        if not 0 <= index < self.frame.height:
            raise IndexError(index)
        return f"{self.origin} row {index + 1}"

    @property
    def origins(self) -> tuple[str, ...]:
        """Where the rows came from, for run metadata (the files' names, for files)."""
        return (self.origin,)


@dataclass(frozen=True)
class _Column:
    name: str
    cast: str  # SQL type to cast to, or "" to read as is
    dtype: pl.DataType


class SqlProfileSource(ProfileSource):
    """Unified profiles from a PostgreSQL query or table (exactly one of `query` and `table`)."""

    uri: str = Field(
        repr=False,
        description="Database URI, postgresql://user:password@host:5432/database (a secret: "
        "pass it as dg.EnvVar(...); messages show it with the password masked). Special "
        "characters in the password must be percent-encoded.",
    )
    query: str | None = Field(
        default=None,
        description="A SELECT returning one row per profile (with a customer_id column); it "
        "runs as a sub-select, so it can only read. Add ORDER BY for stable row numbers.",
    )
    table: str | None = Field(
        default=None,
        description="A table or view to read whole, such as analytics.profiles (plain or "
        'double-quoted identifiers: "Profiles").',
    )
    updated_at_column: str | None = Field(
        default=None,
        description="A column that changes whenever a profile changes; the change "
        "fingerprint is then count(*) and its max(), cheap with an index. Without it, the "
        "fingerprint hashes every row (a full scan).",
    )
    engine: Literal["adbc", "connectorx"] = Field(
        default="adbc",
        description="How rows are read: 'adbc' (adbc-driver-postgresql) or 'connectorx' "
        "(needs the connectorx and pyarrow packages).",
    )
    connect_timeout: int = Field(
        default=DEFAULT_CONNECT_TIMEOUT,
        gt=0,
        description="Seconds to wait for a connection before failing.",
    )

    @model_validator(mode="after")
    def _one_source(self) -> SqlProfileSource:
        has_query = bool(self.query and self.query.strip())
        has_table = bool(self.table and self.table.strip())
        if has_query == has_table:
            raise ValueError("SqlProfileSource: set exactly one of 'query' and 'table'")
        if has_table and not _TABLE_NAME.fullmatch(self.table.strip()):  # type: ignore[union-attr]
            raise ValueError(
                f"SqlProfileSource: table {self.table!r} is not a table name (such as "
                'profiles, analytics.profiles or "Profiles")'
            )
        return self

    # -- what the messages say -------------------------------------------------------------------
    @property
    def origin(self) -> str:
        return f"table {self.table.strip()}" if self.table else "query"

    @property
    def label(self) -> str:
        """`table analytics.profiles on postgresql://user:***@host:5432/db` (for messages)."""
        return f"{self.origin} on {mask_uri(self._uri)}"

    @property
    def _uri(self) -> str:
        """The URI's value (a dg.EnvVar is resolved when used outside a run, at load time)."""
        if isinstance(self.uri, dg.EnvVar):
            value = self.uri.get_value()
            if not value:
                raise ProfileDataError(
                    f"SqlProfileSource: environment variable {self.uri.env_var_name} (the "
                    "database URI) is not set"
                )
            return value
        return self.uri

    def _error(self, what: str, error: BaseException) -> ProfileDataError:
        detail = scrub(_first_lines(error), self._uri)
        failure = ProfileDataError(f"{self.label}: {what}: {detail}")
        failure.retryable = _is_transient(detail)
        return failure

    # -- SQL -------------------------------------------------------------------------------------
    @property
    def _source_sql(self) -> str:
        if self.table:
            return f"SELECT * FROM {self.table.strip()}"
        query = (self.query or "").strip()
        while query.endswith(";"):
            query = query[:-1].rstrip()
        return query

    def _wrapped(self, select: str, tail: str = "") -> str:
        # The query starts on line 1 (the server's LINE numbers are the query's own); a newline
        # before the closing paren, so a comment on the query's last line cannot swallow it.
        return f"SELECT {select} FROM ({self._source_sql}\n) AS q{tail}"

    def _checked_uri(self) -> str:
        uri = self._uri
        scheme = uri.split("://", 1)[0].lower() if "://" in uri else ""
        if scheme not in SCHEMES:
            shown = mask_uri(uri) if scheme else "(value not shown)"
            raise ProfileDataError(
                f"SqlProfileSource: the uri {shown} is not a PostgreSQL URI; expected "
                "postgresql://user:password@host:5432/database"
            )
        return uri

    @contextmanager
    def _cursor(self) -> Iterator[Any]:
        """A read-only cursor for the metadata queries (schema, fingerprint)."""
        import psycopg2

        uri = self._checked_uri()
        try:
            connection = psycopg2.connect(uri, connect_timeout=self.connect_timeout)
        except psycopg2.ProgrammingError as error:  # "invalid dsn"
            raise self._error("not a valid database URI", error) from None
        except psycopg2.Error as error:
            raise self._error("cannot connect", error) from None
        try:
            connection.set_session(readonly=True, autocommit=True)
            with connection.cursor() as cursor:
                yield cursor
        finally:
            connection.close()

    def _execute(self, cursor: Any, sql: str, what: str) -> None:
        import psycopg2

        try:
            cursor.execute(sql)
        except psycopg2.Error as error:
            raise self._error(what, error) from None

    def _columns(self, cursor: Any) -> list[tuple[str, int]]:
        what = "the query failed" if self.query else f"cannot read the {self.origin}"
        self._execute(cursor, self._wrapped("*", " LIMIT 0"), what)
        columns = [(c.name, c.type_code) for c in cursor.description]
        names = [name for name, _ in columns]
        repeated = sorted({n for n in names if names.count(n) > 1})
        if repeated:
            raise ProfileDataError(
                f"{self.label}: column name(s) {', '.join(map(repr, repeated))} appear more "
                "than once; give every column of the query its own name (AS ...)"
            )
        return columns

    def _plan(self, cursor: Any, text_columns: set[str]) -> list[_Column]:
        columns = self._columns(cursor)
        names = [name for name, _ in columns]
        if "customer_id" not in names:
            shown = ", ".join(map(repr, names[:20])) + (", ..." if len(names) > 20 else "")
            raise ProfileDataError(
                f"{self.label}: the {self.origin} has no customer_id column; its columns: "
                f"{shown or '(none)'}"
            )
        plan = []
        for name, oid in columns:
            cast, dtype = (
                _TEXT if name in text_columns | {"customer_id"} else _TYPES.get(oid, _TEXT)
            )
            if cast == "text" and oid == 25:
                cast = ""
            plan.append(_Column(name, cast, dtype))
        return plan

    # -- the four methods of a profile source ----------------------------------------------------
    def schema(self, text_columns: set[str] | None = None) -> pl.Schema:
        """Column names and types from the query's LIMIT 0 (no row is read)."""
        with self._cursor() as cursor:
            plan = self._plan(cursor, text_columns or set())
        return pl.Schema({column.name: column.dtype for column in plan})

    def fingerprint(self) -> str:
        """Changes when a profile is inserted, deleted or (see `updated_at_column`) updated."""
        with self._cursor() as cursor:
            if self.updated_at_column:
                names = [name for name, _ in self._columns(cursor)]
                if self.updated_at_column not in names:
                    raise ProfileDataError(
                        f"{self.label}: updated_at_column {self.updated_at_column!r} is not a "
                        f"column of the {self.origin}; its columns: {', '.join(names)}"
                    )
                changed = f"max(q.{quote_identifier(self.updated_at_column)})::text"
            else:
                changed = "coalesce(sum(hashtextextended(q::text, 0)), 0)::text"
            self._execute(
                cursor,
                self._wrapped(f"count(*), {changed}"),
                "cannot compute the change fingerprint",
            )
            count, latest = cursor.fetchone()
        digest = hashlib.sha256(
            f"{self.origin}\0{self._source_sql}\0{count}\0{latest}".encode()
        ).hexdigest()
        return digest[:16]

    def read(self, text_columns: set[str], columns: set[str] | None = None) -> pl.DataFrame:
        """Every profile; `text_columns` (and customer_id) are cast to text in SQL; with
        `columns`, only those (and customer_id) are selected."""
        return self.read_located(text_columns, columns).frame

    def read_located(self, text_columns: set[str], columns: set[str] | None = None) -> LocatedRows:
        """Like `read`; errors about a row name it as `query row N` (or `table ... row N`).

        With `columns`, the outer SELECT names only those (quoted), so the server plans the
        query for them alone; a column the query or table lacks is an error naming it.
        """
        with self._cursor() as cursor:
            plan = self._plan(cursor, text_columns)
        if columns is not None:
            plan = self._projected(plan, columns | {"customer_id"})
        select = ", ".join(
            f"q.{quote_identifier(c.name)}::{c.cast} AS {quote_identifier(c.name)}"
            if c.cast
            else f"q.{quote_identifier(c.name)}"
            for c in plan
        )
        try:
            frame = pl.read_database_uri(
                self._wrapped(select), self._engine_uri(), engine=self.engine
            )
        except (KeyboardInterrupt, SystemExit):
            raise
        except ImportError as error:
            raise ProfileDataError(
                f"{self.label}: the {self.engine} engine is not installed: {_first_lines(error, 1)}"
            ) from None
        except BaseException as error:  # driver errors, and a Rust panic on an odd Arrow type
            raise self._error(f"cannot read the {self.origin}", error) from None
        schema = {c.name: c.dtype for c in plan}
        if frame.schema != pl.Schema(schema):
            try:
                frame = frame.cast(schema)  # e.g. connectorx's nanosecond timestamps
            except pl.exceptions.PolarsError as error:
                raise self._error(
                    f"unexpected column types from the {self.origin}", error
                ) from None
        return LocatedRows(frame, self.origin)

    def _projected(self, plan: list[_Column], wanted: set[str]) -> list[_Column]:
        names = [column.name for column in plan]
        missing = sorted(wanted - set(names))
        if missing:
            shown = ", ".join(map(repr, names[:20])) + (", ..." if len(names) > 20 else "")
            raise ProfileDataError(
                f"{self.label}: the {self.origin} has no column(s) "
                f"{', '.join(map(repr, missing))}; its columns: {shown}"
            )
        return [column for column in plan if column.name in wanted]

    def _engine_uri(self) -> str:
        """The URI with a connect timeout (libpq's connect_timeout) unless it names one."""
        uri = self._checked_uri()
        if self.engine != "adbc":
            return uri
        try:
            parts = urlsplit(uri)
            params = parse_qsl(parts.query, keep_blank_values=True)
        except ValueError:
            return uri  # the driver reports what is wrong with it
        if any(key == "connect_timeout" for key, _ in params):
            return uri
        params.append(("connect_timeout", str(self.connect_timeout)))
        return urlunsplit(parts._replace(query=urlencode(params)))
