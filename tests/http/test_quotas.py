"""Quotas per owner over HTTP: a message over ``messages_per_minute_per_owner`` is a 429
with ``Retry-After`` (whole seconds, rounded up) and the usual JSON error body; the
CLI's ``--messages-per-minute`` and ``--max-running-per-owner``."""

from __future__ import annotations

from pathlib import Path

import httpx
import pytest

from sessionvisor.__main__ import main
from sessionvisor.testing import ManualClock, free_port

from ._cli import running
from ._support import open_app

ALICE = {"X-User": "alice"}


@pytest.mark.anyio
async def test_a_message_over_the_owners_rate_is_a_429_with_retry_after(
    anyio_backend: str,
) -> None:
    clock = ManualClock()
    opts = {"messages_per_minute_per_owner": 2}
    async with open_app(supervisor_opts=opts, clock=clock) as env:
        for n in range(2):
            sent = await env.client.post(
                f"/conversations/c-{n}/messages", json={"content": "hi"}, headers=ALICE
            )
            assert sent.status_code == 202

        refused = await env.client.post(
            "/conversations/c-9/messages", json={"content": "one too many"}, headers=ALICE
        )
        assert refused.status_code == 429
        assert refused.headers["Retry-After"] == "30"  # 60 s / 2 per token
        body = refused.json()
        assert body["error"] == "RateLimited"
        assert "2 per minute" in body["detail"] and "alice" not in body["detail"]
        # Not stored: the conversation does not exist.
        missing = await env.client.get("/conversations/c-9", headers=ALICE)
        assert missing.status_code == 404

        clock.advance(29.5)
        again = await env.client.post(
            "/conversations/c-9/messages", json={"content": "still early"}, headers=ALICE
        )
        assert again.status_code == 429
        assert again.headers["Retry-After"] == "1"  # 0.5 s, rounded up

        other = await env.client.post(
            "/conversations/b-1/messages", json={"content": "hi"}, headers={"X-User": "bob"}
        )
        assert other.status_code == 202


def test_the_cli_flags_are_validated(capsys: pytest.CaptureFixture[str]) -> None:
    for flag in ("--messages-per-minute", "--max-running-per-owner"):
        for bad in ("0", "-3", "two"):
            with pytest.raises(SystemExit) as exc:
                main(["demo", flag, bad])
            assert exc.value.code == 2
            assert flag in capsys.readouterr().err


def test_a_real_server_answers_429_with_retry_after(tmp_path: Path) -> None:
    port = free_port()
    args = ["demo", "--port", str(port), "--store", "memory", "--messages-per-minute", "1"]
    args += ["--max-running-per-owner", "1"]
    with running(*args, cwd=tmp_path, healthy_on=port) as server:
        with httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=10) as client:
            first = client.post(
                "/conversations/c-1/messages", json={"content": "hi"}, headers=ALICE
            )
            assert first.status_code == 202
            second = client.post(
                "/conversations/c-2/messages", json={"content": "hi"}, headers=ALICE
            )
            assert second.status_code == 429
            assert 1 <= int(second.headers["Retry-After"]) <= 60
            assert second.json()["error"] == "RateLimited"
        server.stop()
