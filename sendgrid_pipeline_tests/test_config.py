"""Each bad configuration fails at load time with an error naming the file, item and key."""

from __future__ import annotations

import warnings
from pathlib import Path

import polars as pl
import pytest
import yaml

from sendgrid_pipeline.config import NullableExclusionWarning, load_config
from sendgrid_pipeline.errors import ConfigError
from sendgrid_pipeline.pipeline import load_validated_config
from sendgrid_pipeline.profile_source import FileProfileSource

PROFILES = "customer_id,email,first_name,country_code,email_opt_in\nC1,a@b.com,Ann,FR,true\n"
SEGMENTS = {
    "segments": [
        {"id": "eu", "name": "EU", "rule": "country_code IN ('FR','DE') AND email_opt_in"},
        {"id": "all_optin", "name": "Opted in", "rule": "email_opt_in"},
    ]
}
DESTINATION = {
    "name": "newsletter",
    "display_name": "Newsletter",
    "list_id": "0f6b8f5e-1c1e-4b55-8a9e-6b6e0a3e9a01",
    "consent": True,
    "field_mapping": {"email": "email", "first_name": "first_name"},
    "segments": ["eu"],
}


def write(directory: Path, segments=SEGMENTS, destinations=None, profiles=PROFILES) -> Path:
    (directory / "profiles").mkdir(parents=True, exist_ok=True)
    (directory / "profiles" / "p.csv").write_text(profiles)
    (directory / "segments.yaml").write_text(yaml.safe_dump(segments))
    document = {"destinations": destinations if destinations is not None else [DESTINATION]}
    (directory / "destinations.yaml").write_text(yaml.safe_dump(document))
    return directory


def destination(**changes) -> dict:
    return {**DESTINATION, **changes}


def test_a_good_config_loads_with_defaults(tmp_path: Path) -> None:
    config = load_validated_config(write(tmp_path))
    (dest,) = config.destinations
    assert dest.profile_cap == 100_000
    assert dest.api_key_env == "SENDGRID_API_KEY"
    assert dest.field_mapping.as_dict() == {"email": "email", "first_name": "first_name"}
    assert config.mapped_columns() == {"email", "first_name"}


@pytest.mark.parametrize(
    ("destinations", "expected"),
    [
        ([destination(segments=["nope"])], ["destinations.yaml", "'newsletter'", "'nope'"]),
        ([destination(name="News-Letter")], ["destinations.yaml", "name", "lowercase"]),
        ([destination(), destination(list_id="x-2")], ["'newsletter'", "more than once"]),
        (
            [destination(field_mapping={"first_name": "first_name"})],
            ["'newsletter'", "'field_mapping.email' is missing"],
        ),
        (
            [destination(field_mapping={"email": "email", "phone": "tel"})],
            ["'newsletter'", "unknown key 'field_mapping.phone'", "phone_number_id"],
        ),
        ([destination(list_id="not a list id!")], ["'newsletter'", "list_id"]),
        ([destination(profile_cap=0)], ["'newsletter'", "profile_cap"]),
        ([destination(segments=[])], ["'newsletter'", "segments"]),
        ([destination(consentt=True)], ["'newsletter'", "'consentt' (did you mean 'consent'?)"]),
    ],
)
def test_bad_destinations_name_the_file_destination_and_key(
    tmp_path: Path, destinations: list[dict], expected: list[str]
) -> None:
    write(tmp_path, destinations=destinations)
    with pytest.raises(ConfigError) as error:
        load_config(tmp_path)
    for fragment in expected:
        assert fragment in str(error.value)


def test_mapping_to_a_missing_column_names_destination_field_and_column(tmp_path: Path) -> None:
    bad = destination(field_mapping={"email": "email", "city": "town"})
    write(tmp_path, destinations=[bad])
    with pytest.raises(ConfigError) as error:
        load_validated_config(tmp_path)
    message = str(error.value)
    assert "'newsletter'" in message and "field_mapping.city" in message and "'town'" in message
    assert "destinations.yaml" in message and "customer_id" in message  # lists real columns


def test_segment_rule_with_a_missing_column_names_segment_and_column(tmp_path: Path) -> None:
    segments = {"segments": [{"id": "eu", "name": "EU", "rule": "country = 'France'"}]}
    write(tmp_path, segments=segments)
    with pytest.raises(ConfigError) as error:
        load_validated_config(tmp_path)
    message = str(error.value)
    assert "segments.yaml" in message and "'eu'" in message and "country" in message


def test_segment_rule_with_bad_syntax_fails_before_profiles_are_read(tmp_path: Path) -> None:
    segments = {"segments": [{"id": "eu", "name": "EU", "rule": "country_code IN ('FR'"}]}
    write(tmp_path, segments=segments)
    with pytest.raises(ConfigError, match=r"segments.yaml.*'eu'.*invalid rule"):
        load_config(tmp_path)


