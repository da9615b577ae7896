"""What the session tests share, on top of ``sessionvisor.testing``.

``sessionvisor.testing`` gives the clock (``ManualClock``), the flaky store, the
scripted agent and the waits (``wait_for_status``, ``collect_until``,
``wait_until``, ``wait_until_settled``, ``record_events``). This module adds the
pieces only these tests need:

- routers and factories that count how often the supervisor consults them:
  ``Backend`` (a router and a factory in one, serving ONE shared agent that a
  test steers, and failing or stalling on cue) and ``CountingRouter`` /
  ``CountingFactory`` (a NEW agent on every start, as a real factory does);
- the two cue-driven agents: ``CueAgent``, one instance a test steers directly,
  and ``SharedCueAgent``, rebuilt on every start but reading and recording
  into one ``Cues`` (so cues and records survive restarts);
- readers of what a store holds (``stored_record``, ``stored_state``) and of a
  State (``texts``), and predicates over events (``ends_in``, ``statuses``).

Nothing here sleeps to prove that nothing happened: a test lets every task run
until it blocks (``anyio.wait_all_tasks_blocked``), or, when a worker thread
(SQLite) is involved, waits for what the thread's work shows (a status, a row,
``FlakyStore.saves``).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

import anyio
import anyio.lowlevel

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
from sessionvisor.agents import Outcome
from sessionvisor.state import Message, PendingInterrupt, load_state
from sessionvisor.testing import FlakyStore, ManualClock, ScriptedAgent, wait_until

#: The longest any single wait may take before it counts as a hang.
WAIT = 5.0


# -- reading a State and a store ---------------------------------------------------


def pending_messages(state: State) -> list[Message]:
    """The user messages since the last assistant message (what a turn answers)."""
    out: list[Message] = []
    for message in reversed(state.messages):
        if message.role == "assistant":
            break
        if message.role == "user":
            out.append(message)
    return out[::-1]


def texts(state: State, role: str | None = None) -> list[str]:
    """The texts of the state's messages (of one role, when given)."""
    return [m.text() for m in state.messages if role is None or m.role == role]


def user_texts(state: State) -> list[str]:
    return texts(state, "user")


def assistant_texts(state: State) -> list[str]:
    return texts(state, "assistant")


async def stored_record(store: StateStore, conversation_id: str) -> StoredConversation | None:
    """What the store holds for the conversation, read through the store itself."""
    return await store.load(conversation_id)


async def stored_state(store: StateStore, conversation_id: str) -> State:
    """The State the store holds for the conversation (it must hold one)."""
    record = await store.load(conversation_id)
    assert record is not None, f"nothing stored for {conversation_id!r}"
    return load_state(record.state, conversation_id)


async def stored_state_or_none(store: StateStore, conversation_id: str) -> State | None:
    record = await store.load(conversation_id)
    return None if record is None else load_state(record.state, conversation_id)


async def saved_as(store: StateStore, conversation_id: str, lifecycle: str) -> None:
    """Wait until the session's last save of the conversation was ``lifecycle``.

    A status such as ``interrupted`` is announced before the save that records
    it; the turn is over (and its inactivity clock starts) only once that save
    is back in the session. With a ``FlakyStore`` this waits for the save to
    return (``saves`` is appended in the session's own task), which is what a
    store saving on a worker thread (SQLite) needs; with a plain store it waits
    for the row. Then every task runs until it blocks, so what the session does
    after the save is done too.
    """
    if isinstance(store, FlakyStore):
        flaky = store

        def returned() -> bool:
            mine = [lc for cid, lc in flaky.saves if cid == conversation_id]
            return bool(mine) and mine[-1] == lifecycle

        await wait_until(returned, timeout=WAIT)
    else:

        async def landed() -> bool:
            record = await store.load(conversation_id)
            return record is not None and record.lifecycle == lifecycle

        await wait_until(landed, timeout=WAIT)
    await anyio.wait_all_tasks_blocked()


