"""Plan the change that makes a list hold exactly the desired contacts (polars joins only)."""

from __future__ import annotations

from dataclasses import dataclass

import polars as pl

from sendgrid_pipeline.privacy import mask_email_expr


@dataclass(frozen=True)
class SyncPlan:
    """add: new to the list; update: a mapped field changed; remove: left every segment and
    was put there by us; unchanged: nothing to send."""

    upserts: pl.DataFrame  # email, contact_json, action ('add' | 'update'), email order
    removes: pl.DataFrame  # email, contact_id (null when not yet known)
    unchanged: int
    list_members_before: int  # members we manage on the list
    unmanaged_kept: int = 0  # on the list, not in the segments, not put there by us

    @property
    def adds(self) -> int:
        return self.upserts.filter(pl.col("action") == "add").height

    @property
    def updates(self) -> int:
        return self.upserts.height - self.adds

    def counts(self) -> dict[str, int]:
        return {
            "add": self.adds,
            "update": self.updates,
            "remove": self.removes.height,
            "unchanged": self.unchanged,
        }

    def sample(self, per_action: int = 5, customer_ids: pl.DataFrame | None = None) -> pl.DataFrame:
        """A masked sample of each action, for dry runs and metadata.

        `customer_ids` (email, customer_id) puts the customer id beside each masked email, so
        the sample can be checked against the profiles; a leaver has none any more.
        """
        upserts = self.upserts.group_by("action", maintain_order=True).head(per_action)
        removes = self.removes.head(per_action).with_columns(pl.lit("remove").alias("action"))
        sample = pl.concat([upserts.select("action", "email"), removes.select("action", "email")])
        if customer_ids is not None:
            ids = customer_ids.select("email", "customer_id").unique("email")
            sample = sample.join(ids, on="email", how="left", maintain_order="left")
            sample = sample.select("action", "customer_id", "email")
        return sample.with_columns(mask_email_expr("email"))


def build_plan(desired: pl.DataFrame, recorded: pl.DataFrame) -> SyncPlan:
    """`desired`: email, contact_json. `recorded`: email, contact_id, contact_json, managed.

    Members recorded as not managed (on the list before us) are updated while they are in
    the segments but never removed.
    """
    joined = desired.join(
        recorded.rename({"contact_json": "recorded_json"}),
        on="email",
        how="full",
        coalesce=True,
    )
    action = (
        pl.when(pl.col("recorded_json").is_null())
        .then(pl.lit("add"))
        .when(pl.col("contact_json").is_null() & pl.col("managed"))
        .then(pl.lit("remove"))
        .when(pl.col("contact_json").is_null())
        .then(pl.lit("unmanaged"))
        .when(pl.col("contact_json") != pl.col("recorded_json"))
        .then(pl.lit("update"))
        .otherwise(pl.lit("unchanged"))
    )
    joined = joined.with_columns(action.alias("action"))
    upserts = (
        joined.filter(pl.col("action").is_in(["add", "update"]))
        .select("email", "contact_json", "action")
        .sort("email")
    )
    removes = (
        joined.filter(pl.col("action") == "remove").select("email", "contact_id").sort("email")
    )
    counts = dict(joined.group_by("action").len().iter_rows())
    return SyncPlan(
        upserts=upserts,
        removes=removes,
        unchanged=counts.get("unchanged", 0),
        list_members_before=int(recorded["managed"].sum()),
        unmanaged_kept=counts.get("unmanaged", 0),
    )


def carry_identifiers(
    contacts: pl.DataFrame, recorded: pl.DataFrame, identifiers: list[str]
) -> pl.DataFrame:
    """Keep each contact's identifier set: SendGrid requires every identifier a contact has
    on each update, so one the profile lost is sent with its last recorded value."""
    if not identifiers or recorded.height == 0:
        return contacts
    previous = recorded.select(
        "email",
        *[
            pl.col("contact_json").str.json_path_match(f"$.{field}").alias(f"_recorded.{field}")
            for field in identifiers
        ],
    )
    return (
        contacts.join(previous, on="email", how="left")
        .with_columns(
            [pl.coalesce(field, f"_recorded.{field}").alias(field) for field in identifiers]
        )
        .drop([f"_recorded.{field}" for field in identifiers])
    )
