"""Synthetic unified customer profiles, so the pipeline can be run and tested without a warehouse.

The profiles look like the output of a customer data platform: names from several locales
(accents, non-Latin scripts), per-country addresses with leading-zero postal codes, and the
email noise a real export has to survive (mixed case, padding, case-only duplicates, invalid
addresses, nulls, first names longer than SendGrid accepts).

Everything is drawn with numpy/polars array operations (no per-row Python), so a million rows
take a few seconds, and a seed always gives the same frame.

    python -m sendgrid_pipeline_tests.devkit.sample_data --rows 3000 --seed 42 \
        --out data/profiles/profiles.csv
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import unicodedata
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import polars as pl

REPO_ROOT = Path(__file__).resolve().parents[2]
DEFAULT_OUT = REPO_ROOT / "data" / "profiles" / "profiles.csv"
SAMPLE_ROWS = 3000
SAMPLE_SEED = 42

PROFILE_SCHEMA: dict[str, pl.DataType] = {
    "customer_id": pl.String(),
    "email": pl.String(),
    "first_name": pl.String(),
    "last_name": pl.String(),
    "country_code": pl.String(),
    "country": pl.String(),
    "state_province_region": pl.String(),
    "city": pl.String(),
    "postal_code": pl.String(),
    "loyalty_tier": pl.String(),
    "lifetime_value": pl.Float64(),
    "orders_count": pl.Int64(),
    "last_purchase_date": pl.Date(),
    "email_opt_in": pl.Boolean(),
    "created_at": pl.Datetime("us", "UTC"),
    "updated_at": pl.Datetime("us", "UTC"),
}

# Text columns a CSV reader must not type-infer (postal codes lose leading zeros otherwise).
CSV_SCHEMA_OVERRIDES: dict[str, pl.DataType] = {
    column: pl.String()
    for column in (
        "customer_id",
        "email",
        "first_name",
        "last_name",
        "country_code",
        "country",
        "state_province_region",
        "city",
        "postal_code",
        "loyalty_tier",
    )
}

# Noise rates (share of all rows).
EMAIL_NULL_SHARE = 0.01
EMAIL_INVALID_SHARE = 0.015
EMAIL_SHARED_SHARE = 0.02  # profiles whose address differs from another's only by case/padding
EMAIL_MIXED_CASE_SHARE = 0.10
EMAIL_PADDED_SHARE = 0.05
NAME_NULL_SHARE = 0.03
ROWS_PER_LONG_FIRST_NAME = 2000
OPT_IN_SHARE = 0.80

CREATED_START = dt.datetime(2019, 1, 1, tzinfo=dt.UTC)
PURCHASE_START = dt.date(2024, 1, 1)
DATA_END = dt.date(2026, 11, 15)

_US_PER_DAY = 86_400_000_000
_EPOCH = dt.date(1970, 1, 1)

# ----------------------------------------------------------------------------------------------
# Reference data (names per locale, countries with cities and postal templates, email
# domains) lives in a data file beside this module; its "_comment" entry explains each part.
_REFERENCE = json.loads((Path(__file__).with_name("reference_data.json")).read_text("utf-8"))
_LOCALE_NAMES: dict[str, list[str]] = _REFERENCE["locale_names"]
_LONG_FIRST_NAMES: list[str] = _REFERENCE["long_first_names"]
_COUNTRIES: dict[str, list] = _REFERENCE["countries"]
_GLOBAL_DOMAINS: dict[str, float] = _REFERENCE["global_domains"]
_COMPANY_DOMAINS: dict[str, float] = _REFERENCE["company_domains"]
_LOCAL_DOMAINS: dict[str, dict[str, float]] = _REFERENCE["local_domains"]

# Local part patterns: first.last (the norm), firstlast, f.last, first_last, last.first.
_PATTERN_WEIGHTS = [70, 8, 8, 7, 7]
_SEPARATORS = (".", "", "_", " ", "..")  # the patterns' separators, then two invalid ones
_PATTERN_SEPARATOR = np.array([0, 1, 0, 2, 0])
# Invalid kinds: no @, a space inside, a double dot, a trailing dot, no domain.
_INVALID_KINDS = 5
# Case of (local part, domain): 0 lower, 1 Capitalized, 2 UPPER; combo = 3 * local + domain.
_MIXED_CASE_COMBOS = {3: 45, 8: 20, 1: 15, 6: 10, 4: 10}
_N_CASE_COMBOS = 9
# Padding: none, leading, trailing, both, two trailing spaces.
_LEADING = ("", " ", "", " ", "")
_TRAILING = ("", "", " ", " ", "  ")
_PADDING_WEIGHTS = [0, 40, 35, 15, 10]
_TIERS = ("bronze", "silver", "gold", "platinum")
_TIER_THRESHOLDS = [250.0, 650.0, 1600.0]  # noisy lifetime value needed for silver/gold/platinum

_CHAR_CLASSES = {
    ord("#"): np.frombuffer(b"0123456789", np.uint8),
    ord("@"): np.frombuffer(b"ABEGHJLNPRSTWXYZ", np.uint8),  # valid in UK and CA postcodes
    ord("*"): np.frombuffer(b"ACDEFHKNPRTVWXY0123456789", np.uint8),  # Eircode
}

_ASCII_FOLD = str.maketrans(
    {"ł": "l", "Ł": "L", "ø": "o", "Ø": "O", "ß": "ss", "æ": "ae", "Æ": "AE", "đ": "d", "Đ": "D",
     "œ": "oe", "Œ": "OE"}
)  # fmt: skip


def _ascii_fold(name: str) -> str:
    """Lowercase ASCII letters and digits only, as people write their name in an address."""
    decomposed = unicodedata.normalize("NFKD", name.translate(_ASCII_FOLD))
    return "".join(c for c in decomposed if c.isascii() and c.isalnum()).lower()


def _split_names(text: str) -> list[tuple[str, str]]:
    pairs = []
    for item in text.split(","):
        display, _, romanized = item.strip().partition("=")
        ascii_name = _ascii_fold(romanized or display)
        if not ascii_name:
            raise ValueError(f"name {display!r} has no ASCII form: add '=romanization'")
        pairs.append((display, ascii_name))
    return pairs


def _weights_by_group(groups: list[dict[int, float]], width: int) -> np.ndarray:
    matrix = np.zeros((len(groups), width))
    for row, weights in enumerate(groups):
        for column, weight in weights.items():
            matrix[row, column] = weight
    return matrix


def _case_pools(pools: dict[str, list[str]]) -> tuple[pl.Series, dict[str, np.ndarray]]:
    """Concatenate each pool in lower, Capitalized and UPPER case, with the offsets to index it."""
    values: list[str] = []
    offsets: dict[str, np.ndarray] = {}
    for kind, pool in pools.items():
        starts = []
        for case in (str.lower, str.capitalize, str.upper):
            starts.append(len(values))
            values.extend(case(v) for v in pool)
        offsets[kind] = np.array(starts)
    return pl.Series(values, dtype=pl.String), offsets


class _Reference:
    """The reference tables flattened into arrays and Series, built once at import."""

    def __init__(self) -> None:
        self.codes = list(_COUNTRIES)
        self.country_names = [c[0] for c in _COUNTRIES.values()]
        self.country_weights = np.array([[c[1] for c in _COUNTRIES.values()]], float)

        locales = list(_LOCALE_NAMES)
        first: list[tuple[str, str]] = []
        last: list[tuple[str, str]] = []
        first_groups: list[dict[int, float]] = []
        last_groups: list[dict[int, float]] = []
        for first_text, last_text in _LOCALE_NAMES.values():
            for pool, groups, text in (
                (first, first_groups, first_text),
                (last, last_groups, last_text),
            ):
                names = _split_names(text)
                # Popular names are more common (a gentle Zipf-like curve).
                groups.append({len(pool) + i: 1 / (i + 4) for i in range(len(names))})
                pool.extend(names)
        self.first_weights = _weights_by_group(first_groups, len(first))
        self.last_weights = _weights_by_group(last_groups, len(last))
        self.first_display = pl.Series([d for d, _ in first], dtype=pl.String)
        self.last_display = pl.Series([d for d, _ in last], dtype=pl.String)
        # Email tokens in each case (lower, Capitalized, UPPER): first names, their initials,
        # last names. A token index is offset[kind][case] + name index.
        self.tokens, self.token_offset = _case_pools(
            {
                "first": [a for _, a in first],
                "initial": [a[0] for _, a in first],
                "last": [a for _, a in last],
            }
        )
        self.long_first = pl.Series(_LONG_FIRST_NAMES, dtype=pl.String)
        if min(len(name) for name in _LONG_FIRST_NAMES) <= 50:
            raise ValueError("every _LONG_FIRST_NAMES entry must exceed 50 characters")

        self.locale_weights = _weights_by_group(
            [{locales.index(k): w for k, w in c[2].items()} for c in _COUNTRIES.values()],
            len(locales),
        )

        cities = [(code, *city) for code, c in _COUNTRIES.items() for city in c[3]]
        self.city_weights = _weights_by_group(
            [
                {i: city[4] for i, city in enumerate(cities) if city[0] == code}
                for code in self.codes
            ],
            len(cities),
        )
        self.city_names = pl.Series([c[1] for c in cities], dtype=pl.String)
        self.city_regions = pl.Series([c[2] for c in cities], dtype=pl.String)
        templates = [t.split("|") for *_, t, _ in cities]
        self.template_count = np.array([len(t) for t in templates])
        self.template_offset = np.concatenate([[0], np.cumsum(self.template_count)[:-1]])
        flat = [t.encode() for group in templates for t in group]
        width = max(len(t) for t in flat)
        self.postal_width = width
        self.templates = np.zeros((len(flat), width), np.uint8)
        for i, template in enumerate(flat):
            self.templates[i, : len(template)] = np.frombuffer(template, np.uint8)

        domains = list(
            dict.fromkeys(
                [
                    *_GLOBAL_DOMAINS,
                    *_COMPANY_DOMAINS,
                    *(d for m in _LOCAL_DOMAINS.values() for d in m),
                ]
            )
        )
        self.domain_weights = _weights_by_group(
            [
                {
                    domains.index(d): w
                    for d, w in {
                        **_GLOBAL_DOMAINS,
                        **_COMPANY_DOMAINS,
                        **_LOCAL_DOMAINS[code],
                    }.items()
                }
                for code in self.codes
            ],
            len(domains),
        )
        self.domains, offsets = _case_pools({"domain": domains})
        self.domain_offset = offsets["domain"]


_REF = _Reference()


def _grouped_choice(
    rng: np.random.Generator, groups: np.ndarray, weights: np.ndarray
) -> np.ndarray:
    """For each row, an item index drawn with the weights of the row's group.

    Vectorized inverse-CDF: each group's CDF is shifted by the group number, so one
    searchsorted over the concatenated CDFs samples every group at once.
    """
    cdf = np.cumsum(weights, axis=1) / weights.sum(axis=1, keepdims=True)
    cdf[:, -1] = 1.0
    shifted = (cdf + np.arange(len(weights))[:, None]).ravel()
    position = np.searchsorted(shifted, groups + rng.random(len(groups)), side="right")
    return position % weights.shape[1]


def _choice(rng: np.random.Generator, n: int, weights: Sequence[float]) -> np.ndarray:
    return _grouped_choice(rng, np.zeros(n, np.int64), np.array([weights], float))


def _postal_codes(rng: np.random.Generator, city: np.ndarray) -> pl.Series:
    """Fill each city's postal template (kept as text: many codes start with 0)."""
    alternative = np.floor(rng.random(len(city)) * _REF.template_count[city]).astype(np.int64)
    chars = _REF.templates[_REF.template_offset[city] + alternative]
    draws = rng.integers(0, 40_000, size=chars.shape, dtype=np.uint16)  # 40,000 % 10/16/25 == 0
    for placeholder, alphabet in _CHAR_CLASSES.items():
        mask = chars == placeholder
        chars[mask] = alphabet[draws[mask] % len(alphabet)]
    return pl.Series(chars.view(f"S{_REF.postal_width}").ravel()).cast(pl.String)


