"""The bad input corpus (data/bad_inputs.yaml): each case ends exactly as the file says."""

from __future__ import annotations

import logging
import shutil
from pathlib import Path

import polars as pl
import pytest
import yaml

from sendgrid_pipeline.config import Destination, FieldMapping, Segment
from sendgrid_pipeline.errors import ConfigError, ProfileDataError
from sendgrid_pipeline.sendgrid.client import SendGridClient
from sendgrid_pipeline.state import SyncStateStore
from sendgrid_pipeline.sync.apply import DestinationSync
from sendgrid_pipeline.transform import destination_contacts, segment_membership
from sendgrid_pipeline_tests.devkit.sandbox import SandboxServer
from sendgrid_pipeline_tests.helpers import export, step_failure_messages

CORPUS = yaml.safe_load((Path(__file__).parent / "data" / "bad_inputs.yaml").read_text())
FIELDS = ["email", "first_name", "last_name", "city", "country", "state_province_region"]
LIST_ID = "7a0e2b1c-3d4e-4f5a-8b6c-7d8e9f0a1b2c"
DESTINATION = Destination(
    name="corpus",
    display_name="Corpus",
    list_id=LIST_ID,
    consent=True,
    field_mapping=FieldMapping(**{f: f for f in FIELDS}),
    segments=("everyone",),
)


def corpus_profiles() -> pl.DataFrame:
    rows = []
    for index, case in enumerate(CORPUS["rows"]):
        profile = case["profile"]
        rows.append(
            {f: profile.get(f) for f in FIELDS}
            | {"customer_id": profile.get("customer_id", f"R{index:03}"), "case": case["id"]}
        )
    return pl.DataFrame(
        rows, schema={"customer_id": pl.String, "case": pl.String} | {f: pl.String for f in FIELDS}
    )


def test_the_corpus_is_large_enough() -> None:
    assert len(CORPUS["rows"]) + len(CORPUS["pipeline"]) >= 30


def test_every_row_case_is_accepted_or_rejected_with_its_reason(tmp_path: Path) -> None:
    profiles = corpus_profiles()
    membership = segment_membership(profiles, (Segment(id="everyone", name="All", rule="TRUE"),))
    result = destination_contacts(profiles, membership, DESTINATION)
    case_of = dict(profiles.select("customer_id", "case").iter_rows())
    accepted = {
        case_of[c]: e for c, e in result.accepted.select("customer_id", "email").iter_rows()
    }
    rejected = {
        case_of[c]: r for c, r in result.rejected.select("customer_id", "reason").iter_rows()
    }
    for case in CORPUS["rows"]:
        if case["expect"] == "accepted":
            assert accepted.get(case["id"]) == case["normalized_email"], case["id"]
        else:
            assert rejected.get(case["id"]) == case["expect"], case["id"]
    assert len(accepted) + len(rejected) == len(CORPUS["rows"])  # none silently dropped

    # what we accept, SendGrid (the sandbox) accepts too: no row comes back rejected
    with SandboxServer(lists={LIST_ID: "Corpus"}, job_delay_seconds=0.01) as sandbox:
        client = SendGridClient(sandbox.api_key, sandbox.base_url, poll_interval_seconds=0.01)
        store = SyncStateStore(tmp_path / "state.sqlite")
        report = DestinationSync(client, store, DESTINATION, logging.getLogger("corpus")).run(
            result.accepted
        )
        assert report.rejected.height == 0, report.rejected.to_dicts()
        assert sandbox.list_member_emails(LIST_ID) == set(accepted.values())


def _edit_yaml(path: Path, change) -> None:
    document = yaml.safe_load(path.read_text())
    change(document)
    path.write_text(yaml.safe_dump(document, sort_keys=False))


def _winback(document: dict) -> dict:
    return next(d for d in document["destinations"] if d["name"] == "winback_campaign")


def _edit_profiles(data_dir: Path, change) -> None:
    path = data_dir / "profiles" / "profiles.csv"
    frame = pl.read_csv(path, infer_schema_length=0)
    change(frame).write_csv(path)


def _as_parquet_with_a_text_lifetime_value(data_dir: Path) -> None:
    """profiles.csv as Parquet, and a second Parquet file where lifetime_value is text."""
    profiles = data_dir / "profiles" / "profiles.csv"
    frame = pl.read_csv(profiles, try_parse_dates=True, schema_overrides={"postal_code": pl.String})
    frame.write_parquet(profiles.with_suffix(".parquet"))
    profiles.unlink()
    extra = frame.head(1).with_columns(
        pl.lit("Z0000001").alias("customer_id"), pl.lit("n/a").alias("lifetime_value")
    )
    extra.write_parquet(data_dir / "profiles" / "profiles_extra.parquet")


