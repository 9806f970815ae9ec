"""Every request the pipeline sends, checked against SendGrid's official API description.

The contract (devkit/sandbox/contract.py) reads the OpenAPI files SendGrid publishes; the
sandbox records each request's departures from them while answering as usual.
"""

from __future__ import annotations

import json
from pathlib import Path

import polars as pl
import pytest

from sendgrid_pipeline.config import load_config
from sendgrid_pipeline_tests.devkit.sandbox import SandboxServer
from sendgrid_pipeline_tests.devkit.sandbox.contract import Contract
from sendgrid_pipeline_tests.helpers import export, step_failure_messages

LIST = "/v3/marketing/lists/3f1c7a52-9f0e-4a57-9d1e-2b7f0c8a1e01"


@pytest.fixture(scope="module")
def contract() -> Contract:
    return Contract()


def fresh(contract: Contract) -> Contract:
    return Contract(contract.spec_dir)


@pytest.mark.parametrize(
    ("method", "path", "query", "body"),
    [
        ("PUT", "/v3/marketing/contacts", {}, {"contacts": [{"email": "a@example.com"}]}),
        (
            "PUT",
            "/v3/marketing/contacts",
            {},
            {"list_ids": ["x"], "contacts": [{"email": "a@b.co"}]},
        ),
        ("GET", "/v3/marketing/contacts/count", {}, None),
        ("GET", "/v3/marketing/contacts/imports/abc-123", {}, None),
        ("POST", "/v3/marketing/contacts/search/emails", {}, {"emails": ["a@example.com"]}),
        ("DELETE", f"{LIST}/contacts", {"contact_ids": ["id1,id2"]}, None),
        ("GET", "/v3/marketing/lists", {"page_size": ["100"]}, None),
        ("GET", LIST, {"contact_sample": ["true"]}, None),
        ("POST", "/v3/marketing/contacts/exports", {}, {"list_ids": ["x"], "file_type": "json"}),
    ],
)
def test_requests_as_described_pass(contract, method, path, query, body) -> None:
    raw = json.dumps(body).encode() if body is not None else b""
    assert fresh(contract).check(method, path, query, raw) == []


@pytest.mark.parametrize(
    ("method", "path", "query", "body", "where"),
    [
        # the search refuses emails over 100 characters (maxLength in the description)
        (
            "POST",
            "/v3/marketing/contacts/search/emails",
            {},
            {"emails": ["a" * 95 + "@example.com"]},
            "body",
        ),
        ("PUT", "/v3/marketing/contacts", {}, {"list_ids": ["x"]}, "body"),  # contacts missing
        ("PUT", "/v3/marketing/contacts", {}, {"contacts": "a@example.com"}, "body"),
        ("DELETE", f"{LIST}/contacts", {"ids": ["id1"]}, None, "query"),  # undeclared name
        ("GET", "/v3/marketing/lists", {"page_size": ["many"]}, None, "query"),
        ("PATCH", "/v3/marketing/contacts/count", {}, None, "operation"),
        ("GET", "/v3/marketing/contacts/count", {}, {"unexpected": True}, "body"),
    ],
)
def test_requests_that_depart_from_the_description_are_named(
    contract, method, path, query, body, where
) -> None:
    raw = json.dumps(body).encode() if body is not None else b""
    found = fresh(contract).check(method, path, query, raw)
    assert found, f"{method} {path} passed the contract"
    assert {v.where for v in found} == {where}
    assert all(path in str(v) for v in found)


def test_a_path_no_file_describes_is_kept_apart(contract) -> None:
    checker = fresh(contract)
    assert checker.check("GET", "/v3/not/described", {}, b"") == []
    assert checker.undescribed == {("GET", "/v3/not/described")}
    assert not checker.checked


def test_the_files_describe_the_endpoints_the_pipeline_uses(contract) -> None:
    described = contract.templates
    for operation in [
        ("PUT", "/v3/marketing/contacts"),
        ("DELETE", "/v3/marketing/contacts"),
        ("GET", "/v3/marketing/contacts/imports/{id}"),
        ("POST", "/v3/marketing/contacts/search/emails"),
        ("POST", "/v3/marketing/contacts/exports"),
        ("DELETE", "/v3/marketing/lists/{id}/contacts"),
        ("GET", "/v3/marketing/field_definitions"),
    ]:
        assert operation in described


def leave_and_edit(data_dir: Path) -> int:
    """A tenth of the opted-in profiles opt out, another tenth changes a name: churn."""
    path = data_dir / "profiles" / "profiles.csv"
    profiles = pl.read_csv(path, infer_schema_length=0).with_row_index("row")
    leaving = (pl.col("row") % 10 == 3) & (pl.col("email_opt_in") == "true")
    changed = profiles.with_columns(
        pl.when(leaving).then(pl.lit("false")).otherwise("email_opt_in").alias("email_opt_in"),
        pl.when(pl.col("row") % 10 == 5)
        .then(pl.col("first_name") + "x")
        .otherwise("first_name")
        .alias("first_name"),
    )
    changed.drop("row").write_csv(path)
    return profiles.filter(leaving).height


def test_every_request_of_an_export_a_churn_and_a_reconcile_keeps_the_contract(
    data_dir: Path,
) -> None:
    contract = Contract()
    lists = SandboxServer.lists_from_destinations_file(data_dir / "destinations.yaml")
    with SandboxServer(lists=lists, job_delay_seconds=0.02, contract=contract) as sandbox:
        first = export(data_dir, sandbox)
        assert first.success, step_failure_messages(first)
        assert leave_and_edit(data_dir) > 0
        churn = export(data_dir, sandbox)
        assert churn.success, step_failure_messages(churn)
        again = export(data_dir, sandbox, tags={"sendgrid/reconcile": "true"})
        assert again.success, step_failure_messages(again)
        removals = [r for r in sandbox.requests if r.method == "DELETE"]
    assert removals, "the churn removed nobody: the removal requests went unchecked"
    assert contract.violations == [], "\n".join(map(str, contract.violations))
    used = {op for op in contract.checked}
    for operation in [
        ("PUT", "/v3/marketing/contacts"),
        ("GET", "/v3/marketing/contacts/imports/{id}"),
        ("DELETE", "/v3/marketing/lists/{id}/contacts"),
        ("POST", "/v3/marketing/contacts/exports"),
        ("GET", "/v3/marketing/contacts/exports/{id}"),
        ("GET", "/v3/marketing/field_definitions"),
    ]:
        assert operation in used, f"{operation} was never sent"
    assert contract.undescribed == set(), contract.undescribed
    assert len(load_config(data_dir).destinations) > 1
