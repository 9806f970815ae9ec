"""The storage base for step outputs, reports and request files: the same behaviour on a
directory, a file:// URL and S3 (a moto emulator on loopback)."""

from __future__ import annotations

import os
import threading
from datetime import UTC, date, datetime
from pathlib import Path

import polars as pl
import pytest
from hypothesis import HealthCheck, given, settings
from polars.testing import assert_frame_equal
from polars.testing.parametric import dataframes

from sendgrid_pipeline import object_storage
from sendgrid_pipeline.object_storage import (
    ObjectNotFoundError,
    ObjectStorageError,
    StorageLocation,
)

BACKENDS = ["path", "file_url", "s3"]


@pytest.fixture(params=BACKENDS)
def location(request: pytest.FixtureRequest, tmp_path: Path) -> StorageLocation:
    if request.param == "path":
        return StorageLocation(tmp_path / "base")
    if request.param == "file_url":
        return StorageLocation((tmp_path / "base").as_uri())
    bucket, options = request.getfixturevalue("s3_bucket")
    return StorageLocation(f"s3://{bucket}/outputs", storage_options=options)


def typed_frame() -> pl.DataFrame:
    return pl.DataFrame(
        {
            "external_id": ["00042", "0", None, "007"],
            "count": pl.Series([1, None, -(2**62), 0], dtype=pl.Int64),
            "updated_at": pl.Series(
                [datetime(2026, 1, 2, 3, 4, 5, 678901, tzinfo=UTC), None, None, None],
                dtype=pl.Datetime("us", "UTC"),
            ),
            "first_name": ["Zoë", "李雷", "", "O'Brien 🚀"],
            "subscribed": [True, None, False, True],
            "score": [0.5, None, float("inf"), -0.0],
            "birthday": [date(1990, 2, 28), None, date(2000, 1, 1), None],
            "destination": ["eu_newsletter"] * 4,
        }
    )


# -- Parquet ---------------------------------------------------------------------------------------
def test_frame_round_trip_keeps_values_and_types(location: StorageLocation) -> None:
    frame = typed_frame()
    location.write_parquet(frame, "sendgrid_contacts/eu_newsletter.parquet")
    back = location.read_parquet("sendgrid_contacts/eu_newsletter.parquet")
    assert back.schema == frame.schema
    assert_frame_equal(back, frame)
    assert back["external_id"].to_list()[0] == "00042"  # leading zeros survive


def test_empty_frame_keeps_its_schema(location: StorageLocation) -> None:
    frame = typed_frame().clear()
    location.write_parquet(frame, "profiles/empty.parquet")
    back = location.read_parquet("profiles/empty.parquet")
    assert back.height == 0
    assert back.schema == frame.schema


def test_overwrite_replaces_the_object(location: StorageLocation) -> None:
    location.write_parquet(pl.DataFrame({"a": [1, 2, 3]}), "x/part.parquet")
    location.write_parquet(pl.DataFrame({"b": ["only"]}), "x/part.parquet")
    assert_frame_equal(location.read_parquet("x/part.parquet"), pl.DataFrame({"b": ["only"]}))
    assert location.list("x") == ["x/part.parquet"]  # no temporary file is left beside it


def test_missing_object_names_its_url(location: StorageLocation) -> None:
    url = location.url_for("sendgrid_contacts/nowhere.parquet")
    with pytest.raises(ObjectNotFoundError) as raised:
        location.read_parquet("sendgrid_contacts/nowhere.parquet")
    assert url in str(raised.value)
    assert isinstance(raised.value, FileNotFoundError)
    with pytest.raises(ObjectNotFoundError, match="no object at"):
        location.read_bytes("reports/nowhere.csv")
    with pytest.raises(ObjectNotFoundError):
        location.info("reports/nowhere.csv")
    assert not location.exists("sendgrid_contacts/nowhere.parquet")
    for secret in location.storage_options.values():
        if "secret" in secret:
            assert secret not in str(raised.value)


# -- bytes, listing, deleting ----------------------------------------------------------------------
def test_bytes_round_trip(location: StorageLocation) -> None:
    report = "email,reason\nzoë@example.com,invalid\n".encode()
    location.write_bytes("reports/rejected/eu_newsletter.csv", report)
    assert location.read_bytes("reports/rejected/eu_newsletter.csv") == report
    location.write_bytes("reports/empty.csv", b"")
    assert location.read_bytes("reports/empty.csv") == b""
    binary = bytes(range(256)) * 3
    location.write_bytes("requests/blob.bin", binary)
    assert location.read_bytes("requests/blob.bin") == binary
    assert location.exists("requests/blob.bin")


