"""Where unified profiles come from: `ProfileSource`, and its files implementation.

`ProfileSource` is the resource the assets and the profile sensor use; `FileProfileSource`
(here), `warehouse.SqlProfileSource` and `delta_source.DeltaProfileSource` implement it, and
`<data dir>/profile_source.yaml` chooses one (see config.ProfileSourceSpec).

Every file is scanned and read on its own, then the files are concatenated, so an error names
the file, the row within it and the column. Rows are 1-based data rows within their file: a
CSV header is not counted (row 1 is the line after the header).

Column types:

- CSV files must be comma-separated UTF-8. Their types are inferred from each file's first
  10,000 data rows (inferring over the whole file, with date parsing, costs minutes at a
  million rows). A later value that does not fit is an error naming its row, column and
  value; only integers followed by decimals are accepted, as Float64.
- `text_columns` and customer_id are always read as text, never inferred.
- Across files, numeric types widen to one type (Int64 and Float64 give Float64). A Parquet
  file's type is authoritative: a CSV file is read with it (a value that does not fit is an
  error naming its row). Two Parquet files that disagree on a column (Int64 and String) are
  an error naming both. CSV files that disagree on a non-numeric type read the column as text.
  A file where the column holds no value at all takes the other files' type.
"""

from __future__ import annotations

import hashlib
import re
from abc import abstractmethod
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol

import dagster as dg
import polars as pl
from pydantic import Field

from sendgrid_pipeline.errors import ProfileDataError

PROFILE_SUFFIXES = (".parquet", ".csv")
INFER_ROWS = 10_000
EXPECTED_CSV = "expected a comma-separated UTF-8 CSV file"
CSV_ROW = "1-based data row, header not counted"
_DELIMITERS = {";": "semicolon", "\t": "tab", "|": "pipe"}
_PARSE_ERROR = re.compile(
    r"could not parse `(?P<value>.*)` as dtype `(?P<dtype>[^`]+)` "
    r"at column '(?P<column>.*)' \(column number \d+\)",
    re.DOTALL,
)
_DTYPE_WORDS = {"i": "an integer", "u": "an integer", "f": "a number"}


class Located(Protocol):
    """Profiles as read, and where each row came from (for errors naming a row)."""

    @property
    def frame(self) -> pl.DataFrame: ...

    @property
    def row_note(self) -> str:
        """How rows are numbered, for messages: "rows are 1-based data rows within ..."."""
        ...

    @property
    def origins(self) -> tuple[str, ...]:
        """Where the rows came from, for run metadata (file names, a table, a Delta version)."""
        ...

    def describe(self, index: int) -> str:
        """Where `frame` row `index` (0-based) came from: `profiles.csv row 12`."""
        ...


class ProfileSource(dg.ConfigurableResource):
    """Where the unified profiles come from: files, a SQL warehouse or a Delta table.

    Every source reads `text_columns` and customer_id as text, and raises ProfileDataError
    naming itself (`label`, never a secret) when it cannot be read.
    """

    @property
    @abstractmethod
    def label(self) -> str:
        """What messages and run metadata call this source (a directory, a masked URI...)."""

    @abstractmethod
    def fingerprint(self) -> str:
        """A short text that changes whenever the profiles change (for the profile sensor)."""

    @abstractmethod
    def schema(self, text_columns: set[str] | None = None) -> pl.Schema:
        """Column names and types without reading the rows (to validate the config)."""

    @abstractmethod
    def read_located(self, text_columns: set[str], columns: set[str] | None = None) -> Located:
        """Every profile, and where each row came from.

        `columns`: read only these (and customer_id), in the source's column order, the
        projection pushed down to the reader; a column the source lacks is a ProfileDataError
        naming it. None reads every column.
        """

    def read(self, text_columns: set[str], columns: set[str] | None = None) -> pl.DataFrame:
        """Every profile; `text_columns` (and customer_id) as text, never type-inferred;
        with `columns`, only those (and customer_id)."""
        return self.read_located(text_columns, columns).frame


