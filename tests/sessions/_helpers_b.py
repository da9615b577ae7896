"""Shared pieces of the supervision, time, subscriber, drain and logging tests.

Everything here is a real component or a thin counter around one: routers and
factories that count how often the supervisor consults them, a recorder that
keeps every event a subscriber saw, and small waits bounded by ``fail_after``.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from contextlib import asynccontextmanager
from typing import Any

import anyio
import anyio.abc
import anyio.lowlevel

from sessionvisor import (
    Done,
    Event,
    Interrupt,
    Route,
    SessionOpts,
    SessionSupervisor,
    State,
    StateStore,
    SubscriberOverflow,
)
from sessionvisor.agents import Outcome, Turn
from sessionvisor.state import Message, load_state
from sessionvisor.testing import ScriptedAgent

#: How long any single wait in these tests may take before it counts as a hang.
WAIT = 5.0


def pending(state: State) -> list[Message]:
    """The user messages since the last assistant message (what a turn answers)."""
    out: list[Message] = []
    for message in reversed(state.messages):
        if message.role == "assistant":
            break
        if message.role == "user":
            out.append(message)
    return out[::-1]


class Cues:
    """What the ``CueAgent``s of one test share across restarts (new agents each time).

    Create it inside the test (it holds anyio events).
    """

    def __init__(self, *, crash_on_start: int = 0) -> None:
        self.gate = anyio.Event()
        self.started_slow = anyio.Event()
        self.seen: set[str] = set()
        self.crashes = 0
        self.crash_on_start = crash_on_start
        self.starts = 0
        self.turns: list[list[str]] = []
        self.answers: list[Any] = []

    def release(self) -> None:
        self.gate.set()

    def hold(self) -> None:
        self.gate = anyio.Event()
        self.started_slow = anyio.Event()


class CueAgent:
    """An agent cued by words of the user messages a turn answers.

    ``slow`` (in the newest message): the turn waits for ``cues.release()``.
    ``crash`` (in a message no earlier turn saw): the turn raises, so a crashed
    message does not crash every later turn that still has it unanswered.
    ``interrupt``/``notice`` (newest message): the turn asks a question / raises
    a notice. Else the reply is ``"ok: <texts joined by |>"``. ``on_start``
    passes a checkpoint (as a real hook that loads something would) and raises
    while ``cues.crash_on_start`` > 0.
    """

    def __init__(self, cues: Cues) -> None:
        self.cues = cues

    async def on_start(self, state: State) -> State:
        self.cues.starts += 1
        await anyio.lowlevel.checkpoint()
        if self.cues.crash_on_start > 0:
            self.cues.crash_on_start -= 1
            raise RuntimeError("on_start failed on cue")
        return state

    async def run(self, turn: Turn) -> Outcome:
        messages = pending(turn.state)
        texts = [m.text() for m in messages]
        self.cues.turns.append(texts)
        new = [m for m in messages if m.id not in self.cues.seen]
        self.cues.seen.update(m.id for m in new)
        newest = texts[-1].split() if texts else []
        if "slow" in newest:
            self.cues.started_slow.set()
            await self.cues.gate.wait()
        crashing = [m.text() for m in new if "crash" in m.text().split()]
        if crashing:
            self.cues.crashes += 1
            raise RuntimeError(f"crashed on {crashing[0]!r}")
        if "interrupt" in newest:
            return Interrupt(turn.state, {"question": "approve?"})
        if "notice" in newest:
            return Interrupt(turn.state, {"notice": "look"}, kind="notice")
        return Done(turn.state, reply="ok: " + " | ".join(texts))

    async def resume(self, turn: Turn, answer: Any) -> Outcome:
        self.cues.answers.append(answer)
        return Done(turn.state, reply=f"resumed: {answer}")


class CountingFactory:
    """Builds a new agent on every call and remembers each call.

    ``make`` builds the agent (a new ``ScriptedAgent`` by default);
    ``supervisor_opts`` is returned in ``SessionOpts`` for every session.
    """

    def __init__(
        self,
        make: Callable[[], Any] | None = None,
        *,
        supervisor_opts: Mapping[str, Any] | None = None,
        fresh_state_attrs: Mapping[str, Any] | None = None,
    ) -> None:
        self._make = make or ScriptedAgent
        self._supervisor_opts = supervisor_opts
        self._fresh = dict(fresh_state_attrs or {})
        self.calls: list[str] = []
        self.agents: list[Any] = []

    def create_agent(self, agent_id: str, config: Any) -> tuple[Any, SessionOpts]:
        self.calls.append(agent_id)
        agent = self._make()
        self.agents.append(agent)
        return agent, SessionOpts(
            fresh_state_attrs=self._fresh, supervisor_opts=self._supervisor_opts
        )

    def calls_for(self, conversation_id: str) -> int:
        return self.calls.count(f"conversation-{conversation_id}")

    @property
    def agent(self) -> Any:
        """The agent built last."""
        return self.agents[-1]


class CountingRouter:
    """Routes every conversation to one factory and counts the consultations."""

    def __init__(self, factory: Any, *, key: str = "default") -> None:
        self.factory = factory
        self.key = key
        self.calls: list[str] = []

    def resolve(self, scope: Any, conversation_id: str, request_opts: Mapping[str, Any]) -> Route:
        self.calls.append(conversation_id)
        return Route(self.factory, dict(request_opts), self.key)

    def calls_for(self, conversation_id: str) -> int:
        return self.calls.count(conversation_id)


def supervisor(
    factory: Any | None = None,
    **kwargs: Any,
) -> tuple[SessionSupervisor, CountingRouter, CountingFactory]:
    """A supervisor over a counting router and factory (``kwargs`` go to the supervisor)."""
    factory = factory if factory is not None else CountingFactory()
    router = CountingRouter(factory)
    return SessionSupervisor(router, **kwargs), router, factory


async def eventually(
    predicate: Callable[[], bool | Awaitable[bool]], *, timeout: float = WAIT
) -> None:
    """Wait until ``predicate()`` holds (polling); fail the test after ``timeout``."""
    with anyio.fail_after(timeout):
        while True:
            result = predicate()
            if not isinstance(result, bool):
                result = await result
            if result:
                return
            await anyio.sleep(0.001)


async def saved_as(store: StateStore, conversation_id: str, lifecycle: str) -> None:
    """Wait until the store's last save of the conversation was ``lifecycle``, then settle.

    A status such as ``interrupted`` is announced before the save that records it;
    the turn is over (and its inactivity clock starts) only once that save landed.
    """

    async def landed() -> bool:
        record = await store.load(conversation_id)
        return record is not None and record.lifecycle == lifecycle

    await eventually(landed)
    await anyio.sleep(0.01)


async def stored(store: StateStore, conversation_id: str) -> State:
    """The State the store holds for the conversation (it must hold one)."""
    record = await store.load(conversation_id)
    assert record is not None, f"nothing stored for {conversation_id!r}"
    return load_state(record.state, conversation_id)


async def stored_or_none(store: StateStore, conversation_id: str) -> State | None:
    record = await store.load(conversation_id)
    return None if record is None else load_state(record.state, conversation_id)


def user_texts(state: State) -> list[str]:
    """The text of the user messages of the history, in order."""
    return [m.text() for m in state.messages if m.role == "user"]


def assistant_texts(state: State) -> list[str]:
    return [m.text() for m in state.messages if m.role == "assistant"]


class Recorder:
    """Every event one subscription delivered, in order, and how it ended."""

    def __init__(self) -> None:
        self.events: list[Event] = []
        self.overflowed: SubscriberOverflow | None = None
        self.ended = False

    def of(self, cls: type[Event]) -> list[Any]:
        return [e for e in self.events if isinstance(e, cls)]

    async def wait_for(
        self, predicate: Callable[[Event], bool], *, count: int = 1, timeout: float = WAIT
    ) -> list[Event]:
        """Wait until ``count`` recorded events match; return the matches."""
        await eventually(
            lambda: sum(1 for e in self.events if predicate(e)) >= count, timeout=timeout
        )
        return [e for e in self.events if predicate(e)]


@asynccontextmanager
async def recording(
    sup: SessionSupervisor, conversation_id: str, *, after: int | None = None
) -> AsyncIterator[Recorder]:
    """Subscribe and keep reading in the background for the duration of the block."""
    recorder = Recorder()
    async with anyio.create_task_group() as tg, sup.subscribe(conversation_id, after=after) as sub:

        async def pump() -> None:
            try:
                async for event in sub:
                    recorder.events.append(event)
            except SubscriberOverflow as exc:
                recorder.overflowed = exc
            recorder.ended = True

        tg.start_soon(pump)
        await anyio.lowlevel.checkpoint()
        try:
            yield recorder
        finally:
            tg.cancel_scope.cancel()


async def pump(
    sup: SessionSupervisor,
    conversation_id: str,
    into: Recorder,
    *,
    task_status: anyio.abc.TaskStatus[None] = anyio.TASK_STATUS_IGNORED,
) -> None:
    """Subscribe and record until the subscription ends (start it with ``tg.start``).

    Unlike ``recording`` it can outlive the supervisor's ``async with`` block, to
    watch what a drain does to subscriptions.
    """
    async with sup.subscribe(conversation_id) as sub:
        task_status.started()
        try:
            async for event in sub:
                into.events.append(event)
        except SubscriberOverflow as exc:
            into.overflowed = exc
    into.ended = True