def test_read_bytes_bound(location: StorageLocation) -> None:
    location.write_bytes("requests/big.json", b"x" * 100)
    assert location.read_bytes("requests/big.json", max_bytes=100) == b"x" * 100
    with pytest.raises(ObjectStorageError, match="larger than 99 bytes"):
        location.read_bytes("requests/big.json", max_bytes=99)


def test_list_and_delete(location: StorageLocation) -> None:
    assert location.list() == []
    for path in ["contacts/b.parquet", "contacts/a.parquet", "contacts_old/a.parquet", "top.csv"]:
        location.write_bytes(path, b"1")
    location.write_bytes("contacts/deeper/c.csv", b"2")
    assert location.list("contacts") == [
        "contacts/a.parquet",
        "contacts/b.parquet",
        "contacts/deeper/c.csv",
    ]
    assert location.list("contacts/") == location.list("contacts")
    assert location.list("nothing_here") == []
    assert location.list() == [
        "contacts/a.parquet",
        "contacts/b.parquet",
        "contacts/deeper/c.csv",
        "contacts_old/a.parquet",
        "top.csv",
    ]
    location.delete("contacts/a.parquet")
    location.delete("contacts/a.parquet")  # already gone: not an error
    assert not location.exists("contacts/a.parquet")
    assert location.list("contacts") == ["contacts/b.parquet", "contacts/deeper/c.csv"]


def test_info_and_rename(location: StorageLocation) -> None:
    location.write_bytes("requests/r1.json", b'{"destinations": "all"}')
    first = location.info("requests/r1.json")
    assert (first.path, first.size) == ("requests/r1.json", 23)
    assert first.last_modified.tzinfo is not None
    location.write_bytes("requests/r1.json", b'{"destinations": ["a"]}')
    assert location.info("requests/r1.json").version != first.version
    location.rename("requests/r1.json", "requests/archive/r1.json")
    assert location.list("requests") == ["requests/archive/r1.json"]
    assert location.read_bytes("requests/archive/r1.json") == b'{"destinations": ["a"]}'
    with pytest.raises(ObjectNotFoundError):
        location.rename("requests/r1.json", "requests/again.json")


def test_child_location_shares_the_base(location: StorageLocation) -> None:
    requests = location.child("requests")
    requests.write_bytes("r.json", b"{}")
    assert location.read_bytes("requests/r.json") == b"{}"
    assert requests.list() == ["r.json"]
    assert requests.url_for("r.json") == location.url_for("requests/r.json")


# -- a property over generated frames --------------------------------------------------------------
STORED_TYPES = [
    pl.String,
    pl.Int64,
    pl.Int32,
    pl.Float64,
    pl.Boolean,
    pl.Date,
    pl.Datetime("us", "UTC"),
]


