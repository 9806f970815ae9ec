"""The API key never leaks, and emails stay masked, across full runs, failures included."""

from __future__ import annotations

import secrets
from pathlib import Path

import dagster as dg
import polars as pl
import yaml
from dagster._serdes import serialize_value

from sendgrid_pipeline.sendgrid.resource import SendGridResource
from sendgrid_pipeline_tests.helpers import export


def _event_log_text(instance: dg.DagsterInstance) -> str:
    """Everything Dagster stored: every event of every run, metadata and errors included."""
    texts = []
    for run in instance.get_runs():
        texts.append(serialize_value(run))
        texts.extend(serialize_value(record) for record in instance.all_logs(run.run_id))
    return "\n".join(texts)


def _files_text(*roots: Path) -> str:
    parts = []
    for root in roots:
        for path in root.rglob("*"):
            if path.is_file():
                parts.append(path.read_bytes().decode("utf-8", errors="replace"))
    return "\n".join(parts)


def test_no_key_and_no_plain_email_anywhere_after_runs_and_failures(
    data_dir, sandbox, capfd, tmp_path
) -> None:
    key = f"SG.leakcheck-{secrets.token_hex(16)}"
    sandbox.api_key = key  # the sandbox accepts only this distinctive key, which runs now use
    home = tmp_path / "dagster_home"
    home.mkdir()
    with dg.instance_for_test(temp_dir=str(home)) as instance:
        # 1. a full successful export of every destination
        ok = export(data_dir, sandbox, instance=instance)
        assert ok.success
        # 2. a failure inside SendGrid calls: the list id is wrong (404)
        path = data_dir / "destinations.yaml"
        document = yaml.safe_load(path.read_text())
        good_list = document["destinations"][2]["list_id"]
        document["destinations"][2]["list_id"] = "00000000-0000-4000-8000-000000000000"
        path.write_text(yaml.safe_dump(document))
        assert not export(
            data_dir, sandbox, partitions=["winback_campaign"], instance=instance
        ).success
        document["destinations"][2]["list_id"] = good_list
        path.write_text(yaml.safe_dump(document))
        # 3. the key is revoked (401), and 4. it lacks the scope (403)
        sandbox.revoked_keys.add(key)
        assert not export(data_dir, sandbox, instance=instance).success
        sandbox.revoked_keys.clear()
        sandbox.forbidden_keys.add(key)
        assert not export(data_dir, sandbox, instance=instance).success
        sandbox.forbidden_keys.clear()
        stored = _event_log_text(instance)

    captured = capfd.readouterr()
    places = {
        "stdout": captured.out,
        "stderr": captured.err,
        "event log": stored,
        "files": _files_text(home, data_dir / "state", data_dir / "storage"),
        "resource repr": repr(SendGridResource(api_key=key)),
    }
    for where, text in places.items():
        assert key not in text, f"API key leaked into {where}"
        assert key[3:20] not in text, f"part of the API key leaked into {where}"

    # emails in logs and metadata are masked: no address that was exported appears in full
    exported = pl.concat(
        [pl.read_parquet(p) for p in (data_dir / "storage" / "sendgrid_contacts").glob("*.parquet")]
    )["email"].to_list()
    assert len(exported) > 1000
    for where in ("stdout", "stderr", "event log"):
        leaked = [e for e in exported if e in places[where]]
        assert leaked == [], f"{len(leaked)} plain emails in {where}, e.g. {leaked[:1]}"
