"""Configuration errors read as one clear line each, and one broken destination spares the rest.

Each message names the file and line (where the YAML tells it), the segment or destination,
and the key; a near-miss key, segment or column gets a "did you mean". With
skip_invalid_destinations (what the code location can load with), a destination whose own entry
is invalid is left out and the definitions say so, while an error that concerns every
destination still fails loading.
"""

from __future__ import annotations

import re
import warnings
from pathlib import Path

import dagster as dg
import pytest
import yaml

from sendgrid_pipeline.config import load_config
from sendgrid_pipeline.definitions import location_definitions
from sendgrid_pipeline.errors import ConfigError
from sendgrid_pipeline.pipeline import (
    CONFIG_CHECK,
    EXPORT_JOB,
    build_definitions,
    load_validated_config,
)
from sendgrid_pipeline.schedules import refresh_all_tags
from sendgrid_pipeline.settings import Settings
from sendgrid_pipeline_tests.helpers import resources_for

NEWSLETTER_LINE = 12  # "  - name: newsletter_eu" in the sample destinations.yaml
DESTINATIONS = ["newsletter_eu", "vip_program", "winback_campaign"]


def replace_once(path: Path, old: str, new: str) -> None:
    text = path.read_text()
    assert old in text, f"{old!r} not in {path.name}"
    path.write_text(text.replace(old, new, 1))


def line_of(path: Path, fragment: str) -> int:
    """1-based line of the first line of `path` that contains `fragment`."""
    for number, line in enumerate(path.read_text().splitlines(), 1):
        if fragment in line:
            return number
    raise AssertionError(f"{fragment!r} not in {path}")


def error_of(data_dir: Path, **kwargs) -> str:
    with pytest.raises(ConfigError) as error:
        load_validated_config(data_dir, **kwargs)
    return str(error.value)


# -- one clear message per error -------------------------------------------------------------


def test_a_misspelled_key_names_file_line_destination_and_the_key_it_meant(data_dir) -> None:
    path = data_dir / "destinations.yaml"
    replace_once(path, "    profile_cap: 100000", "    profle_cap: 100000")
    message = error_of(data_dir)
    line = line_of(path, "profle_cap")
    assert message == (
        f"{path}:{line}: destination 'newsletter_eu': unknown key 'profle_cap' "
        "(did you mean 'profile_cap'?)"
    )
    assert "Extra inputs" not in message


@pytest.mark.parametrize(
    ("old", "new", "expected"),
    [
        (
            "      first_name: first_name\n",
            "      frist_name: first_name\n",
            "unknown key 'field_mapping.frist_name' (did you mean 'first_name'?)",
        ),
        (
            "{source: loyalty_tier, type: Text}",
            "{sorce: loyalty_tier, type: Text}",
            "unknown key 'field_mapping.custom_fields.loyalty_tier.sorce' (did you mean 'source'?)",
        ),
        (
            "      email: email\n",
            "      email: email\n      phone: phone\n",
            "unknown key 'field_mapping.phone' (allowed here: email, first_name",
        ),
    ],
)
def test_nested_unknown_keys_suggest_a_key_of_their_own_level(
    data_dir, old: str, new: str, expected: str
) -> None:
    replace_once(data_dir / "destinations.yaml", old, new)
    message = error_of(data_dir)
    assert expected in message
    assert re.match(
        rf"{re.escape(str(data_dir / 'destinations.yaml'))}:\d+: destination '", message
    )


def test_a_yaml_syntax_error_names_the_file_line_and_column(data_dir) -> None:
    path = data_dir / "segments.yaml"
    replace_once(path, "  - id: north_america\n    name:", "  - id: north_america\n   name:")
    message = error_of(data_dir)
    assert "<unicode string>" not in message
    assert re.fullmatch(
        rf"{re.escape(str(path))}:{line_of(path, '   name: North')}:\d+: malformed YAML: .+",
        message,
    )
    assert "indentation" in message


def test_a_misspelled_top_level_key_is_named(data_dir) -> None:
    replace_once(data_dir / "destinations.yaml", "\ndestinations:", "\ndestination:")
    assert "found 'destination:'; did you mean 'destinations:'?" in error_of(data_dir)


