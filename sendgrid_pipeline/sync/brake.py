"""The removal brake: refuse a plan that looks like a broken source rather than a real change."""

from __future__ import annotations

from sendgrid_pipeline.sync.options import SyncOptions, SyncRefused
from sendgrid_pipeline.sync.plan import SyncPlan


def check_brake(
    plan: SyncPlan, options: SyncOptions, name: str, list_id: str, first_record: bool
) -> None:
    """Raise SyncRefused, before anything is sent, for a plan past the brake.

    `first_record`: the state had no record of the list (first sync, or a lost state file).
    """
    if options.allow_mass_removal or options.dry_run:
        return
    removes = plan.removes.height
    recorded = plan.list_members_before
    empties = removes and removes == recorded and not plan.upserts.height and not plan.unchanged
    share = removes / recorded if recorded else 0.0
    too_many = share > options.max_removal_share and removes >= options.min_removals_for_brake
    if empties or too_many:
        why = "would empty the list" if empties else f"would remove {share:.0%} of it"
        raise SyncRefused(
            f"Destination {name!r}: the plan {why} ({removes} of "
            f"{recorded} contacts we manage; brake at "
            f"{options.max_removal_share:.0%}). This usually means a broken profile "
            "source or an emptied segment. Nothing was sent. If the removal is intended, "
            "rerun with the run tag sendgrid/allow_mass_removal=true or set "
            "allow_mass_removal: true on the destination."
        )
    # With no record of the list (first sync, or a lost state file), members outside the
    # segments cannot be told apart from contacts that left: many of them is suspicious.
    outside = plan.unmanaged_kept
    on_list = outside + plan.unchanged + plan.updates
    if first_record and on_list and outside >= options.min_removals_for_brake:
        outside_share = outside / on_list
        if outside_share > options.max_removal_share:
            raise SyncRefused(
                f"Destination {name!r}: the state has no record of list "
                f"{list_id} (first sync, or a lost state file) and {outside} of its "
                f"{on_list} contacts ({outside_share:.0%}) are not in the segments (brake "
                f"at {options.max_removal_share:.0%}). That is what a truncated profile "
                "source looks like. Nothing was sent. If the list really holds contacts "
                "from elsewhere, rerun with the run tag sendgrid/allow_mass_removal=true: "
                "they will be kept, never removed."
            )