class WatchedStore(FlakyStore):
    """A ``FlakyStore`` that also counts the saves the session *began*.

    ``FlakyStore.saves`` lists the saves that returned; a save that is still on
    a worker thread is counted here already, in the session's own task, so a
    test can show that no save was even tried.
    """

    def __init__(self, inner: StateStore, *, clock: ManualClock | None = None) -> None:
        super().__init__(inner, clock=clock)
        self.save_attempts = 0

    async def save(self, conversation_id: str, record: Any, **kwargs: Any) -> int:
        self.save_attempts += 1
        return await super().save(conversation_id, record, **kwargs)


# -- events --------------------------------------------------------------------------


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


# -- agents ----------------------------------------------------------------------------


class CueAgent:
    """One agent instance, steered by the test, cued by the newest user message.

    ``slow`` waits until ``release()`` (or cancellation); ``crash`` raises;
    ``ask`` interrupts with a question; ``notice`` with a notice; ``pause``
    pauses; anything else is answered ``"re: <text>"``. Cues combine
    (``"slow ask"``). ``turns`` holds, per turn, the texts of the user messages
    since the last assistant message; ``answers`` the resume answers, answered
    ``"answered <answer>"``.
    """

    def __init__(self) -> None:
        self.turns: list[list[str]] = []
        self.answers: list[Any] = []
        self.slow_started = anyio.Event()
        self._gate = anyio.Event()

    def release(self) -> None:
        """Let the slow turns that wait (and later ones) finish."""
        self._gate.set()

    def hold(self) -> None:
        """Make later slow turns wait again."""
        self._gate = anyio.Event()
        self.slow_started = anyio.Event()

    async def wait_released(self) -> None:
        """Wait until ``release()`` (for a test's own slow ``run`` or ``resume``)."""
        await self._gate.wait()

    async def run(self, turn: Turn) -> Any:
        pending = [m.text() for m in pending_messages(turn.state)]
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


class Cues:
    """What the ``SharedCueAgent``s of one test share across restarts.

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

    def agent(self) -> SharedCueAgent:
        """A new agent reading these cues (give it to ``CountingFactory``)."""
        return SharedCueAgent(self)


class SharedCueAgent:
    """An agent rebuilt on every start, cued by the user messages a turn answers.

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
        messages = pending_messages(turn.state)
        said = [m.text() for m in messages]
        self.cues.turns.append(said)
        new = [m for m in messages if m.id not in self.cues.seen]
        self.cues.seen.update(m.id for m in new)
        newest = said[-1].split() if said else []
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
        return Done(turn.state, reply="ok: " + " | ".join(said))

    async def resume(self, turn: Turn, answer: Any) -> Outcome:
        self.cues.answers.append(answer)
        return Done(turn.state, reply=f"resumed: {answer}")


# -- routers and factories -------------------------------------------------------------


class RouterDown(RuntimeError):
    """Raised by ``Backend.resolve`` on cue."""


class FactoryDown(RuntimeError):
    """Raised by ``Backend.create_agent`` on cue."""


class Backend:
    """A router and a factory in one, serving one shared agent, counting every call.

    The router routes every conversation to ``key`` with ``request_opts`` as
    config; the factory returns ``agent`` (a ``CueAgent`` unless given; the
    same instance every time, so a test can steer it) with ``SessionOpts``
    built from ``fresh_state_attrs`` and ``supervisor_opts``.
    ``fail_router``/``fail_factory`` make the next N calls raise;
    ``router_gate``, when set, holds every router call until it is set.
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


def counted_supervisor(
    factory: Any | None = None,
    **kwargs: Any,
) -> tuple[SessionSupervisor, CountingRouter, CountingFactory]:
    """A supervisor over a counting router and factory (``kwargs`` go to the supervisor).

    Unlike ``supervisor``, the clock is the system clock unless ``clock=`` is given.
    """
    factory = factory if factory is not None else CountingFactory()
    router = CountingRouter(factory)
    return SessionSupervisor(router, **kwargs), router, factory
