"""Quotas per owner: ``messages_per_minute_per_owner`` (a token bucket, ``RateLimited``)
and ``max_running_per_owner`` (turns of one owner running at once; the rest wait in
their queues, in arrival order)."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import anyio
import pytest

from sessionvisor import (
    Done,
    MemoryStore,
    MessageQueued,
    RateLimited,
    SessionSupervisor,
    SessionvisorError,
    SingleRouter,
    Status,
    StatusChanged,
    SupervisorOpts,
    Turn,
)
from sessionvisor.testing import ManualClock, collect_until, wait_for_status, wait_until

from ._support import WAIT, stored_state, texts

ALICE = {"owner": "alice"}
BOB = {"owner": "bob"}


class GatedAgent:
    """Each turn records what it answers, then waits until its conversation's gate
    opens (``open``); ``crash`` in a message makes it raise instead."""

    def __init__(self) -> None:
        self.started: list[tuple[str, list[str]]] = []  # (conversation, its messages)
        self.running: set[str] = set()
        self.most_at_once: dict[str, int] = {}
        self._gates: dict[str, anyio.Event] = {}

    def open(self, conversation_id: str) -> None:
        self._gates.setdefault(conversation_id, anyio.Event()).set()

    def starts_of(self, conversation_id: str) -> list[list[str]]:
        return [words for cid, words in self.started if cid == conversation_id]

    async def run(self, turn: Turn) -> Done:
        cid = turn.conversation_id
        pending = [m.text() for m in turn.state.messages if m.role == "user"]
        answered = sum(1 for m in turn.state.messages if m.role == "assistant")
        words = pending[answered:] if answered else pending
        self.started.append((cid, words))
        owner = cid.split("-")[0]
        self.running.add(cid)
        at_once = sum(1 for c in self.running if c.split("-")[0] == owner)
        self.most_at_once[owner] = max(self.most_at_once.get(owner, 0), at_once)
        try:
            if any("crash" in w for w in words):
                raise RuntimeError("crashed on cue")
            gate = self._gates.setdefault(cid, anyio.Event())
            await gate.wait()
            self._gates[cid] = anyio.Event()  # the next turn waits again
        finally:
            self.running.discard(cid)
        return Done(turn.state, reply=f"re: {' '.join(words)}")


@asynccontextmanager
async def quota_supervisor(
    agent: Any = None, *, clock: ManualClock | None = None, **opts: Any
) -> AsyncIterator[SessionSupervisor]:
    router = SingleRouter(lambda agent_id, config: agent or GatedAgent())
    async with SessionSupervisor(
        router,
        store=MemoryStore(),
        supervisor_opts={"inactivity_timeout": None, **opts},
        clock=clock,
        recover=False,  # no start-up recovery racing the tests' own stops
    ) as sup:
        yield sup


# -- the options ------------------------------------------------------------------------


@pytest.mark.parametrize("name", ["max_running_per_owner", "messages_per_minute_per_owner"])
def test_the_options_take_a_positive_int_or_none(name: str) -> None:
    assert getattr(SupervisorOpts(), name) is None
    assert getattr(SupervisorOpts(**{name: 3}), name) == 3
    for bad in (0, -1):
        with pytest.raises(ValueError, match=name):
            SupervisorOpts(**{name: bad})
    for wrong in (1.5, "2", True):
        with pytest.raises(TypeError, match=name):
            SupervisorOpts(**{name: wrong})


def test_rate_limited_is_a_runtime_error_with_retry_after() -> None:
    error = RateLimited("too many", 1.5)
    assert isinstance(error, SessionvisorError)
    assert isinstance(error, RuntimeError)
    assert error.retry_after == 1.5


# -- messages per minute ----------------------------------------------------------------


@pytest.mark.anyio
async def test_a_burst_up_to_the_rate_then_rate_limited_until_the_bucket_refills(
    anyio_backend: str,
) -> None:
    clock = ManualClock()
    agent = GatedAgent()
    async with quota_supervisor(agent, clock=clock, messages_per_minute_per_owner=3) as sup:
        for n in range(3):
            await sup.send(f"alice-{n}", f"m{n}", scope=ALICE)

        with pytest.raises(RateLimited) as refused:
            await sup.send("alice-9", "one too many", scope=ALICE)
        assert refused.value.retry_after == pytest.approx(20.0)  # 60 s / 3 per token
        assert "3 per minute" in str(refused.value)
        assert "alice" not in str(refused.value)

        clock.advance(5.0)
        with pytest.raises(RateLimited) as again:
            await sup.send("alice-9", "still too many", scope=ALICE)
        assert again.value.retry_after == pytest.approx(15.0)

        clock.advance(15.0)  # one token is back, and only one
        await sup.send("alice-9", "accepted now", scope=ALICE)
        with pytest.raises(RateLimited):
            await sup.send("alice-9", "and again too many", scope=ALICE)

        clock.advance(60.0)  # the bucket holds at most the rate: a burst of 3 again
        for n in range(3):
            await sup.send("alice-8", f"n{n}", scope=ALICE)
        with pytest.raises(RateLimited):
            await sup.send("alice-8", "n3", scope=ALICE)
        for cid in ("alice-0", "alice-1", "alice-2", "alice-9", "alice-8"):
            agent.open(cid)


@pytest.mark.anyio
async def test_a_refused_message_is_neither_stored_nor_queued(anyio_backend: str) -> None:
    clock = ManualClock()
    agent = GatedAgent()
    async with quota_supervisor(agent, clock=clock, messages_per_minute_per_owner=2) as sup:
        await sup.send("alice-1", "first", scope=ALICE)  # runs (held by the gate)
        await sup.send("alice-1", "second", scope=ALICE)  # queued behind it
        with pytest.raises(RateLimited):
            await sup.send("alice-1", "third", scope=ALICE)
        with pytest.raises(RateLimited):
            await sup.send("alice-new", "nothing starts for this", scope=ALICE)

        snapshot = await sup.load("alice-1", scope=ALICE)
        assert snapshot is not None
        assert texts(snapshot) == ["first"]
        assert [m.text() for m in snapshot.queued] == ["second"]
        assert not await sup.running("alice-new", scope=ALICE)
        assert await sup.load("alice-new", scope=ALICE) is None

        agent.open("alice-1")
        await wait_until(lambda: len(agent.starts_of("alice-1")) == 2)
        agent.open("alice-1")
        await wait_for_status(sup, "alice-1", Status.IDLE, scope=ALICE)
        assert texts(await stored_state(sup.store, "alice-1")) == [
            "first",
            "re: first",
            "second",
            "re: second",
        ]


@pytest.mark.anyio
async def test_other_owners_and_ownerless_callers_are_not_limited_by_one_owner(
    anyio_backend: str,
) -> None:
    clock = ManualClock()
    agent = GatedAgent()
    async with quota_supervisor(agent, clock=clock, messages_per_minute_per_owner=1) as sup:
        await sup.send("alice-1", "a", scope=ALICE)
        with pytest.raises(RateLimited):
            await sup.send("alice-1", "b", scope=ALICE)
        await sup.send("bob-1", "b", scope=BOB)
        for n in range(3):
            await sup.send("nobody-1", f"n{n}")  # owner None: never limited
        for cid in ("alice-1", "bob-1", "nobody-1"):
            agent.open(cid)


@pytest.mark.anyio
async def test_resume_cancel_and_stop_take_no_token_and_a_retried_send_gives_it_back(
    anyio_backend: str,
) -> None:
    clock = ManualClock()
    agent = GatedAgent()
    async with quota_supervisor(agent, clock=clock, messages_per_minute_per_owner=2) as sup:
        await sup.send("alice-1", "first", scope=ALICE, message_id="m-1")
        await sup.send("alice-1", "first", scope=ALICE, message_id="m-1")  # a retry
        assert await sup.cancel("alice-1", scope=ALICE) is Status.CANCELLED
        assert await sup.stop("alice-1", scope=ALICE) == "stopped"
        await sup.send("alice-2", "second", scope=ALICE)  # the second token
        with pytest.raises(RateLimited):
            await sup.send("alice-3", "third", scope=ALICE)
        agent.open("alice-2")


# -- running turns ----------------------------------------------------------------------


@pytest.mark.anyio
async def test_the_second_conversation_of_an_owner_starts_when_the_first_finishes(
    anyio_backend: str,
) -> None:
    agent = GatedAgent()
    async with quota_supervisor(agent, max_running_per_owner=1) as sup:
        async with sup.subscribe("alice-2", scope=ALICE) as events:
            first = await sup.send("alice-1", "one", scope=ALICE)
            second = await sup.send("alice-2", "two", scope=ALICE)
            assert (first.queued, second.queued) == (False, True)
            await collect_until(events, lambda e: isinstance(e, MessageQueued))
            await wait_until(lambda: agent.starts_of("alice-1"))
            await anyio.wait_all_tasks_blocked()
            assert agent.starts_of("alice-2") == []  # waits while the first runs
            assert await sup.status("alice-2", scope=ALICE) is Status.IDLE
            waiting = await sup.load("alice-2", scope=ALICE)
            assert waiting is not None and [m.text() for m in waiting.queued] == ["two"]

            agent.open("alice-1")
            await wait_until(lambda: agent.starts_of("alice-2") == [["two"]])
            agent.open("alice-2")
            await collect_until(events, lambda e: _is(e, Status.IDLE))
        assert agent.most_at_once["alice"] == 1


@pytest.mark.anyio
async def test_waiting_turns_start_in_arrival_order_across_conversations(
    anyio_backend: str,
) -> None:
    agent = GatedAgent()
    async with quota_supervisor(agent, max_running_per_owner=1) as sup:
        await sup.send("alice-a", "a1", scope=ALICE)
        await wait_until(lambda: agent.starts_of("alice-a"))
        await sup.send("alice-c", "c1", scope=ALICE)
        await sup.send("alice-b", "b1", scope=ALICE)
        await sup.send("alice-a", "a2", scope=ALICE)  # behind its own turn, and behind c, b
        await sup.send("alice-c", "c2", scope=ALICE)  # joins c's waiting queue

        order = ["alice-a", "alice-c", "alice-b", "alice-a"]
        for n, cid in enumerate(order):
            await wait_until(lambda: len(agent.started) == n + 1)  # noqa: B023
            await anyio.wait_all_tasks_blocked()
            assert len(agent.started) == n + 1
            assert agent.started[-1][0] == cid
            agent.open(cid)
        await wait_for_status(sup, "alice-a", Status.IDLE, scope=ALICE)
        assert agent.started == [
            ("alice-a", ["a1"]),
            ("alice-c", ["c1", "c2"]),  # messages that waited together go together
            ("alice-b", ["b1"]),
            ("alice-a", ["a2"]),
        ]
        assert agent.most_at_once["alice"] == 1


@pytest.mark.anyio
async def test_another_owner_is_not_blocked_by_a_waiting_one(anyio_backend: str) -> None:
    agent = GatedAgent()
    async with quota_supervisor(agent, max_running_per_owner=1) as sup:
        await sup.send("alice-1", "a", scope=ALICE)
        await sup.send("alice-2", "a", scope=ALICE)  # waits
        bob = await sup.send("bob-1", "b", scope=BOB)
        free = await sup.send("free-1", "x")  # owner None: never limited
        assert not bob.queued and not free.queued
        await wait_until(lambda: agent.starts_of("bob-1") and agent.starts_of("free-1"))
        assert agent.starts_of("alice-2") == []
        for cid in ("bob-1", "free-1", "alice-1"):
            agent.open(cid)
        await wait_until(lambda: agent.starts_of("alice-2"))
        agent.open("alice-2")


@pytest.mark.anyio
@pytest.mark.parametrize("how", ["cancel", "stop", "crash"])
async def test_a_running_turn_that_ends_early_frees_its_slot(anyio_backend: str, how: str) -> None:
    agent = GatedAgent()
    async with quota_supervisor(agent, max_running_per_owner=1) as sup:
        await sup.send("alice-1", "crash now" if how == "crash" else "one", scope=ALICE)
        await sup.send("alice-2", "two", scope=ALICE)
        if how == "cancel":
            await wait_until(lambda: agent.starts_of("alice-1"))
            assert await sup.cancel("alice-1", scope=ALICE) is Status.CANCELLED
        elif how == "stop":
            await wait_until(lambda: agent.starts_of("alice-1"))
            assert await sup.stop("alice-1", scope=ALICE) == "stopped"
        await wait_until(lambda: agent.starts_of("alice-2") == [["two"]])
        agent.open("alice-2")
        await wait_for_status(sup, "alice-2", Status.IDLE, scope=ALICE)
        # The slot is not leaked: the owner's next turn starts at once.
        await sup.send("alice-3", "three", scope=ALICE)
        await wait_until(lambda: agent.starts_of("alice-3") == [["three"]])
        agent.open("alice-3")


@pytest.mark.anyio
@pytest.mark.parametrize("how", ["cancel", "stop"])
async def test_a_waiting_conversation_that_is_cancelled_or_stopped_leaves_the_line(
    anyio_backend: str, how: str
) -> None:
    agent = GatedAgent()
    async with quota_supervisor(agent, max_running_per_owner=1) as sup:
        await sup.send("alice-1", "one", scope=ALICE)
        await sup.send("alice-2", "two", scope=ALICE)  # waits (first in line)
        await sup.send("alice-3", "three", scope=ALICE)  # waits behind it
        if how == "cancel":
            assert await sup.cancel("alice-2", scope=ALICE) is Status.CANCELLED
        else:
            assert await sup.stop("alice-2", scope=ALICE) == "stopped"
        agent.open("alice-1")
        await wait_until(lambda: agent.starts_of("alice-3") == [["three"]])
        agent.open("alice-3")
        await wait_for_status(sup, "alice-3", Status.IDLE, scope=ALICE)
        assert agent.starts_of("alice-2") == []

        # Nothing was lost: the message waits, stored, and the user's next message
        # (after a cancel) or the next start (after a stop) answers it in order.
        stored = await stored_state(sup.store, "alice-2")
        assert [m.text() for m in stored.queued] == ["two"]
        if how == "cancel":
            assert await sup.status("alice-2", scope=ALICE) is Status.CANCELLED
            await sup.send("alice-2", "again", scope=ALICE)
            expected = ["two", "again"]
        else:
            await sup.start("alice-2", scope=ALICE)
            expected = ["two"]
        await wait_until(lambda: agent.starts_of("alice-2") == [expected])
        agent.open("alice-2")
        await wait_for_status(sup, "alice-2", Status.IDLE, scope=ALICE)
        assert texts(await stored_state(sup.store, "alice-2")) == [
            *expected,
            f"re: {' '.join(expected)}",
        ]


@pytest.mark.anyio
async def test_a_drain_does_not_wait_for_a_waiting_conversation_and_loses_nothing(
    anyio_backend: str,
) -> None:
    agent = GatedAgent()
    store = MemoryStore()
    router = SingleRouter(lambda agent_id, config: agent)
    opts = {"inactivity_timeout": None, "max_running_per_owner": 1, "shutdown_timeout": 0}
    async with SessionSupervisor(router, store=store, supervisor_opts=opts) as sup:
        await sup.send("alice-1", "one", scope=ALICE)
        await sup.send("alice-2", "two", scope=ALICE)
        await wait_until(lambda: agent.starts_of("alice-1"))
        assert agent.starts_of("alice-2") == []
    for cid, text in (("alice-1", "one"), ("alice-2", "two")):
        stored = await stored_state(store, cid)  # unanswered, queued or cut mid-turn
        assert [*texts(stored), *(m.text() for m in stored.queued)] == [text]

    async with SessionSupervisor(router, store=store, supervisor_opts=opts) as sup:
        # The next start answers both (recovery), each once.
        base = len(agent.started)  # alice-2 may have started while the drain went on
        for n in (base + 1, base + 2):  # one turn at a time, as recovery woke them
            await wait_until(lambda: len(agent.started) >= n, timeout=WAIT)  # noqa: B023
            agent.open(agent.started[n - 1][0])
        for cid, text in (("alice-1", "one"), ("alice-2", "two")):
            await wait_for_status(sup, cid, Status.IDLE, scope=ALICE)
            assert texts(await stored_state(store, cid)) == [text, f"re: {text}"]


def _is(event: Any, status: Status) -> bool:
    return isinstance(event, StatusChanged) and event.status is status
