"""The demo page in headless Chromium against a real server.

Chromium is found and launched by ``_browser.py``: skipped outside CI when it
is not installed, required in CI. asyncio only (uvicorn).
"""

from __future__ import annotations

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


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


@pytest.fixture
async def page(tmp_path: Path) -> AsyncIterator[tuple[Any, str]]:
    router = demo_router(word_delay=0.08)
    async with (
        SQLiteStore(tmp_path / "demo.db") as store,
        open_app(router, store=store, scope_from_request=header_or_query_scope) as env,
        serve(env.app) as url,
        browser_tab() as tab,
    ):
        yield tab, url


async def test_the_demo_page_chats_queues_asks_for_approval_and_keeps_the_history(
    page: tuple[Any, str],
) -> None:
    from playwright.async_api import expect

    tab, url = page
    expect.set_options(timeout=TIMEOUT_MS)
    await tab.goto(f"{url}/")
    await expect(tab.locator("#user")).to_have_value("alice")
    await tab.click("#new")
    await expect(tab.locator("#message")).to_be_enabled()

    # A reply streams in word by word.
    await send(tab, "hello there")
    await expect(tab.locator('.msg[data-role="user"]')).to_have_text(["userhello there"])
    streaming = tab.locator(".msg.streaming")
    await expect(streaming).to_have_count(1)
    first = await streaming.inner_text()
    await tab.wait_for_timeout(400)
    assert len(await streaming.inner_text()) > len(first)
    await expect(tab.locator("#status")).to_have_text("running")

    # A second message sent while the first reply streams is queued, then answered.
    await send(tab, "and a second one")
    queued = tab.locator('.msg.queued[data-role="user"]')
    await expect(queued).to_have_count(1)
    await expect(queued).to_contain_text("and a second one")
    await expect(queued).to_contain_text("queued")
    await expect(queued).to_have_count(0)
    replies = tab.locator('.msg[data-role="assistant"]:not(.streaming)')
    await expect(replies).to_have_count(2)
    await expect(replies.nth(0)).to_contain_text("You said: “hello there”.")
    await expect(replies.nth(1)).to_contain_text("You said: “and a second one”.")
    await expect(tab.locator("#status")).to_have_text("idle")

    # The live sessions list shows the conversation and its status.
    await expect(tab.locator("#sessions li")).to_have_count(1)
    await expect(tab.locator("#sessions li .badge")).to_have_text("idle")

    # A dangerous tool waits for approval; approving runs it.
    await send(tab, "please delete my files")
    panel = tab.locator("#interrupt")
    await expect(panel).to_be_visible()
    await expect(panel).to_contain_text("delete_files")
    await expect(tab.locator("#status")).to_have_text("interrupted")
    await tab.click("#approve")
    await expect(panel).to_be_hidden()
    await expect(tab.locator('.msg[data-role="tool"]')).to_contain_text("deleted 3 files")
    await expect(replies.last).to_have_text(
        "assistantApproved: I ran delete_files. Nothing was really deleted."
    )
    await expect(tab.locator("#status")).to_have_text("idle")

    # Reloading shows the same history, from the server.
    before = await tab.locator(".msg").all_inner_texts()
    await tab.reload()
    await expect(tab.locator(".msg")).to_have_count(len(before))
    assert await tab.locator(".msg").all_inner_texts() == before
    await expect(tab.locator("#status")).to_have_text("idle")
    assert [t.split("\n", 1)[0] for t in before] == [
        "user",
        "assistant",
        "user",
        "assistant",
        "user",
        "assistant",
        "tool",
        "assistant",
    ]


