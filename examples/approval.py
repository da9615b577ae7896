"""A pydantic-ai agent whose tool needs approval; the question outlives the process.

The agent wants to call ``transfer`` (``requires_approval=True``): the turn
ends in an interrupt listing the call. The session then stops for inactivity,
the "process" ends, and a new supervisor over the same SQLite file answers
the interrupt: the run continues with pydantic-ai's full history (tool call
and tool result included), once approved and once denied with a reason.

Run it with ``.venv/bin/python examples/approval.py``. It is offline: the
model is a scripted ``FunctionModel``. To try a real model, install its
pydantic-ai extra and set e.g. ``EXAMPLE_MODEL=openai:gpt-4o-mini`` (with
``OPENAI_API_KEY``); the default stays offline. Asyncio only, as pydantic-ai.
"""

from __future__ import annotations

import os
import re
import tempfile
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import anyio
import pydantic_ai.models
from pydantic_ai import Agent
from pydantic_ai.messages import ModelMessage, ModelRequest, ToolReturnPart, UserPromptPart
from pydantic_ai.models import Model
from pydantic_ai.models.function import AgentInfo, DeltaToolCall, FunctionModel

from sessionvisor import (
    Delta,
    SessionSupervisor,
    Shutdown,
    SingleRouter,
    SQLiteStore,
    Status,
    StatusChanged,
    Subscription,
)
from sessionvisor.agents.pydantic_ai import PydanticAIAgent, load_history

# -- the offline model: asks to transfer money, then reports what the tool said ----------


async def scripted_bank_model(
    messages: list[ModelMessage], info: AgentInfo
) -> AsyncIterator[str | dict[int, DeltaToolCall]]:
    last = messages[-1]
    assert isinstance(last, ModelRequest)
    results = [p for p in last.parts if isinstance(p, ToolReturnPart)]
    if results:
        yield f"The bank says: {results[0].content}"
        return
    prompt = " ".join(str(p.content) for p in last.parts if isinstance(p, UserPromptPart))
    wanted = re.search(r"(\d+) EUR to (\w+)", prompt)
    if wanted is None:
        yield "I can send money: say e.g. 'Send 50 EUR to Bob'."
        return
    amount, to = wanted.groups()
    yield f"I will send {amount} EUR to {to} once you approve. "
    args = f'{{"amount": {amount}, "to": "{to}"}}'
    yield {0: DeltaToolCall("transfer", args, tool_call_id=f"transfer-{to.lower()}")}


def model() -> Model | str:
    name = os.environ.get("EXAMPLE_MODEL")
    if name:
        return name  # a real model, e.g. "openai:gpt-4o-mini"
    pydantic_ai.models.ALLOW_MODEL_REQUESTS = False  # offline: nothing leaves this machine
    return FunctionModel(stream_function=scripted_bank_model, model_name="scripted-bank")


def factory(agent_id: str, config: Any) -> PydanticAIAgent:
    bank: Agent[None, str] = Agent(
        model(), instructions="You move money for the user with the transfer tool."
    )

    @bank.tool_plain(requires_approval=True)
    def transfer(amount: int, to: str) -> str:
        """Transfer ``amount`` EUR to ``to``."""
        return f"transferred {amount} EUR to {to}"

    return PydanticAIAgent(bank)


router = SingleRouter(factory)

# -- the conversation ------------------------------------------------------------------


async def follow(events: Subscription, until: Any) -> Any:
    """Print streamed text and interrupts; return the first event that matches ``until``."""
    streaming = False
    async for event in events:
        if isinstance(event, Delta):
            print(event.text if streaming else f"agent> {event.text}", end="", flush=True)
            streaming = True
        elif isinstance(event, StatusChanged) and event.status is not Status.RUNNING:
            if streaming:
                print()
                streaming = False
            if event.status is Status.INTERRUPTED and event.interrupt is not None:
                for call in event.interrupt.data["calls"]:
                    print(f"[needs {call['kind']}: {call['tool_name']}({call['args']})]")
        if until(event):
            return event


def status_is(status: Status) -> Any:
    return lambda e: isinstance(e, StatusChanged) and e.status is status


async def main(db_path: Path | None = None) -> None:
    """Run the example; the SQLite file is temporary unless ``db_path`` is given."""
    with tempfile.TemporaryDirectory() as tmp:
        db = db_path or Path(tmp) / "bank.db"
        opts = {"inactivity_timeout": 0.3}

        print("== first process ==")
        async with (
            SQLiteStore(db) as store,
            SessionSupervisor(router, store=store, supervisor_opts=opts) as sup,
            sup.subscribe("c-7") as events,
        ):
            print("user> Send 50 EUR to Bob")
            await sup.send("c-7", "Send 50 EUR to Bob")
            await follow(events, status_is(Status.INTERRUPTED))
            shutdown = await follow(events, lambda e: isinstance(e, Shutdown))
            print(
                f"[shutdown: {shutdown.reason}, status {shutdown.status}, "
                f"interrupt restorable: {shutdown.interrupt_restorable}]"
            )

        print("== second process, same file ==")
        async with (
            SQLiteStore(db) as store,
            SessionSupervisor(router, store=store) as sup,
            sup.subscribe("c-7") as events,
        ):
            state = await sup.load("c-7")
            assert state is not None and state.interrupt is not None
            print(f"status: {await sup.status('c-7')}, waiting on: {state.interrupt.data}")
            print("user approves")
            await sup.resume("c-7", {"approved": True})  # wakes the session with the answer
            await follow(events, status_is(Status.IDLE))

            print("user> Send 5000 EUR to Mallory")
            await sup.send("c-7", "Send 5000 EUR to Mallory")
            await follow(events, status_is(Status.INTERRUPTED))
            print("user denies")
            await sup.resume("c-7", {"approved": False, "reason": "I do not know Mallory."})
            await follow(events, status_is(Status.IDLE))

            state = await sup.load("c-7")
            assert state is not None
            print("pydantic-ai history, restored and continued:")
            for message in load_history(state):
                parts = ", ".join(
                    p.part_kind + (f" {p.tool_name}" if hasattr(p, "tool_name") else "")
                    for p in message.parts
                )
                print(f"  {message.kind}: {parts}")


if __name__ == "__main__":
    import logging

    import structlog

    structlog.configure(wrapper_class=structlog.make_filtering_bound_logger(logging.WARNING))
    anyio.run(main)
