"""Every example runs offline with one command, exits 0 and prints what it promises.

Each example is run twice: as a user runs it (``python examples/X.py`` in a
subprocess, with a timeout) and in-process through its ``main()`` on the anyio
backends it supports. The pydantic-ai examples (``approval``, ``tenants``) run
on asyncio only, because pydantic-ai does.
"""

from __future__ import annotations

import importlib.util
import os
import subprocess
import sys
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest
from structlog.testing import capture_logs

EXAMPLES = Path(__file__).resolve().parents[2] / "examples"
TIMEOUT = 60

EXPECTED: dict[str, list[str]] = {
    "quickstart": [
        "started conversation-c-42 (new: True)",
        "agent> Ahoy! You said 'Hello'. This is turn 1.",
        "agent> Ahoy! You said 'How are you?'. This is turn 2.",
        "agent> Ahoy! You said 'Still there?'. This is turn 3.",
        "history: 6 messages, restored from SQLite",
        "restored state wins: persona=pirate, turns=3",
    ],
    "chat_loop": [
        "started conversation-c-42",
        "user> Hello",
        "agent> You said 'Hello' (history: 1 messages)",
        "[interrupted: Really delete my notes?]",
        "agent> Deleted.",
        "[shutdown: inactivity]",
        "running: False",
        "woke: True",
        "agent> You said 'Are you back?' (history: 5 messages)",
    ],
    "multi_factory": [
        "c-support agent> [support/printer/pro] A technician replies within 1 hour.",
        "c-sales agent> [sales/us] The pro plan costs 20 USD a month.",
        "c-bad refused: RouteValidationError "
        "['product: Field required', \"tier: Input should be 'free' or 'pro'\"]",
        "== second process, same file ==",
        "c-support user> It is still burning",
        "c-sales user> And in a year?",
        "c-support agent> [sales/eu] The pro plan costs 20 EUR a month.",
        "c-support is now recorded as 'sales' {'kind': 'sales', 'region': 'eu'}",
    ],
    "crash_and_recover": [
        "user> are you there?  (queued: True)",
        "user> please answer  (queued: True)",
        "  turn failed: RuntimeError: the model backend fell over",
        "  restarted: attempt 1 after RuntimeError: the model backend fell over",
        "  agent> (actor start #2) answering ['crash now', 'are you there?', 'please answer']",
        "restarts: 1",
        "  user: please answer",
    ],
    "approval": [
        "agent> I will send 50 EUR to Bob once you approve.",
        "[needs approval: transfer({'amount': 50, 'to': 'Bob'})]",
        "[shutdown: inactivity, status interrupted, interrupt restorable: True]",
        "== second process, same file ==",
        "agent> The bank says: transferred 50 EUR to Bob",
        "agent> The bank says: I do not know Mallory.",
        "  request: tool-return transfer",
    ],
    "tenants": [
        "  agent> Dear customer, refunded INV-1 (120 EUR)",
        "  agent> Sure! I cannot refund invoices for you (my tools: list_invoices).",
        "  agent> Sure! {'INV-1': 120, 'INV-2': 80}",
        "  refused: FactoryPermissionError: role 'guest' may not use the assistant",
        "  refused: AccessDenied: access to conversation 'c-alice' denied: "
        "it belongs to another owner",
        "  agent> Sure! INV-2 is not an invoice of globex",
    ],
}

# The multi-step stories whose order matters: these lines must appear in this order.
ORDERED = {
    "multi_factory": [
        "c-support user> It is still burning",
        "c-support agent> [support/printer/pro] A technician replies within 1 hour.",
        "c-support refused: RouteChangedError",
        "c-support agent> [sales/eu] The pro plan costs 20 EUR a month.",
    ],
    "crash_and_recover": ["user> crash now", "turn failed", "restarted", "actor start #2"],
}

ON_TRIO_TOO = ["quickstart", "chat_loop", "multi_factory", "crash_and_recover"]
ASYNCIO_ONLY = ["approval", "tenants"]


def check_output(name: str, output: str) -> None:
    lines = [line.rstrip() for line in output.splitlines()]
    missing = [line for line in EXPECTED[name] if line.rstrip() not in lines]
    assert not missing, f"{name}: missing lines {missing}\n--- output ---\n{output}"
    position = 0
    for fragment in ORDERED.get(name, []):
        found = next((i for i in range(position, len(lines)) if fragment in lines[i]), None)
        assert found is not None, f"{name}: {fragment!r} not after line {position}\n{output}"
        position = found + 1


def load(name: str) -> ModuleType:
    spec = importlib.util.spec_from_file_location(f"example_{name}", EXAMPLES / f"{name}.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    # Registered first: dataclasses and pydantic resolve the module's annotations through it.
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_example_runs_as_a_script(name: str) -> None:
    env = {k: v for k, v in os.environ.items() if k != "EXAMPLE_MODEL"}  # offline default
    result = subprocess.run(
        [sys.executable, str(EXAMPLES / f"{name}.py")],
        capture_output=True,
        text=True,
        timeout=TIMEOUT,
        env=env,
        check=False,
    )
    assert result.returncode == 0, f"{name} failed:\n{result.stdout}\n{result.stderr}"
    check_output(name, result.stdout)
    if name == "crash_and_recover":
        # This example keeps the runtime's log on: it shows the restart.
        assert "session_restarting" in result.stdout
        assert "session_restarted" in result.stdout


@pytest.mark.anyio
@pytest.mark.parametrize("name", ON_TRIO_TOO)
async def test_example_main_runs_on_both_backends(
    name: str, anyio_backend: str, capsys: pytest.CaptureFixture[str]
) -> None:
    await run_main(name, capsys)


@pytest.mark.anyio
@pytest.mark.parametrize("anyio_backend", ["asyncio"])  # pydantic-ai runs on asyncio only
@pytest.mark.parametrize("name", ASYNCIO_ONLY)
async def test_pydantic_ai_example_main_runs_on_asyncio(
    name: str, anyio_backend: str, capsys: pytest.CaptureFixture[str], monkeypatch: Any
) -> None:
    monkeypatch.delenv("EXAMPLE_MODEL", raising=False)
    await run_main(name, capsys)


async def run_main(name: str, capsys: pytest.CaptureFixture[str]) -> None:
    module = load(name)
    with capture_logs() as logs:
        await module.main()
    check_output(name, capsys.readouterr().out)
    if name == "crash_and_recover":
        events = [entry["event"] for entry in logs]
        assert "session_restarting" in events and "session_restarted" in events
        restarting = next(e for e in logs if e["event"] == "session_restarting")
        assert restarting["attempt"] == 1
        assert "the model backend fell over" in restarting["error"]
