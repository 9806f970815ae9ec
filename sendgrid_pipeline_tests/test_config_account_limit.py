"""max_contacts and contact_limit_margin: valid values, and one limit per SendGrid account."""

from __future__ import annotations

from pathlib import Path

import pytest

from sendgrid_pipeline.config import load_config
from sendgrid_pipeline.errors import ConfigError
from sendgrid_pipeline_tests.test_config import destination, write

OTHER_LIST = "1a2b3c4d-0000-4000-8000-000000000002"


def test_the_limit_is_off_by_default_and_loads_when_set(tmp_path: Path) -> None:
    (plain,) = load_config(write(tmp_path / "a")).destinations
    assert (plain.max_contacts, plain.contact_limit_margin) == (None, 0.0)
    limited = destination(max_contacts=50_000, contact_limit_margin=0.05)
    (dest,) = load_config(write(tmp_path / "b", destinations=[limited])).destinations
    assert (dest.max_contacts, dest.contact_limit_margin) == (50_000, 0.05)


@pytest.mark.parametrize(
    ("changes", "expected"),
    [
        ({"max_contacts": 0}, "max_contacts: Input should be greater than 0"),
        ({"contact_limit_margin": 1}, "contact_limit_margin: Input should be less than 1"),
        ({"max_contact": 10}, "'max_contact' (did you mean 'max_contacts'?)"),
    ],
)
def test_bad_values_name_the_key(tmp_path: Path, changes: dict, expected: str) -> None:
    with pytest.raises(ConfigError) as error:
        load_config(write(tmp_path, destinations=[destination(**changes)]))
    assert "destinations.yaml" in str(error.value) and "'newsletter'" in str(error.value)
    assert expected in str(error.value)


def test_destinations_of_one_account_must_agree_on_its_limit(tmp_path: Path) -> None:
    first = destination(max_contacts=1000)
    second = destination(name="promo", list_id=OTHER_LIST)  # same api_key_env, no limit
    with pytest.raises(ConfigError) as error:
        load_config(write(tmp_path, destinations=[first, second]))
    message = str(error.value)
    assert "destinations.yaml:" in message
    assert "api_key_env SENDGRID_API_KEY" in message
    assert "'newsletter' has max_contacts: 1000, 'promo' has max_contacts: null" in message


def test_destinations_of_other_accounts_may_differ(tmp_path: Path) -> None:
    first = destination(max_contacts=1000, contact_limit_margin=0.1)
    second = destination(name="promo", list_id=OTHER_LIST, api_key_env="OTHER_SENDGRID_KEY")
    same = destination(
        name="news2",
        list_id="1a2b3c4d-0000-4000-8000-000000000003",
        max_contacts=1000,
        contact_limit_margin=0.1,
    )
    config = load_config(write(tmp_path, destinations=[first, second, same]))
    assert [d.max_contacts for d in config.destinations] == [1000, None, 1000]
