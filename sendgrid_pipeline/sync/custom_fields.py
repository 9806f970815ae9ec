"""Custom fields are keyed by id in SendGrid: resolve a destination's names to ids.

A missing field is an error that lists the fields that exist, unless the destination opts in to
creating it; a field created here is used only once SendGrid lists it.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable

from sendgrid_pipeline.config import Destination
from sendgrid_pipeline.errors import PipelineError
from sendgrid_pipeline.sendgrid.client import SendGridClient
from sendgrid_pipeline.sendgrid.errors import SendGridJobError


class CustomFieldError(PipelineError):
    """A mapped custom field is missing in SendGrid or has another type; nothing was sent.

    A destination's failure: the other destinations still sync.
    """


def resolve_custom_field_ids(
    client: SendGridClient,
    destination: Destination,
    log: logging.Logger | logging.LoggerAdapter,
    dry_run: bool = False,
    wait_seconds: float = 60.0,
    before_creating: Callable[[list[str]], None] | None = None,
) -> dict[str, str]:
    """SendGrid custom field name -> id for every custom field the destination maps.

    `before_creating(missing)` runs before a field is created, and may refuse the sync (the
    account's contact limit): a refused sync leaves the account as it found it.
    """
    wanted = destination.field_mapping.custom_fields
    if not wanted:
        return {}
    existing = _existing(client)
    ids: dict[str, str] = {}
    missing = []
    for name, field in wanted.items():
        found = existing.get(name.lower())
        if found is None:
            missing.append(name)
            continue
        if found["field_type"] != field.type:
            raise CustomFieldError(
                f"Destination {destination.name!r}: custom field {name!r} is a "
                f"{found['field_type']} field in SendGrid but is mapped as {field.type}. "
                "Change its type in destinations.yaml or in SendGrid. Nothing was sent."
            )
        ids[name] = str(found["id"])
    if not missing:
        return ids
    names = ", ".join(sorted(f["name"] for f in existing.values())) or "(none)"
    if not destination.create_missing_custom_fields:
        raise CustomFieldError(
            f"Destination {destination.name!r}: SendGrid has no custom field "
            f"{', '.join(repr(m) for m in missing)}. Existing custom fields: {names}. Create "
            "it in SendGrid (Marketing > Custom Fields) or set create_missing_custom_fields: "
            "true on the destination. Nothing was sent."
        )
    if dry_run:
        log.info("%s: would create custom field(s) %s", destination.name, ", ".join(missing))
        return {**ids, **{m: f"(new:{m})" for m in missing}}
    if before_creating is not None:
        before_creating(missing)
    for name in missing:
        created = client.create_field_definition(name, wanted[name].type)
        ids[name] = str(created["id"])
        log.info("%s: created custom field %s (%s)", destination.name, name, created["id"])
    _wait_until_listed(client, {ids[m] for m in missing}, wait_seconds)
    return ids


def _existing(client: SendGridClient) -> dict[str, dict]:
    definitions = client.field_definitions().get("custom_fields") or []
    return {str(f["name"]).lower(): f for f in definitions}


def _wait_until_listed(client: SendGridClient, field_ids: set[str], wait_seconds: float) -> None:
    deadline = time.monotonic() + wait_seconds
    interval = client.poll_interval_seconds
    while True:
        listed = {str(f["id"]) for f in _existing(client).values()}
        if field_ids <= listed:
            return
        if time.monotonic() + interval > deadline:
            raise SendGridJobError(
                f"custom field(s) {sorted(field_ids - listed)} created but not listed after "
                f"{wait_seconds:.0f}s; the next run uses them"
            )
        time.sleep(interval)
        interval = min(interval * 1.5, 5.0)
