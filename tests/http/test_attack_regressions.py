"""The small requests that once took a real server down, sent to ``python -m sessionvisor demo``.

A 558-byte message with a part nested 256 levels deep was acknowledged, failed
every save, and some 30 s later its fold timer spun for ever (``/healthz``
unanswered, SIGTERM ignored). A 1 KB ``request_opts`` nested 500 levels deep
froze the event loop for minutes while a RecursionError was rendered with its
locals. Each is now a 400 before anything happens, the server keeps answering,
logs stay small, and SIGTERM still ends it.
"""

from __future__ import annotations

import json
import signal
import time
from pathlib import Path

import httpx

from sessionvisor.testing import free_port

from ._cli import run_cli

HEADERS = {"X-User": "mallory", "Content-Type": "application/json"}


def _nested_list(levels: int) -> str:
    return "[" * levels + "]" * levels


def test_the_requests_that_took_the_demo_down_are_refused_and_it_keeps_serving(
    tmp_path: Path,
) -> None:
    port = free_port()
    args = ("demo", "--port", str(port), "--db", str(tmp_path / "demo.db"))
    deep_part = ('{"content":[{"type":"text","text":"hi","x":' + _nested_list(254) + "}]}").encode()
    assert len(deep_part) < 600  # the size of the original request
    deep_opts = ('{"content":"hi","request_opts":{"a":' + _nested_list(499) + "}}").encode()
    lone_key = b'{"content":"hi","request_opts":{"\\ud800":1}}'
    lone_raw = b'{"content":"x\xed\xa0\x80y"}'
    too_big_number = b'{"content":"hi","request_opts":{"n":1e999}}'

    with (
        run_cli(*args, cwd=tmp_path) as (proc, _banner),
        httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=10) as client,
    ):
        for body in (deep_part, deep_opts, lone_key, lone_raw, too_big_number):
            answer = client.post("/conversations/h1/messages", content=body, headers=HEADERS)
            assert answer.status_code == 400, (body[:60], answer.text)
            error = answer.json()
            assert set(error) >= {"error", "detail"}
            assert "internal" not in error["error"]
            assert client.get("/healthz").status_code == 200

        # Nothing was acknowledged, so nothing was created: the id is unknown.
        assert client.get("/conversations/h1", headers=HEADERS).status_code == 404
        # A fine message to the same id still works.
        sent = client.post(
            "/conversations/h1/messages", content=json.dumps({"content": "hi"}), headers=HEADERS
        )
        assert sent.status_code == 202

        stopping = time.monotonic()
        proc.send_signal(signal.SIGTERM)
        out, _ = proc.communicate(timeout=20)
    assert proc.returncode == 0, out[-2000:]
    assert time.monotonic() - stopping < 15
    # No traceback rendered with locals, no megabytes of log.
    assert len(out) < 64_000, f"{len(out)} characters of log"
    assert "RecursionError" not in out
    assert "http_internal_error" not in out


def test_a_conversation_stored_too_deep_before_the_limit_answers_at_once(tmp_path: Path) -> None:
    """A record written before the depth limit (300 levels in one part): its history
    cannot be rendered, so it is a plain 500 — at once, with a short log line and no
    locals, where rendering the traceback's locals used to freeze every GET for seconds."""
    import anyio

    from sessionvisor import SQLiteStore, StoredConversation

    deep: object = "x"
    for _ in range(300):
        deep = [deep]
    message = {"id": "m1", "role": "user", "content": [{"type": "t", "x": deep}], "metadata": {}}
    state = {"version": 1, "messages": [message], "queued": [], "metadata": {}, "interrupt": None}

    async def seed() -> None:
        async with SQLiteStore(tmp_path / "demo.db") as store:
            record = StoredConversation(state=state, owner="mallory")
            await store.save("old", record, expected_version=None, lifecycle="completion")

    anyio.run(seed)
    port = free_port()
    args = ("demo", "--port", str(port), "--db", str(tmp_path / "demo.db"))
    with (
        run_cli(*args, cwd=tmp_path) as (proc, _banner),
        httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=10) as client,
    ):
        for _ in range(3):
            answer = client.get("/conversations/old", headers=HEADERS)
            assert answer.status_code == 500
            assert answer.json() == {"error": "internal", "detail": "internal error"}
        assert client.get("/healthz").status_code == 200
        proc.send_signal(signal.SIGTERM)
        out, _ = proc.communicate(timeout=20)
    assert proc.returncode == 0, out[-2000:]
    assert out.count("http_internal_error") == 3
    assert len(out) < 3 * 20_000, f"{len(out)} characters of log"
    assert "['x']" not in out and "[[[" not in out  # the data is not dumped into the log
