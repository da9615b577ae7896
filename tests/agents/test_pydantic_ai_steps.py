"""The pydantic-ai adapter journals each model response and each tool call as a durable step.

A turn cut by a crash (the store's record copied into a fresh store, read by a
new supervisor) runs again from its last stored step: no completed response is
requested again, no completed tool call runs again, usage counts each response
once. A tool cut while it ran asks a human to retry or skip it, unless it is
idempotent. asyncio only, as pydantic-ai is (see ``test_pydantic_ai``).
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import anyio
import pytest
from pydantic_ai import Agent
from pydantic_ai.messages import (
    ModelMessage,
    ModelRequest,
    ModelResponse,
    TextPart,
    ToolCallPart,
    ToolReturnPart,
)
from pydantic_ai.models.function import AgentInfo, DeltaToolCall, FunctionModel

from sessionvisor import MemoryStore, SessionSupervisor, State, StoredConversation, Usage
from sessionvisor.agents.pydantic_ai import (
    SKIPPED_MESSAGE,
    UNKNOWN_MOVED_ON_MESSAGE,
    USAGE_KEY,
    PydanticAIAgent,
    load_history,
)
from sessionvisor.testing import wait_for_status, wait_until

from ._pai import WAIT, prompt_text, supervisor

ITEMS = ("one", "two", "three")


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


class Bench:
    """A model and tools that count what really ran.

    The prompt ``three`` makes the model call ``record`` once per item, one
    response at a time, then reply; ``delete <path>`` calls ``delete`` (needs
    approval) then replies. The model decides from the history alone, so a
    rerun that replays part of it asks for the rest. ``hold_model=n`` holds
    the n-th model request (of this bench) and ``hold_tool=item`` holds
    ``record(item)`` until ``release`` is set.
    """

    def __init__(
        self,
        *,
        hold_model: int | None = None,
        hold_tool: str | None = None,
        idempotent_tools: tuple[str, ...] = (),
        idempotent_metadata: bool = False,
        stream: bool = True,
    ) -> None:
        self.requests: list[int] = []  # per model request: the tool results it saw
        self.recorded: list[str] = []
        self.deleted: list[str] = []
        self.seen: list[list[ModelMessage]] = []
        self.hold_model = hold_model
        self.hold_tool = hold_tool
        self.held = anyio.Event()
        self.release = anyio.Event()
        self.idempotent_tools = idempotent_tools
        self.idempotent_metadata = idempotent_metadata
        self.stream = stream
        #: (recorded, deleted) when ``cut`` took its copy of the store.
        self.at_cut: tuple[list[str], list[str]] = ([], [])

    async def _hold(self) -> None:
        self.held.set()
        await self.release.wait()

    async def model(
        self, messages: list[ModelMessage], info: AgentInfo
    ) -> AsyncIterator[str | dict[int, DeltaToolCall]]:
        self.seen.append(list(messages))
        returns = [
            part
            for message in messages
            if isinstance(message, ModelRequest)
            for part in message.parts
            if isinstance(part, ToolReturnPart)
        ]
        self.requests.append(len(returns))
        if len(self.requests) == self.hold_model:
            await self._hold()
        first = next(m for m in messages if isinstance(m, ModelRequest))
        words = prompt_text([first]).split()
        if words[:1] == ["delete"]:
            if not returns:
                args = f'{{"path": "{words[1]}"}}'
                yield {0: DeltaToolCall("delete", args, tool_call_id="call-d")}
                return
            yield f"delete said: {returns[-1].content}"
            return
        if len(returns) < len(ITEMS):
            item = ITEMS[len(returns)]
            yield f"Recording {item}. "
            args = f'{{"item": "{item}"}}'
            yield {0: DeltaToolCall("record", args, tool_call_id=f"call-{len(returns) + 1}")}
            return
        yield "done: " + "; ".join(str(p.content) for p in returns)

    async def respond(self, messages: list[ModelMessage], info: AgentInfo) -> ModelResponse:
        """``model`` without streaming: its pieces as one response."""
        parts: list[Any] = []
        async for piece in self.model(messages, info):
            if isinstance(piece, str):
                parts.append(TextPart(piece))
            else:
                for call in piece.values():
                    assert call.name is not None and call.tool_call_id is not None
                    parts.append(ToolCallPart(call.name, call.json_args, call.tool_call_id))
        return ModelResponse(parts=parts)

    def agent(self) -> PydanticAIAgent:
        model = (
            FunctionModel(stream_function=self.model)
            if self.stream
            else FunctionModel(function=self.respond)
        )
        agent: Agent[Any, str] = Agent(model)
        metadata = {"idempotent": True} if self.idempotent_metadata else None

        @agent.tool_plain(metadata=metadata)
        async def record(item: str) -> str:
            """Record an item."""
            self.recorded.append(item)
            if item == self.hold_tool:
                await self._hold()
            return f"recorded {item}"

        @agent.tool_plain(requires_approval=True)
        async def delete(path: str) -> str:
            """Delete a file (needs approval)."""
            self.deleted.append(path)
            return f"deleted {path}"

        return PydanticAIAgent(agent, idempotent_tools=self.idempotent_tools, stream=self.stream)


def responses(state: State) -> list[ModelResponse]:
    return [m for m in load_history(state) if isinstance(m, ModelResponse)]


def usage_of(state: State) -> Usage:
    """The usage the history's (distinct) responses report."""
    total = Usage()
    for response in responses(state):
        total = total + Usage(
            input_tokens=response.usage.input_tokens,
            output_tokens=response.usage.output_tokens,
            requests=1,
        )
    return total