@dataclass(frozen=True)
class LocatedProfiles:
    """The profiles, and which rows came from which file (in `frame` order)."""

    frame: pl.DataFrame
    files: tuple[tuple[Path, int], ...]  # (file, number of rows)
    row_note: str = "rows are 1-based data rows within each file, a CSV header not counted"

    @property
    def origins(self) -> tuple[str, ...]:
        """The files' names, in read order."""
        return tuple(file.name for file, _ in self.files)

    def locate(self, index: int) -> tuple[Path, int]:
        """The file and 1-based row within it of `frame` row `index` (0-based)."""
        for file, height in self.files:
            if index < height:
                return file, index + 1
            index -= height
        raise IndexError(index)

    def describe(self, index: int) -> str:
        """`profiles.csv row 12` for `frame` row `index` (0-based)."""
        file, row = self.locate(index)
        return f"{file.name} row {row}"


@dataclass
class _FilePlan:
    """How one file is read: its columns' types, and the types it must be read as."""

    file: Path
    schema: dict[str, pl.DataType]
    overrides: dict[str, pl.DataType] = field(default_factory=dict)
    reasons: dict[str, str] = field(default_factory=dict)  # why a column has its type
    has_values: dict[str, bool] = field(default_factory=dict)  # checked on type conflicts

    @property
    def is_csv(self) -> bool:
        return self.file.suffix.lower() == ".csv"

    def target_schema(self) -> dict[str, pl.DataType]:
        return {c: self.overrides.get(c, t) for c, t in self.schema.items()}


class FileProfileSource(ProfileSource):
    """Unified profiles as Parquet or CSV files in one directory (all files are concatenated)."""

    directory: str = Field(
        min_length=1,
        description="Directory of the profile files (*.parquet, *.csv), such as "
        "<data dir>/profiles.",
    )

    @property
    def path(self) -> Path:
        return Path(self.directory)

    @property
    def label(self) -> str:
        """The directory, as messages and run metadata name it."""
        return str(self.path)

    def files(self) -> list[Path]:
        """The profile files, in a stable order."""
        if not self.path.is_dir():
            raise ProfileDataError(f"{self.path}: profile directory not found")
        return sorted(p for p in self.path.iterdir() if p.suffix.lower() in PROFILE_SUFFIXES)

    def fingerprint(self) -> str:
        """Changes whenever a profile file is added, removed or rewritten (for the sensor)."""
        digest = hashlib.sha256()
        for file in self.files():
            stat = file.stat()
            digest.update(f"{file.name}\0{stat.st_size}\0{stat.st_mtime_ns}\n".encode())
        return digest.hexdigest()[:16]

    def schema(self, text_columns: set[str] | None = None) -> pl.Schema:
        """Column names and types without reading the data (used to validate the config)."""
        plans = self._plan(text_columns or set())
        merged: dict[str, pl.DataType] = {}
        for plan in plans:
            for column, dtype in plan.target_schema().items():
                merged.setdefault(column, dtype)
        return pl.Schema(merged)

    def read_located(
        self, text_columns: set[str], columns: set[str] | None = None
    ) -> LocatedProfiles:
        """Like `read`, and which rows came from which file (for errors naming the file).

        With `columns`, each file reads only those it has (polars' projection: the other
        CSV fields are not parsed, the other Parquet columns not fetched); a file without one
        gives it nulls, as a full read does, and a column no file has is an error.
        """
        plans = self._plan(text_columns, columns)
        wanted = None if columns is None else columns | {"customer_id"}
        parts = [
            (plan.file, _read_csv(plan, wanted) if plan.is_csv else _read_parquet(plan, wanted))
            for plan in plans
        ]
        frames = [frame for _, frame in parts]
        # Types already agree; only a numeric column widened while reading can still differ.
        frame = frames[0] if len(frames) == 1 else pl.concat(frames, how="diagonal_relaxed")
        return LocatedProfiles(frame, tuple((file, f.height) for file, f in parts))

    def _plan(self, text_columns: set[str], columns: set[str] | None = None) -> list[_FilePlan]:
        files = self.files()
        if not files:
            raise ProfileDataError(f"{self.path}: no profile files (expected *.parquet or *.csv)")
        plans = [_plan_file(file, text_columns) for file in files]
        if columns is not None:
            _check_projection(self.path, plans, columns)
        _unify(self.path, plans, None if columns is None else columns | {"customer_id"})
        return plans


