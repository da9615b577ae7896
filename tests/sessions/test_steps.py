"""Durable steps: a turn cut by a crash or a stop never repeats a step that completed."""

from __future__ import annotations

from functools import partial
from typing import Any

import anyio
import pytest
from pydantic import BaseModel

from sessionvisor import (
    Done,
    FunctionAgent,
    InvalidStatus,
    MemoryStore,
    SessionSupervisor,
    SingleRouter,
    State,
    StepOutcomeUnknown,
    StepResultError,
    StoredConversation,
    Turn,
    Usage,
)
from sessionvisor.agents._agent import StepCall
from sessionvisor.testing import wait_for_status, wait_until

from ._support import WAIT

pytestmark = pytest.mark.anyio


class Order(BaseModel):
    id: str
    total: float


class Shop:
    """A turn of three steps: create an order (not idempotent), quote it
    (idempotent), then e-mail it (not idempotent). ``hold`` stops the turn inside
    the step it names until released; ``calls`` records every real call."""

    def __init__(self, hold: str | None = None) -> None:
        self.calls: list[str] = []
        self.hold = hold
        self.held = anyio.Event()
        self.release = anyio.Event()
        self.unknown: list[str] = []
        self.retry_unknown = False

    async def _maybe_hold(self, name: str) -> None:
        if self.hold == name:
            self.held.set()
            await self.release.wait()

    async def create_order(self, cart: str) -> Order:
        self.calls.append("create")
        await self._maybe_hold("create")
        return Order(id=f"o-{cart}", total=12.5)

    def quote(self, order_id: str) -> dict[str, Any]:  # sync: runs on a worker thread
        self.calls.append("quote")
        return {"order": order_id, "price": 12.5}

    async def email(self, order_id: str, *, to: str) -> str:
        self.calls.append("email")
        await self._maybe_hold("email")
        return f"sent {order_id} to {to}"

    async def run(self, turn: Turn) -> Any:
        cart = turn.state.messages[-1].text()
        order = await turn.step("create-order", self.create_order, cart)
        quote = await turn.step("quote", self.quote, order.id, idempotent=True)
        try:
            sent = await turn.step("email", self.email, order.id, to="a@example.com")
        except StepOutcomeUnknown as exc:
            self.unknown.append(exc.name)
            if not self.retry_unknown:
                return Done(turn.state, reply=f"not sure the e-mail for {order.id} went out")
            sent = await turn.step("email", self.email, order.id, to="a@example.com")
        return Done(turn.state, reply=f"{type(order).__name__} {order.id} {quote['price']} {sent}")

    def router(self) -> SingleRouter:
        return SingleRouter(lambda agent_id, config: FunctionAgent(self.run))


async def _cut_in(step: str) -> tuple[StoredConversation, Shop]:
    """Run a turn until it is inside ``step``: what a process killed then leaves."""
    shop = Shop(hold=step)
    store = MemoryStore()
    async with SessionSupervisor(shop.router(), store=store) as sup:
        await sup.send("c-1", "cart-7")
        with anyio.fail_after(WAIT):
            await shop.held.wait()
        left = await store.load("c-1")
        assert left is not None
        shop.release.set()
    return left, shop


async def _loaded_when(sup: SessionSupervisor, check: Any) -> State:
    """The conversation's State once ``check(state)`` holds."""

    async def holds() -> bool:
        state = await sup.load("c-1")
        return state is not None and bool(check(state))

    await wait_until(holds, timeout=WAIT)
    state = await sup.load("c-1")
    assert state is not None
    return state


async def _rerun(left: StoredConversation, shop: Shop) -> State:
    store = MemoryStore()
    await store.save("c-1", left, expected_version=None, lifecycle="turn_start")
    async with SessionSupervisor(shop.router(), store=store) as sup:
        return await _loaded_when(
            sup, lambda s: bool(s.messages) and s.messages[-1].role == "assistant"
        )


