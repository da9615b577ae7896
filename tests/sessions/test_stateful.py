"""Random lives of two conversations, checked step by step against a model.

Hypothesis drives start / send (plain, slow, interrupt, crash) / release of slow
turns / cancel / resume / stop / clock advances, and after every step the
status and the user messages (history then queue: in order, none lost, none
twice) must be what the model says. The supervisor lives in a blocking portal
so the synchronous state machine can drive it on either anyio backend.
"""

from __future__ import annotations

import itertools
from collections.abc import Awaitable, Callable
from concurrent.futures import Future
from dataclasses import dataclass, field
from typing import Any

import anyio
import anyio.lowlevel
import pytest
from anyio.from_thread import BlockingPortal, start_blocking_portal
from hypothesis import HealthCheck, event, settings
from hypothesis import strategies as st
from hypothesis.stateful import (
    RuleBasedStateMachine,
    invariant,
    precondition,
    rule,
    run_state_machine_as_test,
)

from sessionvisor import InvalidStatus, MemoryStore, SessionSupervisor, SingleRouter, State
from sessionvisor.state import load_state
from sessionvisor.testing import ManualClock

from ._support import (
    Cues,
    SharedCueAgent,
)

CIDS = ("a", "b")
CUES = ("plain", "slow", "interrupt")  # and "crash", which has a rule of its own
INACTIVITY = 500.0  # more than the small advances of one run add up to
MAX_RESTARTS = 2  # low, so random runs also reach giving up
MAX_SECONDS = 5.0
CALL_TIMEOUT = 5.0


def cue(text: str) -> str:
    return text.split()[0]


@dataclass
class Model:
    """What a user of one conversation should see."""

    status: str = "not_running"
    sent: list[str] = field(default_factory=list)  # every accepted user message, in order
    queue: list[str] = field(default_factory=list)  # those no turn has taken yet
    held: bool = False  # after an interrupt, an error or a cancel the queue waits for a send
    interrupt: bool = False  # a pending interrupt, live or stored
    stored: bool = False  # the store holds the conversation
    crash_after_release: bool = False  # the slow turn at the gate also carries a crash
    batch: list[str] = field(default_factory=list)  # what the running turn took
    restart_times: list[float] = field(default_factory=list)