def assert_usage_counted_once(state: State) -> None:
    expected = usage_of(state)
    assert state.usage == expected
    kept = state.metadata[USAGE_KEY]
    assert (kept["requests"], kept["input_tokens"], kept["output_tokens"]) == (
        expected.requests,
        expected.input_tokens,
        expected.output_tokens,
    )


async def settled(sup: SessionSupervisor, status: str) -> State:
    await wait_for_status(sup, "c-1", status, timeout=WAIT)
    state = await sup.load("c-1")
    assert state is not None
    return state


async def cut(bench: Bench, content: str = "three", answer: Any = None) -> StoredConversation:
    """Run until ``bench`` holds (after answering the interrupt with ``answer``, if
    given): what a process killed then leaves in the store."""
    store = MemoryStore()
    async with supervisor(bench.agent, store=store) as sup:
        await sup.send("c-1", content)
        if answer is not None:
            await settled(sup, "interrupted")
            await sup.resume("c-1", answer)
        with anyio.fail_after(WAIT):
            await bench.held.wait()
        left = await store.load("c-1")
        assert left is not None
        bench.at_cut = (list(bench.recorded), list(bench.deleted))
        bench.release.set()  # this process's turn may go on: its store is thrown away
    return left


async def rerun(left: StoredConversation, bench: Bench, status: str = "idle") -> State:
    """Start a new supervisor over a copy of ``left``: the cut turn runs again."""
    store = MemoryStore()
    await store.save("c-1", left, expected_version=None, lifecycle="turn_start")
    async with supervisor(bench.agent, store=store) as sup:

        async def ended() -> bool:
            state = await sup.load("c-1")
            return state is not None and (
                state.interrupt is not None
                or (bool(state.messages) and state.messages[-1].role == "assistant")
            )

        await wait_until(ended, timeout=WAIT)
        return await settled(sup, status)


STEPS = [
    "model:1",
    "tool:record:call-1",
    "model:2",
    "tool:record:call-2",
    "model:3",
    "tool:record:call-3",
    "model:4",
]


