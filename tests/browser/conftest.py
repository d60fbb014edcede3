"""A live studio server on a free port and Debian's chromium driven by Playwright."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from tests_support import free_port

CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
                 "--disable-component-update", "--disable-sync", "--no-first-run", "--disable-quic"]


@pytest.fixture
def live_server(services):
    from studio.ui.server import launch

    services.settings.port = free_port()
    demo, url = launch(services, block=False)
    yield url
    demo.close()


@pytest.fixture(scope="session")
def browser():
    if not Path(CHROMIUM).exists():
        if os.environ.get("CI"):
            pytest.fail(f"{CHROMIUM} is missing: CI must run the browser tests (launch.py test installs it)")
        pytest.skip(f"{CHROMIUM} is not installed (apt-get install chromium)")
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        instance = playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS, headless=True)
        yield instance
        instance.close()


@pytest.fixture
def page(browser, live_server):
    context = browser.new_context(viewport={"width": 1400, "height": 1000})
    page = context.new_page()
    page.set_default_timeout(60_000)
    page.goto(live_server)
    page.wait_for_selector("#txt2img-generate")
    # the app's own script (Ctrl+Enter) runs after the first paint; wait for it like a user would
    page.wait_for_selector("body[data-studio-shortcuts=ready]", state="attached")
    yield page
    context.close()
