"""Headless Chromium for the page tests.

Debian's ``chromium`` driven through Playwright's Python package (no browser
download: ``executable_path`` points at the system one). Outside CI a test is
skipped when no browser is installed; in CI it must run
(``scripts/test-services.sh`` installs chromium).
"""

from __future__ import annotations

import os
import shutil
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import pytest

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
#: How long an expectation may take to come true (a streamed reply takes a few seconds).
TIMEOUT_MS = 15_000


def chromium_path() -> str:
    path = shutil.which("chromium") or shutil.which("chromium-browser")
    if path is None:
        message = "no chromium on PATH (Debian: apt-get install -y chromium)"
        if os.environ.get("CI"):
            pytest.fail(f"{message}; CI must run the browser test")
        pytest.skip(message)
    return path


@asynccontextmanager
async def browser_tab() -> AsyncIterator[Any]:
    """A fresh tab; fails the test if the page threw an uncaught error."""
    executable = chromium_path()
    playwright_api = pytest.importorskip("playwright.async_api")
    playwright_api.expect.set_options(timeout=TIMEOUT_MS)
    async with playwright_api.async_playwright() as playwright:
        browser = await playwright.chromium.launch(executable_path=executable, args=CHROMIUM_ARGS)
        try:
            tab = await browser.new_page(viewport={"width": 1280, "height": 800})
            errors: list[str] = []
            tab.on("pageerror", lambda exc: errors.append(str(exc)))
            yield tab
            assert errors == [], errors
        finally:
            await browser.close()


async def send(tab: Any, text: str) -> None:
    """Type a message into the composer and press Enter, as a person would."""
    await tab.fill("#message", text)
    await tab.press("#message", "Enter")