@pytest.mark.anyio
async def test_a_turn_stores_each_response_and_tool_call_as_a_step(anyio_backend: str) -> None:
    bench = Bench()
    async with supervisor(bench.agent) as sup:
        await sup.send("c-1", "three")
        state = await settled(sup, "idle")
        steps = await sup.steps("c-1")
    assert state.messages[-1].text().endswith("done: recorded one; recorded two; recorded three")
    assert bench.recorded == list(ITEMS)
    assert bench.requests == [0, 1, 2, 3]
    assert steps is not None
    assert [(s.name, s.status) for s in steps] == [(name, "completed") for name in STEPS]
    assert steps[1].result == {"result": "recorded one"}
    assert all(s.usage is not None for s in steps if s.name.startswith("model:"))
    assert len(responses(state)) == 4
    assert_usage_counted_once(state)
    assert state.usage.requests == 4 and state.usage.input_tokens > 0


@pytest.mark.anyio
async def test_a_crash_during_a_model_request_continues_from_the_last_stored_step(
    anyio_backend: str,
) -> None:
    first = Bench(hold_model=2)
    left = await cut(first)
    assert first.at_cut[0] == ["one"]
    journal = left.state["journal"]["steps"]
    assert [(s["name"], s["status"]) for s in journal] == [
        ("model:1", "completed"),
        ("tool:record:call-1", "completed"),
    ]
    again = Bench()
    state = await rerun(left, again)
    # Response 1 and tool call 1 came from the journal; the cut request is asked
    # again, then the rest of the run happens once.
    assert again.requests == [1, 2, 3]
    assert again.recorded == ["two", "three"]
    assert state.messages[-1].text().endswith("done: recorded one; recorded two; recorded three")
    # The replayed text is streamed again and kept as the reply, from the first response.
    assert state.messages[-1].text().startswith("Recording one.")
    assert [m.role for m in state.messages] == ["user", "assistant"]
    assert len(responses(state)) == 4
    assert_usage_counted_once(state)
    assert state.usage.requests == 4
    assert [s.name for s in state.steps] == STEPS


@pytest.mark.anyio
async def test_without_streaming_a_crash_continues_from_the_last_stored_step(
    anyio_backend: str,
) -> None:
    left = await cut(Bench(hold_model=3, stream=False))
    again = Bench(stream=False)
    state = await rerun(left, again)
    assert again.requests == [2, 3]
    assert again.recorded == ["three"]
    assert state.messages[-1].text().endswith("done: recorded one; recorded two; recorded three")
    assert_usage_counted_once(state)
    assert state.usage.requests == 4


@pytest.mark.anyio
@pytest.mark.parametrize("answer", ["retry", "skip", {"calls": {"call-2": "retry"}}])
async def test_a_tool_cut_while_it_ran_asks_to_retry_or_skip(
    anyio_backend: str, answer: Any
) -> None:
    left = await cut(Bench(hold_tool="two"))
    again = Bench()
    store = MemoryStore()
    await store.save("c-1", left, expected_version=None, lifecycle="turn_start")
    async with supervisor(again.agent, store=store) as sup:
        state = await settled(sup, "interrupted")
        assert again.recorded == []  # neither the completed call nor the cut one ran
        assert state.interrupt is not None
        assert state.interrupt.data == {
            "calls": [
                {
                    "tool_call_id": "call-2",
                    "tool_name": "record",
                    "args": {"item": "two"},
                    "kind": "unknown_outcome",
                }
            ]
        }
        await sup.resume("c-1", answer)
        state = await settled(sup, "idle")
    retried = answer != "skip"
    assert again.recorded == (["two", "three"] if retried else ["three"])
    said = "recorded two" if retried else SKIPPED_MESSAGE
    assert state.messages[-1].text().endswith(f"done: recorded one; {said}; recorded three")
    assert again.requests == [2, 3]  # responses 1 and 2 were never asked again
    assert_usage_counted_once(state)
    assert state.usage.requests == 4