def test_a_rule_naming_a_missing_column_lists_the_profile_columns_once(data_dir) -> None:
    path = data_dir / "segments.yaml"
    replace_once(path, "country_code IN ('US','CA')", "countrycode IN ('US','CA')")
    message = error_of(data_dir)
    assert message.startswith(f"{path}:{line_of(path, 'countrycode')}: segment 'north_america'")
    assert "there is no column 'countrycode' (did you mean 'country_code'?)" in message
    assert message.count("customer_id") == 1  # the profile columns, listed once
    assert "valid columns" not in message and "\n" not in message


def test_a_mapping_to_a_missing_column_says_which_column_it_meant(data_dir) -> None:
    path = data_dir / "destinations.yaml"
    replace_once(path, "{source: loyalty_tier, type: Text}", "{source: loyalty_tierr, type: Text}")
    message = error_of(data_dir)
    assert message.startswith(f"{path}:{line_of(path, 'loyalty_tierr')}: destination 'vip_program'")
    assert "'loyalty_tierr'" in message and "(did you mean 'loyalty_tier'?)" in message
    assert message.count("customer_id") == 1


def test_an_unknown_segment_suggests_the_defined_one(data_dir) -> None:
    path = data_dir / "destinations.yaml"
    replace_once(path, "segments: [eu_customers]", "segments: [eu_customer]")
    message = error_of(data_dir)
    assert message.startswith(
        f"{path}:{line_of(path, 'eu_customer]')}: destination 'newsletter_eu'"
    )
    assert "(did you mean 'eu_customers'?)" in message


def test_every_error_is_reported_one_line_each(data_dir) -> None:
    destinations = data_dir / "destinations.yaml"
    replace_once(destinations, "    profile_cap: 100000", "    profle_cap: 100000")
    replace_once(destinations, "    consent: true\n", "    consentt: true\n")  # newsletter_eu
    segments = data_dir / "segments.yaml"
    replace_once(segments, "    name: North America\n", "    nme: North America\n")
    lines = error_of(data_dir).splitlines()
    assert len(lines) == 4, lines  # nme is unknown and name is then missing: two errors
    assert any("'nme' (did you mean 'name'?)" in line for line in lines)
    assert any("'profle_cap'" in line for line in lines)
    assert any("'consentt' (did you mean 'consent'?)" in line for line in lines)
    assert all(re.match(r"/.+\.yaml:\d+: (segment|destination) '", line) for line in lines)


# -- one broken destination does not take down the others -------------------------------------


def test_strict_loading_is_the_default(data_dir) -> None:
    replace_once(data_dir / "destinations.yaml", "    profile_cap: 100000", "    profle_cap: 1")
    error_of(data_dir)
    with pytest.raises(ConfigError):
        load_config(data_dir)


def test_a_broken_destination_is_left_out_and_the_definitions_say_so(data_dir) -> None:
    replace_once(data_dir / "destinations.yaml", "    profile_cap: 100000", "    profle_cap: 1")
    config = load_validated_config(data_dir, skip_invalid_destinations=True)
    assert config.destination_names == ["vip_program", "winback_campaign"]
    assert config.skipped_destinations == ["newsletter_eu"]
    (problem,) = config.problems
    assert "destinations.yaml:" in problem.message and "profle_cap" in problem.message

    defs = build_definitions(config, resources_for(data_dir))
    job = defs.resolve_job_def(EXPORT_JOB)
    assert job.partitions_def.get_partition_keys() == ["vip_program", "winback_campaign"]
    assert job.description.startswith("LEFT OUT (invalid configuration): newsletter_eu.")
    assert "profle_cap" in job.description
    schedule = defs.resolve_schedule_def("sendgrid_refresh_schedule")
    assert "newsletter_eu" in schedule.description and "profle_cap" in schedule.description
    request = schedule.evaluate_tick(dg.build_schedule_context()).run_requests[0]
    assert request.tags.items() >= refresh_all_tags(["vip_program", "winback_campaign"]).items()
    check = dg.AssetCheckKey(dg.AssetKey("sendgrid_contacts"), CONFIG_CHECK)
    assert check in defs.resolve_asset_graph().asset_check_keys


