"""The real frontend clients against a real server: ``node --test`` runs the npm packages.

pytest serves the app on uvicorn (a free port) and runs the Node scripts of this
directory against it: ``ai_sdk.test.mjs`` drives the Vercel AI SDK's
``AbstractChat`` with ``DefaultChatTransport``, ``ag_ui.test.mjs`` drives
``@ag-ui/client``'s ``HttpAgent``. Both validate every chunk with their own
schemas, so a stream they accept is a stream the real frontends accept.

The agent is the demo agent (streams word by word, asks approval for "delete",
crashes on "crash" and is restarted) with one addition for determinism: a turn
whose message says "slow" waits until the test opens a gate (``POST
/_test/release``), so "while a turn runs" never depends on timing.

Outside CI the tests skip when Node or ``tests/frontend/node_modules`` is
missing (``make test`` runs ``npm ci`` here); in CI they must run.
"""

from __future__ import annotations

import os
import re
import shutil
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import anyio
import pytest
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route

from sessionvisor import SessionSupervisor, SingleRouter
from sessionvisor.agents import Outcome, Turn
from sessionvisor.factories import SessionOpts
from sessionvisor.http import create_app
from sessionvisor.http._demo import DemoAgent
from tests._support.servers import IN_CI

from ..http._support import serve

pytestmark = pytest.mark.anyio

HERE = Path(__file__).parent
#: The longest a Node script may run before it counts as a hang.
NODE_TIMEOUT = 120.0


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"  # uvicorn runs on asyncio


def _node_problem() -> str | None:
    if shutil.which("node") is None:
        return "node is not installed"
    for package in ("ai", "@ag-ui/client"):
        if not (HERE / "node_modules" / package / "package.json").exists():
            return f"tests/frontend/node_modules/{package} is missing (run `npm ci` there)"
    return None


@pytest.fixture
def node() -> str:
    problem = _node_problem()
    if problem is not None:
        if IN_CI:
            pytest.fail(f"{problem}; CI must run the frontend tests (make test runs npm ci)")
        pytest.skip(f"{problem}; `make test` installs the Node packages")
    path = shutil.which("node")
    assert path is not None
    return path


class Gate:
    """Holds the turns whose message says "slow" until released."""

    def __init__(self) -> None:
        self.event = anyio.Event()
        self.event.set()

    def hold(self) -> None:
        self.event = anyio.Event()

    def release(self) -> None:
        self.event.set()


class GatedDemoAgent(DemoAgent):
    """The demo agent; a message with the word "slow" waits at the gate first."""

    def __init__(self, gate: Gate) -> None:
        super().__init__(word_delay=0)
        self.gate = gate

    async def run(self, turn: Turn) -> Outcome:
        last = turn.state.messages[-1] if turn.state.messages else None
        if last is not None and "slow" in last.text().lower().split():
            await self.gate.event.wait()
        return await super().run(turn)


def _router(gate: Gate) -> SingleRouter:
    opts = {"restart_on_error": True, "max_restarts": 50, "max_seconds": 60.0}

    def factory(agent_id: str, config: Any) -> Any:
        return GatedDemoAgent(gate), SessionOpts(supervisor_opts=opts)

    return SingleRouter(factory)


def _app(gate: Gate) -> Any:
    # Heartbeats every 50 ms: the clients must take the comment lines in their stride.
    app = create_app(SessionSupervisor(_router(gate)), heartbeat=0.05)

    async def hold(request: Request) -> JSONResponse:
        gate.hold()
        return JSONResponse({"gate": "closed"})

    async def release(request: Request) -> JSONResponse:
        gate.release()
        return JSONResponse({"gate": "open"})

    app.router.routes.append(Route("/_test/hold", hold, methods=["POST"]))
    app.router.routes.append(Route("/_test/release", release, methods=["POST"]))
    return app


async def _run_node(node: str, script: str, base_url: str) -> None:
    env = {**os.environ, "SESSIONVISOR_URL": base_url, "NODE_ENV": "test"}
    with anyio.fail_after(NODE_TIMEOUT):
        result = await anyio.run_process(
            [node, "--test", "--test-concurrency=1", "--test-reporter=spec", script],
            cwd=HERE,
            env=env,
            check=False,
        )
    output = (result.stdout + result.stderr).decode(errors="replace")
    assert result.returncode == 0, f"node --test {script} failed:\n{output}"
    # A script that ran no test must not pass silently.
    assert re.search(r"\bpass [1-9]", output), f"node ran no test:\n{output}"


@pytest.fixture
async def server() -> AsyncIterator[str]:
    async with serve(_app(Gate())) as url:
        yield url


async def test_the_vercel_ai_sdk_chat_client_works_unmodified(node: str, server: str) -> None:
    await _run_node(node, "ai_sdk.test.mjs", server)


async def test_the_ag_ui_http_agent_works_unmodified(node: str, server: str) -> None:
    await _run_node(node, "ag_ui.test.mjs", server)


@pytest.mark.parametrize(
    ("script", "expected"),
    [
        ("use_chat.mjs", "the tool call is now output-available"),
        ("ag_ui_client.mjs", "pending interrupts: 0"),
    ],
)
async def test_the_example_scripts_run_against_the_demo(
    node: str, script: str, expected: str, tmp_path: Path
) -> None:
    from sessionvisor.http._demo import demo_router

    # The example, beside the test's node_modules (the examples ship their own package.json).
    source = HERE.parents[1] / "examples" / "frontends" / script
    (tmp_path / script).write_text(source.read_text())
    (tmp_path / "node_modules").symlink_to(HERE / "node_modules", target_is_directory=True)
    (tmp_path / "package.json").write_text('{"type": "module"}')
    app = create_app(SessionSupervisor(demo_router(word_delay=0)), heartbeat=None)
    async with serve(app) as url:
        env = {**os.environ, "SESSIONVISOR_URL": url.rstrip("/")}
        with anyio.fail_after(NODE_TIMEOUT):
            result = await anyio.run_process([node, script], cwd=tmp_path, env=env, check=False)
    output = (result.stdout + result.stderr).decode(errors="replace")
    assert result.returncode == 0, output
    assert "Approved: I ran delete_files" in output
    assert expected in output
