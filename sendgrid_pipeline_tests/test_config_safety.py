"""The configuration files are untrusted input: they can neither read files nor crash the process.

Segment rules and mapped values are expressions over profile columns only (no subquery, no
table function), refused as text before the SQL parser sees them: parsing a subquery already
reads the files it names. Every input is bounded: file size, YAML nesting and aliases, names,
and the length and complexity of an expression.
"""

from __future__ import annotations

import ctypes
import os
import re
import subprocess
import sys
import tempfile
import textwrap
from pathlib import Path

import polars as pl
import pytest
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from sendgrid_pipeline.config import (
    MAX_BOOLEAN_TERMS,
    MAX_CONFIG_FILE_BYTES,
    MAX_EXPRESSION_CHARS,
    MAX_EXPRESSION_NESTING,
    PipelineConfig,
    Segment,
    UnsafeExpressionError,
    _check_parsed,
    check_expression,
    load_config,
    parse_expression,
)
from sendgrid_pipeline.errors import ConfigError

REPO = Path(__file__).resolve().parents[1]
SECRET = "CANARY_FIRST_LINE_do_not_leak"
PROFILE_SCHEMA = {
    "customer_id": pl.String,
    "email": pl.String,
    "first_name": pl.String,
    "country_code": pl.String,
    "loyalty_tier": pl.String,
    "email_opt_in": pl.Boolean,
    "lifetime_value": pl.Float64,
    "orders_count": pl.Int64,
    "last_purchase_date": pl.Date,
}
PROFILES = "customer_id,email,first_name,country_code,email_opt_in\nC1,a@b.com,Ann,FR,true\n"
DESTINATION = {
    "name": "newsletter",
    "display_name": "Newsletter",
    "list_id": "0f6b8f5e-1c1e-4b55-8a9e-6b6e0a3e9a01",
    "consent": True,
    "field_mapping": {"email": "email"},
    "segments": ["eu"],
}


def write(
    directory: Path,
    rule: str = "country_code = 'FR' AND email_opt_in",
    segment: dict | None = None,
    destination: dict | None = None,
) -> Path:
    (directory / "profiles").mkdir(parents=True, exist_ok=True)
    (directory / "profiles" / "p.csv").write_text(PROFILES)
    segment = segment or {"id": "eu", "name": "EU", "rule": rule}
    (directory / "segments.yaml").write_text(yaml.safe_dump({"segments": [segment]}))
    document = {"destinations": [destination or DESTINATION]}
    (directory / "destinations.yaml").write_text(yaml.safe_dump(document))
    return directory


@pytest.fixture
def canary(tmp_path: Path) -> Path:
    """A CSV file outside the data directory whose first line must never show up anywhere."""
    path = tmp_path / "outside" / "canary.csv"
    path.parent.mkdir()
    path.write_text(f"{SECRET},zzz\n1,2\n")
    return path


class FileWatch:
    """Linux inotify on one file: has anything opened or read it since the last check?"""

    IN_ACCESS, IN_OPEN = 0x1, 0x20

    def __init__(self, path: Path) -> None:
        if not sys.platform.startswith("linux"):
            pytest.skip("inotify is Linux-only")
        libc = ctypes.CDLL(None, use_errno=True)
        self.fd = libc.inotify_init1(os.O_NONBLOCK)
        if (
            self.fd < 0
            or libc.inotify_add_watch(self.fd, str(path).encode(), self.IN_ACCESS | self.IN_OPEN)
            < 0
        ):
            pytest.skip("inotify is not available")

    def touched(self) -> bool:
        try:
            return bool(os.read(self.fd, 65536))
        except BlockingIOError:
            return False

    def close(self) -> None:
        os.close(self.fd)


@pytest.fixture
def watch(canary: Path):
    watcher = FileWatch(canary)
    yield watcher
    watcher.close()


def test_the_watch_sees_a_read_and_polars_reads_a_subquery_while_parsing(canary, watch) -> None:
    """Why rules are refused as text: pl.sql_expr reads the file of a subquery to parse it."""
    assert not watch.touched()
    with pytest.raises(pl.exceptions.PolarsError, match=SECRET):
        pl.sql_expr(f"customer_id IN (SELECT nope FROM read_csv('{canary}'))")
    assert watch.touched()