class SessionLives(RuleBasedStateMachine):
    backend = "asyncio"

    def __init__(self) -> None:
        super().__init__()
        self._portal_cm = start_blocking_portal(self.backend)
        self.portal: BlockingPortal = self._portal_cm.__enter__()
        self.clock = ManualClock()
        self.now = 0.0
        self.cues: Cues = self.portal.call(Cues)
        self.store = MemoryStore()
        self.sup = SessionSupervisor(
            SingleRouter(lambda agent_id, config: SharedCueAgent(self.cues)),
            store=self.store,
            clock=self.clock,
            supervisor_opts={
                "restart_on_error": True,
                "max_restarts": MAX_RESTARTS,
                "max_seconds": MAX_SECONDS,
                "inactivity_timeout": INACTIVITY,
            },
        )
        self.models = {cid: Model() for cid in CIDS}
        self.numbers = itertools.count(1)
        self._leave: anyio.Event | None = None
        self._hosted: Future[None]
        self._hosted, _ = self.portal.start_task(self._host)

    async def _host(self, *, task_status: Any = anyio.TASK_STATUS_IGNORED) -> None:
        self._leave = anyio.Event()
        async with self.sup:
            task_status.started()
            await self._leave.wait()

    # -- driving the supervisor from this thread ---------------------------------------

    def call(self, fn: Callable[..., Awaitable[Any]], *args: Any) -> Any:
        async def bounded() -> Any:
            with anyio.fail_after(CALL_TIMEOUT):
                return await fn(*args)

        return self.portal.call(bounded)

    def settle(self) -> None:
        """Let the runtime run until every task of it blocks.

        The store is a ``MemoryStore`` and time a ``ManualClock``: nothing runs on
        another thread or wakes by itself, so what a step set off is then done.
        """

        async def quiet() -> None:
            with anyio.fail_after(CALL_TIMEOUT):
                await anyio.wait_all_tasks_blocked()

        self.portal.call(quiet)

    # -- the model -------------------------------------------------------------------

    def _wake(self, m: Model, *, by_send: bool = False) -> None:
        m.status = "interrupted" if m.interrupt else "idle"
        m.restart_times = []
        if m.status == "idle" and m.queue and not m.held and not by_send:
            event("a wake ran messages left waiting")
            self._begin(m)

    def _begin(self, m: Model) -> None:
        batch, m.queue = m.queue, []
        m.held = False
        crash = any(cue(t) == "crash" for t in batch)
        if len(batch) > 1:
            event("one turn answered several queued messages")
        if cue(batch[-1]) == "slow":
            m.status = "running"
            m.batch = batch
            m.crash_after_release = crash
            return
        self._finish(m, crash, cue(batch[-1]))

    def _finish(self, m: Model, crash: bool, newest: str) -> None:
        m.crash_after_release = False
        if crash:
            window = [t for t in m.restart_times if self.now - t <= MAX_SECONDS]
            if len(window) >= MAX_RESTARTS:
                m.status = "not_running"  # gave up; the store keeps everything
                m.held = True  # the last turn failed: an error holds the queue
                event("gave up after repeated crashes")
                m.restart_times = []
                return
            m.restart_times = [*window, self.now]
            event("restarted after a crash")
        elif newest == "interrupt":
            m.status = "interrupted"
            m.interrupt = True
            m.held = True
            return
        m.status = "idle"
        if m.queue:
            self._begin(m)

    # -- rules -------------------------------------------------------------------------

    @rule(cid=st.sampled_from(CIDS))
    def start(self, cid: str) -> None:
        m = self.models[cid]
        info = self.call(self.sup.start, cid)
        assert info.started == (m.status == "not_running")
        if info.started:
            self._wake(m)
        self.settle()

    @rule(cid=st.sampled_from(CIDS), kind=st.sampled_from(CUES))
    def send(self, cid: str, kind: str) -> None:
        self._send(cid, kind)

    @rule(cid=st.sampled_from(CIDS))
    def crash(self, cid: str) -> None:
        """Send a message whose turn raises: with restart_on_error the actor crashes."""
        self._send(cid, "crash")

    def _send(self, cid: str, kind: str) -> None:
        m = self.models[cid]
        text = f"{kind} {next(self.numbers)}"
        woke = m.status == "not_running"
        delivery = self.call(self.sup.send, cid, text)
        assert delivery.started == woke
        m.sent.append(text)
        m.queue.append(text)
        m.stored = True
        if woke:
            self._wake(m, by_send=True)
        if m.status == "running":
            assert delivery.queued
        else:
            if not woke:
                assert not delivery.queued
            m.interrupt = False  # a send talks past a pending interrupt
            self._begin(m)
        self.settle()

    @precondition(lambda self: any(m.status == "running" for m in self.models.values()))
    @rule()
    def release(self) -> None:
        def open_gate_once() -> None:
            self.cues.release()
            self.cues.hold()  # later slow turns wait again

        self.portal.call(open_gate_once)
        for m in self.models.values():
            if m.status == "running":
                self._finish(m, m.crash_after_release, "slow")
        self.settle()

    @rule(cid=st.sampled_from(CIDS))
    def cancel(self, cid: str) -> None:
        m = self.models[cid]
        if m.status == "running":
            assert self.call(self.sup.cancel, cid).value == "cancelled"
            event("cancelled a running turn")
            m.status = "cancelled"
            m.held = True
            m.crash_after_release = False
        else:
            with pytest.raises(InvalidStatus):
                self.call(self.sup.cancel, cid)
        self.settle()

    @rule(cid=st.sampled_from(CIDS))
    def resume(self, cid: str) -> None:
        m = self.models[cid]
        if m.status == "interrupted" or (m.status == "not_running" and m.interrupt):
            event(
                "resumed " + ("a stopped" if m.status == "not_running" else "a live") + " session"
            )
            self.call(self.sup.resume, cid, "yes")
            m.restart_times = [] if m.status == "not_running" else m.restart_times
            m.interrupt = False
            m.status = "idle"
            m.held = False
            if m.queue:
                self._begin(m)
        else:
            with pytest.raises(InvalidStatus):
                self.call(self.sup.resume, cid, "yes")
            if m.status == "not_running" and m.stored:
                # woken to look at the stored state, which holds no interrupt: it stays up
                self._wake(m)
        self.settle()

    @rule(cid=st.sampled_from(CIDS))
    def stop(self, cid: str) -> None:
        m = self.models[cid]
        result = self.call(self.sup.stop, cid)
        assert result == ("not_running" if m.status == "not_running" else "stopped")
        if m.status == "running":
            # A turn the stop cuts short hands its messages back, ahead of the queue,
            # and they are not held: the next wake answers them.
            m.queue = m.batch + m.queue
            m.held = False
            event("a stop handed a running turn's messages back")
        m.stored = True if result == "stopped" else m.stored
        m.status = "not_running"
        m.crash_after_release = False
        m.restart_times = []
        self.settle()

    @rule(seconds=st.sampled_from([1.0, 3.0, 6.0, 2 * INACTIVITY]))
    def advance(self, seconds: float) -> None:
        self.now += seconds
        self.portal.call(self.clock.advance, seconds)
        if seconds > INACTIVITY:
            for m in self.models.values():
                if m.status not in ("running", "not_running"):
                    m.status = "not_running"  # idled out
                    m.stored = True
                    m.restart_times = []
        self.settle()

    # -- what must hold after every step ----------------------------------------------

    @invariant()
    def what_a_user_sees_matches_the_model(self) -> None:
        for cid, m in self.models.items():
            assert self.call(self.sup.status, cid).value == m.status, cid
            state: State | None = self.call(self.sup.load, cid)
            if state is None:
                assert m.sent == [], cid
                continue
            users = [x.text() for x in state.messages if x.role == "user"]
            users += [x.text() for x in state.queued]
            assert users == m.sent, cid
            assert (state.interrupt is not None) == m.interrupt, cid
            if m.status == "idle" and not m.held:
                assert state.queued == [], cid

    def teardown(self) -> None:
        try:
            self.portal.call(self.cues.release)  # no turn waits at the gate any more
            assert self._leave is not None
            self.portal.call(self._leave.set)
            self._hosted.result(timeout=CALL_TIMEOUT * 2)  # the drain
            for cid, m in self.models.items():
                record = self.portal.call(self.store.load, cid)
                if record is None:
                    assert m.sent == [], cid
                    continue
                state = load_state(record.state, cid)
                users = [x.text() for x in state.messages if x.role == "user"]
                users += [x.text() for x in state.queued]
                assert users == m.sent, cid
        finally:
            self._portal_cm.__exit__(None, None, None)


def test_random_session_lives_keep_every_message_once_in_order(anyio_backend: str) -> None:
    machine = type(f"SessionLives_{anyio_backend}", (SessionLives,), {"backend": anyio_backend})
    run_state_machine_as_test(
        machine,
        settings=settings(
            max_examples=50,
            stateful_step_count=40,
            deadline=None,
            suppress_health_check=[HealthCheck.too_slow],
        ),
    )