def _us(moment: dt.datetime | dt.date) -> int:
    if not isinstance(moment, dt.datetime):
        moment = dt.datetime.combine(moment, dt.time(), tzinfo=dt.UTC)
    return (moment - dt.datetime(1970, 1, 1, tzinfo=dt.UTC)) // dt.timedelta(microseconds=1)


def generate_profiles(rows: int, seed: int = 42) -> pl.DataFrame:
    """Deterministic synthetic unified profiles with `PROFILE_SCHEMA` columns (see module doc)."""
    if rows < 0:
        raise ValueError(f"rows must be >= 0, got {rows}")
    n = rows
    rng = np.random.default_rng(seed)
    index = np.arange(n)

    # Who and where. Names follow the country's locales, plus some diaspora.
    country = _grouped_choice(rng, np.zeros(n, np.int64), _REF.country_weights)
    locale = _grouped_choice(rng, country, _REF.locale_weights)
    first = _grouped_choice(rng, locale, _REF.first_weights)
    last = _grouped_choice(rng, locale, _REF.last_weights)
    city = _grouped_choice(rng, country, _REF.city_weights)
    domain = _grouped_choice(rng, country, _REF.domain_weights)
    pattern = _choice(rng, n, _PATTERN_WEIGHTS)
    # No number (40%), 1-99, a birth year, or 100-999.
    number_kind = _choice(rng, n, [40, 30, 20, 10])
    number = np.select(
        [number_kind == 1, number_kind == 2, number_kind == 3],
        [rng.integers(1, 100, n), rng.integers(1960, 2006, n), rng.integers(100, 1000, n)],
        0,
    )

    # Email noise on disjoint rows: missing, invalid, and copies of another profile's address.
    perm = rng.permutation(n)
    k_null, k_invalid = round(n * EMAIL_NULL_SHARE), round(n * EMAIL_INVALID_SHARE)
    k_copy = min(round(n * EMAIL_SHARED_SHARE / 2), (n - k_null - k_invalid) // 2)
    null_rows = perm[:k_null]
    invalid_rows = perm[k_null : k_null + k_invalid]
    copy_rows = perm[k_null + k_invalid : k_null + k_invalid + k_copy]
    source_rows = perm[k_null + k_invalid + k_copy : k_null + k_invalid + 2 * k_copy]
    # A copy is the same person signing up twice: same name, place and address.
    origin = index.copy()
    origin[copy_rows] = source_rows
    first, last, country, city, domain, pattern, number = (
        a[origin] for a in (first, last, country, city, domain, pattern, number)
    )
    is_copy = np.zeros(n, bool)
    is_copy[copy_rows] = True
    email_null = np.zeros(n, bool)
    email_null[null_rows] = True
    invalid_kind = np.full(n, -1)
    invalid_kind[invalid_rows] = rng.integers(0, _INVALID_KINDS, k_invalid)

    combos = np.array(list(_MIXED_CASE_COMBOS))
    case = np.where(
        rng.random(n) < EMAIL_MIXED_CASE_SHARE,
        combos[_choice(rng, n, list(_MIXED_CASE_COMBOS.values()))],
        0,
    )
    # A copy always differs from its source by case, so only case-insensitive dedup catches it.
    case[copy_rows] = (case[source_rows] + rng.integers(1, _N_CASE_COMBOS, k_copy)) % _N_CASE_COMBOS
    padding = np.where(rng.random(n) < EMAIL_PADDED_SHARE, _choice(rng, n, _PADDING_WEIGHTS), 0)

    first_null = rng.random(n) < NAME_NULL_SHARE
    last_null = rng.random(n) < NAME_NULL_SHARE
    long_first = np.zeros(n, bool)
    long_first[rng.choice(n, size=n // ROWS_PER_LONG_FIRST_NAME, replace=False)] = True
    long_pick = rng.integers(0, len(_LONG_FIRST_NAMES), n)
    postal = _postal_codes(rng, city)
    optional_null = {
        column: rng.random(n) < share
        for column, share in (
            ("country_code", 0.02),
            ("country", 0.03),
            ("state_province_region", 0.04),
            ("city", 0.03),
            ("postal_code", 0.04),
        )
    }

    # Activity. Customer numbers follow sign-up order; recent years signed up more people.
    end_us = _us(DATA_END + dt.timedelta(days=1)) - 1
    start_us = _us(CREATED_START)
    created = np.sort(start_us + (rng.random(n) ** 0.6 * (end_us - start_us)).astype(np.int64))
    tenure_days = (end_us - created) / _US_PER_DAY
    has_orders = rng.random(n) >= 0.07 + 0.6 * np.exp(-tenure_days / 45)
    order_scale = np.sqrt(np.clip(tenure_days / 365, 0.05, 4))
    orders = np.where(
        has_orders, 1 + np.floor(rng.lognormal(np.log(2.2), 0.9, n) * order_scale), 0
    ).astype(np.int64)
    basket = rng.lognormal(np.log(62), 0.5, n)
    lifetime_value = np.where(has_orders, np.round(orders * basket, 2), 0.0)
    # Tiers follow spend, loosely (they are computed on a rolling window, with bonuses).
    tier = np.searchsorted(_TIER_THRESHOLDS, lifetime_value * rng.lognormal(0, 0.3, n), "right")

    created_day = created // _US_PER_DAY
    first_day = np.maximum(created_day, (PURCHASE_START - _EPOCH).days)
    span = (DATA_END - _EPOCH).days - first_day + 1
    purchase_day = first_day + np.floor(rng.random(n) ** 0.5 * span).astype(np.int64)
    purchase_us = purchase_day * _US_PER_DAY + rng.integers(0, _US_PER_DAY, n)
    touched = np.where(has_orders, np.maximum(created, purchase_us), created)
    updated = touched + (rng.random(n) ** 2 * (end_us - touched)).astype(np.int64)
    opt_in = rng.random(n) < OPT_IN_SHARE

    email = _emails(
        index,
        origin,
        is_copy,
        first,
        last,
        domain,
        pattern,
        number,
        case,
        invalid_kind,
        email_null,
        padding,
    )
    width = max(7, len(str(n)))
    columns = {
        "customer_id": pl.Series(index + 1).cast(pl.String).str.zfill(width),
        "email": email,
        "first_name": _REF.first_display.gather(first),
        "last_name": _REF.last_display.gather(last),
        "country_code": pl.Series(_REF.codes).gather(country),
        "country": pl.Series(_REF.country_names).gather(country),
        "state_province_region": _REF.city_regions.gather(city),
        "city": _REF.city_names.gather(city),
        "postal_code": postal,
        "loyalty_tier": pl.Series(_TIERS).gather(tier),
        "lifetime_value": lifetime_value,
        "orders_count": orders,
        "last_purchase_date": pl.Series(purchase_day).cast(pl.Int32).cast(pl.Date),
        "email_opt_in": opt_in,
        "created_at": pl.Series(created).cast(pl.Datetime("us")).dt.replace_time_zone("UTC"),
        "updated_at": pl.Series(updated).cast(pl.Datetime("us")).dt.replace_time_zone("UTC"),
    }
    nulls = {
        "first_name": first_null,
        "last_name": last_null,
        "last_purchase_date": ~has_orders,
        **optional_null,
    }
    frame = pl.DataFrame(columns).with_columns(
        ("C" + pl.col("customer_id")).alias("customer_id"),
        *[
            pl.when(pl.Series(mask)).then(None).otherwise(pl.col(column)).alias(column)
            for column, mask in nulls.items()
        ],
    )
    # Long names go in after the nulls, so there are exactly n // 2000 of them.
    frame = frame.with_columns(
        pl.when(pl.Series(long_first))
        .then(_REF.long_first.gather(long_pick))
        .otherwise(pl.col("first_name"))
        .alias("first_name")
    )
    return frame.cast(PROFILE_SCHEMA)


def _emails(
    row: np.ndarray,
    origin: np.ndarray,
    is_copy: np.ndarray,
    first: np.ndarray,
    last: np.ndarray,
    domain: np.ndarray,
    pattern: np.ndarray,
    number: np.ndarray,
    case: np.ndarray,
    invalid_kind: np.ndarray,
    email_null: np.ndarray,
    padding: np.ndarray,
) -> pl.Series:
    """The `email` column: unique base addresses, then case, invalidity and padding noise.

    Pieces are picked by index from small pre-cased pools (see `_case_pools`) and joined in a
    single `concat_str`, which keeps a million rows to a fraction of a second.
    """
    off = _REF.token_offset

    def pieces(local_case: np.ndarray) -> tuple[pl.Series, pl.Series]:
        head = np.select(
            [pattern == 2, pattern == 4],
            [off["initial"][local_case] + first, off["last"][local_case] + last],
            off["first"][local_case] + first,
        )
        tail = np.where(
            pattern == 4, off["first"][local_case] + first, off["last"][local_case] + last
        )
        return _REF.tokens.gather(head), _REF.tokens.gather(tail)

    lower = np.zeros_like(case)
    lower_head, lower_tail = pieces(lower)
    separator = _PATTERN_SEPARATOR[pattern]
    frame = pl.DataFrame(
        {
            "row": row,
            "origin": origin,
            "is_copy": is_copy,
            "number": pl.Series(number).cast(pl.String).replace("0", ""),
            "head": lower_head,
            "sep": pl.Series(_SEPARATORS).gather(separator),
            "tail": lower_tail,
            "domain": _REF.domains.gather(_REF.domain_offset[lower] + domain),
        }
    )
    # Two different people can draw the same address; the later ones get "_<customer number>".
    # Copies are kept out of the check (made unique by "#row") and then follow their source.
    key = pl.concat_str("head", "sep", "tail", "number", pl.lit("@"), "domain")
    clash = (
        pl.when(pl.col("is_copy"))
        .then(pl.concat_str(key, pl.lit("#"), pl.col("row").cast(pl.String)))
        .otherwise(key)
        .is_first_distinct()
        .not_()
    )
    suffix = (
        pl.when(pl.col("clash").gather(pl.col("origin")))
        .then(pl.concat_str(pl.lit("_"), (pl.col("origin") + 1).cast(pl.String)))
        .otherwise(pl.lit(""))
    )
    frame = frame.with_columns(clash.alias("clash")).with_columns(suffix.alias("suffix"))

    local_case, domain_case = case // 3, case % 3
    head, tail = pieces(local_case)
    # Invalid kinds: 0 "jose.sanchezgmail.com", 1 "jose sanchez@gmail.com",
    # 2 "jose..sanchez@gmail.com", 3 "jose.sanchez@gmail.com.", 4 "jose.sanchez@".
    separator = np.select([invalid_kind == 1, invalid_kind == 2], [3, 4], separator)
    at = pl.Series(["@", ""]).gather((invalid_kind == 0).astype(np.int8))
    host = _REF.domains.gather(_REF.domain_offset[domain_case] + domain)
    trailer = pl.Series(["", "."]).gather((invalid_kind == 3).astype(np.int8))
    return frame.select(
        pl.when(pl.Series(email_null))
        .then(pl.lit(None, pl.String))
        .otherwise(
            pl.concat_str(
                pl.Series(_LEADING).gather(padding),
                head,
                pl.Series(_SEPARATORS).gather(separator),
                tail,
                "number",
                "suffix",
                at,
                pl.when(pl.Series(invalid_kind == 4)).then(pl.lit("")).otherwise(host),
                trailer,
                pl.Series(_TRAILING).gather(padding),
            )
        )
        .alias("email")
    ).to_series()


def write_profiles(frame: pl.DataFrame, path: Path | str) -> Path:
    """Write profiles as CSV or Parquet (by extension), creating the parent directories."""
    path = Path(path)
    suffix = path.suffix.lower()
    if suffix not in (".csv", ".parquet"):
        raise ValueError(f"{path}: unsupported extension {path.suffix!r} (use .csv or .parquet)")
    path.parent.mkdir(parents=True, exist_ok=True)
    if suffix == ".csv":
        frame.write_csv(path)
    else:
        frame.write_parquet(path)
    return path


def read_profiles_csv(path: Path | str) -> pl.DataFrame:
    """Read a profiles CSV back with `PROFILE_SCHEMA` dtypes (text columns never inferred)."""
    return pl.read_csv(path, schema_overrides=CSV_SCHEMA_OVERRIDES, try_parse_dates=True)


def main(argv: Sequence[str] | None = None) -> int:
    """CLI: generate profiles and write them to --out."""
    parser = argparse.ArgumentParser(
        prog="python -m sendgrid_pipeline_tests.devkit.sample_data",
        description="Generate synthetic unified customer profiles (CSV or Parquet).",
    )
    parser.add_argument(
        "--rows", type=int, default=SAMPLE_ROWS, help=f"number of profiles (default {SAMPLE_ROWS})"
    )
    parser.add_argument("--seed", type=int, default=SAMPLE_SEED, help="random seed (default 42)")
    parser.add_argument(
        "--out",
        type=Path,
        default=DEFAULT_OUT,
        help="output file, .csv or .parquet (default: data/profiles/profiles.csv in the repo)",
    )
    args = parser.parse_args(argv)
    if args.rows < 0:
        parser.error("--rows must be >= 0")
    if args.out.suffix.lower() not in (".csv", ".parquet"):
        parser.error(f"--out must end in .csv or .parquet, got {args.out}")
    path = write_profiles(generate_profiles(args.rows, args.seed), args.out)
    print(f"wrote {args.rows} profiles to {path}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