SUBQUERIES = [
    "customer_id IN (SELECT zzz FROM read_csv('{path}'))",
    "customer_id IN (select zzz from READ_CSV('{path}'))",
    "customer_id = (SELECT zzz FROM read_csv('{path}'))",
    "EXISTS (SELECT zzz FROM read_csv('{path}'))",
    "customer_id IN (SELECT\tzzz\nFROM\nread_csv('{path}'))",
    "customer_id IN (SELECT zzz FROM \"read_csv\"('{path}'))",
    "customer_id IN (SELECT zzz FROM read_parquet('{path}'))",
    "customer_id IN (SELECT zzz FROM read_json('{path}'))",
    "customer_id IN (SELECT zzz FROM read_ipc('{path}'))",
    "read_csv('{path}') IS NULL",
    "\"read_csv\"('{path}') IS NULL",
    "scan_csv('{path}') IS NULL",
    "customer_id IN (VALUES ('{path}'))",
    "customer_id IN (SELECT/**/zzz/**/FROM/**/read_csv('{path}'))",
    "email_opt_in -- ' \nOR customer_id IN (SELECT zzz FROM read_csv('{path}'))",
]


@pytest.mark.parametrize("template", SUBQUERIES)
def test_a_rule_that_reads_a_file_is_refused_unread_and_unechoed(
    tmp_path: Path, canary: Path, watch: FileWatch, template: str
) -> None:
    write(tmp_path / "data", rule=template.format(path=canary))
    with pytest.raises(ConfigError) as error:
        load_config(tmp_path / "data")
    message = str(error.value)
    assert "segments.yaml" in message and "segment 'eu'" in message and "rule" in message
    assert SECRET not in message
    assert not watch.touched()


def test_the_rule_from_the_report_leaks_nothing_of_etc_passwd(tmp_path: Path) -> None:
    passwd = Path("/etc/passwd")
    if not passwd.is_file():
        pytest.skip("no /etc/passwd here")
    first_line = passwd.read_text().splitlines()[0]
    write(tmp_path, rule="customer_id IN (SELECT zzz FROM read_csv('/etc/passwd'))")
    with pytest.raises(ConfigError, match=r"segment 'eu': rule: .*SELECT") as error:
        load_config(tmp_path)
    assert first_line not in str(error.value) and first_line.split(":")[0] + ":" not in str(
        error.value
    )


@pytest.mark.parametrize("field", ["first_name", "custom"])
def test_a_mapping_expression_that_reads_a_file_is_refused(
    tmp_path: Path, canary: Path, watch: FileWatch, field: str
) -> None:
    source = f"COALESCE((SELECT MAX(zzz) FROM read_csv('{canary}')), first_name)"
    mapping = (
        {"email": "email", "first_name": source}
        if field == "first_name"
        else {"email": "email", "custom_fields": {"tier": {"source": source}}}
    )
    write(tmp_path, destination={**DESTINATION, "field_mapping": mapping})
    with pytest.raises(ConfigError) as error:
        load_config(tmp_path)
    message = str(error.value)
    assert "destinations.yaml" in message and "destination 'newsletter'" in message
    assert f"field_mapping.{'first_name' if field == 'first_name' else 'custom_fields.tier'}" in (
        message
    )
    assert SECRET not in message and not watch.touched()


def test_the_parsed_tree_is_checked_too() -> None:
    """Second line of defence: a subquery in the parsed tree is refused (no file involved)."""
    with pytest.raises(UnsafeExpressionError, match=r"subquery|outside the profile row"):
        _check_parsed(pl.sql_expr("customer_id IN (VALUES ('C1'), ('C2'))"))
    _check_parsed(pl.sql_expr("customer_id IN ('C1', 'C2') AND NOT email_opt_in"))


