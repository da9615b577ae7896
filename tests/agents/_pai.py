"""Offline pydantic-ai models and a supervisor around ``PydanticAIAgent`` for the tests.

``ScriptedModel`` is a ``FunctionModel`` stream function that reads the newest
request: tool results are answered ``"tool said: ..."``; a prompt with
``delete <path>`` calls the approval tool, ``fetch <x>`` the external tool,
``add a b`` the plain tool; anything else is echoed. It records every message
list it was sent, so tests can check the history the model saw.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from typing import Any

import anyio
import pydantic_ai.models
from pydantic_ai import Agent
from pydantic_ai.exceptions import CallDeferred
from pydantic_ai.messages import (
    ModelMessage,
    ModelRequest,
    RetryPromptPart,
    ToolReturnPart,
    UserPromptPart,
)
from pydantic_ai.models.function import AgentInfo, DeltaToolCall, FunctionModel

from sessionvisor import (
    Event,
    SessionOpts,
    SessionSupervisor,
    Shutdown,
    SingleRouter,
    StateStore,
    Status,
    StatusChanged,
    Subscription,
)
from sessionvisor.agents.pydantic_ai import PydanticAIAgent
from sessionvisor.testing import ManualClock, collect_until

# Nothing in these tests may reach a real model provider.
pydantic_ai.models.ALLOW_MODEL_REQUESTS = False

WAIT = 5.0


def prompt_text(messages: list[ModelMessage]) -> str:
    """The user prompt text of the newest request."""
    last = messages[-1]
    assert isinstance(last, ModelRequest)
    texts: list[str] = []
    for part in last.parts:
        if isinstance(part, UserPromptPart):
            if isinstance(part.content, str):
                texts.append(part.content)
            else:
                texts.extend(c for c in part.content if isinstance(c, str))
    return "".join(texts)


class ScriptedModel:
    """A stream function for ``FunctionModel`` that acts on the newest request."""

    def __init__(self) -> None:
        self.seen: list[list[ModelMessage]] = []
        self.settings: list[Any] = []
        self.calls = 0

    def model(self) -> FunctionModel:
        return FunctionModel(stream_function=self, model_name="scripted")

    async def __call__(
        self, messages: list[ModelMessage], info: AgentInfo
    ) -> AsyncIterator[str | dict[int, DeltaToolCall]]:
        self.seen.append(list(messages))
        self.settings.append(info.model_settings)
        last = messages[-1]
        assert isinstance(last, ModelRequest)
        results = [p for p in last.parts if isinstance(p, ToolReturnPart | RetryPromptPart)]
        if results:
            said = "; ".join(str(p.content) for p in results)
            yield "tool said: "
            yield said
            return
        text = prompt_text(messages)
        words = text.split()
        self.calls += 1
        call_id = f"call-{self.calls}"
        if words[:1] == ["delete"] and len(words) > 1:
            yield f"Deleting {words[1]}. "
            yield {
                0: DeltaToolCall("delete_file", f'{{"path": "{words[1]}"}}', tool_call_id=call_id)
            }
            return
        if words[:1] == ["fetch"] and len(words) > 1:
            yield {
                0: DeltaToolCall("fetch_record", f'{{"key": "{words[1]}"}}', tool_call_id=call_id)
            }
            return
        if words[:1] == ["add"] and len(words) == 3:
            yield {
                0: DeltaToolCall(
                    "add", f'{{"a": {words[1]}, "b": {words[2]}}}', tool_call_id=call_id
                )
            }
            return
        if words[:1] == ["both"]:
            yield {
                0: DeltaToolCall("delete_file", '{"path": "x"}', tool_call_id="call-a"),
                1: DeltaToolCall("fetch_record", '{"key": "y"}', tool_call_id="call-b"),
            }
            return
        yield "echo: "
        yield text


def build_agent(script: ScriptedModel, **kwargs: Any) -> Agent[Any, str]:
    """A pydantic-ai agent with an approval tool, an external tool and a plain tool."""
    agent: Agent[Any, str] = Agent(script.model(), **kwargs)

    @agent.tool_plain(requires_approval=True)
    def delete_file(path: str) -> str:
        """Delete a file (needs approval)."""
        return f"deleted {path}"

    @agent.tool_plain
    def fetch_record(key: str) -> str:
        """Fetched by the client, outside the agent."""
        raise CallDeferred

    @agent.tool_plain
    def add(a: int, b: int) -> int:
        """Add two numbers."""
        return a + b

    return agent


@asynccontextmanager
async def supervisor(
    make_agent: Callable[[], Any],
    *,
    store: StateStore | None = None,
    extra: dict[str, Any] | None = None,
    **kwargs: Any,
) -> AsyncIterator[SessionSupervisor]:
    """A supervisor whose every conversation runs ``make_agent()``."""

    def factory(agent_id: str, config: Any) -> Any:
        return make_agent(), SessionOpts(extra=extra or {})

    async with SessionSupervisor(SingleRouter(factory), store=store, **kwargs) as sup:
        yield sup


def adapter(script: ScriptedModel, **kwargs: Any) -> PydanticAIAgent:
    return PydanticAIAgent(build_agent(script), **kwargs)


async def turn_events(
    sup: SessionSupervisor, cid: str, content: Any, *, until: str = "idle", **kw: Any
) -> list[Event]:
    """Send ``content`` and return the events up to the status ``until``."""
    async with sup.subscribe(cid, scope=kw.get("scope")) as events:
        await sup.send(cid, content, **kw)
        seen = await collect_until(events, _after_running(until), timeout=WAIT)
    return seen


async def resume_events(
    sup: SessionSupervisor, cid: str, answer: Any, *, until: str = "idle"
) -> list[Event]:
    """Resume with ``answer`` and return the events up to the status ``until``."""
    async with sup.subscribe(cid) as events:
        await _resume(sup, cid, answer)
        seen = await collect_until(events, _after_running(until), timeout=WAIT)
    return seen


async def _resume(sup: SessionSupervisor, cid: str, answer: Any) -> None:
    # Right after the `interrupted` event, as a user clicking "approve" at once would.
    await sup.resume(cid, answer)


async def advance_until_shutdown(
    clock: ManualClock, events: Subscription, seconds: float
) -> Shutdown:
    """Move the clock by ``seconds`` until the session announces its ``Shutdown``.

    One step may land while the actor is still finishing its turn (it then
    counts the end of the turn as activity), so this steps again if needed.
    """
    with anyio.fail_after(WAIT):
        while True:
            clock.advance(seconds)
            with anyio.move_on_after(0.05):
                async for event in events:
                    if isinstance(event, Shutdown):
                        return event


def _after_running(until: str) -> Callable[[Event], bool]:
    """Match ``until`` only after the turn has been seen running (skip the snapshot)."""
    state = {"running": False}
    wanted = Status(until)

    def check(event: Event) -> bool:
        if not isinstance(event, StatusChanged):
            return False
        if event.status is Status.RUNNING:
            state["running"] = True
            return False
        return state["running"] and event.status is wanted

    return check
