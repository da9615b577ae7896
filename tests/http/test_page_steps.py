"""The demo page's "steps" disclosure, in headless Chromium against a real server.

A reply whose turn ran durable steps gets a small disclosure under it, filled
from ``GET /conversations/{cid}/steps`` (name, status, duration); a reply
whose turn ran none gets nothing. A reload shows the same. asyncio only (uvicorn).
"""

from __future__ import annotations

import re
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from sessionvisor import SQLiteStore
from sessionvisor.http import header_or_query_scope
from sessionvisor.http._demo import demo_router

from ._browser import TIMEOUT_MS, browser_tab, send
from ._support import open_app, serve

pytestmark = [pytest.mark.anyio, pytest.mark.browser]

#: True when the only disclosure sits under the last assistant reply (before the next message).
UNDER_THE_LAST_REPLY = """() => {
  const replies = [...document.querySelectorAll('#messages > .msg[data-role="assistant"]')];
  const steps = document.querySelectorAll("#messages > .steps");
  if (steps.length !== 1 || !replies.length) return false;
  const reply = replies[replies.length - 1];
  if (steps[0].dataset.for !== reply.dataset.id) return false;
  for (let at = reply.nextElementSibling; at && !at.matches(".msg, .note");
       at = at.nextElementSibling) {
    if (at === steps[0]) return true;
  }
  return false;
}"""


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


@pytest.fixture
async def page(tmp_path: Path) -> AsyncIterator[tuple[Any, str]]:
    router = demo_router(word_delay=0.01)
    async with (
        SQLiteStore(tmp_path / "demo.db") as store,
        open_app(router, store=store, scope_from_request=header_or_query_scope) as env,
        serve(env.app) as url,
        browser_tab() as tab,
    ):
        yield tab, url


async def test_the_reply_after_the_dangerous_tool_shows_its_step(page: tuple[Any, str]) -> None:
    from playwright.async_api import expect

    tab, url = page
    expect.set_options(timeout=TIMEOUT_MS)
    await tab.goto(f"{url}/")
    await tab.click("#new")
    await expect(tab.locator("#message")).to_be_enabled()

    await send(tab, "hello")
    replies = tab.locator('#messages > .msg[data-role="assistant"]:not(.streaming)')
    await expect(replies).to_have_count(1)
    await expect(tab.locator("#status")).to_have_text("idle")

    await send(tab, "please delete my files")
    await expect(tab.locator("#interrupt")).to_be_visible()
    await tab.click("#approve")
    await expect(replies.last).to_contain_text("Approved: I ran delete_files.")
    await expect(tab.locator("#status")).to_have_text("idle")

    # One disclosure, under the reply of the turn that ran the tool; closed at first.
    steps = tab.locator("#messages > .steps")
    await expect(steps).to_have_count(1)
    await expect(steps.locator("summary")).to_have_text("1 step")
    assert await tab.evaluate(UNDER_THE_LAST_REPLY)
    row = steps.locator("li")
    await expect(row).to_be_hidden()
    await steps.locator("summary").click()
    await expect(row).to_be_visible()
    await expect(row.locator(".name")).to_have_text("dangerous-tool")
    await expect(row.locator(".badge")).to_have_text("completed")
    await expect(row.locator(".took")).to_have_text(re.compile(r"^\s*\d+(\.\d+)? (ms|s)$"))

    # The replies' own text is unchanged, and a reload shows the same disclosure.
    await expect(replies.last).to_have_text(
        "assistantApproved: I ran delete_files. Nothing was really deleted."
    )
    await tab.reload()
    await expect(replies).to_have_count(3)
    await expect(steps).to_have_count(1)
    await expect(steps.locator("summary")).to_have_text("1 step")
    assert await tab.evaluate(UNDER_THE_LAST_REPLY)