@pytest.mark.parametrize(
    "rule",
    [
        "country_code IN ('FR', 'DE') AND email_opt_in",
        "COALESCE(email_opt_in, FALSE) AND lifetime_value >= 750",
        "last_purchase_date < DATE '2025-06-01' AND orders_count > 0",
        "loyalty_tier = 'Select from the menu' OR first_name LIKE 'read_csv(%'",  # in strings
        "DATE_PART('year', last_purchase_date) = 2025",
        "CASE WHEN lifetime_value > 100 THEN TRUE ELSE FALSE END",
    ],
)
def test_ordinary_rules_still_pass(rule: str) -> None:
    expr = parse_expression(rule)
    assert pl.LazyFrame(schema=PROFILE_SCHEMA).filter(expr).collect().height == 0


@pytest.mark.parametrize(
    ("membership_file", "expected"),
    [
        ("/etc/passwd", "absolute"),
        ("../outside/canary.csv", "'..'"),
        ("memberships/../../outside/canary.csv", "'..'"),
        ("C:\\exports\\churn.csv", "absolute"),
        ("memberships/churn.txt", ".csv or .parquet"),
    ],
)
def test_a_membership_file_outside_the_data_directory_is_refused(
    tmp_path: Path, canary: Path, membership_file: str, expected: str
) -> None:
    segment = {"id": "churn", "name": "Churn", "membership_file": membership_file}
    write(tmp_path / "data", segment=segment, destination={**DESTINATION, "segments": ["churn"]})
    with pytest.raises(ConfigError) as error:
        load_config(tmp_path / "data")
    message = str(error.value)
    assert "segments.yaml" in message and "segment 'churn'" in message
    assert "membership_file" in message and expected in message


def test_a_membership_file_linked_out_of_the_data_directory_is_refused(
    tmp_path: Path, canary: Path
) -> None:
    data = tmp_path / "data"
    segment = {"id": "churn", "name": "Churn", "membership_file": "memberships/churn.csv"}
    write(data, segment=segment, destination={**DESTINATION, "segments": ["churn"]})
    (data / "memberships").mkdir()
    (data / "memberships" / "churn.csv").write_text("customer_id\nC1\n")
    config = load_config(data)  # inside: fine
    assert config.membership_path(config.segment("churn")).read_text().startswith("customer_id")
    (data / "memberships" / "churn.csv").unlink()
    (data / "memberships" / "churn.csv").symlink_to(canary)
    with pytest.raises(ConfigError, match=r"segment 'churn' membership_file .*outside"):
        load_config(data)
    with pytest.raises(ConfigError, match="outside the data directory"):  # swapped after load
        config.membership_path(config.segment("churn"))


# -- Bounds -------------------------------------------------------------------------------

LOAD_IN_A_CHILD = textwrap.dedent(
    """
    import resource
    import sys
    if int(sys.argv[2]):
        resource.setrlimit(resource.RLIMIT_AS, (int(sys.argv[2]), int(sys.argv[2])))
    from sendgrid_pipeline.config import load_config
    from sendgrid_pipeline.errors import ConfigError
    try:
        load_config(sys.argv[1])
    except ConfigError as error:
        print("REFUSED", str(error)[:2000])
    else:
        print("LOADED")
    """
)