@settings(
    max_examples=25,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(frame=dataframes(max_cols=6, max_size=40, allowed_dtypes=STORED_TYPES))
def test_any_frame_round_trips(location: StorageLocation, frame: pl.DataFrame) -> None:
    location.write_parquet(frame, "generated/frame.parquet")
    back = location.read_parquet("generated/frame.parquet")
    assert back.schema == frame.schema
    assert_frame_equal(back, frame)


# -- atomicity -------------------------------------------------------------------------------------
@pytest.mark.parametrize("location", ["path", "s3"], indirect=True)
def test_concurrent_writers_never_leave_a_torn_object(location: StorageLocation) -> None:
    """Two writers replace one object while a reader reads it: every read is one whole version.

    (Reading by path or URL with polars itself failed here: it mixed two versions.)
    """
    small = pl.DataFrame({"id": [str(i).zfill(6) for i in range(2_000)], "n": range(2_000)})
    large = pl.DataFrame({"id": [f"x{i}" for i in range(30_000)], "n": range(30_000)})
    location.write_parquet(small, "contacts/one.parquet")
    rounds = 40 if location.is_local else 15
    start = threading.Barrier(3)
    writers_done = threading.Event()
    problems: list[str] = []
    reads = 0

    def write(frame: pl.DataFrame) -> None:
        start.wait()
        for _ in range(rounds):
            location.write_parquet(frame, "contacts/one.parquet")

    def read() -> None:
        nonlocal reads
        start.wait()
        while not writers_done.is_set():
            try:
                seen = location.read_parquet("contacts/one.parquet")
            except BaseException as error:  # a torn file fails to parse (or panics in Rust)
                problems.append(repr(error)[:300])
                continue
            reads += 1
            if not (seen.equals(small) or seen.equals(large)):
                problems.append(f"a mixed frame of {seen.height} rows")

    writers = [threading.Thread(target=write, args=(f,)) for f in (small, large)]
    reader = threading.Thread(target=read)
    for thread in [*writers, reader]:
        thread.start()
    for thread in writers:
        thread.join()
    writers_done.set()
    reader.join()
    assert problems == []
    assert reads > 0
    final = location.read_parquet("contacts/one.parquet")
    assert final.equals(small) or final.equals(large)
    assert location.list() == ["contacts/one.parquet"]  # no temporary object left


def test_local_temporary_files_are_cleaned_up(tmp_path: Path) -> None:
    location = StorageLocation(tmp_path / "base")
    threads = [
        threading.Thread(
            target=location.write_parquet,
            args=(pl.DataFrame({"n": range(i * 1000)}), "t/x.parquet"),
        )
        for i in range(1, 7)
    ]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert os.listdir(tmp_path / "base" / "t") == ["x.parquet"]
    assert location.read_parquet("t/x.parquet").height in {i * 1000 for i in range(1, 7)}


def test_a_failed_local_write_keeps_the_old_object(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    location = StorageLocation(tmp_path / "base")
    location.write_parquet(pl.DataFrame({"a": [1]}), "t/one.parquet")

    def half_written(frame: pl.DataFrame, path: Path) -> None:
        path.write_bytes(b"PAR1 and then the process died")
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(object_storage, "_parquet_to", half_written)
    with pytest.raises(ObjectStorageError, match="could not write"):
        location.write_parquet(pl.DataFrame({"a": [2]}), "t/one.parquet")
    assert_frame_equal(location.read_parquet("t/one.parquet"), pl.DataFrame({"a": [1]}))
    assert os.listdir(tmp_path / "base" / "t") == ["one.parquet"]


# -- object-store specifics ------------------------------------------------------------------------
def test_s3_settings_from_the_environment(s3_bucket: tuple[str, dict[str, str]]) -> None:
    bucket, options = s3_bucket
    environment = {
        "AWS_ENDPOINT_URL": options["aws_endpoint_url"],
        "AWS_ALLOW_HTTP": "true",
        "AWS_ACCESS_KEY_ID": options["aws_access_key_id"],
        "AWS_SECRET_ACCESS_KEY": options["aws_secret_access_key"],
        "AWS_REGION": options["aws_region"],
        "AWS_PROFILE": "not-an-option",  # a variable the store has no option for: left alone
        "GOOGLE_SERVICE_ACCOUNT": "/not/for/s3.json",  # another provider's: left alone
    }
    from_env = StorageLocation(f"s3://{bucket}/env", environment=environment)
    from_env.write_parquet(typed_frame(), "a/b.parquet")
    from_env.write_bytes("a/c.csv", b"x")
    explicit = StorageLocation(f"s3://{bucket}", storage_options=options)
    assert_frame_equal(explicit.read_parquet("env/a/b.parquet"), typed_frame())
    assert explicit.list("env") == ["env/a/b.parquet", "env/a/c.csv"]
    assert from_env.read_bytes("a/c.csv") == b"x"


def test_explicit_options_override_the_environment(s3_bucket: tuple[str, dict[str, str]]) -> None:
    bucket, options = s3_bucket
    wrong = {"AWS_ENDPOINT_URL": "http://127.0.0.1:9", "AWS_REGION": "eu-west-3"}
    location = StorageLocation(f"s3://{bucket}", storage_options=options, environment=wrong)
    assert location.storage_options["aws_endpoint_url"] == options["aws_endpoint_url"]
    location.write_bytes("a.csv", b"1")
    assert location.read_bytes("a.csv") == b"1"


def test_environment_secrets_never_show_in_errors(
    s3_bucket: tuple[str, dict[str, str]], monkeypatch: pytest.MonkeyPatch
) -> None:
    bucket, options = s3_bucket
    environment = {"AWS_SESSION_TOKEN": "token-from-the-environment-0123"}
    location = StorageLocation(f"s3://{bucket}", storage_options=options, environment=environment)

    def leaky_get(*args: object, **kwargs: object) -> None:
        raise RuntimeError("request signed with token-from-the-environment-0123 failed")

    import obstore

    monkeypatch.setattr(obstore, "get", leaky_get)
    with pytest.raises(ObjectStorageError) as raised:
        location.read_bytes("r.csv")
    assert "token-from-the-environment" not in str(raised.value)
    assert "***" in str(raised.value)


def test_s3_missing_bucket_is_a_clear_error(s3_bucket: tuple[str, dict[str, str]]) -> None:
    _, options = s3_bucket
    nowhere = StorageLocation("s3://no-such-bucket-here/out", storage_options=options)
    with pytest.raises(ObjectStorageError) as raised:
        nowhere.read_parquet("a.parquet")
    message = str(raised.value)
    assert "s3://no-such-bucket-here/out/a.parquet" in message
    assert options["aws_secret_access_key"] not in message
    assert options["aws_access_key_id"] not in message


def test_store_errors_never_show_credentials(
    s3_bucket: tuple[str, dict[str, str]], monkeypatch: pytest.MonkeyPatch
) -> None:
    bucket, options = s3_bucket
    location = StorageLocation(f"s3://{bucket}", storage_options=options)
    secret = options["aws_secret_access_key"]

    def leaky_put(*args: object, **kwargs: object) -> None:
        raise RuntimeError(f"signature mismatch for key {secret} / {options['aws_access_key_id']}")

    import obstore

    monkeypatch.setattr(obstore, "put", leaky_put)
    with pytest.raises(ObjectStorageError) as raised:
        location.write_bytes("r.csv", b"x")
    message = str(raised.value)
    assert f"s3://{bucket}/r.csv" in message and "RuntimeError" in message
    assert secret not in message and options["aws_access_key_id"] not in message
    assert secret not in repr(location)


# -- parsing a base --------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("base", "url"),
    [
        ("s3://bucket/a/b/", "s3://bucket/a/b/x.parquet"),
        ("s3a://bucket", "s3://bucket/x.parquet"),
        ("gs://bucket/out", "gs://bucket/out/x.parquet"),
        ("gcs://bucket/out", "gs://bucket/out/x.parquet"),
        ("az://container/out", "az://container/out/x.parquet"),
        (
            "abfss://container@account.dfs.core.windows.net/out",
            "abfss://container@account.dfs.core.windows.net/out/x.parquet",
        ),
        ("file:///srv/pipeline/storage", "file:///srv/pipeline/storage/x.parquet"),
        ("/srv/pipeline/storage/", "/srv/pipeline/storage/x.parquet"),
    ],
)
def test_bases(base: str, url: str) -> None:
    location = StorageLocation(base)
    assert location.url_for("x.parquet") == url
    assert location.is_local == url.startswith(("/", "file:"))


def test_relative_base_is_made_absolute(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    location = StorageLocation("storage")
    location.write_bytes("a.csv", b"1")
    assert (tmp_path / "storage" / "a.csv").read_bytes() == b"1"


@pytest.mark.parametrize(
    ("base", "problem"),
    [
        ("", "cannot be empty"),
        ("ftp://host/x", "unsupported storage base scheme"),
        ("s3://user:hunter22@bucket/x", "holds no credentials"),
        ("az://container/x?sig=hunter22", "holds no credentials"),
        ("s3:///no-bucket", "names no bucket"),
        ("file://otherhost/x", "names a host"),
        ("s3://bucket/../up", "each part of an object path"),
    ],
)
def test_bad_bases(base: str, problem: str) -> None:
    with pytest.raises(ValueError, match=problem) as raised:
        StorageLocation(base)
    assert "hunter22" not in str(raised.value)


@pytest.mark.parametrize(
    "relative", ["", "/abs.parquet", "../up.parquet", "a/../b", "a//b", ".hidden", "a\\b", "a b"]
)
def test_bad_relative_paths(tmp_path: Path, relative: str) -> None:
    location = StorageLocation(tmp_path)
    with pytest.raises(ValueError):
        location.write_bytes(relative, b"x")


def test_options_are_normalized_for_an_http_endpoint() -> None:
    location = StorageLocation(
        "s3://bucket",
        storage_options={"AWS_ENDPOINT_URL": "http://127.0.0.1:9", "aws_skip_signature": True},
    )
    assert location.storage_options == {
        "aws_endpoint_url": "http://127.0.0.1:9",
        "aws_skip_signature": "true",
        "allow_http": "true",
    }