def _check_projection(directory: Path, plans: list[_FilePlan], columns: set[str]) -> None:
    """A projected column must be in at least one file; the error names it and the files."""
    present = {c for plan in plans for c in plan.schema}
    missing = sorted(columns - present)
    if missing:
        names = ", ".join(plan.file.name for plan in plans[:10])
        more = ", ..." if len(plans) > 10 else ""
        shown = ", ".join(repr(c) for c in list(dict.fromkeys(present))[:20])
        raise ProfileDataError(
            f"{directory}: column(s) {', '.join(map(repr, missing))} in none of the profile "
            f"files ({names}{more}); their columns: {shown}"
        )


def _plan_file(file: Path, text_columns: set[str]) -> _FilePlan:
    try:
        if file.suffix.lower() == ".parquet":
            schema = dict(pl.scan_parquet(file).collect_schema())
            _require_customer_id(file, list(schema), "profile file")
            plan = _FilePlan(file, schema)
            for column in text_columns | {"customer_id"}:
                if column in schema and schema[column] != pl.String:
                    plan.overrides[column] = pl.String()
            return plan
        header = csv_header(file, "profile file")
        text = {c: pl.String() for c in text_columns | {"customer_id"} if c in header}
        try:
            schema = dict(_scan_csv(file, text).collect_schema())
        except pl.exceptions.PolarsError as error:
            raise csv_error(file, error, "profile file") from None
        return _FilePlan(file, schema, overrides=text)
    except ProfileDataError:
        raise
    except (pl.exceptions.PolarsError, OSError) as error:
        raise ProfileDataError(
            f"{file}: cannot read the profile file: {_first_line(error)}"
        ) from None


def _unify(directory: Path, plans: list[_FilePlan], only: set[str] | None = None) -> None:
    """Give every column (of `only`, when given: those read) one type across the files (see
    the module docstring for the rules)."""
    if len(plans) < 2:
        return
    for column in dict.fromkeys(c for plan in plans for c in plan.schema):
        if only is not None and column not in only:
            continue
        having = [(p, p.target_schema()[column]) for p in plans if column in p.schema]
        if len({t for _, t in having}) == 1:
            continue
        # A file where the column holds no value at all (a CSV column of empty cells reads
        # as String) does not vote: it takes the others' type.
        voters = [(p, t) for p, t in having if t != pl.Null and _has_values(p, column)]
        if voters:
            target, reason = _target_type(directory, column, voters)
        else:
            target, reason = _supertype(t for _, t in having), ""
        for plan, dtype in having:
            if dtype != target:
                plan.overrides[column] = target
                if reason:
                    plan.reasons[column] = reason


def _target_type(
    directory: Path, column: str, voters: list[tuple[_FilePlan, pl.DataType]]
) -> tuple[pl.DataType, str]:
    typed = [(p, t) for p, t in voters if not p.is_csv]
    guessed = [t for p, t in voters if p.is_csv]
    if typed:
        first, target = typed[0]
        for plan, dtype in typed[1:]:
            if dtype == target:
                continue
            if not (dtype.is_numeric() and target.is_numeric()):
                raise ProfileDataError(
                    f"{directory}: column {column!r} is {target} in {first.file.name} "
                    f"but {dtype} in {plan.file.name}; Parquet profile files must give a "
                    "column the same type (integer and decimal types may mix)"
                )
            target = _supertype([target, dtype])
        if target.is_numeric() and all(t.is_numeric() for t in guessed):
            target = _supertype([target, *guessed])
        return target, f"the type of column {column!r} in {first.file.name}"
    kinds = list(dict.fromkeys(guessed))
    if len(kinds) == 1 or all(t.is_numeric() for t in kinds):
        return _supertype(kinds), ""
    return pl.String(), ""  # CSV files disagree (Int64 and String, Date and String): text