def test_duplicate_segment_ids_are_rejected(tmp_path: Path) -> None:
    segments = {"segments": [SEGMENTS["segments"][0], SEGMENTS["segments"][0]]}
    write(tmp_path, segments=segments)
    with pytest.raises(ConfigError, match="segment 'eu' is defined more than once"):
        load_config(tmp_path)


def test_malformed_yaml_and_missing_files(tmp_path: Path) -> None:
    write(tmp_path)
    (tmp_path / "segments.yaml").write_text("segments: [unclosed\n")
    with pytest.raises(ConfigError, match=r"segments.yaml:2:1: malformed YAML"):
        load_config(tmp_path)
    (tmp_path / "segments.yaml").unlink()
    with pytest.raises(ConfigError, match=r"segments.yaml: file not found"):
        load_config(tmp_path)
    write(tmp_path)
    (tmp_path / "destinations.yaml").write_text("just a string\n")
    with pytest.raises(ConfigError, match=r"destinations.yaml: expected a top-level"):
        load_config(tmp_path)


def test_the_shipped_sample_config_is_valid() -> None:
    config = load_validated_config(Path(__file__).resolve().parents[1] / "data")
    assert len(config.destinations) >= 3
    assert any(len(d.segments) >= 2 for d in config.destinations)


# -- Exclusion rules that can be null (a null excludes nobody) ------------------------------

CONSENT_PROFILES = (
    "customer_id,email,first_name,country_code,email_opt_in\n"
    "C1,a@b.com,Ann,FR,true\n"
    "C2,b@b.com,Bob,FR,\n"
)


def with_exclusion(tmp_path: Path, rule: str, used_as: str = "exclude_segments") -> Path:
    segments = {
        "segments": [*SEGMENTS["segments"], {"id": "no_consent", "name": "N", "rule": rule}]
    }
    used = {"exclude_segments": ["no_consent"]} if used_as == "exclude_segments" else {}
    if used_as == "segments":
        used = {"segments": ["eu", "no_consent"]}
    return write(
        tmp_path, segments=segments, destinations=[destination(**used)], profiles=CONSENT_PROFILES
    )


@pytest.mark.parametrize(
    "rule",
    [
        "NOT email_opt_in",
        "email_opt_in = FALSE",
        "NOT email_opt_in OR country_code IS NULL",  # null when only email_opt_in is null
        "country_code = 'FR' AND NOT email_opt_in",
        "email_opt_in IS NOT TRUE",  # polars evaluates it to null, not true, for a null
    ],
)
def test_an_exclusion_rule_that_can_be_null_warns_naming_segment_file_and_fix(
    tmp_path: Path, rule: str
) -> None:
    with pytest.warns(NullableExclusionWarning) as caught:
        load_validated_config(with_exclusion(tmp_path, rule))
    (message,) = [str(w.message) for w in caught if w.category is NullableExclusionWarning]
    assert "segments.yaml" in message and "segment 'no_consent'" in message
    assert "'newsletter'" in message and "email_opt_in" in message
    assert "COALESCE(email_opt_in, FALSE)" in message


def test_the_warnings_are_returned_for_callers_to_log(tmp_path: Path) -> None:
    config = load_config(with_exclusion(tmp_path, "NOT email_opt_in"))
    schema = {c: pl.String for c in ("customer_id", "email", "first_name", "country_code")}
    schema["email_opt_in"] = pl.Boolean
    with pytest.warns(NullableExclusionWarning):
        returned = config.validate_against_profiles(schema, "test")
    assert len(returned) == 1 and "segment 'no_consent'" in returned[0]


@pytest.mark.parametrize(
    ("rule", "used_as"),
    [
        ("NOT COALESCE(email_opt_in, FALSE)", "exclude_segments"),
        ("COALESCE(NOT email_opt_in, TRUE)", "exclude_segments"),
        ("COALESCE(country_code = 'FR' AND NOT email_opt_in, FALSE)", "exclude_segments"),
        ("NOT email_opt_in", "segments"),  # included: a null is simply "not a member"
    ],
)
def test_null_safe_exclusions_and_included_segments_do_not_warn(
    tmp_path: Path, rule: str, used_as: str
) -> None:
    with warnings.catch_warnings():
        warnings.simplefilter("error", NullableExclusionWarning)
        load_validated_config(with_exclusion(tmp_path, rule, used_as))


# -- Destinations of one SendGrid account share each contact's fields ----------------------


def second(**changes) -> dict:
    return destination(name="winback", list_id="c4e8a1b2-7d3f-4e9a-b6c5-0f1e2d3c4b5a", **changes)


