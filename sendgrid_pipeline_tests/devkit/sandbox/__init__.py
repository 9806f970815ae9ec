"""A local emulator of the SendGrid Marketing API, so the pipeline runs end to end offline."""

from sendgrid_pipeline_tests.devkit.sandbox.faults import FaultPlan
from sendgrid_pipeline_tests.devkit.sandbox.server import RequestRecord, SandboxServer
from sendgrid_pipeline_tests.devkit.sandbox.validation import MAX_UPSERT_BYTES, MAX_UPSERT_CONTACTS

__all__ = [
    "MAX_UPSERT_BYTES",
    "MAX_UPSERT_CONTACTS",
    "FaultPlan",
    "RequestRecord",
    "SandboxServer",
]
