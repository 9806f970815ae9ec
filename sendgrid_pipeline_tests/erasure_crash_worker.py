"""An erasure run in its own process, killed with SIGKILL at a named point: the victim of
test_erasure_crash.

Run as `python -m sendgrid_pipeline_tests.erasure_crash_worker DATA_DIR BASE_URL DSN KILL_AT
REQUEST_FILE` (DSN `-` for the SQLite state inside DATA_DIR); the API key comes on standard
input so it never shows in a process list. The worker runs sendgrid_erasure_job in process,
as the sensor launches it for REQUEST_FILE, and kills itself at KILL_AT (one of KILL_POINTS):
the point is reached by wrapping the step that precedes it, so it is the same on every run,
whatever the timing.
"""

from __future__ import annotations

import dataclasses
import functools
import os
import signal
import sys
from collections.abc import Callable
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import dagster as dg

import sendgrid_pipeline.assets.erasures as erasure_asset
from sendgrid_pipeline.assets.erasures import AUDIT_FOLDER, ERASURE_FILE_TAG, ERASURE_JOB
from sendgrid_pipeline.erasure_ledger import ErasureLedger
from sendgrid_pipeline.object_storage import StorageLocation
from sendgrid_pipeline.sendgrid.client import SendGridClient
from sendgrid_pipeline.state import SyncStateResource
from sendgrid_pipeline_tests.helpers import definitions, resources_for

KILL_POINTS = {
    "recorded": "the ledger recorded the people; nothing was sent",
    "removal_answered": "SendGrid answered the first list removal; the ledger step is 'intent'",
    "removal_sent": "the first list removal is 'sent' in the ledger; its job was not polled",
    "deletion_sent": "the contact deletion is 'sent'; its job was not polled",
    "before_mark": "every request was confirmed; the people are not marked erased",
    "marked": "the people are marked erased; no audit file was written",
    "audit_write": "half of the audit file is written (to its temporary name)",
    "audited": "the audit file is written; the request file was not moved to archive/",
}


def die() -> None:
    os.kill(os.getpid(), signal.SIGKILL)


def _wrap(owner: Any, name: str, *, before: bool, when: Callable[..., bool]) -> None:
    """Replace owner.name with a wrapper that dies before or after it, when `when(*args)`."""
    original = getattr(owner, name)

    @functools.wraps(original)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        if before and when(*args, **kwargs):
            die()
        result = original(*args, **kwargs)
        if not before and when(*args, **kwargs):
            die()
        return result

    setattr(owner, name, wrapper)


def arm(point: str) -> None:
    """Make the run die at `point` (a key of KILL_POINTS)."""
    always: Callable[..., bool] = lambda *args, **kwargs: True  # noqa: E731
    kinds: dict[int, str] = {}  # step id -> kind, for the step_sent points
    begin = ErasureLedger.begin_step

    def begin_step(self: ErasureLedger, run_id: str, account: str, kind: str, *rest: Any) -> int:
        step = begin(self, run_id, account, kind, *rest)
        kinds[step] = kind
        return step

    ErasureLedger.begin_step = begin_step  # type: ignore[method-assign]
    if point == "recorded":
        _wrap(ErasureLedger, "record", before=False, when=always)
    elif point == "removal_answered":
        _wrap(SendGridClient, "remove_from_list", before=False, when=always)
    elif point in ("removal_sent", "deletion_sent"):
        kind = "list_removal" if point == "removal_sent" else "contact_deletion"
        _wrap(ErasureLedger, "step_sent", before=False, when=lambda _, s, *a: kinds[s] == kind)
    elif point in ("before_mark", "marked"):
        _wrap(ErasureLedger, "mark_erased", before=point == "before_mark", when=always)
    elif point == "audit_write":
        write_bytes = StorageLocation.write_bytes

        def half_then_die(self: StorageLocation, path: str, data: bytes) -> None:
            if not path.startswith(AUDIT_FOLDER) or self._local_root is None:
                write_bytes(self, path, data)
                return

            def half(tmp: Path) -> None:
                tmp.write_bytes(bytes(data)[: len(data) // 2])
                die()

            self._write_local(path, half)

        StorageLocation.write_bytes = half_then_die  # type: ignore[method-assign]
    elif point == "audited":
        _wrap(erasure_asset, "move_aside", before=True, when=always)
    else:
        raise SystemExit(f"unknown kill point {point!r}; one of {', '.join(KILL_POINTS)}")


def main() -> None:
    data_dir, base_url, dsn, kill_at, request_file = sys.argv[1:6]
    api_key = sys.stdin.readline().strip()
    arm(kill_at)
    here = Path(data_dir)
    resources = resources_for(here, SimpleNamespace(base_url=base_url, api_key=api_key))  # type: ignore[arg-type]
    if dsn != "-":
        resources = dataclasses.replace(
            resources, sync_state=SyncStateResource(directory="", dsn=dsn)
        )
    job = definitions(here, resources=resources).resolve_job_def(ERASURE_JOB)
    result = job.execute_in_process(
        instance=dg.DagsterInstance.ephemeral(),
        tags={ERASURE_FILE_TAG: request_file},
        raise_on_error=False,
    )
    sys.exit(0 if result.success else 1)


if __name__ == "__main__":
    main()