async def test_a_turn_of_steps_answers_and_keeps_its_steps_as_a_record(
    anyio_backend: str,
) -> None:
    shop = Shop()
    async with SessionSupervisor(shop.router()) as sup:
        await sup.send("c-1", "cart-1")
        await wait_for_status(sup, "c-1", "idle")
        state = await sup.load("c-1")
        steps = await sup.steps("c-1")
    assert state is not None and state.messages[-1].text() == (
        "Order o-cart-1 12.5 sent o-cart-1 to a@example.com"
    )
    assert shop.calls == ["create", "quote", "email"]
    assert state.journal is None  # the turn ended: its steps are its record
    assert steps is not None
    assert [(s.index, s.name, s.status) for s in steps] == [
        (0, "create-order", "completed"),
        (1, "quote", "completed"),
        (2, "email", "completed"),
    ]
    assert steps[0].result == {"id": "o-cart-1", "total": 12.5}
    assert steps[0].model is not None and steps[0].model.endswith(":Order")
    assert len({s.turn for s in steps}) == 1
    assert all(s.duration is not None and s.duration >= 0 for s in steps)


async def test_a_crash_inside_a_step_replays_the_completed_ones_and_reports_the_cut_one(
    anyio_backend: str,
) -> None:
    left, _ = await _cut_in("email")
    assert left.lifecycle == "turn_start"
    journal = left.state["journal"]
    assert [(s["name"], s["status"]) for s in journal["steps"]] == [
        ("create-order", "completed"),
        ("quote", "completed"),
        ("email", "started"),
    ]
    rerun = Shop()
    state = await _rerun(left, rerun)
    # Nothing that completed ran again, and the e-mail is not sent a second time.
    assert rerun.calls == []
    assert rerun.unknown == ["email"]
    assert state.messages[-1].text() == "not sure the e-mail for o-cart-7 went out"
    assert [m.text() for m in state.messages if m.role == "user"] == ["cart-7"]


async def test_an_agent_may_call_a_step_of_unknown_outcome_again(anyio_backend: str) -> None:
    left, _ = await _cut_in("email")
    rerun = Shop()
    rerun.retry_unknown = True
    state = await _rerun(left, rerun)
    assert rerun.calls == ["email"]
    # The replayed order comes back as the model its function declares.
    assert state.messages[-1].text() == "Order o-cart-7 12.5 sent o-cart-7 to a@example.com"


async def test_a_crash_inside_an_idempotent_step_calls_it_again(anyio_backend: str) -> None:
    class Slow(Shop):
        def quote(self, order_id: str) -> dict[str, Any]:
            self.calls.append("quote")
            if self.hold == "quote":  # on a worker thread: reach the loop for the events
                anyio.from_thread.run_sync(self.held.set)
                anyio.from_thread.run(self.release.wait)
            return {"order": order_id, "price": 12.5}

    shop = Slow(hold="quote")
    store = MemoryStore()
    async with SessionSupervisor(shop.router(), store=store) as sup:
        await sup.send("c-1", "cart-2")
        with anyio.fail_after(WAIT):
            await shop.held.wait()
        left = await store.load("c-1")
        shop.release.set()
    assert left is not None
    # An idempotent step is stored once, with its result: nothing marks it started.
    assert [s["name"] for s in left.state["journal"]["steps"]] == ["create-order"]
    rerun = Slow()
    state = await _rerun(left, rerun)
    assert rerun.calls == ["quote", "email"]
    assert state.messages[-1].text().startswith("Order o-cart-2")


