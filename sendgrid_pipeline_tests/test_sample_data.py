"""The sample profile generator, and the committed sample and segment rules built on it."""

from __future__ import annotations

import datetime as dt
from datetime import timedelta
from pathlib import Path

import polars as pl
import pytest
import yaml

from sendgrid_pipeline_tests.devkit.sample_data import (
    PROFILE_SCHEMA,
    SAMPLE_ROWS,
    SAMPLE_SEED,
    generate_profiles,
    main,
    write_profiles,
)

DATA_DIR = Path(__file__).resolve().parents[1] / "data"
SAMPLE_CSV = DATA_DIR / "profiles" / "profiles.csv"
ROWS = 20_000
# The pipeline reads these as text; every other dtype must come back from inference.
TEXT_COLUMNS = ("customer_id", "email", "first_name", "last_name", "postal_code")
VALID_EMAIL = r"^[a-z0-9_-]+(\.[a-z0-9_-]+)*@([a-z0-9]([a-z0-9-]*[a-z0-9])?\.)+[a-z]{2,}$"
NORMALIZED = pl.col("email").str.strip_chars().str.to_lowercase()


def read_csv_like_pipeline(path: Path) -> pl.DataFrame:
    return pl.read_csv(
        path, schema_overrides={c: pl.String for c in TEXT_COLUMNS}, try_parse_dates=True
    )


@pytest.fixture(scope="module")
def profiles() -> pl.DataFrame:
    return generate_profiles(ROWS, seed=SAMPLE_SEED)


@pytest.fixture(scope="module")
def segments() -> list[dict]:
    return yaml.safe_load((DATA_DIR / "segments.yaml").read_text(encoding="utf-8"))["segments"]


def share(frame: pl.DataFrame, predicate: pl.Expr) -> float:
    return frame.select(predicate.fill_null(False).mean()).item()


def test_same_seed_same_frame_other_seed_other_frame() -> None:
    assert generate_profiles(500, seed=1).equals(generate_profiles(500, seed=1))
    assert not generate_profiles(500, seed=1).equals(generate_profiles(500, seed=2))


def test_columns_and_dtypes(profiles: pl.DataFrame) -> None:
    assert dict(profiles.schema) == PROFILE_SCHEMA
    assert profiles.height == ROWS
    assert generate_profiles(0).schema == profiles.schema


def test_customer_ids_are_unique_and_zero_padded(profiles: pl.DataFrame) -> None:
    ids = profiles["customer_id"]
    assert ids.n_unique() == ROWS
    assert ids.str.contains(r"^C\d{7}$").all()
    assert ids[0] == "C0000001"


def test_email_noise_is_present(profiles: pl.DataFrame) -> None:
    email = pl.col("email")
    stripped = email.str.strip_chars()
    assert share(profiles, email.is_null()) == pytest.approx(0.01, abs=0.002)
    assert share(profiles, email != stripped) == pytest.approx(0.05, abs=0.015)
    assert share(profiles, stripped != stripped.str.to_lowercase()) == pytest.approx(0.10, abs=0.03)

    invalid = profiles.filter(email.is_not_null() & ~NORMALIZED.str.contains(VALID_EMAIL))
    assert invalid.height / ROWS == pytest.approx(0.015, abs=0.003)
    addresses = invalid.select(NORMALIZED).to_series()
    assert (~addresses.str.contains("@")).any(), "no @"
    assert addresses.str.contains(" ").any(), "space inside"
    assert addresses.str.contains("..", literal=True).any(), "double dot"
    assert addresses.str.ends_with(".").any(), "trailing dot"
    assert addresses.str.ends_with("@").any(), "missing domain"


