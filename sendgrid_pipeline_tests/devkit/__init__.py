"""Tooling for developing the pipeline, never shipped with it.

The local SendGrid sandbox, the sample-data generator, the benchmark, the demo and the dev
launcher. They import the product; the product never imports them, and the wheel built
from pyproject.toml leaves this package out (it lives beside the tests for that reason).
"""