async def test_a_stop_mid_step_hands_the_journal_to_the_next_start(anyio_backend: str) -> None:
    shop = Shop(hold="email")
    store = MemoryStore()
    async with SessionSupervisor(shop.router(), store=store) as sup:
        await sup.send("c-1", "cart-3")
        with anyio.fail_after(WAIT):
            await shop.held.wait()
        assert await sup.stop("c-1") == "stopped"
        shop.hold = None
        # The wake runs the cut turn again (with this message, queued behind it).
        await sup.send("c-1", "and more")
        state = await _loaded_when(
            sup, lambda s: bool(s.messages) and s.messages[-1].role == "assistant"
        )
        assert shop.calls == ["create", "quote", "email"]
        assert shop.unknown == ["email"]
        assert state.messages[-1].text() == "not sure the e-mail for o-cart-3 went out"
        # The next message's turn is a new journal: its steps all run.
        await sup.send("c-1", "cart-4")
        state = await _loaded_when(sup, lambda s: s.messages[-1].text().startswith("Order"))
    assert shop.calls == ["create", "quote", "email"] * 2
    steps = await _steps_of(store)
    assert len({s.turn for s in steps}) == 2
    assert [(s.name, s.status) for s in steps] == [
        ("create-order", "completed"),
        ("quote", "completed"),
        ("email", "unknown"),
        ("create-order", "completed"),
        ("quote", "completed"),
        ("email", "completed"),
    ]


async def _steps_of(store: MemoryStore) -> list[Any]:
    left = await store.load("c-1")
    assert left is not None
    return State.model_validate(left.state).steps


async def test_a_rerun_that_calls_another_step_fails_and_overwrites_nothing(
    anyio_backend: str,
) -> None:
    left, _ = await _cut_in("email")

    async def changed(turn: Turn) -> Any:
        await turn.step("create-order", lambda cart: {"id": "x"}, "c")
        await turn.step("refund", lambda: "refunded")
        return Done(turn.state, reply="unreachable")

    store = MemoryStore()
    await store.save("c-1", left, expected_version=None, lifecycle="turn_start")
    async with SessionSupervisor(
        SingleRouter(lambda a, c: FunctionAgent(changed)), store=store
    ) as sup:
        await wait_for_status(sup, "c-1", "error")
        steps = await sup.steps("c-1")
    assert steps is not None
    assert [(s.name, s.status) for s in steps] == [
        ("create-order", "completed"),
        ("quote", "completed"),
        ("email", "unknown"),
    ]
    assert steps[0].result == {"id": "o-cart-7", "total": 12.5}


async def test_bad_step_names_and_results_are_refused_with_errors_that_name_them(
    anyio_backend: str,
) -> None:
    seen: dict[str, BaseException] = {}
    ran: list[str] = []

    async def agent(turn: Turn) -> Any:
        for label, name in (("int", 3), ("empty", ""), ("long", "x" * 201)):
            try:
                await turn.step(name, ran.append, label)
            except (TypeError, ValueError) as exc:
                seen[label] = exc
        for label, fn in (
            ("object", lambda: object()),
            ("nan", lambda: float("nan")),
            ("big", lambda: "x" * 2000),
            ("deep", lambda: _nested(10_000)),
            ("surrogate", lambda: {"text": "\ud800"}),
        ):
            try:
                await turn.step(f"bad-{label}", fn)
            except StepResultError as exc:
                seen[label] = exc
        return Done(turn.state, reply="ok")

    store = MemoryStore()
    async with SessionSupervisor(
        SingleRouter(lambda a, c: FunctionAgent(agent)),
        store=store,
        supervisor_opts={"max_step_bytes": 1000},
    ) as sup:
        await sup.send("c-1", "go")
        await wait_for_status(sup, "c-1", "idle")
        steps = await sup.steps("c-1")
    assert ran == []  # no bad name ran anything
    assert isinstance(seen["int"], TypeError) and "str" in str(seen["int"])
    assert isinstance(seen["empty"], ValueError) and isinstance(seen["long"], ValueError)
    assert "bad-object" in str(seen["object"]) and "object" in str(seen["object"])
    assert "bad-nan" in str(seen["nan"])
    assert "bad-big" in str(seen["big"]) and "max_step_bytes" in str(seen["big"])
    assert "bad-deep" in str(seen["deep"]) and "bad-surrogate" in str(seen["surrogate"])
    # A result that could not be stored leaves its step started without a result.
    assert steps is not None
    assert [(s.name, s.status) for s in steps] == [
        ("bad-object", "unknown"),
        ("bad-nan", "unknown"),
        ("bad-big", "unknown"),
        ("bad-deep", "unknown"),
        ("bad-surrogate", "unknown"),
    ]


