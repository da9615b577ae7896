"""What the demo page shows when things go wrong, and whether its parts agree.

Each test drives the page in headless Chromium against a real uvicorn server
and asserts on what a person sees: plain words instead of exception text, a
sidebar that moves with the header, a reload that shows what the live page
showed, and stop notes that read naturally.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import anyio
import pytest

from sessionvisor import FunctionAgent, SessionSupervisor, SQLiteStore, Turn
from sessionvisor.http import create_app, header_or_query_scope
from sessionvisor.http._demo import demo_router

from ._browser import browser_tab, send
from ._support import scripted_router, serve

pytestmark = [pytest.mark.anyio, pytest.mark.browser]

#: What the failing agent's exception says: none of it may reach the page.
SECRET = "the vault password is hunter2"
#: "At once": well under the 1.5 s the session list used to be polled at.
AT_ONCE_MS = 500
RESTARTED_ONCE = "restarted \N{MULTIPLICATION SIGN}1"


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


@asynccontextmanager
async def page_on(
    router: Any, tmp_path: Path, **supervisor_opts: Any
) -> AsyncIterator[tuple[Any, str, anyio.Event]]:
    """The page in a fresh tab, served with ``router``.

    Yields (tab, url, drain): setting ``drain`` leaves the supervisor's block while
    the server still serves, as a server shutting down does.
    """
    drain = anyio.Event()
    drained = anyio.Event()

    async def supervise(sup: SessionSupervisor, *, task_status: Any) -> None:
        # In a task of its own, so it can drain while the server still serves.
        async with sup:
            task_status.started()
            await drain.wait()
        drained.set()

    async with SQLiteStore(tmp_path / "page.db") as store, anyio.create_task_group() as tasks:
        sup = SessionSupervisor(router, store=store, supervisor_opts=supervisor_opts or None)
        await tasks.start(supervise, sup)
        try:
            app = create_app(sup, scope_from_request=header_or_query_scope)
            async with serve(app) as url, browser_tab() as tab:
                await tab.goto(f"{url}/?user=alice")
                yield tab, url, drain
        finally:
            # Drained here rather than by the task group's cancellation when a test
            # fails: a supervisor left through a cancelled scope while a session is
            # live does not finish its drain (a bug outside the page, reported).
            drain.set()
            with anyio.move_on_after(30, shield=True):
                await drained.wait()


async def new_conversation(tab: Any) -> str:
    from playwright.async_api import expect

    await tab.click("#new")
    await expect(tab.locator("#message")).to_be_enabled()
    return str(await tab.locator("#cid").inner_text())


def failing_router() -> Any:
    async def fail(turn: Turn) -> None:
        raise RuntimeError(SECRET)

    return scripted_router(FunctionAgent(fail))


async def assert_no_exception_text(tab: Any) -> None:
    html = await tab.content()
    for leak in ("RuntimeError", SECRET, "Traceback"):
        assert leak not in html, f"{leak!r} reached the page"


async def transcript(tab: Any) -> list[str]:
    """Every message and note of the conversation, in order, as one line each."""
    items = tab.locator("#messages > .msg, #messages > .note")
    return [" ".join(text.split()) for text in await items.all_inner_texts()]


async def test_a_failed_reply_says_so_plainly_and_shows_no_exception_text(
    tmp_path: Path,
) -> None:
    from playwright.async_api import expect

    async with page_on(failing_router(), tmp_path) as (tab, _url, _drain):
        await new_conversation(tab)
        await send(tab, "hello")
        await expect(tab.locator("#status")).to_have_text("error")
        await expect(tab.locator("#messages .note.error")).to_have_text(
            "the reply failed; try again"
        )
        await assert_no_exception_text(tab)


async def test_crashes_and_a_session_that_gives_up_show_no_exception_text(
    tmp_path: Path,
) -> None:
    from playwright.async_api import expect

    router = failing_router()
    async with page_on(router, tmp_path, restart_on_error=True, max_restarts=1, max_seconds=60) as (
        tab,
        _url,
        _drain,
    ):
        await new_conversation(tab)
        await send(tab, "first")
        await expect(tab.locator("#restarts")).to_have_text(RESTARTED_ONCE)
        await expect(tab.locator("#messages .note.restart")).to_have_text(
            "⟳ the agent crashed and was restarted"
        )
        await assert_no_exception_text(tab)
        # The second crash is one more than the policy allows: the session gives up.
        await send(tab, "second")
        await expect(tab.locator("#status")).to_have_text("not running")
        await expect(tab.locator("#messages .note.error").last).to_contain_text(
            "the agent kept crashing"
        )
        await assert_no_exception_text(tab)


async def test_a_restart_the_session_list_saw_first_counts_once(tmp_path: Path) -> None:
    from playwright.async_api import expect

    # The session list counts a restart from its start; the stream's Restarted comes
    # when it is done. A backoff longer than the list's poll makes the list see the
    # restart first, as a slow rebuild under load does.
    router = failing_router()
    async with page_on(
        router, tmp_path, restart_on_error=True, max_restarts=2, restart_backoff=2.5
    ) as (tab, _url, _drain):
        await new_conversation(tab)
        await send(tab, "first")
        await expect(tab.locator("#restarts")).to_have_text(RESTARTED_ONCE)
        await expect(tab.locator("#messages .note.restart")).to_have_count(1)
        await expect(tab.locator("#status")).to_have_text("idle")
        await tab.wait_for_timeout(200)
        await expect(tab.locator("#restarts")).to_have_text(RESTARTED_ONCE)


async def test_the_sidebar_shows_the_headers_status_at_once(tmp_path: Path) -> None:
    from playwright.async_api import expect

    # Slow words, so each status lasts long enough to be seen in both places.
    async with page_on(demo_router(word_delay=0.2), tmp_path) as (tab, _url, _drain):
        cid = await new_conversation(tab)
        # From here on the session list never answers: only what the page already
        # knows (its event stream) can move the sidebar.
        held: list[Any] = []
        await tab.route("**/sessions", lambda route: held.append(route))
        header = tab.locator("#status")
        live = tab.locator(f'#sessions li[data-cid="{cid}"] .badge')
        stopped = tab.locator(f'#stopped li[data-cid="{cid}"] .badge')

        await send(tab, "please delete my files")
        await expect(header).to_have_text("running")
        await expect(live).to_have_text("running", timeout=AT_ONCE_MS)
        await expect(header).to_have_text("interrupted")
        await expect(live).to_have_text("interrupted", timeout=AT_ONCE_MS)
        await tab.click("#approve")
        await expect(header).to_have_text("running")
        await expect(live).to_have_text("running", timeout=AT_ONCE_MS)
        await expect(header).to_have_text("idle")
        await expect(live).to_have_text("idle", timeout=AT_ONCE_MS)

        # A crash: the restart count moves with the header's too.
        await send(tab, "crash")
        await expect(tab.locator("#restarts")).to_have_text(RESTARTED_ONCE)
        await expect(tab.locator(f'#sessions li[data-cid="{cid}"] .restarts')).to_have_text(
            "⟳1", timeout=AT_ONCE_MS
        )

        await tab.click("#stop")
        await expect(header).to_have_text("not running")
        await expect(stopped).to_have_text("stopped", timeout=AT_ONCE_MS)
        await expect(live).to_have_count(0, timeout=AT_ONCE_MS)
        assert held, "the page stopped asking for the session list"


async def test_a_reload_shows_what_the_live_page_showed(tmp_path: Path) -> None:
    from playwright.async_api import expect

    async with page_on(demo_router(word_delay=0.01), tmp_path) as (tab, _url, _drain):
        await new_conversation(tab)
        await send(tab, "crash")
        await expect(tab.locator("#restarts")).to_have_text(RESTARTED_ONCE)
        await expect(tab.locator("#status")).to_have_text("idle")
        await send(tab, "are you back?")
        replies = tab.locator('#messages .msg[data-role="assistant"]:not(.streaming)')
        await expect(replies).to_have_count(1)
        await expect(replies).to_contain_text("“are you back?”")
        await expect(tab.locator("#status")).to_have_text("idle")

        live = await transcript(tab)
        assert live == [
            "user crash",
            "⟳ the agent crashed and was restarted",
            "user are you back?",
            live[-1],
        ]
        assert live[-1].startswith("assistant Hello alice!")
        await tab.reload()
        await expect(tab.locator("#status")).to_have_text("idle")
        await expect(tab.locator("#messages > .msg, #messages > .note")).to_have_count(len(live))
        assert await transcript(tab) == live
        await expect(tab.locator("#restarts")).to_have_text(RESTARTED_ONCE)

        # A stopped session: the same after a reload too.
        await tab.click("#stop")
        await expect(tab.locator("#status")).to_have_text("not running")
        await expect(tab.locator("#messages > .note").last).to_have_text(
            "■ session stopped; your next message wakes it"
        )
        stopped = await transcript(tab)
        await expect(tab.locator("#restarts")).to_be_hidden()
        await tab.reload()
        await expect(tab.locator("#status")).to_have_text("not running")
        await expect(tab.locator("#messages > .msg, #messages > .note")).to_have_count(len(stopped))
        assert await transcript(tab) == stopped
        await expect(tab.locator("#restarts")).to_be_hidden()


async def test_stop_notes_read_naturally(tmp_path: Path) -> None:
    from playwright.async_api import expect

    async with page_on(demo_router(word_delay=0.01), tmp_path) as (tab, _url, drain):
        await new_conversation(tab)
        await send(tab, "hello")
        await expect(tab.locator("#status")).to_have_text("idle")
        notes = tab.locator("#messages > .note.stopped")

        await tab.click("#stop")
        await expect(notes).to_have_text(["■ session stopped; your next message wakes it"])

        await send(tab, "hello again")
        await expect(tab.locator('#messages .msg[data-role="assistant"]')).to_have_count(2)
        await expect(tab.locator("#status")).to_have_text("idle")
        # The server drains: the page hears why its session stopped.
        drain.set()
        await expect(notes.last).to_have_text("■ session stopped: the server is shutting down")
        for text in await notes.all_inner_texts():
            assert "(" not in text, text