def _has_values(plan: _FilePlan, column: str) -> bool:
    """Whether the column holds at least one value in the file (read on a type conflict)."""
    if column not in plan.has_values:
        if plan.is_csv:
            lazy = pl.scan_csv(plan.file, infer_schema=False).select(column)
        else:
            lazy = pl.scan_parquet(plan.file).select(column)
        try:
            has = lazy.select(pl.col(column).is_not_null().any()).collect()
            plan.has_values[column] = bool(has.item())
        except (pl.exceptions.PolarsError, OSError):
            plan.has_values[column] = True  # reading the file reports its problem
    return plan.has_values[column]


def _supertype(dtypes: Iterable[pl.DataType]) -> pl.DataType:
    empty = [pl.DataFrame(schema={"x": t}) for t in dtypes]
    return pl.concat(empty, how="vertical_relaxed").schema["x"]


def _scan_csv(file: Path, overrides: dict[str, pl.DataType]) -> pl.LazyFrame:
    return pl.scan_csv(
        file,
        schema_overrides=overrides,
        try_parse_dates=True,
        infer_schema_length=INFER_ROWS,
    )


def _projected(lazy: pl.LazyFrame, plan: _FilePlan, wanted: set[str] | None) -> pl.LazyFrame:
    """The file's share of a projection, in its own column order (polars pushes it down)."""
    if wanted is None:
        return lazy
    return lazy.select([c for c in plan.schema if c in wanted])


def _read_csv(plan: _FilePlan, wanted: set[str] | None = None) -> pl.DataFrame:
    schema = plan.target_schema()  # types already inferred: the read does not infer again
    for _ in range(len(schema) + 1):
        try:
            lazy = pl.scan_csv(plan.file, schema=schema, try_parse_dates=True)
            return _projected(lazy, plan, wanted).collect()
        except pl.exceptions.PolarsError as error:
            found = _PARSE_ERROR.search(str(error))
            if found and _widens_to_float(found["dtype"], _unquote(found["value"])):
                schema[found["column"]] = pl.Float64()  # integers, then decimals
                plan.reasons[found["column"]] = "the type of the column's other rows"
                continue
            raise csv_error(plan.file, error, "profile file", plan.reasons) from None
    raise ProfileDataError(f"{plan.file}: cannot read the profile file")  # pragma: no cover


def _read_parquet(plan: _FilePlan, wanted: set[str] | None = None) -> pl.DataFrame:
    lazy = _projected(pl.scan_parquet(plan.file), plan, wanted)
    casts = []
    for column, dtype in plan.overrides.items():
        if wanted is not None and column not in wanted:
            continue
        source = plan.schema[column]
        if source == pl.Null or not plan.has_values.get(column, True):
            casts.append(pl.lit(None, dtype=dtype).alias(column))
        elif dtype == pl.String:
            casts.append(as_text(column, source))
        else:
            casts.append(pl.col(column).cast(dtype))
    try:
        return (lazy.with_columns(casts) if casts else lazy).collect()
    except (pl.exceptions.PolarsError, OSError) as error:
        raise ProfileDataError(
            f"{plan.file}: cannot read the profile file: {_first_line(error)}"
        ) from None


def as_text(column: str, dtype: pl.DataType) -> pl.Expr:
    """A column as text; whole floats lose their `.0` (an id 42.0 is '42')."""
    value = pl.col(column)
    if dtype == pl.String:
        return value
    if dtype.is_float():
        whole = value.is_finite() & (value == value.round()) & (value.abs() < 2**63)
        return (
            pl.when(whole)
            .then(value.cast(pl.Int64, strict=False).cast(pl.String))
            .otherwise(value.cast(pl.String))
            .alias(column)
        )
    return value.cast(pl.String).alias(column)