def _nested(depth: int) -> list[Any]:
    value: list[Any] = []
    for _ in range(depth):
        value = [value]
    return value


async def test_a_step_after_its_turn_ended_is_refused(anyio_backend: str) -> None:
    kept: list[Turn] = []

    async def agent(turn: Turn) -> Any:
        kept.append(turn)
        return Done(turn.state, reply="done")

    async with SessionSupervisor(SingleRouter(lambda a, c: FunctionAgent(agent))) as sup:
        await sup.send("c-1", "go")
        await wait_for_status(sup, "c-1", "idle")
        with pytest.raises(InvalidStatus, match="after its turn ended"):
            await kept[0].step("late", lambda: 1)


async def test_usage_counts_each_stored_model_step_once(anyio_backend: str) -> None:
    calls: list[int] = []
    hold = anyio.Event()
    held = anyio.Event()

    async def model_call(n: int) -> dict[str, Any]:
        calls.append(n)
        if n == 2 and not hold.is_set():
            held.set()
            await anyio.sleep_forever()
        return {"text": f"r{n}", "in": 10 * n, "out": n}

    def usage_of(result: dict[str, Any]) -> Usage:
        return Usage(input_tokens=result["in"], output_tokens=result["out"], requests=1)

    async def agent(turn: Turn) -> Any:
        for n in (1, 2):
            await turn._durable_step(
                StepCall(
                    name=f"model-{n}",
                    call=partial(model_call, n),
                    idempotent=True,
                    usage=usage_of,
                )
            )
        return Done(turn.state, reply="done")

    store = MemoryStore()
    router = SingleRouter(lambda a, c: FunctionAgent(agent))
    quick = {"shutdown_timeout": 0}  # the held turn is cut at once when this one drains
    async with SessionSupervisor(router, store=store, supervisor_opts=quick) as sup:
        await sup.send("c-1", "go")
        with anyio.fail_after(WAIT):
            await held.wait()
        left = await store.load("c-1")
        assert left is not None
    assert Usage.model_validate(left.state["usage"]) == Usage(
        input_tokens=10, output_tokens=1, requests=1
    )
    hold.set()
    fresh = MemoryStore()
    await fresh.save("c-1", left, expected_version=None, lifecycle="turn_start")
    async with SessionSupervisor(router, store=fresh) as sup:
        await wait_for_status(sup, "c-1", "idle")
        usage = await sup.usage("c-1")
        metrics = sup.metrics()
    # model-1 was replayed (not requested, not counted), model-2 requested again.
    assert calls == [1, 2, 2]
    assert usage == Usage(input_tokens=30, output_tokens=3, requests=2)
    assert metrics.tokens == {("default", "input"): 20, ("default", "output"): 2}
    assert metrics.steps_replayed == 1


async def test_a_step_whose_function_raised_is_listed_as_failed_with_its_error(
    anyio_backend: str,
) -> None:
    def declined(amount: int) -> None:
        raise ValueError(f"card declined for {amount}")

    async def agent(turn: Turn) -> Any:
        try:
            await turn.step("charge", declined, 42)
        except ValueError as exc:
            return Done(turn.state, reply=f"could not charge: {exc}")
        return Done(turn.state, reply="charged")

    store = MemoryStore()
    async with SessionSupervisor(
        SingleRouter(lambda a, c: FunctionAgent(agent)), store=store
    ) as sup:
        await sup.send("c-1", "pay")
        await wait_for_status(sup, "c-1", "idle")
        steps = await sup.steps("c-1")
        state = await sup.load("c-1")
    assert state is not None and state.messages[-1].text() == (
        "could not charge: card declined for 42"
    )
    assert steps is not None
    assert [(s.name, s.status, s.error) for s in steps] == [
        ("charge", "failed", "ValueError: card declined for 42")
    ]
    assert steps[0].duration is not None and steps[0].result is None
