"""The account's contact limit: refuse a sync whose new contacts would pass it.

SendGrid keeps one contact per email for the whole account, and a plan allows a fixed number
of contacts. Before any upsert the sync reads the account's count
(https://www.twilio.com/docs/sendgrid/api-reference/contacts/get-total-contact-count) and
refuses, sending nothing, when the count plus this sync's new contacts would pass the
destination's `max_contacts` less its `contact_limit_margin`.

New contacts are counted as the plan's adds: contacts new to the list. Some of them may
already be in the account (on another list) and would not raise its count, so this is a safe
upper bound: it may refuse a sync the account could just hold, never let one through that
passes the limit (apart from contacts added to the account by others at the same time).
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass, replace

from sendgrid_pipeline.config import Destination
from sendgrid_pipeline.errors import PipelineError
from sendgrid_pipeline.sendgrid.client import SendGridClient
from sendgrid_pipeline.sync.options import SyncRefused
from sendgrid_pipeline.sync.plan import SyncPlan


@dataclass(frozen=True)
class AccountCheck:
    """The account's counts before this sync and what the limit check made of them."""

    contact_count: int | None  # None: the count could not be read (no limit to check)
    billable_count: int | None
    new_contacts: int  # the plan's adds: an upper bound of the contacts new to the account
    max_contacts: int | None
    margin: float = 0.0
    refusal: str = ""  # a dry run's would-be refusal (a real run raises it instead)

    @property
    def limit(self) -> int | None:
        """max_contacts less the margin kept free (None: no limit configured)."""
        if self.max_contacts is None:
            return None
        return math.floor(round(self.max_contacts * (1 - self.margin), 6))

    def summary(self) -> str:
        """One line for metadata: whether the sync fits the limit."""
        if self.contact_count is None:
            return "not checked: the account's contact count could not be read"
        if self.limit is None:
            return "not checked: no max_contacts for this account"
        if self.refusal:
            return f"over the limit (dry run, would refuse): {self.refusal}"
        return f"ok: {self.contact_count} + up to {self.new_contacts} new <= limit {self.limit}"


def over_limit_message(check: AccountCheck, destination: Destination, list_id: str) -> str:
    """Why the sync is refused, or "" when it fits (or nothing is checked)."""
    limit = check.limit
    if limit is None or check.contact_count is None or not check.new_contacts:
        return ""
    total = check.contact_count + check.new_contacts
    if total <= limit:
        return ""
    margin = (
        f" (max_contacts {check.max_contacts} less contact_limit_margin {check.margin:.0%})"
        if check.margin
        else " (max_contacts)"
    )
    return (
        f"Destination {destination.name!r}: the SendGrid account (api_key_env "
        f"{destination.api_key_env}) holds {check.contact_count} contacts and this sync would "
        f"add up to {check.new_contacts} new ones (contacts new to list {list_id}, each counted "
        f"as new to the account), {total} in all: over the account's limit of {limit}{margin} "
        f"by {total - limit}. Nothing was sent. Free room in the account (delete contacts "
        "it no longer needs), narrow the destination's segments, or raise max_contacts if the "
        "SendGrid plan allows more contacts."
    )


def check_account_limit(
    client: SendGridClient,
    destination: Destination,
    plan: SyncPlan,
    dry_run: bool,
    log: logging.Logger | logging.LoggerAdapter,
) -> AccountCheck:
    """Read the account's counts; raise SyncRefused (not retryable) for a plan past the limit."""
    return check_new_contacts(client, destination, plan.adds, dry_run, log)


def check_new_contacts(
    client: SendGridClient,
    destination: Destination,
    new_contacts: int,
    dry_run: bool,
    log: logging.Logger | logging.LoggerAdapter,
) -> AccountCheck:
    """Read the account's counts; raise SyncRefused for `new_contacts` past the limit.

    A dry run is never refused: the would-be refusal is logged and kept in the check. Without
    max_contacts a count that cannot be read is only a warning; with it, the error stands
    (a limit that cannot be checked is not assumed to hold).
    """
    try:
        counted = client.contact_count()
    except PipelineError as error:
        if destination.max_contacts is not None:
            raise
        log.warning(
            "%s: the account's contact count could not be read: %s", destination.name, error
        )
        return AccountCheck(None, None, new_contacts, None, destination.contact_limit_margin)
    check = AccountCheck(
        contact_count=counted.contact_count,
        billable_count=counted.billable_count,
        new_contacts=new_contacts,
        max_contacts=destination.max_contacts,
        margin=destination.contact_limit_margin,
    )
    message = over_limit_message(check, destination, destination.list_id)
    if not message:
        return check
    if dry_run:
        log.warning("%s (dry run: nothing is sent either way)", message)
        return replace(check, refusal=message)
    raise SyncRefused(message)
