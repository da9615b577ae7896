"""schemathesis against the live app: every generated request gets a documented answer.

The demo server runs as an operator runs it (``python -m sessionvisor demo`` on
real uvicorn, a SQLite file in ``tmp_path``), and the ``schemathesis`` command
reads its ``/openapi.json`` and fires generated requests at it, valid and
invalid, with its default checks: no 5xx, only documented status codes, content
types and bodies that fit the document, invalid input refused, valid input not
refused, a 405 that names the allowed methods. Each request has a timeout, so a
hang fails too. The run is bounded (examples per operation, a fixed seed that
``SCHEMATHESIS_SEED`` overrides) to stay within a few seconds.

``GET /conversations/{cid}/events`` is left out: an event stream stays open by
design, so a request to it cannot "finish"; the SSE tests cover that route.
The frontend-protocol routes take their clients' whole bodies, whose meaning a
schema cannot pin down (the newest message must be the user's, with a text
part): there a schema-valid body may also be refused with a 400, and every
other check applies as everywhere.
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
MAX_EXAMPLES = 15
DEADLINE = 30.0
#: Routes whose answer is an event stream that stays open (see the module docstring).
ENDLESS_STREAMS = ["/conversations/{cid}/events"]
#: Routes where a schema-valid body may still be refused (see the module docstring).
SEMANTIC_400 = ["/ai-sdk/chat", "/ag-ui"]
CONFIG = """
[[operations]]
include-path = "{path}"
checks.positive_data_acceptance.expected-statuses = [
    "2XX", "400", "401", "403", "404", "409", "429"
]
"""


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def schemathesis_command() -> list[str]:
    found = shutil.which("schemathesis", path=str(Path(sys.executable).parent))
    if found is None:
        pytest.fail("the schemathesis command is missing: pip install -e '.[dev]'")
    return [found]


def test_schemathesis_finds_no_undocumented_answer_no_server_error_and_no_hang(
    tmp_path: Path,
) -> None:
    port = free_port()
    env = {**os.environ, "PYTHONPATH": str(REPO / "src"), "PYTHONUNBUFFERED": "1"}
    demo = [sys.executable, "-m", "sessionvisor", "demo", "--port", str(port)]
    demo.extend(["--db", str(tmp_path / "fuzz.db"), "--word-delay", "0", "--log-level", "warning"])
    server = subprocess.Popen(
        demo,
        cwd=tmp_path,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    try:
        assert server.stdout is not None
        deadline = time.monotonic() + DEADLINE
        while time.monotonic() < deadline:
            line = server.stdout.readline()
            if not line or "open http://" in line:
                break
        assert server.poll() is None, "the demo server did not start"
        seed = os.environ.get("SCHEMATHESIS_SEED", "20261202")
        config = tmp_path / "schemathesis.toml"
        config.write_text("".join(CONFIG.format(path=path) for path in SEMANTIC_400))
        command = [
            *schemathesis_command(),
            "--config-file",
            str(config),
            "run",
            f"http://127.0.0.1:{port}/openapi.json",
            "--max-examples",
            str(MAX_EXAMPLES),
            "--seed",
            seed,
            "--workers",
            "1",
            "--request-timeout",
            "5",
            "--header",
            "X-User: fuzzer",
            "--suppress-health-check",
            "all",
        ]
        for path in ENDLESS_STREAMS:
            command += ["--exclude-path", path]
        run = subprocess.run(
            command,
            cwd=tmp_path,
            capture_output=True,
            text=True,
            timeout=120,
            check=False,
            env={**os.environ, "NO_COLOR": "1"},
        )
    finally:
        server.send_signal(signal.SIGINT)
        try:
            server_out, _ = server.communicate(timeout=DEADLINE)
        except subprocess.TimeoutExpired:
            server.kill()
            server_out, _ = server.communicate()
    assert run.returncode == 0, (
        f"schemathesis found problems (seed {seed}):\n{run.stdout[-12000:]}\n{run.stderr[-3000:]}"
        f"\nserver output:\n{server_out[-6000:]}"
    )
    assert "internal error" not in server_out and "Traceback" not in server_out, server_out
    # It really ran: the summary names the operations it tested.
    assert "Tested:" in run.stdout, run.stdout
