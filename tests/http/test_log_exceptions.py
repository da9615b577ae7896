"""A logged exception renders in bounded size, without local variables.

Rendering a ``RecursionError`` raised 1,000 frames deep with its locals (rich's
console traceback) once blocked the event loop for three minutes and wrote
131 MB. Here the real server logs such an error (a scope function that recurses
until Python stops it, holding a large nested object in every frame), and the
whole output must stay small and never show a local variable.
"""

from __future__ import annotations

import json
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import structlog

from sessionvisor.testing import free_port

from ._cli import running

BOUND = 64 * 1024
MARKER = "LOCAL-VARIABLE-MARKER"

RECURSING_MODULE = f'''
def router(scope, conversation_id, request_opts):
    return None


def big():
    value = {{"marker": "{MARKER}", "rows": [list(range(100)) for _ in range(100)]}}
    for _ in range(40):
        value = {{"inner": value, "marker": "{MARKER}"}}
    return value


def dive(depth, held):
    return dive(depth + 1, held) + 1


def recursing_scope(request):
    held = big()
    return dive(0, held)
'''


@pytest.mark.parametrize("log_format", ["console", "json"])
def test_a_deep_recursion_error_is_logged_small_and_without_locals(
    tmp_path: Path, log_format: str
) -> None:
    (tmp_path / "recursing_app.py").write_text(RECURSING_MODULE)
    port = free_port()
    args = ["serve", "recursing_app:router", "--scope", "recursing_app:recursing_scope"]
    args += ["--port", str(port), "--store", "memory", "--log-format", log_format]
    with running(*args, cwd=tmp_path) as server:
        # The answer comes after the log line is written: a slow rendering times out here.
        with httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=20) as client:
            assert client.get("/conversations/c-1").status_code == 500
        server.wait_for("http_internal_error")
        out = server.stop()
    assert len(out.encode()) < BOUND, f"{len(out.encode())} bytes of output"
    assert MARKER not in out  # in every frame's locals: none is shown
    assert "RecursionError" in out
    assert "recursing_app.py" in out  # the frames are still named
    if log_format == "json":
        records = [json.loads(line) for line in out.splitlines() if line.startswith("{")]
        (failure,) = [r for r in records if r["event"] == "http_internal_error"]
        (stack,) = failure["exception"]
        assert stack["exc_type"] == "RecursionError"
        assert len(stack["frames"]) <= 25
        assert all("locals" not in frame for frame in stack["frames"])


# -- the renderers themselves, in this process -------------------------------------


@pytest.fixture
def logs(capsys: pytest.CaptureFixture[str]) -> Iterator[Any]:
    """Configure structlog as the CLI does, then give back the configuration it had."""
    saved = structlog.get_config()
    try:
        yield capsys
    finally:
        structlog.configure(**saved)


def configure(log_format: str) -> None:
    from sessionvisor import __main__ as cli

    if log_format == "json":
        cli.configure_json_logs("info")
    else:
        cli.configure_console_logs("info")


def dive(depth: int, held: Any) -> int:
    return dive(depth + 1, held) + 1


def raised(make: Any) -> BaseException:
    try:
        make()
    except BaseException as exc:  # the exception is the test's subject
        return exc
    raise AssertionError("nothing was raised")


def chained(links: int) -> None:
    """``links`` exceptions, each raised while handling a deep recursion."""
    try:
        dive(0, {"marker": MARKER})
    except RecursionError as exc:
        error: BaseException = exc
    for n in range(links):
        try:
            raise ValueError(f"link {n}") from error
        except ValueError as exc:
            error = exc
    raise error


def huge_message() -> None:
    raise RuntimeError(MARKER + "m" * 2_000_000)


HUGE_MESSAGE = huge_message


def grouped() -> None:
    raise ExceptionGroup("many", [ValueError(f"part {n} " + "x" * 1000) for n in range(500)])


@pytest.mark.parametrize("log_format", ["console", "json"])
@pytest.mark.parametrize(
    "make",
    [
        lambda: dive(0, {"marker": MARKER, "rows": [[MARKER] * 1000] * 100}),
        lambda: chained(200),
        HUGE_MESSAGE,
        grouped,
    ],
    ids=["recursion", "long-chain", "huge-message", "exception-group"],
)
def test_every_rendering_of_an_exception_is_bounded(logs: Any, log_format: str, make: Any) -> None:
    error = raised(make)
    configure(log_format)
    structlog.get_logger("sessionvisor.test").error("failed", exc_info=error)
    out = logs.readouterr().out
    assert len(out.encode()) < BOUND, f"{len(out.encode())} bytes"
    assert type(error).__name__ in out
    if make is not HUGE_MESSAGE:
        assert MARKER not in out
    if log_format == "json":
        (line,) = out.splitlines()
        assert json.loads(line)["event"] == "failed"


def test_the_console_traceback_keeps_the_first_and_last_frames() -> None:
    from sessionvisor._logging import format_exception

    error = raised(lambda: dive(0, None))
    text = format_exception((type(error), error, error.__traceback__))
    assert text.startswith("Traceback (most recent call last):")
    assert "frames skipped" in text
    assert text.count("in dive") <= 20
    assert text.rstrip().endswith(f"RecursionError: {error}")
    assert "raised" in text  # the first frame, where it was caught
    assert sys.getrecursionlimit() > 0
