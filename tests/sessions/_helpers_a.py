"""Shared pieces of the tests of the supervisor's public calls.

``Backend`` is a router and a factory in one that counts every consultation
and can fail or stall on cue; ``CueAgent`` acts on the words of the newest
user message (``slow``, ``ask``, ``notice``, ``pause``, ``crash``) and records
what each turn saw. Everything else is a real component: ``MemoryStore``,
``SQLiteStore`` files in ``tmp_path``, ``ManualClock``.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable, Mapping
from contextlib import asynccontextmanager
from typing import Any

import anyio

from sessionvisor import (
    Done,
    Event,
    Interrupt,
    MemoryStore,
    Pause,
    Route,
    SessionOpts,
    SessionSupervisor,
    State,
    StateStore,
    Status,
    StatusChanged,
    StoredConversation,
    Turn,
)
from sessionvisor.state import PendingInterrupt, load_state
from sessionvisor.testing import ManualClock

#: The longest any single wait may take before it counts as a hang.
WAIT = 5.0


class RouterDown(RuntimeError):
    """Raised by ``Backend.resolve`` on cue."""


class FactoryDown(RuntimeError):
    """Raised by ``Backend.create_agent`` on cue."""


class CueAgent:
    """An agent cued by the words of the newest user message.

    ``slow`` waits until ``release()`` (or cancellation); ``crash`` raises;
    ``ask`` interrupts with a question; ``notice`` with a notice; ``pause``
    pauses; anything else is answered ``"re: <text>"``. Cues combine
    (``"slow ask"``). ``turns`` holds, per turn, the texts of the user messages
    since the last assistant message; ``answers`` the resume answers.
    """

    def __init__(self) -> None:
        self.turns: list[list[str]] = []
        self.answers: list[Any] = []
        self.slow_started = anyio.Event()
        self._gate = anyio.Event()

    def release(self) -> None:
        self._gate.set()

    def hold(self) -> None:
        self._gate = anyio.Event()
        self.slow_started = anyio.Event()

    async def run(self, turn: Turn) -> Any:
        pending: list[str] = []
        for message in reversed(turn.state.messages):
            if message.role == "assistant":
                break
            if message.role == "user":
                pending.append(message.text())
        pending.reverse()
        self.turns.append(pending)
        words = set(pending[-1].lower().split()) if pending else set()
        if "slow" in words:
            self.slow_started.set()
            await self._gate.wait()
        if "crash" in words:
            raise RuntimeError(f"crashed on cue in {turn.conversation_id!r}")
        if "ask" in words:
            return Interrupt(turn.state, {"question": pending[-1]})
        if "notice" in words:
            return Interrupt(turn.state, {"notice": pending[-1]}, kind="notice")
        if "pause" in words:
            return Pause(turn.state, reason="paused on cue")
        return Done(turn.state, reply=f"re: {pending[-1] if pending else ''}")

    async def resume(self, turn: Turn, answer: Any) -> Any:
        self.answers.append(answer)
        return Done(turn.state, reply=f"answered {answer}")


class AbandoningAgent(CueAgent):
    """A ``CueAgent`` with an ``abandon`` hook that records interrupts its own way."""

    def __init__(self) -> None:
        super().__init__()
        self.abandoned: list[PendingInterrupt] = []

    def abandon(self, state: State, interrupt: PendingInterrupt) -> State:
        self.abandoned.append(interrupt)
        state.metadata["talked_past"] = [interrupt.model_dump(mode="json")]
        return state


class Backend:
    """A router and a factory in one, counting every call.

    The router routes every conversation to ``key`` with ``request_opts`` as
    config; the factory returns ``agent`` (one shared instance, so a test can
    steer it) with ``SessionOpts`` built from ``fresh_state_attrs`` and
    ``supervisor_opts``. ``fail_router``/``fail_factory`` make the next N
    calls raise; ``router_gate``, when set, holds every router call until it
    is set.
    """

    def __init__(
        self,
        agent: Any = None,
        *,
        key: str | None = "main",
        fresh_state_attrs: Mapping[str, Any] | None = None,
        supervisor_opts: Mapping[str, Any] | None = None,
    ) -> None:
        self.agent = agent if agent is not None else CueAgent()
        self.key = key
        self.fresh_state_attrs = dict(fresh_state_attrs or {})
        self.supervisor_opts = supervisor_opts
        self.router_calls: list[tuple[Any, str, dict[str, Any]]] = []
        self.factory_calls: list[tuple[str, Any]] = []
        self.fail_router = 0
        self.fail_factory = 0
        self.router_gate: anyio.Event | None = None

    async def resolve(
        self, scope: Any, conversation_id: str, request_opts: Mapping[str, Any]
    ) -> Route:
        self.router_calls.append((scope, conversation_id, dict(request_opts)))
        if self.router_gate is not None:
            await self.router_gate.wait()
        if self.fail_router:
            self.fail_router -= 1
            raise RouterDown(f"router down for {conversation_id!r}")
        return Route(self.create_agent, dict(request_opts), self.key)

    def create_agent(self, agent_id: str, config: Any) -> tuple[Any, SessionOpts]:
        self.factory_calls.append((agent_id, config))
        if self.fail_factory:
            self.fail_factory -= 1
            raise FactoryDown(f"factory down for {agent_id!r}")
        return self.agent, SessionOpts(
            fresh_state_attrs=self.fresh_state_attrs, supervisor_opts=self.supervisor_opts
        )


def supervisor(
    backend: Any,
    *,
    store: StateStore | None = None,
    clock: ManualClock | None = None,
    **kwargs: Any,
) -> SessionSupervisor:
    """A supervisor over ``backend`` with a ``ManualClock`` (so nothing stops on its own)."""
    return SessionSupervisor(
        backend,
        store=store if store is not None else MemoryStore(),
        clock=clock or ManualClock(),
        **kwargs,
    )


async def stored(sup: SessionSupervisor, conversation_id: str) -> StoredConversation | None:
    """What the store holds for the conversation, read through the store itself."""
    return await sup.store.load(conversation_id)


async def stored_state(sup: SessionSupervisor, conversation_id: str) -> State:
    record = await sup.store.load(conversation_id)
    assert record is not None, f"nothing stored for {conversation_id!r}"
    return load_state(record.state, conversation_id)


def texts(state: State, role: str | None = None) -> list[str]:
    """The texts of the state's messages (of one role, when given)."""
    return [m.text() for m in state.messages if role is None or m.role == role]