def test_the_remaining_destinations_sync_and_the_check_fails_in_red(data_dir, sandbox) -> None:
    replace_once(data_dir / "destinations.yaml", "    profile_cap: 100000", "    profle_cap: 1")
    config = load_validated_config(data_dir, skip_invalid_destinations=True)
    job = build_definitions(config, resources_for(data_dir, sandbox)).resolve_job_def(EXPORT_JOB)
    result = job.execute_in_process(
        instance=dg.DagsterInstance.ephemeral(),
        tags=refresh_all_tags(config.destination_names),
        raise_on_error=False,
    )
    assert result.success
    synced = {
        m.partition
        for m in result.asset_materializations_for_node("sendgrid_list_sync")
        if m.partition
    }
    assert synced == {"vip_program", "winback_campaign"}
    (evaluation,) = [
        e for e in result.get_asset_check_evaluations() if e.check_name == CONFIG_CHECK
    ]
    assert not evaluation.passed and evaluation.severity == dg.AssetCheckSeverity.ERROR
    assert "newsletter_eu" in (evaluation.description or "")
    newsletter = yaml.safe_load((data_dir / "destinations.yaml").read_text())["destinations"][0]
    assert sandbox.list_member_emails(newsletter["list_id"]) == set()  # never touched


@pytest.mark.parametrize(
    ("old", "new", "skipped"),
    [
        # vip is used by vip_program and excluded by winback_campaign: both go
        (
            'rule: "COALESCE(loyalty_tier',
            'rul: "COALESCE(loyalty_tier',
            ["vip_program", "winback_campaign"],
        ),
        # eu_customers feeds newsletter_eu only
        ("('FR','DE','ES','IT','PL','PT','IE') AND", "('FR' AND", ["newsletter_eu"]),
    ],
)
def test_a_broken_segment_takes_down_only_the_destinations_that_use_it(
    data_dir, old: str, new: str, skipped: list[str]
) -> None:
    replace_once(data_dir / "segments.yaml", old, new)
    config = load_validated_config(data_dir, skip_invalid_destinations=True)
    assert config.skipped_destinations == skipped
    assert sorted(config.destination_names) == sorted(set(DESTINATIONS) - set(skipped))
    messages = [p.message for p in config.problems]
    assert messages[0].startswith(str(data_dir / "segments.yaml"))
    assert all("which is invalid (see segments.yaml)" in m for m in messages[1:])


def test_a_segment_whose_rule_fails_on_the_profiles_is_left_out_with_its_users(data_dir) -> None:
    replace_once(data_dir / "segments.yaml", "country_code IN ('FR'", "countrycode IN ('FR'")
    config = load_validated_config(data_dir, skip_invalid_destinations=True)
    assert config.skipped_destinations == ["newsletter_eu"]
    assert "eu_customers" not in {s.id for s in config.segments}


@pytest.mark.parametrize(
    ("file", "old", "new", "expected"),
    [
        # a segment used by every destination: nothing is left
        (
            "segments.yaml",
            "id: opted_out",
            "id: opted_out\n    nme: x",
            "No destination has a valid",
        ),
        ("segments.yaml", "\nsegments:", "\nsegments: [", "malformed YAML"),
        ("destinations.yaml", "name: vip_program", "name: newsletter_eu", "more than once"),
        (
            "destinations.yaml",
            "list_id: 8b2d4e6f-1a3c-4b5d-8e7f-9a0b1c2d3e4f",
            "list_id: 3f1c7a52-9f0e-4a57-9d1e-2b7f0c8a1e01",
            "list_id '3f1c7a52-9f0e-4a57-9d1e-2b7f0c8a1e01' is defined more than once",
        ),
    ],
)
def test_errors_that_concern_every_destination_still_fail_loading(
    data_dir, file: str, old: str, new: str, expected: str
) -> None:
    used_by_all = "opted_out" in old
    if used_by_all:  # make every destination exclude opted_out
        destinations = data_dir / "destinations.yaml"
        document = yaml.safe_load(destinations.read_text())
        for destination in document["destinations"]:
            destination["exclude_segments"] = sorted(
                {*destination.get("exclude_segments", [])} | {"opted_out"}
            )
        destinations.write_text(yaml.safe_dump(document, sort_keys=False))
    replace_once(data_dir / file, old, new)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        message = error_of(data_dir, skip_invalid_destinations=True)
    assert expected in message


def test_the_code_location_loads_without_a_broken_destination(data_dir) -> None:
    replace_once(data_dir / "destinations.yaml", "    profile_cap: 100000", "    profle_cap: 1")
    settings = Settings.from_env({"SENDGRID_PIPELINE_DATA_DIR": str(data_dir)})
    defs = location_definitions(settings)  # what the code location loads with these settings
    dg.Definitions.validate_loadable(defs)
    job = defs.resolve_job_def(EXPORT_JOB)
    assert job.partitions_def.get_partition_keys() == ["vip_program", "winback_campaign"]
