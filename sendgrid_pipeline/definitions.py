"""The code location: one Definitions object for the configured data directory."""

from sendgrid_pipeline.pipeline import build_definitions, load_validated_config

defs = build_definitions(load_validated_config())