async def test_the_admin_page_lists_the_callers_live_sessions_and_keeps_them_current(
    page: tuple[Any, str],
) -> None:
    import httpx
    from playwright.async_api import expect

    tab, url = page
    expect.set_options(timeout=TIMEOUT_MS)
    await tab.goto(f"{url}/admin?user=alice")
    await expect(tab.locator("#empty")).to_be_visible()
    await expect(tab.locator("#count-live")).to_have_text("0")

    row = tab.locator('#rows tr[data-cid="c-admin"]')
    async with httpx.AsyncClient(base_url=url, timeout=10) as client:

        async def send(cid: str, text: str, user: str = "alice") -> None:
            answer = await client.post(
                f"/conversations/{cid}/messages", json={"content": text}, headers={"X-User": user}
            )
            assert answer.status_code == 202, answer.text

        # Bob's session exists but is not alice's: her page never lists it.
        await send("c-bob", "hello from bob", user="bob")
        # A reply streams for a few seconds; two more messages queue behind it.
        await send("c-admin", "hello there")
        await send("c-admin", "second")
        await send("c-admin", "third")
        await expect(row.locator(".status .badge")).to_have_text("running")
        await expect(row.locator("td.queued")).to_have_text("2")
        await expect(tab.locator("#count-queued")).to_have_text("2")
        await expect(tab.locator("#empty")).to_be_hidden()
        # Without a reload, the page follows the session: the queue drains, the turn ends.
        await expect(row.locator("td.queued")).to_have_text("0")
        await expect(row.locator(".status .badge")).to_have_text("idle")
        await expect(row.locator("td.last")).to_contain_text("s ago")
        await expect(row.locator("td.restarts")).to_have_text("0")

        # A crash restarts the session; the restart count follows.
        await send("c-admin", "crash")
        await expect(row.locator("td.restarts")).to_have_text("1")
        await expect(tab.locator("#count-restarts")).to_have_text("1")

    await expect(tab.locator("#rows tr")).to_have_count(1)
    await expect(tab.locator("#count-live")).to_have_text("1")
    assert await tab.locator('#rows tr[data-cid="c-bob"]').count() == 0
    # Bob sees his own session, and only his.
    await tab.fill("#user", "bob")
    await tab.press("#user", "Enter")
    await tab.locator("#user").dispatch_event("change")
    await expect(tab.locator('#rows tr[data-cid="c-bob"]')).to_have_count(1)
    await expect(tab.locator("#rows tr")).to_have_count(1)


async def test_the_demo_page_keeps_a_cancelled_reply_and_answers_again(
    page: tuple[Any, str],
) -> None:
    from playwright.async_api import expect

    tab, url = page
    expect.set_options(timeout=TIMEOUT_MS)
    await tab.goto(f"{url}/")
    await tab.click("#new")
    await expect(tab.locator("#message")).to_be_enabled()

    # Cancel mid-reply: what was streamed stays, also after a reload (it is stored).
    await send(tab, "tell me a long story")
    streaming = tab.locator(".msg.streaming")
    await expect(streaming).to_contain_text("You said")
    await tab.click("#cancel")
    await expect(tab.locator("#status")).to_have_text("cancelled")
    kept = tab.locator('.msg[data-role="assistant"]')
    await expect(kept).to_have_count(1)
    await expect(kept).to_contain_text("You said")
    partial = (await kept.inner_text()).split("\n", 1)[-1].strip()
    await tab.reload()
    await expect(tab.locator('.msg[data-role="assistant"]')).to_have_text("assistant" + partial)
    await expect(tab.locator('.msg[data-cancelled="true"]')).to_have_count(1)

    # Regenerate replaces the cut reply with a whole one.
    await tab.click("#regenerate")
    await expect(tab.locator("#status")).to_have_text("idle")
    replies = tab.locator('.msg[data-role="assistant"]')
    await expect(replies).to_have_count(1)
    await expect(replies).to_contain_text("You said: “tell me a long story”.")
    await expect(tab.locator('.msg[data-role="user"]')).to_have_count(1)

    # Edit the message: the new text is answered; the old one is gone after a reload.
    tab.once("dialog", lambda dialog: dialog.accept("a short one, please"))
    await tab.click("#edit")
    await expect(replies).to_contain_text("You said: “a short one, please”.")
    await expect(tab.locator("#status")).to_have_text("idle")
    await tab.reload()
    await expect(tab.locator('.msg[data-role="user"]')).to_have_text(["usera short one, please"])
    await expect(tab.locator('.msg[data-role="assistant"]')).to_have_count(1)