def csv_header(file: Path, what: str) -> list[str]:
    """The header of a CSV file, checked: UTF-8, comma-separated, with a customer_id column."""
    if file.stat().st_size == 0:
        raise ProfileDataError(f"{file}: empty file (no header row)")
    try:
        header = pl.read_csv(file, n_rows=0, infer_schema=False, encoding="utf8-lossy").columns
    except pl.exceptions.PolarsError as error:
        raise ProfileDataError(f"{file}: cannot read the {what}: {_first_line(error)}") from None
    if not header or header == [""]:
        raise ProfileDataError(f"{file}: empty file (no header row)")
    if any("\ufffd" in name for name in header):
        raise ProfileDataError(
            f"{file}: the header (line 1) is not UTF-8 text ({', '.join(header)!r}, "
            f"undecodable bytes shown as \ufffd); {EXPECTED_CSV}: save it as UTF-8"
        )
    _require_customer_id(file, header, what)
    return header


def _require_customer_id(file: Path, columns: list[str], what: str) -> None:
    if "customer_id" in columns:
        return
    for delimiter, name in _DELIMITERS.items():
        if file.suffix.lower() == ".csv" and any(delimiter in c for c in columns):
            raise ProfileDataError(
                f"{file}: the header (line 1) is {name}-separated ({columns[0][:80]!r}); "
                f"{EXPECTED_CSV} with a customer_id column"
            )
    near = [c for c in columns if c.strip().lower().replace(" ", "_") == "customer_id"]
    hint = f" ({near[0]!r} must be spelled exactly customer_id)" if near else ""
    shown = ", ".join(repr(c) for c in columns[:20]) + (", ..." if len(columns) > 20 else "")
    raise ProfileDataError(
        f"{file}: the {what} has no customer_id column{hint}; its columns: {shown}"
    )


def csv_error(
    file: Path, error: Exception, what: str, reasons: dict[str, str] | None = None
) -> ProfileDataError:
    """A Polars CSV error as one naming the file, and where it can, the row and column."""
    message = str(error)
    prefix = f"{file}: cannot read the {what}"
    try:
        if "utf-8" in message.lower() or "utf8" in message.lower():
            return ProfileDataError(f"{prefix}: {_locate_bad_utf8(file)}")
        if "more fields than" in message:
            return ProfileDataError(f"{prefix}: {_locate_ragged_row(file)}")
        found = _PARSE_ERROR.search(message)
        if found:
            return ProfileDataError(f"{prefix}: {_locate_bad_value(file, found, reasons or {})}")
    except pl.exceptions.PolarsError:
        pass  # the file is too broken to locate the problem: say what Polars said
    return ProfileDataError(f"{prefix}: {_first_line(error)}")


def _row_index_name(columns: Iterable[str]) -> str:
    name = "__row"
    while name in columns:
        name += "_"
    return name


def _locate_bad_utf8(file: Path) -> str:
    lossy = pl.scan_csv(file, infer_schema=False, encoding="utf8-lossy")
    columns = lossy.collect_schema().names()
    index = _row_index_name(columns)
    bad = (
        lossy.with_row_index(index, offset=1)
        .filter(pl.any_horizontal(pl.col(c).str.contains("\ufffd", literal=True) for c in columns))
        .head(1)
        .collect()
    )
    if not bad.height:
        return f"not UTF-8 text; {EXPECTED_CSV}: save it as UTF-8"
    column = next(c for c in columns if "\ufffd" in (bad[c][0] or ""))
    return (
        f"row {bad[index][0]} ({CSV_ROW}), column {column!r}: not UTF-8 text "
        f"({_shorten(bad[column][0])!r}, undecodable bytes shown as \ufffd); {EXPECTED_CSV}: "
        "save it as UTF-8 (it may be Latin-1 or Windows-1252)"
    )