def load_in_a_child(directory: Path, memory_limit: int = 0) -> str:
    """load_config in a separate process: a crash fails the test instead of killing pytest."""
    result = subprocess.run(
        [sys.executable, "-c", LOAD_IN_A_CHILD, str(directory), str(memory_limit)],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 0, (result.returncode, result.stderr[-2000:])
    return result.stdout


def test_a_rule_of_20000_ands_is_refused_without_crashing(tmp_path: Path) -> None:
    rule = " AND ".join(["email_opt_in"] * 20_000)
    output = load_in_a_child(write(tmp_path, rule=rule))
    assert output.startswith("REFUSED") and "segment 'eu'" in output
    assert f"at most {MAX_EXPRESSION_CHARS}" in output
    assert len(output) < 3_000  # the rule itself is not echoed


@pytest.mark.parametrize(
    ("rule", "expected"),
    [
        (" AND ".join(["email_opt_in"] * (MAX_BOOLEAN_TERMS + 2)), "AND/OR"),
        ("(" * 60 + "email_opt_in" + ")" * 60, "nested"),
        ("+".join(["orders_count"] * 300) + " > 0", "operators"),
        ("NOT " * 300 + "email_opt_in", "operators"),
        ("x" * (MAX_EXPRESSION_CHARS + 1), "characters"),
    ],
)
def test_rules_beyond_the_bounds_are_refused_before_parsing(
    tmp_path: Path, rule: str, expected: str
) -> None:
    write(tmp_path, rule=rule)
    with pytest.raises(ConfigError, match=r"segments.yaml:\d+: segment 'eu': rule: ") as error:
        load_config(tmp_path)
    assert expected in str(error.value)
    assert rule not in str(error.value)


def test_rules_within_the_bounds_still_parse() -> None:
    check_expression(" AND ".join(["email_opt_in"] * MAX_BOOLEAN_TERMS))
    check_expression("(" * MAX_EXPRESSION_NESTING + "email_opt_in" + ")" * MAX_EXPRESSION_NESTING)


BILLION_LAUGHS = textwrap.dedent(
    """
    a: &a ["lol","lol","lol","lol","lol","lol","lol","lol","lol"]
    b: &b [*a,*a,*a,*a,*a,*a,*a,*a,*a]
    c: &c [*b,*b,*b,*b,*b,*b,*b,*b,*b]
    d: &d [*c,*c,*c,*c,*c,*c,*c,*c,*c]
    e: &e [*d,*d,*d,*d,*d,*d,*d,*d,*d]
    f: &f [*e,*e,*e,*e,*e,*e,*e,*e,*e]
    g: &g [*f,*f,*f,*f,*f,*f,*f,*f,*f]
    h: &h [*g,*g,*g,*g,*g,*g,*g,*g,*g]
    i: &i [*h,*h,*h,*h,*h,*h,*h,*h,*h]
    destinations:
      - name: *i
    """
)


def test_a_yaml_alias_bomb_in_a_destination_name_is_refused_in_bounded_memory(
    tmp_path: Path,
) -> None:
    write(tmp_path)
    (tmp_path / "destinations.yaml").write_text(BILLION_LAUGHS)
    output = load_in_a_child(tmp_path, memory_limit=1024**3)
    assert output.startswith("REFUSED") and "destinations.yaml" in output
    assert "aliases" in output and "expand" in output


def test_shared_anchors_are_still_allowed(tmp_path: Path) -> None:
    write(tmp_path)
    (tmp_path / "destinations.yaml").write_text(
        textwrap.dedent(
            """
            destinations:
              - name: newsletter
                display_name: Newsletter
                list_id: 0f6b8f5e-1c1e-4b55-8a9e-6b6e0a3e9a01
                consent: true
                field_mapping: &fields {email: email, first_name: first_name}
                segments: [eu]
              - name: second
                display_name: Second
                list_id: 1f6b8f5e-1c1e-4b55-8a9e-6b6e0a3e9a01
                consent: true
                field_mapping: *fields
                segments: [eu]
            """
        )
    )
    first, second = load_config(tmp_path).destinations
    assert first.field_mapping == second.field_mapping


def test_a_deeply_nested_or_oversized_yaml_file_is_refused(tmp_path: Path) -> None:
    write(tmp_path)
    (tmp_path / "segments.yaml").write_text("segments: " + "[" * 50_000 + "]" * 50_000 + "\n")
    with pytest.raises(ConfigError, match=r"segments.yaml: refused: nested more than"):
        load_config(tmp_path)
    (tmp_path / "segments.yaml").write_text("segments: []\n#" + "x" * MAX_CONFIG_FILE_BYTES)
    with pytest.raises(ConfigError, match=r"segments.yaml: larger than 1024 KiB"):
        load_config(tmp_path)


@pytest.mark.parametrize(
    ("changes", "key"),
    [
        ({"name": "n" * 100_000}, "name"),
        ({"display_name": "D" * 100_000}, "display_name"),
        ({"api_key_env": "K" * 100_000}, "api_key_env"),
    ],
)
def test_long_names_are_refused_without_being_echoed(
    tmp_path: Path, changes: dict, key: str
) -> None:
    write(tmp_path, destination={**DESTINATION, **changes})
    with pytest.raises(ConfigError, match=rf"destinations.yaml:\d+: destination .*{key}") as error:
        load_config(tmp_path)
    assert len(str(error.value)) < 1_000


# -- Properties over generated rules ------------------------------------------------------

BOOLEAN_COLUMNS = ["email_opt_in"]
TEXT_COLUMNS = ["customer_id", "email", "first_name", "country_code", "loyalty_tier"]
NUMBER_COLUMNS = ["lifetime_value", "orders_count"]

text_literals = st.text(
    alphabet=st.sampled_from("abcXYZ 0'%_()-*/;\"SELECTFROMread_csv"), max_size=12
).map(lambda s: "'" + s.replace("'", "''") + "'")
numbers = st.integers(-1000, 1000).map(str) | st.floats(0, 1e6, allow_nan=False).map(
    lambda f: f"{f:.2f}"
)
atoms = st.one_of(
    st.sampled_from(BOOLEAN_COLUMNS),
    st.sampled_from(["TRUE", "FALSE"]),
    st.builds(
        "{} {} {}".format,
        st.sampled_from(TEXT_COLUMNS),
        st.sampled_from(["=", "<>", "LIKE"]),
        text_literals,
    ),
    st.builds(
        "{} IN ({})".format,
        st.sampled_from(TEXT_COLUMNS),
        st.lists(text_literals, min_size=1, max_size=4).map(", ".join),
    ),
    st.builds(
        "{} {} {}".format,
        st.sampled_from(NUMBER_COLUMNS),
        st.sampled_from(["=", "<", ">=", "<>"]),
        numbers,
    ),
    st.builds("last_purchase_date < DATE '{}'".format, st.dates().map(lambda d: d.isoformat())),
    st.builds("{} IS NULL".format, st.sampled_from(TEXT_COLUMNS + NUMBER_COLUMNS)),
    st.builds("COALESCE({}, FALSE)".format, st.sampled_from(BOOLEAN_COLUMNS)),
)


def rules(depth: int) -> st.SearchStrategy[str]:
    """Boolean rules over the profile columns, nested at most `depth` levels."""
    if depth == 0:
        return atoms
    inner = rules(depth - 1)
    return st.one_of(
        atoms,
        inner.map("NOT ({})".format),
        st.builds("({} AND {})".format, inner, inner),
        st.builds("({} OR {})".format, inner, inner),
    )


safe_rules = rules(4)
separators = st.sampled_from([" ", "  ", "\n", "\t", " \n "])
keyword_case = st.sampled_from([str.upper, str.lower, str.title])


@st.composite
def reading_fragments(draw, path: str) -> str:
    """A way to reach a file or a table, in any letter case and spacing."""
    sep = draw(separators)
    case = draw(keyword_case)
    function = case(draw(st.sampled_from(["read_csv", "read_parquet", "read_json", "read_ipc"])))
    call = f"{function}('{path}')"
    if draw(st.booleans()):
        call = f"\"{function}\"('{path}')"
    column = draw(st.sampled_from(TEXT_COLUMNS))
    return draw(
        st.sampled_from(
            [
                f"{column} IN ({case('select')}{sep}zzz{sep}{case('from')}{sep}{call})",
                f"{column} ={sep}({case('SELECT')}{sep}zzz{sep}{case('FROM')}{sep}{call})",
                f"{case('exists')}{sep}({case('select')}{sep}1{sep}{case('from')}{sep}{call})",
                f"{call} IS NULL",
                f"{column} IN ({case('SELECT')} {column} {case('FROM')} profiles)",
                f"{column} IN ({case('values')}{sep}('a'))",
            ]
        )
    )


def _segments_file(directory: Path, rule: str) -> None:
    (directory / "segments.yaml").write_text(
        yaml.safe_dump({"segments": [{"id": "generated", "name": "G", "rule": rule}]})
    )
    (directory / "destinations.yaml").write_text(
        yaml.safe_dump({"destinations": [{**DESTINATION, "segments": ["generated"]}]})
    )


@settings(max_examples=100, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(rule=safe_rules)
def test_every_generated_column_rule_is_accepted_and_evaluates_without_reading(rule) -> None:
    with tempfile.TemporaryDirectory() as directory:
        canary = Path(directory) / "canary.csv"
        canary.write_text(f"{SECRET}\n1\n")
        watch = FileWatch(canary)
        try:
            _segments_file(Path(directory), rule)
            (segment,) = load_config(directory).segments
            frame = pl.LazyFrame(schema=PROFILE_SCHEMA).filter(segment.expression).collect()
            assert frame.height == 0
            assert not watch.touched()
        finally:
            watch.close()


@settings(max_examples=100, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(data=st.data())
def test_every_generated_rule_that_reads_or_selects_is_refused_naming_the_segment(data) -> None:
    with tempfile.TemporaryDirectory() as directory:
        canary = Path(directory) / "canary.csv"
        canary.write_text(f"{SECRET},zzz\n1,2\n")
        watch = FileWatch(canary)
        try:
            fragment = data.draw(reading_fragments(str(canary)))
            safe = data.draw(safe_rules)
            rule = data.draw(
                st.sampled_from([fragment, f"{safe} AND {fragment}", f"({fragment}) OR {safe}"])
            )
            _segments_file(Path(directory), rule)
            with pytest.raises(ConfigError) as error:
                load_config(directory)
            message = str(error.value)
            assert re.search(r"segments.yaml:\d+: segment 'generated'", message)
            assert SECRET not in message
            assert not watch.touched()
        finally:
            watch.close()


TOKENS = [
    "email_opt_in",
    "customer_id",
    "orders_count",
    "'C1'",
    "'SELECT x FROM read_csv(''/etc/passwd'')'",
    "1",
    "AND",
    "OR",
    "NOT",
    "IN",
    "=",
    "<",
    "(",
    ")",
    ",",
    "SELECT",
    "select",
    "FROM",
    "read_csv",
    '"read_csv"',
    "read_parquet",
    "scan_csv",
    "VALUES",
    "--",
    "/*",
    "*/",
    ";",
    "'",
    '"',
    "COALESCE",
    "CANARY",
]


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(tokens=st.lists(st.sampled_from(TOKENS), min_size=1, max_size=25), sep=separators)
def test_whatever_token_soup_the_guard_accepts_never_reads_a_file(tokens, sep) -> None:
    with tempfile.TemporaryDirectory() as directory:
        canary = Path(directory) / "canary.csv"
        canary.write_text(f"{SECRET},zzz\n1,2\n")
        rule = sep.join(tokens).replace("CANARY", f"'{canary}'")
        watch = FileWatch(canary)
        try:
            try:
                Segment(id="soup", name="Soup", rule=rule)
            except ValueError:
                return  # refused as text: never parsed
            if not {"'", '"'} & set(tokens):  # no stray quote to hide a keyword in a string
                forbidden = {"select", "from", "values", "--", "/*", ";"}
                assert not {t.lower() for t in tokens} & forbidden, rule
            try:
                expr = parse_expression(rule)
                pl.LazyFrame(schema=PROFILE_SCHEMA).filter(expr).collect()
            except (pl.exceptions.PolarsError, UnsafeExpressionError) as error:
                assert SECRET not in str(error)
            assert not watch.touched()
        finally:
            watch.close()


def test_a_config_built_in_code_is_guarded_as_well(canary: Path) -> None:
    with pytest.raises(ValueError, match="SELECT"):
        Segment(id="s", name="S", rule=f"customer_id IN (SELECT zzz FROM read_csv('{canary}'))")
    config = PipelineConfig(data_dir=canary.parent, segments=(), destinations=())
    assert config.validate_against_profiles(PROFILE_SCHEMA, "test") == []
