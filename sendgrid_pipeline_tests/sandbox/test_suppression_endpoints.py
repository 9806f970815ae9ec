"""The sandbox's suppression endpoints answer as tsg_suppressions_v3.json describes them."""

from __future__ import annotations

import requests

from sendgrid_pipeline_tests.devkit.sandbox import SandboxServer

T0 = 1_700_000_000


def get(sandbox: SandboxServer, path: str, key: str | None = None, **params: object):
    return requests.get(
        f"{sandbox.base_url}{path}",
        params=params,
        headers={"Authorization": f"Bearer {key or sandbox.api_key}"},
        timeout=10,
    )


def test_pages_by_limit_and_offset_within_an_inclusive_time_window(sandbox) -> None:
    for n in range(7):
        sandbox.add_suppression("unsubscribes", f"U{n}@Example.com", T0 + n)
    answer = get(sandbox, "/v3/suppression/unsubscribes", start_time=T0 + 1, end_time=T0 + 5)
    assert answer.status_code == 200
    assert "X-RateLimit-Remaining" in answer.headers
    everything = answer.json()
    assert [r["created"] for r in everything] == [T0 + 5, T0 + 4, T0 + 3, T0 + 2, T0 + 1]
    assert everything[0] == {"created": T0 + 5, "email": "U5@Example.com"}  # case kept
    pages = [
        get(
            sandbox,
            "/v3/suppression/unsubscribes",
            start_time=T0 + 1,
            end_time=T0 + 5,
            limit=2,
            offset=offset,
        ).json()
        for offset in (0, 2, 4, 6)
    ]
    assert [len(p) for p in pages] == [2, 2, 1, 0]
    assert [r for p in pages for r in p] == everything


def test_one_record_per_address_and_kind_with_reason_and_status(sandbox) -> None:
    sandbox.add_suppression(
        "bounces", "a@example.com", T0, reason="550 no such user", status="5.1.1"
    )
    sandbox.add_suppression("bounces", "A@example.com", T0 + 9, reason="550 again", status="5.1.1")
    sandbox.add_suppression("spam_reports", "a@example.com", T0)
    bounces = get(sandbox, "/v3/suppression/bounces").json()
    assert bounces == [
        {"created": T0 + 9, "email": "A@example.com", "reason": "550 again", "status": "5.1.1"}
    ]
    assert len(get(sandbox, "/v3/suppression/spam_reports").json()) == 1
    assert get(sandbox, "/v3/suppression/invalid_emails").json() == []
    assert get(sandbox, "/v3/suppression/blocks").json() == []


def test_bad_parameters_are_a_400_naming_the_parameter(sandbox) -> None:
    path = "/v3/suppression/unsubscribes"
    for params, field in (
        ({"limit": 0}, "limit"),
        ({"limit": 501}, "limit"),
        ({"limit": "ten"}, "limit"),
        ({"offset": -1}, "offset"),
        ({"start_time": "yesterday"}, "start_time"),
        ({"start_time": T0 + 1, "end_time": T0}, "start_time"),
    ):
        answer = get(sandbox, path, **params)
        assert answer.status_code == 400, params
        assert answer.json()["errors"][0]["field"] == field
    assert get(sandbox, path, limit=500).status_code == 200


def test_a_wrong_key_is_a_401(sandbox) -> None:
    answer = get(sandbox, "/v3/suppression/bounces", key="SG.wrong")
    assert answer.status_code == 401
    assert answer.json()["errors"][0]["message"] == "authorization required"


def test_group_suppressions_are_the_groups_addresses_unpaged(sandbox) -> None:
    sandbox.add_group_suppression(42, "G1@example.com")
    sandbox.add_group_suppression(42, "g2@example.com")
    sandbox.create_suppression_group(43)
    assert get(sandbox, "/v3/asm/groups/42/suppressions").json() == [
        "G1@example.com",
        "g2@example.com",
    ]
    assert get(sandbox, "/v3/asm/groups/43/suppressions").json() == []
    assert get(sandbox, "/v3/asm/groups/44/suppressions").status_code == 404
    assert get(sandbox, "/v3/asm/groups/x/suppressions").status_code == 400
    sandbox.remove_suppression("unsubscribes", "nobody@example.com")  # a no-op, not an error
