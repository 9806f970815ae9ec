"""Each bad configuration fails at load time with an error naming the file, item and key."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from sendgrid_pipeline.config import load_config
from sendgrid_pipeline.errors import ConfigError
from sendgrid_pipeline.pipeline import load_validated_config

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
            ["'newsletter'", "field_mapping.email", "Field required"],
        ),
        (
            [destination(field_mapping={"email": "email", "phone": "tel"})],
            ["'newsletter'", "field_mapping.phone", "Extra inputs"],
        ),
        ([destination(list_id="not a list id!")], ["'newsletter'", "list_id"]),
        ([destination(profile_cap=0)], ["'newsletter'", "profile_cap"]),
        ([destination(segments=[])], ["'newsletter'", "segments"]),
        ([destination(consentt=True)], ["'newsletter'", "consentt"]),
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
    with pytest.raises(ConfigError, match=r"segments.yaml: malformed YAML"):
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