@pytest.mark.parametrize(
    ("mine", "theirs", "fragments"),
    [
        (
            {"email": "email", "first_name": "first_name"},
            {"email": "email", "first_name": "INITCAP(first_name)"},
            ["field_mapping.first_name", "'first_name'", "'INITCAP(first_name)'"],
        ),
        (
            {"email": "email", "custom_fields": {"tier": {"source": "country_code"}}},
            {"email": "email", "custom_fields": {"Tier": {"source": "first_name"}}},
            ["custom_fields.tier", "custom_fields.Tier", "'country_code'", "'first_name'"],
        ),
        (
            {"email": "email", "custom_fields": {"code": {"source": "country_code"}}},
            {
                "email": "email",
                "custom_fields": {"code": {"source": "country_code", "type": "Number"}},
            },
            ["custom_fields.code", "Text", "Number"],
        ),
        (
            {"email": "email", "external_id": "customer_id"},
            {"email": "email", "external_id": "email"},
            ["field_mapping.external_id", "'customer_id'", "'email'"],
        ),
    ],
)
def test_two_destinations_of_one_account_may_not_map_a_field_differently(
    tmp_path: Path, mine: dict, theirs: dict, fragments: list[str]
) -> None:
    write(tmp_path, destinations=[destination(field_mapping=mine), second(field_mapping=theirs)])
    with pytest.raises(ConfigError) as error:
        load_config(tmp_path)
    message = str(error.value)
    assert "destinations.yaml" in message and "SENDGRID_API_KEY" in message
    assert "'newsletter'" in message and "'winback'" in message
    for fragment in fragments:
        assert fragment in message


def test_identical_mappings_other_accounts_and_unmapped_fields_are_fine(tmp_path: Path) -> None:
    mine = {"email": "email", "first_name": "INITCAP(first_name)", "external_id": "customer_id"}
    spaced = {"email": "email", "first_name": "INITCAP( first_name )", "external_id": "customer_id"}
    write(tmp_path, destinations=[destination(field_mapping=mine), second(field_mapping=spaced)])
    load_validated_config(tmp_path)
    fewer = {"email": "email", "external_id": "customer_id"}  # leaves first_name as stored
    write(tmp_path, destinations=[destination(field_mapping=mine), second(field_mapping=fewer)])
    load_validated_config(tmp_path)
    other_account = second(field_mapping={"email": "email"}, api_key_env="OTHER_SENDGRID_KEY")
    write(tmp_path, destinations=[destination(field_mapping=mine), other_account])
    load_validated_config(tmp_path)


def test_an_identifier_mapped_by_one_destination_of_an_account_is_required_of_all(
    tmp_path: Path,
) -> None:
    mapped = {"email": "email", "external_id": "customer_id"}
    write(tmp_path, destinations=[destination(field_mapping=mapped), second()])
    with pytest.raises(ConfigError) as error:
        load_config(tmp_path)
    message = str(error.value)
    assert "destinations.yaml" in message and "field_mapping.external_id" in message
    assert "'newsletter' map" in message and "'winback' do not" in message


# -- Text custom fields keep their leading zeros --------------------------------------------


def test_a_text_custom_field_fed_by_a_column_keeps_its_leading_zeros(tmp_path: Path) -> None:
    profiles = PROFILES.replace("email_opt_in\n", "email_opt_in,store_code,visits\n").replace(
        "true\n", "true,01234,007\n"
    )
    custom = {
        "store_code": {"source": "store_code", "type": "Text"},
        "visits": {"source": "visits", "type": "Number"},
    }
    mapping = {"email": "email", "custom_fields": custom}
    write(tmp_path, destinations=[destination(field_mapping=mapping)], profiles=profiles)
    config = load_validated_config(tmp_path)
    assert config.mapped_columns() == {"email", "store_code"}  # Number: still inferred
    frame = FileProfileSource(directory=str(config.profiles_dir)).read(config.mapped_columns())
    assert frame["store_code"].to_list() == ["01234"]
    assert frame["visits"].to_list() == [7]


def test_a_column_both_in_a_rule_and_mapped_as_text_is_read_as_text(tmp_path: Path) -> None:
    profiles = PROFILES.replace("email_opt_in\n", "email_opt_in,store_code\n").replace(
        "true\n", "true,01234\n"
    )
    segments = {"segments": [{"id": "eu", "name": "EU", "rule": "store_code = '01234'"}]}
    mapping = {"email": "email", "custom_fields": {"store": {"source": "store_code"}}}
    write(tmp_path, segments, [destination(field_mapping=mapping)], profiles)
    config = load_validated_config(tmp_path)
    assert "store_code" in config.mapped_columns()
    frame = FileProfileSource(directory=str(config.profiles_dir)).read(config.mapped_columns())
    assert frame.filter(config.segment("eu").expression).height == 1