def test_shared_emails_differ_only_by_case_or_padding(profiles: pl.DataFrame) -> None:
    shared = profiles.filter(pl.col("email").is_not_null() & NORMALIZED.is_duplicated())
    assert shared.height / ROWS == pytest.approx(0.02, abs=0.005)
    groups = shared.group_by(NORMALIZED.alias("normalized")).agg(
        pl.col("email").n_unique().alias("spellings"),
        pl.col("email").str.strip_chars().n_unique().alias("trimmed_spellings"),
    )
    # Every duplicate is spelled differently from its twin: only case-insensitive dedup finds it.
    assert (groups["spellings"] > 1).all()
    assert (groups["trimmed_spellings"] > 1).all()
    # Apart from those, valid addresses never collide by accident.
    valid = profiles.filter(NORMALIZED.str.contains(VALID_EMAIL))
    assert valid.select(NORMALIZED).n_unique() == valid.height - groups.height


def test_names(profiles: pl.DataFrame) -> None:
    for column in ("first_name", "last_name"):
        assert share(profiles, pl.col(column).is_null()) == pytest.approx(0.03, abs=0.01)
        assert (~profiles[column].drop_nulls().str.contains(r"^[\x00-\x7f]*$")).any()
    long_names = profiles.filter(pl.col("first_name").str.len_chars() > 50)
    assert long_names.height == ROWS // 2000
    names = set(profiles["first_name"].drop_nulls()) | set(profiles["last_name"].drop_nulls())
    assert {"José", "Łukasz", "Søren", "Müller", "Nguyễn", "山田"} <= names


POSTAL_FORMATS = {
    "FR": r"^\d{5}$",
    "DE": r"^\d{5}$",
    "ES": r"^\d{5}$",
    "IT": r"^\d{5}$",
    "US": r"^\d{5}$",
    "PL": r"^\d{2}-\d{3}$",
    "PT": r"^\d{4}-\d{3}$",
    "BR": r"^\d{5}-\d{3}$",
    "JP": r"^\d{3}-\d{4}$",
    "GB": r"^[A-Z]{1,2}\d[A-Z\d]? \d[A-Z]{2}$",
    "CA": r"^[A-Z]\d[A-Z] \d[A-Z]\d$",
    "IE": r"^[A-Z]\d[\dW] [A-Z\d]{4}$",
}


def test_addresses(profiles: pl.DataFrame) -> None:
    assert set(profiles["country_code"].drop_nulls()) == set(POSTAL_FORMATS)
    for code, pattern in POSTAL_FORMATS.items():
        codes = profiles.filter(pl.col("country_code") == code)["postal_code"].drop_nulls()
        assert codes.str.contains(pattern).all(), code
    zero_led = profiles.filter(pl.col("postal_code").str.starts_with("0"))
    assert {"FR", "DE", "US"} <= set(zero_led["country_code"].drop_nulls())
    # No region for the UK and Ireland; each optional field is sometimes missing.
    regions = profiles.filter(pl.col("country_code").is_in(["GB", "IE"]))
    assert regions["state_province_region"].null_count() == regions.height
    with_regions = profiles.filter(~pl.col("country_code").is_in(["GB", "IE"]))
    assert 0.01 <= share(with_regions, pl.col("state_province_region").is_null()) <= 0.06
    for column in ("country_code", "country", "city", "postal_code"):
        assert 0.01 <= share(profiles, pl.col(column).is_null()) <= 0.06, column
    pairs = profiles.drop_nulls(["country_code", "country"]).unique(["country_code", "country"])
    assert pairs.height == len(POSTAL_FORMATS)


def test_activity_is_consistent(profiles: pl.DataFrame) -> None:
    no_orders = pl.col("orders_count") == 0
    assert share(profiles, no_orders) > 0.03
    assert profiles.filter(no_orders != pl.col("last_purchase_date").is_null()).is_empty()
    assert profiles.filter(no_orders != (pl.col("lifetime_value") == 0)).is_empty()
    dates = profiles["last_purchase_date"].drop_nulls()
    assert dates.min() >= dt.date(2024, 1, 1)
    assert dates.max() <= dt.date(2026, 11, 15)
    assert profiles.filter(pl.col("updated_at") < pl.col("created_at")).is_empty()
    assert (profiles["lifetime_value"] == profiles["lifetime_value"].round(2)).all()
    tiers = profiles["loyalty_tier"].value_counts(normalize=True)
    tier_share = dict(zip(tiers["loyalty_tier"], tiers["proportion"], strict=True))
    assert set(tier_share) == {"bronze", "silver", "gold", "platinum"}
    assert tier_share["platinum"] < tier_share["gold"] < tier_share["silver"] < tier_share["bronze"]
    assert share(profiles, pl.col("email_opt_in")) == pytest.approx(0.8, abs=0.02)