@pytest.mark.anyio
async def test_an_unknown_outcome_answer_that_does_not_fit_keeps_the_interrupt(
    anyio_backend: str,
) -> None:
    left = await cut(Bench(hold_tool="two"))
    again = Bench()
    store = MemoryStore()
    await store.save("c-1", left, expected_version=None, lifecycle="turn_start")
    async with supervisor(again.agent, store=store) as sup:
        await settled(sup, "interrupted")
        await sup.resume("c-1", True)
        state = await settled(sup, "interrupted")
    assert state.interrupt is not None
    assert "'retry'" in state.interrupt.data["error"]
    assert again.recorded == []


@pytest.mark.anyio
@pytest.mark.parametrize("how", ["option", "metadata"])
async def test_an_idempotent_tool_cut_while_it_ran_is_just_called_again(
    anyio_backend: str, how: str
) -> None:
    marks: dict[str, Any] = (
        {"idempotent_tools": ("record",)} if how == "option" else {"idempotent_metadata": True}
    )
    left = await cut(Bench(hold_tool="two", **marks))
    # An idempotent call is stored once, with its result: nothing marks it started.
    assert [s["name"] for s in left.state["journal"]["steps"]] == STEPS[:3]
    again = Bench(**marks)
    state = await rerun(left, again)
    assert again.recorded == ["two", "three"]
    assert again.requests == [2, 3]
    assert state.messages[-1].text().endswith("done: recorded one; recorded two; recorded three")
    assert_usage_counted_once(state)


@pytest.mark.anyio
async def test_an_approved_tool_runs_once_across_a_crash_of_the_resumed_turn(
    anyio_backend: str,
) -> None:
    # The approval interrupt, then the resumed turn is cut while the model
    # answers the tool's result (its 2nd request).
    first = Bench(hold_model=2)
    left = await cut(first, "delete notes.txt", answer={"approved": True})
    assert first.at_cut[1] == ["notes.txt"]
    assert [s["name"] for s in left.state["journal"]["steps"]] == ["tool:delete:call-d"]
    again = Bench()
    state = await rerun(left, again)
    assert again.deleted == []  # the approved call came from the journal
    assert again.requests == [1]
    assert state.messages[-1].text() == "delete said: deleted notes.txt"
    assert state.interrupt is None
    assert_usage_counted_once(state)
    assert state.usage.requests == 2


@pytest.mark.anyio
async def test_an_approval_interrupt_is_asked_again_by_a_rerun_cut_before_it(
    anyio_backend: str,
) -> None:
    # Cut right after the model asked for the approval tool (its 2nd request never
    # comes: the held 1st one is released only after the copy is taken).
    first = Bench(hold_model=1)
    left = await cut(first, "delete a.txt")
    again = Bench()
    store = MemoryStore()
    await store.save("c-1", left, expected_version=None, lifecycle="turn_start")
    async with supervisor(again.agent, store=store) as sup:
        state = await settled(sup, "interrupted")
        assert state.interrupt is not None
        assert state.interrupt.data["calls"][0]["kind"] == "approval"
        await sup.resume("c-1", True)
        state = await settled(sup, "idle")
    assert again.deleted == ["a.txt"]
    assert state.messages[-1].text() == "delete said: deleted a.txt"
    assert_usage_counted_once(state)


@pytest.mark.anyio
async def test_a_new_message_instead_of_retry_or_skip_tells_the_model_it_was_not_retried(
    anyio_backend: str,
) -> None:
    left = await cut(Bench(hold_tool="two"))
    again = Bench()
    store = MemoryStore()
    await store.save("c-1", left, expected_version=None, lifecycle="turn_start")
    async with supervisor(again.agent, store=store) as sup:
        await settled(sup, "interrupted")
        await sup.send("c-1", "never mind")
        state = await settled(sup, "idle")
    assert again.recorded == ["three"]
    assert state.interrupt is None
    closed = [
        part
        for message in load_history(state)
        if isinstance(message, ModelRequest)
        for part in message.parts
        if isinstance(part, ToolReturnPart) and part.tool_call_id == "call-2"
    ]
    assert [part.content for part in closed] == [UNKNOWN_MOVED_ON_MESSAGE]
