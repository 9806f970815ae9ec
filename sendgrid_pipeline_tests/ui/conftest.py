"""Fixtures for the UI tests: one `dagster dev` stack per session, and a headless Chromium page.

The stack is what a user has after `make demo` then `make dev` on a clean clone: the demo runs
first, over the stack's data copy and with its DAGSTER_HOME, and `dagster dev` starts after it.

Chromium comes from Debian (/usr/bin/chromium; .ci/run installs it). Without it the browser
tests fail in CI, where they must run, and are skipped elsewhere.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import urlsplit

import pytest

from sendgrid_pipeline_tests.ui.stack import ARTIFACTS, DagsterDevStack

CHROMIUM = Path("/usr/bin/chromium")
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
SCREENSHOTS = ARTIFACTS / "screenshots"
LOOPBACK_HOSTS = {"127.0.0.1", "localhost", "::1"}


def _unavailable(reason: str) -> None:
    """Fail in CI (the browser test must run there); skip on a developer's machine."""
    if os.environ.get("CI", "").lower() in {"1", "true", "yes"}:
        pytest.fail(f"browser test cannot run in CI: {reason}", pytrace=False)
    pytest.skip(reason)


@pytest.fixture(scope="session")
def dagster_stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[DagsterDevStack]:
    """The demo, then `dagster dev` and the sandbox on free loopback ports, over a private data
    copy; the stack's `demo_output` is what the demo printed."""
    stack = DagsterDevStack(tmp_path_factory.mktemp("dagster_ui")).prepare()
    try:
        stack.run_demo()
        stack.start()
        # Dismiss the "join the community" dialog for this instance, as a user's Skip would.
        stack.graphql("mutation { setNuxSeen }")
        yield stack
    finally:
        stack.stop()


@pytest.fixture(scope="session")
def screenshots() -> Path:
    """artifacts/screenshots/, emptied of an earlier session's screenshots (failure.png too)."""
    SCREENSHOTS.mkdir(parents=True, exist_ok=True)
    for old in SCREENSHOTS.glob("*.png"):
        old.unlink()
    return SCREENSHOTS


@pytest.fixture
def page() -> Iterator:
    """A 1600x1000 page in headless Debian Chromium that may only reach loopback.

    Requested before the stack, so a missing browser is reported before anything starts.
    """
    if not CHROMIUM.exists():
        _unavailable(
            f"{CHROMIUM} not found: install Debian's chromium as root "
            "(apt-get update && apt-get install -y chromium), as .ci/run does"
        )
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        _unavailable("the playwright package is missing: pip install -e '.[dev]'")

    blocked: list[str] = []

    def loopback_only(route) -> None:
        if urlsplit(route.request.url).hostname in LOOPBACK_HOSTS:
            route.continue_()
        else:
            blocked.append(route.request.url)
            route.abort()

    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS)
        try:
            context = browser.new_context(viewport={"width": 1600, "height": 1000})
            context.route("**/*", loopback_only)
            context.set_default_timeout(60_000)
            context.set_default_navigation_timeout(90_000)
            yield context.new_page()
            context.close()
        finally:
            browser.close()
    if blocked:
        print(f"blocked {len(blocked)} non-loopback request(s), e.g. {blocked[:3]}")