async def wait_status(
    sup: SessionSupervisor, conversation_id: str, status: Status | str, *, scope: Any = None
) -> None:
    with anyio.fail_after(WAIT):
        while await sup.status(conversation_id, scope=scope) != Status(status):
            await anyio.sleep(0.001)


async def settle(sup: SessionSupervisor, conversation_id: str, scope: Any = None) -> Status:
    """Wait until no turn runs and no queued message waits; return the status."""
    with anyio.fail_after(WAIT):
        while True:
            handle = sup.get(conversation_id, scope=scope)
            if handle is None:
                return Status.NOT_RUNNING
            status = handle.status
            if status is not Status.RUNNING and not (
                status is Status.IDLE and handle.snapshot().queued
            ):
                # Give a worker that is just finishing a chance to announce.
                await anyio.sleep(0.002)
                if handle.status is status:
                    return status
            await anyio.sleep(0.001)


async def until(events: Any, predicate: Callable[[Event], bool]) -> list[Event]:
    """Every event up to and including the first that matches (bounded by ``WAIT``)."""
    seen: list[Event] = []
    with anyio.fail_after(WAIT):
        async for event in events:
            seen.append(event)
            if predicate(event):
                return seen
    raise AssertionError(f"subscription ended before a match; saw {seen!r}")


def is_status(status: Status | str) -> Callable[[Event], bool]:
    wanted = Status(status)
    return lambda e: isinstance(e, StatusChanged) and e.status is wanted


def ends_in(status: Status | str) -> Callable[[Event], bool]:
    """Matches ``status`` announced after a ``running`` (the end of the turns)."""
    wanted = Status(status)
    ran = False

    def match(event: Event) -> bool:
        nonlocal ran
        if not isinstance(event, StatusChanged):
            return False
        if event.status is Status.RUNNING:
            ran = True
            return False
        return ran and event.status is wanted

    return match


def statuses(events: list[Event]) -> list[str]:
    return [e.status.value for e in events if isinstance(e, StatusChanged)]


@asynccontextmanager
async def running_supervisor(backend: Any, **kwargs: Any) -> AsyncIterator[SessionSupervisor]:
    async with supervisor(backend, **kwargs) as sup:
        yield sup
