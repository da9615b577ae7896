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

from .test_cli import free_port, run_cli

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
