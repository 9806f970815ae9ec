"""The code location: one Definitions object for the configured data directory.

A destination whose own configuration is invalid is left out (and shown as such in the UI),
so one broken entry never stops the schedule and sensors of the others.
"""

from sendgrid_pipeline.pipeline import build_definitions, load_validated_config

defs = build_definitions(load_validated_config(skip_invalid_destinations=True))
