"""No bearer token in any log line: uvicorn's access log and the library's own lines.

``?access_token=`` exists for ``EventSource``, and a URL is exactly what an
access log writes down. Each test starts the real command line in a subprocess
and reads everything it prints (stdout and stderr), as an operator's log
collector would.
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import httpx
import jwt
import pytest

from sessionvisor.testing import free_port

from ._cli import running

SECRET = "a-secret-for-the-redaction-tests-0123456789"


def token(sub: str) -> str:
    now = int(time.time())
    return jwt.encode({"sub": sub, "exp": now + 300}, SECRET, algorithm="HS256")


def assert_never_logged(out: str, *secrets: str) -> None:
    for secret in secrets:
        for piece in {secret, *secret.split(".")[1:]}:  # the claims and the signature alone
            assert piece not in out, f"{piece!r} was logged:\n{out}"


@pytest.mark.parametrize("log_format", ["console", "json"])
def test_an_access_token_in_the_query_never_reaches_the_access_log(
    tmp_path: Path, log_format: str
) -> None:
    (tmp_path / "secret").write_text(SECRET)
    port = free_port()
    alice, encoded, refused = token("alice"), token("alice-2"), token("mallory")
    args = ["demo", "--port", str(port), "--store", "memory", "--word-delay", "0"]
    args += ["--jwt-secret-file", "secret", "--log-format", log_format]
    with running(*args, cwd=tmp_path) as server:
        with httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=10) as client:
            sent = client.post(
                "/conversations/c-red/messages",
                json={"content": "hi"},
                headers={"Authorization": f"Bearer {alice}"},
            )
            assert sent.status_code == 202, sent.text
            # The event stream takes the query token: its access line is written at the start.
            for query in (f"access_token={alice}", f"after=0&access%5Ftoken={encoded}"):
                url = f"/conversations/c-red/events?{query}"
                with client.stream("GET", url) as stream:
                    assert stream.status_code == 200
            # Elsewhere it is refused, and logged as well.
            posted = client.post(
                f"/conversations/c-red/messages?access_token={refused}", json={"content": "x"}
            )
            assert posted.status_code == 401
            assert posted.json()["error"] == "MissingToken"
            got = client.get(f"/conversations/c-red?x=1&access_token={refused}&y=2")
            assert got.status_code == 401
        server.wait_for("/conversations/c-red?x=1")
        out = server.stop()
    assert_never_logged(out, alice, encoded, refused)
    assert out.count("=[redacted]") >= 4, out
    assert "x=1&access_token=[redacted]&y=2" in out, out
    if log_format == "json":
        access = [
            json.loads(line)
            for line in out.splitlines()
            if line.startswith("{") and '"uvicorn.access"' in line
        ]
        assert sum("[redacted]" in record["event"] for record in access) >= 4, access


SCOPE_MODULE = """
def router(scope, conversation_id, request_opts):
    return None


def failing_scope(request):
    raise RuntimeError(f"cannot serve {request.url}")
"""


@pytest.mark.parametrize("log_format", ["console", "json"])
def test_the_library_lines_redact_the_token_too(tmp_path: Path, log_format: str) -> None:
    """A 500 logs ``http_internal_error`` with the error's text and its traceback: a
    token in the URL that reached them is redacted there as well."""
    (tmp_path / "redact_app.py").write_text(SCOPE_MODULE)
    port = free_port()
    secret = "eyJhbGciOiJIUzI1NiJ9.eyJzdWIiOiJib2IifQ.c2lnbmF0dXJlLW9mLWJvYg"
    args = ["serve", "redact_app:router", "--scope", "redact_app:failing_scope"]
    args += ["--port", str(port), "--store", "memory", "--log-format", log_format]
    with running(*args, cwd=tmp_path) as server:
        with httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=10) as client:
            answer = client.get(f"/conversations/c-1?access_token={secret}")
            assert answer.status_code == 500
            assert secret not in answer.text
        server.wait_for("http_internal_error")
        out = server.stop()
    assert_never_logged(out, secret)
    assert "cannot serve http://127.0.0.1" in out
    assert "access_token=[redacted]" in out
    if log_format == "json":
        records: list[dict[str, Any]] = [
            json.loads(line) for line in out.splitlines() if line.startswith("{")
        ]
        (failure,) = [r for r in records if r["event"] == "http_internal_error"]
        assert "access_token=[redacted]" in failure["error"]
        assert "access_token=[redacted]" in json.dumps(failure["exception"])


def test_redaction_of_structured_values_and_text() -> None:
    from sessionvisor._logging import redact_event, redact_text

    assert redact_text("GET /e?access_token=abc.def.ghi HTTP/1.1") == (
        "GET /e?access_token=[redacted] HTTP/1.1"
    )
    assert redact_text("/e?a=1&ACCESS_TOKEN=abc&b=2") == "/e?a=1&ACCESS_TOKEN=[redacted]&b=2"
    assert redact_text("/e?access%5ftoken=abc") == "/e?access%5ftoken=[redacted]"
    assert redact_text("/e?access+token=1&xaccess_token=2") == "/e?access+token=1&xaccess_token=2"
    assert redact_text('query="access_token=abc"') == 'query="access_token=[redacted]"'
    event = redact_event(None, "info", {
        "event": "x", "path": "/e?access_token=abc", "access_token": "abc",
        "nested": {"url": "/e?access_token=abc"}, "count": 3,
    })  # fmt: skip
    assert "abc" not in repr(event)
    assert event["access_token"] == "[redacted]"
    assert event["count"] == 3


def test_a_long_value_is_cut_without_leaving_part_of_a_token() -> None:
    from sessionvisor._logging import redact_event

    token = "eyJ" + "t" * 10_000 + "-END-OF-TOKEN"
    for text in (
        f"{'a' * 4_000}?access_token={token}&b=2",  # the cut falls inside the token
        f"?access_token={token}{'z' * 20_000}",
        f"{'q=1&' * 100_000}access%5Ftoken={token}",
    ):
        event = redact_event(None, "info", {"event": "x", "url": text})
        assert len(event["url"]) < 9 * 1024
        assert "tttt" not in event["url"] and "END-OF-TOKEN" not in event["url"], event["url"]
        assert "characters cut" in event["url"]