def _locate_ragged_row(file: Path) -> str:
    columns = pl.read_csv(file, n_rows=0, infer_schema=False, encoding="utf8-lossy").columns
    lines = pl.scan_csv(
        file,
        has_header=False,
        separator="\x1f",
        quote_char=None,
        schema={"line": pl.String},
        truncate_ragged_lines=True,
        encoding="utf8-lossy",
    )
    # Fields per line, not counting commas inside quoted values; only trusted when no quoted
    # value spans lines (then line N + 1 is data row N).
    fields = pl.col("line").str.replace_all(r'"(?:[^"]|"")*"', "").str.count_matches(",") + 1
    found = (
        lines.with_row_index("row")
        .filter((pl.col("row") > 0) & (fields > len(columns)))
        .select("row", fields.alias("fields"))
        .head(1)
        .collect()
    )
    if not found.height or not _one_line_per_row(file, lines):
        return (
            f"a row has more fields than the header has columns ({len(columns)}); a value "
            f"holding a comma must be quoted ({EXPECTED_CSV})"
        )
    return (
        f"row {found['row'][0]} ({CSV_ROW}) has {found['fields'][0]} fields but the header "
        f"has {len(columns)} columns; a value holding a comma must be quoted ({EXPECTED_CSV})"
    )


def _one_line_per_row(file: Path, lines: pl.LazyFrame) -> bool:
    """Whether every data row is one line (no quoted value spans lines): line numbers are rows."""
    rows = pl.scan_csv(file, infer_schema=False, truncate_ragged_lines=True, encoding="utf8-lossy")
    counts = pl.concat([rows.select(pl.len()), lines.select(pl.len() - 1)]).collect()
    return counts["len"][0] == counts["len"][1]


def _locate_bad_value(file: Path, found: re.Match[str], reasons: dict[str, str]) -> str:
    column, dtype, value = found["column"], found["dtype"], _unquote(found["value"])
    text = pl.scan_csv(file, infer_schema=False)
    index = _row_index_name(text.collect_schema().names())
    cell = pl.col(column)
    numeric = _numeric_dtype(dtype)
    rows = text.with_row_index(index, offset=1).select(index, column)
    located = rows.head(0).collect()
    if numeric is not None:  # the first value that does not parse, wherever Polars stopped
        failed = cell.is_not_null() & cell.cast(numeric, strict=False).is_null()
        located = rows.filter(failed).head(1).collect()
    if not located.height:
        located = rows.filter(cell == value).head(1).collect()
    where = f"row {located[index][0]} ({CSV_ROW}), " if located.height else ""
    if located.height:
        value = located[column][0]
    reason = reasons.get(column, f"the type inferred from the file's first {INFER_ROWS} data rows")
    word = _DTYPE_WORDS.get(dtype[:1], "") if numeric is not None else ""
    kind = f"{word} ({dtype})" if word else dtype
    return (
        f"{where}column {column!r}: {_shorten(value)!r} is not {kind}, {reason}; "
        "fix the value (a column holds one type of value)"
    )


def _numeric_dtype(dtype: str) -> pl.DataType | None:
    if re.fullmatch(r"[iu]\d+", dtype):
        return pl.Int64() if dtype[0] == "i" else pl.UInt64()
    if re.fullmatch(r"f\d+", dtype):
        return pl.Float64()
    return None


def _widens_to_float(dtype: str, value: str) -> bool:
    if not re.fullmatch(r"[iu]\d+", dtype):
        return False
    try:
        float(value)
    except ValueError:
        return False
    return True


def _unquote(value: str) -> str:
    if len(value) >= 2 and value[0] == value[-1] == '"':
        return value[1:-1].replace('""', '"')
    return value


def _shorten(value: str | None, limit: int = 80) -> str | None:
    return value if value is None or len(value) <= limit else value[: limit - 3] + "..."


def _first_line(error: Exception) -> str:
    text = str(error).strip()
    return text.splitlines()[0] if text else type(error).__name__
