"""The demo page against servers that do not take the X-User header.

``python -m sessionvisor demo --jwt-secret-file F`` verifies bearer tokens: the
page must ask for one, send it as ``Authorization: Bearer`` (and as
``?access_token=`` on its event stream only, where ``EventSource`` cannot set a
header), and stop offering a user name the server would ignore. A server that
wants neither a user name nor a token must be named as such.
"""

from __future__ import annotations

import signal
import time
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

import jwt
import pytest
from starlette.requests import Request

from sessionvisor.http._errors import HTTPError
from sessionvisor.testing import free_port

from ._browser import browser_tab, send
from ._cli import run_cli, stop
from ._support import open_app, serve

pytestmark = [pytest.mark.anyio, pytest.mark.browser]

SECRET = "a-secret-for-the-page-test-that-is-long-enough-for-hs256"
AUDIENCE = "chat"


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


def token(sub: str, *, expires_in: int = 300) -> str:
    now = int(time.time())
    claims = {"sub": sub, "aud": AUDIENCE, "iat": now, "exp": now + expires_in}
    return jwt.encode(claims, SECRET, algorithm="HS256")


class Requests:
    """What the page sent: every request to the server, with its URL and headers."""

    def __init__(self, base: str) -> None:
        self.base = base
        self.seen: list[tuple[str, str, dict[str, str]]] = []

    def record(self, request: Any) -> None:
        if request.url.startswith(self.base):
            self.seen.append((request.method, request.url, dict(request.headers)))

    def api_calls(self) -> list[tuple[str, str, dict[str, str]]]:
        pages = {f"{self.base}/", f"{self.base}/admin"}
        return [(m, u, h) for m, u, h in self.seen if u.split("?")[0].split("#")[0] not in pages]


async def test_under_jwt_the_page_takes_a_token_and_chats_with_it(tmp_path: Path) -> None:
    from playwright.async_api import expect

    secret = tmp_path / "secret"
    secret.write_text(SECRET)
    port = free_port()
    base = f"http://127.0.0.1:{port}"
    args = ("demo", "--port", str(port), "--db", str(tmp_path / "demo.db"), "--word-delay", "0.05")
    with run_cli(
        *args, "--jwt-secret-file", str(secret), "--jwt-audience", AUDIENCE, cwd=tmp_path
    ) as (proc, _banner):
        async with browser_tab() as tab:
            requests = Requests(base)
            tab.on("request", requests.record)
            await tab.goto(f"{base}/")

            # The page found out that this server wants a bearer token, and says so.
            await expect(tab.locator("#auth")).to_contain_text("bearer token")
            await expect(tab.locator("#token")).to_be_visible()
            await expect(tab.locator("label:has(#user)")).to_be_hidden()
            await expect(tab.locator("#new")).to_be_disabled()
            await expect(tab.locator("#message")).to_be_disabled()

            # A refused token is named as such, in the server's words.
            await tab.fill("#token", token("alice", expires_in=-60))
            await tab.press("#token", "Enter")
            await expect(tab.locator("#auth")).to_have_text(
                "The server refused this token: the token has expired. Paste another one."
            )
            await expect(tab.locator("#new")).to_be_disabled()

            alice = token("alice")
            await tab.fill("#token", alice)
            await tab.press("#token", "Enter")
            await expect(tab.locator("#auth")).to_be_hidden()
            await expect(tab.locator("#who")).to_have_text("signed in as alice")
            await tab.click("#new")
            await expect(tab.locator("#message")).to_be_enabled()
            cid = await tab.locator("#cid").inner_text()

            await send(tab, "hello there")
            await expect(tab.locator(".msg.streaming")).to_have_count(1)
            reply = tab.locator('.msg[data-role="assistant"]:not(.streaming)')
            await expect(reply).to_contain_text("Hello alice! You said: “hello there”.")
            await expect(tab.locator("#status")).to_have_text("idle")
            await expect(tab.locator(f'#sessions li[data-cid="{cid}"] .badge')).to_have_text("idle")

            # A reload keeps the token (in this tab) and shows the history.
            await tab.reload()
            await expect(tab.locator("#who")).to_have_text("signed in as alice")
            await expect(reply).to_contain_text("Hello alice! You said: “hello there”.")
            await expect(tab.locator("#status")).to_have_text("idle")

            # The admin page, opened in the same tab, uses the same token.
            await tab.goto(f"{base}/admin")
            await expect(tab.locator(f'#rows tr[data-cid="{cid}"] .status')).to_have_text("idle")
            await expect(tab.locator("label:has(#user)")).to_be_hidden()

            calls = requests.api_calls()
            posted = [h for m, u, h in calls if m == "POST" and u.endswith("/messages")]
            assert [h.get("authorization") for h in posted] == [f"Bearer {alice}"]
            streams = [u for m, u, _ in calls if urlsplit(u).path.endswith("/events")]
            assert streams, "the page never opened its event stream"
            for method, url, headers in calls:
                path, query = urlsplit(url).path, parse_qs(urlsplit(url).query)
                assert "user" not in query and "x-user" not in headers, (method, url)
                if url in streams:
                    assert query["access_token"] == [alice], url
                    continue
                # The token never travels in a URL outside the event stream.
                assert "access_token" not in query, (method, url)
                auth = headers.get("authorization")
                if auth is None:
                    # How each page learns how to sign in: a request without credentials.
                    assert method == "GET" and path in ("/sessions", "/admin/sessions"), url
                else:
                    assert auth.startswith("Bearer "), (method, url)
        stop(proc, signal.SIGINT)


async def test_a_server_that_wants_neither_a_user_name_nor_a_token_is_named_as_such() -> None:
    from playwright.async_api import expect

    def cookie_scope(request: Request) -> Any:
        # Stands in for an application's own sign-in (a session cookie the page cannot make).
        raise HTTPError(401, "Unauthorized", "sign in at /login first")

    async with (
        open_app(scope_from_request=cookie_scope) as env,
        serve(env.app) as url,
        browser_tab() as tab,
    ):
        await tab.goto(f"{url}/")
        notice = tab.locator("#auth")
        await expect(notice).to_contain_text("This page cannot sign in to this server")
        await expect(notice).to_contain_text("sign in at /login first")
        await expect(tab.locator("label:has(#user)")).to_be_hidden()
        await expect(tab.locator("#token")).to_be_hidden()
        await expect(tab.locator("#new")).to_be_disabled()
