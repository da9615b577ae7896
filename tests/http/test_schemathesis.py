"""schemathesis with every check against the live app: the OpenAPI document is exact.

The demo server runs as an operator runs it (``python -m sessionvisor demo`` on
real uvicorn, a SQLite file in ``tmp_path``), once with the ``X-User`` header
scope and once with JWT on, and the ``schemathesis`` command reads its
``/openapi.json`` and fires generated requests at every operation, valid and
invalid, with ``--checks all``: no 5xx; only documented statuses, content
types, headers and bodies (each event of an event stream included); invalid
input refused and valid input accepted; a 405 that names the allowed methods;
with JWT on, a declared bearer scheme that the server enforces; and the
stateful checks on the links schemathesis infers. Each request has a timeout,
so a hang fails too. The run is bounded (examples per operation, a fixed seed
that ``SCHEMATHESIS_SEED`` overrides) to stay within about 20 seconds a mode.

Two things are set per operation rather than left out:

* ``GET /conversations/{cid}/events`` stays open by design, so schemathesis
  reads one event of it (the snapshot) and checks that, or gives up after a
  second when none comes (``?after=0`` on a new conversation);
* ``POST /ai-sdk/chat`` and ``POST /ag-ui`` act on the client's *newest*
  message, a rule JSON Schema cannot state (it cannot single out the last item
  of an array). ``_schemathesis_hooks`` excuses exactly the 400 for a body whose
  newest message is one the server never acts on, and no other failure.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest

from sessionvisor.testing import free_port

REPO = Path(__file__).resolve().parents[2]
HERE = Path(__file__).resolve().parent
MAX_EXAMPLES = 15
DEADLINE = 30.0
SECRET = "fuzzing-only-secret-of-48-bytes-for-hs256-key!!!"
CONFIG = """
[[operations]]
include-path = "/conversations/{cid}/events"
max-stream-events = 1
request-timeout = 1
"""


def schemathesis_command() -> list[str]:
    found = shutil.which("schemathesis", path=str(Path(sys.executable).parent))
    if found is None:
        pytest.fail("the schemathesis command is missing: pip install -e '.[dev]'")
    return [found]


def bearer_token() -> str:
    import jwt

    claims = {"sub": "fuzzer", "exp": int(time.time()) + 3600}
    return jwt.encode(claims, SECRET, algorithm="HS256")


@pytest.mark.parametrize("auth", ["header", "jwt"])
def test_schemathesis_with_every_check_finds_nothing(tmp_path: Path, auth: str) -> None:
    port = free_port()
    env = {**os.environ, "PYTHONPATH": str(REPO / "src"), "PYTHONUNBUFFERED": "1"}
    demo = [sys.executable, "-m", "sessionvisor", "demo", "--port", str(port)]
    demo.extend(["--db", str(tmp_path / "fuzz.db"), "--word-delay", "0", "--log-level", "warning"])
    if auth == "jwt":
        secret = tmp_path / "secret.txt"
        secret.write_text(SECRET)
        demo.extend(["--jwt-secret-file", str(secret)])
        credentials = f"Authorization: Bearer {bearer_token()}"
    else:
        credentials = "X-User: fuzzer"
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
        document = httpx.get(f"http://127.0.0.1:{port}/openapi.json", timeout=5).json()
        # schemathesis leaves out the operation that serves the document it reads.
        operations = sum(len(methods) for methods in document["paths"].values()) - 1
        if auth == "jwt":
            schemes = document["components"]["securitySchemes"]
            assert schemes["bearerAuth"] == {**schemes["bearerAuth"], "scheme": "bearer"}
        seed = os.environ.get("SCHEMATHESIS_SEED", "20261202")
        config = tmp_path / "schemathesis.toml"
        config.write_text(CONFIG)
        command = [
            *schemathesis_command(),
            "--config-file",
            str(config),
            "run",
            f"http://127.0.0.1:{port}/openapi.json",
            "--checks",
            "all",
            "--max-examples",
            str(MAX_EXAMPLES),
            "--seed",
            seed,
            "--workers",
            "1",
            "--request-timeout",
            "5",
            "--header",
            credentials,
            "--suppress-health-check",
            "all",
        ]
        hooks_env = {
            **os.environ,
            "NO_COLOR": "1",
            "PYTHONPATH": str(HERE),
            "SCHEMATHESIS_HOOKS": "_schemathesis_hooks",
        }
        run = subprocess.run(
            command,
            cwd=tmp_path,
            capture_output=True,
            text=True,
            timeout=120,
            check=False,
            env=hooks_env,
        )
    finally:
        server.send_signal(signal.SIGINT)
        try:
            server_out, _ = server.communicate(timeout=DEADLINE)
        except subprocess.TimeoutExpired:
            server.kill()
            server_out, _ = server.communicate()
    assert run.returncode == 0, (
        f"schemathesis found problems ({auth}, seed {seed}):\n{run.stdout[-12000:]}\n"
        f"{run.stderr[-3000:]}\nserver output:\n{server_out[-6000:]}"
    )
    assert "internal error" not in server_out and "Traceback" not in server_out, server_out
    # It really ran, every operation, and every phase found something to run.
    assert f"Selected: {operations}/{operations}" in run.stdout, run.stdout
    assert f"Tested: {operations}" in run.stdout, run.stdout
    for phase in ("Coverage", "Fuzzing", "Stateful"):
        assert f"✅ {phase}" in run.stdout, run.stdout