def test_csv_and_parquet_round_trip(profiles: pl.DataFrame, tmp_path: Path) -> None:
    csv = write_profiles(profiles, tmp_path / "nested" / "profiles.csv")
    back = read_csv_like_pipeline(csv)
    assert dict(back.schema) == PROFILE_SCHEMA
    assert back.equals(profiles)
    parquet = write_profiles(profiles, tmp_path / "profiles.parquet")
    assert pl.read_parquet(parquet).equals(profiles)
    with pytest.raises(ValueError, match="extension"):
        write_profiles(profiles, tmp_path / "profiles.json")


def test_cli_writes_the_requested_file(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    out = tmp_path / "out" / "sample.parquet"
    assert main(["--rows", "50", "--seed", "3", "--out", str(out)]) == 0
    assert pl.read_parquet(out).equals(generate_profiles(50, seed=3))
    printed = capsys.readouterr().out.strip().splitlines()
    assert len(printed) == 1
    assert "50" in printed[0]
    assert str(out) in printed[0]


def test_committed_sample_matches_the_generator() -> None:
    """Regenerate with: python -m sendgrid_pipeline_tests.devkit.sample_data --rows 3000 --seed 42

    Timestamps come from a fractional power of random floats, which numpy computes with
    CPU-specific vector code: the last bit can differ between machines, i.e. a microsecond.
    Every other value must be identical.
    """
    committed = read_csv_like_pipeline(SAMPLE_CSV)
    generated = generate_profiles(SAMPLE_ROWS, seed=SAMPLE_SEED)
    stamps = ["created_at", "updated_at"]
    assert committed.drop(stamps).equals(generated.drop(stamps))
    for column in stamps:
        drift = (committed[column] - generated[column]).abs().max()
        assert drift <= timedelta(microseconds=1), (column, drift)


def test_segment_rules_select_opted_in_profiles(segments: list[dict]) -> None:
    sample = read_csv_like_pipeline(SAMPLE_CSV)
    members = {}
    for segment in segments:
        if "rule" not in segment:  # a CDP membership file; opted-out profiles are excluded
            continue  # by the destinations that use it (see test_destinations_use_...)
        if segment["id"] == "opted_out":
            continue
        assert "email_opt_in" in segment["rule"], segment["id"]
        selected = sample.filter(pl.sql_expr(segment["rule"]))
        assert 10 <= selected.height < sample.height / 2, segment["id"]
        assert selected["email_opt_in"].all(), segment["id"]
        members[segment["id"]] = set(selected["customer_id"])
    overlap = members["vip"] & members["high_value"]
    assert len(overlap) >= 0.5 * min(len(members["vip"]), len(members["high_value"]))


def test_destinations_use_defined_segments(segments: list[dict]) -> None:
    document = yaml.safe_load((DATA_DIR / "destinations.yaml").read_text(encoding="utf-8"))
    destinations = document["destinations"]
    known = {segment["id"] for segment in segments}
    columns = set(PROFILE_SCHEMA)
    assert [d["name"] for d in destinations] == ["newsletter_eu", "vip_program", "winback_campaign"]
    assert len({d["list_id"] for d in destinations}) == len(destinations)
    file_segments = {s["id"] for s in segments if "membership_file" in s}
    for destination in destinations:
        assert set(destination["segments"]) <= known, destination["name"]
        direct = {
            v
            for k, v in destination["field_mapping"].items()
            if k != "custom_fields" and v.isidentifier()
        }
        assert direct <= columns, destination["name"]
        if file_segments & set(destination["segments"]):  # consent still applies
            assert "opted_out" in destination.get("exclude_segments", []), destination["name"]
