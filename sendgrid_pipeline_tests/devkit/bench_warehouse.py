"""Time reading N profiles from PostgreSQL (the SQL profile source) against Parquet files.

Generates N synthetic profiles (`sample_data.generate_profiles`), writes them as one Parquet
file and as one PostgreSQL table, then times, best and median of --repeat runs:

* ``parquet_raw``: `pl.read_parquet` of the file;
* ``parquet_source``: `FileProfileSource.read` of the directory (text columns as text);
* ``sql_raw_<engine>``: `pl.read_database_uri("SELECT * FROM <table>")`;
* ``sql_source_<engine>``: `SqlProfileSource.read` of the table (text columns cast in SQL);
* ``sql_schema``: `SqlProfileSource.schema` (the LIMIT 0 query);
* ``sql_fingerprint_updated_at`` / ``sql_fingerprint_hash``: the change fingerprint with and
  without an updated_at column.

Engines: adbc always; connectorx when it and pyarrow are importable. The server is the one
named by --dsn or SENDGRID_PIPELINE_TEST_POSTGRES_DSN (`source .ci/postgres.sh` starts a
throwaway one); the table is dropped at the end. The last line printed is one JSON object.

    python -m sendgrid_pipeline_tests.devkit.bench_warehouse --rows 1000000
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import platform
import statistics
import tempfile
import time
import uuid
from collections.abc import Callable, Sequence
from pathlib import Path

import polars as pl

from sendgrid_pipeline.profile_source import FileProfileSource
from sendgrid_pipeline.warehouse import SqlProfileSource, mask_uri
from sendgrid_pipeline_tests.devkit.sample_data import generate_profiles

DSN_ENV = "SENDGRID_PIPELINE_TEST_POSTGRES_DSN"
TEXT_COLUMNS = {"email", "first_name", "last_name", "country_code", "city", "postal_code"}


def _time(call: Callable[[], object], repeat: int) -> dict[str, float]:
    """Wall seconds (best, median) and this process's CPU seconds (median): on a shared
    machine the wall clock includes waiting for a core, the CPU time does not."""
    seconds, cpu = [], []
    for _ in range(repeat):
        start, start_cpu = time.perf_counter(), time.process_time()
        call()
        seconds.append(time.perf_counter() - start)
        cpu.append(time.process_time() - start_cpu)
    return {
        "best_s": round(min(seconds), 3),
        "median_s": round(statistics.median(seconds), 3),
        "client_cpu_s": round(statistics.median(cpu), 3),
    }


def _engines() -> list[str]:
    engines = ["adbc"]
    if importlib.util.find_spec("connectorx") and importlib.util.find_spec("pyarrow"):
        engines.append("connectorx")
    return engines


def _drop(dsn: str, table: str) -> None:
    import psycopg2

    connection = psycopg2.connect(dsn)
    connection.autocommit = True
    try:
        with connection.cursor() as cursor:
            cursor.execute(f"DROP TABLE IF EXISTS {table}")
    finally:
        connection.close()


def run(dsn: str, rows: int, repeat: int) -> dict[str, object]:
    started = time.perf_counter()
    frame = generate_profiles(rows)
    generated = time.perf_counter() - started
    table = f"bench_profiles_{uuid.uuid4().hex[:8]}"
    results: dict[str, dict[str, float]] = {}
    with tempfile.TemporaryDirectory() as directory:
        parquet = Path(directory) / "profiles.parquet"
        frame.write_parquet(parquet)
        start = time.perf_counter()
        frame.write_database(table, dsn, engine="adbc", if_table_exists="fail")
        loaded = time.perf_counter() - start
        try:
            results["parquet_raw"] = _time(lambda: pl.read_parquet(parquet), repeat)
            files = FileProfileSource(directory=directory)
            results["parquet_source"] = _time(lambda: files.read(TEXT_COLUMNS), repeat)
            for engine in _engines():
                source = SqlProfileSource(uri=dsn, table=table, engine=engine)
                results[f"sql_raw_{engine}"] = _time(
                    lambda e=engine: pl.read_database_uri(f"SELECT * FROM {table}", dsn, engine=e),
                    repeat,
                )
                results[f"sql_source_{engine}"] = _time(
                    lambda s=source: s.read(TEXT_COLUMNS), repeat
                )
                check = source.read(TEXT_COLUMNS)
                expected = files.read(TEXT_COLUMNS)
                if check.height != rows or check.schema != expected.schema:
                    raise SystemExit(f"{engine}: the SQL source disagrees with the files")
            source = SqlProfileSource(uri=dsn, table=table)
            results["sql_schema"] = _time(lambda: source.schema(TEXT_COLUMNS), repeat)
            stamped = SqlProfileSource(uri=dsn, table=table, updated_at_column="updated_at")
            results["sql_fingerprint_updated_at"] = _time(stamped.fingerprint, repeat)
            results["sql_fingerprint_hash"] = _time(source.fingerprint, repeat)
        finally:
            _drop(dsn, table)
    return {
        "rows": rows,
        "repeat": repeat,
        "generate_s": round(generated, 3),
        "load_table_s": round(loaded, 3),
        "cpus": os.cpu_count(),
        "load_average": [round(load, 2) for load in os.getloadavg()],
        "python": platform.python_version(),
        "polars": pl.__version__,
        "server": mask_uri(dsn),
        "results": results,
    }


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m sendgrid_pipeline_tests.devkit.bench_warehouse",
        description="Time reading profiles from PostgreSQL against Parquet files.",
    )
    parser.add_argument("--rows", type=int, default=1_000_000, help="profiles (default 1M)")
    parser.add_argument("--repeat", type=int, default=3, help="timed runs each (default 3)")
    parser.add_argument("--dsn", default=os.environ.get(DSN_ENV), help=f"default: ${DSN_ENV}")
    args = parser.parse_args(argv)
    if not args.dsn:
        parser.error(f"give --dsn or set {DSN_ENV} (source .ci/postgres.sh starts a server)")
    if args.rows <= 0 or args.repeat <= 0:
        parser.error("--rows and --repeat must be positive")
    report = run(args.dsn, args.rows, args.repeat)
    print(
        f"{report['rows']} profiles on {report['cpus']} CPUs (load average "
        f"{report['load_average']}), polars {report['polars']}"
    )
    print(f"generate {report['generate_s']} s, load the table {report['load_table_s']} s")
    for name, figures in report["results"].items():  # type: ignore[union-attr]
        print(
            f"  {name:28} best {figures['best_s']:7.3f} s   median {figures['median_s']:7.3f} s"
            f"   client CPU {figures['client_cpu_s']:7.3f} s"
        )
    print(json.dumps(report))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