def _repeat_profiles(data_dir: Path, copies: int) -> None:
    """profiles.csv repeated under new ids (past type inference), the last lifetime_value text."""
    path = data_dir / "profiles" / "profiles.csv"
    frame = pl.read_csv(path, infer_schema_length=0)
    repeated = pl.concat(
        frame.with_columns(pl.col("customer_id") + f"-{n}") for n in range(copies)
    ).with_columns(
        pl.when(pl.int_range(pl.len()) == pl.len() - 1)
        .then(pl.lit("n/a"))
        .otherwise(pl.col("lifetime_value"))
        .alias("lifetime_value")
    )
    repeated.write_csv(path)


def _setup(case_id: str, data_dir: Path, sandbox: SandboxServer) -> None:
    profiles = data_dir / "profiles" / "profiles.csv"
    destinations = data_dir / "destinations.yaml"
    first_id = pl.col("customer_id") == "C0000001"
    setups = {
        "empty_profile_file": lambda: profiles.write_bytes(b""),
        "missing_profile_directory": lambda: shutil.rmtree(data_dir / "profiles"),
        "no_profile_files": lambda: profiles.unlink(),
        "ragged_csv": lambda: profiles.write_text(profiles.read_text() + "C9" + ",x" * 40 + "\n"),
        "missing_customer_id_column": lambda: _edit_profiles(
            data_dir, lambda f: f.rename({"customer_id": "id"})
        ),
        "duplicate_customer_id": lambda: _edit_profiles(
            data_dir,
            lambda f: f.with_columns(
                pl.when(pl.col("customer_id") == "C0000002")
                .then(pl.lit("C0000001"))
                .otherwise(pl.col("customer_id"))
                .alias("customer_id")
            ),
        ),
        "null_customer_id": lambda: _edit_profiles(
            data_dir,
            lambda f: f.with_columns(
                pl.when(first_id).then(None).otherwise(pl.col("customer_id")).alias("customer_id")
            ),
        ),
        "wrong_column_type_in_rule": lambda: _edit_profiles(
            data_dir,
            lambda f: f.with_columns(
                pl.when(first_id)
                .then(pl.lit("n/a"))
                .otherwise(pl.col("lifetime_value"))
                .alias("lifetime_value")
            ),
        ),
        "semicolon_separated_csv": lambda: pl.read_csv(profiles, infer_schema_length=0).write_csv(
            profiles, separator=";"
        ),
        "latin1_csv": lambda: profiles.write_bytes(
            profiles.read_text(encoding="utf-8").encode("latin-1", errors="replace")
        ),
        "type_changes_after_inferred_rows": lambda: _repeat_profiles(data_dir, 4),
        "duplicate_customer_id_across_files": lambda: (
            pl.read_csv(profiles, infer_schema_length=0)
            .slice(4, 1)
            .write_csv(data_dir / "profiles" / "profiles_extra.csv")
        ),
        "parquet_files_disagree_on_a_type": lambda: _as_parquet_with_a_text_lifetime_value(
            data_dir
        ),
        "membership_file_without_customer_id": lambda: (
            data_dir / "memberships" / "churn_risk.csv"
        ).write_text("id,churn_score\nC0000007,0.5\n"),
        "malformed_segments_yaml": lambda: (data_dir / "segments.yaml").write_text("segments: [\n"),
        "malformed_destinations_yaml": lambda: destinations.write_text(
            "destinations:\n  - {name\n"
        ),
        "rule_names_missing_column": lambda: _edit_yaml(
            data_dir / "segments.yaml",
            lambda d: next(s for s in d["segments"] if s["id"] == "vip").update(
                rule="loyalty_level IN ('gold') AND email_opt_in"
            ),
        ),
        "mapping_names_missing_column": lambda: _edit_yaml(
            destinations, lambda d: _winback(d)["field_mapping"].update(last_name="surname")
        ),
        "destination_without_consent": lambda: _edit_yaml(
            destinations, lambda d: _winback(d).update(consent=False)
        ),
        "unknown_list_id": lambda: _edit_yaml(
            destinations,
            lambda d: _winback(d).update(list_id="00000000-0000-4000-8000-000000000000"),
        ),
        "revoked_key": lambda: sandbox.revoked_keys.add(sandbox.api_key),
        "key_without_scope": lambda: sandbox.forbidden_keys.add(sandbox.api_key),
        "missing_key_variable": lambda: _edit_yaml(
            destinations, lambda d: _winback(d).update(api_key_env="WINBACK_SENDGRID_KEY")
        ),
    }
    setups[case_id]()


@pytest.mark.parametrize("case", CORPUS["pipeline"], ids=[c["id"] for c in CORPUS["pipeline"]])
def test_every_pipeline_case_fails_clearly_and_sends_nothing(data_dir, sandbox, case) -> None:
    _setup(case["id"], data_dir, sandbox)
    try:
        result = export(data_dir, sandbox, partitions=["winback_campaign"])
    except (ConfigError, ProfileDataError) as error:  # refused when the definitions load
        message = str(error)
    else:
        assert not result.success, case["id"]
        message = step_failure_messages(result)
    for fragment in case["expect_error"]:
        assert fragment in message, (case["id"], fragment, message)
    sent = [r for r in sandbox.requests if r.method in ("PUT", "DELETE")]
    assert len(sent) == case["sent"]
    assert sandbox.api_key not in message
